//! The state dir is trusted: the journal in it drives renames and removals
//! as whoever runs stagehand, and its blob cache holds what was pulled with
//! credentials. So it must be private to its owner.
//!
//! This module creates a missing state dir 0700 (missing ancestors too; an
//! existing directory's mode is never changed) and refuses one that anyone
//! but the current user could have written: the dir or anything in it owned
//! by another user, writable by group or others, or a symlink inside it.
//! The state dir itself must not be a symlink, and no directory above it
//! may let another user replace it: each ancestor must belong to root or to
//! the current user, and must not be writable by group or others unless it
//! is sticky (like `/tmp`). It only reads metadata; creation goes through
//! `fsops`.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::{Error, Result};
use crate::fsops;

/// Entries checked below the state dir before giving up the walk (a cache
/// holds one file per blob; this is far beyond any real one).
const MAX_CHECKED: usize = 1_000_000;

fn refuse(path: &Path, what: String, fix: String) -> Error {
    Error::Refused(format!(
        "the state dir is not private: {} {what}. stagehand trusts its state dir like its own code; {fix}, or use another --state-dir",
        path.display()
    ))
}

/// Why `meta` (of `path`) must not be trusted by user `uid`, if it must not.
fn untrusted(path: &Path, meta: &std::fs::Metadata, uid: u32) -> Option<Error> {
    if meta.uid() != uid {
        return Some(refuse(
            path,
            format!("is owned by uid {}, not by uid {uid} who runs stagehand", meta.uid()),
            format!("run `chown -R {uid} {}` if it is yours", path.display()),
        ));
    }
    if meta.file_type().is_symlink() {
        return Some(refuse(path, "is a symlink".into(), format!("remove {}", path.display())));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(refuse(
            path,
            format!("is writable by group or others (mode {:o})", meta.mode() & 0o7777),
            format!("run `chmod go-w {}`", path.display()),
        ));
    }
    None
}

/// Why a directory above the state dir lets someone else replace the
/// state dir, if it does.
fn unsafe_ancestor(state_dir: &Path, uid: u32) -> Option<Error> {
    let abs =
        if state_dir.is_absolute() { state_dir.to_path_buf() } else { std::env::current_dir().ok()?.join(state_dir) };
    // The nearest existing directory above (missing ones are created 0700).
    // Symlinks above the state dir are resolved; the directories they lead
    // to are the ones checked.
    let real = abs.ancestors().skip(1).find_map(|a| std::fs::canonicalize(a).ok())?;
    let mut dir = Some(real.as_path());
    while let Some(d) = dir {
        let meta = std::fs::metadata(d).ok()?;
        let (owner, mode) = (meta.uid(), meta.mode());
        let sticky = mode & 0o1000 != 0;
        let fix = |why: String, fix: String| {
            Error::Refused(format!(
                "the state dir {} is not safe: the directory {} above it {why}, so another user could swap the \
                 state dir for a symlink to a directory of their choosing (nothing was changed); {fix}, or use a \
                 --state-dir under a directory only root and you can write",
                state_dir.display(),
                d.display()
            ))
        };
        if owner != 0 && owner != uid {
            return Some(fix(format!("is owned by uid {owner}"), format!("run `chown root {}`", d.display())));
        }
        if mode & 0o022 != 0 && !sticky {
            return Some(fix(
                format!("is writable by group or others without the sticky bit (mode {:o})", mode & 0o7777),
                format!("run `chmod go-w {}` (or `chmod +t` for a shared directory)", d.display()),
            ));
        }
        dir = d.parent();
    }
    None
}

/// Whether `state_dir` does not exist yet: a read-only command then has
/// nothing to read and creates nothing. A missing state dir under a
/// directory another user could write is refused, as [`prepare`] refuses it.
pub fn is_missing(state_dir: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            match unsafe_ancestor(state_dir, uid) {
                Some(e) => Err(e),
                None => Ok(true),
            }
        }
        // A state dir above which this user may not even look (another
        // user's HOME): neither "nothing installed" nor an attempt to create it.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(Error::Refused(super::hints::state_dir_not_visible(state_dir, &e)))
        }
        _ => Ok(false),
    }
}

/// For a read view while another process writes (it holds the lock, so it
/// passed [`prepare`]): the state dir itself and the directories above it
/// are checked, not every entry (which the writer may be adding or removing).
pub fn check_for_reading(state_dir: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if let Some(e) = unsafe_ancestor(state_dir, uid) {
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(state_dir)
        .map_err(|source| Error::Io { context: format!("checking {}", state_dir.display()), source })?;
    match untrusted(state_dir, &meta, uid) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Creates `state_dir` (0700) if it is missing, then checks that it and
/// everything in it belong to the current user and nobody else can write them.
pub fn prepare(state_dir: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if let Ok(m) = std::fs::symlink_metadata(state_dir) {
        if m.file_type().is_symlink() {
            return Err(Error::Refused(format!(
                "the state dir {} is a symlink; stagehand refuses it (another user could point it at any \
                 directory) and changed nothing: pass the real directory it leads to as --state-dir, or \
                 remove the symlink",
                state_dir.display()
            )));
        }
    }
    if let Some(e) = unsafe_ancestor(state_dir, uid) {
        return Err(e);
    }
    fsops::create_dir_all_durable(state_dir, 0o700, "state").map_err(|source| {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
        if matches!(source.kind(), PermissionDenied | ReadOnlyFilesystem) {
            Error::Refused(super::hints::state_dir_not_created(state_dir, &source))
        } else {
            Error::Io { context: format!("creating the state dir {}", state_dir.display()), source }
        }
    })?;
    let stat = |p: &Path, follow: bool| {
        let m = if follow { std::fs::metadata(p) } else { std::fs::symlink_metadata(p) };
        m.map_err(|source| Error::Io { context: format!("checking {}", p.display()), source })
    };
    let meta = stat(state_dir, false)?;
    if !meta.is_dir() {
        return Err(Error::Refused(format!("the state dir {} is not a directory", state_dir.display())));
    }
    if let Some(e) = untrusted(state_dir, &meta, uid) {
        return Err(e);
    }
    let mut stack = vec![state_dir.to_path_buf()];
    let mut checked = 0usize;
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|source| Error::Io { context: format!("reading {}", dir.display()), source })?;
        for entry in rd {
            let entry = entry.map_err(|source| Error::Io { context: format!("reading {}", dir.display()), source })?;
            let path = entry.path();
            let meta = stat(&path, false)?;
            if let Some(e) = untrusted(&path, &meta, uid) {
                return Err(e);
            }
            if meta.is_dir() {
                stack.push(path);
            }
            checked += 1;
            if checked >= MAX_CHECKED {
                tracing::warn!(state_dir = %state_dir.display(), "stopped checking the state dir after {MAX_CHECKED} entries");
                return Ok(());
            }
        }
    }
    Ok(())
}
