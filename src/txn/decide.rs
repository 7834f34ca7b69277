//! Recovery decisions: from a transaction record and what is observed on
//! disk, the actions that bring every target to all-old or all-new.
//!
//! Pure: no I/O, no clock, no randomness. The same record and observations
//! always give the same decision, which is what makes recovery
//! deterministic and lets the tests below enumerate every case.

use super::record::{EntryKind, Identity, Step, TargetPlan, TxnRecord};

/// What one of a target's three paths holds, by identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    Absent,
    /// The object that was at the target when the txn was planned.
    Old,
    /// The object staged by this txn.
    New,
    /// Something else: a partial staging, or a change by another program.
    Foreign,
}

/// What the executor observed at one target's paths (`lstat`, no reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub target: Option<Identity>,
    pub staging: Option<Identity>,
    pub backup: Option<Identity>,
}

/// One filesystem action, performed by the executor through `fsops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Atomically exchange `a` and `b` (both exist). If the filesystem cannot
    /// exchange, the executor instead renames `b` to `fallback_backup`, then
    /// `a` to `b`; recovery recognises either outcome by identity.
    Exchange { a: String, b: String, fallback_backup: String },
    /// Rename `from` to `to`; `to` is absent.
    Rename { from: String, to: String },
    /// Remove a staging or backup path and everything under it (absent is fine).
    Remove { path: String },
    /// Remove a directory this txn created, if it is empty.
    RemoveEmptyDir { path: String },
}

/// The swap actions for one target, run after journaling it as `Swapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSwap {
    pub index: usize,
    pub actions: Vec<Action>,
}

/// What recovery (or the commit path of a live install) must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// Finish: run each swap (journaled per target), journal `Cleaning`, run
    /// `cleanup`, then mark the txn done and update the package registry.
    RollForward { swaps: Vec<TargetSwap>, cleanup: Vec<Action> },
    /// Undo: journal `RollingBack`, run `moves`, then `cleanup`, then mark the
    /// txn rolled back (the package registry is unchanged).
    RollBack { after_commit: bool, moves: Vec<Action>, cleanup: Vec<Action> },
    /// Neither direction is safe; a person must look. Nothing is changed.
    Refuse { reason: String },
}

/// Which of old/new/neither is at `id`, for target `t`.
///
/// When old and new are files with the same bytes (a reinstall of the same
/// version, or a file v2 did not change), both match by digest; the object
/// is then told apart by its inode first, so the old file at the target is
/// `Old` and the staged copy `New`, and a record is never taken to be
/// behind the disk merely because two versions agree.
pub fn place(id: Option<Identity>, t: &TargetPlan) -> Place {
    let Some(id) = id else { return Place::Absent };
    let new = t.new.as_ref().and_then(|n| n.identity);
    let same_object = |r: &Identity| r.same_inode(&id) && r.same_as(&id);
    if new.is_some_and(|n| same_object(&n)) {
        Place::New
    } else if t.old.is_some_and(|o| same_object(&o)) {
        Place::Old
    } else if new.is_some_and(|n| n.same_as(&id)) {
        Place::New
    } else if t.old.is_some_and(|o| o.same_as(&id)) {
        Place::Old
    } else {
        Place::Foreign
    }
}

/// Decides what to do with an unfinished transaction. `observed[i]` belongs
/// to `rec.targets[i]`.
pub fn decide(rec: &TxnRecord, observed: &[Observed]) -> RecoveryDecision {
    assert_eq!(rec.targets.len(), observed.len(), "one observation per target");
    let decision = match rec.step {
        Step::Planned | Step::Staged | Step::RollingBack { after_commit: false } => before_commit(rec, observed),
        Step::Committed => match roll_forward(rec, observed).and_then(|s| Ok((s, cleanup(rec, observed, false)?))) {
            Ok((swaps, cleanup)) => RecoveryDecision::RollForward { swaps, cleanup },
            Err(lost) => {
                match roll_back_after_commit(rec, observed).and_then(|m| Ok((m, cleanup(rec, observed, true)?))) {
                    Ok((moves, cleanup)) => RecoveryDecision::RollBack { after_commit: true, moves, cleanup },
                    Err(why) => RecoveryDecision::Refuse {
                        reason: format!("cannot roll forward ({lost}) and cannot roll back ({why}); {NOTHING_CHANGED}"),
                    },
                }
            }
        },
        Step::Cleaning => match roll_forward(rec, observed) {
            Ok(swaps) if swaps.is_empty() => match cleanup(rec, observed, false) {
                Ok(cleanup) => RecoveryDecision::RollForward { swaps, cleanup },
                Err(why) => {
                    RecoveryDecision::Refuse { reason: format!("cannot finish cleaning up: {why}; {NOTHING_CHANGED}") }
                }
            },
            Ok(_) | Err(_) => RecoveryDecision::Refuse {
                reason: describe_mismatch(rec, observed, "every target was recorded as swapped, but"),
            },
        },
        Step::RollingBack { after_commit: true } => {
            match roll_back_after_commit(rec, observed).and_then(|m| Ok((m, cleanup(rec, observed, true)?))) {
                Ok((moves, cleanup)) => RecoveryDecision::RollBack { after_commit: true, moves, cleanup },
                Err(why) => {
                    RecoveryDecision::Refuse { reason: format!("cannot finish rolling back: {why}; {NOTHING_CHANGED}") }
                }
            }
        }
    };
    debug_assert!(only_removes_own_paths(rec, &decision), "a decision removes only staging/backup paths");
    debug_assert!(keeps_every_only_copy(rec, observed, &decision), "a decision never removes the only copy");
    decision
}

/// What a refusal adds: it changed nothing, and what to do.
const NOTHING_CHANGED: &str = "nothing was changed: look at the paths named, move aside what is not stagehand's \
     (or put back what is), then run `stagehand repair`";

/// True if `seen` is provably the recorded object `rec`, not a later one that
/// reuses its inode number: a file with the same digest, or the same inode
/// with the same birth time. Where the filesystem keeps no birth time, a
/// directory (or an unhashed file) matches by inode number alone, which
/// proves nothing once this transaction may itself have freed that inode.
fn proven(seen: &Identity, rec: &Identity) -> bool {
    let same_bytes = seen.kind == EntryKind::File
        && rec.kind == EntryKind::File
        && seen.sha256.is_some()
        && seen.sha256 == rec.sha256;
    let same_birth = seen.ino == rec.ino && seen.btime.is_some() && seen.btime == rec.btime;
    seen.kind == rec.kind && (same_bytes || same_birth)
}

/// True if the new content at `id` is matched by inode number alone.
fn new_unproven(id: Option<Identity>, t: &TargetPlan) -> bool {
    match (id, t.new.as_ref().and_then(|n| n.identity)) {
        (Some(seen), Some(rec)) => place(Some(seen), t) == Place::New && !proven(&seen, &rec),
        _ => false,
    }
}

/// How much older than its transaction's start a staging path's birth time
/// must be to prove it was not made by that transaction.
const CLOCK_SLACK_SECS: i64 = 2;

/// A partial staging of this transaction: something at a target's staging
/// path before the commit point, whose staged identity is not recorded yet.
/// The planner checked that the name was free before the `planned` record,
/// ids are never reused, and staging creates the name exclusively (mkdir,
/// `O_EXCL`), so what is there was made by this transaction, unless its
/// birth time proves it older than the transaction (by more than
/// [`CLOCK_SLACK_SECS`]: `started_at` is whole seconds of the wall clock,
/// a birth time the filesystem's coarser clock).
fn partial_staging(rec: &TxnRecord, t: &TargetPlan, id: Option<Identity>) -> bool {
    let unrecorded = t.new.as_ref().is_some_and(|n| n.identity.is_none());
    let started = i64::try_from(rec.started_at).unwrap_or(i64::MAX);
    let older = id.and_then(|i| i.btime).is_some_and(|b| b.secs.saturating_add(CLOCK_SLACK_SECS) < started);
    unrecorded && !rec.step.is_committed() && !older
}

/// The removal of a staging or backup path, if this transaction can prove it
/// made what is there: its old or new content by identity, or a partial
/// staging ([`partial_staging`]). Anything else is not its own: `Err` names
/// the path, and the caller refuses.
fn remove_own(rec: &TxnRecord, t: &TargetPlan, path: &str, id: Option<Identity>) -> Result<Option<Action>, String> {
    match place(id, t) {
        // Absent now, it may hold this transaction's own content once the
        // decision's moves ran (the old content, after a fallback swap).
        Place::Absent | Place::Old | Place::New => Ok(Some(Action::Remove { path: path.to_string() })),
        Place::Foreign if path == t.staging && partial_staging(rec, t, id) => {
            Ok(Some(Action::Remove { path: path.to_string() }))
        }
        Place::Foreign => Err(format!(
            "{path} holds something this transaction did not make (neither the old nor the new content of {} \
             it recorded); stagehand removes only what it made",
            t.path
        )),
    }
}

/// Before the commit point nothing moves a target, so the old content can
/// only be at its target and the new content only at its staging path. If
/// the disk shows otherwise, the record is behind the disk (a journal write
/// that did not survive): removing the staging and backup paths then could
/// delete the only copy of the old content. Look first: roll forward when
/// every target's new content is present and nothing foreign is in the way,
/// otherwise refuse, naming the paths.
fn before_commit(rec: &TxnRecord, observed: &[Observed]) -> RecoveryDecision {
    let mut ahead = Vec::new();
    // After a rollback's cleanup, the staged content's inode may be free and
    // reused at its target (a fresh install's path is free then).
    let cleaned = matches!(rec.step, Step::RollingBack { .. });
    for (t, o) in rec.targets.iter().zip(observed) {
        let at_target = place(o.target, t);
        if at_target == Place::New && cleaned && new_unproven(o.target, t) {
            return RecoveryDecision::Refuse {
                reason: format!(
                    "the journal says {} (before the commit point), and {} matches the staged content by inode \
                     number alone, on a filesystem that records no birth time: it may be a new object that reuses \
                     the inode of staged content this rollback already removed, so it is not taken as the disk \
                     being ahead of the record, nor moved or removed; {NOTHING_CHANGED}",
                    rec.step.name(),
                    t.path
                ),
            };
        }
        if at_target == Place::New {
            ahead.push(format!("{} already holds the new content", t.path));
        }
        // Old content still at its target makes any copy elsewhere (the same
        // bytes staged again, as a reinstall does) a spare, not evidence.
        if at_target == Place::Old {
            continue;
        }
        for (p, id) in [(&t.staging, o.staging), (&t.backup, o.backup)] {
            if place(id, t) == Place::Old {
                ahead.push(format!("{p} holds the old content of {}", t.path));
            }
        }
    }
    if ahead.is_empty() {
        return match cleanup(rec, observed, true) {
            Ok(cleanup) => RecoveryDecision::RollBack { after_commit: false, moves: Vec::new(), cleanup },
            Err(why) => RecoveryDecision::Refuse { reason: format!("cannot roll back: {why}; {NOTHING_CHANGED}") },
        };
    }
    match roll_forward(rec, observed).and_then(|s| Ok((s, cleanup(rec, observed, false)?))) {
        Ok((swaps, cleanup)) => RecoveryDecision::RollForward { swaps, cleanup },
        Err(why) => RecoveryDecision::Refuse {
            reason: format!(
                "the journal says {} (before the commit point), but the disk is ahead of it: {}; \
                 rolling back would remove the only copy of old content and rolling forward is not possible ({why}); \
                 nothing was changed: move the paths named aside by hand, then run `stagehand repair`",
                rec.step.name(),
                ahead.join(", ")
            ),
        },
    }
}

fn roll_forward(rec: &TxnRecord, observed: &[Observed]) -> Result<Vec<TargetSwap>, String> {
    let mut swaps = Vec::new();
    for (index, (t, o)) in rec.targets.iter().zip(observed).enumerate() {
        let (tp, sp) = (place(o.target, t), place(o.staging, t));
        // The backup path may be needed as a rename destination below; before
        // any swap of this target it can only hold leftovers, never the old
        // content; removed only if they are this transaction's own.
        let clear_backup = || if o.backup.is_some() { remove_own(rec, t, &t.backup, o.backup) } else { Ok(None) };
        let actions = match (&t.new, tp, sp) {
            (_, Place::Foreign, _) => {
                return Err(format!("{} holds neither the old nor the new content", t.path));
            }
            (Some(_), Place::New, _) | (None, Place::Absent, _) => continue,
            (Some(_), Place::Old, Place::New) => clear_backup()?
                .into_iter()
                .chain([Action::Exchange {
                    a: t.staging.clone(),
                    b: t.path.clone(),
                    fallback_backup: t.backup.clone(),
                }])
                .collect(),
            (Some(_), Place::Absent, Place::New) => {
                vec![Action::Rename { from: t.staging.clone(), to: t.path.clone() }]
            }
            (Some(_), _, _) => return Err(format!("the staged new content of {} is gone", t.path)),
            (None, Place::Old, _) => clear_backup()?
                .into_iter()
                .chain([Action::Rename { from: t.path.clone(), to: t.backup.clone() }])
                .collect(),
            (None, Place::New, _) => return Err(format!("{} is in an impossible state", t.path)),
        };
        swaps.push(TargetSwap { index, actions });
    }
    Ok(swaps)
}

fn roll_back_after_commit(rec: &TxnRecord, observed: &[Observed]) -> Result<Vec<Action>, String> {
    // Once journaled as rolling back after the commit point, this rollback's
    // cleanup may already have removed the new content and freed its inode.
    let cleaned = rec.step == Step::RollingBack { after_commit: true };
    let mut moves = Vec::new();
    for (t, o) in rec.targets.iter().zip(observed) {
        let (tp, sp, bp) = (place(o.target, t), place(o.staging, t), place(o.backup, t));
        let (path, staging, backup) = (t.path.clone(), t.staging.clone(), t.backup.clone());
        if tp == Place::New && cleaned && new_unproven(o.target, t) {
            return Err(format!(
                "{path} matches the staged content by inode number alone, on a filesystem that records no birth \
                 time: this rollback may already have removed the staged content, and {path} may be a new object \
                 that reuses its inode number; stagehand cannot prove it made {path} and will not move or remove it"
            ));
        }
        match (t.old.is_some(), tp) {
            (_, Place::Foreign) => return Err(format!("{path} holds neither the old nor the new content")),
            (true, Place::Old) | (false, Place::Absent) => {}
            (true, Place::New) if sp == Place::Old => {
                if o.backup.is_some() {
                    moves.extend(remove_own(rec, t, &backup, o.backup)?);
                }
                moves.push(Action::Exchange { a: staging, b: path, fallback_backup: backup });
            }
            (true, Place::New) if bp == Place::Old => {
                if o.staging.is_some() {
                    moves.extend(remove_own(rec, t, &staging, o.staging)?);
                }
                moves.push(Action::Rename { from: path.clone(), to: staging });
                moves.push(Action::Rename { from: backup, to: path });
            }
            (true, Place::Absent) if bp == Place::Old => moves.push(Action::Rename { from: backup, to: path }),
            (true, Place::Absent) if sp == Place::Old => moves.push(Action::Rename { from: staging, to: path }),
            (true, _) => return Err(format!("the old content of {path} is gone")),
            (false, Place::New) => {
                if o.staging.is_some() {
                    moves.extend(remove_own(rec, t, &staging, o.staging)?);
                }
                moves.push(Action::Rename { from: path, to: staging });
            }
            (false, Place::Old) => return Err(format!("{path} is in an impossible state")),
        }
    }
    Ok(moves)
}

/// Removal of every staging and backup path, each only if this transaction made it ([`remove_own`]); when rolling back,
/// also the directories the txn created (innermost first). `Err` names a
/// path that holds something else.
fn cleanup(rec: &TxnRecord, observed: &[Observed], rolling_back: bool) -> Result<Vec<Action>, String> {
    let mut actions = Vec::new();
    for (t, o) in rec.targets.iter().zip(observed) {
        actions.extend(remove_own(rec, t, &t.staging, o.staging)?);
        actions.extend(remove_own(rec, t, &t.backup, o.backup)?);
    }
    if rolling_back {
        for d in rec.created_dirs.iter().rev() {
            actions.push(Action::RemoveEmptyDir { path: d.clone() });
        }
    }
    Ok(actions)
}

fn describe_mismatch(rec: &TxnRecord, observed: &[Observed], lead: &str) -> String {
    let bad: Vec<String> = rec
        .targets
        .iter()
        .zip(observed)
        .filter(|(t, o)| {
            let tp = place(o.target, t);
            !matches!((&t.new, tp), (Some(_), Place::New) | (None, Place::Absent))
        })
        .map(|(t, o)| format!("{} holds {:?}", t.path, place(o.target, t)))
        .collect();
    format!("{lead} {}", bad.join(", "))
}

fn only_removes_own_paths(rec: &TxnRecord, d: &RecoveryDecision) -> bool {
    let own = |p: &str| rec.targets.iter().any(|t| t.staging == p || t.backup == p);
    let check = |a: &Action| match a {
        Action::Remove { path } => own(path),
        Action::RemoveEmptyDir { path } => rec.created_dirs.iter().any(|d| d == path),
        _ => true,
    };
    match d {
        RecoveryDecision::RollForward { swaps, cleanup } => {
            swaps.iter().flat_map(|s| &s.actions).all(check) && cleanup.iter().all(check)
        }
        RecoveryDecision::RollBack { moves, cleanup, .. } => moves.iter().all(check) && cleanup.iter().all(check),
        RecoveryDecision::Refuse { .. } => true,
    }
}

/// Plays the decision on the observed places and checks that no `Remove`
/// hits a path holding the only copy of content the decision keeps: never
/// the new content when rolling forward, nor the old content before every
/// swap is done; never the old content when rolling back.
fn keeps_every_only_copy(rec: &TxnRecord, observed: &[Observed], d: &RecoveryDecision) -> bool {
    use std::collections::BTreeMap;
    // path -> (target index, place); a path shared by two targets is not a
    // real record's shape, and nothing can be said about it.
    let mut at: BTreeMap<&str, (usize, Place)> = BTreeMap::new();
    for (i, (t, o)) in rec.targets.iter().zip(observed).enumerate() {
        for (p, id) in [(&t.path, o.target), (&t.staging, o.staging), (&t.backup, o.backup)] {
            if at.insert(p.as_str(), (i, place(id, t))).is_some() {
                return true;
            }
        }
    }
    let (forward, first, then): (bool, Vec<&Action>, &[Action]) = match d {
        RecoveryDecision::RollForward { swaps, cleanup } => {
            (true, swaps.iter().flat_map(|s| &s.actions).collect(), cleanup)
        }
        RecoveryDecision::RollBack { moves, cleanup, .. } => (false, moves.iter().collect(), cleanup),
        RecoveryDecision::Refuse { .. } => return true,
    };
    let get = |at: &BTreeMap<&str, (usize, Place)>, p: &str| at.get(p).map(|&(_, pl)| pl).unwrap_or(Place::Absent);
    for (in_cleanup, a) in first.into_iter().map(|a| (false, a)).chain(then.iter().map(|a| (true, a))) {
        match a {
            Action::Exchange { a, b, .. } => {
                let (x, y) = (get(&at, a), get(&at, b));
                if let Some(e) = at.get_mut(a.as_str()) {
                    e.1 = y;
                }
                if let Some(e) = at.get_mut(b.as_str()) {
                    e.1 = x;
                }
            }
            Action::Rename { from, to } => {
                let x = get(&at, from);
                if let Some(e) = at.get_mut(from.as_str()) {
                    e.1 = Place::Absent;
                }
                if let Some(e) = at.get_mut(to.as_str()) {
                    e.1 = x;
                }
            }
            Action::Remove { path } => {
                let Some(&(i, held)) = at.get(path.as_str()) else { continue };
                let elsewhere = at.iter().any(|(p, &(j, pl))| *p != path.as_str() && j == i && pl == held);
                let kept = match held {
                    Place::New => forward,
                    Place::Old => !forward || !in_cleanup,
                    Place::Absent | Place::Foreign => false,
                };
                if kept && !elsewhere {
                    return false;
                }
                if let Some(e) = at.get_mut(path.as_str()) {
                    e.1 = Place::Absent;
                }
            }
            Action::RemoveEmptyDir { .. } => {}
        }
    }
    true
}
