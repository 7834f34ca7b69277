//! The apply plan as a person and a script read it: every change with its
//! reference, placement, targets and bytes to fetch (human and `--json`),
//! printed before any work (so a failing apply still shows it), and
//! `apply --dry-run --detailed-exitcode` (0 nothing to do, 10 changes).
//! Also the errors an apply gives with their context (file, line, package,
//! what to do), and a read-only command as another user creating nothing.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A desired-state file `stagehand.toml` in `dir` with `body`; its path.
fn write_file(dir: &Path, body: &str) -> PathBuf {
    let file = dir.join("stagehand.toml");
    fs::write(&file, body).unwrap();
    file
}

fn demo_entry(name: &str, tag: &str, to: &Path) -> String {
    format!("[package.{name}]\nref = \"{}\"\nto = \"{}\"\n", demo_source(tag), to.display())
}

fn apply(sb: &Sandbox, file: &Path, extra: &[&str]) -> Run {
    let mut args = vec![OsStr::new("apply"), OsStr::new("--file"), file.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    sb.run(&args)
}

/// What an independent walk of DEST saw change between two trees: files
/// and symlinks added, removed, and with other content (modes aside), as
/// the plan's `files` counts them.
fn files_changed(before: &Tree, after: &Tree) -> serde_json::Value {
    let content = |n: &Node| match n {
        Node::File { sha256, .. } => Some(format!("file {sha256}")),
        Node::Symlink { target } => Some(format!("link {target}")),
        _ => None,
    };
    let files = |t: &Tree| -> std::collections::BTreeMap<String, String> {
        t.iter().filter_map(|(k, n)| content(n).map(|c| (k.clone(), c))).collect()
    };
    let (b, a) = (files(before), files(after));
    let added = a.keys().filter(|k| !b.contains_key(*k)).count();
    let removed = b.keys().filter(|k| !a.contains_key(*k)).count();
    let changed = a.iter().filter(|(k, v)| b.get(*k).is_some_and(|old| old != *v)).count();
    serde_json::json!({"added": added, "removed": removed, "changed": changed})
}

/// The one change of `apply --dry-run --json`.
#[track_caller]
fn only_change(run: &Run) -> serde_json::Value {
    let v = run.json();
    let changes = v["result"]["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "expected one change:\n{}", run.describe());
    changes[0].clone()
}

#[test]
fn the_plan_shows_install_upgrade_move_and_removal_with_detailed_exit_codes() {
    let sb = Sandbox::new();
    let (a, b) = (sb.dest.join("a"), sb.dest.join("b"));
    let file = write_file(&sb.root, &demo_entry("demo", "v1", &a));
    let src = demo_source("v1");

    // Install: tag, digest, targets, bytes to fetch; exit 10 with changes.
    let dry = apply(&sb, &file, &["--dry-run", "--detailed-exitcode"]);
    dry.expect_code(10);
    for needle in [
        format!("+ demo {}", demo_digest("v1")),
        format!("    ref = {src:?}"),
        format!("    targets = {:?}", a.display().to_string()),
        "    fetch = ".to_string(),
    ] {
        assert!(dry.stdout.contains(&needle), "no {needle:?}:\n{}", dry.describe());
    }
    assert!(!a.exists(), "a dry run created the target");
    let c = only_change(&apply(&sb, &file, &["--dry-run", "--json"]));
    assert_eq!(c["action"], "install");
    assert_eq!(c["reference"], src.as_str());
    assert_eq!(c["new_targets"], serde_json::json!([a.display().to_string()]));
    assert!(c["fetch_bytes"].as_u64().is_some_and(|n| n > 0), "nothing to fetch for a new layout package: {c}");
    let empty = sb.world();
    apply(&sb, &file, &[]).ok();
    let v1 = sb.world();
    // The files the dry run counted (read from the layout) are the ones the apply wrote.
    assert_eq!(c["files"], files_changed(&empty, &v1), "the plan's file counts for the install: {c}");
    assert!(dry.stdout.contains(&format!("    files = +{} -0 ~0 files", c["files"]["added"])), "{}", dry.describe());
    // Nothing to do: exit 0.
    apply(&sb, &file, &["--dry-run", "--detailed-exitcode"]).expect_code(0);

    // Upgrade in place: old -> new digest, no move; its blobs are not cached yet.
    write_file(&sb.root, &demo_entry("demo", "v2", &a));
    let dry = apply(&sb, &file, &["--dry-run", "--detailed-exitcode"]);
    dry.expect_code(10);
    assert!(
        dry.stdout.contains(&format!("~ demo {} -> {}", demo_digest("v1"), demo_digest("v2"))),
        "{}",
        dry.describe()
    );
    assert!(!dry.stdout.contains("    to = "), "an upgrade in place shows no placement change:\n{}", dry.describe());
    let c = only_change(&apply(&sb, &file, &["--dry-run", "--json"]));
    assert_eq!(c["action"], "upgrade");
    assert_eq!(c["old_targets"], c["new_targets"]);
    apply(&sb, &file, &[]).ok();
    let v2 = sb.world();
    let seen = files_changed(&v1, &v2);
    assert!(
        seen["added"] != 0 && seen["removed"] != 0 && seen["changed"] != 0,
        "the demo's v2 adds, removes and changes files: {seen}"
    );
    assert_eq!(c["files"], seen, "the plan's file counts for the upgrade: {c}");
    // Back to v1 (its blobs are cached: counted from the cache).
    write_file(&sb.root, &demo_entry("demo", "v1", &a));
    let c = only_change(&apply(&sb, &file, &["--dry-run", "--json"]));
    assert_eq!(c["files"], files_changed(&v2, &v1), "the plan's file counts for the way back: {c}");
    apply(&sb, &file, &[]).ok();

    // Move (same digest): its own action, with the old and new `to`.
    write_file(&sb.root, &demo_entry("demo", "v1", &b));
    let dry = apply(&sb, &file, &["--dry-run", "--detailed-exitcode"]);
    dry.expect_code(10);
    let to_line = format!("    to = {:?} -> {:?}", a.display().to_string(), b.display().to_string());
    assert!(dry.stdout.contains(&to_line), "no {to_line:?}:\n{}", dry.describe());
    let c = only_change(&apply(&sb, &file, &["--dry-run", "--json"]));
    assert_eq!(c["action"], "move", "a placement change is a move, not an upgrade: {c}");
    assert_eq!(c["old_digest"], c["new_digest"]);
    assert_eq!(c["old_targets"], serde_json::json!([a.display().to_string()]));
    assert_eq!(c["new_targets"], serde_json::json!([b.display().to_string()]));
    assert_eq!(c["fetch_bytes"], 0, "v1's blobs are in the cache already: {c}");

    // Removal: `- demo` with the targets it removes.
    fs::write(&file, "").unwrap();
    let dry = apply(&sb, &file, &["--dry-run", "--prune", "--detailed-exitcode"]);
    dry.expect_code(10);
    assert!(dry.stdout.contains("- demo"), "{}", dry.describe());
    let c = only_change(&apply(&sb, &file, &["--dry-run", "--prune", "--json"]));
    assert_eq!(c["files"], files_changed(&sb.world(), &Tree::new()), "the plan's file counts for the removal: {c}");
    assert!(
        dry.stdout.contains(&format!("    targets = {:?} (removed)", a.display().to_string())),
        "{}",
        dry.describe()
    );
    // --detailed-exitcode without --dry-run is a usage error.
    apply(&sb, &file, &["--detailed-exitcode"]).expect_code(2);
}

/// Without a terminal the plan is printed before the work: an apply that
/// then fails still shows it. /proc reports 0 total bytes: not a place to
/// install (not "not enough free space").
#[test]
fn a_failing_apply_still_shows_its_plan_and_proc_is_not_a_place_to_install() {
    let sb = Sandbox::new();
    let file = write_file(&sb.root, &demo_entry("q", "v1", Path::new("/proc/stagehand-test-q")));
    let run = apply(&sb, &file, &[]);
    let at = format!("{}:1: package \"q\"", file.display());
    run.fails_with(&["/proc/stagehand-test-q is not a place to install", &at]);
    assert!(!run.stderr.contains("not enough free space"), "{}", run.describe());
    assert!(
        run.stdout.contains(&format!("+ q {}", demo_digest("v1"))),
        "no plan before the error:\n{}",
        run.describe()
    );
    assert!(!run.stdout.contains("applied"), "{}", run.describe());
}

/// Errors of an apply name the file, the line and the package: a tag the
/// layout lacks, a Steampipe plugin given `to` (with the profile to use).
#[test]
fn apply_errors_name_file_line_and_package() {
    let sb = Sandbox::new();
    let body =
        format!("\n{}\n{}", demo_entry("ok", "v1", &sb.dest.join("ok")), demo_entry("x", "v9", &sb.dest.join("x")));
    let file = write_file(&sb.root, &body);
    let at = format!("{}:6: package \"x\"", file.display());
    apply(&sb, &file, &["--dry-run"]).fails_with(&[&at, "v9"]);

    let plugin = repo_root().join("examples/steampipe-plugin");
    let body = format!(
        "[package.p]\nref = \"oci-layout:{}:v1\"\nto = \"{}\"\n",
        plugin.display(),
        sb.dest.join("p").display()
    );
    let file = write_file(&sb.root, &body);
    let at = format!("{}:1: package \"p\"", file.display());
    apply(&sb, &file, &["--dry-run"]).fails_with(&[&at, "profile = \"steampipe-plugin\""]);
}

/// `list` and `status` as uid 65534 whose HOME is not its own: no state
/// dir, nothing created, exit 0. With a HOME it may not search: a clear
/// error naming `--state-dir`, exit 1.
#[test]
fn read_only_commands_as_nobody_create_nothing() {
    if !root_or_skip("read_only_commands_as_nobody_create_nothing (runs as uid 65534)") {
        return;
    }
    let tmp = tempdir();
    let home = fs::canonicalize(tmp.path()).unwrap();
    for cmd in ["list", "status"] {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN, cmd]);
        c.env_clear().env("HOME", &home).env("PATH", "/usr/bin:/bin").env("NO_COLOR", "1");
        let out = c.output().expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd} as nobody: {stderr}");
        assert!(!stderr.contains("Permission denied"), "{cmd} as nobody tried to create something: {stderr}");
    }
    assert!(!home.join(".local").exists(), "a read-only command created state");

    // A HOME it may not even search (root's, mode 0700): not "nothing
    // installed" and no attempt to create; it says what to pass instead.
    let closed = home.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for cmd in ["list", "status", "history"] {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN, cmd]);
        c.env_clear().env("HOME", &closed).env("PATH", "/usr/bin:/bin").env("NO_COLOR", "1");
        let out = c.output().expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd} as nobody, HOME closed: {stderr}");
        for needle in ["cannot look at the state dir", "--state-dir DIR", "Nothing was changed"] {
            assert!(stderr.contains(needle), "{cmd} as nobody, HOME closed: no {needle:?} in {stderr}");
        }
        assert!(!stderr.contains("cannot create"), "{cmd} tried to create the state dir: {stderr}");
    }
}

/// A writer stopped (SIGSTOP, `STAGEHAND_STOP_AT`) after its commit point,
/// before its swaps, holding the state dir: `list`, `status`, `history`,
/// `verify` and `journal` succeed at once, say a transaction is in progress,
/// and show the state as of its last journal write (v1 installed, the
/// upgrade pending); once it resumes, it finishes and readers see v2.
#[test]
fn readers_work_while_a_writer_is_stopped_mid_transaction() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let stop = [("STAGEHAND_STOP_AT", OsStr::new("journal.swapping"))];
    let (child, argv) = spawn_bin(&sb.state, &sb.root, &sb.install_demo_args("v2"), &stop);
    let resume = Resume(child.id());
    wait_stopped(child.id());
    // The readers' scratch copies go under TMPDIR, and must not stay.
    let tmp = sb.root.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    for cmd in ["list", "status", "history", "verify", "journal"] {
        let t0 = std::time::Instant::now();
        let run = sb.run_env(&[cmd], &[("TMPDIR", tmp.as_os_str())]);
        run.ok();
        assert!(run.stderr.contains("a transaction is in progress"), "{}", run.describe());
        assert!(t0.elapsed().as_secs() < 20, "{cmd} took {:?} beside a stopped writer", t0.elapsed());
    }
    let status = sb.status_json();
    assert_eq!(status["in_progress"], true, "{status}");
    assert_eq!(status["writer_pid"], child.id(), "{status}");
    assert_eq!(pending_of(&status).len(), 1, "the upgrade is journaled and pending: {status}");
    let listed = sb.listed(DEMO).expect("demo is listed");
    assert_eq!(listed.digest, demo_digest("v1"), "before the writer's last record, v1 is installed");
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "a reader left its copy of the journal");
    drop(resume);
    finish(child, argv).ok();
    let status = sb.status_json();
    assert_eq!(status["in_progress"], false, "{status}");
    assert!(pending_of(&status).is_empty(), "{status}");
    assert_eq!(sb.listed(DEMO).expect("demo is listed").digest, demo_digest("v2"));
}
