//! A damaged journal record is reported, naming the record, and nothing on
//! disk is touched because of it. The test edits the sled database directly
//! (STATE/journal, tree `packages`) while no stagehand process runs.
//!
//! Control: after each corruption is reported, the original bytes are put
//! back and `list` must succeed again, which proves the failure came from the
//! damaged bytes (and not, say, from sled's lock still held by this process).

mod common;

use std::fs;

use common::*;

/// Opens STATE/journal, finds the `packages` record of `name`, replaces its
/// value with `edit(original)`, and returns (key as text, original value).
fn edit_package_record(sb: &Sandbox, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (String, Vec<u8>) {
    let db = sled::open(sb.state.join("journal")).expect("open the journal with sled");
    let names: Vec<String> = db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    assert!(names.iter().any(|n| n == "packages"), "no `packages` tree in the journal; trees: {names:?}");
    let tree = db.open_tree("packages").unwrap();
    let matching: Vec<(sled::IVec, sled::IVec)> =
        tree.iter().map(Result::unwrap).filter(|(k, _)| k.windows(name.len()).any(|w| w == name.as_bytes())).collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one `packages` key containing {name:?}; keys: {:?}",
        tree.iter().keys().map(|k| String::from_utf8_lossy(&k.unwrap()).into_owned()).collect::<Vec<_>>()
    );
    let (key, value) = matching.into_iter().next().unwrap();
    let original = value.to_vec();
    let mut edited = original.clone();
    edit(&mut edited);
    assert_ne!(edited, original, "the edit changed nothing");
    tree.insert(&key, edited).unwrap();
    tree.flush().unwrap();
    db.flush().unwrap();
    drop(tree);
    drop(db);
    wait_for_sled_to_let_go(sb);
    (String::from_utf8_lossy(&key).into_owned(), original)
}

/// sled releases its flock on STATE/journal/db only when its background
/// threads drop their last handle, a little after `Db` is dropped. Wait
/// until we can take that lock ourselves (then release it), so the binary
/// does not fail on sled's lock instead of on the record.
fn wait_for_sled_to_let_go(sb: &Sandbox) {
    use std::os::unix::io::AsRawFd;
    let db_file = sb.state.join("journal/db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let f = std::fs::File::open(&db_file).unwrap();
        // SAFETY: flock(2) on a descriptor we own; released when `f` closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sled in this test process still holds the lock on {}",
            db_file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn put_back(sb: &Sandbox, name: &str, original: Vec<u8>) {
    edit_package_record(sb, name, move |v| *v = original);
}

fn installed_v1() -> (Sandbox, Tree) {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let world = sb.world();
    (sb, world)
}

#[track_caller]
fn assert_reports(sb: &Sandbox, cmd: &str, needles: &[&[&str]], what: &str) {
    let run = sb.run(&[cmd]);
    assert!(matches!(run.code, Some(c) if c != 0), "`{cmd}` did not fail on {what}:\n{}", run.describe());
    let low = run.stderr.to_lowercase();
    for alternatives in needles {
        assert!(
            alternatives.iter().any(|n| low.contains(&n.to_lowercase())),
            "`{cmd}` on {what}: stderr mentions none of {alternatives:?}:\n{}",
            run.describe()
        );
    }
}

#[test]
fn flipped_byte_in_a_package_record_is_reported_by_name() {
    let (sb, world) = installed_v1();
    let (key, original) = edit_package_record(&sb, DEMO, |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0xFF;
    });
    let record = format!("packages/{key}");
    for cmd in ["list", "status"] {
        assert_reports(&sb, cmd, &[&[record.as_str()]], "a flipped byte");
        let now = sb.world();
        assert!(now == world, "`{cmd}` on a corrupt record changed DEST:\n{}", tree_diff(&now, &world, 20));
    }
    assert!(sb.leftovers().is_empty());

    put_back(&sb, DEMO, original);
    let p = sb.listed(DEMO).expect("demo listed once the record is repaired");
    assert_eq!(p.digest, demo_digest("v1"));
    assert!(sb.world() == world);
}

/// A record as a future stagehand would write it: format version 255 with a
/// valid CRC-32 (IEEE, little-endian, over everything before it; see
/// `journal-format.md`). The error must name the version.
#[test]
fn unknown_format_version_is_reported() {
    let (sb, world) = installed_v1();
    let (key, original) = edit_package_record(&sb, DEMO, |v| {
        v[0] = 0xFF;
        let n = v.len() - 4;
        let crc = crc32fast::hash(&v[..n]);
        v[n..].copy_from_slice(&crc.to_le_bytes());
    });
    let record = format!("packages/{key}");
    for cmd in ["list", "status"] {
        assert_reports(&sb, cmd, &[&["version"], &["255", "0xff"], &[record.as_str()]], "an unknown format version");
        let now = sb.world();
        assert!(now == world, "`{cmd}` on an unknown version changed DEST:\n{}", tree_diff(&now, &world, 20));
    }

    put_back(&sb, DEMO, original);
    sb.run(&["list"]).ok();
    sb.run(&["verify", DEMO]).ok();
}

/// The version byte set to 0xFF without fixing the checksum: the checksum
/// covers the version byte, so this is reported as a corrupt record (naming
/// it), which is all that can honestly be said about it.
#[test]
fn damaged_version_byte_is_reported_as_corrupt() {
    let (sb, world) = installed_v1();
    let (key, original) = edit_package_record(&sb, DEMO, |v| v[0] = 0xFF);
    let record = format!("packages/{key}");
    for cmd in ["list", "status"] {
        assert_reports(&sb, cmd, &[&[record.as_str()]], "a damaged version byte");
        assert!(sb.world() == world, "`{cmd}` on a damaged record changed DEST");
    }
    put_back(&sb, DEMO, original);
    sb.run(&["list"]).ok();
}

/// sled 0.34 opens a truncated main file on an older, empty state without an
/// error; the seal outside sled must catch it, name both paths, and change
/// nothing on disk.
#[test]
fn truncated_journal_is_refused_by_its_seal() {
    let (sb, world) = installed_v1();
    let journal = sb.state.join("journal");
    let biggest = std::fs::read_dir(&journal)
        .expect("journal dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a sled file")
        .path();
    std::fs::OpenOptions::new().write(true).open(&biggest).expect("open").set_len(0).expect("truncate");
    for cmd in ["list", "status"] {
        assert_reports(&sb, cmd, &[&["behind its seal"], &["journal.seal"]], "a truncated journal");
        assert!(sb.world() == world, "`{cmd}` on a truncated journal changed DEST");
    }
}

/// A journal that cannot be opened does not brick the tool: `status`,
/// `list`, `verify` and `repair --dry-run` exit 6 saying what is wrong and
/// what to do (`--json`: the error object); `repair --set-aside-journal`
/// moves the journal and its seal aside (deleting nothing), reports the
/// staging paths of the transaction it was in the middle of, and a fresh
/// journal then works, numbering transactions past the old ones. DEST is
/// hashed before and after: nothing there changes.
#[test]
fn unopenable_journal_is_set_aside() {
    let (sb, _) = installed_v1();
    // An upgrade killed after staging, before its commit record: its staging
    // paths hold v2 content that only the journal knows about.
    let crash = [("STAGEHAND_CRASH_AT", std::ffi::OsStr::new("journal.commit"))];
    let run = sb.run_env(&sb.install_demo_args("v2"), &crash);
    assert!(!run.success(), "the upgrade was to be killed:\n{}", run.describe());
    let staged = sb.leftovers();
    assert!(!staged.is_empty(), "no staging paths after the kill");
    let world = sb.world();
    // The seal outside sled is damaged: the journal cannot be opened.
    let seal = sb.state.join("journal.seal");
    std::fs::write(&seal, b"garbage\n").unwrap();
    for cmd in [&["status"][..], &["list"], &["verify"], &["repair", "--dry-run"]] {
        let run = sb.run(cmd);
        assert_eq!(run.code, Some(6), "`{cmd:?}` on an unopenable journal:\n{}", run.describe());
        assert!(
            run.stderr.contains("repair --set-aside-journal"),
            "`{cmd:?}` does not say what to do:\n{}",
            run.describe()
        );
        let mut json_cmd = cmd.to_vec();
        json_cmd.push("--json");
        let run = sb.run(&json_cmd);
        assert_eq!(run.json()["exit_code"], 6, "`{json_cmd:?}`:\n{}", run.describe());
        assert!(sb.world() == world, "`{cmd:?}` changed DEST");
    }
    let run = sb.run(&["repair", "--set-aside-journal", "--json"]);
    run.ok();
    let rep = run.json();
    let moved: Vec<String> =
        rep["moved"].as_array().unwrap().iter().map(|m| m["to"].as_str().unwrap().into()).collect();
    assert_eq!(moved.len(), 3, "journal, seal and file lists moved: {rep}");
    assert!(moved[2].contains("filelists.damaged-"), "the file lists go with their journal: {rep}");
    for m in &moved {
        assert!(std::path::Path::new(m).exists(), "{m} is gone");
    }
    assert_eq!(std::fs::read(&moved[1]).unwrap(), b"garbage\n", "the seal was moved as it was");
    let reported: Vec<String> =
        rep["stagehand_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    // Every staging path itself (not what is inside a staging tree).
    for s in staged.iter().filter(|s| s.rsplit('/').next().is_some_and(|n| n.contains(".stagehand-"))) {
        assert!(reported.iter().any(|r| r.ends_with(s.as_str())), "staging path {s} not reported: {reported:?}");
    }
    assert!(sb.world() == world, "setting the journal aside changed DEST");
    // A fresh journal: nothing pending, nothing listed, and a new transaction
    // numbered past the set-aside one (whose names are still on disk).
    assert!(pending_of(&sb.status_json()).is_empty());
    assert!(sb.list_json().is_empty());
    let other = Sandbox::new();
    let args = demo_install_args(&other.dest, &demo_source("v1"));
    let run = sb.run(&[args.as_slice(), &["--json".into()]].concat());
    run.ok();
    let txn = run.json()["result"]["txn"].as_u64().unwrap_or(0);
    assert!(txn >= 3, "the fresh journal reused transaction id {txn}:\n{}", run.describe());
    assert!(sb.world() == world, "DEST changed");
    // Asked again, with a journal that opens: refused, nothing moved.
    let again = sb.run(&["repair", "--set-aside-journal"]);
    assert_eq!(again.code, Some(1), "{}", again.describe());
}

/// A layout whose blobs only we can write is hard-linked into the cache;
/// others' (here: group-writable) are copied, and that copy is made after
/// the commit point without an fsync (its partial file, promoted by a
/// later rollback). After v1 → v2 from such a layout, v1's layer is
/// damaged, then deleted: `rollback` refuses each time, saying the blob is
/// missing or damaged and how to reinstall, and changes nothing (DEST,
/// `list`, `history`). With the copy restored, the same rollback works and
/// the blob is in the cache's store, promoted.
#[test]
fn rollback_refuses_when_a_cached_layer_is_damaged_or_missing() {
    let sb = Sandbox::new();
    let layout = sb.root.join("shared-layout");
    copy_tree(&demo_layout(), &layout);
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        chmod(&e.unwrap().path(), 0o664);
    }
    let install = |tag: &str| {
        let mut args = demo_install_args(&sb.dest, &format!("oci-layout:{}:{tag}", layout.display()));
        args.extend(["--name".into(), DEMO.into()]);
        sb.run(&args).ok();
    };
    install("v1");
    install("v2");

    let manifest = |tag: &str| -> serde_json::Value {
        let d = layout_tag_digest(&layout, tag);
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap()).unwrap()
    };
    let layers = |tag: &str| -> Vec<String> {
        manifest(tag)["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
    };
    let v2_layers = layers("v2");
    let victim = layers("v1").into_iter().find(|d| !v2_layers.contains(d)).expect("v1 has a layer v2 does not share");
    let hex = &victim[7..];
    let stored = sb.state.join("blobs/sha256").join(hex);
    let partial = sb.state.join("blobs/partial").join(hex);
    assert!(!stored.exists(), "a copied blob entered the store before anything promoted it");
    assert!(partial.is_file(), "v1's layer was not copied into the cache at {}", partial.display());
    let saved = fs::read(&partial).unwrap();

    let world = sb.world();
    let list = sb.list_json();
    let history_len = |sb: &Sandbox| sb.run(&["history", "--json"]).ok().json().as_array().expect("array").len();
    let hist = history_len(&sb);
    let mut damaged = saved.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    for (what, bytes) in [("damaged", Some(&damaged)), ("deleted", None)] {
        match bytes {
            Some(b) => fs::write(&partial, b).unwrap(),
            None => remove_if_exists(&partial),
        }
        let run = sb.run(&["rollback", DEMO]);
        run.expect_clean_failure();
        let msg = run.stderr.to_lowercase();
        assert!(
            msg.contains("missing or damaged") && msg.contains(&victim) && msg.contains("nothing was changed"),
            "a rollback over a {what} cached layer does not say so:\n{}",
            run.describe()
        );
        assert!(run.stderr.contains("stagehand install"), "no way out named:\n{}", run.describe());
        assert!(
            sb.world() == world,
            "the refused rollback ({what}) changed DEST:\n{}",
            tree_diff(&sb.world(), &world, 20)
        );
        assert_eq!(sb.list_json(), list, "the refused rollback ({what}) changed the package list");
        assert_eq!(history_len(&sb), hist, "the refused rollback ({what}) added a history entry");
        assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
        assert!(!stored.exists(), "a {what} copy was promoted into the store");
    }

    // Control: the copy back, the same rollback works, from the store.
    fs::write(&partial, &saved).unwrap();
    sb.run(&["rollback", DEMO]).ok();
    assert_eq!(sha256_file(&stored), hex, "the promoted blob does not hash to its name");
    assert!(!partial.exists(), "the promoted partial is still there");
    let v1 = layout_tag_digest(&layout, "v1");
    assert!(
        sb.list_json().iter().any(|p| p.to_string().contains(&v1)),
        "v1 is not installed after the rollback: {:?}",
        sb.list_json()
    );
}
