//! Exhaustive check of `decide` against a model filesystem.
//!
//! For every step and every arrangement of the old, new and foreign objects
//! over two targets' (target, staging, backup) paths, the decision is run on
//! a map path → object; after every prefix of its actions the process
//! "crashes", recovery decides again from what is there, and must converge.

use std::collections::BTreeMap;

use super::decide::{decide, Action, Observed, RecoveryDecision};
use super::record::*;

type Fs = BTreeMap<String, u64>; // path -> inode

const FOREIGN: u64 = 900;

/// A directory on a filesystem that keeps birth times (each object's is
/// its own); the cases without them are checked separately below.
fn ident(ino: u64) -> Identity {
    Identity { dev: 1, ino, kind: EntryKind::Dir, sha256: None, btime: Some(BirthTime { secs: ino as i64, nanos: 0 }) }
}

fn old_ino(i: usize) -> u64 {
    100 + i as u64
}
fn new_ino(i: usize) -> u64 {
    200 + i as u64
}

fn target(i: usize, old: bool, new: Option<bool>) -> TargetPlan {
    TargetPlan {
        path: format!("/d/t{i}"),
        staging: format!("/d/.t{i}.stagehand-1.staging"),
        backup: format!("/d/.t{i}.stagehand-1.backup"),
        old: old.then(|| ident(old_ino(i))),
        new: new.map(|staged| NewContent { kind: EntryKind::Dir, identity: staged.then(|| ident(new_ino(i))) }),
        progress: TargetProgress::Pending,
        // Targets alternate between two package changes: every model case
        // is a two-package transaction, whose targets must still end all
        // old or all new together.
        change: (i % 2) as u32,
    }
}

fn record(step: Step, targets: Vec<TargetPlan>) -> TxnRecord {
    let change = |name: &str, op| PackageChange { name: name.into(), op, old: None, new_package: None };
    TxnRecord {
        id: 1,
        op: Op::Apply,
        step,
        started_at: 0,
        recovered: false,
        changes: vec![change("p", Op::Install), change("q", Op::Uninstall)],
        targets,
        created_dirs: vec!["/d/made".into()],
    }
}

fn observe(rec: &TxnRecord, fs: &Fs) -> Vec<Observed> {
    let id = |p: &String| fs.get(p).map(|&i| ident(i));
    rec.targets
        .iter()
        .map(|t| Observed { target: id(&t.path), staging: id(&t.staging), backup: id(&t.backup) })
        .collect()
}

/// Applies one action to the model; returns false if it could not run.
fn apply(fs: &mut Fs, a: &Action, can_exchange: bool) -> bool {
    match a {
        Action::Exchange { a, b, fallback_backup } => {
            let (Some(&x), Some(&y)) = (fs.get(a), fs.get(b)) else { return false };
            if can_exchange {
                fs.insert(a.clone(), y);
                fs.insert(b.clone(), x);
            } else {
                if fs.contains_key(fallback_backup) {
                    return false;
                }
                fs.insert(fallback_backup.clone(), y);
                fs.remove(a);
                fs.insert(b.clone(), x);
            }
            true
        }
        Action::Rename { from, to } => {
            if fs.contains_key(to) {
                return false;
            }
            let Some(x) = fs.remove(from) else { return false };
            fs.insert(to.clone(), x);
            true
        }
        Action::Remove { path } => {
            fs.remove(path);
            true
        }
        Action::RemoveEmptyDir { .. } => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    Forward,
    Back,
}

/// Flattens a decision into (step to journal before, action) pairs, the way
/// the executor runs it.
fn plan(d: &RecoveryDecision) -> Option<(Direction, Vec<(Step, Action)>)> {
    match d {
        RecoveryDecision::RollForward { swaps, cleanup } => {
            let mut v: Vec<(Step, Action)> =
                swaps.iter().flat_map(|s| s.actions.iter().map(|a| (Step::Committed, a.clone()))).collect();
            v.extend(cleanup.iter().map(|a| (Step::Cleaning, a.clone())));
            Some((Direction::Forward, v))
        }
        RecoveryDecision::RollBack { after_commit, moves, cleanup } => {
            let step = Step::RollingBack { after_commit: *after_commit };
            let v = moves.iter().chain(cleanup).map(|a| (step, a.clone())).collect();
            Some((Direction::Back, v))
        }
        RecoveryDecision::Refuse { .. } => None,
    }
}

fn check_final(rec: &TxnRecord, start: &Fs, fs: &Fs, dir: Direction, ctx: &str) {
    for (i, t) in rec.targets.iter().enumerate() {
        let old_existed = start.values().any(|&v| v == old_ino(i));
        assert!(!fs.contains_key(&t.staging), "{ctx}: staging left: {fs:?}");
        assert!(!fs.contains_key(&t.backup), "{ctx}: backup left: {fs:?}");
        let want = match dir {
            Direction::Forward => t.new.as_ref().map(|_| new_ino(i)),
            Direction::Back if start.get(&t.path).is_some_and(|&v| v >= FOREIGN) => start.get(&t.path).copied(),
            Direction::Back if t.old.is_none() => None,
            Direction::Back if old_existed => Some(old_ino(i)),
            // Nothing old to restore: the target is left as it was found.
            Direction::Back => start.get(&t.path).copied(),
        };
        assert_eq!(fs.get(&t.path).copied(), want, "{ctx}: target {i} wrong after {dir:?}: {fs:?}");
    }
}

/// Runs the decision from `fs`, crashing after `crash_after` actions (if
/// given) and then recovering to the end; returns the final direction.
fn run(
    rec: &TxnRecord,
    start: &Fs,
    fs: &mut Fs,
    crash_after: Option<usize>,
    can_exchange: bool,
    ctx: &str,
    check_idempotent: bool,
) -> Option<Direction> {
    let d = decide(rec, &observe(rec, fs));
    let (dir, steps) = plan(&d)?;
    let limit = crash_after.unwrap_or(usize::MAX).min(steps.len());
    let mut rec2 = rec.clone();
    for (step, a) in steps.iter().take(limit) {
        rec2.step = *step;
        assert!(apply(fs, a, can_exchange), "{ctx}: action {a:?} could not run on {fs:?}");
    }
    if crash_after.is_some() && limit < steps.len() {
        // Recovery after the crash decides from the journaled step.
        let again = run(&rec2, start, fs, None, can_exchange, ctx, check_idempotent);
        assert_eq!(again, Some(dir), "{ctx}: recovery after a crash changed direction or refused");
    } else if check_idempotent {
        check_final(rec, start, fs, dir, ctx);
        // Idempotent: deciding again at the final step does nothing but cleanup.
        let mut done = rec.clone();
        done.step = if dir == Direction::Forward {
            Step::Cleaning
        } else {
            Step::RollingBack { after_commit: rec.step.is_committed() }
        };
        let before = fs.clone();
        let _ = run(&done, start, fs, None, can_exchange, ctx, false);
        assert_eq!(&before, fs, "{ctx}: a second recovery changed something");
    }
    Some(dir)
}

const PLACES: [u8; 4] = [0, 1, 2, 3]; // absent, old, new, foreign

fn layouts(i: usize, old: bool, staged: bool) -> Vec<[Option<u64>; 3]> {
    let mut out = Vec::new();
    for a in PLACES {
        for b in PLACES {
            for c in PLACES {
                let ps = [a, b, c];
                let count = |x: u8| ps.iter().filter(|&&p| p == x).count();
                if count(1) > 1 || count(2) > 1 || (count(1) == 1 && !old) || (count(2) == 1 && !staged) {
                    continue;
                }
                out.push(ps.map(|p| match p {
                    1 => Some(old_ino(i)),
                    2 => Some(new_ino(i)),
                    3 => Some(FOREIGN + i as u64),
                    _ => None,
                }));
            }
        }
    }
    out
}

#[test]
fn every_state_converges_or_refuses() {
    let steps = [
        Step::Planned,
        Step::Staged,
        Step::Committed,
        Step::Cleaning,
        Step::RollingBack { after_commit: false },
        Step::RollingBack { after_commit: true },
    ];
    let mut cases = 0u64;
    let mut refused = 0u64;
    let (mut ahead_cases, mut ahead_refused) = (0u64, 0u64);
    for step in steps {
        let staged = !matches!(step, Step::Planned);
        for shape in 0..4 {
            // (old present, new present) per target, varied across the two.
            let kinds = [(true, true), (false, true), (true, false), (true, true)];
            let (o0, n0) = kinds[shape];
            let (o1, n1) = kinds[(shape + 1) % 4];
            let t0 = target(0, o0, n0.then_some(staged));
            let t1 = target(1, o1, n1.then_some(staged));
            let rec = record(step, vec![t0, t1]);
            for l0 in layouts(0, o0, staged && n0) {
                for l1 in layouts(1, o1, staged && n1) {
                    let mut fs = Fs::new();
                    for (t, l) in rec.targets.iter().zip([l0, l1]) {
                        for (p, ino) in [&t.path, &t.staging, &t.backup].into_iter().zip(l) {
                            if let Some(ino) = ino {
                                fs.insert(p.clone(), ino);
                            }
                        }
                    }
                    // Before the commit point nothing moves a target: the old
                    // object can only be at its target, the new one never is.
                    // A disk that shows otherwise is ahead of its record (a
                    // lost journal write): recovery must look, not remove.
                    let ahead = !step.is_committed()
                        && rec.targets.iter().enumerate().any(|(i, t)| {
                            fs.get(&t.path) == Some(&new_ino(i))
                                || fs.get(&t.staging) == Some(&old_ino(i))
                                || fs.get(&t.backup) == Some(&old_ino(i))
                        });
                    if ahead {
                        ahead_cases += 1;
                    }
                    let foreign_at_target: Vec<(String, u64)> = rec
                        .targets
                        .iter()
                        .filter_map(|t| fs.get(&t.path).filter(|&&i| i >= FOREIGN).map(|&i| (t.path.clone(), i)))
                        .collect();
                    let d = decide(&rec, &observe(&rec, &fs));
                    if let RecoveryDecision::Refuse { reason } = &d {
                        assert!(!reason.is_empty());
                        if ahead {
                            assert!(reason.contains("ahead"), "{step:?} {l0:?} {l1:?}: {reason}");
                            ahead_refused += 1;
                        }
                        refused += 1;
                        continue;
                    }
                    if !step.is_committed() {
                        let forward = matches!(d, RecoveryDecision::RollForward { .. });
                        assert_eq!(
                            forward, ahead,
                            "{step:?} {l0:?} {l1:?}: before commit, forward only when ahead: {d:?}"
                        );
                    }
                    let n_actions = plan(&d).map(|(_, v)| v.len()).unwrap_or(0);
                    for can_exchange in [true, false] {
                        for crash in (0..=n_actions).map(Some).chain([None]) {
                            cases += 1;
                            let mut f = fs.clone();
                            let ctx = format!("{step:?} {l0:?} {l1:?} crash={crash:?} xchg={can_exchange}");
                            let dir = run(&rec, &fs, &mut f, crash, can_exchange, &ctx, true);
                            assert!(dir.is_some(), "{ctx}: decided, then refused");
                            for (p, i) in &foreign_at_target {
                                assert_eq!(f.get(p), Some(i), "{ctx}: foreign content at a target was touched");
                            }
                            if !step.is_committed() {
                                let want = if ahead { Direction::Forward } else { Direction::Back };
                                assert_eq!(dir, Some(want), "{ctx}: before commit, back unless the disk is ahead");
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "model: {cases} crash/recovery runs, {refused} refused states; \
         {ahead_cases} pre-commit states ahead of their record, {ahead_refused} of them refused"
    );
    assert!(cases > 10_000, "enumeration too small: {cases}");
    assert!(ahead_cases > ahead_refused && ahead_refused > 0, "both outcomes of a disk ahead are exercised");
}

#[test]
fn committed_with_staged_content_rolls_forward() {
    let rec = record(Step::Committed, vec![target(0, true, Some(true)), target(1, false, Some(true))]);
    let mut fs: Fs = [("/d/t0".to_string(), old_ino(0))].into();
    fs.insert("/d/.t0.stagehand-1.staging".into(), new_ino(0));
    fs.insert("/d/.t1.stagehand-1.staging".into(), new_ino(1));
    assert!(matches!(decide(&rec, &observe(&rec, &fs)), RecoveryDecision::RollForward { .. }));
}

#[test]
fn lost_old_and_new_refuses() {
    let rec = record(Step::Committed, vec![target(0, true, Some(true)), target(1, true, Some(true))]);
    // Target 0 swapped (new in place, old at staging); target 1 has nothing at all.
    let mut fs: Fs = [("/d/t0".to_string(), new_ino(0))].into();
    fs.insert("/d/.t0.stagehand-1.staging".into(), old_ino(0));
    match decide(&rec, &observe(&rec, &fs)) {
        RecoveryDecision::Refuse { reason } => assert!(reason.contains("/d/t1"), "{reason}"),
        other => panic!("expected refuse, got {other:?}"),
    }
}

#[test]
fn a_file_put_back_by_hand_is_recognised_by_its_digest() {
    let file = |ino, d: u8| Identity { dev: 1, ino, kind: EntryKind::File, sha256: Some([d; 32]), btime: None };
    let mut t = target(0, true, Some(true));
    t.old = Some(file(100, 1));
    t.new = Some(NewContent { kind: EntryKind::File, identity: Some(file(200, 2)) });
    // Same bytes as the old version, new inode: old.
    assert_eq!(super::place(Some(file(555, 1)), &t), super::Place::Old);
    assert_eq!(super::place(Some(file(556, 2)), &t), super::Place::New);
    // Other bytes, or a digest not computed: foreign.
    assert_eq!(super::place(Some(file(557, 3)), &t), super::Place::Foreign);
    let unhashed = Identity { sha256: None, ..file(558, 1) };
    assert_eq!(super::place(Some(unhashed), &t), super::Place::Foreign);
    assert!(file(100, 1).needs_digest_of(&unhashed));
    // Directories are never matched by digest.
    let dir = |ino| Identity { dev: 1, ino, kind: EntryKind::Dir, sha256: Some([1; 32]), btime: None };
    assert!(!dir(1).same_as(&dir(2)));
}

#[test]
fn a_reused_inode_with_other_bytes_is_not_the_old_file() {
    let file = |ino, d: u8| Identity { dev: 1, ino, kind: EntryKind::File, sha256: Some([d; 32]), btime: None };
    let mut t = target(0, false, Some(true));
    t.new = Some(NewContent { kind: EntryKind::File, identity: Some(file(200, 2)) });
    // Cleanup freed inode 200; another program's new file got it.
    assert_eq!(super::place(Some(file(200, 9)), &t), super::Place::Foreign);
    assert_eq!(super::place(Some(file(200, 2)), &t), super::Place::New);
    // An observation without a digest must be hashed before it is compared.
    let unhashed = Identity { sha256: None, ..file(200, 2) };
    assert!(file(200, 2).needs_digest_of(&unhashed));
    // Recovery of a fresh install rolled back after commit: the foreign file
    // at the target is not taken for the new one and is left alone.
    let rec = record(Step::RollingBack { after_commit: true }, vec![t]);
    let obs = vec![Observed { target: Some(file(200, 9)), staging: None, backup: None }];
    match decide(&rec, &obs) {
        RecoveryDecision::Refuse { reason } => assert!(reason.contains("/d/t0"), "{reason}"),
        other => panic!("a reused inode was taken for the new file: {other:?}"),
    }
}

#[test]
fn staged_record_behind_a_swapped_disk_rolls_forward_and_keeps_the_old_copy() {
    // The journal lost `committed` and the swap records, but the swap happened:
    // the old content is at the staging path. Cleanup as a pre-commit
    // rollback would delete it, the only copy.
    let rec = record(Step::Staged, vec![target(0, true, Some(true)), target(1, true, Some(true))]);
    let mut fs: Fs = [("/d/t0".to_string(), new_ino(0))].into();
    fs.insert("/d/.t0.stagehand-1.staging".into(), old_ino(0));
    fs.insert("/d/t1".into(), old_ino(1));
    fs.insert("/d/.t1.stagehand-1.staging".into(), new_ino(1));
    match decide(&rec, &observe(&rec, &fs)) {
        RecoveryDecision::RollForward { swaps, .. } => assert_eq!(swaps.len(), 1, "only t1 still to swap"),
        other => panic!("expected roll forward, got {other:?}"),
    }
    // Same, but t1's staged content is gone: neither direction is complete.
    fs.remove("/d/.t1.stagehand-1.staging");
    match decide(&rec, &observe(&rec, &fs)) {
        RecoveryDecision::Refuse { reason } => {
            assert!(reason.contains("/d/.t0.stagehand-1.staging"), "{reason}");
            assert!(reason.contains("/d/t1"), "{reason}");
        }
        other => panic!("expected refuse, got {other:?}"),
    }
}

#[test]
fn a_reinstall_of_the_same_bytes_rolls_back_before_commit() {
    // Installing v2 over v2: the old file and the staged copy hold the same
    // bytes. Before the commit point (staging failed half way, the new
    // identity not yet recorded, or recorded), the copy at the staging path
    // is a spare, not the old content moved there: roll back, keeping the
    // old file at its target.
    let file = |ino, d: u8| Identity { dev: 1, ino, kind: EntryKind::File, sha256: Some([d; 32]), btime: None };
    for staged in [false, true] {
        let mut t = target(0, true, Some(staged));
        t.old = Some(file(100, 7));
        t.new = Some(NewContent { kind: EntryKind::File, identity: staged.then(|| file(200, 7)) });
        assert_eq!(super::place(Some(file(100, 7)), &t), super::Place::Old, "the old object by its inode");
        if staged {
            assert_eq!(super::place(Some(file(200, 7)), &t), super::Place::New, "the staged object by its inode");
        }
        let step = if staged { Step::Staged } else { Step::Planned };
        let rec = record(step, vec![t]);
        let obs = vec![Observed { target: Some(file(100, 7)), staging: Some(file(200, 7)), backup: None }];
        match decide(&rec, &obs) {
            RecoveryDecision::RollBack { after_commit: false, moves, cleanup } => {
                assert!(moves.is_empty(), "{moves:?}");
                assert!(cleanup.contains(&Action::Remove { path: "/d/.t0.stagehand-1.staging".into() }));
            }
            other => panic!("staged={staged}: expected a plain rollback, got {other:?}"),
        }
    }
}

#[test]
fn a_reused_directory_inode_is_told_apart_by_its_birth_time() {
    let born = |secs| Some(crate::txn::BirthTime { secs, nanos: 0 });
    let dir = |ino, btime| Identity { dev: 1, ino, kind: EntryKind::Dir, sha256: None, btime };
    let mut t = target(0, false, Some(true));
    t.new = Some(NewContent { kind: EntryKind::Dir, identity: Some(dir(300, born(10))) });
    assert_eq!(super::place(Some(dir(300, born(10))), &t), super::Place::New);
    // Cleanup freed inode 300; another program's new directory got it.
    assert_eq!(super::place(Some(dir(300, born(99))), &t), super::Place::Foreign);
    // Where the filesystem keeps no birth time, the inode number decides.
    assert_eq!(super::place(Some(dir(300, None)), &t), super::Place::New);
    assert!(!dir(300, born(10)).same_inode(&dir(300, born(11))));
    assert!(dir(300, born(10)).same_inode(&dir(300, None)));
}

/// Issue 23: without birth times, a directory that reuses the inode number
/// of staged content a rollback after the commit point already removed
/// must not be taken for that content: recovery refuses, naming it.
#[test]
fn without_birth_times_a_rollback_after_commit_refuses_an_inode_only_match() {
    let born = |secs| Some(crate::txn::BirthTime { secs, nanos: 0 });
    let dir = |ino, btime| Identity { dev: 1, ino, kind: EntryKind::Dir, sha256: None, btime };
    // A fresh install (no old content) of t0, and an upgrade of t1.
    let mk = |btime| {
        let mut t0 = target(0, false, Some(true));
        t0.new = Some(NewContent { kind: EntryKind::Dir, identity: Some(dir(300, btime)) });
        let mut t1 = target(1, true, Some(true));
        t1.old = Some(dir(101, btime));
        t1.new = Some(NewContent { kind: EntryKind::Dir, identity: Some(dir(201, btime)) });
        (t0, t1)
    };
    // The rollback's moves and cleanup ran (t0's staged tree removed, t1's
    // old content back), then the process died before `rolled_back`; the
    // user made a directory at t0, which got inode 300 again.
    let (t0, t1) = mk(None);
    let rec = record(Step::RollingBack { after_commit: true }, vec![t0, t1]);
    let obs = vec![
        Observed { target: Some(dir(300, None)), staging: None, backup: None },
        Observed { target: Some(dir(101, None)), staging: None, backup: None },
    ];
    match decide(&rec, &obs) {
        RecoveryDecision::Refuse { reason } => {
            assert!(reason.contains("/d/t0"), "names the path: {reason}");
            assert!(reason.contains("birth time"), "says why: {reason}");
        }
        other => panic!("a directory matched by inode number alone was moved away to be removed: {other:?}"),
    }
    // At the commit point itself nothing was removed yet, so the inode
    // number is still the staged tree's: rolling back after commit proceeds.
    let mut committed = rec.clone();
    committed.step = Step::Committed;
    let obs_c = vec![
        Observed { target: Some(dir(300, None)), staging: None, backup: None },
        Observed { target: Some(dir(101, None)), staging: None, backup: None },
    ];
    assert!(
        matches!(decide(&committed, &obs_c), RecoveryDecision::RollBack { after_commit: true, .. }),
        "t1's staged content is lost: roll back after commit"
    );
    // Where the filesystem keeps birth times, the same match is proof.
    let (t0, t1) = mk(born(10));
    let rec = record(Step::RollingBack { after_commit: true }, vec![t0, t1]);
    let obs = vec![
        Observed { target: Some(dir(300, born(10))), staging: None, backup: None },
        Observed { target: Some(dir(101, born(10))), staging: None, backup: None },
    ];
    match decide(&rec, &obs) {
        RecoveryDecision::RollBack { moves, .. } => {
            assert!(moves.contains(&Action::Rename { from: "/d/t0".into(), to: "/d/.t0.stagehand-1.staging".into() }))
        }
        other => panic!("the staged tree, proven by its birth time, should be moved back: {other:?}"),
    }
    // ...and a new directory with its inode number has another birth time.
    let obs = vec![
        Observed { target: Some(dir(300, born(99))), staging: None, backup: None },
        Observed { target: Some(dir(101, born(10))), staging: None, backup: None },
    ];
    assert!(matches!(decide(&rec, &obs), RecoveryDecision::Refuse { .. }));
}

/// Issue 23: a rollback, before or after the commit point, removes a staging
/// or backup path only if it can prove this transaction made what is there.
#[test]
fn rollback_removes_only_what_the_transaction_made() {
    let born = |secs| Some(crate::txn::BirthTime { secs, nanos: 0 });
    let dir = |ino, btime| Identity { dev: 1, ino, kind: EntryKind::Dir, sha256: None, btime };
    let staging = "/d/.t0.stagehand-1.staging".to_string();
    let backup = "/d/.t0.stagehand-1.backup".to_string();
    let removes = |d: &RecoveryDecision, p: &str| match d {
        RecoveryDecision::RollBack { moves, cleanup, .. } => {
            moves.iter().chain(cleanup).any(|a| matches!(a, Action::Remove { path } if path == p))
        }
        RecoveryDecision::RollForward { swaps, cleanup } => swaps
            .iter()
            .flat_map(|s| &s.actions)
            .chain(cleanup)
            .any(|a| matches!(a, Action::Remove { path } if path == p)),
        RecoveryDecision::Refuse { .. } => false,
    };
    let refuses_naming =
        |d: &RecoveryDecision, p: &str| matches!(d, RecoveryDecision::Refuse { reason } if reason.contains(p));
    // Planned (the staged identity not recorded yet), started at second 50.
    let mut rec = record(Step::Planned, vec![target(0, true, Some(false))]);
    rec.started_at = 50;
    let at = |staging: Option<Identity>, backup: Option<Identity>| {
        vec![Observed { target: Some(ident(old_ino(0))), staging, backup }]
    };
    // A partial staging made during the transaction: removed.
    let d = decide(&rec, &at(Some(dir(700, born(60))), None));
    assert!(removes(&d, &staging), "{d:?}");
    // An object at the staging name born before the transaction (a reused
    // id's leftover, the user's tree): not its own, refused and named.
    let d = decide(&rec, &at(Some(dir(700, born(10))), None));
    assert!(refuses_naming(&d, &staging), "{d:?}");
    // Nothing of this transaction is ever at its backup name before the
    // commit point: something there is not its own.
    let d = decide(&rec, &at(None, Some(dir(701, born(60)))));
    assert!(refuses_naming(&d, &backup), "{d:?}");
    // Staged: the staged identity is recorded, so anything else at the
    // staging name is not its own, birth time or not.
    let rec = record(Step::Staged, vec![target(0, true, Some(true))]);
    let d = decide(&rec, &at(Some(dir(702, None)), None));
    assert!(refuses_naming(&d, &staging), "{d:?}");
    let d = decide(&rec, &at(Some(ident(new_ino(0))), None));
    assert!(removes(&d, &staging), "its own staged tree is removed: {d:?}");
    // After the commit point, a swap done (old content at the staging name)
    // and something foreign at the backup name: neither direction removes it.
    for step in [Step::Committed, Step::Cleaning, Step::RollingBack { after_commit: true }] {
        let rec = record(step, vec![target(0, true, Some(true))]);
        let obs = vec![Observed {
            target: Some(ident(new_ino(0))),
            staging: Some(ident(old_ino(0))),
            backup: Some(dir(703, None)),
        }];
        let d = decide(&rec, &obs);
        assert!(refuses_naming(&d, &backup), "{step:?}: {d:?}");
    }
}
