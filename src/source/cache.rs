//! The content-addressed blob cache in the state dir: `STATE/blobs/sha256/<hex>`
//! for complete, verified blobs (layers, configs, manifests and indexes) and
//! `STATE/blobs/partial/<hex>` for blobs still downloading.
//!
//! This module owns the cache's layout and its one rule: a file appears under
//! `blobs/sha256/` only after its bytes hashed to its name and had the size
//! its descriptor gave, and were fsynced. A partial whose size or digest turns
//! out wrong is removed, never promoted. Every mutation goes through
//! [`crate::fsops`] (role `cache`, so kill points `fsops.*.cache`).
//!
//! Blobs stagehand synthesizes itself (the capture of what `--adopt`
//! replaces) are written by [`BlobCache::begin_new`]: hashed as they are
//! written, then fsynced and renamed to the digest they turned out to have.
//!
//! It serves staging as a [`BlobSource`] (re-verifying every byte while it
//! is read, and evicting a cached blob found corrupt), and it lists and
//! prunes. It never talks to the network (the registry source feeds it), and
//! never touches a destination or the journal. Callers hold the state dir
//! lock, so no two processes write one partial at once.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::manifest::{digest_hex, parse_manifest, validate_digest, ImageManifest};
use super::verify::{blob_label, into_source_error, VerifyingReader};
use super::{BlobSource, Descriptor, SourceError, MAX_MANIFEST_BYTES};
use crate::fsops::{self, blobfile};

/// The cache's directory under the state dir.
pub const CACHE_DIR: &str = "blobs";
/// Kill point role of every cache mutation.
pub const ROLE: &str = "cache";
/// Buffer size for reading cached blobs.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The blob cache of one state dir.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
}

/// One complete blob in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedBlob {
    pub digest: String,
    pub size: u64,
}

/// One partial (interrupted) download in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialBlob {
    /// The digest the download was for, if the file name is one.
    pub digest: Option<String>,
    pub path: String,
    pub size: u64,
}

/// Everything in the cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheContents {
    pub blobs: Vec<CachedBlob>,
    pub partials: Vec<PartialBlob>,
}

/// What a prune removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub removed: Vec<CachedBlob>,
    pub removed_partials: Vec<PartialBlob>,
    pub kept: usize,
    pub bytes_freed: u64,
    pub dry_run: bool,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

impl BlobCache {
    /// The cache of `state_dir` (nothing is created or read yet).
    pub fn new(state_dir: &Path) -> BlobCache {
        BlobCache { root: state_dir.join(CACHE_DIR) }
    }

    /// `STATE/blobs`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn store_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// Creates the cache's directories (durably) if they are missing.
    pub fn ensure_dirs(&self) -> Result<(), SourceError> {
        for d in [self.store_dir(), self.partial_dir()] {
            fsops::create_dir_all_durable(&d, 0o700, ROLE).map_err(io_err(format!("creating {}", d.display())))?;
        }
        Ok(())
    }

    /// Where the complete blob `digest` lives; refuses invalid digests.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, SourceError> {
        validate_digest(digest)?;
        Ok(self.store_dir().join(digest_hex(digest)))
    }

    /// Where the partial download of `digest` lives; refuses invalid digests.
    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, SourceError> {
        validate_digest(digest)?;
        Ok(self.partial_dir().join(digest_hex(digest)))
    }

    /// True if the blob is in the cache with the size `desc` gives. This is
    /// the cheap check; its bytes are re-hashed when staging reads them. A
    /// cached file of the wrong size is removed (and `false` returned).
    pub fn contains(&self, desc: &Descriptor) -> Result<bool, SourceError> {
        let path = self.blob_path(&desc.digest)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == desc.size => Ok(true),
            Ok(m) => {
                tracing::warn!(
                    blob = %desc.digest, size = m.len(), expected = desc.size,
                    "cached blob has the wrong size; removing it"
                );
                fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(format!("checking {}", path.display()))(e)),
        }
    }

    /// Reads a small cached blob (a manifest or index) whole, verifying its
    /// digest; `Ok(None)` if it is not cached (or was cached corrupt, in
    /// which case it is removed).
    pub fn read_small(&self, digest: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let path = self.blob_path(digest)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            tracing::warn!(blob = %digest, "cached manifest is corrupt or too large; removing it");
            fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// The cached image manifest `digest`, parsed; `Ok(None)` if not cached
    /// or not an image manifest.
    pub fn read_manifest(&self, digest: &str) -> Result<Option<ImageManifest>, SourceError> {
        match self.read_small(digest)? {
            Some(bytes) => Ok(parse_manifest(&bytes, &format!("cached manifest {digest}")).ok()),
            None => Ok(None),
        }
    }

    /// Stores `bytes` (already in memory, e.g. a manifest) as blob `digest`,
    /// after checking that they hash to it. Nothing is written if the blob
    /// is already cached.
    pub fn put_small(&self, digest: &str, bytes: &[u8]) -> Result<(), SourceError> {
        let desc = Descriptor {
            media_type: String::new(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        if self.contains(&desc)? {
            return Ok(());
        }
        let what = format!("manifest {digest}");
        match self.begin(&desc, &what)? {
            None => Ok(()),
            Some(mut w) => {
                if w.offset() != 0 {
                    w.restart()?;
                }
                w.write(bytes)?;
                w.finish()
            }
        }
    }

    /// Starts (or resumes) the download of `desc` into its partial file.
    /// Returns `None` if a complete, valid partial was already there and is
    /// now promoted into the cache (nothing left to download). `what` names
    /// the blob in errors (e.g. `layer "a.so" (sha256:…)`).
    pub fn begin(&self, desc: &Descriptor, what: &str) -> Result<Option<BlobWriter>, SourceError> {
        let partial_path = self.partial_path(&desc.digest)?;
        let final_path = self.blob_path(&desc.digest)?;
        let ctx = |verb: &str| format!("{verb} {}", partial_path.display());
        let existing = blobfile::reopen_partial(&partial_path, ROLE).map_err(io_err(ctx("opening")))?;
        let mut writer = BlobWriter {
            partial: match existing {
                Some(p) if p.len() <= desc.size => p,
                Some(p) => {
                    tracing::debug!(blob = %desc.digest, have = p.len(), "partial blob is longer than the blob; replacing it");
                    drop(p);
                    blobfile::create_partial(&partial_path, ROLE).map_err(io_err(ctx("creating")))?
                }
                None => blobfile::create_partial(&partial_path, ROLE).map_err(io_err(ctx("creating")))?,
            },
            hasher: Sha256::new(),
            digest: desc.digest.clone(),
            size: desc.size,
            what: what.to_string(),
            final_path,
            resumed_from: 0,
        };
        let have = writer.partial.len();
        if have > 0 {
            // Resume: the hash must cover the bytes already there.
            let mut f = File::open(&partial_path).map_err(io_err(ctx("opening")))?;
            let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, (&mut f).take(have));
            let mut buf = vec![0u8; READ_BUFFER_BYTES];
            let mut hashed = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(io_err(ctx("reading")))?;
                if n == 0 {
                    break;
                }
                writer.hasher.update(&buf[..n]);
                hashed += n as u64;
            }
            if hashed != have {
                writer.restart()?;
            } else {
                writer.resumed_from = have;
                tracing::debug!(blob = %desc.digest, from = have, size = desc.size, "resuming a partial download");
            }
        }
        if writer.offset() == desc.size {
            // Everything is there already: keep it if it is right.
            if writer.current_digest() == desc.digest {
                writer.finish()?;
                return Ok(None);
            }
            tracing::debug!(blob = %desc.digest, "complete partial blob has the wrong digest; downloading again");
            writer.restart()?;
        }
        Ok(Some(writer))
    }

    /// Copies the blob file `src` (a layout's, which staging has already
    /// read and verified) into the partial file of `desc`, with no fsync
    /// and no hashing: it enters the store only once [`promote`](Self::promote)
    /// (or [`begin`](Self::begin)) has re-hashed and fsynced it, so the
    /// store's rule holds while the copy's durability is left to the kernel
    /// or a later command. A complete partial already there is kept.
    pub fn stash(&self, desc: &Descriptor, src: &Path) -> Result<(), SourceError> {
        let path = self.partial_path(&desc.digest)?;
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == desc.size) {
            return Ok(());
        }
        let mut from = File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
        let mut partial =
            blobfile::create_partial(&path, ROLE).map_err(io_err(format!("creating {}", path.display())))?;
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let copied = loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(io_err(format!("reading {}", src.display()))(e)),
            };
            if partial.len() + n as u64 > desc.size {
                let actual = partial.len() + n as u64;
                break Err(SourceError::SizeMismatch { what: blob_label(desc), expected: desc.size, actual });
            }
            if let Err(e) = partial.append(&buf[..n]) {
                break Err(io_err(format!("writing {}", path.display()))(e));
            }
        };
        let flushed = copied.and_then(|()| partial.flush().map_err(io_err(format!("writing {}", path.display()))));
        drop(partial);
        if flushed.is_err() {
            let _ = fsops::remove_tree(&path, ROLE);
        }
        flushed
    }

    /// True if `desc` is in the store, after promoting a complete partial
    /// of it (a [`stash`](Self::stash)ed copy, or a download that got every
    /// byte): re-hashed, fsynced, renamed into the store. A damaged one is
    /// removed, and `false` returned.
    pub fn promote(&self, desc: &Descriptor) -> Result<bool, SourceError> {
        if self.contains(desc)? {
            return Ok(true);
        }
        let path = self.partial_path(&desc.digest)?;
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == desc.size) {
            return Ok(false);
        }
        match self.begin(desc, &blob_label(desc))? {
            None => Ok(true),
            Some(w) => {
                tracing::warn!(blob = %desc.digest, "the cached copy of this blob is damaged; removing it");
                w.abandon()?;
                Ok(false)
            }
        }
    }

    /// Every complete blob and every partial in the cache, sorted.
    pub fn list(&self) -> Result<CacheContents, SourceError> {
        let mut out = CacheContents::default();
        for (dir, partial) in [(self.store_dir(), false), (self.partial_dir(), true)] {
            let entries = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
                let meta = entry.metadata().map_err(io_err(format!("stat {}", entry.path().display())))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = Some(format!("sha256:{name}")).filter(|d| validate_digest(d).is_ok());
                match (partial, digest) {
                    (false, Some(digest)) if meta.is_file() => out.blobs.push(CachedBlob { digest, size: meta.len() }),
                    (false, _) => {
                        tracing::debug!(path = %entry.path().display(), "ignoring a foreign file in the blob cache")
                    }
                    (true, digest) => out.partials.push(PartialBlob {
                        digest,
                        path: entry.path().display().to_string(),
                        size: meta.len(),
                    }),
                }
            }
        }
        out.blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        out.partials.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The digests the manifests `manifest_digests` need: each manifest
    /// itself, its config and its layers (for manifests found in the cache).
    pub fn closure_of<'a>(
        &self,
        manifest_digests: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeSet<String>, SourceError> {
        let mut keep = BTreeSet::new();
        for d in manifest_digests {
            if validate_digest(d).is_err() {
                continue;
            }
            keep.insert(d.to_string());
            if let Some(m) = self.read_manifest(d)? {
                keep.insert(m.config.digest.clone());
                keep.extend(m.layers.iter().map(|l| l.digest.clone()));
            }
        }
        Ok(keep)
    }

    /// Removes partial downloads that hold no bytes (downloads stopped before
    /// their first chunk, e.g. when a sibling layer failed): nothing to resume.
    pub fn remove_empty_partials(&self) -> Result<(), SourceError> {
        for p in self.list()?.partials.into_iter().filter(|p| p.size == 0) {
            fsops::remove_tree(Path::new(&p.path), ROLE).map_err(io_err(format!("removing {}", p.path)))?;
        }
        Ok(())
    }

    /// Removes every complete blob not in `keep`, leaving partial downloads
    /// (an interrupted pull resumes from them). Returns how many it removed.
    pub fn prune_blobs(&self, keep: &BTreeSet<String>) -> Result<usize, SourceError> {
        let mut removed = 0;
        for b in self.list()?.blobs {
            if !keep.contains(&b.digest) {
                let path = self.blob_path(&b.digest)?;
                fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every complete blob not in `keep` and every partial. With
    /// `dry_run`, only reports what it would remove.
    pub fn prune(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<PruneReport, SourceError> {
        let contents = self.list()?;
        let mut report = PruneReport { dry_run, ..Default::default() };
        for b in contents.blobs {
            if keep.contains(&b.digest) {
                report.kept += 1;
                continue;
            }
            if !dry_run {
                let path = self.blob_path(&b.digest)?;
                fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))?;
            }
            report.bytes_freed += b.size;
            report.removed.push(b);
        }
        for p in contents.partials {
            // A kept version's blob copied from a layout, not yet promoted.
            if p.digest.as_ref().is_some_and(|d| keep.contains(d)) {
                continue;
            }
            if !dry_run {
                fsops::remove_tree(Path::new(&p.path), ROLE).map_err(io_err(format!("removing {}", p.path)))?;
            }
            report.bytes_freed += p.size;
            report.removed_partials.push(p);
        }
        Ok(report)
    }
}

/// A blob whose digest is known only once it is written (content stagehand
/// synthesizes itself, such as the capture of what `--adopt` replaces):
/// bytes go to `partial/<name>` and into a running sha256; [`finish`]
/// (NewBlobWriter::finish) fsyncs the file and renames it to its digest.
#[derive(Debug)]
pub struct NewBlobWriter {
    partial: blobfile::PartialFile,
    hasher: Sha256,
    store: PathBuf,
}

impl BlobCache {
    /// Starts a new blob of unknown digest at `partial/<name>` (replacing a
    /// file of that name left by an interrupted run). `name` must not be a
    /// digest's hex, so it never meets a download's partial file.
    pub fn begin_new(&self, name: &str) -> Result<NewBlobWriter, SourceError> {
        debug_assert!(validate_digest(&format!("sha256:{name}")).is_err(), "a synthesized blob's temporary name");
        self.ensure_dirs()?;
        let path = self.partial_dir().join(name);
        let partial = blobfile::create_partial(&path, ROLE).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(NewBlobWriter { partial, hasher: Sha256::new(), store: self.store_dir() })
    }
}

impl io::Write for NewBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.partial.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NewBlobWriter {
    /// Makes the blob durable in the store: fsyncs it, renames it to its
    /// digest (the parent directories fsynced), and returns its descriptor
    /// (with an empty media type for the caller to fill in).
    pub fn finish(mut self) -> Result<Descriptor, SourceError> {
        let from = self.partial.path().to_path_buf();
        self.partial.sync().map_err(io_err(format!("writing and fsyncing {}", from.display())))?;
        let size = self.partial.len();
        let hex = hex::encode(self.hasher.finalize());
        let to = self.store.join(&hex);
        drop(self.partial);
        fsops::rename(&from, &to, ROLE).map_err(io_err(format!("moving {} into the blob cache", from.display())))?;
        Ok(Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{hex}"),
            size,
            annotations: Default::default(),
            platform: None,
        })
    }

    /// Gives up: removes the partial file.
    pub fn abandon(self) -> Result<(), SourceError> {
        let path = self.partial.path().to_path_buf();
        drop(self.partial);
        fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))
    }
}

/// A blob being written into the cache: appends go to its partial file and
/// into a running sha256; [`finish`](Self::finish) checks size and digest
/// and only then renames it into the store.
#[derive(Debug)]
pub struct BlobWriter {
    partial: blobfile::PartialFile,
    hasher: Sha256,
    digest: String,
    size: u64,
    what: String,
    final_path: PathBuf,
    resumed_from: u64,
}

impl BlobWriter {
    /// Bytes of the blob already in the partial file: the next byte to fetch.
    pub fn offset(&self) -> u64 {
        self.partial.len()
    }

    /// Bytes of the blob written to the partial file so far (readable
    /// there; [`offset`](Self::offset) also counts buffered bytes).
    pub fn flushed(&self) -> u64 {
        self.partial.written()
    }

    /// Opens the partial file for reading (by a [`super::feed::Follower`]).
    pub fn open_for_reading(&self) -> Result<File, SourceError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.partial.path();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))
    }

    /// The partial file being written.
    pub fn path(&self) -> &Path {
        self.partial.path()
    }

    /// Where a resumed download picked up (0 for a fresh one).
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// The blob's expected size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn current_digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    fn io(&self, verb: &str) -> impl FnOnce(io::Error) -> SourceError {
        io_err(format!("{verb} {}", self.partial.path().display()))
    }

    /// Appends `chunk`. More bytes than the descriptor's size is a
    /// `SizeMismatch`: the partial is removed.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SourceError> {
        let total = self.offset().saturating_add(chunk.len() as u64);
        if total > self.size {
            let err = SourceError::SizeMismatch { what: self.what.clone(), expected: self.size, actual: total };
            self.discard()?;
            return Err(err);
        }
        self.hasher.update(chunk);
        let io = self.io("writing");
        self.partial.append(chunk).map_err(io)
    }

    /// Throws away what was written (the server sent the whole blob again).
    pub fn restart(&mut self) -> Result<(), SourceError> {
        let io = self.io("truncating");
        self.partial.truncate().map_err(io)?;
        self.hasher = Sha256::new();
        self.resumed_from = 0;
        Ok(())
    }

    /// Stops here, keeping what was received for a later resume.
    pub fn suspend(mut self) -> Result<u64, SourceError> {
        let io = self.io("writing");
        self.partial.flush().map_err(io)?;
        Ok(self.partial.len())
    }

    /// Gives up: removes the partial file (one that could never be resumed,
    /// such as a copy from a layout) and returns its path.
    pub fn abandon(mut self) -> Result<PathBuf, SourceError> {
        let path = self.partial.path().to_path_buf();
        self.discard()?;
        Ok(path)
    }

    /// Removes the partial file.
    fn discard(&mut self) -> Result<(), SourceError> {
        let path = self.partial.path().to_path_buf();
        fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {}", path.display())))
    }

    /// Checks the size and sha256 of what was written; on success fsyncs
    /// the partial and renames it into the store, on a mismatch removes it
    /// and fails naming the blob.
    pub fn finish(mut self) -> Result<(), SourceError> {
        let got = self.offset();
        if got != self.size {
            self.discard()?;
            return Err(SourceError::SizeMismatch { what: self.what.clone(), expected: self.size, actual: got });
        }
        let actual = self.current_digest();
        if actual != self.digest {
            self.discard()?;
            return Err(SourceError::DigestMismatch { what: self.what.clone(), expected: self.digest.clone(), actual });
        }
        let io = self.io("writing and fsyncing");
        self.partial.sync().map_err(io)?;
        let from = self.partial.path().to_path_buf();
        drop(self.partial);
        fsops::rename(&from, &self.final_path, ROLE)
            .map_err(io_err(format!("moving {} into the blob cache", from.display())))
    }
}

/// Reads a cached blob through the verifying reader; on a size or digest
/// mismatch removes the cached file, so the next pull fetches it again.
struct EvictOnMismatch<R> {
    inner: VerifyingReader<R>,
    path: PathBuf,
    evicted: bool,
}

impl<R: Read> Read for EvictOnMismatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData && !self.evicted => {
                self.evicted = true;
                tracing::warn!(path = %self.path.display(), "cached blob is corrupt; removing it from the cache");
                if let Err(rm) = fsops::remove_tree(&self.path, ROLE) {
                    tracing::warn!(error = %rm, "could not remove the corrupt cached blob");
                }
                Err(e)
            }
            other => other,
        }
    }
}

impl BlobSource for BlobCache {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, SourceError> {
        let path = self.blob_path(&desc.digest)?;
        let what = path.display().to_string();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::BlobMissing {
                    digest: desc.digest.clone(),
                    layout: format!("the blob cache {}", self.root.display()),
                })
            }
            Err(e) => return Err(io_err(what)(e)),
        };
        if !meta.is_file() {
            return Err(io_err(what)(io::Error::new(io::ErrorKind::InvalidData, "not a regular file")));
        }
        if meta.len() != desc.size {
            fsops::remove_tree(&path, ROLE).map_err(io_err(format!("removing {what}")))?;
            return Err(SourceError::SizeMismatch { what: blob_label(desc), expected: desc.size, actual: meta.len() });
        }
        let file = File::open(&path).map_err(io_err(what))?;
        let reader = VerifyingReader::for_descriptor(BufReader::with_capacity(READ_BUFFER_BYTES, file), desc);
        Ok(Box::new(EvictOnMismatch { inner: reader, path, evicted: false }))
    }
}

/// Reads a whole blob from `source` and maps a verification failure to its
/// [`SourceError`] (used by tests and by callers that need the bytes).
pub fn read_all(source: &dyn BlobSource, desc: &Descriptor) -> Result<Vec<u8>, SourceError> {
    let mut r = source.open_blob(desc)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| into_source_error(e, &blob_label(desc)))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        }
    }

    fn cache() -> (tempfile::TempDir, BlobCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = BlobCache::new(dir.path());
        c.ensure_dirs().expect("dirs");
        (dir, c)
    }

    #[test]
    fn write_finish_then_read_back() {
        let (_d, c) = cache();
        let data = b"some layer bytes".to_vec();
        let d = desc(&data);
        assert!(!c.contains(&d).expect("contains"));
        let mut w = c.begin(&d, "layer").expect("begin").expect("writer");
        w.write(&data[..4]).expect("write");
        w.write(&data[4..]).expect("write");
        w.finish().expect("finish");
        assert!(c.contains(&d).expect("contains"));
        assert_eq!(read_all(&c, &d).expect("read"), data);
        let listed = c.list().expect("list");
        assert_eq!(listed.blobs, vec![CachedBlob { digest: d.digest.clone(), size: data.len() as u64 }]);
        assert!(listed.partials.is_empty());
    }

    #[test]
    fn digest_mismatch_discards_the_partial() {
        let (_d, c) = cache();
        let d = desc(b"right bytes");
        let mut w = c.begin(&d, "layer \"x\"").expect("begin").expect("writer");
        w.write(b"wrong bytes").expect("same size");
        match w.finish() {
            Err(SourceError::DigestMismatch { what, .. }) => assert_eq!(what, "layer \"x\""),
            other => panic!("{other:?}"),
        }
        assert!(!c.contains(&d).expect("contains"));
        assert!(c.list().expect("list").partials.is_empty(), "no partial left behind");
        let mut w = c.begin(&d, "l").expect("begin").expect("writer");
        match w.write(b"far too many bytes here") {
            Err(SourceError::SizeMismatch { expected: 11, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(c.list().expect("list").partials.is_empty());
    }

    #[test]
    fn resume_continues_and_replaces() {
        let (_d, c) = cache();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = desc(&data);
        let mut w = c.begin(&d, "big").expect("begin").expect("writer");
        w.write(&data[..1_500_000]).expect("write");
        assert_eq!(w.suspend().expect("suspend"), 1_500_000);
        let mut w = c.begin(&d, "big").expect("begin").expect("writer");
        assert_eq!(w.offset(), 1_500_000);
        assert_eq!(w.resumed_from(), 1_500_000);
        w.write(&data[1_500_000..]).expect("write rest");
        w.finish().expect("finish");
        assert_eq!(read_all(&c, &d).expect("read"), data);

        // A complete but wrong partial is replaced, a complete right one promoted.
        let small = b"0123456789".to_vec();
        let ds = desc(&small);
        fs::write(c.partial_path(&ds.digest).expect("path"), b"9876543210").expect("plant");
        let w = c.begin(&ds, "s").expect("begin").expect("must download again");
        assert_eq!(w.offset(), 0);
        drop(w);
        fs::write(c.partial_path(&ds.digest).expect("path"), &small).expect("plant");
        assert!(c.begin(&ds, "s").expect("begin").is_none());
        assert!(c.contains(&ds).expect("contains"));
    }

    #[test]
    fn a_new_blob_is_named_by_what_was_written() {
        use std::io::Write as _;
        let (_d, c) = cache();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = c.begin_new("adopt-1-0").expect("begin");
        w.write_all(&data[..10]).expect("write");
        w.write_all(&data[10..]).expect("write");
        let d = w.finish().expect("finish");
        assert_eq!(d.digest, desc(&data).digest);
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(read_all(&c, &Descriptor { media_type: "x".into(), ..d }).expect("read"), data);
        assert!(c.list().expect("list").partials.is_empty(), "the partial was renamed");
        let mut w = c.begin_new("adopt-1-1").expect("begin");
        w.write_all(b"given up").expect("write");
        w.abandon().expect("abandon");
        assert!(c.list().expect("list").partials.is_empty(), "an abandoned capture leaves nothing");
    }

    #[test]
    fn corrupt_cached_blob_is_evicted_when_read() {
        let (_d, c) = cache();
        let data = b"cached content".to_vec();
        let d = desc(&data);
        c.put_small(&d.digest, &data).expect("put");
        fs::write(c.blob_path(&d.digest).expect("path"), b"CACHED CONTENT").expect("corrupt");
        assert!(c.contains(&d).expect("same size passes the cheap check"));
        assert!(matches!(read_all(&c, &d), Err(SourceError::DigestMismatch { .. })));
        assert!(!c.contains(&d).expect("contains"), "evicted");
        assert!(matches!(c.put_small(&d.digest, b"not it"), Err(SourceError::DigestMismatch { .. })));
        assert!(!c.contains(&d).expect("contains"));
    }

    #[test]
    fn prune_keeps_the_closure() {
        let (_d, c) = cache();
        let layer = b"layer".to_vec();
        let config = b"{}".to_vec();
        let (dl, dc) = (desc(&layer), desc(&config));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::source::MEDIA_TYPE_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": dc.digest, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": dl.digest, "size": 5}],
        });
        let mbytes = serde_json::to_vec(&manifest).expect("json");
        let dm = desc(&mbytes);
        let orphan = b"orphan".to_vec();
        let dorph = desc(&orphan);
        for (d, b) in [(&dl, &layer), (&dc, &config), (&dm, &mbytes), (&dorph, &orphan)] {
            c.put_small(&d.digest, b).expect("put");
        }
        let mut w = c.begin(&desc(b"partial!"), "p").expect("begin").expect("writer");
        w.write(b"part").expect("write");
        w.suspend().expect("suspend");
        let keep = c.closure_of([dm.digest.as_str()]).expect("closure");
        assert_eq!(keep.len(), 3);
        let dry = c.prune(&keep, true).expect("dry run");
        assert_eq!((dry.removed.len(), dry.removed_partials.len(), dry.kept), (1, 1, 3));
        assert_eq!(c.list().expect("list").blobs.len(), 4, "dry run removes nothing");
        let rep = c.prune(&keep, false).expect("prune");
        assert_eq!(rep.removed[0].digest, dorph.digest);
        assert_eq!(rep.bytes_freed, 6 + 4);
        let left = c.list().expect("list");
        assert_eq!(left.blobs.len(), 3);
        assert!(left.partials.is_empty());
    }
}
