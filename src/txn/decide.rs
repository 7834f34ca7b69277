//! Recovery decisions: from a transaction record and what is observed on
//! disk, the actions that bring every target to all-old or all-new.
//!
//! Pure: no I/O, no clock, no randomness. The same record and observations
//! always give the same decision, which is what makes recovery
//! deterministic and lets the tests below enumerate every case.

use super::record::{Identity, Step, TargetPlan, TxnRecord};

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
        Step::Committed => match roll_forward(rec, observed) {
            Ok(swaps) => RecoveryDecision::RollForward { swaps, cleanup: cleanup(rec, false) },
            Err(lost) => match roll_back_after_commit(rec, observed) {
                Ok(moves) => RecoveryDecision::RollBack { after_commit: true, moves, cleanup: cleanup(rec, true) },
                Err(why) => RecoveryDecision::Refuse {
                    reason: format!("cannot roll forward ({lost}) and cannot roll back ({why})"),
                },
            },
        },
        Step::Cleaning => match roll_forward(rec, observed) {
            Ok(swaps) if swaps.is_empty() => RecoveryDecision::RollForward { swaps, cleanup: cleanup(rec, false) },
            Ok(_) | Err(_) => RecoveryDecision::Refuse {
                reason: describe_mismatch(rec, observed, "every target was recorded as swapped, but"),
            },
        },
        Step::RollingBack { after_commit: true } => match roll_back_after_commit(rec, observed) {
            Ok(moves) => RecoveryDecision::RollBack { after_commit: true, moves, cleanup: cleanup(rec, true) },
            Err(why) => RecoveryDecision::Refuse { reason: format!("cannot finish rolling back: {why}") },
        },
    };
    debug_assert!(only_removes_own_paths(rec, &decision), "a decision removes only staging/backup paths");
    debug_assert!(keeps_every_only_copy(rec, observed, &decision), "a decision never removes the only copy");
    decision
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
    for (t, o) in rec.targets.iter().zip(observed) {
        let at_target = place(o.target, t);
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
        return RecoveryDecision::RollBack { after_commit: false, moves: Vec::new(), cleanup: cleanup(rec, true) };
    }
    match roll_forward(rec, observed) {
        Ok(swaps) => RecoveryDecision::RollForward { swaps, cleanup: cleanup(rec, false) },
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
        let (tp, sp, bp) = (place(o.target, t), place(o.staging, t), place(o.backup, t));
        // The backup path may be needed as a rename destination below; before
        // any swap of this target it can only hold leftovers, never the old content.
        let clear_backup = || (bp != Place::Absent).then(|| Action::Remove { path: t.backup.clone() });
        let actions = match (&t.new, tp, sp) {
            (_, Place::Foreign, _) => {
                return Err(format!("{} holds neither the old nor the new content", t.path));
            }
            (Some(_), Place::New, _) | (None, Place::Absent, _) => continue,
            (Some(_), Place::Old, Place::New) => clear_backup()
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
            (None, Place::Old, _) => clear_backup()
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
    let mut moves = Vec::new();
    for (t, o) in rec.targets.iter().zip(observed) {
        let (tp, sp, bp) = (place(o.target, t), place(o.staging, t), place(o.backup, t));
        let (path, staging, backup) = (t.path.clone(), t.staging.clone(), t.backup.clone());
        match (t.old.is_some(), tp) {
            (_, Place::Foreign) => return Err(format!("{path} holds neither the old nor the new content")),
            (true, Place::Old) | (false, Place::Absent) => {}
            (true, Place::New) if sp == Place::Old => {
                if bp != Place::Absent {
                    moves.push(Action::Remove { path: backup.clone() });
                }
                moves.push(Action::Exchange { a: staging, b: path, fallback_backup: backup });
            }
            (true, Place::New) if bp == Place::Old => {
                if sp != Place::Absent {
                    moves.push(Action::Remove { path: staging.clone() });
                }
                moves.push(Action::Rename { from: path.clone(), to: staging });
                moves.push(Action::Rename { from: backup, to: path });
            }
            (true, Place::Absent) if bp == Place::Old => moves.push(Action::Rename { from: backup, to: path }),
            (true, Place::Absent) if sp == Place::Old => moves.push(Action::Rename { from: staging, to: path }),
            (true, _) => return Err(format!("the old content of {path} is gone")),
            (false, Place::New) => {
                if sp != Place::Absent {
                    moves.push(Action::Remove { path: staging.clone() });
                }
                moves.push(Action::Rename { from: path, to: staging });
            }
            (false, Place::Old) => return Err(format!("{path} is in an impossible state")),
        }
    }
    Ok(moves)
}

/// Removal of every staging and backup path; when rolling back, also the
/// directories the txn created (innermost first).
fn cleanup(rec: &TxnRecord, rolling_back: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    for t in &rec.targets {
        actions.push(Action::Remove { path: t.staging.clone() });
        actions.push(Action::Remove { path: t.backup.clone() });
    }
    if rolling_back {
        for d in rec.created_dirs.iter().rev() {
            actions.push(Action::RemoveEmptyDir { path: d.clone() });
        }
    }
    actions
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
