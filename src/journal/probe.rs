//! Opening a copy of the journal before the journal itself, so a journal
//! that will be refused keeps every byte (it is the evidence of what was
//! installed, and `repair --set-aside-journal` scans it).
//!
//! sled is not read-only even when it fails: opening a damaged `db`, it
//! rewrites the rest of the damaged segment and fsyncs it before it reports
//! the corruption (sled 0.34.7 `pagecache/snapshot.rs`), and it removes blob
//! files above the log's stable point (`gc_blobs`). So when the journal's
//! files are not exactly as the last clean close left them (see
//! [`super::clean`]), [`check`] copies them to `STATE/journal.probe`, lets
//! [`super::leftovers`] and sled do their worst to the copy, and runs every
//! check an open runs (format, seal) plus a decode of every record in flight
//! and every package record. Only if all of that passes is the real journal
//! opened (and sled then does the same, deterministic, things to it).
//!
//! The copy is scratch: written without fsync, removed before [`check`]
//! returns, and removed first if a kill left one. Cost: one copy of the
//! journal's files (`copy_file_range`) and one extra sled open, only after
//! an unclean stop or a change behind our back (measured in
//! `docs/proofs.md`).
//!
//! Must never: open, lock or write the real journal.

use std::io;
use std::path::{Path, PathBuf};

use super::{Journal, JournalError, Result};
use crate::fsops;

const ROLE: &str = "journal_probe";

/// The scratch copy's directory beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("journal.probe")
}

/// Copies `journal_dir` aside and opens the copy as [`Journal::open`] would,
/// decoding every pending and package record. `Err` is the error the real
/// journal would give; the real journal is untouched either way.
pub fn check(journal_dir: &Path) -> Result<()> {
    let copy = path(journal_dir);
    // Failing to make or check the copy says nothing about the journal (a
    // full disk must not look like damage, nor lead to a set-aside).
    let probe = |source: io::Error| JournalError::Probe { path: journal_dir.to_path_buf(), copy: copy.clone(), source };
    fsops::remove_tree(&copy, ROLE).map_err(probe)?;
    if let Err(e) = copy_dir(journal_dir, &copy) {
        let _ = fsops::remove_tree(&copy, ROLE);
        return Err(probe(e));
    }
    let verdict = Journal::open_here(&copy, super::Opened::Probe).and_then(|j| {
        j.pending()?;
        j.packages()?;
        Ok(())
    });
    // sled's background threads may hold the copy's files a moment longer;
    // unlinking them under it is harmless.
    fsops::remove_tree(&copy, ROLE).map_err(probe)?;
    match verdict {
        Ok(()) => Ok(()),
        Err(JournalError::Prepare { source, .. }) => Err(probe(source)),
        Err(JournalError::Open { source: sled::Error::Io(e), .. } | JournalError::Storage(sled::Error::Io(e)))
            if is_resource(&e) =>
        {
            Err(probe(e))
        }
        // sled opened the copy but cannot read its records (a blob file
        // missing, a page pointing nowhere): the journal cannot be opened.
        Err(JournalError::Storage(source)) => Err(JournalError::Open { path: journal_dir.to_path_buf(), source }),
        Err(e) => Err(e.for_path(journal_dir)),
    }
}

/// An I/O error about the copy's place, not the journal's bytes.
fn is_resource(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), StorageFull | QuotaExceeded | PermissionDenied | ReadOnlyFilesystem | FileTooLarge)
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fsops::create_dir(to, 0o700, ROLE)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else if t.is_file() {
            fsops::copy_file(&e.path(), &to.join(e.file_name()), ROLE)?;
        }
    }
    Ok(())
}
