//! `--adopt` keeps what it replaces (issue 22, part 2): the content an
//! install takes over becomes a kept version that `history` and `list`
//! show and `rollback` restores exactly — bytes, all mode bits, symlinks
//! wherever they point, mtimes to the nanosecond (and owners, as root) —
//! offline, dropped only by `--keep-versions` rotation, kept by `cache
//! prune` while kept; a crash at each kill point of the capture leaves the
//! user's content intact or the install finished with its capture
//! restorable.
//!
//! The disk is compared with `common::exact_tree` (std::fs only).

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const NAME: &str = "ex1";

/// A copy of the demo layout under the sandbox (deleted later to prove a
/// rollback needs no source).
fn own_layout(sb: &Sandbox) -> PathBuf {
    let layout = sb.root.join("layout/demo");
    fs::create_dir_all(layout.parent().unwrap()).unwrap();
    copy_tree(&demo_layout(), &layout);
    layout
}

fn source(layout: &Path, tag: &str) -> String {
    format!("oci-layout:{}:{tag}", layout.display())
}

/// `install SOURCE --to DEST --adopt --name ex1` plus `extra`.
fn adopt_to(sb: &Sandbox, src: &str, to: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<OsString> =
        vec!["install".into(), src.into(), "--to".into(), to.into(), "--adopt".into(), "--name".into(), NAME.into()];
    args.extend(extra.iter().map(OsString::from));
    sb.run(&args)
}

#[track_caller]
fn assert_exact(at: &Path, expected: &BTreeMap<String, ExactNode>, what: &str) {
    let now = exact_tree(at);
    assert!(now == *expected, "{what}: {} is not what it was:\n{}", at.display(), exact_diff(&now, expected));
}

/// The kept versions `list --json` shows for ex1: (digest, adopted paths).
fn previous(sb: &Sandbox) -> Vec<(String, Vec<String>)> {
    let list = sb.list_json();
    let p = list.iter().find(|p| p["name"] == NAME).unwrap_or_else(|| panic!("{NAME} not listed: {list:?}"));
    p["previous"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json has no previous array: {p}"))
        .iter()
        .map(|v| {
            let adopted = v["adopted"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect());
            (v["digest"].as_str().unwrap().to_string(), adopted.unwrap_or_default())
        })
        .collect()
}

fn blob_exists(sb: &Sandbox, digest: &str) -> bool {
    sb.state.join("blobs/sha256").join(digest.trim_start_matches("sha256:")).is_file()
}

#[test]
fn adopted_directory_is_kept_and_rollback_restores_it_exactly_offline() {
    let sb = Sandbox::new();
    let layout = own_layout(&sb);
    let app = sb.dest.join("app");
    user_tree(&app);
    let before = exact_tree(&app);
    let run = adopt_to(&sb, &source(&layout, "v1"), &app, &[]);
    run.ok();
    assert!(run.stdout.starts_with("adopt ex1: sha256:"), "the install reports what it adopted:\n{}", run.describe());
    assert!(app.join("bin/demo").is_file(), "demo v1 is installed");

    let kept = previous(&sb);
    assert_eq!(kept.len(), 1, "the adopted content is a kept version: {kept:?}");
    let (adopted_digest, paths) = &kept[0];
    assert_eq!(paths, &vec![app.display().to_string()]);
    let history = sb.run(&["history", "--json"]).ok().json();
    let rows = history.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{history}");
    assert_eq!(rows[0]["op"], "adopt", "{history}");
    assert_eq!(rows[0]["old_digest"].as_str(), Some(adopted_digest.as_str()), "history names the kept capture");
    let human = sb.run(&["history"]).ok().stdout.clone();
    assert!(human.contains("adopt") && human.contains(&adopted_digest[..19]), "{human}");

    // Offline: the layout installed from is gone.
    fs::remove_dir_all(sb.root.join("layout")).unwrap();
    sb.run(&["rollback", NAME]).ok();
    assert_exact(&app, &before, "after rollback to the adopted version");
    sb.run(&["verify", NAME]).ok();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    // Forward to the install again, prune the cache, and back: still exact.
    sb.run(&["rollback", NAME]).ok();
    assert!(app.join("bin/demo").is_file(), "rolled forward to demo v1");
    sb.run(&["cache", "prune"]).ok();
    assert!(blob_exists(&sb, adopted_digest), "cache prune keeps a kept capture");
    sb.run(&["rollback", NAME]).ok();
    assert_exact(&app, &before, "after a second rollback, across a cache prune");
}

#[test]
fn keep_versions_rotation_drops_the_capture_like_any_other_version() {
    // Kept with --keep-versions 3: v1 and the capture are both kept.
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    user_tree(&app);
    let before = exact_tree(&app);
    adopt_to(&sb, &demo_source("v1"), &app, &[]).ok();
    let adopted = previous(&sb)[0].0.clone();
    let mut up: Vec<OsString> = vec!["install".into(), demo_source("v2").into(), "--to".into(), app.clone().into()];
    up.extend(["--name", NAME, "--keep-versions", "3"].map(OsString::from));
    sb.run(&up).ok();
    let kept: Vec<String> = previous(&sb).into_iter().map(|(d, _)| d).collect();
    assert_eq!(kept, vec![demo_digest("v1"), adopted.clone()], "newest first: v1, then the capture");
    sb.run(&["cache", "prune"]).ok();
    assert!(blob_exists(&sb, &adopted), "cache prune keeps the capture while it is kept");
    sb.run(&["rollback", NAME, "--to", &adopted]).ok();
    assert_exact(&app, &before, "rollback --to the capture");

    // Dropped with --keep-versions 2: the upgrade keeps only v1.
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    user_tree(&app);
    adopt_to(&sb, &demo_source("v1"), &app, &[]).ok();
    let adopted = previous(&sb)[0].0.clone();
    assert!(blob_exists(&sb, &adopted));
    let mut up: Vec<OsString> = vec!["install".into(), demo_source("v2").into(), "--to".into(), app.clone().into()];
    up.extend(["--name", NAME, "--keep-versions", "2"].map(OsString::from));
    sb.run(&up).ok();
    let kept: Vec<String> = previous(&sb).into_iter().map(|(d, _)| d).collect();
    assert_eq!(kept, vec![demo_digest("v1")], "rotation dropped the capture");
    assert!(!blob_exists(&sb, &adopted), "a dropped capture's blobs are pruned like any other version's");
    sb.run(&["rollback", NAME, "--to", &adopted]).fails_with(&["not a kept version"]);
}

#[test]
fn a_mapped_file_is_adopted_and_restored_alone() {
    let sb = Sandbox::new();
    let so = sb.dest.join("lib/demo_fdw.so");
    fs::create_dir_all(so.parent().unwrap()).unwrap();
    fs::create_dir_all(sb.dest.join("share/extension")).unwrap();
    fs::write(&so, b"the user's own build of the library\n").unwrap();
    chmod(&so, 0o600);
    set_mtime(&so, 1_234_567_890, 987_654_321);
    let before = exact_tree(&so);
    let world_before = sb.world();

    // Without --adopt: refused, and the message promises only what is true.
    let refused = sb.install_demo("v1");
    refused.fails_with(&["already exists", "--adopt", "rollback", "nothing was changed"]);
    assert_exact(&so, &before, "after the refusal");

    let mut args = sb.install_demo_args("v1");
    args.extend(["--adopt", "--name", NAME].map(OsString::from));
    sb.run(&args).ok();
    assert_ne!(fs::read(&so).unwrap(), b"the user's own build of the library\n", "the demo's .so is installed");
    let kept = previous(&sb);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].1, vec![so.display().to_string()], "only the file that existed is adopted");

    sb.run(&["rollback", NAME]).ok();
    assert_exact(&so, &before, "the adopted file after rollback");
    // The rest of the install is gone: the world is as before it.
    assert_eq!(sb.world(), world_before, "{}", tree_diff(&sb.world(), &world_before, 20));
}

#[test]
fn special_files_are_refused_before_anything_changes() {
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    user_tree(&app);
    let fifo = std::ffi::CString::new(app.join("sub/pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    set_mtime(&app.join("sub"), 900_000_001, 999_999_999);
    let before = exact_tree(&app);
    adopt_to(&sb, &demo_source("v1"), &app, &[]).fails_with(&["sub/pipe", "FIFO", "Nothing was changed"]);
    assert_exact(&app, &before, "after the refusal");
    assert!(sb.list_json().is_empty());
}

/// Crashes the adopt install at every kill point its capture passes (and
/// at a few after its commit point); after recovery the user's directory
/// is intact byte for byte (mtimes included), or the install is done and
/// its capture restores that directory exactly.
#[test]
fn a_crash_during_the_capture_leaves_the_old_content_or_a_restorable_capture() {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let setup = |n: usize| -> (Sandbox, PathBuf, BTreeMap<String, ExactNode>) {
        let sb = Sandbox::at(root.join(format!("run-{n}")));
        let app = sb.dest.join("app");
        user_tree(&app);
        let before = exact_tree(&app);
        (sb, app, before)
    };
    let args = |app: &Path| -> Vec<OsString> {
        ["install", &demo_source("v1"), "--to", app.to_str().unwrap(), "--adopt", "--name", NAME]
            .map(OsString::from)
            .to_vec()
    };

    let (sb, app, _) = setup(0);
    let trace = root.join("trace.txt");
    sb.run_env(&args(&app), &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]).ok();
    let points = read_trace(&trace);
    let at = |name: &str| points.iter().position(|(p, _)| p == name);
    let planned = at("journal.planned").expect("the install journals planned");
    let staged = at("journal.staged").expect("the install journals staged");
    let commit = at("journal.commit").expect("the install commits");
    let capture: Vec<(String, u32)> =
        points[planned..staged].iter().filter(|(p, _)| p.ends_with(".cache")).cloned().collect();
    let names: std::collections::BTreeSet<&str> = capture.iter().map(|(p, _)| p.as_str()).collect();
    for want in ["fsops.create.cache", "fsops.append.cache", "fsops.fsync.cache", "fsops.rename.cache"] {
        assert!(names.contains(want), "the capture passes {want}; it passed {names:?}");
    }
    let after_commit: Vec<(String, u32)> = points[commit..].iter().step_by(5).cloned().collect();

    let (mut ended_old, mut ended_new) = (0, 0);
    for (i, (pt, n)) in capture.iter().chain(&after_commit).enumerate() {
        let ctx = format!("crash at {pt}:{n}");
        let (sb, app, before) = setup(i + 1);
        let spec = format!("{pt}:{n}");
        let crashed = sb.run_env(&args(&app), &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(crashed.signal, Some(libc::SIGABRT), "{ctx}: did not die at its point:\n{}", crashed.describe());
        let status = sb.run(&["status", "--json"]).ok().json();
        assert!(pending_of(&status).is_empty(), "{ctx}: still pending: {status}");
        assert!(sb.leftovers().is_empty(), "{ctx}: leftovers {:?}", sb.leftovers());
        match sb.listed(NAME) {
            None => {
                assert_exact(&app, &before, &format!("{ctx}: rolled back"));
                ended_old += 1;
            }
            Some(p) => {
                assert_eq!(p.digest, demo_digest("v1"), "{ctx}");
                assert!(app.join("bin/demo").is_file(), "{ctx}: listed but not on disk");
                assert_eq!(previous(&sb).len(), 1, "{ctx}: the capture is kept");
                sb.run(&["rollback", NAME]).ok();
                assert_exact(&app, &before, &format!("{ctx}: rolled forward, then rolled back"));
                ended_new += 1;
            }
        }
        fs::remove_dir_all(&sb.root).ok();
    }
    assert!(ended_old >= capture.len(), "every crash in the capture ends old ({ended_old} of {})", capture.len());
    assert!(ended_new > 0, "some crashes after the commit point end new");
}

/// Crashes `rollback` to the adopted version at evenly spaced kill points
/// (its exact staging included: chown, chmod, utimes); after recovery the
/// directory holds demo v1, or exactly what was adopted.
#[test]
fn a_crash_during_the_rollback_to_the_capture_leaves_one_version_or_the_other() {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let sb = Sandbox::at(root.join("work"));
    let app = sb.dest.join("app");
    user_tree(&app);
    let before = exact_tree(&app);
    adopt_to(&sb, &demo_source("v1"), &app, &[]).ok();
    let installed = hash_tree(&app);
    let pristine = root.join("pristine");
    sb.save_to(&pristine);

    let trace = root.join("trace.txt");
    sb.run_env(&["rollback", NAME], &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]).ok();
    assert_exact(&app, &before, "the traced rollback");
    let points = read_trace(&trace);
    for want in ["fsops.utimes.staging", "fsops.chmod.staging"] {
        assert!(points.iter().any(|(p, _)| p == want), "the exact restore passes {want}");
    }
    let step = (points.len() / 25).max(1);
    let (mut ended_old, mut ended_new) = (0, 0);
    for (pt, n) in points.iter().step_by(step) {
        let ctx = format!("rollback crashed at {pt}:{n}");
        sb.restore_from(&pristine);
        let spec = format!("{pt}:{n}");
        let crashed = sb.run_env(&["rollback", NAME], &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(crashed.signal, Some(libc::SIGABRT), "{ctx}: did not die at its point:\n{}", crashed.describe());
        let status = sb.run(&["status", "--json"]).ok().json();
        assert!(pending_of(&status).is_empty(), "{ctx}: still pending: {status}");
        assert!(sb.leftovers().is_empty(), "{ctx}: leftovers {:?}", sb.leftovers());
        let listed = sb.listed(NAME).unwrap_or_else(|| panic!("{ctx}: {NAME} not listed"));
        if listed.digest == demo_digest("v1") {
            assert_eq!(hash_tree(&app), installed, "{ctx}: listed as v1 but the disk differs");
            ended_old += 1;
        } else {
            assert!(listed.source.starts_with("adopted:"), "{ctx}: {listed:?}");
            assert_exact(&app, &before, &ctx);
            ended_new += 1;
        }
    }
    assert!(ended_old > 0 && ended_new > 0, "both outcomes seen (old {ended_old}, new {ended_new})");
}

/// An upgrade that adopts a new path keeps the version it replaces first;
/// when --keep-versions leaves no room for the capture too, it is refused
/// (nothing is lost), and with room both are kept.
#[test]
fn an_upgrade_that_adopts_needs_room_to_keep_the_capture() {
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    let so = sb.dest.join("lib/demo_fdw.so");
    sb.run(&["install", &demo_source("v1"), "--to", app.to_str().unwrap(), "--name", NAME]).ok();
    fs::create_dir_all(so.parent().unwrap()).unwrap();
    fs::write(&so, b"the user's library\n").unwrap();
    set_mtime(&so, 1_111_111_111, 5);
    let before = exact_tree(&so);
    let map = format!("*.so={}", sb.dest.join("lib").display());
    let v2 = demo_source("v2");
    let up = |extra: &[&str]| {
        // Adding a --map changes the recorded placement: that needs --move.
        let mut a = vec!["install", &v2, "--to", app.to_str().unwrap(), "--map", &map, "--adopt", "--move"];
        a.extend(["--name", NAME]);
        a.extend(extra);
        sb.run(&a)
    };
    up(&[]).fails_with(&["--keep-versions 3", "nothing was changed"]);
    assert_exact(&so, &before, "after the refusal");
    up(&["--keep-versions", "3"]).ok();
    let kept = previous(&sb);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0].0, demo_digest("v1"), "the replaced version first");
    assert_eq!(kept[1].1, vec![so.display().to_string()], "then the capture");
    sb.run(&["rollback", NAME, "--to", &kept[1].0]).ok();
    assert_exact(&so, &before, "rollback --to the capture");
}

/// Adopting, and rolling back to what was adopted, moves nothing: neither
/// is reported as a move, and installing at the same place over the
/// restored content needs no `--move` (another place still does).
#[test]
fn adopting_and_returning_to_the_capture_is_not_a_move() {
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    user_tree(&app);
    let v1 = demo_source("v1");
    let run = adopt_to(&sb, &v1, &app, &[]);
    run.ok();
    assert!(!run.stdout.contains("moved"), "an adopt is not a move:\n{}", run.describe());
    let run = sb.run(&["rollback", NAME]);
    run.ok();
    assert!(!run.stdout.contains("moved"), "a rollback to the capture is not a move:\n{}", run.describe());
    let history = sb.run(&["history", NAME, "--json"]).ok().json();
    let moved: Vec<bool> = history.as_array().unwrap().iter().map(|h| h["moved"] == true).collect();
    assert_eq!(moved, vec![false, false], "{history}");
    // No placement flags: the capture records none, so say what to give.
    sb.run(&["install", &demo_source("v2"), "--name", NAME]).fails_with(&["--to", "Nothing was changed"]);
    let elsewhere = sb.dest.join("elsewhere");
    sb.run(&["install", &demo_source("v2"), "--name", NAME, "--to", elsewhere.to_str().unwrap()])
        .fails_with(&["--move"]);
    sb.run(&["install", &demo_source("v2"), "--name", NAME, "--to", app.to_str().unwrap()]).ok();
    assert_eq!(sb.listed(NAME).unwrap().digest, demo_digest("v2"));
}
