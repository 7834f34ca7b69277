//! File lists: the per-file contents of installed targets, kept outside sled.
//!
//! A record that carried every `FileEntry` of a package grew with the
//! package: at 20,000 files each step rewrote megabytes, sled put them in
//! blob files of its own, and every command's start decoded them. Instead a
//! target's entries are one record of kind `FileList` (the same codec:
//! version, kind, bincode body, CRC-32), stored as the file
//! `STATE/filelists/sha256/<hex>` whose name is the sha256 of its bytes, and
//! records hold only that digest and the entry count ([`FileListRef`]).
//!
//! Durability: [`write_all`] writes each new list to a temporary name,
//! fsyncs it, renames it into place and fsyncs the directory (kill points
//! `fsops.{write,fsync,rename,fsync_dir}.filelist`) — all before the
//! `staged` record that first names them is written. Reading checks the
//! digest, the codec's checksum and the count. Lists no record names any
//! more are removed by [`collect_garbage`] after a transaction finishes;
//! a kill before that only leaves garbage for the next one.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::codec::{self, RecordKind};
use crate::fsops;
use crate::txn::{FileEntry, FileListRef};

const ROLE: &str = "filelist";
const TMP_SUFFIX: &str = ".stagehand-tmp";

/// The file lists' directory beside a journal directory (`STATE/filelists`).
pub fn root(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("filelists")
}

fn objects(root: &Path) -> PathBuf {
    root.join("sha256")
}

/// Why a file list cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileListError {
    #[error("file list {path} is missing")]
    Missing { path: PathBuf },
    #[error("cannot read file list {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("file list {path} does not hash to its name (sha256 {found})")]
    Digest { path: PathBuf, found: String },
    #[error("file list {path} does not decode: {reason}")]
    Decode { path: PathBuf, reason: codec::DecodeError },
    #[error("file list {path} holds {found} entries, its record says {want}")]
    Count { path: PathBuf, found: u64, want: u64 },
}

/// The path of the list `r` names.
pub fn path_of(root: &Path, r: &FileListRef) -> PathBuf {
    objects(root).join(r.hex())
}

/// Writes every list (deduplicated; a list already present and intact is
/// kept) and makes them durable. Returns one reference per list, in order.
pub fn write_all(root: &Path, lists: &[&[FileEntry]]) -> io::Result<Vec<FileListRef>> {
    let dir = objects(root);
    let mut refs = Vec::with_capacity(lists.len());
    let mut pending: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut names = BTreeSet::new();
    for entries in lists {
        let bytes = codec::encode(RecordKind::FileList, entries).map_err(io::Error::other)?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let r = FileListRef { sha256, entries: entries.len() as u64 };
        refs.push(r);
        let path = path_of(root, &r);
        if !names.insert(r.sha256) || intact(&path, &r) {
            continue;
        }
        if pending.is_empty() {
            fsops::create_dir_all_durable(&dir, 0o755 & !fsops::umask(), ROLE)?;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        fsops::remove_tree(&tmp, ROLE)?;
        fsops::write_file(&tmp, &mut bytes.as_slice(), 0o644, ROLE)?;
        pending.push((tmp, path));
    }
    for (tmp, _) in &pending {
        fsops::fsync_file(tmp, ROLE)?;
    }
    for (tmp, path) in &pending {
        fsops::rename_no_sync(tmp, path, ROLE)?;
    }
    if !pending.is_empty() {
        fsops::fsync_dir(&dir, ROLE)?;
    }
    Ok(refs)
}

/// True if `path` holds exactly the list `r` names.
fn intact(path: &Path, r: &FileListRef) -> bool {
    std::fs::read(path).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == r.sha256)
}

/// Reads and checks the list `r` names.
pub fn read(root: &Path, r: &FileListRef) -> Result<Vec<FileEntry>, FileListError> {
    let path = path_of(root, r);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FileListError::Missing { path }),
        Err(source) => return Err(FileListError::Read { path, source }),
    };
    let found: [u8; 32] = Sha256::digest(&bytes).into();
    if found != r.sha256 {
        return Err(FileListError::Digest { path, found: hex::encode(found) });
    }
    let entries: Vec<FileEntry> = codec::decode(RecordKind::FileList, &bytes)
        .map_err(|reason| FileListError::Decode { path: path.clone(), reason })?;
    if entries.len() as u64 != r.entries {
        return Err(FileListError::Count { path, found: entries.len() as u64, want: r.entries });
    }
    Ok(entries)
}

/// Removes every list (and leftover temporary file) not in `referenced`.
/// Returns how many were removed. No fsync: a removal that a power cut
/// undoes leaves only garbage, removed next time.
pub fn collect_garbage(root: &Path, referenced: &BTreeSet<[u8; 32]>) -> io::Result<usize> {
    let dir = objects(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let keep = hex::decode(name.as_ref())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .is_some_and(|d| referenced.contains(&d));
        if !keep {
            fsops::remove_tree(&e.path(), ROLE)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::EntryKind;

    fn entry(rel: &str) -> FileEntry {
        FileEntry {
            rel: rel.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            sha256: "00".repeat(32),
            link: String::new(),
        }
    }

    #[test]
    fn write_read_dedupe_damage_and_collect() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("filelists");
        let a = vec![entry("a"), entry("b")];
        let b = vec![entry("c")];
        let refs = write_all(&root, &[&a, &b, &a]).expect("write");
        assert_eq!(refs[0], refs[2], "same content, same name");
        assert_eq!(refs[0].entries, 2);
        assert_eq!(read(&root, &refs[0]).expect("read"), a);
        assert_eq!(read(&root, &refs[1]).expect("read"), b);
        assert_eq!(std::fs::read_dir(objects(&root)).expect("dir").count(), 2);

        // A damaged list is named, and rewriting it repairs it.
        let p = path_of(&root, &refs[1]);
        std::fs::write(&p, b"garbage").expect("damage");
        assert!(matches!(read(&root, &refs[1]), Err(FileListError::Digest { .. })));
        write_all(&root, &[&b]).expect("rewrite");
        assert_eq!(read(&root, &refs[1]).expect("read"), b);

        let keep: BTreeSet<[u8; 32]> = [refs[0].sha256].into();
        assert_eq!(collect_garbage(&root, &keep).expect("gc"), 1);
        assert!(matches!(read(&root, &refs[1]), Err(FileListError::Missing { .. })));
        assert_eq!(read(&root, &refs[0]).expect("kept"), a);
    }
}
