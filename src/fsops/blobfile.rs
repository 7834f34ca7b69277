//! Filesystem primitives of the blob cache: partial files that grow while a
//! blob downloads, and the fsync that makes them durable before they are
//! renamed into the content-addressed store.
//!
//! This module owns the mutations of a partial blob file — create (or
//! truncate), append, fsync — each behind a named kill point
//! `fsops.<op>.<role>` (the cache passes role `cache`, so the points are
//! `fsops.create.cache`, `fsops.append.cache`, `fsops.truncate.cache` and
//! `fsops.fsync.cache`; renaming into place and removal go through
//! [`super::rename`] and [`super::remove_tree`] with the same role). Appends
//! are buffered and written in chunks of [`APPEND_CHUNK_BYTES`], so a kill
//! point is passed once per chunk, not once per network packet.
//!
//! It never decides what a blob should contain, never hashes, and never
//! touches a destination, a staging path or the journal.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{p2s, point, rec, skipped, with_path};

/// Appended bytes are written to the file in chunks of this size.
pub const APPEND_CHUNK_BYTES: usize = 1024 * 1024;

/// A partial blob file open for appending. Bytes given to [`append`]
/// (`PartialFile::append`) are buffered; [`flush`](PartialFile::flush) or
/// [`sync`](PartialFile::sync) writes them. Dropping it without either
/// loses the buffered bytes, which a later resume treats like any other
/// interruption.
#[derive(Debug)]
pub struct PartialFile {
    file: File,
    path: PathBuf,
    role: String,
    /// Bytes in the file (written), not counting `buf`.
    written: u64,
    buf: Vec<u8>,
}

/// Creates `path` empty (truncating a file already there) for appending.
pub fn create_partial(path: &Path, role: &str) -> io::Result<PartialFile> {
    point("create", role)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| with_path(e, "create", path))?;
    rec(|| json!({"op": "create_partial", "path": p2s(path)}));
    Ok(PartialFile { file, path: path.to_path_buf(), role: role.to_string(), written: 0, buf: Vec::new() })
}

/// Opens an existing partial file to append to its end. Read-only until
/// something is appended; `Ok(None)` if there is no file at `path`.
pub fn reopen_partial(path: &Path, role: &str) -> io::Result<Option<PartialFile>> {
    let file = match OpenOptions::new().append(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(e, "open", path)),
    };
    let meta = file.metadata().map_err(|e| with_path(e, "stat", path))?;
    if !meta.is_file() {
        return Err(with_path(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"), "open", path));
    }
    Ok(Some(PartialFile {
        file,
        path: path.to_path_buf(),
        role: role.to_string(),
        written: meta.len(),
        buf: Vec::new(),
    }))
}

impl PartialFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended so far, buffered or written.
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Bytes written to the file (readable by others), not counting the buffer.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// True if nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes`, writing whole chunks as the buffer fills.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= APPEND_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered bytes to the file (no fsync).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        point("append", &self.role)?;
        self.file.write_all(&self.buf).map_err(|e| with_path(e, "write", &self.path))?;
        rec(|| json!({"op": "append", "path": p2s(&self.path), "bytes": self.buf.len()}));
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Drops everything appended so far (the file becomes empty).
    pub fn truncate(&mut self) -> io::Result<()> {
        point("truncate", &self.role)?;
        self.buf.clear();
        self.file.set_len(0).map_err(|e| with_path(e, "truncate", &self.path))?;
        rec(|| json!({"op": "truncate", "path": p2s(&self.path)}));
        self.written = 0;
        Ok(())
    }

    /// Writes the buffered bytes and fsyncs the file's data and metadata.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        point("fsync", &self.role)?;
        if skipped("fsync", &self.role) {
            return Ok(());
        }
        self.file.sync_all().map_err(|e| with_path(e, "fsync", &self.path))?;
        rec(|| json!({"op": "fsync", "path": p2s(&self.path)}));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_append_reopen_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("part");
        let mut f = create_partial(&p, "test").expect("create");
        assert!(f.is_empty());
        f.append(b"hello ").expect("append");
        assert_eq!(f.len(), 6);
        assert_eq!(std::fs::read(&p).expect("read"), b"", "buffered, not yet written");
        f.sync().expect("sync");
        assert_eq!(std::fs::read(&p).expect("read"), b"hello ");
        drop(f);
        let mut f = reopen_partial(&p, "test").expect("reopen").expect("exists");
        assert_eq!(f.len(), 6);
        let big = vec![7u8; APPEND_CHUNK_BYTES + 5];
        f.append(&big).expect("append big");
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 6 + big.len() as u64, "a full chunk is written");
        f.truncate().expect("truncate");
        assert_eq!(f.len(), 0);
        f.append(b"x").expect("append");
        f.flush().expect("flush");
        assert_eq!(std::fs::read(&p).expect("read"), b"x");
        assert!(reopen_partial(&dir.path().join("absent"), "test").expect("reopen").is_none());
        // create truncates an existing file.
        let f = create_partial(&p, "test").expect("create again");
        assert_eq!(f.len(), 0);
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 0);
    }
}
