//! A blob that staging reads while it is still downloading.
//!
//! This module owns the hand-off between one download (a task writing the
//! blob cache's partial file through [`super::cache::BlobWriter`], which
//! hashes every byte once as it is appended) and the readers that stage it
//! at the same time. The download publishes how many bytes of the partial
//! are written; a [`Follower`] reads the partial file by offset up to that
//! mark, waiting for more, so the partial file is the tee between network,
//! cache and extractor: memory stays bounded however far staging lags, and
//! a resumed download (a partial already on disk) is read from its first
//! byte, then from the network's.
//!
//! A follower returns end of file only after the download said the blob is
//! complete: size and sha256 checked against the descriptor, fsynced and
//! renamed into the cache. A failed download (mismatch, broken transfer,
//! interruption) makes every read fail with its message, so staging never
//! succeeds on bytes that did not verify. It never writes anything.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiting follower wakes up to check for an interruption.
const WAKE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct State {
    /// The partial file, open for reading, once the download started.
    file: Option<Arc<File>>,
    /// Bytes of the partial file written (readable) so far.
    published: u64,
    /// Set when the download ended: `Ok` once the blob is complete and
    /// verified in the cache, `Err(message)` when it failed.
    end: Option<Result<(), String>>,
}

/// The shared state of one blob download and its followers.
#[derive(Debug, Default)]
pub struct Feed {
    state: Mutex<State>,
    more: Condvar,
}

impl Feed {
    /// A feed for a download that has not started yet.
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The download opened (or resumed) its partial file; `written` of its
    /// bytes are already there.
    pub fn started(&self, file: File, written: u64) {
        let mut s = self.lock();
        s.file = Some(Arc::new(file));
        s.published = written;
        self.more.notify_all();
    }

    /// `written` bytes of the partial file can now be read.
    pub fn publish(&self, written: u64) {
        let mut s = self.lock();
        if written > s.published {
            s.published = written;
            self.more.notify_all();
        }
    }

    /// The blob is complete, verified and in the cache, `size` bytes long.
    pub fn complete(&self, size: u64) {
        let mut s = self.lock();
        s.published = size;
        s.end = Some(Ok(()));
        self.more.notify_all();
    }

    /// The download failed; every follower's next read fails with `message`.
    pub fn failed(&self, message: String) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(Err(message));
        }
        self.more.notify_all();
    }

    /// True once the download failed.
    pub fn has_failed(&self) -> bool {
        matches!(self.lock().end, Some(Err(_)))
    }

    /// Waits until the download ends: `Ok` once the blob is complete and in
    /// the cache, else its failure's message (or that we were interrupted).
    pub fn wait(&self, interrupted: fn() -> bool) -> Result<(), String> {
        let mut s = self.lock();
        loop {
            if let Some(end) = &s.end {
                return end.clone();
            }
            if interrupted() {
                return Err("interrupted".into());
            }
            s = self.more.wait_timeout(s, WAKE_EVERY).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// True once the download ended, either way.
    pub fn ended(&self) -> bool {
        self.lock().end.is_some()
    }
}

/// Opens a complete blob from the cache.
pub type OpenCached = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// What a follower does next.
enum Next {
    Read(Arc<File>, u64),
    Eof,
    /// The blob was complete before this follower saw its partial file.
    Cached,
}

/// Reads one blob from its partial file while it downloads (see the module
/// doc). `open_cached` opens the complete blob from the cache instead, for
/// a download that found its partial already complete.
pub struct Follower {
    feed: Arc<Feed>,
    pos: u64,
    size: u64,
    what: String,
    interrupted: fn() -> bool,
    open_cached: Option<OpenCached>,
    cached: Option<Box<dyn Read + Send>>,
}

impl Follower {
    /// Follows `feed`, a blob of `size` bytes named `what` in errors.
    pub fn new(
        feed: Arc<Feed>,
        size: u64,
        what: String,
        interrupted: fn() -> bool,
        open_cached: OpenCached,
    ) -> Follower {
        Follower { feed, pos: 0, size, what, interrupted, open_cached: Some(open_cached), cached: None }
    }

    fn next(&self) -> io::Result<Next> {
        let mut s = self.feed.lock();
        loop {
            if let Some(Err(message)) = &s.end {
                return Err(io::Error::new(io::ErrorKind::InvalidData, message.clone()));
            }
            match (&s.file, &s.end) {
                (Some(f), _) if s.published > self.pos => return Ok(Next::Read(f.clone(), s.published)),
                (Some(_), Some(Ok(()))) => return Ok(Next::Eof),
                (None, Some(Ok(()))) => return Ok(Next::Cached),
                _ => {}
            }
            if (self.interrupted)() {
                return Err(io::Error::other(format!("{}: interrupted while downloading", self.what)));
            }
            s = self.feed.more.wait_timeout(s, WAKE_EVERY).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Read for Follower {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = &mut self.cached {
            return r.read(buf);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.next()? {
            Next::Read(file, published) => {
                let want = usize::try_from(published - self.pos).map_or(buf.len(), |n| n.min(buf.len()));
                let n = file.read_at(&mut buf[..want], self.pos)?;
                if n == 0 {
                    // The download said these bytes were written; the file disagrees.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: the partial download ended early at byte {}", self.what, self.pos),
                    ));
                }
                self.pos += n as u64;
                Ok(n)
            }
            Next::Eof if self.pos == self.size => Ok(0),
            Next::Eof => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: read {} of {} bytes before the end", self.what, self.pos, self.size),
            )),
            Next::Cached => {
                let open = self.open_cached.take().ok_or_else(|| io::Error::other("blob reopened twice"))?;
                let mut r = open()?;
                if self.pos > 0 {
                    // Never happens (no bytes are published without a file), but skip them if it did.
                    io::copy(&mut (&mut r).take(self.pos), &mut io::sink())?;
                }
                let n = r.read(buf)?;
                self.cached = Some(r);
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn never() -> bool {
        false
    }

    fn follower(feed: &Arc<Feed>, size: u64) -> Follower {
        Follower::new(
            feed.clone(),
            size,
            "blob x".into(),
            never,
            Box::new(|| Ok(Box::new(io::Cursor::new(b"cached".to_vec())))),
        )
    }

    #[test]
    fn follows_a_growing_file_and_ends_only_when_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("part");
        let mut w = File::create(&p).expect("create");
        w.write_all(b"resumed ").expect("write");
        let feed = Feed::new();
        let mut f = follower(&feed, 16);
        feed.started(File::open(&p).expect("open"), 8);
        let writer = {
            let feed = feed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                w.write_all(b"network!").expect("write");
                feed.publish(16);
                std::thread::sleep(Duration::from_millis(50));
                feed.complete(16);
            })
        };
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert!(feed.ended(), "EOF only after the download completed");
        assert_eq!(got, b"resumed network!");
        writer.join().expect("join");
    }

    #[test]
    fn a_failed_download_fails_the_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("part");
        std::fs::write(&p, b"abcd").expect("write");
        let feed = Feed::new();
        let mut f = follower(&feed, 8);
        feed.started(File::open(&p).expect("open"), 4);
        let mut buf = [0u8; 8];
        assert_eq!(f.read(&mut buf).expect("read"), 4);
        feed.failed("blob x: digest mismatch".into());
        let e = f.read(&mut buf).expect_err("fails");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        // Complete but short: an error, not EOF.
        let feed = Feed::new();
        let mut f = follower(&feed, 8);
        feed.started(File::open(&p).expect("open"), 4);
        feed.complete(4);
        assert!(f.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn already_complete_reads_the_cache() {
        let feed = Feed::new();
        let mut f = follower(&feed, 6);
        feed.complete(6);
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"cached");
    }
}
