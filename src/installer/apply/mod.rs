//! `apply`: switch the installed set to a desired-state file's, in ONE
//! transaction. Every reference is first pinned, manifests only (`pins`:
//! the lock file's digest for an unchanged entry, a fresh resolution for a
//! new or changed one); what differs from the registry — a new package, a
//! new digest or placement, and with `prune` a package THIS file applied
//! and no longer lists — becomes the plan. A plan that uninstalls or moves
//! a package is confirmed (`Confirm`) before anything is downloaded or
//! journaled; then the changed packages' blobs are fetched (by digest) and
//! the plan runs as one transaction, through the same planner and executor
//! as `install`. Also `lock` and `update` (write the lock file, install
//! nothing) and the rollback of an apply.
//!
//! What a prune may remove is decided here, as data the plan carries
//! (`changes`, `kept`): a package another file manages, or one installed by
//! hand, is never pruned; only `remove` (`--remove NAME`) names one.

pub mod desired;
pub mod desired_keys;
pub mod filediff;
pub mod lockfile;
pub mod outdated;
pub mod pins;

use super::planner::{self, ChangeRequest};
use super::{interrupt, Error, Installer, Result};
use crate::source::SourceError;
use crate::txn::{Op, Outcome, PackageRecord, TxnId};
use desired::DesiredSet;
use lockfile::LockFile;
use pins::LockChange;

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// Uninstall the packages this file applied and no longer lists.
    pub prune: bool,
    /// Also uninstall these packages (`--remove NAME`), which the file must
    /// not list, whoever installed them.
    pub remove: Vec<String>,
    /// Install exactly the lock file's digests; fail if it disagrees with the file.
    pub locked: bool,
    /// Draw the extraction bar.
    pub progress: bool,
    /// `--keep-versions` for packages whose entry does not set it.
    pub keep_versions: usize,
}

/// Who confirms an apply that uninstalls or moves a package
/// ([`PlannedChange::needs_confirmation`]). Installs and in-place upgrades
/// never ask; a dry run never asks.
pub enum Confirm<'a> {
    /// `--yes`: go ahead.
    Yes,
    /// Someone at a terminal: called with the plan; `true` goes ahead.
    Ask(&'a mut dyn FnMut(&ApplyReport) -> bool),
    /// No one to ask: refuse before anything is downloaded or journaled.
    Refuse,
}

/// One package the apply changes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlannedChange {
    pub name: String,
    /// "install", "upgrade" (a new digest, same placement), "move" (a new
    /// placement, and maybe a new digest) or "uninstall".
    pub action: &'static str,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
    /// The recorded placement differs from the new one (files move).
    #[serde(skip)]
    pub placement_changed: bool,
    /// With "move": the old and new targets and placements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<planner::Move>,
    /// The reference as the file writes it (a tag, usually), which
    /// resolved to `new_digest`; `None` for an uninstall.
    pub reference: Option<String>,
    /// The paths the package holds now (empty for an install).
    pub old_targets: Vec<String>,
    /// The paths it will hold (empty for an uninstall).
    pub new_targets: Vec<String>,
    /// Bytes of its layers not yet in the blob cache: downloaded from a
    /// registry, or copied from an OCI layout, before the transaction.
    pub fetch_bytes: u64,
    /// Files added, removed and changed: counted by a dry run from layers
    /// on this machine ([`filediff`]); `None` otherwise.
    pub files: Option<filediff::FileCounts>,
}

impl PlannedChange {
    /// `+ name digest`, `~ name old -> new`, `- name`.
    pub fn line(&self) -> String {
        let d = |x: &Option<String>| x.clone().unwrap_or_default();
        match self.action {
            "install" => format!("+ {} {}", self.name, d(&self.new_digest)),
            "upgrade" if self.old_digest == self.new_digest => {
                format!("~ {} {} (same digest, new placement)", self.name, d(&self.new_digest))
            }
            "upgrade" if self.placement_changed => {
                format!("~ {} {} -> {} (new placement)", self.name, d(&self.old_digest), d(&self.new_digest))
            }
            "upgrade" => format!("~ {} {} -> {}", self.name, d(&self.old_digest), d(&self.new_digest)),
            "move" => {
                let (from, to) = self.moved.as_ref().map(|m| m.paths()).unwrap_or_default();
                let digests = if self.old_digest == self.new_digest {
                    String::new()
                } else {
                    format!(" ({} -> {})", d(&self.old_digest), d(&self.new_digest))
                };
                format!("~ {} moved: {} -> {}{digests}", self.name, from.join(", "), to.join(", "))
            }
            _ => format!("- {}", self.name),
        }
    }

    /// The lines under [`PlannedChange::line`]: the reference, the
    /// placement that changes (`to = "/srv/a" -> "/srv/b"`), the targets
    /// added or removed, and the bytes to fetch. Indented four spaces.
    pub fn details(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = &self.reference {
            out.push(format!("    ref = {r:?}"));
        }
        if let Some(m) = &self.moved {
            out.extend(placement_diff(&m.old_placement, &m.new_placement).into_iter().map(|l| format!("    {l}")));
        }
        let list = |t: &[String]| t.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
        match self.action {
            "install" => out.push(format!("    targets = {}", list(&self.new_targets))),
            "uninstall" => out.push(format!("    targets = {} (removed)", list(&self.old_targets))),
            _ if self.old_targets != self.new_targets => {
                out.push(format!("    targets = {} -> {}", list(&self.old_targets), list(&self.new_targets)))
            }
            _ => {}
        }
        if self.new_digest.is_some() {
            out.push(format!("    fetch = {}", human_bytes(self.fetch_bytes)));
        }
        if let Some(f) = &self.files {
            out.push(format!("    files = {}", f.human()));
        }
        out
    }

    /// What it does to what is installed, in words: `uninstall demo`,
    /// `move demo to a new placement`, `upgrade demo`, `install demo`.
    pub fn what(&self) -> String {
        match self.action {
            "uninstall" => format!("uninstall {}", self.name),
            "move" => format!("move {} to a new placement", self.name),
            "upgrade" if self.needs_confirmation() => format!("move {} to a new placement", self.name),
            a => format!("{a} {}", self.name),
        }
    }

    /// True if the change removes or moves what is installed: an uninstall,
    /// or a change of placement ("move"; an "upgrade" whose placement
    /// differs). An apply asks before it runs one (`Confirm`).
    pub fn needs_confirmation(&self) -> bool {
        matches!(self.action, "uninstall" | "move")
            || (self.action == "upgrade" && (self.placement_changed || self.old_digest == self.new_digest))
    }
}

/// `key = "old" -> "new"` for each placement field that differs.
fn placement_diff(old: &crate::txn::PlacementRecord, new: &crate::txn::PlacementRecord) -> Vec<String> {
    let q = |v: &Option<String>| v.as_ref().map(|s| format!("{s:?}")).unwrap_or_else(|| "(none)".into());
    let mut out = Vec::new();
    for (key, a, b) in [
        ("profile", &old.profile, &new.profile),
        ("install-dir", &old.install_dir, &new.install_dir),
        ("db-version", &old.db_version, &new.db_version),
        ("to", &old.to, &new.to),
        ("platform", &old.platform, &new.platform),
    ] {
        if a != b {
            out.push(format!("{key} = {} -> {}", q(a), q(b)));
        }
    }
    if old.maps != new.maps {
        out.push(format!("map = {:?} -> {:?}", old.maps, new.maps));
    }
    out
}

/// `1.5 KiB`, `12 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return if n == 1 { "1 byte".into() } else { format!("{n} bytes") };
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// An installed package `apply --prune` leaves alone: the file does not
/// list it, and it did not apply it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeptPackage {
    pub name: String,
    /// The desired-state file that manages it; `None`: installed by hand.
    pub managed_by: Option<String>,
}

impl KeptPackage {
    /// `= name kept (managed by FILE)` / `= name kept (installed by hand)`.
    pub fn line(&self) -> String {
        match &self.managed_by {
            Some(f) => format!("= {} kept (managed by {f})", self.name),
            None => format!("= {} kept (installed by hand)", self.name),
        }
    }
}

/// What an apply did, or would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub file: String,
    /// The file's canonical path, recorded as the `managed_by` of every
    /// package it installs or changes (`None` for `rollback --apply`).
    pub managed_by: Option<String>,
    pub dry_run: bool,
    /// The transaction, if one ran.
    pub txn: Option<TxnId>,
    pub changes: Vec<PlannedChange>,
    /// Packages already as desired.
    pub unchanged: Vec<String>,
    /// With `--prune`: installed packages the file does not list and that
    /// another file, or a hand install, manages.
    pub kept: Vec<KeptPackage>,
    /// True if a change uninstalls or moves a package (the apply asked, or
    /// was given `--yes`).
    pub needs_confirmation: bool,
    /// The lock file written (or, with --dry-run, that would be).
    pub lock_file: Option<String>,
    /// The pins that moved in it.
    pub lock_changes: Vec<LockChange>,
    pub interrupted: bool,
}

impl ApplyReport {
    /// The changes that need confirmation, in words ([`PlannedChange::what`]).
    pub fn to_confirm(&self) -> Vec<String> {
        self.changes.iter().filter(|c| c.needs_confirmation()).map(PlannedChange::what).collect()
    }
}

/// What `stagehand update` moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateReport {
    pub file: String,
    pub lock_file: String,
    pub dry_run: bool,
    /// The pins that moved (or appeared, or went away).
    pub changes: Vec<LockChange>,
    /// Packages whose pin was resolved again.
    pub checked: Vec<String>,
}

/// Refuses a `--remove NAME` that is not installed, or that the file lists.
fn check_removals(set: &DesiredSet, remove: &[String], installed: &[PackageRecord]) -> Result<()> {
    for name in remove {
        if set.packages.iter().any(|p| &p.name == name) {
            return Err(Error::Refused(format!(
                "--remove {name}: {} lists {name}; drop it from the file first. Nothing was changed",
                set.path.display()
            )));
        }
        if !installed.iter().any(|i| &i.name == name) {
            return Err(Error::NotInstalled(name.clone()));
        }
    }
    Ok(())
}

/// `e`, prefixed with the file, line and package it comes from (usage
/// errors and interruptions keep their own form and exit code).
fn at_line(set: &DesiredSet, p: &desired::DesiredPackage, e: Error) -> Error {
    match e {
        Error::Plan(crate::plan::PlanError::BadMap { .. })
        | Error::Usage(_)
        | Error::Interrupted
        | Error::InFile { .. }
        | Error::Source(SourceError::Interrupted | SourceError::BadReference { .. }) => e,
        e => Error::InFile {
            place: format!("{}:{}: package {:?}", set.path.display(), p.line, p.name),
            cause: Box::new(e),
        },
    }
}

/// `e` of the transaction that makes `changes`, placed in the file: the
/// changed packages whose targets or names it mentions (all of them if it
/// mentions none), with their lines. Usage errors and interruptions keep
/// their own form.
fn in_file(set: &DesiredSet, changes: &[PlannedChange], e: Error) -> Error {
    if matches!(e, Error::Usage(_) | Error::Interrupted | Error::InFile { .. }) {
        return e;
    }
    let text = e.to_string();
    let mentions = |c: &PlannedChange| {
        text.contains(&format!("{:?}", c.name))
            || c.new_targets.iter().chain(&c.old_targets).any(|t| text.contains(t.as_str()))
    };
    let mut named: Vec<&PlannedChange> = changes.iter().filter(|c| mentions(c)).collect();
    if named.is_empty() {
        named = changes.iter().collect();
    }
    let line = |c: &PlannedChange| set.packages.iter().find(|p| p.name == c.name).map(|p| p.line);
    let file = set.path.display();
    let place = match named.as_slice() {
        [one] => match line(one) {
            Some(l) => format!("{file}:{l}: package {:?}", one.name),
            None => format!("{file}: package {:?}", one.name),
        },
        many => {
            let each: Vec<String> = many
                .iter()
                .map(|c| match line(c) {
                    Some(l) => format!("{:?} (line {l})", c.name),
                    None => format!("{:?}", c.name),
                })
                .collect();
            format!("{file}: packages {}", each.join(", "))
        }
    };
    Error::InFile { place, cause: Box::new(e) }
}

/// "db, demo and plugin".
fn and_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl Installer {
    /// Switches the installed set to `set` in one transaction (see the module doc).
    pub fn apply(&mut self, set: &DesiredSet, opts: &ApplyOptions, confirm: Confirm) -> Result<ApplyReport> {
        self.apply_showing(set, opts, confirm, &mut |_| {})
    }

    /// [`Installer::apply`], calling `show` with the plan as soon as it is
    /// known: before it is confirmed, checked by the planner, fetched or
    /// journaled, so a plan that then fails was still shown.
    pub fn apply_showing(
        &mut self,
        set: &DesiredSet,
        opts: &ApplyOptions,
        confirm: Confirm,
        show: &mut dyn FnMut(&ApplyReport),
    ) -> Result<ApplyReport> {
        let lock_path = lockfile::path_for(&set.path);
        let old_lock = LockFile::read(&lock_path)?;
        if opts.locked {
            let lock = old_lock.as_ref().ok_or_else(|| {
                Error::Refused(format!(
                    "--locked: there is no lock file {}; nothing was changed. `stagehand lock --file {}` writes it",
                    lock_path.display(),
                    set.path.display()
                ))
            })?;
            pins::check_agreement(set, lock, &lock_path)?;
        }
        let installed = self.journal.packages()?;
        check_removals(set, &opts.remove, &installed)?;
        let me = set.manager();
        // Manifests only: nothing is downloaded before the plan is confirmed.
        let pinned = self.pin_set(set, old_lock.as_ref(), &|_| false)?;
        if let (true, Some(lock)) = (opts.locked, &old_lock) {
            pins::check_signers(set, lock, &pinned.lock, &lock_path)?;
        }
        let mut puts = Vec::new();
        let mut removes = Vec::new();
        let mut planned = Vec::new();
        let mut unchanged = Vec::new();
        let mut to_fetch = Vec::new();
        for (p, r) in set.packages.iter().zip(pinned.packages) {
            let mut req = r.request;
            if req.keep_versions == 0 {
                req.keep_versions = opts.keep_versions;
            }
            req.registry.progress = opts.progress;
            let mut put = self.put_request(&r.source_ref, r.artifact, r.blobs, &req).map_err(|e| at_line(set, p, e))?;
            // The registry keeps the reference as the file writes it (resolved), not its pinned form.
            put.source = p.request.source.clone();
            put.managed_by = Some(me.clone());
            let old = installed.iter().find(|i| i.name == p.name);
            if old.is_some_and(|o| o.manifest_digest == put.artifact.manifest_digest && o.placement == put.placement) {
                unchanged.push(p.name.clone());
                continue;
            }
            let moved = old.and_then(|o| planner::placement_move(o, &put));
            let cache = crate::source::cache::BlobCache::new(&self.state_dir);
            let files = if opts.dry_run { filediff::for_change(&self.journal, &cache, old, Some(&put)) } else { None };
            let fetch_bytes = put
                .artifact
                .manifest
                .layers
                .iter()
                .filter(|d| !cache.contains(d).unwrap_or(false))
                .map(|d| d.size)
                .sum();
            planned.push(PlannedChange {
                name: p.name.clone(),
                action: match (old, &moved) {
                    (None, _) => "install",
                    (Some(_), Some(_)) => "move",
                    (Some(_), None) => "upgrade",
                },
                old_digest: old.map(|o| o.manifest_digest.clone()),
                new_digest: Some(put.artifact.manifest_digest.clone()),
                placement_changed: old.is_some_and(|o| o.placement != put.placement),
                moved,
                reference: Some(p.reference.clone()),
                old_targets: old.map(|o| o.targets.iter().map(|t| t.path.clone()).collect()).unwrap_or_default(),
                new_targets: put.planned.iter().map(|t| t.path.to_string_lossy().into_owned()).collect(),
                fetch_bytes,
                files,
            });
            puts.push(ChangeRequest::Put(Box::new(put)));
            to_fetch.push((p, req));
        }
        let mut kept = Vec::new();
        for i in installed.iter().filter(|i| !set.packages.iter().any(|p| p.name == i.name)) {
            if opts.remove.contains(&i.name) || (opts.prune && i.managed_by.as_deref() == Some(me.as_str())) {
                planned.push(PlannedChange {
                    name: i.name.clone(),
                    action: "uninstall",
                    old_digest: Some(i.manifest_digest.clone()),
                    old_targets: i.targets.iter().map(|t| t.path.clone()).collect(),
                    files: if opts.dry_run {
                        let cache = crate::source::cache::BlobCache::new(&self.state_dir);
                        filediff::for_change(&self.journal, &cache, Some(i), None)
                    } else {
                        None
                    },
                    ..Default::default()
                });
                removes.push(i.name.clone());
            } else if opts.prune {
                kept.push(KeptPackage { name: i.name.clone(), managed_by: i.managed_by.clone() });
            }
        }
        let mut report = ApplyReport {
            file: set.path.display().to_string(),
            managed_by: Some(me.clone()),
            dry_run: opts.dry_run,
            txn: None,
            needs_confirmation: planned.iter().any(PlannedChange::needs_confirmation),
            changes: planned,
            unchanged,
            kept,
            lock_file: Some(lock_path.display().to_string()),
            lock_changes: pinned.changes,
            interrupted: false,
        };
        show(&report);
        let removes = removes.into_iter().map(|name| ChangeRequest::Remove { name });
        if opts.dry_run {
            if !report.changes.is_empty() {
                // Every refusal, decided now; nothing is journaled or staged.
                let changes = puts.into_iter().chain(removes).collect();
                planner::plan(
                    &self.state_dir,
                    &self.journal,
                    &installed,
                    0,
                    Op::Apply,
                    changes,
                    self.discard_local_files,
                )
                .map_err(|e| in_file(set, &report.changes, e))?;
            }
            return Ok(report);
        }
        if report.needs_confirmation {
            confirmed(&report, confirm)?;
        }
        if !report.changes.is_empty() {
            drop(puts);
            // The changed packages' blobs, fetched by the digests pinned above.
            let mut changes = Vec::new();
            for (p, req) in to_fetch {
                let (source_ref, artifact, blobs) = self.fetch(&req).map_err(|e| at_line(set, p, e))?;
                let mut put = self.put_request(&source_ref, artifact, blobs, &req).map_err(|e| at_line(set, p, e))?;
                put.source = p.request.source.clone();
                put.managed_by = Some(me.clone());
                changes.push(ChangeRequest::Put(Box::new(put)));
            }
            changes.extend(removes);
            let rec =
                self.run_changes(Op::Apply, changes, opts.progress).map_err(|e| in_file(set, &report.changes, e))?;
            report.txn = Some(rec.id);
            report.interrupted = interrupt::requested();
        }
        if !opts.locked {
            pinned.lock.write(&lock_path)?;
        }
        Ok(report)
    }

    /// Pins every reference of `set` in its lock file, installing nothing:
    /// unchanged entries keep their pins, new or changed ones are resolved.
    /// Returns the lock, its path and the pins that moved.
    pub fn lock(&mut self, set: &DesiredSet) -> Result<(LockFile, std::path::PathBuf, Vec<LockChange>)> {
        let path = lockfile::path_for(&set.path);
        let old = LockFile::read(&path)?;
        let pinned = self.pin_set(set, old.as_ref(), &|_| false)?;
        pinned.lock.write(&path)?;
        Ok((pinned.lock, path, pinned.changes))
    }

    /// `stagehand update [NAME…]`: resolves the references of the named
    /// packages (all if `names` is empty) again, whatever the lock pins,
    /// and writes the lock file (not with `dry_run`). Installs nothing.
    pub fn update(&mut self, set: &DesiredSet, names: &[String], dry_run: bool) -> Result<UpdateReport> {
        for n in names {
            if !set.packages.iter().any(|p| &p.name == n) {
                return Err(Error::Refused(format!(
                    "{} lists no package {n:?}; nothing was changed",
                    set.path.display()
                )));
            }
        }
        let path = lockfile::path_for(&set.path);
        let old = LockFile::read(&path)?;
        let all = names.is_empty();
        let pinned = self.pin_set(set, old.as_ref(), &|n| all || names.iter().any(|x| x == n))?;
        if !dry_run {
            pinned.lock.write(&path)?;
        }
        Ok(UpdateReport {
            file: set.path.display().to_string(),
            lock_file: path.display().to_string(),
            dry_run,
            changes: pinned.changes,
            checked: set.packages.iter().map(|p| p.name.clone()).filter(|n| all || names.contains(n)).collect(),
        })
    }

    /// Undoes the last completed apply in one transaction: every package it
    /// changed goes back to the version it had before (from the blob cache),
    /// and every package it installed fresh is uninstalled. It asks no
    /// confirmation: `rollback --apply` names what it removes and moves.
    /// A package it changes keeps its `managed_by`; one it installs again
    /// (an apply pruned it) is recorded as installed by hand, since kept
    /// versions do not record their manager.
    pub fn rollback_apply(
        &mut self,
        keep: usize,
        limits: crate::plan::limits::Limits,
        flags: &super::SignatureFlags,
    ) -> Result<ApplyReport> {
        let history = self.journal.history()?;
        let last = history
            .iter()
            .rev()
            .find(|e| e.op == Op::Apply && matches!(e.outcome, Outcome::Done | Outcome::RolledForwardByRecovery))
            .ok_or_else(|| Error::Refused("no apply has completed here; there is nothing to roll back".into()))?;
        let installed = self.journal.packages()?;
        let mut changes = Vec::new();
        let mut planned = Vec::new();
        for c in &last.changes {
            let now = installed.iter().find(|p| p.name == c.package);
            match &c.old {
                None => {
                    if let Some(n) = now {
                        planned.push(PlannedChange {
                            name: c.package.clone(),
                            action: "uninstall",
                            old_digest: Some(n.manifest_digest.clone()),
                            old_targets: n.targets.iter().map(|t| t.path.clone()).collect(),
                            ..Default::default()
                        });
                        changes.push(ChangeRequest::Remove { name: c.package.clone() });
                    }
                }
                Some(v) => {
                    if now.is_some_and(|n| n.manifest_digest == v.manifest_digest && n.placement == v.placement) {
                        continue;
                    }
                    let put = self.rollback_put(&c.package, v, keep, limits, flags)?;
                    planned.push(PlannedChange {
                        name: c.package.clone(),
                        action: if now.is_some() { "upgrade" } else { "install" },
                        old_digest: now.map(|n| n.manifest_digest.clone()),
                        new_digest: Some(v.manifest_digest.clone()),
                        placement_changed: now.is_some_and(|n| n.placement != v.placement),
                        reference: Some(v.source.clone()),
                        old_targets: now
                            .map(|n| n.targets.iter().map(|t| t.path.clone()).collect())
                            .unwrap_or_default(),
                        new_targets: put.planned.iter().map(|t| t.path.to_string_lossy().into_owned()).collect(),
                        ..Default::default()
                    });
                    changes.push(ChangeRequest::Put(Box::new(put)));
                }
            }
        }
        let mut report = ApplyReport {
            file: format!("txn {}", last.id),
            managed_by: None,
            dry_run: false,
            txn: None,
            changes: planned,
            unchanged: Vec::new(),
            kept: Vec::new(),
            // Its words name what it removes or moves: no question.
            needs_confirmation: false,
            lock_file: None,
            lock_changes: Vec::new(),
            interrupted: false,
        };
        if !changes.is_empty() {
            let rec = self.run_changes(Op::Apply, changes, false)?;
            report.txn = Some(rec.id);
            report.interrupted = interrupt::requested();
        }
        Ok(report)
    }
}

/// Goes ahead only if `confirm` says so; otherwise refuses, naming what the
/// apply would remove or move. Nothing has been downloaded or journaled yet.
fn confirmed(report: &ApplyReport, confirm: Confirm) -> Result<()> {
    let what = and_list(&report.to_confirm());
    match confirm {
        Confirm::Yes => Ok(()),
        Confirm::Ask(ask) => {
            if ask(report) {
                return Ok(());
            }
            Err(Error::Refused(format!("not confirmed: this apply would {what}. Nothing was changed")))
        }
        Confirm::Refuse => Err(Error::Refused(format!(
            "this apply would {what}, and there is no terminal to confirm it on. Nothing was changed. \
             Pass --yes to go ahead (--dry-run shows the whole plan)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: &'static str, old: Option<&str>, new: Option<&str>, moved: bool) -> PlannedChange {
        PlannedChange {
            name: "p".into(),
            action,
            old_digest: old.map(String::from),
            new_digest: new.map(String::from),
            placement_changed: moved,
            ..Default::default()
        }
    }

    #[test]
    fn only_removals_and_moves_need_confirmation() {
        assert!(!change("install", None, Some("n"), false).needs_confirmation());
        assert!(!change("upgrade", Some("o"), Some("n"), false).needs_confirmation());
        assert!(change("upgrade", Some("o"), Some("n"), true).needs_confirmation());
        assert!(change("upgrade", Some("d"), Some("d"), true).needs_confirmation());
        assert!(change("uninstall", Some("o"), None, false).needs_confirmation());
        assert!(change("move", Some("o"), Some("n"), true).needs_confirmation());
        assert_eq!(change("uninstall", Some("o"), None, false).what(), "uninstall p");
        assert_eq!(change("upgrade", Some("d"), Some("d"), true).what(), "move p to a new placement");
        assert_eq!(and_list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
    }
}
