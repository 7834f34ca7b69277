//! The state dir is trusted: the journal in it drives renames and removals
//! as whoever runs stagehand, and its blob cache holds what was pulled with
//! credentials. So it must be private to its owner.
//!
//! This module creates a missing state dir 0700 (missing ancestors too; an
//! existing directory's mode is never changed) and refuses one that anyone
//! but the current user could have written: the dir or anything in it owned
//! by another user, writable by group or others, or a symlink inside it.
//! It only reads metadata; creation goes through `fsops`.

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

/// Creates `state_dir` (0700) if it is missing, then checks that it and
/// everything in it belong to the current user and nobody else can write them.
pub fn prepare(state_dir: &Path) -> Result<()> {
    fsops::create_dir_all_durable(state_dir, 0o700, "state")
        .map_err(|source| Error::Io { context: format!("creating the state dir {}", state_dir.display()), source })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let stat = |p: &Path, follow: bool| {
        let m = if follow { std::fs::metadata(p) } else { std::fs::symlink_metadata(p) };
        m.map_err(|source| Error::Io { context: format!("checking {}", p.display()), source })
    };
    let meta = stat(state_dir, true)?;
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
