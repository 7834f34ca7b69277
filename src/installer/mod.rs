//! The public library API: open a state dir (recovering first), install,
//! uninstall, list, status, verify.
//!
//! This module owns the order of a transaction — plan, journal, stage,
//! commit, swap, clean — and the checks that come before it (ownership,
//! adoption, containment). It performs filesystem work only through `fsops`
//! and journal work only through `journal`; every decision about recovery
//! comes from `txn`.

mod checks;
pub mod exec;
pub mod interrupt;
pub mod lock;
pub mod progress;
pub mod space;
pub mod stage;
pub mod statedir;
pub mod verify;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::fsops;
use crate::journal::{Journal, JournalError};
use crate::plan::tar_guard::Refused;
use crate::plan::{self, Placement, PlanError, PlannedContent};
use crate::source::{self, SourceError, SourceRef};
use crate::txn::{
    self, EntryKind, InstalledTarget, NewContent, Op, Outcome, PackageRecord, PlacementRecord, Step, TargetPlan,
    TargetProgress, TxnId, TxnRecord, VersionRecord,
};
use checks::{check_ownership, check_removal, mounts_at_or_under, nests};

pub use exec::RecoveryReport;
pub use verify::{Mismatch, VerifyReport};

/// Everything that can go wrong, with the exit code the CLI uses for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the state dir {path} is locked by another stagehand process{}; wait for it to finish, or pass --lock-timeout SECONDS to wait longer", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: String, pid: Option<u32> },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Unsafe(#[from] Refused),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("no package named {0:?} is installed; `stagehand list` shows what is")]
    NotInstalled(String),
    #[error("recovery cannot decide what to do with transaction {txn} (package {package:?}): {reason}. Nothing was changed; inspect the paths named, put the old or new content back by hand, then run `stagehand repair`")]
    RecoveryRefused { txn: TxnId, package: String, reason: String },
    #[error("{cause}\nThe transaction was rolled back: every destination still holds the old version.")]
    RolledBack { cause: Box<Error> },
    #[error("interrupted")]
    Interrupted,
    #[error("{cause}\nThe new version is committed but not finished; the next stagehand command (or `stagehand repair`) finishes it.")]
    LeftForRecovery { cause: Box<Error> },
}

impl Error {
    /// Process exit code: 1 general, 4 locked, 5 recovery refused, 6 the
    /// journal cannot be opened.
    /// (2 is usage, 3 is verify mismatch: set by the CLI.)
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Locked { .. } => 4,
            Error::RecoveryRefused { .. } => 5,
            Error::Journal(j) if j.is_unopenable() => EXIT_JOURNAL_UNOPENABLE,
            Error::Interrupted => interrupt::EXIT_INTERRUPTED,
            // Malformed arguments are usage errors, like clap's own.
            Error::Source(SourceError::BadReference { .. }) | Error::Plan(PlanError::BadMap { .. }) => 2,
            Error::RolledBack { cause } | Error::LeftForRecovery { cause } => match cause.exit_code() {
                c @ (5 | interrupt::EXIT_INTERRUPTED) => c,
                _ => 1,
            },
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Exit code when the journal cannot be opened at all.
pub const EXIT_JOURNAL_UNOPENABLE: i32 = 6;

/// How to open a state dir.
pub struct OpenOptions {
    /// How long to wait for another process's lock.
    pub lock_timeout: Duration,
    /// Run recovery (always, except `repair --dry-run`).
    pub recover: bool,
    /// Called once, with the holder's pid, when the lock is busy and we wait.
    pub on_lock_wait: Option<Box<dyn Fn(Option<u32>)>>,
    /// Open even if recovery refuses a transaction (read-only commands, so
    /// the user can inspect it); the refusal is in the returned reports.
    pub tolerate_refusal: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { lock_timeout: Duration::ZERO, recover: true, on_lock_wait: None, tolerate_refusal: false }
    }
}

/// An install request.
#[derive(Debug, Clone, Default)]
pub struct InstallRequest {
    /// `oci-layout:PATH[:TAG|@DIGEST]` or `[REGISTRY/]REPO:TAG|@DIGEST`.
    pub source: String,
    pub placement: Placement,
    pub name: Option<String>,
    /// Take over an existing, unowned destination as the "old version".
    pub adopt: bool,
    /// Place the artifact by a Steampipe profile instead of `placement`.
    pub profile: Option<ProfileRequest>,
    /// How to pull when the source is a registry (and `platform` for an image index in a layout too).
    pub registry: source::registry::RegistryOptions,
    /// Versions to keep for `rollback`, the installed one included (`--keep-versions`, default 2).
    pub keep_versions: usize,
    /// Set by `rollback`: journal the transaction as a rollback.
    pub rollback: bool,
    /// `--verify-key`: install only with a cosign signature by this key,
    /// checked before anything is downloaded or staged.
    pub verify_key: Option<source::signature::VerifyKey>,
    /// `--require-signature`: refuse to install without `verify_key`
    /// (also the default when the state dir holds [`REQUIRE_SIGNATURE_FILE`]).
    pub require_signature: bool,
    /// Caps on what one layer may expand to (`--max-entries` and friends).
    pub limits: plan::limits::Limits,
}

/// A file in the state dir whose presence makes `--require-signature` the default.
pub const REQUIRE_SIGNATURE_FILE: &str = "require-signature";

/// The default of `InstallRequest::keep_versions` (used when it is 0).
pub const DEFAULT_KEEP_VERSIONS: usize = 2;

fn keep_versions(asked: usize) -> usize {
    if asked == 0 {
        DEFAULT_KEEP_VERSIONS
    } else {
        asked
    }
}

/// True if `path` is a regular file owned by the current user that group
/// and others cannot write, so a hard link to it in the cache shares its
/// inode with nobody else who could change it.
fn only_we_can_write(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// Puts a layout version's manifest and blobs into the blob cache (a hard
/// link where the layout is on the same filesystem and its blob is writable
/// only by us, else a verified copy, so the cache never shares an inode with
/// a file someone else can write), so `rollback` can reinstall it offline later.
fn import_layout_blobs(state_dir: &Path, layout: &Path, artifact: &source::ResolvedArtifact) -> Result<()> {
    let cache = source::cache::BlobCache::new(state_dir);
    cache.ensure_dirs()?;
    let layout = source::OciLayout::open(layout)?;
    let manifest_path = layout.blob_path(&artifact.manifest_digest)?;
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io(format!("reading {}", manifest_path.display())))?;
    cache.put_small(&artifact.manifest_digest, &manifest_bytes)?;
    let m = &artifact.manifest;
    for desc in std::iter::once(&m.config).chain(&m.layers) {
        if cache.contains(desc)? {
            continue;
        }
        let dst = cache.blob_path(&desc.digest)?;
        let src = layout.blob_path(&desc.digest)?;
        if only_we_can_write(&src) && fsops::hard_link(&src, &dst, "cache").is_ok() {
            fsops::fsync_dir(cache.root().join("sha256").as_path(), "cache").map_err(io("syncing the blob cache"))?;
            continue;
        }
        let what = source::verify::blob_label(desc);
        if let Some(mut w) = cache.begin(desc, &what)? {
            if w.offset() != 0 {
                w.restart()?;
            }
            let mut r = source::BlobSource::open_blob(&layout, desc)?;
            let mut buf = vec![0u8; 1 << 20];
            let copied = loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => break Err(Error::Io { context: format!("reading {what}"), source: e }),
                };
                if let Err(e) = w.write(&buf[..n]) {
                    break Err(e.into());
                }
            };
            if let Err(e) = copied {
                // A copy from a layout is never resumed (it starts over):
                // its partial file would only fill the disk. Remove it.
                let partial = w.abandon()?;
                return Err(Error::Refused(format!(
                    "{e}\nThe partial copy {} was removed (a copy from a layout starts over); nothing else was changed",
                    partial.display()
                )));
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// `--profile NAME` and what it needs.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    pub profile: plan::profile::Profile,
    /// Steampipe's install dir (`--install-dir`, default `~/.steampipe`).
    pub install_dir: PathBuf,
    /// `--db-version`; for fdw the single version under `db/` is found if absent.
    pub db_version: Option<String>,
    /// `--platform OS/ARCH`; the host's by default.
    pub platform: Option<(String, String)>,
}

/// `stagehand cache list`: every cached blob and who uses it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheListing {
    pub dir: String,
    pub blobs: Vec<CacheEntry>,
    pub partials: Vec<source::cache::PartialBlob>,
    pub total_bytes: u64,
}

/// One cached blob and the packages / pending transactions that use it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheEntry {
    #[serde(flatten)]
    pub blob: source::cache::CachedBlob,
    pub used_by: Vec<String>,
}

/// What a finished install or uninstall did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TxnReport {
    pub txn: TxnId,
    pub name: String,
    pub op: String,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
    pub targets: Vec<String>,
    /// A Ctrl-C/SIGTERM arrived after the commit point; the txn was finished anyway.
    pub interrupted: bool,
}

/// An open state dir: the lock is held and recovery has run.
pub struct Installer {
    state_dir: PathBuf,
    journal: Journal,
    _lock: lock::StateLock,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| Error::Refused(format!("{} is not valid UTF-8", p.display())))
}

/// Makes a destination path absolute, resolving symlinks in its parent's
/// existing ancestors but not in its final component (so a symlinked target
/// is seen, and refused, rather than followed). Refuses `..` where it
/// cannot be resolved.
pub fn resolve_destination(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(io(format!("resolving {}", p.display())))?;
    let (Some(name), Some(parent)) = (abs.file_name(), abs.parent()) else {
        return Err(Error::Refused(format!("{} cannot be a destination", p.display())));
    };
    let mut existing = parent.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(pp)) => {
                rest.push(n.to_os_string());
                existing = pp.to_path_buf();
            }
            _ => return Err(Error::Refused(format!("{} climbs out with `..`", p.display()))),
        }
    }
    let mut out = existing.canonicalize().map_err(io(format!("resolving {}", existing.display())))?;
    for n in rest.iter().rev() {
        out.push(n);
    }
    out.push(name);
    if out.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::Refused(format!("{} climbs out with `..`", p.display())));
    }
    Ok(out)
}

fn lock_state_dir(state_dir: &Path, opts: &OpenOptions) -> Result<lock::StateLock> {
    statedir::prepare(state_dir)?;
    let lock_path = state_dir.join("lock");
    lock::acquire(&lock_path, opts.lock_timeout, opts.on_lock_wait.as_deref()).map_err(|e| match e {
        lock::LockError::Held { pid } => Error::Locked { path: state_dir.display().to_string(), pid },
        lock::LockError::Io(e) => Error::Io { context: format!("locking {}", lock_path.display()), source: e },
    })
}

/// `repair --set-aside-journal`: under the lock, and only if the journal
/// cannot be opened, renames it and its seal to `*.damaged-<unix time>`
/// (deleting nothing), reports the `.stagehand-` paths it names that exist
/// on disk (left for the user to inspect), and opens a fresh journal whose
/// transaction counter starts past every id those names carry.
pub fn set_aside_journal(state_dir: &Path, opts: &OpenOptions) -> Result<crate::journal::salvage::SetAside> {
    let _lock = lock_state_dir(state_dir, opts)?;
    let dir = state_dir.join("journal");
    match Journal::open(&dir) {
        Ok(_) => {
            return Err(Error::Refused(format!(
                "the journal at {} opens; there is nothing to set aside. Nothing was changed; `stagehand repair` finishes or undoes what is pending",
                dir.display()
            )))
        }
        Err(e) if e.is_unopenable() => tracing::warn!(error = %e, "setting the journal aside"),
        Err(e) => return Err(e.into()),
    }
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let report = crate::journal::salvage::set_aside(&dir, &suffix.to_string())
        .map_err(io(format!("setting the journal {} aside", dir.display())))?;
    let fresh = Journal::open(&dir)?;
    fresh.raise_txn_counter(report.max_txn)?;
    Ok(report)
}

impl Installer {
    /// Opens `state_dir` (creating it), takes the lock, opens the journal,
    /// and recovers every unfinished transaction.
    pub fn open(state_dir: &Path, opts: &OpenOptions) -> Result<(Installer, Vec<RecoveryReport>)> {
        let lock = lock_state_dir(state_dir, opts)?;
        let journal = Journal::open(&state_dir.join("journal"))?;
        let inst = Installer { state_dir: state_dir.to_path_buf(), journal, _lock: lock };
        let reports = if opts.recover { exec::recover_all(&inst.journal)? } else { Vec::new() };
        if !opts.tolerate_refusal {
            if let Some(r) = reports.iter().find(|r| r.reason.is_some()) {
                return Err(Error::RecoveryRefused {
                    txn: r.txn,
                    package: r.package.clone(),
                    reason: r.reason.clone().unwrap_or_default(),
                });
            }
        }
        Ok((inst, reports))
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Unfinished transactions (empty after a successful open).
    pub fn pending(&self) -> Result<Vec<TxnRecord>> {
        Ok(self.journal.pending()?)
    }

    /// What recovery would do now, without doing it.
    pub fn preview_recovery(&self) -> Result<Vec<(TxnRecord, txn::RecoveryDecision)>> {
        exec::preview_all(&self.journal)
    }

    /// Installed packages.
    pub fn list(&self) -> Result<Vec<PackageRecord>> {
        Ok(self.journal.packages()?)
    }

    /// Finished transactions, oldest first.
    pub fn history(&self) -> Result<Vec<txn::HistoryEntry>> {
        Ok(self.journal.history()?)
    }

    /// The journal, for read-only inspection.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Re-hashes installed files against the registry.
    pub fn verify(&self, name: Option<&str>) -> Result<Vec<VerifyReport>> {
        let pkgs = match name {
            Some(n) => vec![self.journal.package(n)?.ok_or_else(|| Error::NotInstalled(n.to_string()))?],
            None => self.journal.packages()?,
        };
        let all = self.journal.packages()?;
        pkgs.iter()
            .map(|p| {
                let foreign: BTreeSet<String> = all
                    .iter()
                    .filter(|o| o.name != p.name)
                    .flat_map(|o| o.targets.iter().map(|t| t.path.clone()))
                    .collect();
                verify::verify_package(p, &foreign)
            })
            .collect()
    }

    /// Installs (or upgrades) a package in one transaction.
    pub fn install(&mut self, req: &InstallRequest) -> Result<TxnReport> {
        let source_ref = source::reference::parse(&req.source)?;
        self.check_signature_policy(&source_ref, req)?;
        let (artifact, blobs): (source::ResolvedArtifact, Box<dyn source::BlobSource>) = match &source_ref {
            SourceRef::Layout { path, selector } => {
                let layout = source::OciLayout::open(path)?;
                let platform = req.registry.platform.clone().unwrap_or_else(source::layout::host_platform);
                let artifact = layout.resolve_for_platform(selector, &req.source, &platform)?;
                if let Some(key) = &req.verify_key {
                    source::signature::verify_layout(&layout, &artifact.manifest_digest, &req.source, key)?;
                }
                (artifact, Box::new(layout))
            }
            // The whole pull (into the blob cache) happens here, before anything
            // is planned; staging then reads only from the cache.
            SourceRef::Registry { registry, repository, selector } => {
                let opts =
                    source::registry::RegistryOptions { verify_key: req.verify_key.clone(), ..req.registry.clone() };
                let pulled = source::registry::pull(
                    &self.state_dir,
                    registry,
                    repository,
                    selector,
                    &req.source,
                    &opts,
                    interrupt::requested,
                );
                match pulled {
                    Ok((artifact, cache)) => (artifact, Box::new(cache)),
                    Err(SourceError::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // A layout's blobs are imported into the cache (for a later offline
        // rollback) by `install_resolved`, once free space is checked.
        self.install_resolved(&source_ref, artifact, blobs, req)
    }

    /// Refuses early when a filesystem involved lacks the space this install
    /// needs: the blob cache's, for a layout's blobs copied into it (hard
    /// links on the same filesystem need none), and each target's.
    fn check_space(
        &self,
        layout: Option<&Path>,
        artifact: &source::ResolvedArtifact,
        planned: &[plan::PlannedTarget],
    ) -> Result<space::SpaceCheck> {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let layout = layout.map(source::OciLayout::open).transpose()?;
        let mut check = space::SpaceCheck::default();
        if let Some(l) = &layout {
            let (cache_dev, _) = fsops::free_space(cache.root()).map_err(io("checking the blob cache's free space"))?;
            let m = &artifact.manifest;
            for desc in std::iter::once(&m.config).chain(&m.layers) {
                let src = l.blob_path(&desc.digest)?;
                let same_fs = fsops::free_space(&src).is_ok_and(|(dev, _)| dev == cache_dev);
                if !same_fs && !cache.contains(desc)? {
                    check.add(cache.root(), desc.size, format!("a copy of blob {} in the blob cache", desc.digest))?;
                }
            }
        }
        let blob_file = |d: &source::Descriptor| -> Option<PathBuf> {
            let p = match &layout {
                Some(l) => l.blob_path(&d.digest).ok()?,
                None => cache.blob_path(&d.digest).ok()?,
            };
            p.is_file().then_some(p)
        };
        space::add_targets(&mut check, planned, &blob_file)?;
        check.check()?;
        Ok(check)
    }

    /// `--require-signature` (or the state dir's default) without a key is
    /// an error; an install without a key over a package whose installed
    /// version was signature-checked warns that the check is being dropped.
    /// Runs before anything is fetched.
    fn check_signature_policy(&self, source_ref: &SourceRef, req: &InstallRequest) -> Result<()> {
        if req.verify_key.is_some() {
            return Ok(());
        }
        let name = req.name.clone().unwrap_or_else(|| source_ref.default_name());
        let signed_by = self.journal.package(&name)?.and_then(|p| p.signed_by);
        let default_file = self.state_dir.join(REQUIRE_SIGNATURE_FILE);
        let required = req.require_signature || default_file.exists();
        if required {
            let why = if req.require_signature {
                "--require-signature is set".to_string()
            } else {
                format!("{} exists, so every install must be signature-checked", default_file.display())
            };
            let was =
                signed_by.map(|fp| format!(" (its installed version was signed by key {fp})")).unwrap_or_default();
            return Err(Error::Refused(format!(
                "{why}: pass --verify-key PATH (the signer's cosign.pub) to install {name:?}{was}. Nothing was changed"
            )));
        }
        if let Some(fp) = signed_by {
            tracing::warn!(
                "{name:?} was installed with a cosign signature verified by key {fp}; this install checks no signature, so signature verification is being dropped. Pass --verify-key PATH to keep it, or --require-signature to make this an error"
            );
        }
        Ok(())
    }

    /// Installs an artifact whose manifest is resolved and whose blobs are
    /// at hand (a layout, the cache after a pull, or the cache for a rollback).
    fn install_resolved(
        &mut self,
        source_ref: &SourceRef,
        artifact: source::ResolvedArtifact,
        blobs: Box<dyn source::BlobSource>,
        req: &InstallRequest,
    ) -> Result<TxnReport> {
        let name = req.name.clone().unwrap_or_else(|| source_ref.default_name());
        if !plan::is_plain_file_name(&name) || name.starts_with('.') {
            return Err(Error::Refused(format!(
                "{name:?} is not a valid package name (use letters, digits, '.', '_', '-')"
            )));
        }
        let mut placement_record = PlacementRecord::default();
        let planned = match &req.profile {
            Some(p) => {
                placement_record.profile = Some(p.profile.name().to_string());
                placement_record.install_dir = Some(path_str(&resolve_destination(&p.install_dir)?)?);
                placement_record.db_version = p.db_version.clone();
                plan_profile(p, &artifact.manifest, source_ref)?
            }
            None => {
                let mut placement = req.placement.clone();
                if let Some(to) = &placement.to {
                    let to = resolve_destination(to)?;
                    placement_record.to = Some(path_str(&to)?);
                    placement.to = Some(to);
                }
                for m in placement.maps.iter_mut() {
                    m.dir = resolve_destination(&m.dir)?;
                    placement_record.maps.push(format!("{}={}", m.glob, path_str(&m.dir)?));
                }
                plan::place(&artifact.manifest, &placement)?
            }
        };
        placement_record.platform = req.registry.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture));
        let old_pkg = self.journal.package(&name)?;
        let others: Vec<PackageRecord> = self.journal.packages()?.into_iter().filter(|p| p.name != name).collect();

        let id = self.journal.new_txn_id()?;
        let mut targets = Vec::new();
        let mut created = BTreeSet::new();
        let old_paths: BTreeSet<String> =
            old_pkg.iter().flat_map(|p| p.targets.iter().map(|t| t.path.clone())).collect();
        let mut carry = Vec::new();
        for pt in &planned {
            let path = path_str(&pt.path)?;
            let kind = match pt.content {
                PlannedContent::Dir(_) => EntryKind::Dir,
                PlannedContent::File(..) => EntryKind::File,
            };
            carry.push(check_ownership(&others, &path, kind)?);
            let old = old_identity(&pt.path)?;
            if let Some(o) = old {
                if o.kind == EntryKind::Symlink {
                    return Err(Error::Refused(format!(
                        "{path} is a symlink; stagehand replaces real files and directories only"
                    )));
                }
                if !old_paths.contains(&path) && !req.adopt && !is_empty_dir(&pt.path) {
                    return Err(Error::Refused(format!(
                        "{path} already exists and no package owns it; pass --adopt to replace it (its current contents become the old version that a failed install rolls back to)"
                    )));
                }
                if o.kind != kind && !(req.adopt || old_paths.contains(&path)) {
                    return Err(Error::Refused(format!("{path} exists but is not a {kind:?}")));
                }
            }
            let parent = pt.path.parent().ok_or_else(|| Error::Refused(format!("{path} has no parent")))?;
            let mut missing = Vec::new();
            let mut p = parent;
            while !p.exists() {
                missing.push(path_str(p)?);
                match p.parent() {
                    Some(pp) => p = pp,
                    None => break,
                }
            }
            created.extend(missing);
            targets.push(TargetPlan {
                staging: path_str(
                    &txn::staging_path(&pt.path, id).ok_or_else(|| Error::Refused(format!("{path}: bad name")))?,
                )?,
                backup: path_str(
                    &txn::backup_path(&pt.path, id).ok_or_else(|| Error::Refused(format!("{path}: bad name")))?,
                )?,
                path,
                old,
                new: Some(NewContent { kind, identity: None }),
                progress: TargetProgress::Pending,
            });
        }
        // Targets of the old version that the new one no longer has are removed:
        // only if no other package has files inside them, and never one that
        // nests with a new target (its swap would act on paths the other's
        // swap already moved).
        for old_t in old_pkg.iter().flat_map(|p| &p.targets) {
            if targets.iter().any(|t| t.path == old_t.path) {
                continue;
            }
            check_removal(&others, &old_t.path, &name)?;
            if let Some(t) = targets.iter().find(|t| nests(&t.path, &old_t.path)) {
                return Err(Error::Refused(format!(
                    "the new version of {name:?} installs {}, which nests with {} of the installed version, \
                     which this upgrade would remove; nothing was changed: uninstall it first \
                     (`stagehand uninstall {name}`), then install the new version",
                    t.path, old_t.path
                )));
            }
            targets.push(removal_target(&old_t.path, id)?);
        }
        let layout_path = match source_ref {
            SourceRef::Layout { path, .. } if !req.rollback => Some(path.clone()),
            _ => None,
        };
        let space = self.check_space(layout_path.as_deref(), &artifact, &planned)?;
        if let Some(path) = &layout_path {
            // Keep the version's blobs in the cache, so a later rollback is offline.
            import_layout_blobs(&self.state_dir, path, &artifact)?;
        }
        // What staging may write per filesystem, now that the cache took its share.
        let budget = space.budget()?;
        let mut created_dirs: Vec<String> = created.into_iter().collect();
        created_dirs.sort_by_key(|d| d.len());
        let mut rec = TxnRecord {
            id,
            op: if req.rollback { Op::Rollback } else { Op::Install },
            package: name.clone(),
            step: Step::Planned,
            started_at: now(),
            recovered: false,
            old_digest: old_pkg.as_ref().map(|p| p.manifest_digest.clone()),
            new_package: None,
            targets,
            created_dirs,
        };
        self.journal.write_txn(&rec, "planned")?;
        tracing::debug!(txn = id, targets = rec.targets.len(), "planned");

        // Everything from here until the commit point rolls back on error.
        // The versions to keep for rollback: the one replaced, then older ones.
        let previous: Vec<VersionRecord> = old_pkg
            .iter()
            .flat_map(|p| {
                let replaced = VersionRecord {
                    manifest_digest: p.manifest_digest.clone(),
                    source: p.source.clone(),
                    installed_at: p.installed_at,
                    placement: p.placement.clone(),
                };
                std::iter::once(replaced).chain(p.previous.iter().cloned())
            })
            .filter(|v| v.manifest_digest != artifact.manifest_digest)
            .take(keep_versions(req.keep_versions) - 1)
            .collect();
        let template = PackageRecord {
            name: name.clone(),
            manifest_digest: artifact.manifest_digest.clone(),
            source: req.source.clone(),
            installed_at: 0,
            txn: id,
            targets: Vec::new(),
            placement: placement_record,
            previous,
            signed_by: req.verify_key.as_ref().map(|k| k.fingerprint().to_string()),
        };
        let total: u64 = planned
            .iter()
            .map(|pt| match &pt.content {
                PlannedContent::Dir(layers) => layers.iter().map(|(d, _)| d.size).sum(),
                PlannedContent::File(d, _) => d.size,
            })
            .sum();
        let shown = progress::Progress::new(blobs.as_ref(), total, req.registry.progress);
        let staged = self.stage_all(&mut rec, &planned, &carry, &shown, template, (req.limits, &budget));
        shown.finish();
        if let Err(e) = staged {
            return Err(self.roll_back(rec, e));
        }
        self.journal.write_txn(&rec, "staged").map_err(|e| self.roll_back(rec.clone(), e.into()))?;
        // The last boundary before the commit point: a Ctrl-C here still rolls back.
        if interrupt::requested() {
            return Err(self.roll_back(rec, Error::Interrupted));
        }
        tracing::debug!(txn = id, "staged");
        rec.step = Step::Committed;
        if let Err(e) = self.journal.write_txn(&rec, "commit") {
            return Err(self.commit_failed(rec, e));
        }
        let report = self.finish_committed(rec)?;
        self.prune_quietly();
        Ok(report)
    }

    fn stage_all(
        &mut self,
        rec: &mut TxnRecord,
        planned: &[plan::PlannedTarget],
        carry: &[Vec<stage::Carried>],
        blobs: &dyn source::BlobSource,
        template: PackageRecord,
        (limits, budget): (plan::limits::Limits, &space::Budget),
    ) -> Result<()> {
        for d in &rec.created_dirs {
            fsops::create_dir_all_durable(Path::new(d), 0o755 & !fsops::umask(), "parent")
                .map_err(io(format!("creating {d}")))?;
        }
        let mut installed = Vec::new();
        for (i, pt) in planned.iter().enumerate() {
            if interrupt::requested() {
                return Err(Error::Interrupted);
            }
            let t = &mut rec.targets[i];
            debug_assert_eq!(Path::new(&t.path), pt.path.as_path());
            let staging = PathBuf::from(&t.staging);
            let meter = budget.meter(&pt.path)?;
            let staged = match &pt.content {
                PlannedContent::Dir(layers) => stage::stage_dir(&staging, layers, &carry[i], blobs, limits, &meter)?,
                PlannedContent::File(desc, bytes) => stage::stage_file(&staging, desc, *bytes, blobs, limits, &meter)?,
            };
            let kind = if matches!(pt.content, PlannedContent::Dir(_)) { EntryKind::Dir } else { EntryKind::File };
            let mut identity = staged.identity;
            if kind == EntryKind::File {
                identity.sha256 = staged.entries.first().map(|e| exec::digest_bytes(&e.sha256));
            }
            t.new = Some(NewContent { kind, identity: Some(identity) });
            installed.push(InstalledTarget { path: t.path.clone(), kind, entries: staged.entries });
        }
        let staged_paths: Vec<PathBuf> =
            rec.targets.iter().filter(|t| t.new.is_some()).map(|t| PathBuf::from(&t.staging)).collect();
        tracing::debug!(txn = rec.id, "written; making durable");
        stage::make_durable(&staged_paths)?;
        rec.step = Step::Staged;
        rec.new_package = Some(PackageRecord { installed_at: now(), txn: rec.id, targets: installed, ..template });
        Ok(())
    }

    /// The commit record could not be written (it may or may not be on
    /// disk). No target has moved yet, so rolling back is right either way:
    /// if the record did land, the rollback record written now supersedes it,
    /// and if even that fails, recovery finds the old content at every target.
    fn commit_failed(&self, mut rec: TxnRecord, e: JournalError) -> Error {
        rec.step = Step::Staged;
        self.roll_back(rec, e.into())
    }

    /// Rolls back a live transaction that failed before its commit point.
    fn roll_back(&self, mut rec: TxnRecord, cause: Error) -> Error {
        debug_assert!(!rec.step.is_committed(), "live rollback only before the commit point");
        let msg = cause.to_string();
        match exec::drive(&self.journal, &mut rec, false, Some(msg)) {
            Ok(_) => Error::RolledBack { cause: Box::new(cause) },
            Err(e) => Error::Refused(format!(
                "{cause}\nRolling back also failed ({e}); the next stagehand command (or `stagehand repair`) finishes the rollback."
            )),
        }
    }

    /// After the commit point: finish, retrying once through recovery.
    fn finish_committed(&self, mut rec: TxnRecord) -> Result<TxnReport> {
        let report = TxnReport {
            txn: rec.id,
            name: rec.package.clone(),
            op: match rec.op {
                Op::Install if rec.old_digest.is_some() => "upgrade".into(),
                Op::Install => "install".into(),
                Op::Uninstall => "uninstall".into(),
                Op::Rollback => "rollback".into(),
            },
            old_digest: rec.old_digest.clone(),
            new_digest: rec.new_package.as_ref().map(|p| p.manifest_digest.clone()),
            targets: rec.targets.iter().filter(|t| t.new.is_some()).map(|t| t.path.clone()).collect(),
            interrupted: false,
        };
        let done = |mut r: TxnReport| {
            r.interrupted = interrupt::requested();
            Ok(r)
        };
        let first = match exec::drive(&self.journal, &mut rec, false, None) {
            Ok(Outcome::Done | Outcome::RolledForwardByRecovery) => return done(report),
            Ok(_) => {
                return Err(Error::Refused(
                    "the transaction was rolled back after its commit point because its new content was lost".into(),
                ))
            }
            Err(e @ Error::RecoveryRefused { .. }) => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(error = %first, "finishing the committed transaction failed; retrying once");
        // Re-read the record: the journal has the truth of how far it got.
        let again = self.journal.pending()?.into_iter().find(|r| r.id == rec.id);
        match again {
            None => done(report),
            Some(mut r) => match exec::drive(&self.journal, &mut r, false, None) {
                Ok(Outcome::Done | Outcome::RolledForwardByRecovery) => done(report),
                Ok(_) => Err(Error::Refused("the transaction was rolled back after its commit point".into())),
                Err(_) => Err(Error::LeftForRecovery { cause: Box::new(first) }),
            },
        }
    }

    /// The blob cache's contents, each blob with the installed packages and
    /// pending transactions that reference it.
    pub fn cache_list(&self) -> Result<CacheListing> {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let contents = cache.list()?;
        let users = self.cache_users(&cache)?;
        let blobs = contents
            .blobs
            .into_iter()
            .map(|b| CacheEntry { used_by: users.get(&b.digest).cloned().unwrap_or_default(), blob: b })
            .collect::<Vec<_>>();
        let total_bytes =
            blobs.iter().map(|b| b.blob.size).sum::<u64>() + contents.partials.iter().map(|p| p.size).sum::<u64>();
        Ok(CacheListing { dir: cache.root().display().to_string(), blobs, partials: contents.partials, total_bytes })
    }

    /// Removes every cached blob that no installed package and no pending
    /// transaction references, and every partial download.
    pub fn cache_prune(&self, dry_run: bool) -> Result<source::cache::PruneReport> {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let keep: BTreeSet<String> = self.cache_users(&cache)?.into_keys().collect();
        Ok(cache.prune(&keep, dry_run)?)
    }

    /// After a successful transaction: drop cached blobs no installed or kept
    /// version needs. A failure here is only worth a warning: the
    /// transaction is done, and the next prune tries again.
    fn prune_quietly(&self) {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        if !cache.root().exists() {
            return;
        }
        let keep = match self.cache_users(&cache) {
            Ok(users) => users.into_keys().collect::<BTreeSet<String>>(),
            Err(e) => {
                tracing::warn!(error = %e, "not pruning the blob cache");
                return;
            }
        };
        if let Err(e) = cache.prune_blobs(&keep) {
            tracing::warn!(error = %e, "pruning the blob cache failed");
        }
    }

    /// Digest → who needs it ("package NAME", "txn ID"): each installed
    /// package's manifest and, read from the cached manifest, its config and
    /// layers; the same for the old and new versions of pending transactions.
    fn cache_users(&self, cache: &source::cache::BlobCache) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let mut roots: Vec<(String, String)> = Vec::new();
        for p in self.journal.packages()? {
            roots.push((p.manifest_digest.clone(), format!("package {}", p.name)));
            for v in &p.previous {
                roots.push((v.manifest_digest.clone(), format!("package {} (kept for rollback)", p.name)));
            }
        }
        for r in self.journal.pending()? {
            let who = format!("txn {} ({})", r.id, r.package);
            if let Some(d) = &r.old_digest {
                roots.push((d.clone(), who.clone()));
            }
            if let Some(p) = &r.new_package {
                roots.push((p.manifest_digest.clone(), who));
            }
        }
        let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (digest, who) in roots {
            for d in cache.closure_of([digest.as_str()])? {
                let list = users.entry(d).or_default();
                if !list.contains(&who) {
                    list.push(who.clone());
                }
            }
        }
        Ok(users)
    }

    /// Switches a package back to an earlier version — the one it replaced,
    /// or `to` (a manifest digest among its kept versions) — as one
    /// transaction, reading only from the blob cache (offline).
    pub fn rollback(&mut self, name: &str, to: Option<&str>, keep: usize) -> Result<TxnReport> {
        let pkg = self.journal.package(name)?.ok_or_else(|| Error::NotInstalled(name.to_string()))?;
        let version = match to {
            None => pkg.previous.first().cloned().ok_or_else(|| {
                Error::Refused(format!(
                    "{name} has no earlier version to roll back to (only {} is known)",
                    pkg.manifest_digest
                ))
            })?,
            Some(d) if d == pkg.manifest_digest => {
                return Err(Error::Refused(format!("{name} is already at {d}")));
            }
            Some(d) => pkg.previous.iter().find(|v| v.manifest_digest == d).cloned().ok_or_else(|| {
                let known: Vec<&str> = pkg.previous.iter().map(|v| v.manifest_digest.as_str()).collect();
                Error::Refused(format!(
                    "{d} is not a kept version of {name}; kept: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
            })?,
        };
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let pruned = || {
            Error::Refused(format!(
                "the blobs of {name} {} are no longer in the cache (pruned); reinstall it from its source: stagehand install {} ... Nothing was changed",
                version.manifest_digest, version.source
            ))
        };
        let manifest = cache.read_manifest(&version.manifest_digest)?.ok_or_else(pruned)?;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !cache.contains(desc)? {
                return Err(pruned());
            }
        }
        let artifact = source::ResolvedArtifact {
            display: version.source.clone(),
            manifest_digest: version.manifest_digest.clone(),
            manifest,
        };
        let p = &version.placement;
        let profile = match &p.profile {
            None => None,
            Some(prof) => Some(ProfileRequest {
                profile: plan::profile::Profile::parse(prof)?,
                install_dir: PathBuf::from(p.install_dir.clone().unwrap_or_default()),
                db_version: p.db_version.clone(),
                platform: None,
            }),
        };
        let mut registry = source::registry::RegistryOptions::default();
        if let Some((os, arch)) = p.platform.as_deref().and_then(|s| s.split_once('/')) {
            registry.platform = Some(source::Platform { os: os.into(), architecture: arch.into(), variant: None });
        }
        let req = InstallRequest {
            source: version.source.clone(),
            placement: Placement {
                to: p.to.as_ref().map(PathBuf::from),
                maps: p.maps.iter().map(|m| plan::MapRule::parse(m)).collect::<std::result::Result<_, _>>()?,
            },
            name: Some(name.to_string()),
            adopt: false,
            profile: profile.map(|mut pr| {
                pr.platform = registry.platform.as_ref().map(|pl| (pl.os.clone(), pl.architecture.clone()));
                pr
            }),
            registry,
            keep_versions: keep,
            rollback: true,
            // Rollback reinstalls a kept version from the blob cache; its
            // signature is not checked again, and the record says so.
            verify_key: None,
            require_signature: false,
            limits: plan::limits::Limits::default(),
        };
        let source_ref = source::reference::parse(&version.source)?;
        self.install_resolved(&source_ref, artifact, Box::new(cache), &req)
    }

    /// Removes a package's targets in one transaction.
    pub fn uninstall(&mut self, name: &str) -> Result<TxnReport> {
        let pkg = self.journal.package(name)?.ok_or_else(|| Error::NotInstalled(name.to_string()))?;
        let others: Vec<PackageRecord> = self.journal.packages()?.into_iter().filter(|p| p.name != name).collect();
        for mine in &pkg.targets {
            check_removal(&others, &mine.path, name)?;
        }
        let id = self.journal.new_txn_id()?;
        let targets = pkg.targets.iter().map(|t| removal_target(&t.path, id)).collect::<Result<Vec<_>>>()?;
        let mut rec = TxnRecord {
            id,
            op: Op::Uninstall,
            package: name.to_string(),
            step: Step::Planned,
            started_at: now(),
            recovered: false,
            old_digest: Some(pkg.manifest_digest.clone()),
            new_package: None,
            targets,
            created_dirs: Vec::new(),
        };
        self.journal.write_txn(&rec, "planned")?;
        rec.step = Step::Committed;
        if let Err(e) = self.journal.write_txn(&rec, "commit") {
            return Err(self.commit_failed(rec, e));
        }
        let mut report = self.finish_committed(rec)?;
        self.prune_quietly();
        report.targets = pkg.targets.iter().map(|t| t.path.clone()).collect();
        Ok(report)
    }
}

/// What is at a target when a txn is planned: its identity, with the
/// sha256 of a regular file so recovery can recognise it by content.
/// A directory with a filesystem mounted inside it is refused: the
/// transaction would move the mount aside with the old version, and its
/// files with it.
fn old_identity(p: &Path) -> Result<Option<txn::Identity>> {
    let mut old = fsops::identity(p).map_err(io(format!("observing {}", p.display())))?;
    if old.is_some_and(|o| o.kind == EntryKind::Dir) {
        if let Some(m) = mounts_at_or_under(p).into_iter().next() {
            return Err(Error::Refused(format!(
                "{m} is a mount point inside {}: replacing or removing {} would move the mounted filesystem \
                 aside with the old version; nothing was changed: unmount it first (`umount {m}`)",
                p.display(),
                p.display()
            )));
        }
    }
    if let Some(o) = old.as_mut().filter(|o| o.kind == EntryKind::File) {
        let (_, hex) = fsops::sha256_file(p).map_err(io(format!("hashing {}", p.display())))?;
        o.sha256 = Some(exec::digest_bytes(&hex));
    }
    Ok(old)
}

fn removal_target(path: &str, id: TxnId) -> Result<TargetPlan> {
    let p = Path::new(path);
    let old = old_identity(p)?;
    Ok(TargetPlan {
        path: path.to_string(),
        staging: path_str(&txn::staging_path(p, id).ok_or_else(|| Error::Refused(format!("{path}: bad name")))?)?,
        backup: path_str(&txn::backup_path(p, id).ok_or_else(|| Error::Refused(format!("{path}: bad name")))?)?,
        old,
        new: None,
        progress: TargetProgress::Pending,
    })
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false)
}

/// Plans a Steampipe profile install.
fn plan_profile(
    p: &ProfileRequest,
    manifest: &source::manifest::ImageManifest,
    source_ref: &SourceRef,
) -> Result<Vec<plan::PlannedTarget>> {
    use plan::profile::{place_profile, Profile, ProfileContext};
    let install_dir = resolve_destination(&p.install_dir)?;
    let (os, arch) = p.platform.clone().unwrap_or_else(|| {
        let h = source::layout::host_platform();
        (h.os, h.architecture)
    });
    let mut db_version = p.db_version.clone();
    if db_version.is_none() && p.profile == Profile::SteampipeFdw {
        // The FDW goes into the one installed database, if there is exactly one.
        let versions: Vec<String> = std::fs::read_dir(install_dir.join("db"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("postgres").is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match versions.as_slice() {
            [one] => db_version = Some(one.clone()),
            [] => {
                return Err(Error::Refused(format!(
                    "no database is installed under {}/db; install one with --profile steampipe-db first, or pass --db-version",
                    install_dir.display()
                )))
            }
            many => {
                return Err(Error::Refused(format!(
                    "several databases are installed ({}); pass --db-version",
                    many.join(", ")
                )))
            }
        }
    }
    let ctx = ProfileContext { install_dir, plugin_path: plugin_path(source_ref), db_version, os, arch };
    Ok(place_profile(manifest, p.profile, &ctx)?)
}

/// Where a plugin lives under `plugins/`: `<registry>/<repository>@<tag>`
/// (Steampipe's layout); an OCI layout counts as registry `local`.
fn plugin_path(source_ref: &SourceRef) -> String {
    match source_ref {
        SourceRef::Layout { selector, .. } => {
            let tag = match selector {
                source::Selector::Tag(t) => t.clone(),
                _ => "latest".to_string(),
            };
            format!("local/{}@{tag}", source_ref.default_name())
        }
        SourceRef::Registry { registry, repository, selector } => {
            let tag = match selector {
                source::Selector::Tag(t) => t.clone(),
                _ => "latest".to_string(),
            };
            format!("{registry}/{repository}@{tag}")
        }
    }
}
