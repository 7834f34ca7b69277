//! Staging: writes a target's new content under its staging path, verified
//! and fsynced, and records what was written (for `verify`) and the staged
//! object's identity (for recovery).
//!
//! Every tar entry passes the `plan::tar_guard` before it is created; every
//! blob is read to its end so its digest is checked even when the tar reader
//! stops early. Writes are deferred-sync: all files first, then one fsync
//! pass over files, then directories deepest first, then the staging
//! path's parent. Every file's bytes are counted by the target
//! filesystem's [`Meter`] (`installer::space`), which stops staging an
//! artifact that expands past what the free-space check allowed. Small
//! files are written by [`writers`] threads while this thread reads on.

mod exact;
mod writers;

use std::io::Read;
use std::path::{Path, PathBuf};

use self::writers::Writers;
use super::space::Meter;
use super::Error;
use crate::fsops;
use crate::plan::limits::{installed_mode, Limits};
use crate::plan::tar_bounds::TarBounds;
use crate::plan::tar_guard::{Admitted, TarGuard, TarKind};
use crate::plan::{Compression, FileBytes, LayerUse};
use crate::source::{verify, BlobSource, Descriptor};
use crate::txn::{EntryKind, FileEntry, Identity};

const ROLE: &str = "staging";

/// A file of another package that lives inside a directory target, copied
/// into the new directory so that replacing the directory keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Path relative to the directory target.
    pub rel: String,
    /// Where it is now.
    pub live: PathBuf,
    /// The package that owns it.
    pub owner: String,
    /// Its sha256 (lowercase hex) as that package installed it.
    pub sha256: String,
}

/// What staging produced.
#[derive(Debug, Clone)]
pub struct Staged {
    pub identity: Identity,
    pub entries: Vec<FileEntry>,
}

/// The context of a failed fsync or syncfs of staged content (fsops's
/// error already names the call and the path).
const DURABLE: &str = "making the staged files durable";

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// How staging (and the dry run's file count) reads a tar entry's type.
pub(crate) fn tar_kind(t: tar::EntryType) -> TarKind {
    use tar::EntryType as E;
    match t {
        E::Regular | E::Continuous => TarKind::File,
        E::Directory => TarKind::Dir,
        E::Symlink => TarKind::Symlink,
        E::Link => TarKind::HardLink,
        E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => TarKind::Metadata,
        _ => TarKind::Special,
    }
}

struct DirBuilder {
    root: PathBuf,
    umask: u32,
    limits: Limits,
    guard: TarGuard,
    files: Vec<PathBuf>,
    dirs: Vec<(PathBuf, u32)>,
    entries: Vec<FileEntry>,
    meter: Meter,
    writers: Writers,
    /// Restoring a captured version (`exact`): the root's own metadata, and
    /// every entry's, applied in [`DirBuilder::sync`].
    exact: bool,
    root_meta: Option<exact::ExactMeta>,
    fixes: Vec<(PathBuf, EntryKind, exact::ExactMeta)>,
}

impl DirBuilder {
    fn mkdir(&mut self, rel: &str, mode: u32) -> Result<(), Error> {
        let path = self.root.join(rel);
        // Created writable; the archive's mode is applied after the contents.
        fsops::create_dir(&path, 0o755, ROLE).map_err(io_err(format!("staging {}", path.display())))?;
        self.dirs.push((path, mode));
        self.entries.push(FileEntry {
            rel: rel.to_string(),
            kind: EntryKind::Dir,
            mode,
            size: 0,
            sha256: String::new(),
            link: String::new(),
        });
        Ok(())
    }

    /// Writes one file. `size`, when known up front (a tar entry's), lets
    /// a small file go to a writer thread; its entry is completed when the
    /// thread reports ([`DirBuilder::settle`]).
    fn file(&mut self, rel: &str, src: &mut dyn Read, mode: u32, size: Option<u64>) -> Result<(), Error> {
        let path = self.root.join(rel);
        // A digest mismatch surfaces as InvalidData from the verifying reader.
        let staging_err = |source| Error::Io { context: format!("staging {rel}"), source };
        let meter = self.meter.clone();
        let mut src = meter.track(src);
        if size.is_some_and(|s| s <= writers::MAX_FILE_BYTES) {
            let mut data = Vec::with_capacity(size.unwrap_or(0) as usize);
            (&mut src).take(writers::MAX_FILE_BYTES + 1).read_to_end(&mut data).map_err(staging_err)?;
            if data.len() as u64 <= writers::MAX_FILE_BYTES {
                // Its digest is filled in when the writer reports.
                let index = self.push_file(rel, path.clone(), mode, data.len() as u64, String::new());
                self.writers.submit(index, path, data, mode).map_err(staging_err)?;
                // With kill points armed, one file at a time: a crash at the
                // N-th point must leave the same files every time, since the
                // crash matrix replays a run to that point again and again.
                let done = if fsops::killpoint::armed() { self.writers.drain() } else { self.writers.finished() };
                return self.settle(done);
            }
            // Longer than it said: write what was read, then the rest, here.
            let w = fsops::write_file(&path, &mut data.as_slice().chain(src), mode, ROLE).map_err(staging_err)?;
            self.push_file(rel, path, mode, w.size, w.sha256);
            return Ok(());
        }
        let w = fsops::write_file(&path, &mut src, mode, ROLE).map_err(staging_err)?;
        self.push_file(rel, path, mode, w.size, w.sha256);
        Ok(())
    }

    /// Records a staged file; returns its index in `entries`.
    fn push_file(&mut self, rel: &str, path: PathBuf, mode: u32, size: u64, sha256: String) -> usize {
        self.files.push(path);
        self.entries.push(FileEntry {
            rel: rel.to_string(),
            kind: EntryKind::File,
            mode,
            size,
            sha256,
            link: String::new(),
        });
        self.entries.len() - 1
    }

    /// Completes the entries of files the writer threads finished; the
    /// first failure (in archive order) is the error.
    fn settle(&mut self, done: Vec<(usize, std::io::Result<fsops::WrittenFile>)>) -> Result<(), Error> {
        let mut first: Option<(usize, std::io::Error)> = None;
        for (index, result) in done {
            match (result, self.entries.get_mut(index)) {
                (Ok(w), Some(e)) => {
                    debug_assert_eq!(e.size, w.size, "a writer wrote what it was given");
                    e.size = w.size;
                    e.sha256 = w.sha256;
                }
                (Ok(_), None) => {}
                (Err(err), _) => {
                    if first.as_ref().is_none_or(|(i, _)| index < *i) {
                        first = Some((index, err));
                    }
                }
            }
        }
        match first {
            None => Ok(()),
            Some((index, source)) => {
                let rel = self.entries.get(index).map_or("a file", |e| e.rel.as_str());
                Err(Error::Io { context: format!("staging {rel}"), source })
            }
        }
    }

    /// Waits for every file handed to the writer threads.
    fn drain(&mut self) -> Result<(), Error> {
        let done = self.writers.drain();
        self.settle(done)
    }

    fn apply(&mut self, admitted: Admitted, entry: &mut dyn Read, size: Option<u64>) -> Result<(), Error> {
        if super::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        let parents = match &admitted {
            Admitted::Dir { implicit_parents, .. }
            | Admitted::File { implicit_parents, .. }
            | Admitted::Symlink { implicit_parents, .. }
            | Admitted::HardLink { implicit_parents, .. } => implicit_parents.clone(),
            Admitted::Skip => return Ok(()),
        };
        for p in parents {
            self.mkdir(&p, installed_mode(0o755, self.umask))?;
        }
        // An artifact's modes are capped; a captured version's are its own
        // (its special bits set in `sync`, once the owner is right).
        let mode_of = |m: u32| if self.exact { m & 0o777 } else { installed_mode(m, self.umask) };
        match admitted {
            Admitted::Dir { rel, mode, .. } => self.mkdir(&rel, mode_of(mode)),
            Admitted::File { rel, mode, .. } => self.file(&rel, entry, mode_of(mode), size),
            Admitted::Symlink { rel, target, .. } => {
                let path = self.root.join(&rel);
                fsops::symlink(Path::new(&target), &path, ROLE).map_err(io_err(format!("staging {rel}")))?;
                self.entries.push(FileEntry {
                    rel,
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    size: 0,
                    sha256: String::new(),
                    link: target,
                });
                Ok(())
            }
            Admitted::HardLink { rel, original, .. } => {
                // The original must exist, and its entry be complete.
                self.drain()?;
                let path = self.root.join(&rel);
                fsops::hard_link(&self.root.join(&original), &path, ROLE).map_err(io_err(format!("staging {rel}")))?;
                let orig = self.entries.iter().find(|e| e.rel == original).cloned();
                if let Some(mut e) = orig {
                    e.rel = rel;
                    self.entries.push(e);
                }
                Ok(())
            }
            Admitted::Skip => Ok(()),
        }
    }

    fn tar_layer(
        &mut self,
        desc: &Descriptor,
        c: Compression,
        subdir: &str,
        blobs: &dyn BlobSource,
    ) -> Result<(), Error> {
        if !subdir.is_empty() {
            let admitted = self.guard.admit(subdir.as_bytes(), TarKind::Dir, None, 0o755)?;
            self.apply(admitted, &mut std::io::empty(), None)?;
        }
        let mut raw = blobs.open_blob(desc)?;
        {
            let decoded: Box<dyn Read> = match c {
                Compression::None => Box::new(&mut raw),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
                Compression::Zstd => {
                    Box::new(zstd::Decoder::new(&mut raw).map_err(io_err(format!("layer {}: zstd", desc.digest)))?)
                }
            };
            let mut archive = tar::Archive::new(Bounded { inner: decoded, bounds: TarBounds::new(self.limits) });
            let bad = |e: std::io::Error| Error::Io {
                context: format!("layer {}: reading the tar stream", desc.digest),
                source: e,
            };
            for entry in archive.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let kind = tar_kind(entry.header().entry_type());
                let mut path = entry.path_bytes().into_owned();
                if !subdir.is_empty() {
                    path = [subdir.as_bytes(), b"/", &path].concat();
                }
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                let cap = self.limits.max_path_bytes;
                for (what, len) in [("path", path.len()), ("link name", link.as_ref().map_or(0, Vec::len))] {
                    if len as u64 > cap {
                        return Err(Error::Refused(format!(
                            "layer {}: an entry's {what} is {len} bytes, over the --max-path-bytes cap of {cap}",
                            desc.digest
                        )));
                    }
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let meta = if self.exact { Some(exact::meta_of(&mut entry)?) } else { None };
                let admitted = self.guard.admit(&path, kind, link.as_deref(), mode)?;
                let fix = match (&admitted, meta) {
                    (Admitted::Skip, Some(m))
                        if kind == TarKind::Dir
                            && subdir.is_empty()
                            && crate::plan::tar_guard::normalize(&path).is_ok_and(|r| r.is_empty()) =>
                    {
                        self.root_meta = Some(m);
                        None
                    }
                    (Admitted::Dir { rel, .. }, Some(m)) => Some((rel.clone(), EntryKind::Dir, m)),
                    (Admitted::File { rel, .. }, Some(m)) => Some((rel.clone(), EntryKind::File, m)),
                    (Admitted::Symlink { rel, .. }, Some(m)) => Some((rel.clone(), EntryKind::Symlink, m)),
                    _ => None,
                };
                let size = entry.size();
                self.apply(admitted, &mut entry, Some(size))?;
                if let Some((rel, kind, m)) = fix {
                    if kind != EntryKind::Symlink {
                        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.rel == rel) {
                            e.mode = m.mode;
                        }
                    }
                    self.fixes.push((self.root.join(&rel), kind, m));
                }
            }
        }
        verify::drain(&mut raw).map_err(io_err(format!("layer {}", desc.digest)))?;
        Ok(())
    }

    fn title_layer(
        &mut self,
        desc: &Descriptor,
        name: &str,
        bytes: FileBytes,
        blobs: &dyn BlobSource,
    ) -> Result<(), Error> {
        self.guard.admit_root_file(name)?;
        let mut raw = blobs.open_blob(desc)?;
        {
            let mut src = file_bytes(&mut raw, bytes, self.limits.max_layer_bytes);
            self.file(name, &mut src, installed_mode(bytes.mode, self.umask), None)?;
        }
        verify::drain(&mut raw).map_err(io_err(format!("layer {name}")))?;
        Ok(())
    }

    /// Copies another package's nested file into the new tree: opened
    /// without following a symlink, copied without special bits, and
    /// refused unless its bytes are the ones its package installed.
    fn carry(&mut self, c: &Carried) -> Result<(), Error> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let admitted = self.guard.admit(c.rel.as_bytes(), TarKind::File, None, 0o644).map_err(|r| {
            Error::Refused(format!(
                "the new version puts its own entry at {} ({}), which belongs to package {:?}",
                c.rel, r.reason, c.owner
            ))
        })?;
        let live = c.live.display();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&c.live)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    Error::Refused(format!("{live} (of package {:?}) is now a symlink; stagehand will not copy it into the new version. Reinstall {:?} first", c.owner, c.owner))
                } else {
                    Error::Io { context: format!("reading {live}"), source: e }
                }
            })?;
        let meta = f.metadata().map_err(io_err(format!("reading {live}")))?;
        if !meta.is_file() {
            return Err(Error::Refused(format!(
                "{live} (of package {:?}) is no longer a regular file; reinstall {:?} first",
                c.owner, c.owner
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        let rel = match admitted {
            Admitted::File { rel, implicit_parents, .. } => {
                let rel_copy = rel.clone();
                // Written here (no size given), so its digest is known below.
                self.apply(Admitted::File { rel, mode, implicit_parents }, &mut f, None)?;
                rel_copy
            }
            other => return self.apply(other, &mut f, None),
        };
        let written = self.entries.iter().rev().find(|e| e.rel == rel).map(|e| e.sha256.clone()).unwrap_or_default();
        if written != c.sha256 {
            return Err(Error::Refused(format!(
                "{live} (of package {:?}) was changed since it was installed (sha256 {written}, recorded {}); stagehand will not carry it into the new version. Run `stagehand verify {}` and reinstall it",
                c.owner, c.sha256, c.owner
            )));
        }
        Ok(())
    }

    /// Sets directory modes (deepest first, after their children exist)
    /// and, in per-file sync mode, fsyncs every file and directory. In the
    /// default syncfs mode the caller makes it all durable with one syncfs.
    fn sync(&mut self) -> Result<(), Error> {
        self.drain()?;
        debug_assert!(
            self.entries.iter().all(|e| e.kind != EntryKind::File || !e.sha256.is_empty()),
            "every file's digest is in"
        );
        let per_file = fsops::sync_mode() == fsops::SyncMode::PerFile;
        if self.exact {
            self.restore_exact()?;
        }
        if per_file {
            for f in &self.files {
                fsops::fsync_file(f, ROLE).map_err(io_err(DURABLE.into()))?;
            }
        }
        self.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (d, mode) in &self.dirs {
            if *mode != 0o755 && !self.exact {
                fsops::set_mode(d, *mode, ROLE).map_err(io_err(format!("chmod {}", d.display())))?;
            }
            if per_file {
                fsops::fsync_dir(d, ROLE).map_err(io_err(DURABLE.into()))?;
            }
        }
        if per_file {
            fsops::fsync_dir(&self.root, ROLE).map_err(io_err(DURABLE.into()))?;
        }
        Ok(())
    }
}

impl DirBuilder {
    /// A captured version's metadata: files and links first, then every
    /// directory deepest first (the root last), so each directory's mtime
    /// is set after everything inside it is.
    fn restore_exact(&mut self) -> Result<(), Error> {
        for (p, kind, m) in self.fixes.iter().filter(|f| f.1 != EntryKind::Dir) {
            exact::restore(p, *kind, m)?;
        }
        let mut dirs: Vec<(&Path, &exact::ExactMeta)> =
            self.fixes.iter().filter(|f| f.1 == EntryKind::Dir).map(|(p, _, m)| (p.as_path(), m)).collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        if let Some(m) = &self.root_meta {
            dirs.push((self.root.as_path(), m));
        }
        for (p, m) in dirs {
            exact::restore(p, EntryKind::Dir, m)?;
        }
        Ok(())
    }
}

/// A tar stream whose every byte is shown to a [`TarBounds`] on its way to
/// the tar reader, so a cap fails before the reader buffers what exceeds it.
struct Bounded<R> {
    inner: R,
    bounds: TarBounds,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bounds.feed(&buf[..n]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.0))?;
        Ok(n)
    }
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

fn identity_of(p: &Path) -> Result<Identity, Error> {
    fsops::identity(p).map_err(io_err(format!("stat {}", p.display())))?.ok_or_else(|| Error::Io {
        context: format!("{} vanished after staging", p.display()),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// Makes every staged path durable: one `syncfs` per filesystem they are
/// on (a no-op in per-file mode, where staging fsynced as it went).
pub fn make_durable(staging_paths: &[PathBuf]) -> Result<(), Error> {
    if fsops::sync_mode() == fsops::SyncMode::PerFile {
        return Ok(());
    }
    let mut seen = Vec::new();
    for p in staging_paths {
        let id = identity_of(p)?;
        if !seen.contains(&id.dev) {
            seen.push(id.dev);
            fsops::syncfs(parent(p), ROLE).map_err(io_err(DURABLE.into()))?;
        }
    }
    Ok(())
}

/// Builds a directory target's content at `staging` from its layers;
/// `exact` for a version stagehand captured itself (see [`exact`]).
pub fn stage_dir(
    staging: &Path,
    layers: &[(Descriptor, LayerUse)],
    carry: &[Carried],
    blobs: &dyn BlobSource,
    limits: Limits,
    meter: &Meter,
    exact: bool,
) -> Result<Staged, Error> {
    let umask = fsops::umask();
    fsops::create_dir(staging, installed_mode(0o755, umask), ROLE)
        .map_err(io_err(format!("staging {}", staging.display())))?;
    let mut b = DirBuilder {
        root: staging.to_path_buf(),
        umask,
        limits,
        guard: if exact { TarGuard::keeping_links() } else { TarGuard::new() },
        files: vec![],
        dirs: vec![],
        entries: vec![],
        meter: meter.clone(),
        writers: Writers::new(ROLE),
        exact,
        root_meta: None,
        fixes: vec![],
    };
    for (desc, usage) in layers {
        match usage {
            LayerUse::Tar { compression, subdir } => b.tar_layer(desc, *compression, subdir, blobs)?,
            LayerUse::File { name, bytes } => b.title_layer(desc, name, *bytes, blobs)?,
        }
    }
    let own_entries = b.entries.len();
    for c in carry {
        b.carry(c)?;
    }
    b.entries.truncate(own_entries);
    b.sync()?;
    if fsops::sync_mode() == fsops::SyncMode::PerFile {
        fsops::fsync_dir(parent(staging), ROLE).map_err(io_err(DURABLE.into()))?;
    }
    let identity = identity_of(staging)?;
    b.entries.sort_by(|x, y| x.rel.cmp(&y.rel));
    Ok(Staged { identity, entries: b.entries })
}

/// The bytes a single-file layer installs: as they are, or gunzipped (then
/// at most `max_bytes` of them, the `--max-layer-bytes` cap).
fn file_bytes<'a>(raw: &'a mut Box<dyn Read + Send>, bytes: FileBytes, max_bytes: u64) -> Box<dyn Read + 'a> {
    if bytes.gunzip {
        Box::new(Capped { inner: flate2::read::MultiGzDecoder::new(raw), left: max_bytes, cap: max_bytes })
    } else {
        Box::new(raw)
    }
}

/// A reader that fails once more than `cap` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the layer expands to more than {} bytes, the --max-layer-bytes cap", self.cap),
            )
        })?;
        Ok(n)
    }
}

/// Writes a file target's content at `staging` from one layer; `exact`
/// for a version stagehand captured itself (a one-entry tar layer).
pub fn stage_file(
    staging: &Path,
    desc: &Descriptor,
    bytes: FileBytes,
    blobs: &dyn BlobSource,
    limits: Limits,
    meter: &Meter,
    exact: bool,
) -> Result<Staged, Error> {
    if exact {
        let (w, meta) = exact::stage_file(staging, desc, blobs, limits, meter)?;
        let identity = identity_of(staging)?;
        return Ok(Staged { identity, entries: vec![exact::file_entry(w, &meta)] });
    }
    let mode = installed_mode(bytes.mode, fsops::umask());
    let mut raw = blobs.open_blob(desc)?;
    let w = {
        let mut src = file_bytes(&mut raw, bytes, limits.max_layer_bytes);
        fsops::write_file(staging, &mut meter.track(&mut src), mode, ROLE)
            .map_err(io_err(format!("staging {}", desc.title().unwrap_or(&desc.digest))))?
    };
    verify::drain(&mut raw).map_err(io_err(format!("layer {}", desc.digest)))?;
    if fsops::sync_mode() == fsops::SyncMode::PerFile {
        fsops::fsync_file(staging, ROLE).map_err(io_err(DURABLE.into()))?;
        fsops::fsync_dir(parent(staging), ROLE).map_err(io_err(DURABLE.into()))?;
    }
    let identity = identity_of(staging)?;
    let entry = FileEntry {
        rel: String::new(),
        kind: EntryKind::File,
        mode,
        size: w.size,
        sha256: w.sha256,
        link: String::new(),
    };
    Ok(Staged { identity, entries: vec![entry] })
}
