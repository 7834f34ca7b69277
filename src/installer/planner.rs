//! The planner: package change requests → one transaction plan.
//!
//! Every refusal is decided here, for the whole set of changes at once and
//! before anything is written: ownership against the packages this
//! transaction leaves alone, nesting between its targets, adoption of
//! unowned paths, containment (symlinked targets, mounts inside a target)
//! and free space. Paths owned by a package that this same transaction
//! changes are movable: replacing or removing them needs no `--adopt`, and
//! their owner's files inside a removed or replaced directory go with it.
//! A new file of one change inside a new directory of another (Steampipe's
//! FDW inside a new database version) is staged inside that directory.
//! An install of an installed package keeps its recorded placement: a
//! different one is a move ([`placement_move`]), refused unless asked for
//! (`install --move`; an apply's file and a rollback name the placement).
//! It reads the disk (identities, free space) but changes nothing; the
//! executor (`run`) carries the plan out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::checks::{check_ownership, check_removal, mounts_at_or_under, nests};
use super::local_files;
use super::{adopt, exec, io, keep_versions, now, path_str, space, stage, Error, Result};
use crate::fsops;
use crate::journal::Journal;
use crate::plan::{limits::Limits, PlannedContent, PlannedTarget};
use crate::source::{self, BlobSource, ResolvedArtifact};
use crate::txn::{
    self, EntryKind, NewContent, Op, PackageChange, PackageRecord, PlacementRecord, Step, TargetPlan, TargetProgress,
    TxnId, TxnRecord, VersionRecord,
};

/// Install (or upgrade, or roll back to) one version of a package: its
/// manifest resolved, its blobs at hand, its targets placed.
pub struct PutRequest {
    pub name: String,
    /// `Install` or `Rollback`.
    pub op: Op,
    /// The source reference as the user gave it.
    pub source: String,
    pub artifact: ResolvedArtifact,
    pub blobs: Box<dyn BlobSource>,
    pub planned: Vec<PlannedTarget>,
    pub placement: PlacementRecord,
    pub adopt: bool,
    /// The placement may differ from the installed version's: the package
    /// moves (`install --move`, an apply). Rollbacks are never refused.
    pub allow_move: bool,
    pub keep_versions: usize,
    pub signed_by: Option<String>,
    /// The desired-state file (canonical path) an `apply` installs it for;
    /// `None` (a hand `install` or `rollback`) keeps what the installed
    /// version records.
    pub managed_by: Option<String>,
    /// An OCI layout whose blobs are imported into the cache before the
    /// transaction is journaled (so a later rollback is offline).
    pub layout: Option<PathBuf>,
    pub limits: Limits,
    /// Stage with the exact modes, mtimes (and owners, as root) the layers
    /// carry: only for a version stagehand captured itself (`--adopt`).
    pub exact: bool,
}

/// A package placed elsewhere than its installed version: what it holds now
/// and what it will hold, and both placements as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    pub old_targets: Vec<String>,
    pub new_targets: Vec<String>,
    pub old_placement: PlacementRecord,
    pub new_placement: PlacementRecord,
}

impl Move {
    /// The paths that change, `old -> new`: the old targets the new version
    /// does not keep, and its targets the old version did not have; a side
    /// with none is all of its targets (mapped files that go back into the
    /// `--to` directory: `/lib/x.so -> /opt/app`).
    pub fn paths(&self) -> (Vec<&str>, Vec<&str>) {
        fn only<'a>(a: &'a [String], b: &[String]) -> Vec<&'a str> {
            let diff: Vec<&str> = a.iter().filter(|t| !b.contains(t)).map(String::as_str).collect();
            if diff.is_empty() {
                a.iter().map(String::as_str).collect()
            } else {
                diff
            }
        }
        (only(&self.old_targets, &self.new_targets), only(&self.new_targets, &self.old_targets))
    }
}

/// The move that putting `req` over the installed `old` makes, if its
/// placement is not the recorded one ([`PlacementRecord::same_place`]).
pub fn placement_move(old: &PackageRecord, req: &PutRequest) -> Option<Move> {
    if old.placement.same_place(&req.placement) {
        return None;
    }
    let mut new_targets: Vec<String> = req.planned.iter().map(|t| t.path.to_string_lossy().into_owned()).collect();
    new_targets.sort();
    let mut old_targets: Vec<String> = old.targets.iter().map(|t| t.path.clone()).collect();
    old_targets.sort();
    // Content kept by `--adopt` records the paths it was captured from, not
    // the flags: the same paths again are no move.
    if old.placement.is_adopted() && old_targets == new_targets {
        return None;
    }
    Some(Move { old_targets, new_targets, old_placement: old.placement.clone(), new_placement: req.placement.clone() })
}

/// Refuses an install that would move `old` without `--move`, naming where
/// it is, where it would go, and the three ways on.
fn check_placement(old: &PackageRecord, req: &PutRequest) -> Result<()> {
    if req.op != Op::Install || req.allow_move {
        return Ok(());
    }
    let Some(m) = placement_move(old, req) else { return Ok(()) };
    let (from, to) = m.paths();
    Err(Error::Refused(format!(
        "this install would move {name:?} from {from} to {to}: it is installed with {old}, this install asks for \
         {new}. Nothing was changed. To upgrade it where it is, leave out --to, --map and --profile (its \
         recorded placement is used); to move it, repeat the command with --move; to install a second copy \
         beside it, add --name OTHER",
        name = req.name,
        from = from.join(", "),
        to = to.join(", "),
        old = m.old_placement.describe(),
        new = m.new_placement.describe(),
    )))
}

/// One package's part of a transaction.
pub enum ChangeRequest {
    Put(Box<PutRequest>),
    Remove { name: String },
}

impl ChangeRequest {
    pub fn name(&self) -> &str {
        match self {
            ChangeRequest::Put(p) => &p.name,
            ChangeRequest::Remove { name } => name,
        }
    }
}

/// A file of one change staged inside another change's new directory.
pub struct Embedded {
    pub change: usize,
    /// Relative to the directory target.
    pub rel: String,
    /// Its final path.
    pub path: String,
    pub content: PlannedContent,
}

/// One target to stage: `rec.targets[target]`, with what goes into it.
pub struct StageItem {
    pub target: usize,
    pub content: PlannedContent,
    pub carry: Vec<stage::Carried>,
    pub embedded: Vec<Embedded>,
}

/// What one change stages from, and the registry entry it will write.
pub struct ChangeWork {
    pub blobs: Option<Box<dyn BlobSource>>,
    pub template: Option<PackageRecord>,
    pub limits: Limits,
    pub layout: Option<(PathBuf, ResolvedArtifact)>,
    /// Unowned targets this change replaces under `--adopt`: captured
    /// before the `staged` record, kept in `template.previous` at `slot`.
    pub adopt: Vec<adopt::Adopted>,
    /// Where the captured version goes in `template.previous`.
    pub adopt_slot: usize,
    /// How many earlier versions the package keeps (`--keep-versions` − 1).
    pub keep_previous: usize,
    /// See [`PutRequest::exact`].
    pub exact: bool,
}

/// A planned transaction: the record to journal (step `Planned`) and the
/// work the executor does to stage it.
pub struct TxnPlan {
    pub rec: TxnRecord,
    pub stage: Vec<StageItem>,
    pub work: Vec<ChangeWork>,
    /// Sum of the blob sizes staging reads (for the progress bar).
    pub total_bytes: u64,
    /// The free-space check that passed; staging's byte budget comes from it.
    pub space: space::SpaceCheck,
}

struct NewTarget {
    change: usize,
    path: String,
    kind: EntryKind,
    planned: PlannedTarget,
    carry: Vec<stage::Carried>,
    old: Option<txn::Identity>,
    embedded: Vec<Embedded>,
}

fn kind_of(c: &PlannedContent) -> EntryKind {
    match c {
        PlannedContent::Dir(_) => EntryKind::Dir,
        PlannedContent::File(..) => EntryKind::File,
    }
}

fn strictly_inside(inner: &str, outer: &str) -> bool {
    inner != outer && Path::new(inner).starts_with(outer)
}

/// Plans transaction `id` (op `op`) over `changes`, given every installed
/// package. Refuses, changing nothing, if any part of the set is refused;
/// that includes a directory target it replaces or removes that holds
/// files its package did not install, unless `discard_local_files`.
pub fn plan(
    state_dir: &Path,
    journal: &Journal,
    installed: &[PackageRecord],
    id: TxnId,
    op: Op,
    changes: Vec<ChangeRequest>,
    discard_local_files: bool,
) -> Result<TxnPlan> {
    if changes.is_empty() {
        return Err(Error::Refused("nothing to do: the transaction changes no package".into()));
    }
    let mut names = BTreeSet::new();
    for c in &changes {
        if !names.insert(c.name().to_string()) {
            return Err(Error::Refused(format!("package {:?} is named twice; nothing was changed", c.name())));
        }
    }
    let others: Vec<PackageRecord> = installed.iter().filter(|p| !names.contains(&p.name)).cloned().collect();
    let old_of = |name: &str| installed.iter().find(|p| p.name == name);
    for c in &changes {
        if let (ChangeRequest::Put(req), Some(old)) = (c, old_of(c.name())) {
            check_placement(old, req)?;
        }
    }
    // Every path a changed package owns now: movable by this transaction.
    let old_paths: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| old_of(c.name()))
        .flat_map(|p| p.targets.iter().map(|t| t.path.clone()))
        .collect();
    let mut news: Vec<NewTarget> = Vec::new();
    let mut created = BTreeSet::new();
    // Per change: the unowned targets it adopts; and the bytes their capture needs.
    let mut adopted: Vec<Vec<adopt::Adopted>> = changes.iter().map(|_| Vec::new()).collect();
    let mut adopt_bytes: u64 = 0;
    for (ci, c) in changes.iter().enumerate() {
        let ChangeRequest::Put(req) = c else { continue };
        for pt in &req.planned {
            let path = path_str(&pt.path)?;
            let kind = kind_of(&pt.content);
            let carry = check_ownership(journal, &others, &path, kind)?;
            let old = old_identity(&pt.path)?;
            if let Some(o) = old {
                if o.kind == EntryKind::Symlink {
                    return Err(Error::Refused(format!(
                        "{path} is a symlink; stagehand replaces real files and directories only"
                    )));
                }
                let movable = old_paths.contains(&path) || old_paths.iter().any(|p| strictly_inside(&path, p));
                if !movable && !req.adopt && !is_empty_dir(&pt.path) {
                    return Err(Error::Refused(format!(
                        "{path} already exists and no package owns it; nothing was changed. Pass --adopt to replace \
                         it: its current contents are then kept as an earlier version of the package, which \
                         `stagehand rollback` restores (unless --keep-versions 1 keeps none)"
                    )));
                }
                if !movable && req.adopt {
                    adopt_bytes += adopt::survey(&pt.path)?;
                    adopted[ci].push(adopt::Adopted { path: path.clone(), kind: o.kind });
                }
                if o.kind != kind && !(req.adopt || movable) {
                    return Err(Error::Refused(format!("{path} exists but is not a {kind:?}")));
                }
            }
            let parent = pt.path.parent().ok_or_else(|| Error::Refused(format!("{path} has no parent")))?;
            let mut p = parent;
            while !p.exists() {
                created.insert(path_str(p)?);
                match p.parent() {
                    Some(pp) => p = pp,
                    None => break,
                }
            }
            news.push(NewTarget { change: ci, path, kind, planned: pt.clone(), carry, old, embedded: Vec::new() });
        }
    }
    // A new file of one change inside another change's new directory is
    // staged inside that directory; its parent dirs are then the directory's.
    let mut i = 0;
    while i < news.len() {
        let host = news.iter().position(|d| {
            d.kind == EntryKind::Dir && d.change != news[i].change && strictly_inside(&news[i].path, &d.path)
        });
        match host {
            Some(h) if news[i].kind == EntryKind::File && news[i].embedded.is_empty() => {
                let f = news.remove(i);
                let h = if h > i { h - 1 } else { h };
                let rel = path_str(Path::new(&f.path).strip_prefix(&news[h].path).unwrap_or(Path::new("")))?;
                created.retain(|d| !strictly_inside(d, &news[h].path) && d != &news[h].path);
                news[h].embedded.push(Embedded { change: f.change, rel, path: f.path, content: f.planned.content });
            }
            _ => i += 1,
        }
    }
    for (a, ta) in news.iter().enumerate() {
        for tb in &news[a + 1..] {
            if nests(&ta.path, &tb.path) {
                return Err(Error::Refused(format!(
                    "{} of package {:?} and {} of package {:?} nest (or are the same path); one transaction \
                     cannot place both. Nothing was changed",
                    ta.path,
                    changes[ta.change].name(),
                    tb.path,
                    changes[tb.change].name()
                )));
            }
        }
    }
    let mut targets: Vec<TargetPlan> = Vec::new();
    let mut stage_items = Vec::new();
    for n in news {
        let p = Path::new(&n.path);
        stage_items.push(StageItem {
            target: targets.len(),
            content: n.planned.content,
            carry: n.carry,
            embedded: n.embedded,
        });
        targets.push(TargetPlan {
            staging: path_str(
                &txn::staging_path(p, id).ok_or_else(|| Error::Refused(format!("{}: bad name", n.path)))?,
            )?,
            backup: path_str(&txn::backup_path(p, id).ok_or_else(|| Error::Refused(format!("{}: bad name", n.path)))?)?,
            path: n.path,
            old: n.old,
            new: Some(NewContent { kind: n.kind, identity: None }),
            progress: TargetProgress::Pending,
            change: n.change as u32,
        });
    }
    // Targets the changed packages have now and will not have: removed,
    // unless a new target replaces them (same path, or an enclosing one) or
    // they lie inside another removed or replaced directory of the set.
    let dir_olds: Vec<String> = changes
        .iter()
        .filter_map(|c| old_of(c.name()))
        .flat_map(|p| p.targets.iter().filter(|t| t.kind == EntryKind::Dir).map(|t| t.path.clone()))
        .collect();
    let new_count = targets.len();
    for (ci, c) in changes.iter().enumerate() {
        let Some(old_pkg) = old_of(c.name()) else { continue };
        for ot in &old_pkg.targets {
            let replaced = targets[..new_count].iter().any(|t| t.path == ot.path || strictly_inside(&ot.path, &t.path));
            if replaced || dir_olds.iter().any(|d| strictly_inside(&ot.path, d)) {
                continue;
            }
            check_removal(&others, &ot.path, c.name())?;
            if let Some(t) = targets[..new_count].iter().find(|t| nests(&t.path, &ot.path)) {
                let owner = changes[t.change as usize].name();
                return Err(Error::Refused(if owner == c.name() {
                    format!(
                        "the new version of {owner:?} installs {}, which nests with {} of the installed version, \
                         which this upgrade would remove; nothing was changed: uninstall it first \
                         (`stagehand uninstall {owner}`), then install the new version",
                        t.path, ot.path
                    )
                } else {
                    format!(
                        "package {owner:?} would install {} inside {} of package {:?}, which this transaction \
                         removes; nothing was changed",
                        t.path,
                        ot.path,
                        c.name()
                    )
                }));
            }
            if stage_items.iter().flat_map(|s| &s.embedded).any(|e| nests(&e.path, &ot.path)) {
                return Err(Error::Refused(format!(
                    "{} of package {:?} is removed by this transaction, but a new file is placed inside it; nothing was changed",
                    ot.path,
                    c.name()
                )));
            }
            let mut t = removal_target(&ot.path, id)?;
            t.change = ci as u32;
            targets.push(t);
        }
    }
    if !discard_local_files {
        check_local_files(journal, installed, &changes, &targets)?;
    }
    if targets.len() > txn::MAX_TARGETS {
        return Err(Error::Refused(format!(
            "this transaction has {} targets, over the limit of {}; split it. Nothing was changed",
            targets.len(),
            txn::MAX_TARGETS
        )));
    }
    for (c, a) in changes.iter().zip(&adopted) {
        // The kept version lists its paths in the package's record (≤ 64 KiB).
        let bytes: usize = a.iter().map(|t| t.path.len() + 8).sum();
        if bytes > adopt::MAX_ADOPTED_PATH_BYTES {
            return Err(Error::Refused(format!(
                "package {:?} would adopt {} existing paths at once ({bytes} bytes of paths, over the {} a kept \
                 version may list); nothing was changed: adopt fewer at a time",
                c.name(),
                a.len(),
                adopt::MAX_ADOPTED_PATH_BYTES
            )));
        }
    }
    check_names_free(&targets, id)?;
    let space = check_space(state_dir, &changes, adopt_bytes)?;

    let mut created_dirs: Vec<String> = created.into_iter().collect();
    created_dirs.sort_by_key(|d| d.len());
    let mut work = Vec::new();
    let mut recs = Vec::new();
    let mut total_bytes = 0;
    for (c, adopt) in changes.into_iter().zip(adopted) {
        let old_pkg = old_of(c.name());
        let old = old_pkg.map(|p| VersionRecord {
            manifest_digest: p.manifest_digest.clone(),
            source: p.source.clone(),
            installed_at: p.installed_at,
            placement: p.placement.clone(),
        });
        match c {
            ChangeRequest::Remove { name } => {
                if old_pkg.is_none() {
                    return Err(Error::NotInstalled(name));
                }
                recs.push(PackageChange { name, op: Op::Uninstall, old, new_package: None });
                work.push(ChangeWork {
                    blobs: None,
                    template: None,
                    limits: Limits::default(),
                    layout: None,
                    adopt: Vec::new(),
                    adopt_slot: 0,
                    keep_previous: 0,
                    exact: false,
                });
            }
            ChangeRequest::Put(req) => {
                let req = *req;
                total_bytes += req
                    .planned
                    .iter()
                    .map(|pt| match &pt.content {
                        PlannedContent::Dir(layers) => layers.iter().map(|(d, _)| d.size).sum(),
                        PlannedContent::File(d, _) => d.size,
                    })
                    .sum::<u64>();
                // The versions to keep for rollback: the one replaced, then older ones.
                let keep_previous = keep_versions(req.keep_versions) - 1;
                let previous: Vec<VersionRecord> = old_pkg
                    .iter()
                    .flat_map(|p| old.clone().into_iter().chain(p.previous.iter().cloned()))
                    .filter(|v| v.manifest_digest != req.artifact.manifest_digest)
                    .take(keep_previous)
                    .collect();
                // What this install adopts is kept right after the version it
                // replaces (first, for a fresh install), unless nothing is kept.
                let adopt_slot = usize::from(old_pkg.is_some());
                let adopt = if adopt_slot < keep_previous || adopt.is_empty() {
                    adopt
                } else if req.keep_versions != 1 {
                    // An upgrade keeps the version it replaces first: without
                    // room for a second, the capture would be dropped at once.
                    return Err(Error::Refused(format!(
                        "{} would be adopted by an upgrade of {:?}, but --keep-versions {} keeps only the version                          this upgrade replaces, so its current contents would be lost; nothing was changed. Pass                          --keep-versions {} to keep them too (or move them out of the way)",
                        adopt.iter().map(|a| a.path.as_str()).collect::<Vec<_>>().join(", "),
                        req.name,
                        keep_previous + 1,
                        adopt_slot + 2
                    )));
                } else {
                    for a in &adopt {
                        tracing::warn!(
                            "--keep-versions {} keeps no earlier version here: what {} holds now is replaced and not kept",
                            keep_previous + 1,
                            a.path
                        );
                    }
                    Vec::new()
                };
                let template = PackageRecord {
                    name: req.name.clone(),
                    manifest_digest: req.artifact.manifest_digest.clone(),
                    source: req.source.clone(),
                    installed_at: 0,
                    txn: id,
                    targets: Vec::new(),
                    placement: req.placement,
                    previous,
                    signed_by: req.signed_by,
                    managed_by: req.managed_by.or_else(|| old_pkg.and_then(|p| p.managed_by.clone())),
                };
                recs.push(PackageChange { name: req.name, op: req.op, old, new_package: None });
                work.push(ChangeWork {
                    blobs: Some(req.blobs),
                    template: Some(template),
                    limits: req.limits,
                    layout: req.layout.map(|l| (l, req.artifact)),
                    adopt,
                    adopt_slot,
                    keep_previous,
                    exact: req.exact,
                });
            }
        }
    }
    let rec = TxnRecord {
        id,
        op,
        step: Step::Planned,
        started_at: now(),
        recovered: false,
        changes: recs,
        targets,
        created_dirs,
    };
    Ok(TxnPlan { rec, stage: stage_items, work, total_bytes, space })
}

/// Refuses when a directory target that a changed package owns now, and
/// that this transaction replaces or removes, holds entries the package did
/// not install (see `local_files`).
fn check_local_files(
    journal: &Journal,
    installed: &[PackageRecord],
    changes: &[ChangeRequest],
    targets: &[TargetPlan],
) -> Result<()> {
    let owned = |except: &str| -> BTreeSet<String> {
        installed.iter().filter(|p| p.name != except).flat_map(|p| p.targets.iter().map(|t| t.path.clone())).collect()
    };
    for t in targets {
        let name = changes[t.change as usize].name();
        let Some(pkg) = installed.iter().find(|p| p.name == name) else { continue };
        let Some(it) = pkg.targets.iter().find(|it| it.path == t.path && it.kind == EntryKind::Dir) else { continue };
        let found = local_files::find(journal, pkg, it, &owned(name))?;
        if !found.is_empty() {
            return Err(local_files::refusal(name, &t.path, &found));
        }
    }
    Ok(())
}

/// Refuses a staging or backup name that is already taken. Recovery and
/// rollback remove what is at those names as this transaction's own, so a
/// name is never reused: whatever is there (a set-aside journal's leftover,
/// say) was not made by this transaction and must not be staged over or
/// removed. Checked (`lstat`) before the `planned` record is journaled.
fn check_names_free(targets: &[TargetPlan], id: TxnId) -> Result<()> {
    for t in targets {
        for (p, what) in [(&t.staging, "staging"), (&t.backup, "backup")] {
            let seen = fsops::identity(Path::new(p)).map_err(io(format!("observing {p}")))?;
            if seen.is_some() {
                return Err(Error::Refused(format!(
                    "{p} already exists, but it is the {what} name of this transaction ({id}) for {}: \
                     stagehand did not make it for this transaction and never reuses or removes it. \
                     Nothing was changed; look inside it (it may be the only copy of something, left by \
                     an interrupted transaction of a journal that was set aside), move it away, and run \
                     the command again",
                    t.path
                )));
            }
        }
    }
    Ok(())
}

/// Refuses early when a filesystem involved lacks the space the set needs:
/// the blob cache's, for layout blobs copied into it (hard links on the same
/// filesystem need none), and each target's.
fn check_space(state_dir: &Path, changes: &[ChangeRequest], adopt_bytes: u64) -> Result<space::SpaceCheck> {
    let cache = source::cache::BlobCache::new(state_dir);
    let mut check = space::SpaceCheck::default();
    if adopt_bytes > 0 {
        check.add(cache.root(), adopt_bytes, "the capture of what --adopt replaces, in the blob cache".to_string())?;
    }
    for c in changes {
        let ChangeRequest::Put(req) = c else { continue };
        let layout = req.layout.as_deref().map(source::OciLayout::open).transpose()?;
        if let Some(l) = &layout {
            let (cache_dev, _) = fsops::free_space(cache.root()).map_err(io("checking the blob cache's free space"))?;
            let m = &req.artifact.manifest;
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
        space::add_targets(&mut check, &req.planned, &blob_file)?;
    }
    check.check()?;
    Ok(check)
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
        change: 0,
    })
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false)
}
