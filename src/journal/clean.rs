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
//! directory (`db`, `conf`, `snap.*`, `blobs/*`), its name, length and
//! CRC-32 of its bytes; then a CRC-32 of those lines. Content, not times:
//! the kernel's file times are coarse (a few ms), and damage need not touch
//! them. The mark is written after sled has let go of `db` (its lock is
//! free), with no fsync: a lost or torn mark only costs the next open a
//! copy. Computing it reads the journal once (about 1 ms per MiB, measured
//! in `docs/proofs.md`).
//!
//! Must never: decide that a journal is good (only that it is unchanged).

use std::io;
use std::path::{Path, PathBuf};

use crate::fsops;

const HEADER: &str = "stagehand-clean 1\n";

/// The mark beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("journal.clean")
}

/// Every regular file under `dir` (relative name, length, CRC-32), sorted,
/// as text. `None` if a name is not plain (no mark is trusted for it).
pub fn fingerprint(dir: &Path) -> io::Result<Option<String>> {
    let mut files = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else { return Ok(None) };
            if name.contains(char::is_whitespace) {
                return Ok(None);
            }
            let t = e.file_type()?;
            if t.is_dir() {
                dirs.push((e.path(), format!("{prefix}{name}/")));
            } else if t.is_file() {
                files.push((format!("{prefix}{name}"), e.path()));
            } else {
                return Ok(None);
            }
        }
    }
    files.sort();
    let mut out = String::new();
    for (name, p) in files {
        let bytes = std::fs::read(&p)?;
        out.push_str(&format!("{name} {} {:08x}\n", bytes.len(), crc32fast::hash(&bytes)));
    }
    Ok(Some(out))
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
        assert!(!matches(&j, &fp), "no mark yet");
        write(&j, &fp).expect("write mark");
        assert!(matches(&j, &fp));
        // One byte changed in place, same length: seen.
        std::fs::write(j.join("db"), b"0123456788").expect("write");
        let fp2 = fingerprint(&j).expect("fp").expect("plain");
        assert!(!matches(&j, &fp2));
        // A torn mark is no mark.
        let text = std::fs::read_to_string(path(&j)).expect("read");
        std::fs::write(path(&j), &text[..text.len() / 2]).expect("write");
        assert!(!matches(&j, &fp));
    }
}
