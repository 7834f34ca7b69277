//! The way back from a journal that cannot be opened: move it aside (never
//! delete it) and find, without opening it, the staging and backup paths
//! its transactions named.
//!
//! [`survey`] runs before anything opens sled (an open rewrites part of a
//! damaged `db`, see [`super::probe`]) and does not need the journal's bytes
//! at all: it lists every `.stagehand-` entry in the directories that
//! [`super::places`] recorded, and in the parents of every absolute path
//! the raw files still hold (staging and backup names, the targets of
//! package and transaction records).
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

/// Every absolute path `bytes` holds as a bincode string (a u64
/// little-endian length, then that many bytes of UTF-8 without control
/// characters).
pub fn paths_in(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in 8..bytes.len() {
        if bytes[s] != b'/' {
            continue;
        }
        let Ok(len8) = <[u8; 8]>::try_from(&bytes[s - 8..s]) else { continue };
        let len = u64::from_le_bytes(len8);
        if !(2..=MAX_PATH as u64).contains(&len) || s + len as usize > bytes.len() {
            continue;
        }
        if let Ok(p) = std::str::from_utf8(&bytes[s..s + len as usize]) {
            if !p.chars().any(char::is_control) {
                out.insert(p.to_string());
            }
        }
    }
    out
}

/// Directories looked into at most (a damaged file could name many).
const MAX_DIRS: usize = 10_000;

/// What the old journal leaves on disk, found without opening it.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// Every `.stagehand-` path the journal's raw files name.
    pub named: BTreeSet<String>,
    /// Every `.stagehand-` entry on disk in the places and in the parents of
    /// the paths the raw files name, and every named one that exists.
    pub found: BTreeSet<String>,
}

/// Scans `journal_dir`'s raw files and the places file beside it, and the
/// directories they name; reads only.
pub fn survey(journal_dir: &Path) -> io::Result<Survey> {
    let mut named = BTreeSet::new();
    let mut dirs: BTreeSet<PathBuf> =
        super::places::read(&super::places::path(journal_dir)).into_iter().map(PathBuf::from).collect();
    if journal_dir.is_dir() {
        let mut stack = vec![journal_dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let bytes = std::fs::read(e.path())?;
                named.extend(stagehand_paths_in(&bytes));
                for p in paths_in(&bytes) {
                    if dirs.len() >= MAX_DIRS {
                        break;
                    }
                    if let Some(parent) = Path::new(&p).parent() {
                        dirs.insert(parent.to_path_buf());
                    }
                }
            }
        }
    }
    for p in &named {
        if let Some(parent) = Path::new(p).parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    let mut found: BTreeSet<String> = named.iter().filter(|p| std::fs::symlink_metadata(p).is_ok()).cloned().collect();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(".stagehand-") {
                found.insert(e.path().display().to_string());
            }
        }
    }
    Ok(Survey { named, found })
}

/// The highest transaction id in a `.stagehand-` name in the directories
/// the places file beside `journal_dir` lists (0 if none): where a new
/// journal starts counting, even one whose set-aside was killed before it
/// raised the counter.
pub fn max_txn_in_places(journal_dir: &Path) -> u64 {
    let mut max = 0;
    for dir in super::places::read(&super::places::path(journal_dir)) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str().and_then(txn_id_of) {
                max = max.max(id);
            }
        }
    }
    max
}

/// What [`set_aside`] did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetAside {
    /// (from, to) of each rename: the journal directory, its seal, its file lists.
    pub moved: Vec<(String, String)>,
    /// `.stagehand-` paths on disk that belong to the old journal: see [`Survey::found`].
    pub stagehand_paths: Vec<String>,
    /// Every such path the damaged journal names (existing or not).
    pub named: usize,
    /// The highest transaction id seen in those names or vouched for by the
    /// seal (0 if none): the fresh journal's counter starts past it.
    pub max_txn: u64,
}

/// Renames `journal_dir`, its seal and its file lists to `<name>.damaged-<suffix>` (fsynced,
/// through `fsops`, kill points `fsops.rename.journal_aside`) and reports
/// what `survey` (taken before anything opened the journal) found.
/// Deletes nothing.
pub fn set_aside(journal_dir: &Path, suffix: &str, survey: &Survey) -> io::Result<SetAside> {
    // The seal's highest reserved id covers transactions whose names the
    // damaged bytes lost (a damaged seal vouches for nothing).
    let sealed = super::seal::read(journal_dir).ok().flatten().map_or(0, |s| s.highest());
    let mut moved = Vec::new();
    // The file lists go with the journal that names them: a fresh journal
    // names none and would collect them as garbage.
    let froms = [journal_dir.to_path_buf(), super::seal::path(journal_dir), super::filelist::root(journal_dir)];
    let aside = |from: &Path, n: u32| {
        let mut to = from.as_os_str().to_os_string();
        to.push(if n == 0 { format!(".damaged-{suffix}") } else { format!(".damaged-{suffix}-{n}") });
        PathBuf::from(to)
    };
    // A name no earlier set-aside took (one in the same second, or one a
    // kill interrupted, keeps its own).
    let n = (0..1000)
        .find(|&n| froms.iter().all(|f| std::fs::symlink_metadata(aside(f, n)).is_err()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::AlreadyExists, format!("no free .damaged-{suffix}-N name")))?;
    for from in froms {
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let to = aside(&from, n);
        fsops::rename(&from, &to, "journal_aside")?;
        moved.push((from.display().to_string(), to.display().to_string()));
    }
    let max_txn =
        survey.named.iter().chain(survey.found.iter()).filter_map(|p| txn_id_of(p)).max().unwrap_or(0).max(sealed);
    Ok(SetAside { moved, stagehand_paths: survey.found.iter().cloned().collect(), named: survey.named.len(), max_txn })
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
        let all = paths_in(&bytes);
        assert!(all.contains("/opt/plain") && all.contains("/opt/x/.app.stagehand-12.staging"), "{all:?}");
        assert_eq!(all.len(), 3, "{all:?}");
    }
}
