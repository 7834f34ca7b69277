//! The way back from a journal that cannot be opened: move it aside (never
//! delete it) and find, without opening it, the staging and backup paths
//! its transactions named.
//!
//! sled stores values uncompressed, and every path in a record is a bincode
//! string: a u64 little-endian length, then the UTF-8 bytes. So the raw
//! files (`db`, `blobs/*`, whatever survived) are scanned for `.stagehand-`
//! and each hit is widened to the absolute path whose length prefix covers
//! it. That finds names even in a log sled itself refuses to replay. The
//! transaction ids in those names tell the fresh journal where to start
//! counting, so it never reuses a staging or backup name that may still
//! hold content.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsops;

/// The marker every staging and backup name carries.
const MARK: &[u8] = b".stagehand-";
/// Longest path considered.
const MAX_PATH: usize = 4096;

/// Every absolute path containing `.stagehand-` that `bytes` holds as a
/// bincode string (length-prefixed UTF-8).
pub fn stagehand_paths_in(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], MARK).map(|i| i + from) {
        from = i + 1;
        let lowest = i.saturating_sub(MAX_PATH).max(8);
        for s in (lowest..=i).rev() {
            if bytes[s] != b'/' {
                continue;
            }
            let Ok(len8) = <[u8; 8]>::try_from(&bytes[s - 8..s]) else { continue };
            let len = u64::from_le_bytes(len8) as usize;
            if len > MAX_PATH || s + len <= i + MARK.len() || s + len > bytes.len() {
                continue;
            }
            if let Ok(p) = std::str::from_utf8(&bytes[s..s + len]) {
                out.insert(p.to_string());
                break;
            }
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The transaction id in a staging or backup name (`.NAME.stagehand-<id>.staging`).
pub fn txn_id_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    let rest = &name[name.rfind(".stagehand-")? + MARK.len()..];
    rest.split('.').next()?.parse().ok()
}

/// Every `.stagehand-` path named in the files under `journal_dir`.
pub fn scan_dir(journal_dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![journal_dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                out.extend(stagehand_paths_in(&std::fs::read(e.path())?));
            }
        }
    }
    Ok(out)
}

/// What [`set_aside`] did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetAside {
    /// (from, to) of each rename: the journal directory, its seal, its file lists.
    pub moved: Vec<(String, String)>,
    /// Staging/backup paths the damaged journal names that exist on disk,
    /// and any other `.stagehand-` entry beside them.
    pub stagehand_paths: Vec<String>,
    /// Every such path the damaged journal names (existing or not).
    pub named: usize,
    /// The highest transaction id seen in those names or vouched for by the
    /// seal (0 if none): the fresh journal's counter starts past it.
    pub max_txn: u64,
}

/// Renames `journal_dir`, its seal and its file lists to `<name>.damaged-<suffix>` (fsynced,
/// through `fsops`, kill points `fsops.rename.journal_aside`) and reports the
/// `.stagehand-` paths the moved journal names. Deletes nothing.
pub fn set_aside(journal_dir: &Path, suffix: &str) -> io::Result<SetAside> {
    let named = scan_dir(journal_dir)?;
    // The seal's highest reserved id covers transactions whose names the
    // damaged bytes lost (a damaged seal vouches for nothing).
    let sealed = super::seal::read(journal_dir).ok().flatten().map_or(0, |s| s.highest());
    let mut moved = Vec::new();
    // The file lists go with the journal that names them: a fresh journal
    // names none and would collect them as garbage.
    for from in [journal_dir.to_path_buf(), super::seal::path(journal_dir), super::filelist::root(journal_dir)] {
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let mut to = from.clone().into_os_string();
        to.push(format!(".damaged-{suffix}"));
        let to = PathBuf::from(to);
        if to.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", to.display())));
        }
        fsops::rename(&from, &to, "journal_aside")?;
        moved.push((from.display().to_string(), to.display().to_string()));
    }
    let mut found = BTreeSet::new();
    let mut parents = BTreeSet::new();
    for p in &named {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path).is_ok() {
            found.insert(p.clone());
        }
        if let Some(parent) = path.parent() {
            parents.insert(parent.to_path_buf());
        }
    }
    for dir in parents {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(".stagehand-") {
                found.insert(e.path().display().to_string());
            }
        }
    }
    let max_txn = named.iter().chain(found.iter()).filter_map(|p| txn_id_of(p)).max().unwrap_or(0).max(sealed);
    Ok(SetAside { moved, stagehand_paths: found.into_iter().collect(), named: named.len(), max_txn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_length_prefixed_paths() {
        let mut bytes = vec![0xffu8; 20];
        for p in ["/opt/x/.app.stagehand-12.staging", "/opt/y/.lib.so.stagehand-3.backup", "/opt/plain"] {
            bytes.extend_from_slice(&(p.len() as u64).to_le_bytes());
            bytes.extend_from_slice(p.as_bytes());
            bytes.extend_from_slice(&[1, 2, 3]);
        }
        // A marker with no valid length prefix is not a path.
        bytes.extend_from_slice(b"junk/.stagehand-9.staging");
        let found = stagehand_paths_in(&bytes);
        let want: BTreeSet<String> =
            ["/opt/x/.app.stagehand-12.staging", "/opt/y/.lib.so.stagehand-3.backup"].map(String::from).into();
        assert_eq!(found, want);
        assert_eq!(txn_id_of("/opt/x/.app.stagehand-12.staging"), Some(12));
        assert_eq!(txn_id_of("/opt/x/app"), None);
    }
}
