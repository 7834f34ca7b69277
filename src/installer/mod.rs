//! The public library API: open a state dir (recovering first), install,
//! uninstall, list, status, verify.
//!
//! This module owns the order of a transaction — plan, journal, stage,
//! commit, swap, clean — and the checks that come before it (ownership,
//! adoption, containment). It performs filesystem work only through `fsops`
//! and journal work only through `journal`; every decision about recovery
//! comes from `txn`.

pub mod abspath;
mod adopt;
mod apply;
mod cacheuse;
mod checks;
mod digest_prefix;
pub mod exec;
pub mod hints;
pub mod interrupt;
mod local_files;
pub mod lock;
mod planner;
pub mod progress;
mod resolve;
mod run;
mod sigpolicy;
pub mod space;
pub mod stage;
pub mod statedir;
pub mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::journal::{Journal, JournalError};
use crate::plan::tar_guard::Refused;
use crate::plan::{self, Placement, PlanError};
use crate::source::{self, SourceError};
use crate::txn::{self, Op, PackageRecord, TxnId, TxnRecord};
pub use apply::{
    desired, lockfile, outdated, pins, ApplyOptions, ApplyReport, Confirm, KeptPackage, PlannedChange, UpdateReport,
};
use planner::ChangeRequest;
pub use resolve::resolve_destination;

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
    /// The command line does not say enough (exit 2, like clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    #[error("no package named {0:?} is installed; `stagehand list` shows what is")]
    NotInstalled(String),
    #[error("recovery cannot decide what to do with transaction {txn} (package {package:?}): {reason}. Nothing was changed; inspect the paths named, put the old or new content back by hand, then run `stagehand repair`")]
    RecoveryRefused { txn: TxnId, package: String, reason: String },
    /// `fresh`: no target held anything before (a first install), so
    /// nothing was installed rather than "the old version" kept.
    #[error("{}", hints::rolled_back(cause, *fresh))]
    RolledBack { cause: Box<Error>, fresh: bool },
    #[error("interrupted")]
    Interrupted,
    /// An apply's error, with the desired-state file, lines and packages
    /// it concerns (`FILE:LINE: package "x": …`); exit code of the cause.
    #[error("{place}: {cause}")]
    InFile { place: String, cause: Box<Error> },
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
            // sled's own lock held by a straggler: not damage.
            Error::Journal(j) if j.is_locked() => 4,
            Error::RecoveryRefused { .. } => 5,
            Error::Journal(j) if j.is_unopenable() => EXIT_JOURNAL_UNOPENABLE,
            Error::Interrupted => interrupt::EXIT_INTERRUPTED,
            // Malformed arguments are usage errors, like clap's own.
            Error::Source(SourceError::BadReference { .. })
            | Error::Plan(PlanError::BadMap { .. })
            | Error::Usage(_) => 2,
            Error::InFile { cause, .. } => cause.exit_code(),
            Error::RolledBack { cause, .. } | Error::LeftForRecovery { cause } => match cause.exit_code() {
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
    /// Wait, whatever `lock_timeout`, while the holder is only finishing a
    /// cleanup a command left behind (writers; readers read a copy instead).
    pub wait_for_cleanup: bool,
    /// Called once, with who holds it, when the lock is busy and we wait.
    pub on_lock_wait: Option<Box<dyn Fn(lock::Holder)>>,
    /// Open even if recovery refuses a transaction (read-only commands, so
    /// the user can inspect it); the refusal is in the returned reports.
    pub tolerate_refusal: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            lock_timeout: Duration::ZERO,
            recover: true,
            wait_for_cleanup: true,
            on_lock_wait: None,
            tolerate_refusal: false,
        }
    }
}

/// An install request.
#[derive(Debug, Clone, Default)]
pub struct InstallRequest {
    /// `oci-layout:PATH[:TAG|@DIGEST]` or `[REGISTRY/]REPO:TAG|@DIGEST`.
    pub source: String,
    pub placement: Placement,
    pub name: Option<String>,
    /// Take over an existing, unowned destination; what it holds is kept as
    /// an earlier version of the package, which `rollback` restores.
    pub adopt: bool,
    /// `--move`: the placement may differ from the installed version's, and
    /// the package moves. Without it an install of an installed package
    /// keeps its recorded placement (used when `placement` and `profile`
    /// are empty) and a different one is refused by the planner.
    pub move_placement: bool,
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

/// `rollback`'s signature flags: the policy a kept version must meet, by
/// what the history recorded when it was installed (`sigpolicy`).
#[derive(Debug, Clone, Default)]
pub struct SignatureFlags {
    /// `--verify-key`: reinstall only a version whose signature by this key
    /// was verified when it was installed.
    pub verify_key: Option<source::signature::VerifyKey>,
    /// `--require-signature` (the default when `STATE/require-signature` exists).
    pub require_signature: bool,
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
    /// The package now lives elsewhere than before: its placement changed
    /// (`install --move`, or a rollback to a version placed elsewhere).
    pub moved: bool,
    /// With `moved`: the paths it held before and no longer does (removed).
    pub moved_from: Vec<String>,
    /// A Ctrl-C/SIGTERM arrived after the commit point; the txn was finished anyway.
    pub interrupted: bool,
}

/// A finished transaction whose cleanup is still to run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingCleanup {
    pub txn: u64,
    /// The packages it changed, comma-separated.
    pub package: String,
    /// Its staging and backup paths that exist now.
    pub paths: Vec<String>,
}

/// An open state dir: the lock is held and recovery has run.
pub struct Installer {
    state_dir: PathBuf,
    journal: Journal,
    /// Held for the life of a writer; `None` for a read view.
    _lock: Option<lock::StateLock>,
    /// A read view's scratch copy of the journal (dropped after `journal`).
    _read_copy: Option<crate::journal::readcopy::ReadCopy>,
    /// A read view ([`Installer::open_read_view`]): another process holds
    /// the state dir (its pid, if it wrote one); a transaction is in progress.
    writer: Option<Option<u32>>,
    /// `--discard-local-files`: let a transaction delete entries a user put
    /// inside a directory target it replaces or removes.
    discard_local_files: bool,
    /// Leave the cleanup of a finished transaction (removing what it
    /// replaced) to the caller ([`Installer::finish_cleanups`]) instead of
    /// running it before the transaction's call returns.
    cleanup_later: bool,
    /// With `cleanup_later`: layouts (and the manifest digest installed from
    /// each) whose blobs the caller keeps in the cache after reporting.
    layouts_later: std::sync::Mutex<Vec<(PathBuf, String)>>,
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

fn lock_state_dir(state_dir: &Path, opts: &OpenOptions) -> Result<lock::StateLock> {
    statedir::prepare(state_dir)?;
    let lock_path = state_dir.join("lock");
    lock::acquire(&lock_path, opts.lock_timeout, opts.wait_for_cleanup, opts.on_lock_wait.as_deref())
        .map_err(|e| lock_error(state_dir, &lock_path, e))
}

/// Takes over the state-dir lock that inherited descriptor `fd` holds
/// ([`lock::adopt`]), for [`Installer::open_locked`].
pub fn adopt_lock(state_dir: &Path, fd: i32) -> Result<lock::StateLock> {
    let lock_path = state_dir.join("lock");
    lock::adopt(fd, &lock_path).map_err(|e| lock_error(state_dir, &lock_path, e))
}

fn lock_error(state_dir: &Path, lock_path: &Path, e: lock::LockError) -> Error {
    match e {
        lock::LockError::Held { pid } => Error::Locked { path: state_dir.display().to_string(), pid },
        lock::LockError::Io(e) => Error::Io { context: format!("locking {}", lock_path.display()), source: e },
    }
}

/// `repair --set-aside-journal`: under the lock, and only if the journal
/// cannot be opened (proven on a copy: the journal itself is never opened),
/// renames it and its seal to `*.damaged-<unix time>` (deleting nothing),
/// reports the `.stagehand-` paths of the old journal that exist on disk
/// (found before anything opened sled, and without needing the journal's
/// bytes: see `journal::salvage::survey`), left for the user to inspect,
/// and opens a fresh journal whose transaction counter starts past every id
/// those names carry.
pub fn set_aside_journal(state_dir: &Path, opts: &OpenOptions) -> Result<crate::journal::salvage::SetAside> {
    let _lock = lock_state_dir(state_dir, opts)?;
    let dir = state_dir.join("journal");
    Journal::wait_for_sled_lock(&dir)?;
    let survey = crate::journal::salvage::survey(&dir)
        .map_err(io(format!("scanning the journal {} and the places it names", dir.display())))?;
    match Journal::probe(&dir) {
        Ok(()) => {
            return Err(Error::Refused(format!(
                "the journal at {} opens; there is nothing to set aside. Nothing was changed; `stagehand repair` finishes or undoes what is pending",
                dir.display()
            )))
        }
        Err(e) if e.is_unopenable() => tracing::warn!(error = %e, "setting the journal aside"),
        Err(e) => return Err(e.into()),
    }
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let report = crate::journal::salvage::set_aside(&dir, &suffix.to_string(), &survey)
        .map_err(io(format!("setting the journal {} aside", dir.display())))?;
    let fresh = Journal::open(&dir)?;
    fresh.raise_txn_counter(report.max_txn)?;
    Ok(report)
}

/// The kept versions of `pkg`, for messages.
fn kept_list(pkg: &PackageRecord) -> String {
    let known: Vec<&str> = pkg.previous.iter().map(|v| v.manifest_digest.as_str()).collect();
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

/// The full digest, among `pkg`'s installed and kept versions, that
/// `given` (a whole digest or a unique prefix) names.
fn kept_digest(name: &str, pkg: &PackageRecord, given: &str) -> Result<String> {
    use digest_prefix::PrefixError;
    let mut candidates = vec![pkg.manifest_digest.as_str()];
    candidates.extend(pkg.previous.iter().map(|v| v.manifest_digest.as_str()));
    match digest_prefix::pick(given, &candidates) {
        Ok(d) => Ok(d.to_string()),
        Err(PrefixError::Malformed) => Err(Error::Usage(format!(
            "--to {given:?} is not a digest: give sha256:HEX, or at least {} of its hex digits (see `stagehand \
             history {name}`)",
            digest_prefix::MIN_PREFIX_HEX
        ))),
        Err(PrefixError::Unknown) => Err(Error::Refused(format!(
            "{given} is not a kept version of {name}; kept: {} (installed: {}). Nothing was changed",
            kept_list(pkg),
            pkg.manifest_digest
        ))),
        Err(PrefixError::Ambiguous(all)) => Err(Error::Refused(format!(
            "{given} names more than one version of {name}: {}; give more digits. Nothing was changed",
            all.join(", ")
        ))),
    }
}

impl Installer {
    /// Opens `state_dir` (creating it), takes the lock, opens the journal,
    /// and recovers every unfinished transaction.
    pub fn open(state_dir: &Path, opts: &OpenOptions) -> Result<(Installer, Vec<RecoveryReport>)> {
        let lock = lock_state_dir(state_dir, opts)?;
        Self::open_locked(state_dir, lock, opts)
    }

    /// As [`Installer::open`], with the lock already held (handed over by
    /// the command that started this process: [`lock::adopt`]).
    pub fn open_locked(
        state_dir: &Path,
        lock: lock::StateLock,
        opts: &OpenOptions,
    ) -> Result<(Installer, Vec<RecoveryReport>)> {
        let journal = Journal::open(&state_dir.join("journal"))?;
        let inst = Installer {
            state_dir: state_dir.to_path_buf(),
            journal,
            _lock: Some(lock),
            _read_copy: None,
            writer: None,
            discard_local_files: false,
            cleanup_later: false,
            layouts_later: Default::default(),
        };
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

    /// A read-only view of a state dir another process holds (`pid`, if
    /// known): the journal as of one instant, read from a copy
    /// (`journal::readcopy`); no lock, no recovery, nothing written to
    /// the state dir. For `list`, `status`, `history`, `verify`, `journal`.
    pub fn open_read_view(state_dir: &Path, pid: Option<u32>) -> Result<Installer> {
        statedir::check_for_reading(state_dir)?;
        let (journal, copy) = crate::journal::readcopy::open(&state_dir.join("journal"))?;
        Ok(Installer {
            state_dir: state_dir.to_path_buf(),
            journal,
            _lock: None,
            _read_copy: Some(copy),
            writer: Some(pid),
            discard_local_files: false,
            cleanup_later: false,
            layouts_later: Default::default(),
        })
    }

    /// For a read view: another process holds the state dir (its pid, if
    /// known), so a transaction may be in progress.
    pub fn in_progress(&self) -> Option<Option<u32>> {
        self.writer
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `--discard-local-files`: from now on, a transaction that replaces or
    /// removes a directory target may delete what a user put inside it.
    /// Off by default: such a transaction is refused, naming the entries.
    pub fn set_discard_local_files(&mut self, discard: bool) {
        self.discard_local_files = discard;
    }

    /// Leave what a transaction replaced on disk when its call returns, for
    /// [`Installer::finish_cleanups`] (or the next recovery) to remove: the
    /// command line reports success first. Off by default.
    pub fn set_cleanup_later(&mut self, later: bool) {
        self.cleanup_later = later;
    }

    /// Finished transactions whose replaced content is still to be removed,
    /// with what of it is on disk now.
    pub fn cleanups_pending(&self) -> Result<Vec<PendingCleanup>> {
        Ok(self
            .journal
            .cleanups()?
            .into_iter()
            .map(|rec| PendingCleanup {
                txn: rec.id,
                package: rec.package_names(),
                paths: rec
                    .targets
                    .iter()
                    .flat_map(|t| [&t.staging, &t.backup])
                    .filter(|p| std::fs::symlink_metadata(p).is_ok())
                    .cloned()
                    .collect(),
            })
            .collect())
    }

    /// Removes what finished transactions replaced (what recovery does too),
    /// retrying once, as a transaction's finish is: the journal holds how
    /// far it got, and what a retry finds removed is made durable first.
    pub fn finish_cleanups(&self) -> Result<Vec<RecoveryReport>> {
        exec::finish_cleanups(&self.journal).or_else(|first| {
            tracing::warn!(error = %first, "removing what the transaction replaced failed; retrying once");
            exec::finish_cleanups(&self.journal).map_err(|_| first)
        })
    }

    /// Closes the journal and hands over the state-dir lock, still held
    /// (`None` for a read view): for a process that goes on with the
    /// cleanup after this one exits.
    pub fn into_lock(self) -> Option<lock::StateLock> {
        let Installer { journal, _lock, .. } = self;
        drop(journal);
        _lock
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
        // A finished transaction whose cleanup is still to run (a process
        // it left behind is removing its copies) has no leftovers yet.
        let cleaning: BTreeSet<_> = self.journal.cleanups()?.iter().map(|r| r.id).collect();
        let finished: BTreeSet<_> =
            self.journal.history()?.iter().map(|h| h.id).filter(|id| !cleaning.contains(id)).collect();
        pkgs.iter()
            .map(|p| {
                let foreign: BTreeSet<String> = all
                    .iter()
                    .filter(|o| o.name != p.name)
                    .flat_map(|o| o.targets.iter().map(|t| t.path.clone()))
                    .collect();
                verify::verify_package(&self.journal, p, &foreign, &finished)
            })
            .collect()
    }

    /// Installs (or upgrades) a package in one transaction. A request that
    /// names no placement upgrades an installed package where it is (its
    /// recorded placement); one that names another placement is refused
    /// unless `move_placement` is set.
    pub fn install(&mut self, req: &InstallRequest) -> Result<TxnReport> {
        let req = &self.with_recorded_placement(req)?;
        let (source_ref, artifact, blobs) = self.fetch(req)?;
        // A layout's blobs are imported into the cache (for a later offline
        // rollback) by the executor, once free space is checked.
        let put = self.put_request(&source_ref, artifact, blobs, req)?;
        let rec = self.run_changes(Op::Install, vec![ChangeRequest::Put(Box::new(put))], req.registry.progress)?;
        Ok(TxnReport::of(&rec))
    }

    /// Plans and runs one transaction over `changes` (the planner decides
    /// every refusal first; the executor then stages, commits and finishes).
    fn run_changes(&mut self, op: Op, changes: Vec<ChangeRequest>, progress: bool) -> Result<TxnRecord> {
        // An earlier transaction's cleanup first, as recovery would.
        self.finish_cleanups_before_planning()?;
        let installed = self.journal.packages()?;
        let id = self.journal.new_txn_id()?;
        let plan =
            planner::plan(&self.state_dir, &self.journal, &installed, id, op, changes, self.discard_local_files)?;
        let rec = self.execute(plan, progress)?;
        if !self.cleanup_later {
            // The transaction is done: a cleanup that fails is left for recovery.
            if let Err(e) = self.finish_cleanups() {
                tracing::warn!(error = %e, "removing what the transaction replaced failed; the next command finishes it");
            }
        }
        Ok(rec)
    }

    fn finish_cleanups_before_planning(&self) -> Result<()> {
        if let Some(r) = self.finish_cleanups()?.into_iter().find(|r| r.reason.is_some()) {
            return Err(Error::RecoveryRefused {
                txn: r.txn,
                package: r.package.clone(),
                reason: r.reason.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Switches a package back to an earlier version — the one it replaced,
    /// or `to` (a manifest digest among its kept versions) — as one
    /// transaction, reading only from the blob cache (offline). The kept
    /// version is staged again under `limits` (the journal does not record
    /// an install's caps, so the caller gives them).
    pub fn rollback(
        &mut self,
        name: &str,
        to: Option<&str>,
        keep: usize,
        limits: plan::limits::Limits,
        flags: &SignatureFlags,
    ) -> Result<TxnReport> {
        let pkg = self.journal.package(name)?.ok_or_else(|| Error::NotInstalled(name.to_string()))?;
        let version = match to {
            None => pkg.previous.first().cloned().ok_or_else(|| {
                Error::Refused(format!(
                    "{name} has no earlier version to roll back to (only {} is known)",
                    pkg.manifest_digest
                ))
            })?,
            Some(given) => {
                let d = kept_digest(name, &pkg, given)?;
                if d == pkg.manifest_digest {
                    return Err(Error::Refused(format!("{name} is already at {d}")));
                }
                pkg.previous.iter().find(|v| v.manifest_digest == d).cloned().ok_or_else(|| {
                    Error::Refused(format!("{d} is not a kept version of {name}; kept: {}", kept_list(&pkg)))
                })?
            }
        };
        let put = self.rollback_put(name, &version, keep, limits, flags)?;
        let rec = self.run_changes(Op::Rollback, vec![ChangeRequest::Put(Box::new(put))], false)?;
        Ok(TxnReport::of(&rec))
    }

    /// The signature policy in force now, for a command given `flags`, as
    /// it meets the signers the history `recorded` for a version: a keyless
    /// policy names the recorded signer it accepts (for a regexp, the
    /// identity that matched when it was installed), or itself.
    fn signature_policy(&self, flags: &SignatureFlags, recorded: &[String]) -> sigpolicy::Policy {
        let state_file = self.state_dir.join(REQUIRE_SIGNATURE_FILE);
        sigpolicy::Policy {
            required: if flags.require_signature {
                Some(sigpolicy::Required::Flag)
            } else if state_file.exists() {
                Some(sigpolicy::Required::StateFile(state_file.display().to_string()))
            } else {
                None
            },
            key: flags.verify_key.as_ref().map(|k| match k.keyless_policy() {
                Some(p) => (
                    format!("the keyless policy (trusted root {})", k.path()),
                    recorded.iter().find(|s| p.accepts_recorded(s)).cloned().unwrap_or_else(|| p.describe()),
                ),
                None => (format!("--verify-key {}", k.path()), k.fingerprint().to_string()),
            }),
        }
    }

    /// The planner's input for returning `name` to a kept `version`, read
    /// only from the blob cache (refused, naming the source, if pruned), if
    /// the signature policy in force now accepts what the history recorded
    /// of its signature (refused, saying what to do, if not).
    fn rollback_put(
        &self,
        name: &str,
        version: &txn::VersionRecord,
        keep: usize,
        limits: plan::limits::Limits,
        flags: &SignatureFlags,
    ) -> Result<planner::PutRequest> {
        let signers = sigpolicy::verified_signers(&self.journal.history()?, name, &version.manifest_digest);
        let policy = self.signature_policy(flags, &signers);
        let signed_by =
            match sigpolicy::decide_rollback(&policy, name, &version.manifest_digest, &version.source, &signers) {
                Ok(sigpolicy::RollbackSignature::Unchecked) => None,
                Ok(sigpolicy::RollbackSignature::VerifiedBy(fp)) => Some(fp),
                Err(why) => return Err(Error::Refused(why)),
            };
        if version.is_adopted() {
            return adopt::restore_put(&self.state_dir, name, version, keep, limits);
        }
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let pruned = |what: &str| {
            Error::Refused(format!(
                "the blobs of {name} {} are no longer in the cache ({what} is missing or damaged: pruned, deleted, \
                 or lost in a crash); reinstall it from its source: stagehand install {} ... Nothing was changed",
                version.manifest_digest, version.source
            ))
        };
        let manifest = cache.read_manifest(&version.manifest_digest)?.ok_or_else(|| pruned("its manifest"))?;
        // A blob copied from a layout is promoted here (re-hashed, fsynced):
        // its import was left off the install's critical path.
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !cache.promote(desc)? {
                return Err(pruned(&format!("blob {}", desc.digest)));
            }
        }
        let artifact = source::ResolvedArtifact {
            display: version.source.clone(),
            manifest_digest: version.manifest_digest.clone(),
            manifest,
            index_digest: None,
            signer: None,
        };
        let mut req = InstallRequest {
            source: version.source.clone(),
            placement: Placement::default(),
            name: Some(name.to_string()),
            adopt: false,
            // Rollback's words name the kept version, and so its placement.
            move_placement: true,
            profile: None,
            registry: source::registry::RegistryOptions::default(),
            keep_versions: keep,
            rollback: true,
            // Rollback reinstalls a kept version from the blob cache; its
            // signature is not checked again: it is recorded as signed only
            // where the policy accepted the history's record of its check.
            verify_key: None,
            require_signature: false,
            limits,
        };
        resolve::use_placement(&mut req, &version.placement)?;
        let source_ref = source::reference::parse(&version.source)?;
        let mut put = self.put_request(&source_ref, artifact, Box::new(cache), &req)?;
        put.signed_by = signed_by;
        Ok(put)
    }

    /// Removes a package's targets in one transaction.
    pub fn uninstall(&mut self, name: &str) -> Result<TxnReport> {
        if self.journal.package(name)?.is_none() {
            return Err(Error::NotInstalled(name.to_string()));
        }
        let rec = self.run_changes(Op::Uninstall, vec![ChangeRequest::Remove { name: name.to_string() }], false)?;
        Ok(TxnReport::of(&rec))
    }
}

impl TxnReport {
    /// The report of a finished one-package transaction (its first change).
    fn of(rec: &TxnRecord) -> TxnReport {
        let c = rec.changes.first();
        let old_digest = c.and_then(|c| c.old.as_ref()).map(|v| v.manifest_digest.clone());
        let adopted = c.and_then(|c| c.old.as_ref()).is_some_and(|v| v.is_adopted());
        let moved = c.is_some_and(txn::is_move);
        let op = match c.map(|c| c.op) {
            Some(Op::Install) if adopted => "adopt".to_string(),
            Some(Op::Install) if moved => "move".to_string(),
            Some(Op::Install) if old_digest.is_some() => "upgrade".to_string(),
            Some(o) => o.name().to_string(),
            None => rec.op.name().to_string(),
        };
        TxnReport {
            txn: rec.id,
            name: c.map(|c| c.name.clone()).unwrap_or_default(),
            op,
            old_digest,
            new_digest: c.and_then(|c| c.new_package.as_ref()).map(|p| p.manifest_digest.clone()),
            targets: match c.and_then(|c| c.new_package.as_ref()) {
                Some(p) => p.targets.iter().map(|t| t.path.clone()).collect(),
                None => rec.targets.iter().map(|t| t.path.clone()).collect(),
            },
            moved,
            moved_from: if moved {
                rec.targets.iter().filter(|t| t.change == 0 && t.new.is_none()).map(|t| t.path.clone()).collect()
            } else {
                Vec::new()
            },
            interrupted: interrupt::requested(),
        }
    }
}
