//! The journal's errors, each saying what happened, that nothing was
//! changed, and what to do next; [`JournalError::is_unopenable`] decides
//! where `repair --set-aside-journal` applies, and an I/O error of the disk
//! never counts as damage to the journal.

use std::path::{Path, PathBuf};

use super::codec::{DecodeError, FORMAT_VERSION};
use super::{filelist, sledlock};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {source}. Nothing was changed. If it stays unreadable, `stagehand repair --set-aside-journal` moves it, the journal.seal and the filelists directory beside it aside (deleting nothing) and lists the staging and backup paths it names; installed files are left as they are, but stagehand then forgets what it installed")]
    Open { path: PathBuf, source: sled::Error },
    #[error("cannot open the journal at {path}: the disk returned an I/O error ({source}). Nothing was changed. This is the disk or its file system failing, not damage to the journal: check `dmesg` and the file system (it may have been remounted read-only), then rerun; do not set the journal aside for it")]
    Disk { path: PathBuf, source: std::io::Error },
    #[error("cannot check a copy of the journal at {path} before opening it ({copy}): {source}. The journal was not opened and nothing was changed; fix the cause (a full disk, permissions) and rerun")]
    Probe { path: PathBuf, copy: PathBuf, source: std::io::Error },
    #[error("the journal at {path} is locked by {} although the state-dir lock is free (a stagehand process still exiting, or a child it forked); waited {waited_ms} ms. The journal is not damaged and nothing was changed: wait for that process to end and rerun", sledlock::describe(pids))]
    SledLocked { path: PathBuf, pids: Vec<u32>, waited_ms: u64 },
    #[error("{source}\nWhile refusing it, sled rewrote part of the journal's files at {path} (it does so at every open); copy the state dir aside before trying anything else")]
    Rewritten { path: PathBuf, source: Box<JournalError> },
    #[error("journal record {key} is corrupt: {reason}. Nothing was changed or deleted; `stagehand journal` shows the records, and restoring the state dir from a backup is the safe fix")]
    Corrupt { key: String, reason: DecodeError },
    #[error("the journal was written by a newer stagehand (format {found}, this one reads {FORMAT_VERSION}); use a newer stagehand. Nothing was changed")]
    NewerFormat { found: u8 },
    #[error("the journal at {path} was written by an older stagehand (format {found}, this one reads {FORMAT_VERSION}) and is not converted. Nothing was changed. Finish any pending transaction with the older stagehand (`stagehand repair`), then move {path}, the journal.seal and the filelists directory beside it aside and install the packages again with --adopt (installed files stay where they are)")]
    OlderFormat { path: PathBuf, found: u8 },
    #[error("the journal at {path} is behind its seal: {detail} ({path_seal}). sled's files were damaged or replaced, and what was installed may be forgotten. Nothing was changed; restore the state dir from a backup. To start over with an empty registry instead (installed files stay where they are), `stagehand repair --set-aside-journal` moves both {path} and {path_seal} aside")]
    BehindSeal { path: PathBuf, path_seal: PathBuf, detail: String },
    #[error("the journal seal {path} is unreadable ({reason}). Nothing was changed; if the journal is intact, delete the seal and rerun; else `stagehand repair --set-aside-journal` moves the journal, its seal and its file lists aside")]
    BadSeal { path: PathBuf, reason: String },
    #[error("cannot prepare the journal at {path} for opening: {source}. Nothing else was changed; fix the cause (permissions, a full disk) and rerun")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error("journal write failed: {}", sled_text(.0))]
    Storage(#[from] sled::Error),
    #[error("cannot make the journal durable at {point}: {source}")]
    Sync { point: String, source: std::io::Error },
    #[error("journal write failed at {point}: {source}")]
    Injected { point: String, source: std::io::Error },
    #[error("cannot encode a journal record: {0}")]
    Encode(String),
    #[error("cannot record where staging paths go, in {path}: {source}. Nothing of the transaction was written; fix the cause (permissions, a full disk) and rerun")]
    Places { path: PathBuf, source: std::io::Error },
    #[error("cannot write the file lists under {path}: {source}")]
    WriteFileList { path: PathBuf, source: std::io::Error },
    #[error("{package}: {source}. Nothing was changed; `stagehand repair --dry-run` shows the state, and restoring the state dir from a backup (or reinstalling the package) is the fix")]
    FileList { package: String, source: filelist::FileListError },
}

impl JournalError {
    /// True when the journal as a whole cannot be opened (as opposed to one
    /// record or one write failing, or sled's lock being held):
    /// `repair --set-aside-journal` applies.
    pub fn is_unopenable(&self) -> bool {
        match self {
            JournalError::Open { .. }
            | JournalError::Prepare { .. }
            | JournalError::BehindSeal { .. }
            | JournalError::BadSeal { .. } => true,
            JournalError::Rewritten { source, .. } => source.is_unopenable(),
            _ => false,
        }
    }

    /// An open that failed on the disk's I/O error (EIO) as
    /// [`JournalError::Disk`]: the disk, not the journal, is at fault, so
    /// `repair --set-aside-journal` is not suggested.
    pub(super) fn disk_error(self, dir: &Path) -> Self {
        let eio = |e: &std::io::Error| e.raw_os_error() == Some(libc::EIO);
        let inner = match &self {
            JournalError::Rewritten { source, .. } => source.as_ref(),
            other => other,
        };
        let io = match inner {
            JournalError::Open { source: sled::Error::Io(e), .. } | JournalError::Storage(sled::Error::Io(e)) => e,
            JournalError::Probe { source, .. } | JournalError::Prepare { source, .. } => source,
            _ => return self,
        };
        if !eio(io) {
            return self;
        }
        let source = std::io::Error::from_raw_os_error(libc::EIO);
        match self {
            JournalError::Rewritten { path, .. } => JournalError::Rewritten {
                path,
                source: Box::new(JournalError::Disk { path: dir.to_path_buf(), source }),
            },
            _ => JournalError::Disk { path: dir.to_path_buf(), source },
        }
    }

    /// True when sled's own lock on `db` is held by another process.
    pub fn is_locked(&self) -> bool {
        matches!(self, JournalError::SledLocked { .. })
    }

    /// The same error naming `real` where it names the journal directory
    /// (errors of the probe copy name the copy).
    pub(super) fn for_path(self, real: &Path) -> Self {
        let real = real.to_path_buf();
        match self {
            JournalError::Open { source, .. } => JournalError::Open { path: real, source },
            JournalError::OlderFormat { found, .. } => JournalError::OlderFormat { path: real, found },
            JournalError::BehindSeal { path_seal, detail, .. } => {
                JournalError::BehindSeal { path: real, path_seal, detail }
            }
            JournalError::Prepare { source, .. } => JournalError::Prepare { path: real, source },
            other => other,
        }
    }
}

impl From<sled::transaction::TransactionError<()>> for JournalError {
    fn from(e: sled::transaction::TransactionError<()>) -> Self {
        // (sled's transaction errors: storage, or our own abort.)
        match e {
            sled::transaction::TransactionError::Storage(s) => JournalError::Storage(s),
            sled::transaction::TransactionError::Abort(()) => {
                JournalError::Storage(sled::Error::Unsupported("transaction aborted".into()))
            }
        }
    }
}

/// sled's error in words: sled clones an I/O error into one whose message
/// is the original's `Debug` form (`Os { code: 5, kind: …, message: … }`),
/// shown here as the original would be (`Input/output error (os error 5)`).
fn sled_text(e: &sled::Error) -> String {
    if let sled::Error::Io(io) = e {
        let text = io.to_string();
        let code = text.strip_prefix("Os { code: ").and_then(|r| r.split(',').next()).and_then(|c| c.parse().ok());
        if let Some(code) = code {
            return format!("IO error: {}", std::io::Error::from_raw_os_error(code));
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_io_errors_read_as_io_errors() {
        let cloned = std::io::Error::other(format!("{:?}", std::io::Error::from_raw_os_error(libc::EIO)));
        let e = JournalError::Storage(sled::Error::Io(cloned));
        assert_eq!(e.to_string(), "journal write failed: IO error: Input/output error (os error 5)");
        let plain = JournalError::Storage(sled::Error::Unsupported("x".into()));
        assert!(plain.to_string().starts_with("journal write failed: "), "{plain}");
    }

    #[test]
    fn an_io_error_of_the_disk_is_not_an_unopenable_journal() {
        let eio = || sled::Error::Io(std::io::Error::from_raw_os_error(libc::EIO));
        let dir = Path::new("/s/journal");
        let e = JournalError::Open { path: dir.into(), source: eio() }.disk_error(dir);
        assert!(matches!(e, JournalError::Disk { .. }) && !e.is_unopenable(), "{e}");
        assert!(e.to_string().contains("not damage to the journal"), "{e}");
        let e = JournalError::Rewritten { path: dir.into(), source: Box::new(JournalError::Storage(eio())) }
            .disk_error(dir);
        assert!(!e.is_unopenable() && e.to_string().contains("I/O error"), "{e}");
        // Damage sled reports stays what it was: set-aside applies.
        let bad = sled::Error::Corruption { at: None, bt: () };
        let e = JournalError::Open { path: dir.into(), source: bad }.disk_error(dir);
        assert!(e.is_unopenable(), "{e}");
    }
}
