//! `verify`: re-hash installed files and compare them with the package
//! registry. Read-only: it reports, it never repairs.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Error, Result};
use crate::fsops;
use crate::journal::Journal;
use crate::txn::{EntryKind, FileEntry, PackageRecord, TxnId};

/// One difference between the registry and the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    pub path: String,
    /// `missing`, `modified`, `unexpected`, `kind`, `mode`, or `leftover`:
    /// a staging or backup copy beside a target, named for a transaction
    /// that has finished (its removal was lost, or could not be done).
    pub problem: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub digest: String,
    pub files_checked: usize,
    pub mismatches: Vec<Mismatch>,
    /// The fingerprint of the key whose cosign signature was checked when
    /// this version was installed (`None`: installed without `--verify-key`).
    pub signed_by: Option<String>,
}

fn read_entry(path: &Path, rel: &str) -> Result<Option<FileEntry>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { context: format!("stat {}", path.display()), source }),
    };
    let kind = fsops::kind_of(&meta);
    let mut e = FileEntry {
        rel: rel.to_string(),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        size: 0,
        sha256: String::new(),
        link: String::new(),
    };
    match kind {
        EntryKind::File => {
            let (size, sha) =
                fsops::sha256_file(path).map_err(|source| Error::Io { context: "hashing".into(), source })?;
            e.size = size;
            e.sha256 = sha;
        }
        EntryKind::Symlink => {
            let l = std::fs::read_link(path)
                .map_err(|source| Error::Io { context: format!("readlink {}", path.display()), source })?;
            e.link = l.to_string_lossy().into_owned();
            e.mode = 0o777;
        }
        _ => {}
    }
    Ok(Some(e))
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, ()>) -> Result<()> {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let rd = std::fs::read_dir(&dir)
        .map_err(|source| Error::Io { context: format!("reading {}", dir.display()), source })?;
    for entry in rd {
        let entry = entry.map_err(|source| Error::Io { context: format!("reading {}", dir.display()), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.insert(r.clone(), ());
        if is_dir {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}

fn compare(want: &FileEntry, got: Option<FileEntry>, shown: &str, out: &mut Vec<Mismatch>) {
    let problem = match got {
        None => Some("missing"),
        Some(g) if g.kind != want.kind => Some("kind"),
        Some(g) if g.kind == EntryKind::File && (g.sha256 != want.sha256 || g.size != want.size) => Some("modified"),
        Some(g) if g.kind == EntryKind::Symlink && g.link != want.link => Some("modified"),
        Some(g) if g.kind != EntryKind::Symlink && (g.mode & 0o777) != (want.mode & 0o777) => Some("mode"),
        Some(_) => None,
    };
    if let Some(p) = problem {
        out.push(Mismatch { path: shown.to_string(), problem: p.to_string() });
    }
}

/// The staging and backup copies beside `target` that name a transaction of
/// `finished`: stagehand made them, and the transaction that made them has
/// ended, so nothing will remove them. (A live transaction's copies name an
/// id not yet in the history, and are not reported.)
fn leftovers_beside(target: &Path, finished: &BTreeSet<TxnId>) -> Result<Vec<String>> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!(".{name}.stagehand-");
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { context: format!("reading {}", dir.display()), source }),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| Error::Io { context: format!("reading {}", dir.display()), source })?;
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        let id = rest.strip_suffix(".staging").or_else(|| rest.strip_suffix(".backup"));
        if id.and_then(|i| i.parse::<TxnId>().ok()).is_some_and(|i| finished.contains(&i)) {
            out.push(dir.join(&file).display().to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Verifies one package against the disk. Paths in `foreign` (targets of
/// other packages nested inside this one's directories) and their parent
/// directories are not this package's business. `finished` holds the ids of
/// the finished transactions, whose copies left beside a target are reported.
pub fn verify_package(
    journal: &Journal,
    pkg: &PackageRecord,
    foreign: &BTreeSet<String>,
    finished: &BTreeSet<TxnId>,
) -> Result<VerifyReport> {
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for t in &pkg.targets {
        let root = Path::new(&t.path);
        for path in leftovers_beside(root, finished)? {
            mismatches.push(Mismatch { path, problem: "leftover".into() });
        }
        let entries = journal.file_list(&pkg.name, &t.file_list)?;
        match t.kind {
            EntryKind::Dir => {
                let top = read_entry(root, "")?;
                if top.as_ref().map(|e| e.kind) != Some(EntryKind::Dir) {
                    mismatches.push(Mismatch { path: t.path.clone(), problem: "missing".into() });
                    continue;
                }
                let mut on_disk = BTreeMap::new();
                walk(root, "", &mut on_disk)?;
                for want in &entries {
                    checked += 1;
                    let p = root.join(&want.rel);
                    compare(want, read_entry(&p, &want.rel)?, &p.display().to_string(), &mut mismatches);
                    on_disk.remove(&want.rel);
                }
                let foreign_here: Vec<&str> = foreign
                    .iter()
                    .filter_map(|f| Path::new(f).strip_prefix(root).ok())
                    .filter_map(|r| r.to_str())
                    .collect();
                for extra in on_disk.keys() {
                    let nested = foreign_here.iter().any(|f| *f == extra || f.starts_with(&format!("{extra}/")));
                    if !nested {
                        let path = root.join(extra).display().to_string();
                        mismatches.push(Mismatch { path, problem: "unexpected".into() });
                    }
                }
            }
            _ => {
                for want in &entries {
                    checked += 1;
                    compare(want, read_entry(root, "")?, &t.path, &mut mismatches);
                }
            }
        }
    }
    Ok(VerifyReport {
        name: pkg.name.clone(),
        digest: pkg.manifest_digest.clone(),
        files_checked: checked,
        mismatches,
        signed_by: pkg.signed_by.clone(),
    })
}
