//! Blob downloads in flight in this process, shared by every pull of one
//! command (the packages of one `apply`).
//!
//! This module owns two process-wide things: the map from a blob (its
//! cache and digest) to the [`Feed`] of the one download writing it, so a
//! second package that needs the same blob follows that download instead
//! of writing the same partial file at the same time; and the bound on
//! blob downloads running at once across all pulls,
//! [`MAX_DOWNLOADS_AT_ONCE`]. It never downloads or writes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use tokio::sync::Semaphore;

use crate::source::feed::Feed;

/// Blob downloads running at once in one process, whatever the number of
/// packages pulled (each pull also keeps to its own
/// `--max-concurrent-downloads`, default 4): two pulls' worth, enough to
/// fill a link from a registry or CDN while keeping the connections and
/// open partial files of an `apply` of many packages bounded.
pub const MAX_DOWNLOADS_AT_ONCE: usize = 8;

static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_DOWNLOADS_AT_ONCE)));

type Key = (PathBuf, String);
static INFLIGHT: LazyLock<Mutex<BTreeMap<Key, Weak<Feed>>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Who downloads a blob.
pub enum Claim {
    /// This pull does: nobody else in the process is.
    Own(Arc<Feed>),
    /// Another pull of this process already does (or did): follow its feed.
    Shared(Arc<Feed>),
}

/// Claims the download of `digest` into the cache at `cache_root`: the
/// first pull to ask downloads it, every later one shares its feed, unless
/// that download failed (then the next asker downloads it again).
pub fn claim(cache_root: &Path, digest: &str) -> Claim {
    let mut map = INFLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    let key = (cache_root.to_path_buf(), digest.to_string());
    if let Some(feed) = map.get(&key).and_then(Weak::upgrade) {
        if !feed.has_failed() {
            return Claim::Shared(feed);
        }
    }
    let feed = Feed::new();
    map.insert(key, Arc::downgrade(&feed));
    Claim::Own(feed)
}

/// The process-wide download slots (see [`MAX_DOWNLOADS_AT_ONCE`]).
pub fn slots() -> Arc<Semaphore> {
    SLOTS.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_downloaded_by_one_pull_and_shared_by_the_next() {
        let root = Path::new("/nonexistent/claim-test");
        let Claim::Own(first) = claim(root, "sha256:aa") else { panic!("the first claim must own the download") };
        assert!(matches!(claim(root, "sha256:aa"), Claim::Shared(f) if Arc::ptr_eq(&f, &first)));
        assert!(matches!(claim(root, "sha256:bb"), Claim::Own(_)), "another blob is its own download");
        assert!(matches!(claim(Path::new("/other"), "sha256:aa"), Claim::Own(_)), "another cache is its own");
        first.failed("broke".into());
        assert!(matches!(claim(root, "sha256:aa"), Claim::Own(_)), "a failed download is not shared");
    }
}
