//! Progress while extracting: a [`BlobSource`] wrapper that counts the bytes
//! staging reads from each blob into an indicatif bar on stderr (only when
//! asked, i.e. on a terminal without `--quiet`/`--json`). It changes no
//! byte and no decision: the wrapped reader is passed through unchanged.

use std::io::Read;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::source::{verify::blob_label, BlobSource, Descriptor, SourceError};

/// One bar for a transaction; [`Progress::over`] wraps each blob source
/// staging reads from, and every opened blob advances the bar as it is read.
pub struct Progress {
    bar: ProgressBar,
}

/// A blob source whose reads advance a [`Progress`] bar.
pub struct Counted<'a> {
    inner: &'a dyn BlobSource,
    bar: ProgressBar,
}

impl Progress {
    /// `total` is the sum of the blob sizes staging will read.
    pub fn new(total: u64, enabled: bool) -> Self {
        let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("extracting");
        Progress { bar }
    }

    /// `inner`, counted into this bar.
    pub fn over<'a>(&self, inner: &'a dyn BlobSource) -> Counted<'a> {
        Counted { inner, bar: self.bar.clone() }
    }

    /// Clears the bar (staging is done or failed).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

impl BlobSource for Counted<'_> {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, SourceError> {
        let inner = self.inner.open_blob(desc)?;
        self.bar.set_message(blob_label(desc));
        Ok(Box::new(Counting { inner, bar: self.bar.clone() }))
    }

    fn complete(&self) -> Result<(), SourceError> {
        self.inner.complete()
    }

    fn abort(&self) -> Option<SourceError> {
        self.inner.abort()
    }
}
