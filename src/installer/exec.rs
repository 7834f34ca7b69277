//! The executor: observes a transaction's paths, asks `txn::decide` what to
//! do, and performs the decision through `fsops`, journaling each step
//! before it runs. Used both by recovery and, after the commit point, by a
//! live install — one code path finishes both.

use std::path::Path;

use super::Error;
use crate::fsops;
use crate::journal::Journal;
use crate::txn::{decide, Action, Identity, Observed, Outcome, RecoveryDecision, Step, TargetProgress, TxnRecord};

/// What happened to one transaction found unfinished.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryReport {
    pub txn: u64,
    pub package: String,
    pub op: String,
    /// "rolled forward", "rolled back", or "refused" (then `reason` says why).
    pub outcome: String,
    pub step_found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Observes the three paths of every target: `lstat`, plus a sha256 of a
/// regular file whenever a recorded identity carries one: an inode match
/// alone is not enough, since inodes are reused.
pub fn observe(rec: &TxnRecord) -> Result<Vec<Observed>, Error> {
    rec.targets
        .iter()
        .map(|t| {
            let recorded: Vec<Identity> = t.old.into_iter().chain(t.new.as_ref().and_then(|n| n.identity)).collect();
            let id = |p: &str| -> Result<Option<Identity>, Error> {
                let io = |source| Error::Io { context: format!("observing {p}"), source };
                let Some(mut seen) = fsops::identity(Path::new(p)).map_err(io)? else { return Ok(None) };
                if recorded.iter().any(|r| r.needs_digest_of(&seen)) {
                    seen.sha256 = Some(digest_bytes(&fsops::sha256_file(Path::new(p)).map_err(io)?.1));
                }
                Ok(Some(seen))
            };
            Ok(Observed { target: id(&t.path)?, staging: id(&t.staging)?, backup: id(&t.backup)? })
        })
        .collect()
}

/// Lowercase hex sha256 → 32 bytes (all zeros if malformed, which matches nothing real).
pub fn digest_bytes(hex_digest: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(v) = hex::decode(hex_digest) {
        if v.len() == 32 {
            out.copy_from_slice(&v);
        }
    }
    out
}

fn run_action(a: &Action) -> std::io::Result<()> {
    match a {
        Action::Exchange { a, b, fallback_backup } => {
            let (a, b, fb) = (Path::new(a), Path::new(b), Path::new(fallback_backup));
            if !fsops::exchange(a, b, "swap")? {
                fsops::rename_new(b, fb, "backup")?;
                fsops::rename_new(a, b, "swap")?;
            }
            Ok(())
        }
        // Never over something: `decide` saw `to` empty (or cleared it).
        Action::Rename { from, to } => fsops::rename_new(Path::new(from), Path::new(to), "move"),
        Action::Remove { path } => fsops::remove_tree(Path::new(path), "cleanup"),
        Action::RemoveEmptyDir { path } => match fsops::remove_empty_dir(Path::new(path), "cleanup") {
            // Something else put files there meanwhile: leave it.
            // (fsops adds the path to the error, which keeps its kind but not its errno.)
            Err(e) if matches!(e.kind(), std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists) => {
                Ok(())
            }
            other => other,
        },
    }
}

fn act(a: &Action) -> Result<(), Error> {
    run_action(a).map_err(|source| Error::Io { context: format!("{a:?}"), source })
}

/// A cleanup failure that running again cannot fix: permissions stagehand
/// may not change, a filesystem mounted inside the path, a read-only mount.
fn lasting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), PermissionDenied | ResourceBusy | CrossesDevices | ReadOnlyFilesystem)
}

/// Runs the cleanup actions of a decided transaction. Every target already
/// holds its final content, so what is left to remove holds nothing the
/// package needs: a removal that fails for a lasting reason is left on disk,
/// named with its fix, and the transaction still finishes, so it is not
/// retried by every later command and blocks none of them. Any other error
/// (EIO, a crash) stops here, and recovery finishes the cleanup.
fn clean(actions: &[Action]) -> Result<Vec<String>, Error> {
    let mut left = Vec::new();
    for a in actions {
        match run_action(a) {
            Ok(()) => {}
            Err(e) if lasting(&e) => {
                let path = match a {
                    Action::Remove { path } | Action::RemoveEmptyDir { path } => path.clone(),
                    other => format!("{other:?}"),
                };
                let note = format!(
                    "{path} was left behind ({e}); it holds nothing stagehand needs: remove it by hand \
                     (`chmod -R u+w {path} && rm -rf {path}`, after `umount` of anything mounted inside it)"
                );
                tracing::warn!("cleanup could not remove a leftover: {note}");
                left.push(note);
            }
            Err(source) => return Err(Error::Io { context: format!("{a:?}"), source }),
        }
    }
    Ok(left)
}

/// Makes durable, before the transaction is finished, what its moves and
/// removals left in every directory it touched, whoever did them. An action
/// skips what it finds already done, but "found done" may be only in the
/// page cache: a retry after a failed fsync, or recovery after a kill in the
/// same boot, finds a removal done whose fsync never succeeded. (The
/// write-error campaign saw that on btrfs: the first fsync failed with the
/// transaction it forced, the retry found the tree gone and wrote `done`,
/// and the tree came back at the next mount.) One fsync per directory; on
/// an unchanged one it costs no journal commit.
///
/// Then one `syncfs` of each file system holding those directories, because
/// a directory's fsync returning 0 is not enough once the file system has
/// failed: ext4 (Debian's 6.1), whose journal aborted on the write errors
/// that failed the cleanup's first fsync, returns 0 from every later fsync,
/// and the retry wrote `done` for a removal that was in the page cache only.
/// Its `syncfs` waits on the journal and returns EIO. (XFS there also
/// returned 0 from both fsync and `syncfs` for a removal whose log write
/// then failed, milliseconds later: no check at this point can see that,
/// and `verify` names the copy that comes back a `leftover`.)
fn settle(rec: &TxnRecord) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let mut dirs = std::collections::BTreeSet::new();
    for t in &rec.targets {
        if let Some(d) = Path::new(&t.path).ancestors().skip(1).find(|d| d.is_dir()) {
            dirs.insert(d.to_path_buf());
        }
    }
    let mut file_systems = std::collections::BTreeMap::new();
    for d in &dirs {
        let io = |source| Error::Io { context: format!("making the changes in {} durable", d.display()), source };
        fsops::fsync_dir(d, "settle").map_err(io)?;
        file_systems.entry(std::fs::metadata(d).map_err(io)?.dev()).or_insert(d);
    }
    for d in file_systems.values() {
        fsops::syncfs(d, "settle").map_err(|source| Error::Io {
            context: format!("making the changes on the file system of {} durable", d.display()),
            source,
        })?;
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Observes, decides and carries out the decision for `rec`. Returns the
/// outcome recorded in the history. `by_recovery` marks who drove it;
/// `error` is the reason for a rollback requested by a live install.
pub fn drive(
    journal: &Journal,
    rec: &mut TxnRecord,
    by_recovery: bool,
    error: Option<String>,
) -> Result<Outcome, Error> {
    let observed = observe(rec)?;
    let decision = decide(rec, &observed);
    tracing::debug!(txn = rec.id, step = rec.step.name(), ?decision, "decided");
    if by_recovery && !rec.recovered {
        rec.recovered = true;
    }
    match decision {
        RecoveryDecision::Refuse { reason } => {
            Err(Error::RecoveryRefused { txn: rec.id, package: rec.package_names(), reason })
        }
        RecoveryDecision::RollForward { swaps, cleanup } => {
            // A record behind the disk (it says pre-commit, but a swap
            // happened) is rolled forward: journal the commit it lost first,
            // so a crash from here on keeps rolling forward.
            if !rec.step.is_committed() {
                rec.step = Step::Committed;
                journal.write_txn(rec, "commit")?;
            }
            for swap in &swaps {
                for t in rec.targets.iter_mut() {
                    if t.progress == TargetProgress::Swapping {
                        t.progress = TargetProgress::Swapped;
                    }
                }
                rec.targets[swap.index].progress = TargetProgress::Swapping;
                journal.write_txn(rec, "swapping")?;
                for a in &swap.actions {
                    act(a)?;
                }
            }
            for t in rec.targets.iter_mut() {
                t.progress = TargetProgress::Swapped;
            }
            // A live transaction ends here, once its swaps are durable: what
            // it replaced is removed after the command reports success, by
            // `finish_cleanups` (run by the command, a process it leaves
            // behind, or the next command's recovery).
            let removes = cleanup.iter().any(|a| match a {
                Action::Remove { path } => std::fs::symlink_metadata(path).is_ok(),
                _ => false,
            });
            if !by_recovery && rec.step != Step::Cleaning && removes {
                settle(rec)?;
                rec.step = Step::Cleaning;
                journal.finish_txn_leaving_cleanup(rec, now())?;
                tracing::debug!(txn = rec.id, "finished; its cleanup is left to run");
                return Ok(Outcome::Done);
            }
            if rec.step != Step::Cleaning {
                rec.step = Step::Cleaning;
                journal.write_txn(rec, "cleaning")?;
            }
            tracing::debug!(txn = rec.id, "swapped; cleaning");
            let left = clean(&cleanup)?;
            settle(rec)?;
            let outcome = if rec.recovered { Outcome::RolledForwardByRecovery } else { Outcome::Done };
            tracing::debug!(txn = rec.id, "cleaned");
            let note = (!left.is_empty()).then(|| left.join("; "));
            journal.finish_txn(rec, outcome, note, now())?;
            tracing::debug!(txn = rec.id, outcome = outcome.name(), "finished");
            Ok(outcome)
        }
        RecoveryDecision::RollBack { after_commit, moves, cleanup } => {
            let step = Step::RollingBack { after_commit };
            if rec.step != step {
                rec.step = step;
                journal.write_txn(rec, "rolling_back")?;
            }
            for a in &moves {
                act(a)?;
            }
            let left = clean(&cleanup)?;
            settle(rec)?;
            let outcome = if rec.recovered { Outcome::RolledBackByRecovery } else { Outcome::RolledBack };
            let why = error.or_else(|| rec.recovered.then(|| "interrupted; rolled back by recovery".to_string()));
            let why = match (why, left.is_empty()) {
                (why, true) => why,
                (Some(w), false) => Some(format!("{w}; {}", left.join("; "))),
                (None, false) => Some(left.join("; ")),
            };
            journal.finish_txn(rec, outcome, why, now())?;
            Ok(outcome)
        }
    }
}

/// Recovers every unfinished transaction, oldest first, then finishes every
/// cleanup left to run ([`finish_cleanups`]). A transaction recovery cannot
/// decide is left untouched and reported as "refused"; the others are still
/// recovered.
pub fn recover_all(journal: &Journal) -> Result<Vec<RecoveryReport>, Error> {
    let mut reports = Vec::new();
    for mut rec in journal.pending()? {
        let step_found = rec.step.name().to_string();
        let op = format!("{:?}", rec.op).to_lowercase();
        let outcome = match drive(journal, &mut rec, true, None) {
            Err(Error::RecoveryRefused { reason, .. }) => {
                tracing::error!(txn = rec.id, package = %rec.package_names(), %reason, "recovery refused");
                reports.push(RecoveryReport {
                    txn: rec.id,
                    package: rec.package_names(),
                    op,
                    outcome: "refused".into(),
                    step_found,
                    reason: Some(reason),
                });
                continue;
            }
            other => other?,
        };
        let outcome = match outcome {
            Outcome::Done | Outcome::RolledForwardByRecovery => "rolled forward",
            Outcome::RolledBack | Outcome::RolledBackByRecovery => "rolled back",
        };
        tracing::info!(txn = rec.id, package = %rec.package_names(), outcome, "recovered");
        reports.push(RecoveryReport {
            txn: rec.id,
            package: rec.package_names(),
            op,
            outcome: outcome.to_string(),
            step_found,
            reason: None,
        });
    }
    reports.extend(finish_cleanups(journal)?);
    Ok(reports)
}

/// Removes what finished transactions replaced (`Journal::cleanups`),
/// oldest first: observed and decided as a transaction at step `cleaning`,
/// so only paths whose identity the record holds are removed; made durable
/// (`settle`) before the entry goes. One recovery cannot decide is left
/// untouched and reported as "refused".
pub fn finish_cleanups(journal: &Journal) -> Result<Vec<RecoveryReport>, Error> {
    let mut reports = Vec::new();
    for rec in journal.cleanups()? {
        let mut report = RecoveryReport {
            txn: rec.id,
            package: rec.package_names(),
            op: format!("{:?}", rec.op).to_lowercase(),
            outcome: "cleaned up".into(),
            step_found: rec.step.name().to_string(),
            reason: None,
        };
        match decide(&rec, &observe(&rec)?) {
            RecoveryDecision::RollForward { swaps, cleanup } if swaps.is_empty() => {
                let left = clean(&cleanup)?;
                settle(&rec)?;
                journal.finish_cleanup(rec.id, (!left.is_empty()).then(|| left.join("; ")))?;
                tracing::debug!(txn = rec.id, "cleanup finished");
            }
            RecoveryDecision::Refuse { reason } => {
                tracing::error!(txn = rec.id, package = %rec.package_names(), %reason, "cleanup refused");
                report.outcome = "refused".into();
                report.reason = Some(reason);
            }
            other => {
                // `decide` at step cleaning only rolls forward with no swap, or refuses.
                report.outcome = "refused".into();
                report.reason =
                    Some(format!("its cleanup found the disk unlike the record ({other:?}); nothing was changed"));
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// What recovery would do, without doing it (for `repair --dry-run`).
pub fn preview_all(journal: &Journal) -> Result<Vec<(TxnRecord, RecoveryDecision)>, Error> {
    journal
        .pending()?
        .into_iter()
        .chain(journal.cleanups()?)
        .map(|rec| {
            let obs = observe(&rec)?;
            let d = decide(&rec, &obs);
            Ok((rec, d))
        })
        .collect()
}
