//! A reader's view of a journal another process is writing: `list`,
//! `status`, `history`, `verify` and `journal` never wait for a writer.
//!
//! sled cannot be opened twice, so a reader copies the journal's files to a
//! private scratch directory and opens the copy. The copy is taken again
//! until no file of the journal changed while it was read (length, inode,
//! mtime and ctime the same before and after, [`super::clean::fingerprint`]):
//! so it holds the bytes of one instant, which is what a kill of the writer
//! at that instant would leave, and sled recovers that state as it does
//! after every crash the kill-point tests make. The view is opened with
//! its file lists read from the real `STATE/filelists` (written before the
//! records naming them). No recovery runs on it, and nothing of the state
//! dir is written.
//!
//! Must never: open, lock or write the real journal.

use std::path::{Path, PathBuf};

use super::{clean, filelist, probe, Journal, JournalError, Result};
use crate::fsops;

const ROLE: &str = "journal_readcopy";

/// How many times a copy is retried while the writer keeps changing files.
const ATTEMPTS: usize = 50;

/// The scratch directory of a read view; removed when dropped (after the
/// journal opened on it).
#[derive(Debug)]
pub struct ReadCopy {
    dir: PathBuf,
}

impl Drop for ReadCopy {
    fn drop(&mut self) {
        let _ = fsops::remove_tree(&self.dir, ROLE);
    }
}

/// Opens a copy of the journal at `real` (see the module doc).
pub fn open(real: &Path) -> Result<(Journal, ReadCopy)> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let base = std::env::temp_dir().join(format!("stagehand-read-{}-{nanos}", std::process::id()));
    let prep = |source| JournalError::Prepare { path: real.to_path_buf(), source };
    fsops::create_dir(&base, 0o700, ROLE).map_err(prep)?;
    let scratch = ReadCopy { dir: base.clone() };
    let copy = base.join("journal");
    if real.join("db").exists() {
        let mut stable = false;
        for _ in 0..ATTEMPTS {
            let before = clean::fingerprint(real).map_err(prep)?;
            fsops::remove_tree(&copy, ROLE).map_err(prep)?;
            probe::copy_dir(real, &copy).map_err(prep)?;
            if before.is_some() && clean::fingerprint(real).map_err(prep)? == before {
                stable = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !stable {
            return Err(prep(std::io::Error::other("the journal kept changing while it was copied for reading")));
        }
    } else {
        fsops::create_dir(&copy, 0o700, ROLE).map_err(prep)?;
    }
    let mut j = Journal::open_here(&copy, super::Opened::ReadView)?;
    j.filelists = filelist::root(real);
    Ok((j, scratch))
}
