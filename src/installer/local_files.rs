//! Local files: what a user put inside a package's directory target after
//! it was installed (a note, a config file, a plugin's own data). A
//! directory target is replaced or removed as a whole, so an upgrade,
//! rollback or uninstall would delete them with the old version, although
//! the command names only the package. The planner asks [`find`] for every
//! such directory and refuses, naming them, unless the user passed
//! `--discard-local-files`.
//!
//! Read-only: a directory walk by name and entry type (no hashing, no
//! `stat` beyond what `readdir` gives). Files of the package that were
//! changed in place are not local files: they belong to the package, and
//! `verify` reports them.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Error, Result};
use crate::journal::Journal;
use crate::txn::{InstalledTarget, PackageRecord};

/// How many local files a refusal names before it says "and N more".
pub const SHOWN: usize = 8;

/// The entries under directory target `target` of `pkg` that its file list
/// does not name, outermost only (a local directory is named once, not its
/// contents), as absolute paths. Paths in `owned` (other packages' targets,
/// nested in this directory) and their parent directories are not local.
/// A target that is missing or not a directory has none.
pub fn find(
    journal: &Journal,
    pkg: &PackageRecord,
    target: &InstalledTarget,
    owned: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let root = Path::new(&target.path);
    if !std::fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        return Ok(Vec::new());
    }
    let listed: BTreeSet<String> =
        journal.file_list(&pkg.name, &target.file_list)?.into_iter().map(|e| e.rel).collect();
    let owned_here: Vec<String> = owned
        .iter()
        .filter_map(|o| Path::new(o).strip_prefix(root).ok())
        .filter_map(|r| r.to_str().map(str::to_string))
        .filter(|r| !r.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let read = |e: std::io::Error| Error::Io { context: format!("reading {}", dir.display()), source: e };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let is_dir = entry.file_type().map_err(read)?.is_dir();
            names.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
        }
        names.sort();
        for (name, is_dir) in names {
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let holds_owned = owned_here.iter().any(|o| *o == r || o.starts_with(&format!("{r}/")));
            if listed.contains(&r) || holds_owned {
                if is_dir {
                    dirs.push(r);
                }
            } else {
                out.push(root.join(&r).display().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The refusal for local files under `path` of package `name`.
pub fn refusal(name: &str, path: &str, found: &[String]) -> Error {
    let shown: Vec<&str> = found.iter().take(SHOWN).map(String::as_str).collect();
    let more = found.len().saturating_sub(SHOWN);
    let more = if more > 0 { format!(", and {more} more") } else { String::new() };
    let (n, subject, object) = match found.len() {
        1 => ("1 entry".to_string(), "it", "it"),
        k => (format!("{k} entries"), "they", "them"),
    };
    Error::Refused(format!(
        "{path} of package {name:?} holds {n} that {name:?} did not install: {}{more}. This transaction replaces or \
         removes {path} as a whole, so {subject} would be deleted with the old version. Nothing was changed: move \
         {object} out of {path} first, or pass --discard-local-files to delete {object}",
        shown.join(", ")
    ))
}
