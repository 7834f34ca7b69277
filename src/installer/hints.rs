//! What to do next, for failures a person can fix: a destination or state
//! dir the user may not write, and a failed first install (where "the old
//! version" does not exist). Builds message text only; decides nothing.

use super::Error;

/// The cause (or what it wraps) is a refused permission (EACCES/EPERM).
pub fn permission_denied(e: &Error) -> bool {
    caused_by(e, &[std::io::ErrorKind::PermissionDenied], &["(os error 13)", "(os error 1)"])
}

/// The cause (or what it wraps) is a read-only file system (EROFS): mounted
/// so, or remounted so by the kernel after the disk failed writes.
pub fn read_only(e: &Error) -> bool {
    caused_by(e, &[std::io::ErrorKind::ReadOnlyFilesystem], &["(os error 30)"])
}

fn caused_by(e: &Error, kinds: &[std::io::ErrorKind], codes: &[&str]) -> bool {
    match e {
        Error::Io { source, .. } => kinds.contains(&source.kind()),
        Error::RolledBack { cause, .. } | Error::LeftForRecovery { cause } | Error::InFile { cause, .. } => {
            caused_by(cause, kinds, codes)
        }
        // Errors of the lower layers carry the io::Error as text.
        other => {
            let text = other.to_string();
            codes.iter().any(|code| text.contains(code))
        }
    }
}

/// The effective uid, for messages.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The text of [`Error::RolledBack`]: the cause, what is on disk now, and
/// for a permission problem what to do about it.
pub fn rolled_back(cause: &Error, fresh: bool) -> String {
    let state = if fresh {
        "The transaction was rolled back: nothing was installed; nothing was changed."
    } else {
        "The transaction was rolled back: every destination still holds the old version."
    };
    let mut text = format!("{cause}\n{state}");
    if let Some(hint) = fixable(cause) {
        text.push('\n');
        text.push_str(&hint);
    }
    text
}

/// What to do about a refused permission or a read-only file system.
fn fixable(e: &Error) -> Option<String> {
    if read_only(e) {
        Some(READ_ONLY.to_string())
    } else if permission_denied(e) {
        Some(not_permitted())
    } else {
        None
    }
}

const READ_ONLY: &str = "The file system is read-only: mounted so, or remounted so by the kernel after the disk \
     failed writes (see `dmesg`). Once it is writable again (fsck, remount), rerun: the next stagehand command \
     finishes whatever this one left.";

/// What to do about a destination the user may not write or read.
fn not_permitted() -> String {
    format!(
        "stagehand runs as uid {} and may not write there: run it as root, choose a destination you own \
         (e.g. under $HOME), or ask the directory's owner for write access.",
        euid()
    )
}

/// The next step for an error whose own text does not give one: a refused
/// permission outside a transaction (a destination that cannot even be
/// looked at). Errors that carry their advice already get none.
pub fn next_step(e: &Error) -> Option<String> {
    match e {
        Error::InFile { cause, .. } => next_step(cause),
        Error::RolledBack { .. } | Error::Refused(_) | Error::Usage(_) => None,
        e => fixable(e),
    }
}

/// The text for a state dir this user may not look at (a directory above
/// it refuses the search permission).
pub fn state_dir_not_visible(state_dir: &std::path::Path, source: &std::io::Error) -> String {
    format!(
        "cannot look at the state dir {}: {source}. stagehand runs as uid {} and may not search a directory above \
         it (another user's HOME?): pass --state-dir DIR (a directory you own), or set STAGEHAND_STATE_DIR. \
         Nothing was changed",
        state_dir.display(),
        euid()
    )
}

/// The text for a state dir that cannot be created.
pub fn state_dir_not_created(state_dir: &std::path::Path, source: &std::io::Error) -> String {
    format!(
        "cannot create the state dir {}: {source}. stagehand runs as uid {} and keeps its journal there: pass \
         --state-dir DIR (a directory you own), or set STAGEHAND_STATE_DIR",
        state_dir.display(),
        euid()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> Error {
        Error::Io { context: "staging x".into(), source: std::io::Error::from(kind) }
    }

    #[test]
    fn a_read_only_file_system_is_not_a_permission_problem() {
        let ro = io(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(read_only(&ro) && !permission_denied(&ro));
        assert!(next_step(&ro).is_some_and(|h| h.contains("read-only") && h.contains("dmesg")));
        let text = rolled_back(&ro, false);
        assert!(text.contains("dmesg") && !text.contains("may not write there"), "{text}");
        let denied = io(std::io::ErrorKind::PermissionDenied);
        assert!(next_step(&denied).is_some_and(|h| h.contains("may not write there")));
        assert_eq!(next_step(&io(std::io::ErrorKind::NotFound)), None);
    }
}
