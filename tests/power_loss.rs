//! Simulated power loss, ALICE/CrashMonkey style (Pillai et al. OSDI'14,
//! Mohan et al. OSDI'18).
//!
//! Each scenario (install-fresh, upgrade v1→v2, uninstall), in both sync
//! modes (the default one `syncfs` after staging, and `STAGEHAND_SYNC=fsync`,
//! per file and directory), runs once with `STAGEHAND_RECORD_OPS`, which logs
//! every filesystem mutation, every fsync/syncfs barrier and a copy of the
//! durable journal after each journal flush. The checker replays the log onto
//! an in-memory inode model of the sandbox (DEST and the state dir's blob
//! cache; the journal itself is sled's and comes from the snapshots) and,
//! for every prefix of the log, builds the states that power loss at that
//! instant could leave on disk:
//!
//! - a directory-entry change (create, mkdir, symlink, link, rename,
//!   exchange, remove) is durable once every directory it touched was
//!   fsynced after it, or a syncfs came after it; until then it may be undone. Considered: all volatile
//!   changes kept, all dropped, each one dropped alone, every in-order prefix
//!   of them kept (ext4 commits metadata in order), and each volatile remove
//!   of a directory as "children gone, directory still there";
//! - a file's data is durable up to its length at its last fsync (or
//!   syncfs); what was written since may be lost or half lost (all such files
//!   at once, or each alone);
//! - the journal is the copy taken at the last journal flush in the prefix,
//!   taken only once our own fsyncs of sled's files and directories are
//!   done: sled's `flush()` (a `sync_file_range` on Linux, no fsync of its
//!   blob files or directories) counts for nothing; of sled's blob files the
//!   copy holds only those we fsynced, with `blobs/` after them.
//!
//! Each distinct state is materialized at the SAME absolute paths (the
//! journal records absolute paths), the identities (inode numbers) in the
//! journal's pending transaction records are remapped to the materialized
//! objects (they are what recovery compares), `stagehand status --json`
//! recovers, and the invariants are checked with this file's own hashing:
//! DEST is exactly the old or the new world, no `.stagehand-` name is left,
//! nothing is pending, `list --json` agrees with the disk; once the commit
//! record is durable the outcome must be the new world (the commit point
//! means roll forward), and after the whole log (success reported) too;
//! every blob under `STATE/blobs/sha256/` hashes to its name (the cache's
//! own rule).
//!
//! The machinery (the op log and inode model, the crash states, the
//! recorded scenarios and their checks) is in `tests/common/plmodel.rs`,
//! `plstates.rs` and `plcheck.rs`; `tests/power_loss_journal.rs` uses it for
//! a damaged journal, set-aside, and sled's blob files.
//!
//! A second test removes one fsync with `STAGEHAND_SKIP_FSYNC` and asserts
//! the checker reports violations: proof that the checker can see a missing
//! barrier at all. One of its cases skips every fsync of sled's files (what
//! stagehand did before it issued them: it trusted sled's `flush()`).

mod common;

use std::time::Instant;

use common::plcheck::*;

fn check_scenario(sc: Scenario) {
    let mut total = 0;
    for sync in [Sync::Syncfs, Sync::PerFile] {
        let t0 = Instant::now();
        let c = setup(sc, sync, None);
        let o = c.run(false);
        println!(
            "power loss [{} {}]: {} ops logged, {} prefixes, {} candidate crash states ({} impossible), \
             {} distinct crash states checked (ended old {}, new {}), {} violations, {:.1}s",
            sc.name(),
            sync.env(),
            o.ops,
            o.prefixes,
            o.candidates,
            o.impossible,
            o.checked,
            o.ended_old,
            o.ended_new,
            o.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        for v in o.violations.iter().take(20) {
            println!("  VIOLATION {v}");
        }
        assert!(o.checked > 0 && o.ended_old > 0, "[{}] the checker checked too little: {o:?}", sc.name());
        if sc.after().is_some() {
            assert!(o.ended_new > 0, "[{}] no crash state ended in the new world", sc.name());
        }
        assert!(
            o.violations.is_empty(),
            "[{} {}] {} power-loss violations, first: {}",
            sc.name(),
            sync.env(),
            o.violations.len(),
            o.violations[0]
        );
        total += o.checked;
    }
    println!("power loss [{}]: {total} crash states checked in both sync modes, 0 violations", sc.name());
}

#[test]
fn power_loss_install_fresh() {
    check_scenario(Scenario::InstallFresh);
}

#[test]
fn power_loss_upgrade() {
    check_scenario(Scenario::Upgrade);
}

#[test]
fn power_loss_uninstall() {
    check_scenario(Scenario::Uninstall);
}

/// A step retried after a failed fsync finds its work done, but done only in
/// the page cache: the old tree's removal, whose directory fsync failed (as
/// btrfs's did when the disk failed the transaction it forced), is found
/// gone by the retry. The transaction must not be finished before that
/// absence is durable (the write-error campaign saw the old tree come back
/// beside a finished upgrade on btrfs). Without the settling fsync before
/// `done`, this checker finds the `.staging` name back in a state after the
/// reported success.
#[test]
fn a_retried_cleanup_makes_the_removal_it_finds_durable() {
    for sync in [Sync::Syncfs, Sync::PerFile] {
        let how = Setup { fail_at: Some("fsops.fsync_dir.cleanup:1=EIO"), ..Setup::default() };
        let c = setup_with(Scenario::Upgrade, sync, &how);
        let o = c.run(false);
        println!(
            "retried cleanup [{}]: {} distinct crash states, {} violations",
            sync.env(),
            o.checked,
            o.violations.len()
        );
        assert!(o.checked > 0 && o.ended_new > 0, "the checker checked too little: {o:?}");
        assert!(o.violations.is_empty(), "[{}] first violation: {}", sync.env(), o.violations[0]);
    }
    // The same run without the settling fsyncs: the checker must see it.
    let how = Setup {
        fail_at: Some("fsops.fsync_dir.cleanup:1=EIO"),
        skip_fsync: Some("fsops.fsync_dir.settle:*+fsops.syncfs.settle:*"),
        ..Setup::default()
    };
    let o = setup_with(Scenario::Upgrade, Sync::Syncfs, &how).run(true);
    println!("retried cleanup without the settling fsync: {:?}", o.violations.first());
    assert!(!o.violations.is_empty(), "the checker missed a removal that was never made durable");
}

/// Removing a needed barrier must be caught. Each candidate removes one the
/// design relies on; every one must produce violations.
#[test]
fn missing_fsync_is_detected() {
    let candidates: &[(Scenario, Sync, &str, &str)] = &[
        (Scenario::InstallFresh, Sync::Syncfs, "fsops.syncfs.staging:1", "the one syncfs after staging"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync.staging:1", "the data of the first staged file"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync_dir.staging:1", "the entries of the first staged dir"),
        // Before `done`, both the swap and `settle` fsync the swapped
        // targets' parents (recovery, which journals `cleaning` and removes
        // before it settles, relies on the swap's): skip both.
        (
            Scenario::Upgrade,
            Sync::Syncfs,
            "fsops.fsync_dir.swap:*+fsops.fsync_dir.settle:1+fsops.syncfs.settle:1",
            "the swapped targets' parents, fsynced by neither the swaps nor settle before done",
        ),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.cache:1", "the data of a blob before it enters the cache"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.journal:*", "our fsyncs of sled's files: sled's flush alone"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.filelist:1", "the data of the first new file list"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync_dir.filelist:*", "the entries of the file lists"),
    ];
    let mut missed = Vec::new();
    for (sc, sync, skip, what) in candidates {
        let t0 = Instant::now();
        let c = setup(*sc, *sync, Some(skip));
        let o = c.run(true);
        println!(
            "skip {skip} ({what}) [{} {}]: violation found after {} distinct crash states ({} violations), {:.1}s",
            sc.name(),
            sync.env(),
            o.checked,
            o.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        match o.violations.first() {
            Some(v) => println!("  e.g. {}", v.lines().next().unwrap_or("")),
            None => missed.push(*skip),
        }
    }
    assert!(missed.is_empty(), "removing these barriers went unnoticed by the checker: {missed:?}");
}
