//! A registry pull in progress, as a [`BlobSource`] that staging reads
//! while the blobs download.
//!
//! This module owns the running downloads of one pull (tasks on the pull's
//! tokio runtime, each writing one blob's partial file in the cache) and
//! hands staging a [`Follower`] per blob it opens, so extraction overlaps
//! the network. [`BlobSource::complete`] waits for every download to end
//! with its blob verified, fsynced and in the cache; [`BlobSource::abort`]
//! stops them, keeping partial files for a resume. It never touches a
//! destination, a staging path or the journal: staging writes those.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::source::cache::BlobCache;
use crate::source::feed::{Feed, Follower};
use crate::source::verify::blob_label;
use crate::source::{BlobSource, Descriptor, SourceError};

type Tasks = JoinSet<Result<(), SourceError>>;

/// Buffer between a follower and staging's tar reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The tasks of a pull that has not been waited for yet.
struct Running {
    runtime: Runtime,
    tasks: Tasks,
}

/// The downloads of one pull (see the module doc).
pub struct Downloads {
    running: Mutex<Option<Running>>,
    feeds: BTreeMap<String, Arc<Feed>>,
    /// Blobs another pull of this process downloads for us (see `inflight`).
    shared: Vec<(Descriptor, Arc<Feed>)>,
    cache: BlobCache,
    overall: ProgressBar,
    registry: String,
    interrupted: fn() -> bool,
    /// What the pull fetched and from which host (shared with its tasks).
    served: Arc<Mutex<Vec<crate::source::Served>>>,
}

impl Downloads {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        runtime: Runtime,
        tasks: Tasks,
        feeds: BTreeMap<String, Arc<Feed>>,
        shared: Vec<(Descriptor, Arc<Feed>)>,
        cache: BlobCache,
        overall: ProgressBar,
        registry: String,
        interrupted: fn() -> bool,
        served: Arc<Mutex<Vec<crate::source::Served>>>,
    ) -> Downloads {
        Downloads {
            running: Mutex::new(Some(Running { runtime, tasks })),
            feeds,
            shared,
            cache,
            overall,
            registry,
            interrupted,
            served,
        }
    }

    fn take(&self) -> Option<Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Joins every task; after the first failure the others are aborted
    /// (their partial files stay for a resume). Returns the first failure.
    fn join(&self, mut run: Running, abort_now: bool) -> Option<SourceError> {
        if abort_now {
            run.tasks.abort_all();
        }
        let registry = self.registry.clone();
        let first = run.runtime.block_on(async {
            let mut first: Option<SourceError> = None;
            while let Some(joined) = run.tasks.join_next().await {
                let result = match joined {
                    Ok(r) => r,
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => Err(SourceError::Registry {
                        registry: registry.clone(),
                        reason: format!("a download task failed: {e}"),
                    }),
                };
                if let Err(e) = result {
                    if first.is_none() {
                        run.tasks.abort_all();
                        first = Some(e);
                    }
                }
            }
            first
        });
        // Downloads that ended without their first byte leave nothing to resume.
        if first.is_some() || abort_now {
            self.overall.abandon();
            if let Err(cleanup) = self.cache.remove_empty_partials() {
                tracing::warn!(error = %cleanup, "could not remove empty partial downloads");
            }
        } else {
            self.overall.finish_and_clear();
        }
        first
    }
}

impl BlobSource for Downloads {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn std::io::Read + Send>, SourceError> {
        let Some(feed) = self.feeds.get(&desc.digest) else {
            // Cached before this pull began.
            return self.cache.open_blob(desc);
        };
        let cache = self.cache.clone();
        let cached = desc.clone();
        let open = Box::new(move || {
            cache.open_blob(&cached).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let follower = Follower::new(feed.clone(), desc.size, blob_label(desc), self.interrupted, open);
        // Tar reads in small pieces; one pread per piece would be wasteful.
        Ok(Box::new(std::io::BufReader::with_capacity(READ_BUFFER_BYTES, follower)))
    }

    fn complete(&self) -> Result<(), SourceError> {
        if let Some(run) = self.take() {
            if let Some(e) = self.join(run, false) {
                return Err(e);
            }
        }
        for (desc, feed) in &self.shared {
            if let Err(message) = feed.wait(self.interrupted) {
                if (self.interrupted)() {
                    return Err(SourceError::Interrupted);
                }
                return Err(SourceError::Registry {
                    registry: self.registry.clone(),
                    reason: format!(
                        "{} (downloaded once for several packages of this command) failed: {message}",
                        blob_label(desc)
                    ),
                });
            }
        }
        Ok(())
    }

    fn abort(&self) -> Option<SourceError> {
        // A download that already failed is the cause to report (a task
        // returns right after telling its feed, with no await in between,
        // so it is never cancelled once staging could have seen the
        // failure); one still running is stopped, not a failure of its own.
        let run = self.take()?;
        self.join(run, true)
    }

    fn served(&self) -> Vec<crate::source::Served> {
        self.served.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        if let Some(run) = self.take() {
            let _ = self.join(run, true);
        }
    }
}
