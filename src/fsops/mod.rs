//! Every filesystem mutation stagehand performs, and every fsync.
//!
//! This module owns the primitive operations — durable file writes, fsync of
//! files and of parent directories, rename, atomic exchange, removal — and
//! the named kill points ([`killpoint`]) that tests use to crash or fail the
//! process before each of them. Kill point names are `fsops.<op>.<role>`,
//! where the role says which path of a transaction is touched (`staging`,
//! `backup`, `swap`, …).
//!
//! It makes no decisions: what to rename where is decided by `txn` and
//! ordered by `installer`. It never touches the journal.

pub mod blobfile;
pub mod killpoint;
pub mod record;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::txn::{BirthTime, EntryKind, Identity};

fn point(op: &str, role: &str) -> io::Result<()> {
    killpoint::hit(&format!("fsops.{op}.{role}"))
}

fn p2s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Logs a completed mutation when recording (see [`record`]).
fn rec(line: impl FnOnce() -> serde_json::Value) {
    if record::enabled() {
        record::log(line());
    }
}

/// True when the test-only switch says to skip this fsync.
fn skipped(op: &str, role: &str) -> bool {
    record::skip_fsync(&format!("fsops.{op}.{role}"))
}

fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

const COPY_BUF_BYTES: usize = 256 * 1024;

thread_local! {
    /// The copy buffer of [`write_file`] and [`sha256_file`] (taken while in
    /// use, so a nested call would simply allocate its own).
    static COPY_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What a completed file write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub size: u64,
    /// Lowercase hex sha256 of the bytes written.
    pub sha256: String,
}

/// Creates `path` (which must not exist) with `mode`, copies `src` into it
/// while hashing, and closes it. No fsync: call [`fsync_file`] (deferred,
/// so many files can be written before any is synced, as dpkg does).
pub fn write_file(path: &Path, src: &mut dyn Read, mode: u32, role: &str) -> io::Result<WrittenFile> {
    point("write", role)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(path)
        .map_err(|e| with_path(e, "create", path))?;
    let mut hasher = Sha256::new();
    // One copy buffer per thread, reused: a fresh 256 KiB buffer per file
    // is an mmap and munmap per file (glibc maps allocations that large),
    // 40,000 system calls and their page faults for 20,000 small files.
    let mut pooled = COPY_BUF.with(|b| b.take());
    pooled.resize(COPY_BUF_BYTES, 0);
    let buf = pooled.as_mut_slice();
    let mut size = 0u64;
    let mut recorded = record::enabled().then(Vec::new);
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        file.write_all(chunk).map_err(|e| with_path(e, "write", path))?;
        if let Some(r) = recorded.as_mut() {
            r.extend_from_slice(chunk);
        }
        size += n as u64;
    }
    COPY_BUF.with(|b| b.set(pooled));
    // The umask may have narrowed the mode given at create time.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| with_path(e, "chmod", path))?;
    if let Some(data) = recorded {
        record::log(json!({"op": "write_file", "path": p2s(path), "mode": mode & 0o7777, "data": hex::encode(data)}));
    }
    Ok(WrittenFile { size, sha256: hex::encode(hasher.finalize()) })
}

/// fsyncs a regular file's data and metadata.
pub fn fsync_file(path: &Path, role: &str) -> io::Result<()> {
    point("fsync", role)?;
    if skipped("fsync", role) {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| with_path(e, "open for fsync", path))?;
    f.sync_all().map_err(|e| with_path(e, "fsync", path))?;
    rec(|| json!({"op": "fsync", "path": p2s(path)}));
    Ok(())
}

/// Asks the disk whether it still syncs `path`: an fsync of a file whose
/// content was already made durable, so it changes nothing and passes no
/// kill point. For deciding whether closing sled is safe (`Journal`'s drop).
pub fn sync_check(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsyncs a directory, making the names in it (creates, renames, unlinks) durable.
pub fn fsync_dir(path: &Path, role: &str) -> io::Result<()> {
    point("fsync_dir", role)?;
    if skipped("fsync_dir", role) {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| with_path(e, "open dir for fsync", path))?;
    f.sync_all().map_err(|e| with_path(e, "fsync dir", path))?;
    rec(|| json!({"op": "fsync_dir", "path": p2s(path)}));
    Ok(())
}

/// `syncfs(2)`: makes every write to the filesystem holding `path` durable —
/// file data, inodes and directory entries — in one journal commit, instead
/// of one per file. A barrier for everything written before it.
pub fn syncfs(path: &Path, role: &str) -> io::Result<()> {
    point("syncfs", role)?;
    if skipped("syncfs", role) {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| with_path(e, "open for syncfs", path))?;
    // SAFETY: syncfs only reads the descriptor, which is open for the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc != 0 {
        return Err(with_path(io::Error::last_os_error(), "syncfs", path));
    }
    rec(|| json!({"op": "syncfs", "path": p2s(path)}));
    Ok(())
}

/// How staged content is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` per filesystem after everything is written (default).
    Syncfs,
    /// `fsync` every file and directory (`STAGEHAND_SYNC=fsync`), for comparison.
    PerFile,
}

/// The sync mode, from `STAGEHAND_SYNC` (read once).
pub fn sync_mode() -> SyncMode {
    static MODE: std::sync::OnceLock<SyncMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("STAGEHAND_SYNC").as_deref() {
        Ok("fsync") => SyncMode::PerFile,
        _ => SyncMode::Syncfs,
    })
}

/// Creates one directory with `mode` (the parent must exist).
pub fn create_dir(path: &Path, mode: u32, role: &str) -> io::Result<()> {
    point("mkdir", role)?;
    fs::create_dir(path).map_err(|e| with_path(e, "mkdir", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| with_path(e, "chmod", path))?;
    rec(|| json!({"op": "mkdir", "path": p2s(path), "mode": mode & 0o7777}));
    Ok(())
}

/// Creates `path` and any missing ancestors with `mode` (an existing
/// directory's mode is never changed), fsyncing each parent whose entries
/// changed, so the new directories survive power loss.
pub fn create_dir_all_durable(path: &Path, mode: u32, role: &str) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let parent = parent_of(path)?;
    create_dir_all_durable(parent, mode, role)?;
    match create_dir(path, mode, role) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    fsync_dir(parent, role)
}

/// The process's umask, read once (from `/proc/self/status`, which reads it
/// without changing it; 022 where that is unavailable).
pub fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// Sets a directory's permission bits (after its contents are written).
pub fn set_mode(path: &Path, mode: u32, role: &str) -> io::Result<()> {
    point("chmod", role)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| with_path(e, "chmod", path))?;
    rec(|| json!({"op": "chmod", "path": p2s(path), "mode": mode & 0o7777}));
    Ok(())
}

/// Sets the modification time of `path` (not following a final symlink;
/// the access time is left as it is): for content restored exactly, such
/// as a version captured by `--adopt`.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32, role: &str) -> io::Result<()> {
    point("utimes", role)?;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos.min(999_999_999) as libc::c_long },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(with_path(io::Error::last_os_error(), "set the mtime of", path));
    }
    Ok(())
}

/// Sets the owner and group of `path` (not following a final symlink).
/// Only root may give a file away; the caller restores ownership only then.
/// Changing the owner clears setuid/setgid: set the mode afterwards.
pub fn set_owner(path: &Path, uid: u32, gid: u32, role: &str) -> io::Result<()> {
    point("chown", role)?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| with_path(e, "chown", path))
}

/// Creates a symbolic link at `path` pointing to `target`.
pub fn symlink(target: &Path, path: &Path, role: &str) -> io::Result<()> {
    point("symlink", role)?;
    std::os::unix::fs::symlink(target, path).map_err(|e| with_path(e, "symlink", path))?;
    rec(|| json!({"op": "symlink", "path": p2s(path), "target": p2s(target)}));
    Ok(())
}

/// Creates a hard link `path` to the existing `original`.
pub fn hard_link(original: &Path, path: &Path, role: &str) -> io::Result<()> {
    point("link", role)?;
    fs::hard_link(original, path).map_err(|e| with_path(e, "hard link", path))?;
    rec(|| json!({"op": "link", "path": p2s(path), "original": p2s(original)}));
    Ok(())
}

/// Copies the regular file `from` to a new `to`, with no fsync: for scratch
/// copies that are thrown away (the journal's probe copy), never for
/// content anything relies on after a crash.
pub fn copy_file(from: &Path, to: &Path, role: &str) -> io::Result<u64> {
    point("copy", role)?;
    if fs::symlink_metadata(to).is_ok() {
        return Err(with_path(io::Error::from(io::ErrorKind::AlreadyExists), "copy to", to));
    }
    let n = fs::copy(from, to).map_err(|e| with_path(e, &format!("copy {} to", from.display()), to))?;
    rec(|| json!({"op": "copy_file", "from": p2s(from), "to": p2s(to)}));
    Ok(n)
}

/// Renames `from` to `to` (same directory or same filesystem) and fsyncs the
/// parent directories of both.
pub fn rename(from: &Path, to: &Path, role: &str) -> io::Result<()> {
    point("rename", role)?;
    fs::rename(from, to).map_err(|e| with_path(e, &format!("rename {} to", from.display()), to))?;
    rec(|| json!({"op": "rename", "from": p2s(from), "to": p2s(to)}));
    sync_parents(from, to, role)
}

/// Renames `from` to `to`, which must not exist (`renameat2` with
/// `RENAME_NOREPLACE`; where the filesystem cannot, an `lstat` of `to`
/// first), then fsyncs both parents. Recovery and rollback move content to
/// paths they observed empty: whatever appeared there since is never
/// replaced, and the error (`AlreadyExists`) names it. Same kill point and
/// recorded op as [`rename`].
pub fn rename_new(from: &Path, to: &Path, role: &str) -> io::Result<()> {
    point("rename", role)?;
    let cf = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ct = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, cf.as_ptr(), libc::AT_FDCWD, ct.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                if fs::symlink_metadata(to).is_ok() {
                    return Err(with_path(
                        io::Error::from(io::ErrorKind::AlreadyExists),
                        &format!("rename {} to (already exists, not replaced)", from.display()),
                        to,
                    ));
                }
                fs::rename(from, to).map_err(|e| with_path(e, &format!("rename {} to", from.display()), to))?;
            }
            _ => return Err(with_path(err, &format!("rename {} to", from.display()), to)),
        }
    }
    rec(|| json!({"op": "rename", "from": p2s(from), "to": p2s(to)}));
    sync_parents(from, to, role)
}

/// Renames `from` to `to` without fsyncing: the caller renames several
/// names in one directory and then fsyncs it once ([`fsync_dir`]).
pub fn rename_no_sync(from: &Path, to: &Path, role: &str) -> io::Result<()> {
    point("rename", role)?;
    fs::rename(from, to).map_err(|e| with_path(e, &format!("rename {} to", from.display()), to))?;
    rec(|| json!({"op": "rename", "from": p2s(from), "to": p2s(to)}));
    Ok(())
}

/// Atomically exchanges two existing paths with `renameat2(RENAME_EXCHANGE)`
/// and fsyncs their parents. Returns `Ok(false)`, having changed nothing, if
/// the filesystem or kernel does not support exchange.
pub fn exchange(a: &Path, b: &Path, role: &str) -> io::Result<bool> {
    point("exchange", role)?;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(with_path(err, &format!("exchange {} with", a.display()), b)),
        };
    }
    rec(|| json!({"op": "exchange", "a": p2s(a), "b": p2s(b)}));
    sync_parents(a, b, role)?;
    Ok(true)
}

fn sync_parents(a: &Path, b: &Path, role: &str) -> io::Result<()> {
    let pa = parent_of(a)?;
    let pb = parent_of(b)?;
    fsync_dir(pa, role)?;
    if pa != pb {
        fsync_dir(pb, role)?;
    }
    Ok(())
}

/// Removes a file, symlink or whole directory tree at `path` (absent is
/// fine), then fsyncs its parent. It is only ever given stagehand's own
/// paths (staging, backup, cache), so whatever modes an artifact gave its
/// directories, each one lacking `u+rwx` is made so before it is read and
/// emptied (a 0555 tree installed by an ordinary user can be removed).
/// It never crosses into another filesystem: every directory's `st_dev` is
/// compared with the tree's root before anything is removed, and a mount
/// inside the tree is refused, naming it (`ErrorKind::CrossesDevices`). The kill point `fsops.remove.<role>.partial`
/// is passed after the first entry of a tree is gone, so tests can crash
/// with a half-removed tree. A tree's files are unlinked by
/// [`REMOVE_THREADS`] threads at once: each unlink of a large file waits on
/// the disk, and the waits overlap (measured here: 0.6 s instead of 3.9 s
/// for 2,000 files, 200 MiB).
pub fn remove_tree(path: &Path, role: &str) -> io::Result<()> {
    point("remove", role)?;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_path(e, "stat", path)),
    };
    if meta.is_dir() {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        collect_tree(path, meta.dev(), &mut files, &mut dirs)?;
        if let Some(first) = files.pop() {
            unlink_quiet(&first)?;
            point("remove", &format!("{role}.partial"))?;
        }
        unlink_parallel(&files)?;
        // Deepest first: `collect_tree` lists a directory before its children.
        for d in dirs.iter().rev() {
            fs::remove_dir(d).map_err(|e| with_path(e, "rmdir", d))?;
        }
    } else {
        fs::remove_file(path).map_err(|e| with_path(e, "unlink", path))?;
    }
    // Recorded as one unlink of the whole subtree from its parent.
    rec(|| json!({"op": "remove_tree", "path": p2s(path)}));
    fsync_dir(parent_of(path)?, role)
}

/// Threads that unlink a tree's files concurrently.
pub const REMOVE_THREADS: usize = 8;

fn collect_tree(
    dir: &Path,
    dev: u64,
    files: &mut Vec<std::path::PathBuf>,
    dirs: &mut Vec<std::path::PathBuf>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(|e| with_path(e, "stat", dir))?;
    if meta.dev() != dev {
        return Err(io::Error::new(
            io::ErrorKind::CrossesDevices,
            format!(
                "refusing to remove {}: another filesystem is mounted there (device {:#x}, not {:#x}); \
                 nothing under it was touched: unmount it (`umount {}`), then run the command again",
                dir.display(),
                meta.dev(),
                dev,
                dir.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        // Not recorded: the whole tree is about to go, and is recorded as one removal.
        fs::set_permissions(dir, fs::Permissions::from_mode((meta.permissions().mode() | 0o700) & 0o7777))
            .map_err(|e| with_path(e, "chmod u+rwx (to empty it)", dir))?;
    }
    dirs.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).map_err(|e| with_path(e, "read dir", dir))? {
        let entry = entry.map_err(|e| with_path(e, "read dir", dir))?;
        let p = entry.path();
        if entry.file_type().map_err(|e| with_path(e, "stat", &p))?.is_dir() {
            collect_tree(&p, dev, files, dirs)?;
        } else {
            files.push(p);
        }
    }
    Ok(())
}

fn unlink_quiet(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, "unlink", p)),
        _ => Ok(()),
    }
}

fn unlink_parallel(files: &[std::path::PathBuf]) -> io::Result<()> {
    if files.len() < 64 {
        return files.iter().try_for_each(|f| unlink_quiet(f));
    }
    let chunk = files.len().div_ceil(REMOVE_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|f| unlink_quiet(f))))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("unlink thread panicked"))))
    })
}

/// Removes an empty directory (used to undo directories a txn created).
pub fn remove_empty_dir(path: &Path, role: &str) -> io::Result<()> {
    point("rmdir", role)?;
    match fs::remove_dir(path) {
        Ok(()) => {
            rec(|| json!({"op": "remove_tree", "path": p2s(path)}));
            fsync_dir(parent_of(path)?, role)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_path(e, "rmdir", path)),
    }
}

/// Observes what is at `path` without following a final symlink: its
/// identity (device, inode, kind), or `None` if nothing is there. Read-only.
pub fn identity(path: &Path) -> io::Result<Option<Identity>> {
    match fs::symlink_metadata(path) {
        Ok(m) => {
            Ok(Some(Identity { dev: m.dev(), ino: m.ino(), kind: kind_of(&m), sha256: None, btime: birth_time(&m) }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, "stat", path)),
    }
}

/// The inode's birth time, where the filesystem records one: std's
/// `created()` is `statx(STATX_BTIME)` on Linux, and an error where the
/// filesystem or kernel has none.
pub fn birth_time(m: &fs::Metadata) -> Option<BirthTime> {
    let t = m.created().ok()?;
    Some(match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => BirthTime { secs: i64::try_from(d.as_secs()).ok()?, nanos: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).ok()?;
            match d.subsec_nanos() {
                0 => BirthTime { secs, nanos: 0 },
                n => BirthTime { secs: secs - 1, nanos: 1_000_000_000 - n },
            }
        }
    })
}

/// The filesystem that holds `path`, or would hold it once created: the
/// device of its nearest existing ancestor, and the bytes free there for an
/// ordinary user (`statvfs` `f_bavail`). Read-only.
pub fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    let (dev, v) = statvfs_of(path)?;
    Ok((dev, v.f_bavail.saturating_mul(v.f_frsize)))
}

/// The total size in bytes of the filesystem that holds `path` (or would
/// hold it): 0 for a pseudo filesystem such as `/proc`. Read-only.
pub fn total_space(path: &Path) -> io::Result<u64> {
    let (_, v) = statvfs_of(path)?;
    Ok(v.f_blocks.saturating_mul(v.f_frsize))
}

/// `statvfs` of the nearest existing ancestor of `path`, with its device.
fn statvfs_of(path: &Path) -> io::Result<(u64, libc::statvfs)> {
    let mut p = path;
    let meta = loop {
        match fs::metadata(p) {
            Ok(m) => break m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match p.parent() {
                Some(parent) => p = parent,
                None => return Err(with_path(e, "stat", path)),
            },
            Err(e) => return Err(with_path(e, "stat", p)),
        }
    };
    let c = CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut v) } != 0 {
        return Err(with_path(io::Error::last_os_error(), "statvfs", p));
    }
    Ok((meta.dev(), v))
}

/// The kind of a directory entry, from its metadata.
pub fn kind_of(m: &fs::Metadata) -> EntryKind {
    let ft = m.file_type();
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

/// Hashes a regular file's bytes (lowercase hex sha256). Read-only.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| with_path(e, "open", path))?;
    let mut hasher = Sha256::new();
    let mut pooled = COPY_BUF.with(|b| b.take());
    pooled.resize(COPY_BUF_BYTES, 0);
    let buf = pooled.as_mut_slice();
    let mut size = 0u64;
    loop {
        let n = f.read(buf).map_err(|e| with_path(e, "read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    COPY_BUF.with(|b| b.set(pooled));
    Ok((size, hex::encode(hasher.finalize())))
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        Some(_) => Ok(Path::new(".")),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no parent", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_hash_and_exchange() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let w = write_file(&a, &mut &b"hello"[..], 0o644, "test").expect("write a");
        assert_eq!(w.size, 5);
        assert_eq!(w.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        write_file(&b, &mut &b"world"[..], 0o600, "test").expect("write b");
        let ia = identity(&a).expect("stat").expect("exists");
        assert!(exchange(&a, &b, "test").expect("exchange"));
        assert_eq!(fs::read(&a).expect("read"), b"world");
        assert_eq!(identity(&b).expect("stat"), Some(ia));
        assert!(write_file(&a, &mut &b"x"[..], 0o644, "test").is_err(), "create_new refuses");
        // rename_new never replaces what is at its destination.
        let e = rename_new(&a, &b, "test").expect_err("b exists");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(fs::read(&b).expect("read"), b"hello", "b is untouched");
        rename_new(&a, &dir.path().join("c"), "test").expect("rename to a free name");
        assert!(!a.exists());
    }

    #[test]
    fn remove_tree_and_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("x/y/z");
        create_dir_all_durable(&t, 0o755, "test").expect("mkdirs");
        write_file(&t.join("f"), &mut &b"1"[..], 0o644, "test").expect("write");
        remove_tree(&dir.path().join("x"), "test").expect("remove");
        assert!(identity(&dir.path().join("x")).expect("stat").is_none());
        remove_tree(&dir.path().join("x"), "test").expect("absent is fine");
    }

    #[test]
    fn remove_tree_of_read_only_dirs() {
        // As root the mode bits are not enforced, but the modes are still
        // changed before reading: check they were, and the tree is gone.
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("ro/sub");
        create_dir_all_durable(&t, 0o755, "test").expect("mkdirs");
        write_file(&t.join("f"), &mut &b"1"[..], 0o444, "test").expect("write");
        set_mode(&t, 0o000, "test").expect("chmod");
        set_mode(&dir.path().join("ro"), 0o555, "test").expect("chmod");
        remove_tree(&dir.path().join("ro"), "test").expect("remove read-only tree");
        assert!(identity(&dir.path().join("ro")).expect("stat").is_none());
    }
}
