//! The clean-close mark: what sled's files held when the journal was last
//! closed, so the next open can tell "exactly as we left it" (open it) from
//! "changed since" (a kill while it was open, a crash, damage: open a copy
//! first, see [`super::probe`]).
//!
//! sled rewrites part of `db` at every open (sled 0.34.7
//! `pagecache/snapshot.rs`, `advance_snapshot`: it overwrites the rest of
//! the segment after the recovered tip and fsyncs it, and zeroes torn
//! segments), also when it then reports corruption. So an open is never
//! read-only, and a journal that will be refused must not be opened.
//!
//! `STATE/journal.clean` holds, per regular file under the journal
//! directory (`db`, `conf`, `snap.*`, `blobs/*`) and for the seal beside it
//! (which decides an open too), its name, length, inode, and modification
//! and change times in nanoseconds; then a CRC-32 of those lines. Metadata, not content: reading and hashing the whole journal
//! twice per command cost 18 ms of CPU on a 6.8 MB journal (measured,
//! debug build), a `stat` per file costs microseconds. Any write through
//! the filesystem sets the change time, which no user call can set back;
//! the times are coarse (a few ms) but the mark is taken only after sled
//! has let go of `db` (its lock is free: no writer of ours is left), so a
//! later change lands in a later tick. What it cannot see is a change below
//! the filesystem (media damage that keeps every inode field). The mark is
//! written with no fsync: a lost or torn mark only costs the next open a
//! copy.
//!
//! Must never: decide that a journal is good (only that it is unchanged).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fsops;

const HEADER: &str = "stagehand-clean 1\n";

/// The mark beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("journal.clean")
}

/// Every regular file under `dir` (relative name, length, inode, mtime and
/// ctime in ns), sorted, as text. `None` if a name is not plain (no mark is
/// trusted for it).
pub fn fingerprint(dir: &Path) -> io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else { return Ok(None) };
            if name.contains(char::is_whitespace) {
                return Ok(None);
            }
            let m = std::fs::symlink_metadata(e.path())?;
            if m.is_dir() {
                dirs.push((e.path(), format!("{prefix}{name}/")));
            } else if m.is_file() {
                let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
                files.push(format!(
                    "{prefix}{name} {} {} {} {}\n",
                    m.len(),
                    m.ino(),
                    ns(m.mtime(), m.mtime_nsec()),
                    ns(m.ctime(), m.ctime_nsec())
                ));
            } else {
                return Ok(None);
            }
        }
    }
    files.sort();
    // The seal decides an open too (a damaged seal refuses the journal).
    match std::fs::symlink_metadata(super::seal::path(dir)) {
        Ok(m) => files.push(format!(
            "/seal {} {} {} {}\n",
            m.len(),
            m.ino(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => files.push("/seal none\n".to_string()),
        Err(e) => return Err(e),
    }
    Ok(Some(files.concat()))
}

/// Whether the mark says the journal's files hold exactly `fp`.
pub fn matches(journal_dir: &Path, fp: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path(journal_dir)) else { return false };
    parse(&text).is_some_and(|body| body == fp)
}

fn render(fp: &str) -> String {
    let body = format!("{HEADER}{fp}");
    format!("{body}end {:08x}\n", crc32fast::hash(body.as_bytes()))
}

fn parse(text: &str) -> Option<&str> {
    let (before_last, last) = text.strip_suffix('\n')?.rsplit_once('\n')?;
    let body = &text[..before_last.len() + 1];
    let crc = last.strip_prefix("end ")?;
    if format!("{:08x}", crc32fast::hash(body.as_bytes())) != crc {
        return None;
    }
    body.strip_prefix(HEADER)
}

/// Writes the mark (temp file, rename; no fsync, see the module doc).
pub fn write(journal_dir: &Path, fp: &str) -> io::Result<()> {
    let tmp = journal_dir.with_file_name(".journal.clean.stagehand-tmp");
    fsops::remove_tree(&tmp, "journal_clean")?;
    fsops::write_file(&tmp, &mut render(fp).as_bytes(), 0o600, "journal_clean")?;
    fsops::rename_no_sync(&tmp, &path(journal_dir), "journal_clean")
}

/// Writes the clean-close mark when dropped: declared last in
/// [`super::Journal`], so it drops after sled's handles. Not for a scratch
/// copy, nor after a write failed.
pub(super) struct CloseMark {
    dir: PathBuf,
    enabled: bool,
    healthy: AtomicBool,
}

impl CloseMark {
    pub(super) fn new(journal_dir: &Path, enabled: bool) -> CloseMark {
        CloseMark { dir: journal_dir.to_path_buf(), enabled, healthy: AtomicBool::new(true) }
    }

    /// A write failed: write no mark at close (the next open checks a copy).
    pub(super) fn spoil(&self) {
        self.healthy.store(false, Ordering::SeqCst);
    }

    /// Whether a write failed since the journal was opened.
    pub(super) fn spoiled(&self) -> bool {
        !self.healthy.load(Ordering::SeqCst)
    }
}

impl Drop for CloseMark {
    fn drop(&mut self) {
        if !self.enabled || !self.healthy.load(Ordering::SeqCst) {
            return;
        }
        // sled's background threads may hold `db` a moment after its last
        // handle drops, and may still write: mark only once it is closed.
        let db = self.dir.join("db");
        if !matches!(super::sledlock::wait_free(&db, std::time::Duration::from_millis(500)), Ok(Ok(()))) {
            return;
        }
        let done = fingerprint(&self.dir).and_then(|fp| match fp {
            Some(fp) => write(&self.dir, &fp),
            None => Ok(()),
        });
        if let Err(e) = done {
            tracing::debug!(error = %e, "could not write the journal's clean-close mark; the next open checks a copy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_round_trip_and_any_change_is_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("journal");
        std::fs::create_dir_all(j.join("blobs")).expect("mkdir");
        std::fs::write(j.join("db"), b"0123456789").expect("write");
        std::fs::write(j.join("blobs/7"), b"blob").expect("write");
        let fp = fingerprint(&j).expect("fp").expect("plain names");
        assert!(fp.contains("blobs/7 4 "), "{fp}");
        assert_eq!(fingerprint(&j).expect("fp").as_deref(), Some(fp.as_str()), "stat is stable");
        assert!(!matches(&j, &fp), "no mark yet");
        write(&j, &fp).expect("write mark");
        assert!(matches(&j, &fp));
        // One byte changed in place, same length: seen (the change time
        // moves on at the next tick of the kernel's coarse clock).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(j.join("db"), b"0123456788").expect("write");
        let fp2 = fingerprint(&j).expect("fp").expect("plain");
        assert!(!matches(&j, &fp2));
        // A torn mark is no mark.
        let text = std::fs::read_to_string(path(&j)).expect("read");
        std::fs::write(path(&j), &text[..text.len() / 2]).expect("write");
        assert!(!matches(&j, &fp));
    }
}
