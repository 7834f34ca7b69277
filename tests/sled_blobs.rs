//! sled's blob files are part of the durable journal, and the claim that
//! records of at most 64 KiB keep sled out of `journal/blobs/` is false:
//! sled's 128 KiB threshold applies to a whole serialized page, and a leaf
//! holds many records.
//!
//! Twelve demo packages installed under directories with paths of about
//! 2,100 bytes, each install recorded with `STAGEHAND_RECORD_OPS` (the power-loss
//! checker's recorder: every fsync and a copy of the journal after each
//! durable flush). The model of blob files checked here: every blob file in
//! a durable journal copy was fsynced, and `blobs/` fsynced after it, before
//! that flush; and each such copy, blob files and all, recovers with every
//! package it had listed. A copy that lost a blob file (as power loss could
//! leave it without those fsyncs) is refused with every byte kept.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// Packages installed (each with five targets under a ~2,100-byte path:
/// a transaction record of ~50 KB stays under the 64 KiB record limit).
const PACKAGES: usize = 12;

fn long_dir(dest: &Path) -> PathBuf {
    let mut p = dest.to_path_buf();
    for i in 0..10 {
        p.push(format!("{i:02}{}", "x".repeat(198)));
    }
    p
}

/// Installs demo v1 as `name` under `base`, recording ops into `rec`.
fn install_long(sb: &Sandbox, base: &Path, name: &str, rec: &Path) -> Run {
    let source = demo_source("v1");
    let to = |d: &str| base.join(name).join(d);
    let map = |glob: &str, d: &str| format!("{glob}={}", to(d).display());
    let args: Vec<std::ffi::OsString> = vec![
        "install".into(),
        source.into(),
        "--name".into(),
        name.into(),
        "--to".into(),
        to("app").into(),
        "--map".into(),
        map("*.so", "lib").into(),
        "--map".into(),
        map("*.control", "share/extension").into(),
        "--map".into(),
        map("*.sql", "share/extension").into(),
    ];
    sb.run_env(&args, &[("STAGEHAND_RECORD_OPS", rec.as_os_str())])
}

#[test]
fn blob_files_are_durable_in_every_journal_copy_and_recover() {
    let sb = Sandbox::new();
    let base = long_dir(&sb.dest);
    fs::create_dir_all(&base).unwrap();
    let recs = tempdir();
    let blobs_dir = sb.state.join("journal/blobs");
    let mut snapshots_with_blobs: Vec<(PathBuf, usize)> = Vec::new();
    for i in 0..PACKAGES {
        let rec = recs.path().join(format!("run{i}"));
        install_long(&sb, &base, &format!("p{i}"), &rec).ok();
        let log = fs::read_to_string(rec.join("ops.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for (k, l) in lines.iter().enumerate() {
            if l["op"] != "journal_flush" {
                continue;
            }
            let snap = rec.join(format!("journal-{}", l["snapshot"]));
            let names: Vec<String> = fs::read_dir(snap.join("blobs"))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            for n in &names {
                let blob = blobs_dir.join(n).display().to_string();
                let synced = lines[..k].iter().rposition(|o| o["op"] == "fsync" && o["path"] == blob.as_str());
                let dir_synced = lines[..k]
                    .iter()
                    .rposition(|o| o["op"] == "fsync_dir" && o["path"] == blobs_dir.display().to_string().as_str());
                assert!(
                    matches!((synced, dir_synced), (Some(f), Some(d)) if f < d),
                    "run {i}: blob file {n} is in the durable journal of flush {} ({}) without an fsync of it \
                     followed by one of blobs/ before that flush",
                    l["snapshot"],
                    l["what"]
                );
            }
            if !names.is_empty() {
                snapshots_with_blobs.push((snap, i + 1));
            }
        }
    }
    let blobs: Vec<_> = fs::read_dir(&blobs_dir).unwrap().flatten().collect();
    let biggest = blobs.iter().map(|e| e.metadata().unwrap().len()).max().unwrap_or(0);
    println!(
        "{PACKAGES} packages under {}-byte paths: {} blob files, largest {biggest} bytes",
        base.as_os_str().len(),
        blobs.len()
    );
    assert!(!blobs.is_empty(), "sled wrote no blob file: the page threshold was not reached");
    assert!(!snapshots_with_blobs.is_empty());

    // The last durable copy holding blob files of each run recovers, blob files and all.
    let world = sb.world();
    let state_copy = recs.path().join("state-final");
    copy_tree(&sb.state, &state_copy);
    let mut checked = 0;
    for (snap, installed) in snapshots_with_blobs.iter().rev().step_by(4).take(3) {
        replace_with_copy(snap, &sb.state.join("journal"));
        // The seal is written after the flush that made its txn durable, so
        // a crash state holds an older one or none: none here.
        let _ = fs::remove_file(sb.state.join("journal.clean"));
        let _ = fs::remove_file(sb.state.join("journal.seal"));
        let n = sb.list_json().len();
        assert!(
            n + 1 >= *installed,
            "a durable journal copy with blob files lists {n} packages, {installed} were installed"
        );
        checked += 1;
        // The same copy without one of its blob files: refused, bytes kept.
        replace_with_copy(snap, &sb.state.join("journal"));
        // The seal is written after the flush that made its txn durable, so
        // a crash state holds an older one or none: none here.
        let _ = fs::remove_file(sb.state.join("journal.clean"));
        let _ = fs::remove_file(sb.state.join("journal.seal"));
        let victim = fs::read_dir(sb.state.join("journal/blobs")).unwrap().flatten().next().unwrap().path();
        fs::remove_file(&victim).unwrap();
        let before = hash_tree(&sb.state.join("journal"));
        let st = sb.run(&["status"]);
        let after = hash_tree(&sb.state.join("journal"));
        assert!(after == before, "a journal missing a blob file was changed:\n{}", tree_diff(&after, &before, 10));
        assert_eq!(st.code, Some(6), "a journal missing a blob file is unreadable (exit 6):\n{}", st.describe());
    }
    assert!(checked > 0);
    remove_if_exists(&sb.state);
    copy_tree(&state_copy, &sb.state);
    let _ = fs::remove_file(sb.state.join("journal.clean"));
    sb.run(&["status"]).ok();
    assert!(sb.world() == world);
}
