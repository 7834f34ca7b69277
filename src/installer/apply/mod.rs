//! `apply`: switch the installed set to a desired-state file's, in ONE
//! transaction. Every reference is resolved and every blob fetched (a
//! registry pulled into the cache; a layout imported before the plan is
//! journaled) first (a dry run and `lock` resolve manifests only, and
//! write nothing to the cache); what differs — a new package, a new digest or
//! placement, and with `prune` a package the file no longer lists — becomes
//! one change each of a single transaction, planned and run by the same
//! planner and executor as `install`. Also `lock` (pin every reference to
//! the digest it resolves to) and the rollback of an apply.

pub mod desired;
pub mod lockfile;

use std::collections::BTreeMap;

use super::planner::{self, ChangeRequest};
use super::{interrupt, Error, Installer, Result};
use crate::source::{self, reference::LAYOUT_SCHEME, SourceRef};
use crate::txn::{Op, Outcome, TxnId};
use desired::DesiredSet;
use lockfile::{LockFile, Pin, LOCK_VERSION};

/// How to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// Uninstall installed packages the file does not list.
    pub prune: bool,
    /// Install exactly the lock file's digests; fail if it disagrees with the file.
    pub locked: bool,
    /// Draw the extraction bar.
    pub progress: bool,
    /// `--keep-versions` for packages whose entry does not set it.
    pub keep_versions: usize,
}

/// One package the apply changes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedChange {
    pub name: String,
    /// "install", "upgrade" (a new digest, same placement), "move" (a new
    /// placement, and maybe a new digest) or "uninstall".
    pub action: &'static str,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
    /// With "move": the old and new targets and placements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<planner::Move>,
}

impl PlannedChange {
    /// `+ name digest`, `~ name old → new`, `- name`.
    pub fn line(&self) -> String {
        let d = |x: &Option<String>| x.clone().unwrap_or_default();
        match self.action {
            "install" => format!("+ {} {}", self.name, d(&self.new_digest)),
            "upgrade" if self.old_digest == self.new_digest => {
                format!("~ {} {} (same digest, new placement)", self.name, d(&self.new_digest))
            }
            "upgrade" => format!("~ {} {} → {}", self.name, d(&self.old_digest), d(&self.new_digest)),
            "move" => {
                let (from, to) = self.moved.as_ref().map(|m| m.paths()).unwrap_or_default();
                let digests = if self.old_digest == self.new_digest {
                    String::new()
                } else {
                    format!(" ({} → {})", d(&self.old_digest), d(&self.new_digest))
                };
                format!("~ {} moved: {} -> {}{digests}", self.name, from.join(", "), to.join(", "))
            }
            _ => format!("- {}", self.name),
        }
    }
}

/// What an apply did, or would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub file: String,
    pub dry_run: bool,
    /// The transaction, if one ran.
    pub txn: Option<TxnId>,
    pub changes: Vec<PlannedChange>,
    /// Packages already as desired.
    pub unchanged: Vec<String>,
    /// The lock file written (or, with --dry-run, that would be).
    pub lock_file: Option<String>,
    pub interrupted: bool,
}

/// `ref` pinned to `digest`: the same layout or repository, by digest.
fn pinned(source: &str, digest: &str) -> Result<String> {
    Ok(match source::reference::parse(source)? {
        SourceRef::Layout { path, .. } => format!("{LAYOUT_SCHEME}{}@{digest}", path.display()),
        SourceRef::Registry { registry, repository, .. } => format!("{registry}/{repository}@{digest}"),
    })
}

fn platform_of(req: &super::InstallRequest) -> String {
    let p = req.registry.platform.clone().unwrap_or_else(source::layout::host_platform);
    format!("{}/{}", p.os, p.architecture)
}

/// Refuses, naming every difference, when the lock does not pin exactly
/// the file's packages and references.
fn check_agreement(set: &DesiredSet, lock: &LockFile, lock_path: &std::path::Path) -> Result<()> {
    let mut diffs = Vec::new();
    for p in &set.packages {
        match lock.package.get(&p.name) {
            None => diffs.push(format!("{} is not in the lock", p.name)),
            Some(pin) if pin.reference != p.reference => {
                diffs.push(format!("{}: the file says {:?}, the lock {:?}", p.name, p.reference, pin.reference))
            }
            Some(pin) if pin.platform != platform_of(&p.request) => diffs.push(format!(
                "{}: platform {} here, {} in the lock",
                p.name,
                platform_of(&p.request),
                pin.platform
            )),
            Some(_) => {}
        }
    }
    for name in lock.package.keys() {
        if !set.packages.iter().any(|p| &p.name == name) {
            diffs.push(format!("{name} is in the lock but not in the file"));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "--locked: {} and {} disagree ({}); nothing was changed. Run `stagehand lock --file {}` to pin the file's \
         references again, or apply without --locked",
        set.path.display(),
        lock_path.display(),
        diffs.join("; "),
        set.path.display()
    )))
}

impl Installer {
    /// Switches the installed set to `set` in one transaction (see the module doc).
    pub fn apply(&mut self, set: &DesiredSet, opts: ApplyOptions) -> Result<ApplyReport> {
        let lock_path = lockfile::path_for(&set.path);
        let lock = if opts.locked {
            let lock = LockFile::read(&lock_path)?.ok_or_else(|| {
                Error::Refused(format!(
                    "--locked: there is no lock file {}; nothing was changed. `stagehand lock --file {}` writes it",
                    lock_path.display(),
                    set.path.display()
                ))
            })?;
            check_agreement(set, &lock, &lock_path)?;
            Some(lock)
        } else {
            None
        };
        let installed = self.journal.packages()?;
        let mut changes = Vec::new();
        let mut planned = Vec::new();
        let mut unchanged = Vec::new();
        let mut pins = BTreeMap::new();
        for p in &set.packages {
            let mut req = p.request.clone();
            if req.keep_versions == 0 {
                req.keep_versions = opts.keep_versions;
            }
            req.registry.progress = opts.progress;
            if let Some(pin) = lock.as_ref().and_then(|l| l.package.get(&p.name)) {
                req.source = pinned(&req.source, &pin.digest)?;
            }
            // A dry run resolves manifests only: no blob is downloaded, nothing enters the cache.
            let (source_ref, artifact, blobs) = if opts.dry_run { self.resolve_only(&req)? } else { self.fetch(&req)? };
            pins.insert(
                p.name.clone(),
                Pin {
                    reference: p.reference.clone(),
                    digest: artifact.manifest_digest.clone(),
                    platform: platform_of(&req),
                },
            );
            let mut put = self.put_request(&source_ref, artifact, blobs, &req)?;
            // The registry keeps the reference as resolved from the file, not its pinned form.
            put.source = p.request.source.clone();
            let old = installed.iter().find(|i| i.name == p.name);
            if old.is_some_and(|o| o.manifest_digest == put.artifact.manifest_digest && o.placement == put.placement) {
                unchanged.push(p.name.clone());
                continue;
            }
            let moved = old.and_then(|o| planner::placement_move(o, &put));
            planned.push(PlannedChange {
                name: p.name.clone(),
                action: match (old, &moved) {
                    (None, _) => "install",
                    (Some(_), Some(_)) => "move",
                    (Some(_), None) => "upgrade",
                },
                old_digest: old.map(|o| o.manifest_digest.clone()),
                new_digest: Some(put.artifact.manifest_digest.clone()),
                moved,
            });
            changes.push(ChangeRequest::Put(Box::new(put)));
        }
        if opts.prune {
            for i in &installed {
                if !set.packages.iter().any(|p| p.name == i.name) {
                    planned.push(PlannedChange {
                        name: i.name.clone(),
                        action: "uninstall",
                        old_digest: Some(i.manifest_digest.clone()),
                        new_digest: None,
                        moved: None,
                    });
                    changes.push(ChangeRequest::Remove { name: i.name.clone() });
                }
            }
        }
        let new_lock = LockFile { version: LOCK_VERSION, package: pins };
        let mut report = ApplyReport {
            file: set.path.display().to_string(),
            dry_run: opts.dry_run,
            txn: None,
            changes: planned,
            unchanged,
            lock_file: Some(lock_path.display().to_string()),
            interrupted: false,
        };
        if opts.dry_run {
            if !changes.is_empty() {
                // Every refusal, decided now; nothing is journaled or staged.
                planner::plan(&self.state_dir, &self.journal, &installed, 0, Op::Apply, changes)?;
            }
            return Ok(report);
        }
        if !changes.is_empty() {
            let rec = self.run_changes(Op::Apply, changes, opts.progress)?;
            report.txn = Some(rec.id);
            report.interrupted = interrupt::requested();
        }
        if lock.is_none() {
            new_lock.write(&lock_path)?;
        }
        Ok(report)
    }

    /// Resolves every reference of `set` and writes the lock file (nothing
    /// is installed). Returns it and its path.
    pub fn lock(&mut self, set: &DesiredSet) -> Result<(LockFile, std::path::PathBuf)> {
        let mut pins = BTreeMap::new();
        for p in &set.packages {
            let (_, artifact, _) = self.resolve_only(&p.request)?;
            pins.insert(
                p.name.clone(),
                Pin {
                    reference: p.reference.clone(),
                    digest: artifact.manifest_digest,
                    platform: platform_of(&p.request),
                },
            );
        }
        let lock = LockFile { version: LOCK_VERSION, package: pins };
        let path = lockfile::path_for(&set.path);
        lock.write(&path)?;
        Ok((lock, path))
    }

    /// Undoes the last completed apply in one transaction: every package it
    /// changed goes back to the version it had before (from the blob cache),
    /// and every package it installed fresh is uninstalled.
    pub fn rollback_apply(&mut self, keep: usize, limits: crate::plan::limits::Limits) -> Result<ApplyReport> {
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
                            new_digest: None,
                            moved: None,
                        });
                        changes.push(ChangeRequest::Remove { name: c.package.clone() });
                    }
                }
                Some(v) => {
                    if now.is_some_and(|n| n.manifest_digest == v.manifest_digest && n.placement == v.placement) {
                        continue;
                    }
                    let put = self.rollback_put(&c.package, v, keep, limits)?;
                    planned.push(PlannedChange {
                        name: c.package.clone(),
                        action: if now.is_some() { "upgrade" } else { "install" },
                        old_digest: now.map(|n| n.manifest_digest.clone()),
                        new_digest: Some(v.manifest_digest.clone()),
                        moved: None,
                    });
                    changes.push(ChangeRequest::Put(Box::new(put)));
                }
            }
        }
        let mut report = ApplyReport {
            file: format!("txn {}", last.id),
            dry_run: false,
            txn: None,
            changes: planned,
            unchanged: Vec::new(),
            lock_file: None,
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
