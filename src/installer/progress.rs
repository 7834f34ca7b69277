//! Progress while extracting: a [`BlobSource`] wrapper that counts the bytes
//! staging reads from each blob into an indicatif bar on stderr (only when
//! asked, i.e. on a terminal without `--quiet`/`--json`). It changes no
//! byte and no decision: the wrapped reader is passed through unchanged.

use std::io::Read;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::source::{BlobSource, Descriptor, SourceError};

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
    /// `total` is the sum of the blob sizes staging will read; `name` the
    /// package (or packages) the bar is for.
    pub fn new(total: u64, enabled: bool, name: &str) -> Self {
        let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(STYLE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(bar_name(name));
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

/// The bar: the package, how far, the rate, the time left, and the layer
/// being read (its title, or its short digest).
const STYLE: &str = "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}";

/// A package name as the bar shows it: printable, at most 24 characters.
fn bar_name(name: &str) -> String {
    let shown = crate::source::printable(name);
    if shown.chars().count() <= 24 {
        return shown;
    }
    format!("{}…", shown.chars().take(23).collect::<String>())
}

/// The layer a bar is reading: its title, else `sha256:` and 12 hex digits.
fn layer_name(desc: &Descriptor) -> String {
    match desc.title() {
        Some(t) => crate::source::printable(t),
        None => desc.digest.chars().take("sha256:".len() + 12).collect(),
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
        self.bar.set_message(format!("(extracting {})", layer_name(desc)));
        Ok(Box::new(Counting { inner, bar: self.bar.clone() }))
    }

    fn complete(&self) -> Result<(), SourceError> {
        self.inner.complete()
    }

    fn abort(&self) -> Option<SourceError> {
        self.inner.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_names_the_package_and_the_layer_shortly() {
        assert_eq!(bar_name("demo"), "demo");
        assert_eq!(bar_name(&"x".repeat(40)).chars().count(), 24);
        let d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1,
            annotations: Default::default(),
            platform: None,
        };
        assert_eq!(layer_name(&d), "sha256:abababababab");
        assert!(STYLE.contains("{bytes_per_sec}") && STYLE.contains("{eta}") && STYLE.contains("{prefix"));
    }
}
