//! Downloading one blob from a registry into the blob cache.
//!
//! This module owns a blob's transfer: streamed into its partial file,
//! hashed as it streams, resumed with a range request after a break,
//! retried a few times when it made progress, reported to the blob's
//! followers (staging) through its [`Feed`], and the progress bars. A
//! blob enters the cache only verified ([`BlobWriter::finish`]). It never
//! touches a destination or the journal.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;

use super::{Ctx, Failure, MIN_BLOB_RATE, RESUME_RETRIES};
use crate::source::cache::{BlobCache, BlobWriter};
use crate::source::feed::Feed;
use crate::source::http;
use crate::source::{printable, Descriptor, SourceError};

/// Progress bars: one overall, one per layer while it downloads.
#[derive(Clone)]
pub(super) struct Bars {
    pub(super) multi: MultiProgress,
    pub(super) overall: ProgressBar,
    pub(super) enabled: bool,
}

impl Bars {
    /// `name`: what is pulled, as people call it (the repository's last component).
    pub(super) fn new(enabled: bool, total: u64, name: &str) -> Bars {
        let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} (pulling)",
        ) {
            overall.set_style(style.progress_chars("=> "));
        }
        overall.set_prefix(printable(name).chars().take(24).collect::<String>());
        Bars { multi, overall, enabled }
    }

    fn layer(&self, label: &str, size: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = self.multi.add(ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("layer");
        bar.set_message(label.to_string());
        bar
    }
}

/// One blob to fetch, with its label for messages.
#[derive(Clone)]
pub(super) struct Job {
    pub(super) desc: Descriptor,
    pub(super) what: String,
}

/// Downloads one blob into the cache, resuming a partial from an earlier
/// attempt, and retrying a broken transfer that had made progress. `feed`
/// tells the blob's followers (staging) how far the partial file is
/// written and how the download ended.
pub(super) async fn fetch_blob(
    ctx: Arc<Ctx>,
    cache: BlobCache,
    job: Job,
    bars: Bars,
    feed: Arc<Feed>,
) -> Result<(), SourceError> {
    /// Ends the feed if the task is cancelled or panics, so no follower waits forever.
    struct EndOnDrop(Arc<Feed>);
    impl Drop for EndOnDrop {
        fn drop(&mut self) {
            self.0.failed("the download stopped (cancelled); run the same command again to resume it".into());
        }
    }
    let _end = EndOnDrop(feed.clone());
    let size = job.desc.size;
    let result = fetch_blob_into(ctx, cache, job, bars, &feed).await;
    match &result {
        Ok(()) => {
            tracing::debug!(size, "blob complete: verified, fsynced, in the cache");
            feed.complete(size)
        }
        Err(e) => feed.failed(e.to_string()),
    }
    result
}

async fn fetch_blob_into(
    ctx: Arc<Ctx>,
    cache: BlobCache,
    job: Job,
    bars: Bars,
    feed: &Feed,
) -> Result<(), SourceError> {
    let Job { desc, what } = job;
    let Some(mut w) = cache.begin(&desc, &what)? else {
        bars.overall.inc(desc.size);
        return Ok(());
    };
    feed.started(w.open_for_reading()?, w.flushed());
    let short = desc.digest.get(..19).unwrap_or(&desc.digest);
    let bar = bars.layer(desc.title().unwrap_or(short), desc.size);
    let digest = desc.digest.as_str();
    let deadline = ctx.request_timeout + Duration::from_secs(desc.size / MIN_BLOB_RATE);
    let mut retries = 0;
    bar.set_position(w.offset());
    bars.overall.inc(w.offset());
    loop {
        if (ctx.interrupted)() {
            w.suspend()?;
            return Err(SourceError::Interrupted);
        }
        let offset = w.offset();
        let path = format!("blobs/{digest}");
        tracing::debug!(url = %ctx.session.url(&path), range = %format!("bytes={offset}-"), "GET blob");
        let broken = |reason: String, got: u64| SourceError::DownloadInterrupted {
            what: what.clone(),
            registry: ctx.registry.clone(),
            got,
            size: desc.size,
            reason,
        };
        let (response, host) = match ctx.session.get_from(&path, None, offset, Some(deadline)).await {
            Ok(r) => r,
            Err(e) => {
                let err = match ctx.classify(e) {
                    Failure::NotFound => SourceError::BlobMissing { digest: desc.digest.clone(), layout: ctx.name() },
                    Failure::Other(SourceError::Unreachable { reason, .. }) => broken(reason, offset),
                    Failure::Other(e) => e,
                };
                let _ = w.suspend();
                return Err(err);
            }
        };
        let mut stream = response;
        tracing::debug!(status = %stream.status(), content_length = ?stream.content_length(), host = %printable(&host), "blob response");
        // A mirror's wrong bytes are refused naming the mirror.
        let named = |e: SourceError| if host == ctx.registry { e } else { served_by(e, &host) };
        // Bytes at the start of the body that the partial file already holds.
        let mut skip = 0u64;
        if offset > 0 && stream.status() != StatusCode::PARTIAL_CONTENT {
            // The partial's bytes may already be staged, so they are kept and
            // the body's copy of them is skipped: the final digest covers the
            // partial plus the rest of the body, exactly what staging read.
            tracing::debug!(blob = %desc.digest, "the registry ignored the range request; skipping the bytes already downloaded");
            skip = offset;
        }
        if let Some(len) = stream.content_length() {
            let total = w.offset().saturating_add(len.saturating_sub(skip));
            if total > desc.size {
                // Too much on offer: write() refuses it, discarding the partial.
                tracing::debug!(blob = %desc.digest, total, expected = desc.size, "the registry offers more bytes than the descriptor says");
            }
        }
        let at = http::shown_url(stream.url());
        let mut failure: Option<String> = None;
        loop {
            let item = stream.chunk().await;
            if (ctx.interrupted)() {
                w.suspend()?;
                return Err(SourceError::Interrupted);
            }
            match item {
                Ok(None) => break,
                Ok(Some(bytes)) => {
                    let dropped = usize::try_from(skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                    skip -= dropped as u64;
                    let bytes = &bytes[dropped..];
                    if bytes.is_empty() {
                        continue;
                    }
                    if let Err(e) = w.write(bytes) {
                        return Err(named(kept_on_full_disk(e, w)));
                    }
                    feed.publish(w.flushed());
                    let n = bytes.len() as u64;
                    bar.inc(n);
                    bars.overall.inc(n);
                }
                Err(e) => {
                    let (mut reason, timeout) = http::body_error(e, &at);
                    if timeout {
                        reason = format!(
                            "timed out (the deadline is --request-timeout, {} s, plus {} s for its size): {reason}",
                            ctx.request_timeout.as_secs(),
                            desc.size / MIN_BLOB_RATE
                        );
                    }
                    failure = Some(reason);
                    break;
                }
            }
        }
        match failure {
            None => {
                bar.finish_and_clear();
                w.finish().map_err(named)?;
                ctx.note_served(digest, &host);
                return Ok(());
            }
            Some(reason) => {
                let got = w.offset();
                let progressed = got > offset;
                tracing::debug!(blob = %desc.digest, got, error = %reason, "blob transfer broke off");
                if progressed && retries < RESUME_RETRIES {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let got = w.suspend()?;
                bar.abandon();
                return Err(broken(reason, got));
            }
        }
    }
}

/// A size or digest mismatch of bytes a mirror (`host`) served, saying so.
fn served_by(e: SourceError, host: &str) -> SourceError {
    let from = |what: String| format!("{what} (served by the mirror {})", printable(host));
    match e {
        SourceError::DigestMismatch { what, expected, actual } => {
            SourceError::DigestMismatch { what: from(what), expected, actual }
        }
        SourceError::SizeMismatch { what, expected, actual } => {
            SourceError::SizeMismatch { what: from(what), expected, actual }
        }
        other => other,
    }
}

/// A download that hit a full disk keeps its partial file (a registry
/// download resumes where it stopped) and says where it is and how to free it.
fn kept_on_full_disk(e: SourceError, w: BlobWriter) -> SourceError {
    match e {
        SourceError::Io { what, source } if source.kind() == std::io::ErrorKind::StorageFull => {
            let (path, got) = (w.path().display().to_string(), w.offset());
            let _ = w.suspend();
            SourceError::Io {
                what,
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{source}; the partial download {path} ({got} bytes) was kept: the same command resumes \
                         it once space is freed, and `stagehand cache prune` removes it instead"
                    ),
                ),
            }
        }
        other => other,
    }
}

/// Refuses a download that cannot fit in the blob cache's filesystem.
pub(super) fn check_download_space(cache: &BlobCache, total: u64) -> Result<(), SourceError> {
    const SPARE: u64 = 1 << 20;
    let root = cache.root();
    let (_, free) = crate::fsops::free_space(root)
        .map_err(|source| SourceError::Io { what: format!("checking free space for {}", root.display()), source })?;
    if total.saturating_add(SPARE) > free {
        return Err(SourceError::Io {
            what: format!("not enough free space for the blob cache {}", root.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "the download needs {total} bytes plus {SPARE} to spare, and {free} bytes are free; \
                     nothing was downloaded: free space there (`stagehand cache prune` removes unused blobs \
                     and partial downloads) and run the command again"
                ),
            ),
        });
    }
    Ok(())
}
