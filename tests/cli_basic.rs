//! The CLI's everyday contract: install, list, status, verify, upgrade,
//! uninstall; the state-dir lock; clear refusals of bad input that change
//! nothing; `repair` saying what it did.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;

use common::*;

/// A sandbox whose shared dirs DEST/lib and DEST/share/extension already
/// hold a file that belongs to nobody; returns it with its base world.
fn sandbox_with_unrelated() -> (Sandbox, Tree) {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.dest.join("lib")).unwrap();
    fs::create_dir_all(sb.dest.join("share/extension")).unwrap();
    fs::write(sb.dest.join("lib/unrelated.so"), b"someone else's library\n").unwrap();
    fs::write(sb.dest.join("share/extension/plpgsql.control"), b"# someone else's extension\n").unwrap();
    let base = sb.world();
    (sb, base)
}

#[track_caller]
fn assert_world(sb: &Sandbox, expected: &Tree, what: &str) {
    let world = sb.world();
    assert!(
        normalize(&world) == normalize(expected),
        "{what}: the world is not the expected one:\n{}",
        tree_diff(&normalize(&world), &normalize(expected), 25)
    );
    assert!(sb.leftovers().is_empty(), "{what}: leftovers under DEST: {:?}", sb.leftovers());
}

#[track_caller]
fn assert_listed(sb: &Sandbox, ver: &str) {
    let p = sb.listed(DEMO).unwrap_or_else(|| panic!("demo {ver} installed but not listed"));
    assert_eq!(p.digest, demo_digest(ver), "list shows the wrong digest for demo {ver}");
    assert_eq!(p.targets, demo_targets_abs(&sb.dest, ver), "list shows the wrong targets for demo {ver}");
    assert!(p.source.contains("demo"), "list shows an odd source {:?}", p.source);
}

/// A regular file of the v1 app tree, relative to DEST/app (README.txt if
/// there is one).
fn some_app_file() -> String {
    let tree = hash_tree(&demo_src("v1").join("app"));
    let files: Vec<&String> = tree.iter().filter(|(_, n)| matches!(n, Node::File { .. })).map(|(k, _)| k).collect();
    assert!(!files.is_empty(), "examples/src/demo/v1/app has no regular file");
    files.iter().find(|k| k.ends_with("README.txt")).or(files.first()).map(|s| s.to_string()).unwrap()
}

#[test]
fn install_verify_upgrade_uninstall() {
    let (sb, base) = sandbox_with_unrelated();

    sb.install_demo("v1").ok();
    assert_world(&sb, &demo_world(&base, Some("v1")), "after install v1");
    assert_listed(&sb, "v1");
    sb.run(&["list"]).ok();
    sb.run(&["status"]).ok();
    assert!(pending_of(&sb.status_json()).is_empty(), "pending after a successful install");
    sb.run(&["verify"]).ok();
    sb.run(&["verify", DEMO]).ok();

    // Edit an installed file by hand: verify must exit 3 and name it.
    let rel = some_app_file();
    let edited = sb.dest.join("app").join(&rel);
    let original = fs::read(&edited).unwrap();
    fs::OpenOptions::new().append(true).open(&edited).unwrap().write_all(b"local edit\n").unwrap();
    for args in [vec!["verify"], vec!["verify", DEMO]] {
        let run = sb.run(&args);
        run.expect_code(3);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(out.contains(&rel), "`verify` does not name the edited file {rel}:\n{}", run.describe());
        // Only the edited file differs; no other file of the tree is named.
        for (other, node) in hash_tree(&sb.dest.join("app")) {
            if matches!(node, Node::File { .. }) && other != rel && !rel.contains(&other) {
                assert!(
                    !out.contains(&format!("app/{other}")),
                    "`verify` names the unchanged file {other}:\n{}",
                    run.describe()
                );
            }
        }
    }
    let json = sb.run(&["verify", "--json"]);
    json.expect_code(3);
    assert!(json.stdout.contains(&rel), "`verify --json` does not name {rel}:\n{}", json.describe());
    fs::write(&edited, &original).unwrap();
    sb.run(&["verify"]).ok();

    // Upgrade in one transaction.
    sb.install_demo("v2").ok();
    assert_world(&sb, &demo_world(&base, Some("v2")), "after upgrade to v2");
    assert_listed(&sb, "v2");
    sb.run(&["verify", DEMO]).ok();
    assert_eq!(sb.list_json().len(), 1, "an upgrade must not list the package twice");

    // Uninstall: targets gone, unrelated files in shared dirs untouched.
    sb.run(&["uninstall", DEMO]).ok();
    assert_world(&sb, &base, "after uninstall");
    assert_eq!(
        fs::read(sb.dest.join("lib/unrelated.so")).unwrap(),
        b"someone else's library\n",
        "uninstall touched an unrelated file in DEST/lib"
    );
    assert_eq!(
        fs::read(sb.dest.join("share/extension/plpgsql.control")).unwrap(),
        b"# someone else's extension\n",
        "uninstall touched an unrelated file in DEST/share/extension"
    );
    assert!(sb.listed(DEMO).is_none(), "demo still listed after uninstall");
    sb.run(&["verify"]).ok();
}

/// `verify` also reports a deleted file target, a deleted file inside the
/// directory target, and a file added to the directory target, naming each.
#[test]
fn verify_reports_missing_and_unexpected_files() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let rel = some_app_file();
    let gone_in_app = sb.dest.join("app").join(&rel);
    let gone_file = sb.dest.join("lib/demo_fdw.so");
    let extra = sb.dest.join("app/extra-file.txt");
    fs::remove_file(&gone_in_app).unwrap();
    fs::remove_file(&gone_file).unwrap();
    fs::write(&extra, b"added by hand\n").unwrap();
    let run = sb.run(&["verify", DEMO]);
    run.expect_code(3);
    let out = format!("{}{}", run.stdout, run.stderr);
    for p in [&gone_in_app, &gone_file, &extra] {
        assert!(out.contains(path_str(p)), "`verify` does not name {}:\n{}", p.display(), run.describe());
    }
}

#[test]
fn json_flag_works_before_and_after_the_subcommand() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let after = sb.run(&["list", "--json"]);
    let before = sb.run(&["--json", "list"]);
    after.ok();
    before.ok();
    assert_eq!(after.json(), before.json(), "`--json list` and `list --json` differ");
    let status = sb.run(&["--json", "status"]).ok().json();
    assert!(pending_of(&status).is_empty());
}

#[test]
fn state_dir_from_environment() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    // No --state-dir: STAGEHAND_STATE_DIR names it.
    let out = std::process::Command::new(BIN)
        .args(["list", "--json"])
        .env("STAGEHAND_STATE_DIR", &sb.state)
        .env_remove("STAGEHAND_CRASH_AT")
        .env_remove("STAGEHAND_FAIL_AT")
        .env_remove("STAGEHAND_TRACE_POINTS")
        .output()
        .unwrap();
    assert!(out.status.success(), "list with STAGEHAND_STATE_DIR failed: {}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(package_in_list(&list, DEMO).is_some(), "STAGEHAND_STATE_DIR was not used: {list:?}");
}

#[test]
fn locked_state_dir_exits_4_naming_the_holder() {
    let sb = Sandbox::new();
    sb.run(&["repair"]).ok(); // creates the state dir (a read-only command would not)
    let world = sb.world();

    let lock_path = sb.state.join("lock");
    let mut lock = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path).unwrap();
    // SAFETY: plain flock(2) on a file descriptor we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "could not take the lock on {} ourselves", lock_path.display());
    let pid = std::process::id().to_string();
    lock.set_len(0).unwrap();
    lock.write_all(format!("{pid}\n").as_bytes()).unwrap();
    lock.flush().unwrap();

    // Readers do not wait: they read a copy and name the holder.
    for args in [vec!["list"], vec!["status"]] {
        let run = sb.run(&args);
        run.ok();
        assert!(
            run.stderr.contains(&pid) && run.stderr.contains("in progress"),
            "the reader does not say a transaction of pid {pid} is in progress:\n{}",
            run.describe()
        );
    }
    let run = sb.install_demo("v1");
    run.expect_code(4);
    assert!(sb.world() == world, "an install that lost the lock changed DEST");

    // With --lock-timeout the loser waits for the holder instead of failing.
    let state = sb.state.clone();
    let root = sb.root.clone();
    let waiter =
        std::thread::spawn(move || run_bin(&state, &root, &["--lock-timeout", "30", "uninstall", "nothing"], &[]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!waiter.is_finished(), "`--lock-timeout 30` did not wait for the lock holder");
    drop(lock);
    let waited = waiter.join().unwrap();
    // Past the lock: the uninstall of a package that is not installed is refused (not locked).
    assert_eq!(
        waited.code,
        Some(1),
        "`--lock-timeout` did not get past the lock once released:\n{}",
        waited.describe()
    );
    assert!(waited.stderr.contains("no package named"), "{}", waited.describe());

    sb.run(&["list"]).ok();
    sb.install_demo("v1").ok();
}

/// Every refusal of bad input: non-zero exit (not a crash), a message that
/// names the bad thing, and nothing changed.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (sb, base) = sandbox_with_unrelated();
    sb.install_demo("v1").ok();
    let world = sb.world();
    let listed = sb.list_json();

    let layout = demo_layout();
    let layout = layout.display();
    let zero_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["install".into(), "oci-layout:/nonexistent/stagehand-test-layout:v1".into()],
            "/nonexistent/stagehand-test-layout",
        ),
        (vec!["install".into(), "docker://whatever".into()], "docker://whatever"),
        (vec!["install".into(), "Not/A..Reference:v1".into()], "Not/A..Reference:v1"),
        (vec!["install".into(), "oci-layout:".into()], "oci-layout:"),
        (vec!["install".into(), format!("oci-layout:{layout}:v9")], "v9"),
        (vec!["install".into(), format!("oci-layout:{layout}@{zero_digest}")], zero_digest.as_str()),
        (vec!["install".into(), format!("oci-layout:{layout}@sha256:abc")], "sha256:abc"),
        (vec!["install".into(), format!("oci-layout:{layout}")], "manifests"),
        (vec!["uninstall".into(), "no-such-package".into()], "no-such-package"),
        (vec!["verify".into(), "no-such-package".into()], "no-such-package"),
    ];
    for (args, needle) in &cases {
        let mut full: Vec<String> = args.clone();
        if args[0] == "install" {
            full.extend(["--to".into(), sb.dest.join("app").display().to_string()]);
        }
        let run = sb.run(&full);
        run.expect_clean_failure();
        assert!(
            matches!(run.code, Some(1) | Some(2)),
            "bad input should exit 1 (error) or 2 (usage):\n{}",
            run.describe()
        );
        assert!(run.stderr.contains(needle), "the message does not name {needle:?}:\n{}", run.describe());
        let now = sb.world();
        assert!(now == world, "`{}` changed DEST:\n{}", full.join(" "), tree_diff(&now, &world, 20));
        assert_eq!(sb.list_json(), listed, "`{}` changed the package list", full.join(" "));
    }
    let _ = base;

    let usage = sb.run(&["frobnicate"]);
    usage.expect_code(2);
    let usage = sb.run(&["install"]);
    usage.expect_code(2);
}

/// `repair` after a crash says what it did, and what it says matches the
/// disk: rolled forward ⇒ new world, rolled back ⇒ old world.
#[test]
fn repair_says_what_it_did() {
    let sb = Sandbox::new();
    let snapshot = tempdir();
    sb.save_to(snapshot.path());
    let trace = snapshot.path().join("trace.txt");
    sb.run_env(&sb.install_demo_args("v1"), &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]).ok();
    let pairs = read_trace(&trace);
    assert!(pairs.len() >= 3, "too few kill points traced: {pairs:?}");
    let old = Tree::new();
    let new = demo_world(&old, Some("v1"));
    let mut phrases_seen = Vec::new();
    for (pt, n) in
        [&pairs[pairs.len() / 3], &pairs[pairs.len() / 2], &pairs[pairs.len() * 2 / 3], &pairs[pairs.len() - 1]]
    {
        let ctx = format!("crash at {pt}:{n}");
        sb.restore_from(snapshot.path());
        let spec = format!("{pt}:{n}");
        let crash = sb.run_env(&sb.install_demo_args("v1"), &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(crash.signal, Some(libc::SIGABRT), "{ctx}: not a crash:\n{}", crash.describe());
        let repair = sb.run(&["repair"]);
        assert!(repair.success(), "{ctx}: repair failed:\n{}", repair.describe());
        let said = repair.stdout.to_lowercase() + &repair.stderr.to_lowercase();
        let which = classify(&sb.world(), &old, &new).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let phrase = ["rolled forward", "rolled back", "nothing pending"]
            .into_iter()
            .find(|p| said.contains(p))
            .unwrap_or_else(|| {
                panic!("{ctx}: repair says none of rolled forward/rolled back/nothing pending:\n{}", repair.describe())
            });
        match (which, phrase) {
            (Which::New, "rolled back") => {
                panic!("{ctx}: repair says rolled back but the world is new:\n{}", repair.describe())
            }
            (Which::Old, "rolled forward") => {
                panic!("{ctx}: repair says rolled forward but the world is old:\n{}", repair.describe())
            }
            _ => {}
        }
        phrases_seen.push(phrase);
        // A second repair has nothing to do.
        let again = sb.run(&["repair"]);
        again.ok();
        assert!(
            (again.stdout.to_lowercase() + &again.stderr.to_lowercase()).contains("nothing pending"),
            "{ctx}: a second repair does not say nothing pending:\n{}",
            again.describe()
        );
    }
    println!("repair phrases at 1/3, 1/2, 2/3, last point: {phrases_seen:?}");
}

/// Paths from the command line or an artifact reach a terminal: human output
/// escapes their control characters, so a `\n` cannot forge a line and an
/// ESC cannot drive the terminal. `--json` keeps them exact.
#[test]
fn human_output_escapes_control_characters_in_paths() {
    let tmp = tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap().join("evil\nforged: ok \u{1b}[31m\u{7}dir");
    let sb = Sandbox::at(root);
    sb.install_demo("v1").ok();
    sb.install_demo("v2").ok();
    fs::remove_file(sb.dest.join("lib/demo_fdw.so")).unwrap();
    for args in [vec!["list"], vec!["status"], vec!["history"], vec!["verify"], vec!["verify", DEMO]] {
        let run = sb.run(&args);
        assert!(matches!(run.code, Some(0) | Some(3)), "`{}`:\n{}", args.join(" "), run.describe());
        let out = &run.stdout;
        assert!(!out.contains(['\u{1b}', '\u{7}']), "`{}` prints raw control characters:\n{out:?}", args.join(" "));
        assert!(
            !out.lines().any(|l| l.starts_with("forged")),
            "`{}` lets a path forge a line:\n{out:?}",
            args.join(" ")
        );
    }
    for args in [vec!["list"], vec!["status"], vec!["verify"]] {
        let out = sb.run(&args).stdout;
        assert!(out.contains(r"evil\nforged: ok \u{1b}[31m\u{7}dir"), "`{}` hides the path:\n{out}", args.join(" "));
    }
    let target = sb.dest.join("lib/demo_fdw.so");
    let list = sb.list_json();
    let exact = list.iter().flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default());
    assert!(
        exact.into_iter().any(|t| t.as_str() == Some(path_str(&target))),
        "`list --json` does not keep the path exact: {list:?}"
    );
}
