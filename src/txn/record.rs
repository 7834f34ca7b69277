//! The transaction and package records: plain data, written to the journal.
//!
//! These types are the journal's vocabulary; `journal-format.md` documents
//! their encoding field by field, in declaration order. Changing a field
//! here changes the on-disk format: bump `journal::FORMAT_VERSION`.

use serde::{Deserialize, Serialize};

/// A transaction's id: sled's persistent monotonic id generator.
pub type TxnId = u64;

/// What kind of entry is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Which content is at a path: the inode number and kind (the device is
/// kept for diagnostics only, since device numbers may change across
/// reboots while inode numbers do not), and for regular files the sha256 of
/// the bytes. An inode number alone does not survive reuse: a file removed
/// by cleanup frees its inode, and another program's new file may get it.
/// So a file is the same only if its digest agrees too, and a file put
/// back by hand (a new inode with the right bytes) is still recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub kind: EntryKind,
    /// Recorded for files; on observations of files, filled in whenever a
    /// recorded identity carries one (see [`Identity::needs_digest_of`]).
    pub sha256: Option<[u8; 32]>,
    /// The inode's birth time (`statx` `STATX_BTIME`), where the filesystem
    /// keeps one (ext4, btrfs, xfs, tmpfs): a reused inode number gets a new
    /// one, so for objects without a digest it tells reuse apart.
    pub btime: Option<BirthTime>,
}

/// An inode's birth time, as `statx` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BirthTime {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    pub nanos: u32,
}

impl Identity {
    /// Same content: same kind, and for regular files with a digest on both
    /// sides the same sha256 (whatever the inode: a reused inode with other
    /// bytes is not the same, a new inode with the same bytes is); otherwise
    /// the same inode ([`Identity::same_inode`]).
    pub fn same_as(&self, other: &Identity) -> bool {
        if self.kind != other.kind {
            return false;
        }
        if self.kind == EntryKind::File {
            if let (Some(a), Some(b)) = (self.sha256, other.sha256) {
                return a == b;
            }
        }
        self.same_inode(other)
    }

    /// The same inode, not a later one that reuses its number: equal inode
    /// numbers, and equal birth times where both sides have one.
    pub fn same_inode(&self, other: &Identity) -> bool {
        let born_apart = matches!((self.btime, other.btime), (Some(a), Some(b)) if a != b);
        self.ino == other.ino && !born_apart
    }

    /// True if this recorded identity carries a digest that an observation
    /// of a file must be compared by (the observer then hashes the file).
    pub fn needs_digest_of(&self, observed: &Identity) -> bool {
        self.kind == EntryKind::File
            && observed.kind == EntryKind::File
            && self.sha256.is_some()
            && observed.sha256.is_none()
    }
}

/// What a transaction does: to one package (`Install`, `Uninstall`,
/// `Rollback`, also each [`PackageChange`]'s op), or to a set (`Apply`, the
/// op of a whole transaction only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Fresh install or upgrade: every target gets new content.
    Install,
    /// Every target is removed.
    Uninstall,
    /// Like `Install`, back to a kept earlier version, from the blob cache.
    Rollback,
    /// `stagehand apply` (or the rollback of one): several package changes,
    /// each with its own op, switched together.
    Apply,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Install => "install",
            Op::Uninstall => "uninstall",
            Op::Rollback => "rollback",
            Op::Apply => "apply",
        }
    }
}

/// The journaled progress of a transaction. Before `Committed` recovery
/// rolls back; from `Committed` on it rolls forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Every target, its staging and backup path are recorded; nothing on disk touched yet.
    Planned,
    /// New content is complete and fsynced under every staging path; identities recorded.
    Staged,
    /// The commit point.
    Committed,
    /// Every target holds its new content durably; staging and backups are being removed.
    Cleaning,
    /// Rolling back: decided before the commit point, or after it when the new
    /// content was lost (`after_commit`). Once journaled, the decision stands.
    RollingBack { after_commit: bool },
}

impl Step {
    pub fn is_committed(self) -> bool {
        matches!(self, Step::Committed | Step::Cleaning | Step::RollingBack { after_commit: true })
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Planned => "planned",
            Step::Staged => "staged",
            Step::Committed => "committed",
            Step::Cleaning => "cleaning",
            Step::RollingBack { after_commit: false } => "rolling-back",
            Step::RollingBack { after_commit: true } => "rolling-back-after-commit",
        }
    }
}

/// Per-target progress after the commit point, journaled before each swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetProgress {
    Pending,
    Swapping,
    Swapped,
}

/// The new content a target receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewContent {
    /// `File` or `Dir`.
    pub kind: EntryKind,
    /// Identity of the staging path's object, recorded when staged.
    pub identity: Option<Identity>,
}

/// One destination path of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetPlan {
    /// Absolute destination path.
    pub path: String,
    /// Sibling of `path`: where new content is staged.
    pub staging: String,
    /// Sibling of `path`: where old content goes if exchange is unavailable,
    /// and where an uninstall moves it before removal.
    pub backup: String,
    /// What was at `path` when planned, if anything.
    pub old: Option<Identity>,
    /// New content, or `None` to remove the target.
    pub new: Option<NewContent>,
    pub progress: TargetProgress,
    /// Index into [`TxnRecord::changes`]: the package change this target belongs to.
    pub change: u32,
}

/// What one transaction does to one package. A transaction holds one (an
/// install, uninstall or rollback) or several (an apply); recovery still
/// decides for the transaction as a whole, and finishing it writes every
/// change's registry entry in the same sled transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    /// Package name.
    pub name: String,
    /// `Install` (fresh or upgrade), `Uninstall` or `Rollback`; never `Apply`.
    pub op: Op,
    /// The version installed before, if any, with its source and placement
    /// (so the rollback of an apply can restore it, even a pruned package).
    pub old: Option<VersionRecord>,
    /// The registry entry to write when the txn is done (`None` for uninstall).
    pub new_package: Option<PackageRecord>,
}

/// A transaction in flight (tree `txns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub id: TxnId,
    /// The op of a one-package txn (its change's op), or `Apply`.
    pub op: Op,
    pub step: Step,
    /// Unix seconds.
    pub started_at: u64,
    /// Set when recovery (not the process that began it) drove this txn.
    pub recovered: bool,
    /// Every package this transaction changes (at least one; names unique).
    pub changes: Vec<PackageChange>,
    pub targets: Vec<TargetPlan>,
    /// Directories created for this txn's targets (outermost first); removed
    /// again, if empty, when the txn rolls back.
    pub created_dirs: Vec<String>,
}

impl TxnRecord {
    /// The names of the packages it changes, comma-separated (for messages).
    pub fn package_names(&self) -> String {
        self.changes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A file inside an installed target, for `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the target; empty for a file target itself.
    pub rel: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    /// Lowercase hex sha256 for files; empty otherwise.
    pub sha256: String,
    /// Symlink target; empty otherwise.
    pub link: String,
}

/// One installed target of a package. Its files are listed outside sled,
/// in the file list [`InstalledTarget::file_list`] names, so records stay
/// small whatever the package's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledTarget {
    pub path: String,
    pub kind: EntryKind,
    pub file_list: FileListRef,
}

/// A content-addressed file list (`STATE/filelists/sha256/<hex>`, see
/// `journal::filelist`): the `FileEntry`s of one installed target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileListRef {
    /// sha256 of the file list's bytes: its name.
    pub sha256: [u8; 32],
    /// How many entries it holds.
    pub entries: u64,
}

impl FileListRef {
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Where a version's layers were placed, as asked: enough to plan the same
/// targets again from its manifest (`rollback`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// `--to DIR`, resolved to an absolute path.
    pub to: Option<String>,
    /// `--map GLOB=DIR` rules, DIR resolved to an absolute path.
    pub maps: Vec<String>,
    /// `--profile NAME`.
    pub profile: Option<String>,
    /// `--install-dir` (absolute), with a profile.
    pub install_dir: Option<String>,
    /// `--db-version`, with a profile.
    pub db_version: Option<String>,
    /// `--platform OS/ARCH`, if given.
    pub platform: Option<String>,
    /// Only for a version captured by `--adopt` (format 5): the target paths
    /// it restores, layer `i` of its synthesized manifest at `adopted[i]`
    /// (every other field is then unset). Empty for every other version.
    pub adopted: Vec<String>,
}

/// The `source` of a version captured by `--adopt`: this prefix, then the
/// first adopted path. Never a reference a user can install.
pub const ADOPTED_SOURCE_PREFIX: &str = "adopted:";

impl PlacementRecord {
    /// True for the content an `--adopt` install replaced, captured by stagehand.
    pub fn is_adopted(&self) -> bool {
        !self.adopted.is_empty()
    }

    /// True if both place files at the same destinations as asked: the same
    /// `to`, `maps` (in order), `profile`, `install_dir` and `db_version`.
    /// The platform picks which layers, not where they go, so it is not
    /// compared. A new version whose placement is not the same as the
    /// installed one's moves the package (`install --move`).
    pub fn same_place(&self, other: &PlacementRecord) -> bool {
        self.to == other.to
            && self.maps == other.maps
            && self.profile == other.profile
            && self.install_dir == other.install_dir
            && self.db_version == other.db_version
    }

    /// The placement as the install flags that ask for it, for messages:
    /// `--to /opt/a --map '*.so=/opt/lib'`.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        if let Some(p) = &self.profile {
            out.push(format!("--profile {p}"));
        }
        if let Some(d) = &self.install_dir {
            out.push(format!("--install-dir {d}"));
        }
        if let Some(v) = &self.db_version {
            out.push(format!("--db-version {v}"));
        }
        if let Some(t) = &self.to {
            out.push(format!("--to {t}"));
        }
        for m in &self.maps {
            out.push(format!("--map '{m}'"));
        }
        if out.is_empty() {
            "no placement".to_string()
        } else {
            out.join(" ")
        }
    }
}

/// An earlier installed version, kept so `rollback` can return to it: an
/// artifact installed before, or the content an `--adopt` install replaced
/// (`placement.adopted` set; `installed_at` is when it was captured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub manifest_digest: String,
    pub source: String,
    pub installed_at: u64,
    pub placement: PlacementRecord,
}

impl VersionRecord {
    /// True for content captured by `--adopt` (see [`PlacementRecord::adopted`]).
    pub fn is_adopted(&self) -> bool {
        self.placement.is_adopted()
    }
}

/// An installed package (tree `packages`, key = name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub name: String,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// The source reference as the user gave it.
    pub source: String,
    pub installed_at: u64,
    pub txn: TxnId,
    pub targets: Vec<InstalledTarget>,
    pub placement: PlacementRecord,
    /// Earlier versions, newest first (at most `keep_versions - 1`).
    pub previous: Vec<VersionRecord>,
    /// The fingerprint (`sha256:<hex>` of the DER SubjectPublicKeyInfo) of
    /// the key whose cosign signature was verified before this version was
    /// staged; `None` if no signature was checked.
    pub signed_by: Option<String>,
    /// The desired-state file (its canonical path) whose `apply` last
    /// installed or changed this package; `None` if installed by hand.
    /// `apply --prune` of that file is the only prune that removes it. A
    /// hand `install` or `rollback` of the package keeps it (format 5).
    pub managed_by: Option<String>,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    RolledForwardByRecovery,
    RolledBack,
    RolledBackByRecovery,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::RolledForwardByRecovery => "rolled forward by recovery",
            Outcome::RolledBack => "rolled back",
            Outcome::RolledBackByRecovery => "rolled back by recovery",
        }
    }
}

/// Which host served each manifest and blob a transaction's registry pulls
/// fetched (tree `served`, keyed like its transaction; written before the
/// `staged` record). Only what was fetched over the network is listed: a
/// blob already in the cache, or a layout's, has no row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedRecord {
    pub blobs: Vec<ServedBlob>,
}

/// One fetched manifest or blob: the package whose pull fetched it (a blob
/// two packages of one apply share is fetched once, by one of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedBlob {
    pub package: String,
    pub digest: String,
    pub host: String,
}

/// A finished transaction (tree `history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: TxnId,
    pub op: Op,
    pub started_at: u64,
    pub finished_at: u64,
    /// One per package the transaction changed, in the record's order.
    pub changes: Vec<ChangeSummary>,
    pub outcome: Outcome,
    /// Why it rolled back, if it did; or what its cleanup had to leave
    /// behind (a path it could not remove, with the fix).
    pub error: Option<String>,
}

/// One package's part of a finished transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    pub package: String,
    pub op: Op,
    /// The version before (digest, source, placement), if any.
    pub old: Option<VersionRecord>,
    pub new_digest: Option<String>,
    /// The new version's `PackageRecord::signed_by`.
    pub signed_by: Option<String>,
    /// The new version was placed elsewhere than the old one (its placement
    /// is not [`PlacementRecord::same_place`] as the old version's): an
    /// `install --move`, an apply whose file changed the placement, or a
    /// rollback to a version placed elsewhere (format 5).
    pub moved: bool,
}

impl ChangeSummary {
    pub fn old_digest(&self) -> Option<&str> {
        self.old.as_ref().map(|v| v.manifest_digest.as_str())
    }
}

/// True if `change` places its package elsewhere than before: it replaces
/// an installed version with one whose placement is not the same.
pub fn is_move(change: &PackageChange) -> bool {
    match (&change.old, &change.new_package) {
        // Content captured by `--adopt` sits at exactly the paths it was
        // captured from: installing over it, or rolling back to it, moves nothing.
        (Some(old), Some(new)) if old.is_adopted() || new.placement.is_adopted() => false,
        (Some(old), Some(new)) => !old.placement.same_place(&new.placement),
        _ => false,
    }
}
