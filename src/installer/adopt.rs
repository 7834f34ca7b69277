//! `--adopt` keeps what it replaces: every existing, unowned target an
//! install takes over is captured into the blob cache as a synthesized OCI
//! artifact before the commit point, and becomes a kept version of the
//! package that `rollback` restores exactly (bytes, modes, symlinks,
//! mtimes, and owners when run as root), offline.
//!
//! The artifact: one uncompressed tar layer per adopted target, in target
//! order (a directory target: `./` with the directory's own metadata, then
//! every entry, depth first, names sorted; a file target: one entry),
//! each entry preceded by a PAX header carrying its `mtime` with
//! nanoseconds (and a symlink's `linkpath`, byte for byte); a config that
//! is the empty JSON object; annotations naming each layer's target path
//! and kind. The journal's `PlacementRecord::adopted` lists the paths and
//! is what places the layers back (the manifest is pinned by its digest).
//!
//! This module owns the survey (refusing what cannot be kept, before
//! anything is written), the capture (streamed: one file at a time, never a
//! whole tree in memory; every write through the blob cache, so through
//! `fsops` with kill points `fsops.*.cache`), and the placement of a
//! captured version for `rollback`. It never touches a destination, the
//! journal, or a path outside the targets it is given (symlinks are read,
//! never followed; another filesystem inside a target is refused).

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::planner::PutRequest;
use super::{io, now, Error, Result};
use crate::plan::{limits::Limits, Compression, FileBytes, LayerUse, PlannedContent, PlannedTarget};
use crate::source::cache::BlobCache;
use crate::source::{self, Descriptor};
use crate::txn::{self, EntryKind, Op, PlacementRecord, TxnId, VersionRecord, ADOPTED_SOURCE_PREFIX};

/// The synthesized manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.stagehand.adopted.v1";
/// Layer annotation: the absolute target path the layer restores.
pub const ANNOTATION_PATH: &str = "dev.stagehand.adopted.path";
/// Layer annotation: `dir` or `file`.
pub const ANNOTATION_KIND: &str = "dev.stagehand.adopted.kind";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const CONFIG: &[u8] = b"{}";
/// Tar bytes per entry beyond its data, as estimated for the space check:
/// its header, a PAX header with its mtime (and link path), a GNU long name.
const ENTRY_OVERHEAD: u64 = 4 * 512;

/// Most bytes of adopted paths one kept version may list (they are kept in
/// the package's journal record, which is at most 64 KiB, with the other
/// kept versions and the history entry's copy).
pub const MAX_ADOPTED_PATH_BYTES: usize = 16 * 1024;

/// One target to capture: its path and what is there now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub path: String,
    pub kind: EntryKind,
}

fn refused(path: &Path, what: &str) -> Error {
    Error::Refused(format!(
        "{} {what}; --adopt keeps what it replaces as a version `rollback` restores, and stagehand keeps only \
         regular files, directories and symlinks with UTF-8 names. Nothing was changed: move it out of the way first",
        path.display()
    ))
}

/// Checks one entry (not the target root) of an adopted tree.
fn check_entry(path: &Path, meta: &Metadata, root_dev: u64) -> Result<()> {
    let name = path.file_name().unwrap_or_default();
    let Some(name) = name.to_str() else { return Err(refused(path, "has a name that is not UTF-8")) };
    if txn::is_stagehand_name(name) {
        return Err(refused(path, "uses stagehand's reserved `.stagehand-` marker in its name"));
    }
    let ft = meta.file_type();
    if meta.dev() != root_dev {
        return Err(refused(path, "is on another filesystem (a mount inside the adopted directory)"));
    }
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io(format!("reading the symlink {}", path.display())))?;
        if target.to_str().is_none_or(str::is_empty) {
            return Err(refused(path, "is a symlink whose target is not UTF-8"));
        }
    } else if !ft.is_file() && !ft.is_dir() {
        return Err(refused(path, "is a device, socket or FIFO"));
    }
    Ok(())
}

/// Visits every entry under `root` depth first, names sorted, without
/// following symlinks: `visit(rel, path, metadata)`.
fn walk(root: &Path, rel: &str, dev: u64, visit: &mut dyn FnMut(&str, &Path, &Metadata) -> Result<()>) -> Result<()> {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io(format!("reading {}", dir.display())))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(io(format!("reading {}", path.display())))?;
        check_entry(&path, &meta, dev)?;
        let child = match name.to_str() {
            Some(n) if rel.is_empty() => n.to_string(),
            Some(n) => format!("{rel}/{n}"),
            None => return Err(refused(&path, "has a name that is not UTF-8")),
        };
        visit(&child, &path, &meta)?;
        if meta.is_dir() {
            walk(root, &child, dev, visit)?;
        }
    }
    Ok(())
}

/// Before anything is written: refuses what an adopted target holds that
/// cannot be kept (a device, socket or FIFO, a non-UTF-8 name, another
/// filesystem), and returns about how many bytes its capture needs in
/// the blob cache.
pub fn survey(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path).map_err(io(format!("reading {}", path.display())))?;
    let mut bytes = 2 * 512 + ENTRY_OVERHEAD + meta.len().next_multiple_of(512);
    if meta.is_dir() {
        walk(path, "", meta.dev(), &mut |_, _, m| {
            bytes += ENTRY_OVERHEAD + if m.is_file() { m.len().next_multiple_of(512) } else { 0 };
            Ok(())
        })?;
    } else if !meta.is_file() {
        return Err(refused(path, "is neither a regular file nor a directory"));
    }
    Ok(bytes)
}

/// A tar header for an entry with `meta`'s mode, owner and (whole-second) mtime.
fn header(meta: &Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

/// The PAX `mtime` value: `<st_mtime>.<st_mtime_nsec, 9 digits>` (read back
/// by `stage`, whole seconds first, so a time before 1970 round-trips too).
pub fn pax_mtime(meta: &Metadata) -> String {
    format!("{}.{:09}", meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999))
}

/// Reads exactly `left` bytes of a file, failing if it is shorter (it
/// changed while being captured).
struct Exactly<'a> {
    inner: &'a mut File,
    left: u64,
    path: &'a Path,
}

impl Read for Exactly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being captured", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

type Builder = tar::Builder<source::cache::NewBlobWriter>;

/// Appends one entry (`rel` inside the layer) for the object at `path`.
fn append(
    b: &mut Builder,
    rel: &str,
    path: &Path,
    meta: &Metadata,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<()> {
    let ctx = || format!("capturing {}", path.display());
    let ft = meta.file_type();
    let mut pax: Vec<(&str, Vec<u8>)> = vec![("mtime", pax_mtime(meta).into_bytes())];
    if ft.is_dir() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice()))).map_err(io(ctx()))?;
        let name = if rel.is_empty() { "./".to_string() } else { format!("{rel}/") };
        let mut h = header(meta, tar::EntryType::Directory, 0);
        return b.append_data(&mut h, name, std::io::empty()).map_err(io(ctx()));
    }
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io(ctx()))?;
        pax.push(("linkpath", target.as_os_str().as_bytes().to_vec()));
        b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice()))).map_err(io(ctx()))?;
        let mut h = header(meta, tar::EntryType::Symlink, 0);
        return b.append_link(&mut h, rel, &target).map_err(io(ctx()));
    }
    if meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            let mut h = header(meta, tar::EntryType::Link, 0);
            return b.append_link(&mut h, rel, first).map_err(io(ctx()));
        }
        links.insert((meta.dev(), meta.ino()), rel.to_string());
    }
    // Opened without following a symlink or blocking on a FIFO put there
    // since the survey; it must still be the regular file walked.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io(ctx()))?;
    let now = f.metadata().map_err(io(ctx()))?;
    if !now.is_file() || now.ino() != meta.ino() {
        return Err(Error::Refused(format!(
            "{} changed while it was being captured; nothing was changed, try again",
            path.display()
        )));
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice()))).map_err(io(ctx()))?;
    let size = now.len();
    let mut h = header(&now, tar::EntryType::Regular, size);
    b.append_data(&mut h, rel, Exactly { inner: &mut f, left: size, path }).map_err(io(ctx()))?;
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(io(ctx()))? != 0 {
        return Err(Error::Refused(format!(
            "{} grew while it was being captured; nothing was changed, try again",
            path.display()
        )));
    }
    Ok(())
}

/// Writes one target's tar layer into the cache; returns its descriptor.
fn capture_one(cache: &BlobCache, name: &str, t: &Adopted) -> Result<Descriptor> {
    let path = Path::new(&t.path);
    let meta = fs::symlink_metadata(path).map_err(io(format!("reading {}", path.display())))?;
    let kind = fsops_kind(&meta);
    if kind != t.kind {
        return Err(Error::Refused(format!(
            "{} changed since the transaction was planned; nothing was changed, try again",
            t.path
        )));
    }
    let mut b = tar::Builder::new(cache.begin_new(name)?);
    let mut links = HashMap::new();
    let written = (|| -> Result<()> {
        if kind == EntryKind::Dir {
            append(&mut b, "", path, &meta, &mut links)?;
            walk(path, "", meta.dev(), &mut |rel, p, m| append(&mut b, rel, p, m, &mut links))
        } else {
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            append(&mut b, file_name, path, &meta, &mut links)
        }
    })();
    let writer = b.into_inner().map_err(io(format!("capturing {}", t.path)));
    let writer = match (written, writer) {
        (Ok(()), Ok(w)) => w,
        (Err(e), Ok(w)) => {
            // The partial file is no use to anyone: a capture starts over.
            if let Err(rm) = w.abandon() {
                tracing::warn!(error = %rm, "could not remove a partial capture");
            }
            return Err(e);
        }
        (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
    };
    let mut desc = writer.finish()?;
    desc.media_type = LAYER_MEDIA_TYPE.to_string();
    desc.annotations.insert(ANNOTATION_PATH.to_string(), t.path.clone());
    desc.annotations
        .insert(ANNOTATION_KIND.to_string(), if kind == EntryKind::Dir { "dir" } else { "file" }.to_string());
    Ok(desc)
}

fn fsops_kind(meta: &Metadata) -> EntryKind {
    crate::fsops::kind_of(meta)
}

/// Captures `targets` (transaction `id`) into the blob cache, every blob
/// fsynced and renamed into the store before this returns, and returns
/// the kept version that restores them. Run after the `planned` record and
/// before `staged`: a crash in between rolls the transaction back, and
/// leaves at most unused blobs (pruned later) and a partial file.
pub fn capture(state_dir: &Path, id: TxnId, targets: &[Adopted]) -> Result<VersionRecord> {
    debug_assert!(!targets.is_empty(), "capture is called with targets");
    let cache = BlobCache::new(state_dir);
    let mut layers = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        if super::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        layers.push(capture_one(&cache, &format!("adopt-{id}-{i}"), t)?);
    }
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(CONFIG)));
    cache.put_small(&config_digest, CONFIG)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": source::MEDIA_TYPE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": CONFIG.len()},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Refused(format!("encoding a manifest: {e}")))?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    cache.put_small(&digest, &bytes)?;
    let paths: Vec<String> = targets.iter().map(|t| t.path.clone()).collect();
    Ok(VersionRecord {
        manifest_digest: digest,
        source: format!("{ADOPTED_SOURCE_PREFIX}{}", paths[0]),
        installed_at: now(),
        placement: PlacementRecord { adopted: paths, ..Default::default() },
    })
}

/// The planner's input for restoring a captured `version` of `name`, read
/// only from the blob cache: each layer back at its recorded path, staged
/// exactly (`PutRequest::exact`).
pub fn restore_put(
    state_dir: &Path,
    name: &str,
    version: &VersionRecord,
    keep: usize,
    limits: Limits,
) -> Result<PutRequest> {
    let cache = BlobCache::new(state_dir);
    let gone = || {
        Error::Refused(format!(
            "the content {name} adopted ({}, kept as {}) is no longer in the blob cache, so it cannot be restored. \
             Nothing was changed",
            version.placement.adopted.join(", "),
            version.manifest_digest
        ))
    };
    let manifest = cache.read_manifest(&version.manifest_digest)?.ok_or_else(gone)?;
    for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if !cache.contains(desc)? {
            return Err(gone());
        }
    }
    let paths = &version.placement.adopted;
    if manifest.layers.len() != paths.len() {
        return Err(Error::Refused(format!(
            "the kept version {} of {name} has {} layers for {} adopted paths; it cannot be restored. Nothing was changed",
            version.manifest_digest,
            manifest.layers.len(),
            paths.len()
        )));
    }
    let mut planned = Vec::with_capacity(paths.len());
    for (desc, path) in manifest.layers.iter().zip(paths) {
        let p = PathBuf::from(path);
        if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(Error::Refused(format!("the adopted path {path:?} is not absolute; nothing was changed")));
        }
        let content = match desc.annotations.get(ANNOTATION_KIND).map(String::as_str) {
            Some("dir") => PlannedContent::Dir(vec![(
                desc.clone(),
                LayerUse::Tar { compression: Compression::None, subdir: String::new() },
            )]),
            _ => PlannedContent::File(desc.clone(), FileBytes::PLAIN),
        };
        planned.push(PlannedTarget { path: p, content });
    }
    let artifact = source::ResolvedArtifact {
        display: version.source.clone(),
        manifest_digest: version.manifest_digest.clone(),
        manifest,
        index_digest: None,
        signer: None,
    };
    Ok(PutRequest {
        name: name.to_string(),
        op: Op::Rollback,
        source: version.source.clone(),
        artifact,
        blobs: Box::new(cache),
        planned,
        placement: version.placement.clone(),
        adopt: false,
        keep_versions: keep,
        signed_by: None,
        layout: None,
        limits,
        exact: true,
        managed_by: None,
        allow_move: false,
    })
}
