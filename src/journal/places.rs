//! The places: every directory in which this state dir's transactions may
//! have created a staging or backup path, kept outside sled in
//! `STATE/places`, so `repair --set-aside-journal` finds `.stagehand-`
//! leftovers even when the journal's bytes are gone (a `db` cut to 0 bytes).
//!
//! A directory is added, durably (temp file, fsync, rename, parent fsync;
//! kill points `fsops.*.places`), before the first record naming a staging
//! or backup path in it is written, so it is on disk before any such path
//! can be. The file only grows (a few bytes per distinct target parent);
//! it survives set-aside, since the places stay what they were.
//!
//! Format: one absolute path per line, as a JSON string. A line that does
//! not parse is skipped by the reader, so damage loses only that line.
//!
//! Must never: decide anything, or remove a path.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fsops;

const ROLE: &str = "places";

/// The places file beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("places")
}

/// Every directory `file` names (damaged lines skipped; none if absent).
pub fn read(file: &Path) -> BTreeSet<String> {
    let text = match std::fs::read(file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return BTreeSet::new(),
    };
    text.lines().filter_map(|l| serde_json::from_str::<String>(l).ok()).filter(|p| p.starts_with('/')).collect()
}

/// The places file of one journal, with what it holds cached.
pub struct Places {
    file: PathBuf,
    known: Mutex<Option<BTreeSet<String>>>,
}

impl Places {
    pub fn new(journal_dir: &Path) -> Places {
        Places { file: path(journal_dir), known: Mutex::new(None) }
    }

    /// Adds `dirs` durably if any is new. Cheap when none is.
    pub fn note(&self, dirs: impl IntoIterator<Item = String>) -> io::Result<()> {
        let mut guard = match self.known.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let known = guard.get_or_insert_with(|| read(&self.file));
        let new: Vec<String> = dirs.into_iter().filter(|d| !known.contains(d)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut all = known.clone();
        all.extend(new);
        let mut text = String::new();
        for d in &all {
            text.push_str(&serde_json::to_string(d).map_err(io::Error::other)?);
            text.push('\n');
        }
        let mut tmp = self.file.clone().into_os_string();
        tmp.push(".stagehand-tmp");
        let tmp = PathBuf::from(tmp);
        fsops::remove_tree(&tmp, ROLE)?;
        fsops::write_file(&tmp, &mut text.as_bytes(), 0o600, ROLE)?;
        fsops::fsync_file(&tmp, ROLE)?;
        fsops::rename(&tmp, &self.file, ROLE)?;
        *known = all;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_durably_and_survives_a_damaged_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("journal");
        let p = Places::new(&j);
        p.note(["/opt/a".to_string(), "/opt/b c".to_string()]).expect("note");
        p.note(["/opt/a".to_string()]).expect("again");
        assert_eq!(read(&path(&j)), BTreeSet::from(["/opt/a".to_string(), "/opt/b c".to_string()]));
        let mut text = std::fs::read_to_string(path(&j)).expect("read");
        text.insert_str(0, "\"/opt/tor");
        std::fs::write(path(&j), text).expect("write");
        assert!(read(&path(&j)).contains("/opt/b c"));
        assert!(read(&dir.path().join("absent")).is_empty());
    }
}
