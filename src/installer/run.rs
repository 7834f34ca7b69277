//! The executor of a planned transaction: import layout blobs into the
//! cache, journal the plan, stage every target, journal `staged`, commit,
//! then finish through `exec::drive` — the code recovery runs too. Before
//! the commit point every error rolls the whole transaction back; after it,
//! the transaction is finished (retried once, else left for recovery).

use std::path::{Path, PathBuf};

use super::planner::{ChangeWork, StageItem, TxnPlan};
use super::resolve::import_layout_blobs;
use super::{adopt, exec, interrupt, io, now, progress, space, stage, Error, Installer, Result};
use crate::fsops;
use crate::journal::{Journal, JournalError};
use crate::plan::PlannedContent;
use crate::source::SourceError;
use crate::txn::{
    EntryKind, FileEntry, InstalledTarget, NewContent, Outcome, PackageRecord, ServedBlob, ServedRecord, Step,
    TxnRecord,
};

impl Installer {
    /// Runs a planned transaction to its end. Returns the finished record.
    pub(super) fn execute(&self, plan: TxnPlan, show_progress: bool) -> Result<TxnRecord> {
        let TxnPlan { mut rec, stage, mut work, total_bytes, space } = plan;
        tracing::debug!(txn = rec.id, "executing");
        // What staging may write per filesystem.
        let budget = space.budget()?;
        self.journal.write_txn(&rec, "planned")?;
        tracing::debug!(txn = rec.id, targets = rec.targets.len(), packages = rec.changes.len(), "planned");
        let stages_something = rec.targets.iter().any(|t| t.new.is_some());
        if stages_something {
            // Everything from here until the commit point rolls back on error.
            // What --adopt replaces is kept first, durable in the blob cache
            // before the `staged` record (so before the commit point).
            if let Err(e) = capture_adopted(&self.state_dir, &mut rec, &mut work) {
                return Err(self.roll_back(rec, e));
            }
            let bar = progress::Progress::new(total_bytes, show_progress, &rec.package_names());
            let staged = stage_all(&self.journal, &mut rec, &stage, &mut work, &bar, &budget);
            bar.finish();
            if let Err(e) = staged {
                // A blob download that failed is the cause, not the read that saw it.
                let download = work.iter().filter_map(|w| w.blobs.as_deref()).find_map(|b| b.abort());
                let cause = match download {
                    _ if interrupt::requested() => Error::Interrupted,
                    Some(SourceError::Interrupted) => Error::Interrupted,
                    Some(download) => download.into(),
                    None => e,
                };
                return Err(self.roll_back(rec, cause));
            }
            // Every blob complete in the cache (verified, fsynced) before the staged record.
            for b in work.iter().filter_map(|w| w.blobs.as_deref()) {
                match b.complete() {
                    Ok(()) => {}
                    Err(SourceError::Interrupted) => return Err(self.roll_back(rec, Error::Interrupted)),
                    Err(e) => return Err(self.roll_back(rec, e.into())),
                }
            }
            // Which host served each fetched blob: made durable by the staged record's flush.
            let served = served_record(&rec, &work);
            if !served.blobs.is_empty() {
                self.journal.write_served(rec.id, &served).map_err(|e| self.roll_back(rec.clone(), e.into()))?;
            }
            self.journal.write_txn(&rec, "staged").map_err(|e| self.roll_back(rec.clone(), e.into()))?;
            // The last boundary before the commit point: a Ctrl-C here still rolls back.
            if interrupt::requested() {
                return Err(self.roll_back(rec, Error::Interrupted));
            }
            tracing::debug!(txn = rec.id, "staged");
        }
        rec.step = Step::Committed;
        if let Err(e) = self.journal.write_txn(&rec, "commit") {
            return Err(self.commit_failed(rec, e));
        }
        tracing::debug!(txn = rec.id, "committed");
        let rec = self.finish_committed(rec)?;
        if self.cleanup_later {
            // For the caller to keep after it reports (`Installer::keep_layout_blobs`).
            let mut later = self.layouts_later.lock().unwrap_or_else(|p| p.into_inner());
            later.extend(
                work.iter().filter_map(|w| w.layout.as_ref()).map(|(l, a)| (l.clone(), a.manifest_digest.clone())),
            );
        } else {
            self.import_layouts(&work);
        }
        self.prune_quietly();
        Ok(rec)
    }

    /// Keeps each layout version's blobs in the cache, so a later rollback
    /// is offline. After the transaction finished: no guarantee of this one
    /// rests on it, so a failure is a warning (a rollback to this version
    /// would then say its blobs are missing and change nothing).
    fn import_layouts(&self, work: &[ChangeWork]) {
        for (layout, artifact) in work.iter().filter_map(|w| w.layout.as_ref()) {
            keep_or_warn(layout, import_layout_blobs(&self.state_dir, layout, artifact));
        }
        tracing::debug!("layout blobs kept in the cache");
    }

    /// What [`Installer::set_cleanup_later`] left to keep: each layout and
    /// the manifest digest a transaction installed from it.
    pub fn layouts_to_keep(&self) -> Vec<(PathBuf, String)> {
        self.layouts_later.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps the blobs of manifest `digest` of `layout` in the cache (as a
    /// transaction does before it returns, unless its caller keeps them
    /// after reporting). The manifest is found in the layout by its digest
    /// again; a failure is a warning, as there.
    pub fn keep_layout_blobs(&self, layout: &Path, digest: &str) {
        let kept = crate::source::OciLayout::open(layout)
            .and_then(|l| l.resolve(&crate::source::reference::Selector::Digest(digest.to_string()), digest))
            .map_err(Error::from)
            .and_then(|artifact| import_layout_blobs(&self.state_dir, layout, &artifact));
        keep_or_warn(layout, kept);
        tracing::debug!("layout blobs kept in the cache");
    }

    /// The commit record could not be written (it may or may not be on
    /// disk). No target has moved yet, so rolling back is right either way:
    /// if the record did land, the rollback record written now supersedes it,
    /// and if even that fails, recovery finds the old content at every target.
    fn commit_failed(&self, mut rec: TxnRecord, e: JournalError) -> Error {
        rec.step = if rec.targets.iter().any(|t| t.new.is_some()) { Step::Staged } else { Step::Planned };
        self.roll_back(rec, e.into())
    }

    /// Rolls back a live transaction that failed before its commit point.
    fn roll_back(&self, mut rec: TxnRecord, cause: Error) -> Error {
        debug_assert!(!rec.step.is_committed(), "live rollback only before the commit point");
        let msg = cause.to_string();
        let fresh = rec.targets.iter().all(|t| t.old.is_none()) && rec.changes.iter().all(|c| c.old.is_none());
        match exec::drive(&self.journal, &mut rec, false, Some(msg)) {
            Ok(_) => Error::RolledBack { cause: Box::new(cause), fresh },
            Err(e) => Error::Refused(format!(
                "{cause}\nRolling back also failed ({e}); the next stagehand command (or `stagehand repair`) finishes the rollback."
            )),
        }
    }

    /// After the commit point: finish, retrying once through recovery.
    fn finish_committed(&self, mut rec: TxnRecord) -> Result<TxnRecord> {
        let first = match exec::drive(&self.journal, &mut rec, false, None) {
            Ok(Outcome::Done | Outcome::RolledForwardByRecovery) => return Ok(rec),
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
            None => Ok(rec),
            Some(mut r) => match exec::drive(&self.journal, &mut r, false, None) {
                Ok(Outcome::Done | Outcome::RolledForwardByRecovery) => Ok(r),
                Ok(_) => Err(Error::Refused("the transaction was rolled back after its commit point".into())),
                Err(_) => Err(Error::LeftForRecovery { cause: Box::new(first) }),
            },
        }
    }
}

fn keep_or_warn(layout: &Path, kept: Result<()>) {
    if let Err(e) = kept {
        tracing::warn!(
            error = %e, layout = %layout.display(),
            "could not keep this version's blobs in the cache; a rollback to it will need the layout"
        );
    }
}

/// Captures every target a change adopts (`installer::adopt`) and keeps
/// the captured version in its package's `previous` (rotated like any
/// other kept version); a fresh install's change records it as its `old`,
/// so `history` and `rollback --apply` see what it replaced.
fn capture_adopted(state_dir: &Path, rec: &mut TxnRecord, work: &mut [ChangeWork]) -> Result<()> {
    for (ci, w) in work.iter_mut().enumerate() {
        if w.adopt.is_empty() {
            continue;
        }
        let version = adopt::capture(state_dir, rec.id, &w.adopt)?;
        tracing::debug!(txn = rec.id, digest = %version.manifest_digest, "captured what --adopt replaces");
        if let Some(t) = w.template.as_mut() {
            t.previous.insert(w.adopt_slot.min(t.previous.len()), version.clone());
            t.previous.truncate(w.keep_previous);
        }
        if let Some(c) = rec.changes.get_mut(ci).filter(|c| c.old.is_none()) {
            c.old = Some(version);
        }
    }
    Ok(())
}

/// A staged target's part of its package's registry entry, before its file
/// list is written.
struct StagedTarget {
    path: String,
    kind: EntryKind,
    entries: Vec<FileEntry>,
}

/// Stages every target (and the files embedded in directory targets), then
/// makes them and their file lists durable and fills in each change's
/// registry entry.
fn stage_all(
    journal: &Journal,
    rec: &mut TxnRecord,
    items: &[StageItem],
    work: &mut [ChangeWork],
    bar: &progress::Progress,
    budget: &space::Budget,
) -> Result<()> {
    for d in &rec.created_dirs {
        fsops::create_dir_all_durable(Path::new(d), 0o755 & !fsops::umask(), "parent")
            .map_err(io(format!("creating {d}")))?;
    }
    let mut installed: Vec<Vec<StagedTarget>> = (0..work.len()).map(|_| Vec::new()).collect();
    for item in items {
        if interrupt::requested() {
            return Err(Error::Interrupted);
        }
        let t = &mut rec.targets[item.target];
        let change = t.change as usize;
        let w = &work[change];
        let Some(blobs) = w.blobs.as_deref() else {
            return Err(Error::Refused(format!("{}: no blob source for new content (a planner bug)", t.path)));
        };
        let blobs = bar.over(blobs);
        let staging = PathBuf::from(&t.staging);
        let meter = budget.meter(Path::new(&t.path))?;
        let staged = match &item.content {
            PlannedContent::Dir(layers) => {
                stage::stage_dir(&staging, layers, &item.carry, &blobs, w.limits, &meter, w.exact)?
            }
            PlannedContent::File(desc, bytes) => {
                stage::stage_file(&staging, desc, *bytes, &blobs, w.limits, &meter, w.exact)?
            }
        };
        let kind = if matches!(item.content, PlannedContent::Dir(_)) { EntryKind::Dir } else { EntryKind::File };
        let mut identity = staged.identity;
        if kind == EntryKind::File {
            identity.sha256 = staged.entries.first().map(|e| exec::digest_bytes(&e.sha256));
        }
        t.new = Some(NewContent { kind, identity: Some(identity) });
        installed[change].push(StagedTarget { path: t.path.clone(), kind, entries: staged.entries });
        for e in &item.embedded {
            let ew = &work[e.change];
            let Some(eblobs) = ew.blobs.as_deref() else {
                return Err(Error::Refused(format!("{}: no blob source for new content (a planner bug)", e.path)));
            };
            let eblobs = bar.over(eblobs);
            let PlannedContent::File(desc, bytes) = &e.content else {
                return Err(Error::Refused(format!("{}: only files are placed inside another target", e.path)));
            };
            let at = staging.join(&e.rel);
            if let Some(parent) = at.parent().filter(|p| !p.exists()) {
                fsops::create_dir_all_durable(parent, 0o755 & !fsops::umask(), "staging")
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            let staged = stage::stage_file(&at, desc, *bytes, &eblobs, ew.limits, &meter, ew.exact)?;
            installed[e.change].push(StagedTarget {
                path: e.path.clone(),
                kind: EntryKind::File,
                entries: staged.entries,
            });
        }
    }
    let staged_paths: Vec<PathBuf> =
        rec.targets.iter().filter(|t| t.new.is_some()).map(|t| PathBuf::from(&t.staging)).collect();
    tracing::debug!(txn = rec.id, "written; making durable");
    stage::make_durable(&staged_paths)?;
    tracing::debug!(txn = rec.id, "durable");
    // The file lists, durable before the `staged` record that names them.
    let lists: Vec<&[FileEntry]> = installed.iter().flatten().map(|t| t.entries.as_slice()).collect();
    let mut refs = journal.write_file_lists(&lists)?.into_iter();
    rec.step = Step::Staged;
    let at = now();
    for (ci, w) in work.iter_mut().enumerate() {
        let mut targets = Vec::with_capacity(installed[ci].len());
        for t in std::mem::take(&mut installed[ci]) {
            let file_list = refs.next().ok_or_else(|| Error::Refused("a file list went missing (a bug)".into()))?;
            targets.push(InstalledTarget { path: t.path, kind: t.kind, file_list });
        }
        if let Some(template) = w.template.take() {
            rec.changes[ci].new_package = Some(PackageRecord { installed_at: at, txn: rec.id, targets, ..template });
        }
    }
    Ok(())
}

/// What each change's pull fetched, and from which host (`work[i]` is
/// `rec.changes[i]`'s).
fn served_record(rec: &TxnRecord, work: &[ChangeWork]) -> ServedRecord {
    let blobs = rec
        .changes
        .iter()
        .zip(work)
        .filter_map(|(c, w)| w.blobs.as_deref().map(|b| (c, b.served())))
        .flat_map(|(c, served)| {
            served.into_iter().map(|s| ServedBlob { package: c.name.clone(), digest: s.digest, host: s.host })
        })
        .collect();
    ServedRecord { blobs }
}
