//! After a command has reported: the removal of what its transaction
//! replaced (`Installer::finish_cleanups`), and keeping the blobs of a
//! layout it installed from in the cache (`Installer::keep_layout_blobs`:
//! for a later offline rollback; no guarantee of the transaction rests on
//! it). By default a process of its own does both, started with the state-dir lock's descriptor (the lock is never
//! free in between: `installer::lock::adopt`), so the command returns at
//! once; with `STAGEHAND_CLEANUP=wait`, or when that process cannot be
//! started, this one does it before exiting. Either way the journal holds the
//! cleanup until it is durable, and any later command's recovery finishes it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::Cli;
use crate::installer::{self, lock, Installer, OpenOptions};

/// `STAGEHAND_CLEANUP`: `background` (the default) or `wait`; another
/// value is named in a warning and taken as the default.
fn wait_asked(cli: &Cli) -> bool {
    match std::env::var("STAGEHAND_CLEANUP").as_deref() {
        Ok("wait") => true,
        Ok("background" | "") | Err(_) => false,
        Ok(other) => {
            if !cli.quiet {
                eprintln!(
                    "stagehand: warning: STAGEHAND_CLEANUP={other:?} is neither `background` nor `wait`; \
                     removing what the transaction replaced in the background"
                );
            }
            false
        }
    }
}

pub(super) fn after_report(cli: &Cli, inst: Installer, refused: bool) -> Result<(), installer::Error> {
    // A read view holds no lock; a refused recovery is reported, not retried.
    if inst.in_progress().is_some() || refused {
        return Ok(());
    }
    let layouts = inst.layouts_to_keep();
    if layouts.is_empty() && inst.cleanups_pending()?.is_empty() {
        return Ok(());
    }
    tracing::debug!("reported");
    if wait_asked(cli) {
        return finish_here(cli, &inst, &layouts);
    }
    let state_dir = inst.state_dir().to_path_buf();
    let Some(mut held) = inst.into_lock() else { return Ok(()) };
    // Marked before this process exits, so a command that starts next
    // waits for the cleanup rather than finding the lock taken.
    if let Err(e) = held.mark_cleanup(std::process::id()) {
        tracing::warn!(error = %e, "could not mark the lock file");
    }
    match spawn(&state_dir, &held, &layouts) {
        // Dropping ours leaves the lock with the descriptor the process inherited.
        Ok(pid) => {
            if let Err(e) = held.mark_cleanup(pid) {
                tracing::warn!(error = %e, "could not mark the lock file");
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not start a process for the cleanup; doing it now");
            let opts = OpenOptions { tolerate_refusal: true, ..OpenOptions::default() };
            let (inst, _) = Installer::open_locked(&state_dir, held, &opts)?;
            finish_here(cli, &inst, &layouts)
        }
    }
}

fn finish_here(cli: &Cli, inst: &Installer, layouts: &[(PathBuf, String)]) -> Result<(), installer::Error> {
    // As the process left behind does: the removal (whose `syncfs` then has
    // no unsynced copy of a blob to write), then the layouts' blobs.
    let reports = inst.finish_cleanups();
    for (layout, digest) in layouts {
        inst.keep_layout_blobs(layout, digest);
    }
    let reports = reports.map_err(|e| {
        installer::Error::Refused(format!(
            "the transaction is done, but removing what it replaced failed: {e}. The next stagehand command \
             (or `stagehand repair`) finishes the removal"
        ))
    })?;
    for r in reports.iter().filter(|r| r.reason.is_some()) {
        if !cli.quiet {
            eprintln!(
                "stagehand: what transaction {} replaced was left on disk: {}",
                r.txn,
                r.reason.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Starts `stagehand finish-cleanup` in a session of its own, with no
/// terminal, holding the lock through the inherited descriptor.
fn spawn(state_dir: &Path, held: &lock::StateLock, layouts: &[(PathBuf, String)]) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let fd = held.raw_fd();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--quiet").arg("--state-dir").arg(state_dir).arg("finish-cleanup").arg("--lock-fd").arg(fd.to_string());
    for (layout, digest) in layouts {
        cmd.arg("--layout-blobs").arg(layout_arg(layout, digest));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls, on the
    // child's own copy of the descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: it outlives this process.
    cmd.spawn().map(|child| child.id())
}

/// `DIGEST=PATH` (a digest holds no `=`; a path may).
fn layout_arg(layout: &Path, digest: &str) -> OsString {
    let mut arg = OsString::from(format!("{digest}="));
    arg.push(layout.as_os_str());
    arg
}

fn parse_layout_arg(arg: &OsStr) -> Option<(PathBuf, String)> {
    let bytes = arg.as_bytes();
    let eq = bytes.iter().position(|&b| b == b'=')?;
    let digest = std::str::from_utf8(&bytes[..eq]).ok()?.to_string();
    Some((PathBuf::from(OsStr::from_bytes(&bytes[eq + 1..])), digest))
}

/// `finish-cleanup --lock-fd FD [--layout-blobs DIGEST=PATH]...`: takes
/// over the lock, then recovery (which finishes every cleanup left to run),
/// then keeps each layout's blobs. Exit 5 if recovery refused something.
pub(super) fn finish_handed_over(state_dir: &Path, fd: i32, layouts: &[OsString]) -> Result<i32, installer::Error> {
    let held = installer::adopt_lock(state_dir, fd)?;
    let opts = OpenOptions { tolerate_refusal: true, ..OpenOptions::default() };
    let (inst, reports) = Installer::open_locked(state_dir, held, &opts)?;
    for (layout, digest) in layouts.iter().filter_map(|a| parse_layout_arg(a)) {
        inst.keep_layout_blobs(&layout, &digest);
    }
    Ok(if reports.iter().any(|r| r.reason.is_some()) { 5 } else { super::EXIT_OK })
}
