//! Exact staging: for a version stagehand captured itself (what `--adopt`
//! replaced, see `installer::adopt`), every entry gets back the mode its
//! tar header carries (not capped at 0755: these are the user's own bits),
//! its mtime (the PAX `mtime`, nanoseconds included), and, when run as
//! root, its owner and group. Symlinks stay symlinks and are never
//! followed (`fsops::set_owner` and `fsops::set_mtime` act on the link).
//!
//! Files are written without their setuid/setgid/sticky bits; those are
//! set only after the owner is, so a file is never briefly setuid to the
//! wrong user. Directories get their metadata last, deepest first, after
//! everything inside them exists. It never reads a tar that is not a
//! captured version's (the caller decides that from the journal).

use std::io::Read;
use std::path::Path;

use super::{io_err, parent, Bounded, ROLE};
use crate::fsops;
use crate::installer::space::Meter;
use crate::installer::Error;
use crate::plan::limits::Limits;
use crate::plan::tar_bounds::TarBounds;
use crate::source::{verify, BlobSource, Descriptor};
use crate::txn::{EntryKind, FileEntry};

/// What one entry is restored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExactMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
}

/// Parses a PAX `mtime` as the capture writes it: `<secs>.<nanos>`, whole
/// seconds first (so `-1.5` is one second before the epoch plus 0.5 s).
pub(super) fn parse_mtime(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Some((secs, digits.parse().ok()?))
}

/// The metadata a captured entry carries.
pub(super) fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<ExactMeta, Error> {
    let h = entry.header();
    let bad = |e: std::io::Error| Error::Io { context: "reading a captured entry's header".into(), source: e };
    let mode = h.mode().map_err(bad)? & 0o7777;
    let uid = u32::try_from(h.uid().map_err(bad)?).unwrap_or(u32::MAX);
    let gid = u32::try_from(h.gid().map_err(bad)?).unwrap_or(u32::MAX);
    let mut mtime = (i64::try_from(h.mtime().map_err(bad)?).unwrap_or(0), 0);
    if let Some(exts) = entry.pax_extensions().map_err(bad)? {
        for ext in exts {
            let ext = ext.map_err(bad)?;
            if ext.key() == Ok("mtime") {
                if let Some(t) = ext.value().ok().and_then(parse_mtime) {
                    mtime = t;
                }
            }
        }
    }
    Ok(ExactMeta { mode, uid, gid, mtime })
}

/// True when running as root: only then are owners restored.
pub(super) fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `path` (already written) its exact owner, mode and mtime.
pub(super) fn restore(path: &Path, kind: EntryKind, m: &ExactMeta) -> Result<(), Error> {
    let what = |verb: &str| format!("{verb} {}", path.display());
    if as_root() {
        fsops::set_owner(path, m.uid, m.gid, ROLE).map_err(io_err(what("chown")))?;
    }
    if kind != EntryKind::Symlink {
        fsops::set_mode(path, m.mode, ROLE).map_err(io_err(what("chmod")))?;
    }
    fsops::set_mtime(path, m.mtime.0, m.mtime.1, ROLE).map_err(io_err(what("set the mtime of")))
}

/// Writes a captured file target at `staging` from its one-entry tar layer.
pub(super) fn stage_file(
    staging: &Path,
    desc: &Descriptor,
    blobs: &dyn BlobSource,
    limits: Limits,
    meter: &Meter,
) -> Result<(fsops::WrittenFile, ExactMeta), Error> {
    let mut raw = blobs.open_blob(desc)?;
    let bad =
        |e: std::io::Error| Error::Io { context: format!("layer {}: reading the tar stream", desc.digest), source: e };
    let (written, meta) = {
        let mut archive = tar::Archive::new(Bounded { inner: &mut raw, bounds: TarBounds::new(limits) });
        let mut entries = archive.entries().map_err(bad)?;
        let not_one = || Error::Refused(format!("layer {} is not one captured file; nothing was changed", desc.digest));
        let mut entry = entries.next().ok_or_else(not_one)?.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            return Err(not_one());
        }
        let meta = meta_of(&mut entry)?;
        // No setuid/setgid/sticky bit until the owner is right.
        let w = fsops::write_file(staging, &mut meter.track(&mut entry), meta.mode & 0o777, ROLE)
            .map_err(io_err(format!("staging {}", staging.display())))?;
        drop(entry);
        if entries.next().is_some() {
            return Err(not_one());
        }
        (w, meta)
    };
    verify::drain(&mut raw).map_err(io_err(format!("layer {}", desc.digest)))?;
    restore(staging, EntryKind::File, &meta)?;
    if fsops::sync_mode() == fsops::SyncMode::PerFile {
        fsops::fsync_file(staging, ROLE).map_err(io_err(format!("fsync {}", staging.display())))?;
        fsops::fsync_dir(parent(staging), ROLE).map_err(io_err(format!("fsync {}", parent(staging).display())))?;
    }
    Ok((written, meta))
}

/// The file entry of an exactly staged file target.
pub(super) fn file_entry(w: fsops::WrittenFile, meta: &ExactMeta) -> FileEntry {
    FileEntry {
        rel: String::new(),
        kind: EntryKind::File,
        mode: meta.mode,
        size: w.size,
        sha256: w.sha256,
        link: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_parse_as_the_capture_writes_them() {
        assert_eq!(parse_mtime("1700000000.000000123"), Some((1_700_000_000, 123)));
        assert_eq!(parse_mtime("5.5"), Some((5, 500_000_000)));
        assert_eq!(parse_mtime("7"), Some((7, 0)));
        assert_eq!(parse_mtime("-1.250000000"), Some((-1, 250_000_000)));
        assert_eq!(parse_mtime("x.1"), None);
        assert_eq!(parse_mtime("1.-1"), None);
    }
}
