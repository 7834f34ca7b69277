//! Checks before a transaction is planned that keep it to its package's
//! own paths: ownership against every other package (for each path it
//! replaces or removes), targets that nest, and mounts inside a target.
//! Read-only: `/proc/self/mountinfo` is the only thing read here.

use std::path::Path;

use super::{path_str, stage, Error, Result};
use crate::journal::Journal;
use crate::txn::{EntryKind, PackageRecord};

/// True if one of two absolute paths is the other or lies beneath it.
pub(super) fn nests(a: &str, b: &str) -> bool {
    Path::new(a).starts_with(b) || Path::new(b).starts_with(a)
}

/// Checks a path that package `name` is about to remove against every other
/// package: none may have a target at or beneath it. Refuses naming both,
/// and what to run.
pub(super) fn check_removal(others: &[PackageRecord], path: &str, name: &str) -> Result<()> {
    for other in others {
        if let Some(t) = other.targets.iter().find(|t| Path::new(&t.path).starts_with(path)) {
            return Err(Error::Refused(format!(
                "this would remove {path} of package {name:?}, but package {:?} has files inside it ({}); \
                 nothing was changed: uninstall {:?} first (`stagehand uninstall {}`), run this command \
                 again, then install {:?} again into the new place (for a Steampipe FDW: \
                 `--profile steampipe-fdw --db-version NEW`)",
                other.name, t.path, other.name, other.name, other.name
            )));
        }
    }
    Ok(())
}

/// Checks a new target against other packages' targets. A file target may
/// sit inside another package's directory target (Steampipe's FDW inside its
/// db); a directory target may contain other packages' file targets, which
/// are then carried over into the new directory (returned). Any other
/// overlap is refused.
pub(super) fn check_ownership(
    journal: &Journal,
    others: &[PackageRecord],
    path: &str,
    kind: EntryKind,
) -> Result<Vec<stage::Carried>> {
    let p = Path::new(path);
    let mut carry = Vec::new();
    for pkg in others {
        for t in &pkg.targets {
            let tp = Path::new(&t.path);
            let nested_file_in_dir =
                p != tp && p.starts_with(tp) && kind == EntryKind::File && t.kind == EntryKind::Dir;
            let dir_holds_file = p != tp && tp.starts_with(p) && kind == EntryKind::Dir && t.kind == EntryKind::File;
            if dir_holds_file {
                let rel = tp.strip_prefix(p).map_err(|_| Error::Refused(format!("{} is not inside {path}", t.path)))?;
                let entries = journal.file_list(&pkg.name, &t.file_list)?;
                let sha256 = entries.iter().find(|e| e.rel.is_empty()).map(|e| e.sha256.clone()).unwrap_or_default();
                carry.push(stage::Carried {
                    rel: path_str(rel)?,
                    live: tp.to_path_buf(),
                    owner: pkg.name.clone(),
                    sha256,
                });
            } else if !nested_file_in_dir && (p.starts_with(tp) || tp.starts_with(p)) {
                return Err(Error::Refused(format!(
                    "{path} overlaps {} of package {:?}; uninstall it first or choose another destination",
                    t.path, pkg.name
                )));
            }
        }
    }
    Ok(carry)
}

/// Mount points at or beneath `dir`, from `/proc/self/mountinfo` (none if
/// it cannot be read: `fsops::remove_tree` still refuses to cross a mount).
pub(super) fn mounts_at_or_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
