//! What a kill leaves inside sled 0.34.7's own files, built exactly as the
//! kill leaves it, and shown to open with nothing lost (see
//! `src/journal/leftovers.rs` for where in sled each one comes from).
//!
//! Each case first shows that sled itself, opened directly on a copy, fails
//! on the leftover (so the test is about a real failure), then that every
//! stagehand command works and the registry and files are intact.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// The snapshot files (`snap.*`) in a journal directory, sorted by name.
fn snapshots(journal: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("snap."))
        .collect();
    v.sort();
    v
}

/// Opens a copy of `journal` with sled directly (not through stagehand).
fn raw_sled_opens(journal: &Path, scratch: &Path) -> Result<(), String> {
    let copy = scratch.join("raw-copy");
    remove_if_exists(&copy);
    copy_tree(journal, &copy);
    let r = sled::Config::new().path(&copy).flush_every_ms(None).open().map(drop).map_err(|e| e.to_string());
    remove_if_exists(&copy);
    r
}

#[test]
fn unfinished_snapshot_is_removed_and_nothing_is_lost() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    // An open after a write writes a snapshot: this is the older, complete one.
    sb.run(&["status"]).ok();
    sb.install_demo("v2").ok();
    let journal = sb.state.join("journal");
    let before = snapshots(&journal);
    assert_eq!(before.len(), 1, "one complete snapshot after v1: {before:?}");
    // What the next open's `write_snapshot` produces: let sled write it in a
    // copy, and take its name and bytes.
    let scratch = sb.root.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let probe = scratch.join("probe");
    copy_tree(&journal, &probe);
    sled::Config::new().path(&probe).flush_every_ms(None).open().expect("sled opens the intact journal");
    let newer = snapshots(&probe).pop().expect("sled wrote a snapshot");
    assert!(newer.file_name() > before[0].file_name(), "the new snapshot sorts after the old one");
    let bytes = fs::read(&newer).unwrap();
    let name = format!("{}.generating", newer.file_name().unwrap().to_string_lossy());
    let world = sb.world();
    let listed = sb.listed("demo").expect("demo installed");
    let saved = scratch.join("saved");
    sb.save_to(&saved);
    // A kill after the create, in the middle of the write, and after the
    // fsync but before the rename.
    let cases = [("empty", 0), ("cut short", bytes.len() / 2), ("complete, not renamed", bytes.len())];
    let mut raw_failures = 0;
    for (what, len) in cases {
        sb.restore_from(&saved);
        let leftover = journal.join(&name);
        fs::write(&leftover, &bytes[..len]).unwrap();
        let raw = raw_sled_opens(&journal, &scratch);
        if len < bytes.len() {
            assert!(raw.is_err(), "{what}: sled itself opened a journal with {name} cut to {len} bytes");
            raw_failures += 1;
        }
        for cmd in [&["status"][..], &["list"], &["verify"], &["history"]] {
            sb.run(cmd).ok();
        }
        assert!(!leftover.exists(), "{what}: {name} is still there");
        assert_eq!(sb.listed("demo").as_ref(), Some(&listed), "{what}: the registry changed");
        assert!(sb.world() == world, "{what}: installed files changed");
        assert_eq!(sb.run(&["history", "--json"]).ok().json().as_array().map(Vec::len), Some(2), "{what}");
        // And the journal still takes transactions.
        sb.install_demo("v1").ok();
        assert_eq!(sb.listed("demo").map(|p| p.digest), Some(demo_digest("v1")), "{what}");
        println!("leftover {name} ({what}, {len} of {} bytes): sled alone {raw:?}; stagehand opened it", bytes.len());
    }
    assert_eq!(raw_failures, 2);
}

#[test]
fn unfinished_conf_is_rewritten() {
    // sled writes `conf` before it creates `db`, with no fsync: a kill during
    // the very first open leaves `blobs/` and a prefix of `conf`, nothing else.
    let sb = Sandbox::new();
    let text = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
    let scratch = sb.root.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    for cut in [0, 16, 26, text.len()] {
        remove_if_exists(&sb.state);
        remove_if_exists(&sb.dest);
        fs::create_dir_all(&sb.dest).unwrap();
        let journal = sb.state.join("journal");
        fs::create_dir_all(journal.join("blobs")).unwrap();
        fs::write(journal.join("conf"), &text.as_bytes()[..cut]).unwrap();
        let raw = raw_sled_opens(&journal, &scratch);
        if cut > 8 {
            // Up to 8 bytes sled treats as missing; past that it trusts the
            // prefix (a bad CRC is only a warning) and fails.
            assert!(raw.is_err(), "sled opened a conf cut to {cut} bytes");
        }
        sb.run(&["status"]).ok();
        sb.install_demo("v1").ok();
        sb.run(&["verify"]).ok();
        let conf = fs::read(journal.join("conf")).unwrap();
        assert_eq!(&conf[..text.len()], text.as_bytes(), "conf cut at {cut} was not rewritten whole");
        assert_eq!(conf[text.len()..], crc32fast::hash(text.as_bytes()).to_le_bytes(), "conf's CRC");
        println!("conf cut to {cut} bytes: sled alone {raw:?}; stagehand rewrote it and installed");
    }
}
