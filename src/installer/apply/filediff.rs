//! What an apply's change does to files, for its plan: how many files the
//! new version adds, removes and changes, counted by `apply --dry-run`
//! before anything is fetched, journaled or written.
//!
//! The new version's files are read from layers already on this machine
//! (an OCI layout, or the blob cache): each tar layer is listed through the
//! same [`TarGuard`] staging admits entries with, and every file's bytes
//! are hashed. A layer that would have to be downloaded first makes the
//! count unknown (`None`): a dry run never touches the network for blobs.
//! The installed version's files come from its file lists. Reads only;
//! any failure also makes the count unknown, and staging reports it.
//!
//! Counted are files and symlinks, by absolute path: a file whose kind,
//! content (sha256) or link target differs is changed; directories are not
//! counted. Modes are not compared (staging caps them).

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::installer::planner::PutRequest;
use crate::installer::stage::tar_kind;
use crate::journal::Journal;
use crate::plan::limits::Limits;
use crate::plan::tar_guard::{Admitted, TarGuard, TarKind};
use crate::plan::{Compression, FileBytes, LayerUse, PlannedContent, PlannedTarget};
use crate::source::{cache::BlobCache, verify, BlobSource, Descriptor};
use crate::txn::{EntryKind, FileEntry, PackageRecord};

/// Files a change adds, removes and changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounts {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

impl FileCounts {
    /// `+3 -1 ~2 files`.
    pub fn human(&self) -> String {
        format!("+{} -{} ~{} files", self.added, self.removed, self.changed)
    }
}

/// Absolute path -> what is there (kind, sha256, link target).
pub type Listing = BTreeMap<String, (EntryKind, String, String)>;

/// The listing of installed targets, from their file lists.
pub fn installed(targets: &[(String, Vec<FileEntry>)]) -> Listing {
    let mut out = Listing::new();
    for (path, entries) in targets {
        for e in entries.iter().filter(|e| e.kind != EntryKind::Dir) {
            out.insert(join(path, &e.rel), (e.kind, e.sha256.clone(), e.link.clone()));
        }
    }
    out
}

/// Compares two listings.
pub fn count(old: &Listing, new: &Listing) -> FileCounts {
    let mut c = FileCounts::default();
    for (path, now) in new {
        match old.get(path) {
            None => c.added += 1,
            Some(before) if before != now => c.changed += 1,
            Some(_) => {}
        }
    }
    c.removed = old.keys().filter(|p| !new.contains_key(*p)).count() as u64;
    c
}

/// Opens a layer from the blob cache, else from the layout the version is
/// installed from; `None` where it would have to be downloaded.
pub struct LocalBlobs<'a> {
    pub cache: &'a BlobCache,
    pub layout: Option<&'a dyn BlobSource>,
}

impl LocalBlobs<'_> {
    fn open(&self, desc: &Descriptor) -> Option<Box<dyn Read + Send>> {
        if self.cache.contains(desc).unwrap_or(false) {
            return self.cache.open_blob(desc).ok();
        }
        self.layout?.open_blob(desc).ok()
    }
}

/// The new version's listing, read from local layers; `None` if a layer is
/// not on this machine, or cannot be read within `limits`.
pub fn planned(targets: &[PlannedTarget], blobs: &LocalBlobs<'_>, limits: Limits) -> Option<Listing> {
    let mut out = Listing::new();
    for t in targets {
        let root = t.path.to_string_lossy().into_owned();
        match &t.content {
            PlannedContent::File(desc, bytes) => {
                let sha = file_sha(desc, *bytes, blobs, limits)?;
                out.insert(root, (EntryKind::File, sha, String::new()));
            }
            PlannedContent::Dir(layers) => {
                let mut guard = TarGuard::new();
                let mut here = Listing::new();
                for (desc, used) in layers {
                    match used {
                        LayerUse::Tar { compression, subdir } => {
                            tar_layer(desc, *compression, subdir, blobs, limits, &mut guard, &mut here)?
                        }
                        LayerUse::File { name, bytes } => {
                            guard.admit_root_file(name).ok()?;
                            let sha = file_sha(desc, *bytes, blobs, limits)?;
                            here.insert(name.clone(), (EntryKind::File, sha, String::new()));
                        }
                    }
                }
                out.extend(here.into_iter().map(|(rel, v)| (join(&root, &rel), v)));
            }
        }
    }
    Some(out)
}

fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        root.to_string()
    } else {
        format!("{}/{rel}", root.trim_end_matches('/'))
    }
}

/// sha256 of a single-file layer's installed bytes.
fn file_sha(desc: &Descriptor, bytes: FileBytes, blobs: &LocalBlobs<'_>, limits: Limits) -> Option<String> {
    let mut raw = blobs.open(desc)?;
    let sha = {
        let src: Box<dyn Read + '_> =
            if bytes.gunzip { Box::new(flate2::read::MultiGzDecoder::new(&mut raw)) } else { Box::new(&mut raw) };
        hash(&mut src.take(limits.max_layer_bytes.saturating_add(1)), limits.max_layer_bytes)?
    };
    verify::drain(&mut raw).ok()?;
    Some(sha)
}

/// sha256 of `src`, `None` past `cap` bytes or on a read error.
fn hash(src: &mut dyn Read, cap: u64) -> Option<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return None;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

/// Lists one tar layer into `here` (paths relative to the target), as
/// staging would admit its entries.
fn tar_layer(
    desc: &Descriptor,
    compression: Compression,
    subdir: &str,
    blobs: &LocalBlobs<'_>,
    limits: Limits,
    guard: &mut TarGuard,
    here: &mut Listing,
) -> Option<()> {
    if !subdir.is_empty() {
        guard.admit(subdir.as_bytes(), TarKind::Dir, None, 0o755).ok()?;
    }
    let mut raw = blobs.open(desc)?;
    {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
            Compression::Zstd => Box::new(zstd::Decoder::new(&mut raw).ok()?),
        };
        let mut archive = tar::Archive::new(decoded);
        let (mut entries, mut content) = (0u64, 0u64);
        for entry in archive.entries().ok()? {
            let mut entry = entry.ok()?;
            entries += 1;
            if entries > limits.max_entries {
                return None;
            }
            let kind = tar_kind(entry.header().entry_type());
            let mut path = entry.path_bytes().into_owned();
            if !subdir.is_empty() {
                path = [subdir.as_bytes(), b"/", &path].concat();
            }
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            if path.len() as u64 > limits.max_path_bytes {
                return None;
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            match guard.admit(&path, kind, link.as_deref(), mode).ok()? {
                Admitted::File { rel, .. } => {
                    let left = limits.max_layer_bytes.saturating_sub(content);
                    let size = entry.size();
                    content = content.saturating_add(size);
                    let sha = hash(&mut (&mut entry).take(left.saturating_add(1)), left)?;
                    here.insert(rel, (EntryKind::File, sha, String::new()));
                }
                Admitted::Symlink { rel, target, .. } => {
                    here.insert(rel, (EntryKind::Symlink, String::new(), target));
                }
                Admitted::HardLink { rel, original, .. } => {
                    let same = here.get(&original).cloned()?;
                    here.insert(rel, same);
                }
                Admitted::Dir { rel, .. } => {
                    // A directory where a file was: the file is gone.
                    here.remove(&rel);
                }
                Admitted::Skip => {}
            }
        }
    }
    verify::drain(&mut raw).ok()?;
    Some(())
}

/// The counts for changing `old` (installed; `None` for an install) to
/// `new` (`None` for an uninstall); `None` where they cannot be known here.
pub fn for_change(
    journal: &Journal,
    cache: &BlobCache,
    old: Option<&PackageRecord>,
    new: Option<&PutRequest>,
) -> Option<FileCounts> {
    let mut before = Vec::new();
    for t in old.map(|o| o.targets.as_slice()).unwrap_or_default() {
        let name = old.map(|o| o.name.as_str()).unwrap_or_default();
        before.push((t.path.clone(), journal.file_list(name, &t.file_list).ok()?));
    }
    let after = match new {
        None => Listing::new(),
        Some(put) => {
            let layout = put.layout.as_ref().map(|_| put.blobs.as_ref());
            planned(&put.planned, &LocalBlobs { cache, layout }, put.limits)?
        }
    };
    Some(count(&installed(&before), &after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str) -> (EntryKind, String, String) {
        (EntryKind::File, sha.into(), String::new())
    }

    #[test]
    fn counts_added_removed_and_changed_by_path() {
        let old: Listing = [("/a/x".to_string(), file("1")), ("/a/y".into(), file("2")), ("/a/z".into(), file("3"))]
            .into_iter()
            .collect();
        let new: Listing = [
            ("/a/x".to_string(), file("1")),
            ("/a/y".into(), file("9")),
            ("/a/w".into(), file("4")),
            ("/a/v".into(), (EntryKind::Symlink, String::new(), "x".into())),
        ]
        .into_iter()
        .collect();
        assert_eq!(count(&old, &new), FileCounts { added: 2, removed: 1, changed: 1 });
        assert_eq!(count(&new, &new), FileCounts::default());
        assert_eq!(count(&Listing::new(), &new).added, 4);
        assert_eq!(count(&old, &Listing::new()).removed, 3);
        assert_eq!(FileCounts { added: 2, removed: 1, changed: 1 }.human(), "+2 -1 ~1 files");
    }

    #[test]
    fn installed_lists_files_and_links_under_their_target() {
        let e = |rel: &str, kind| FileEntry {
            rel: rel.into(),
            kind,
            mode: 0o644,
            size: 0,
            sha256: String::new(),
            link: String::new(),
        };
        let l = installed(&[
            ("/t/app".into(), vec![e("", EntryKind::Dir), e("bin", EntryKind::Dir), e("bin/x", EntryKind::File)]),
            ("/t/lib/a.so".into(), vec![e("", EntryKind::File)]),
        ]);
        assert_eq!(l.keys().cloned().collect::<Vec<_>>(), ["/t/app/bin/x", "/t/lib/a.so"]);
    }
}
