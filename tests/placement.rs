//! Placement is remembered, and changed only on purpose (issue 22, part 1).
//!
//! `demo` is installed with `--to DEST/app` and three `--map` files in
//! shared directories that also hold files no package owns. Then:
//! - `install REF` with no placement flags upgrades it where it is;
//! - another `--to`, or the same `--to` with the `--map` flags forgotten,
//!   is refused, naming the old and new paths, and nothing on disk changes;
//! - `--move` moves it (reported and recorded in history as a move) and
//!   `rollback` puts it back where the old version was;
//! - `--name` installs a second copy beside the first;
//! - a `--map` glob that matches no file of the artifact is an error;
//! - `apply --dry-run --json` shows a changed placement as a move;
//! - a `--move` killed at every kill point after its commit point (and a
//!   sample before it) recovers to all old or all new.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;

use common::*;

/// Files in the demo's shared directories that belong to no package.
const FOREIGN: [(&str, &[u8]); 2] =
    [("lib/unrelated.so", b"not stagehand's\n"), ("share/extension/plpgsql.control", b"# unrelated\n")];

/// A sandbox with the foreign files in place and demo v1 installed.
fn with_demo_v1() -> Sandbox {
    let sb = Sandbox::new();
    write_foreign(&sb.dest);
    sb.install_demo("v1").ok();
    sb
}

fn write_foreign(dest: &Path) {
    for (rel, bytes) in FOREIGN {
        let p = dest.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }
}

/// DEST/<rel>, as a string.
fn at(sb: &Sandbox, rel: &str) -> String {
    sb.dest.join(rel).display().to_string()
}

/// `install SOURCE` with `extra` arguments.
fn install(source: &str, extra: &[OsString]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["install".into(), source.into()];
    v.extend(extra.iter().cloned());
    v
}

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// The demo's placement flags with everything under DEST/<under>.
fn demo_flags(sb: &Sandbox, under: &str) -> Vec<OsString> {
    let d = sb.dest.join(under);
    let mut v = demo_install_args(&d, "x");
    v.drain(..2);
    v
}

/// `world` with the demo's targets under DEST removed and demo `ver` added
/// under DEST/<under> (the old placement's shared dirs keep their foreign files).
fn world_moved(world: &Tree, under: &str, ver: &str) -> Tree {
    let mut w = without_demo(world);
    w.insert(under.to_string(), Node::Dir);
    for (rel, node) in demo_world(&Tree::new(), Some(ver)) {
        w.insert(format!("{under}/{rel}"), node);
    }
    w
}

/// `t` without its empty directories (repeatedly: a chain of them goes).
fn without_empty_dirs(t: &Tree) -> Tree {
    let mut out = t.clone();
    loop {
        let empty: Vec<String> = out
            .iter()
            .filter(|(k, v)| **v == Node::Dir && !out.keys().any(|o| o.starts_with(&format!("{k}/"))))
            .map(|(k, _)| k.clone())
            .collect();
        if empty.is_empty() {
            return out;
        }
        for k in empty {
            out.remove(&k);
        }
    }
}

fn history(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.run(&["history", "--json"]).ok().json().as_array().cloned().unwrap_or_default()
}

/// Everything a refused command must leave as it was: DEST (hashed), the
/// package list and the history.
struct Before {
    world: Tree,
    list: Vec<serde_json::Value>,
    history: usize,
}

impl Before {
    fn of(sb: &Sandbox) -> Before {
        Before { world: sb.world(), list: sb.list_json(), history: history(sb).len() }
    }

    #[track_caller]
    fn unchanged(&self, sb: &Sandbox, what: &str) {
        let now = sb.world();
        assert!(now == self.world, "{what} changed DEST:\n{}", tree_diff(&now, &self.world, 25));
        assert_eq!(sb.list_json(), self.list, "{what} changed the package list");
        assert_eq!(history(sb).len(), self.history, "{what} ran a transaction");
        assert!(sb.leftovers().is_empty(), "{what} left {:?}", sb.leftovers());
    }
}

/// (a) The bug of issue 22: a second install of the same artifact with
/// another `--to` moved the installed package (deleting DEST/app and the
/// three mapped files) and exited 0. Now it is refused, naming the old and
/// new paths and `--move` / `--name`, and nothing on disk changes.
#[test]
fn second_install_elsewhere_is_refused_and_changes_nothing() {
    let sb = with_demo_v1();
    let before = Before::of(&sb);
    let run = sb.run(&install(&demo_source("v1"), &args(&["--to", &at(&sb, "y")])));
    run.fails_with(&[
        "--move",
        "--name",
        &at(&sb, "app"),
        &at(&sb, "lib/demo_fdw.so"),
        &at(&sb, "y"),
        "Nothing was changed",
    ]);
    before.unchanged(&sb, "a second install elsewhere");
    // The same with --json: an error object, exit 1.
    let run = sb.run(&install(&demo_source("v2"), &args(&["--to", &at(&sb, "y"), "--json"])));
    run.expect_code(1);
    assert!(run.json()["error"].as_str().is_some_and(|e| e.contains("--move")), "{}", run.describe());
    before.unchanged(&sb, "a second install elsewhere (--json)");
}

/// (b) `install REF` with no placement flags upgrades the installed package
/// where it is: its `--to` and every `--map` (it was refused before).
#[test]
fn upgrade_with_no_flags_keeps_the_recorded_placement_maps_included() {
    let sb = with_demo_v1();
    let base = sb.world();
    let run = sb.run(&["install", &demo_source("v2"), "--json"]);
    let r = run.ok().json();
    assert_eq!(r["result"]["op"], "upgrade", "{}", run.describe());
    assert_eq!(r["result"]["moved"], false, "{}", run.describe());
    let want = demo_world(&base, Some("v2"));
    let now = sb.world();
    assert!(now == want, "the upgrade did not keep the placement:\n{}", tree_diff(&now, &want, 25));
    let listed = sb.listed(DEMO).expect("demo listed");
    assert_eq!(listed.digest, demo_digest("v2"));
    assert_eq!(listed.targets, demo_targets_abs(&sb.dest, "v2"));
    // And back down, in place too; human output says "upgrade".
    let run = sb.run(&["install", &demo_source("v1")]);
    assert!(run.ok().stdout.starts_with("upgrade demo:"), "{}", run.describe());
    let want = demo_world(&base, Some("v1"));
    assert!(sb.world() == want, "{}", tree_diff(&sb.world(), &want, 25));
    sb.run(&["verify"]).ok();
}

/// (c) An upgrade that repeats `--to` but forgets the `--map` flags would
/// move the mapped files out of their shared directories into app/: refused.
#[test]
fn forgotten_map_flags_are_refused() {
    let sb = with_demo_v1();
    let before = Before::of(&sb);
    let run = sb.run(&install(&demo_source("v2"), &args(&["--to", &at(&sb, "app")])));
    run.fails_with(&[
        "--move",
        &at(&sb, "lib/demo_fdw.so"),
        &at(&sb, "share/extension/demo_fdw.control"),
        &at(&sb, "share/extension/demo_fdw--1.0.sql"),
        "Nothing was changed",
    ]);
    before.unchanged(&sb, "an upgrade without its --map flags");
}

/// (d) `--move` moves it: reported as a move (human and JSON), the old
/// paths gone, the new ones holding the new version, the foreign files in
/// the old shared directories untouched, and history records a move;
/// `rollback` returns to the old version's placement.
#[test]
fn move_moves_reports_and_records_a_move_and_rollback_returns() {
    let sb = with_demo_v1();
    let v1_world = sb.world();
    let mut a = install(&demo_source("v2"), &demo_flags(&sb, "moved"));
    a.extend(args(&["--move", "--json"]));
    let run = sb.run(&a);
    let r = run.ok().json();
    assert_eq!(r["result"]["op"], "move", "{}", run.describe());
    assert_eq!(r["result"]["moved"], true, "{}", run.describe());
    let from: Vec<&str> = r["result"]["moved_from"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for old in demo_targets_abs(&sb.dest, "v1") {
        assert!(from.contains(&old.as_str()), "moved_from lacks {old}: {}", run.describe());
        assert!(!Path::new(&old).exists(), "{old} is still there after the move");
    }
    let want = world_moved(&v1_world, "moved", "v2");
    let now = sb.world();
    assert!(normalize(&now) == normalize(&want), "the move left another world:\n{}", tree_diff(&now, &want, 25));
    for (rel, bytes) in FOREIGN {
        assert_eq!(fs::read(sb.dest.join(rel)).unwrap(), bytes, "{rel} changed");
    }
    assert_eq!(sb.listed(DEMO).expect("listed").targets, demo_targets_abs(&sb.dest.join("moved"), "v2"));
    sb.run(&["verify"]).ok();

    let h = history(&sb);
    let last = h.last().expect("a history row");
    assert_eq!((last["op"].as_str(), last["moved"].as_bool()), (Some("move"), Some(true)), "{last}");
    let human = sb.run(&["history", "demo"]);
    assert!(human.ok().stdout.lines().last().is_some_and(|l| l.contains(" move ")), "{}", human.describe());
    // A plain upgrade after the move stays at the new placement.
    sb.run(&["install", &demo_source("v2")]).ok();
    assert_eq!(sb.listed(DEMO).expect("listed").targets, demo_targets_abs(&sb.dest.join("moved"), "v2"));

    // rollback's words name the old version, and so its placement. (The
    // parent directories created for the new placement stay, empty, as
    // after an uninstall.)
    sb.run(&["rollback", "demo", "--to", &demo_digest("v1")]).ok();
    let now = without_empty_dirs(&sb.world());
    assert!(
        now == without_empty_dirs(&v1_world),
        "rollback did not return to the old placement:\n{}",
        tree_diff(&now, &v1_world, 25)
    );
    assert_eq!(sb.listed(DEMO).expect("listed").targets, demo_targets_abs(&sb.dest, "v1"));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// (e) The refusal says how to install a second copy, and `--name` does it:
/// the first copy is untouched, both are listed and verify.
#[test]
fn name_installs_a_second_copy_beside_the_first() {
    let sb = with_demo_v1();
    let before = Before::of(&sb);
    sb.run(&install(&demo_source("v2"), &demo_flags(&sb, "second"))).fails_with(&["--name OTHER"]);
    before.unchanged(&sb, "a second copy without --name");
    let mut a = install(&demo_source("v2"), &demo_flags(&sb, "second"));
    a.extend(args(&["--name", "demo2"]));
    sb.run(&a).ok();
    let now = sb.world();
    let first: Tree =
        now.iter().filter(|(k, _)| !k.starts_with("second")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(first == before.world, "the second copy changed the first:\n{}", tree_diff(&first, &before.world, 25));
    assert_eq!(sb.listed(DEMO).expect("demo").targets, demo_targets_abs(&sb.dest, "v1"));
    assert_eq!(sb.listed("demo2").expect("demo2").targets, demo_targets_abs(&sb.dest.join("second"), "v2"));
    sb.run(&["verify"]).ok();
}

/// (f) A `--map` glob that matches no file of the artifact is an error
/// naming the glob and the artifact's files; nothing changes, on a fresh
/// install and on an upgrade.
#[test]
fn map_glob_matching_no_file_is_an_error() {
    let sb = Sandbox::new();
    let mut a = install(&demo_source("v1"), &args(&["--to", &at(&sb, "app")]));
    a.extend(args(&["--map", &format!("*.dll={}", at(&sb, "lib"))]));
    sb.run(&a).fails_with(&["\"*.dll\"", "matches no file", "demo_fdw.so", "demo_fdw.control", "demo_fdw--1.0.sql"]);
    assert!(sb.world().is_empty(), "a refused install changed DEST");
    assert!(sb.list_json().is_empty());

    let sb = with_demo_v1();
    let before = Before::of(&sb);
    let mut a = sb.install_demo_args("v2");
    a.extend(args(&["--map", &format!("*.txt={}", at(&sb, "doc"))]));
    sb.run(&a).fails_with(&["\"*.txt\"", "demo_fdw.so"]);
    before.unchanged(&sb, "an upgrade with a --map that matches nothing");
}

/// (g) In `apply` the file names the placement: a package whose placement
/// changed is planned as a move (`action: "move"` with the old and new
/// targets and placements, `~ demo moved: OLD -> NEW`), and applied.
#[test]
fn apply_shows_a_changed_placement_as_a_move() {
    let sb = Sandbox::new();
    let entry = |under: &str| {
        let d = sb.dest.join(under);
        let d = d.display();
        format!(
            "[package.demo]\nref = \"{}\"\nto = \"{d}/app\"\nmap = [\"*.so={d}/lib\", \"*.control={d}/share/extension\", \"*.sql={d}/share/extension\"]\n",
            demo_source("v1")
        )
    };
    let file = sb.root.join("stagehand.toml");
    fs::write(&file, entry("a")).unwrap();
    let apply = |extra: &[&str]| {
        let mut v: Vec<OsString> = vec!["apply".into(), "--file".into(), file.clone().into()];
        v.extend(extra.iter().map(OsString::from));
        sb.run(&v)
    };
    apply(&[]).ok();
    fs::write(&file, entry("b")).unwrap();
    let before = sb.world();
    let run = apply(&["--dry-run", "--json"]);
    let r = run.ok().json();
    let changes = r["result"]["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{}", run.describe());
    let c = &changes[0];
    assert_eq!(c["action"], "move", "{}", run.describe());
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    assert!(list(&c["moved"]["old_targets"]).contains(&at(&sb, "a/app")), "{c}");
    assert!(list(&c["moved"]["new_targets"]).contains(&at(&sb, "b/app")), "{c}");
    assert_eq!(c["moved"]["old_placement"]["to"], at(&sb, "a/app"), "{c}");
    assert_eq!(c["moved"]["new_placement"]["to"], at(&sb, "b/app"), "{c}");
    let human = apply(&["--dry-run"]);
    let line = format!("~ demo moved: {}", at(&sb, "a/app"));
    assert!(
        human.ok().stdout.lines().any(|l| l.starts_with(&line) && l.contains(&at(&sb, "b/app"))),
        "{}",
        human.describe()
    );
    assert!(sb.world() == before, "a dry run changed DEST");
    // A move is confirmed: without a terminal it needs --yes.
    apply(&[]).fails_with(&["--yes", "Nothing was changed"]);
    assert!(sb.world() == before, "a refused move changed DEST");
    apply(&["--yes"]).ok();
    assert!(!sb.dest.join("a/app").exists() && sb.dest.join("b/app").is_dir(), "the apply did not move demo");
    let h = history(&sb);
    assert_eq!(h.last().map(|r| r["op"].clone()), Some("move".into()), "{h:?}");
}

/// A `--move` killed at every kill point after its commit point, and at a
/// sample of those before it, then recovered (`status --json`): DEST holds
/// all of the old version at the old placement or all of the new one at
/// the new placement, `list` agrees, and no staging or backup path is left.
#[test]
fn move_killed_at_a_kill_point_recovers_to_all_old_or_all_new() {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let sb = Sandbox::at(root.join("work"));
    write_foreign(&sb.dest);
    sb.install_demo("v1").ok();
    let old = sb.world();
    let new = world_moved(&old, "moved", "v2");
    let mut op = install(&demo_source("v2"), &demo_flags(&sb, "moved"));
    op.push("--move".into());
    let pristine = root.join("pristine");
    sb.save_to(&pristine);

    let trace = root.join("trace.txt");
    let run = sb.run_env(&op, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
    run.ok();
    assert_eq!(classify(&sb.world(), &old, &new), Ok(Which::New), "the traced move did not end in the new world");
    let pairs = read_trace(&trace);
    let commit = pairs.iter().position(|(p, _)| p == "journal.commit").expect("a commit point");
    let before: Vec<_> = pairs[..commit].iter().step_by((commit / 6).max(1)).cloned().collect();
    let chosen: Vec<_> = before.into_iter().chain(pairs[commit..].iter().cloned()).collect();
    let (mut ended_old, mut ended_new) = (0, 0);
    for (pt, n) in &chosen {
        let ctx = format!("crash at {pt}:{n}");
        sb.restore_from(&pristine);
        let spec = format!("{pt}:{n}");
        let crashed = sb.run_env(&op, &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(crashed.signal, Some(libc::SIGABRT), "{ctx}: not killed at its point:\n{}", crashed.describe());
        let status = sb.run(&["status", "--json"]);
        assert!(status.success(), "{ctx}: recovery failed:\n{}", status.describe());
        assert!(pending_of(&status.json()).is_empty(), "{ctx}: still pending");
        assert!(sb.leftovers().is_empty(), "{ctx}: left {:?}", sb.leftovers());
        let which = classify(&sb.world(), &old, &new).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let listed = sb.listed(DEMO).expect("demo listed");
        let (ver, under) = match which {
            Which::Old => {
                ended_old += 1;
                ("v1", sb.dest.clone())
            }
            Which::New => {
                ended_new += 1;
                ("v2", sb.dest.join("moved"))
            }
        };
        assert_eq!(listed.digest, demo_digest(ver), "{ctx}: world {which:?}, list another digest");
        assert_eq!(listed.targets, demo_targets_abs(&under, ver), "{ctx}: world {which:?}, list other targets");
    }
    println!("move crash test: {} points crashed (old {ended_old}, new {ended_new})", chosen.len());
    assert!(ended_old > 0 && ended_new > 0, "crashes ended old {ended_old}, new {ended_new} times");
}
