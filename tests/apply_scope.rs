//! What `apply` may remove, and how its lock file pins what it installs:
//! - `--prune` removes only packages its own desired-state file applied;
//!   packages another file or a hand install manages are shown as kept, and
//!   only `--remove NAME` (or `uninstall`) removes them;
//! - an apply that uninstalls or moves a package refuses without a terminal
//!   and without `--yes`, before anything changes (DEST, the registry, the
//!   blob cache, the lock file); `--yes` proceeds; `--dry-run` never asks;
//! - the lock file works like Cargo.lock: a tag moved in the layout is not
//!   followed by a plain `apply` while the lock pins it, `update` moves the
//!   pin and prints `NAME REF old -> new` (`--dry-run` writes nothing);
//! - each desired-state file has its own lock (`web.toml` → `web.lock`).

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// The `[package.NAME]` entry placing the layout's `tag` under DEST/NAME
/// (or DEST/`dir` when given).
fn entry_at(layout: &Path, dest: &Path, name: &str, tag: &str) -> String {
    let d = dest.join(name);
    let d = d.display();
    format!(
        "[package.{name}]\nref = \"oci-layout:{}:{tag}\"\nto = \"{d}/app\"\nmap = [\"*.so={d}/lib\", \"*.control={d}/share/extension\", \"*.sql={d}/share/extension\"]\n\n",
        layout.display()
    )
}

fn entry(dest: &Path, name: &str, tag: &str) -> String {
    entry_at(&demo_layout(), dest, name, tag)
}

/// `install` of demo `tag` by hand, named `name`, placed as [`entry`] places it.
fn install_args(dest: &Path, name: &str, tag: &str) -> Vec<OsString> {
    let mut args = demo_install_args(&dest.join(name), &demo_source(tag));
    args.push("--name".into());
    args.push(name.into());
    args
}

fn apply(sb: &Sandbox, file: &Path, flags: &[&str]) -> Run {
    let mut args: Vec<&OsStr> = vec![OsStr::new("apply")];
    args.extend(flags.iter().map(OsStr::new));
    args.extend([OsStr::new("--file"), file.as_os_str()]);
    sb.run(&args)
}

fn write(path: &Path, body: &str) -> PathBuf {
    fs::write(path, body).unwrap();
    path.to_path_buf()
}

fn names(sb: &Sandbox) -> Vec<String> {
    sb.list_json().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

fn managed_by(sb: &Sandbox, name: &str) -> serde_json::Value {
    let list = sb.list_json();
    list.iter().find(|p| p["name"] == name).map(|p| p["managed_by"].clone()).unwrap_or_default()
}

/// Everything a refused command must leave as it was: DEST, the registry,
/// the history, the blob cache and the files beside the desired-state files.
fn snapshot(sb: &Sandbox, cfg: &Path) -> (Tree, Vec<serde_json::Value>, serde_json::Value, Tree, Tree) {
    let hist = sb.run(&["history", "--json"]).ok().json();
    (sb.world(), sb.list_json(), hist, hash_tree(&sb.state.join("blobs")), hash_tree(cfg))
}

#[test]
fn prune_removes_only_what_its_own_file_applied() {
    let sb = Sandbox::new();
    let cfg = sb.root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let web = write(&cfg.join("web.toml"), &entry(&sb.dest, "a", "v1"));
    let db = write(&cfg.join("db.toml"), &entry(&sb.dest, "b", "v1"));
    apply(&sb, &web, &[]).ok();
    apply(&sb, &db, &[]).ok();
    sb.run(&install_args(&sb.dest, "c", "v1")).ok();
    let (web_c, db_c) = (fs::canonicalize(&web).unwrap(), fs::canonicalize(&db).unwrap());
    assert_eq!(managed_by(&sb, "a"), web_c.display().to_string());
    assert_eq!(managed_by(&sb, "b"), db_c.display().to_string());
    assert_eq!(managed_by(&sb, "c"), serde_json::Value::Null, "a hand install records no file");

    // A file that applied nothing prunes nothing: every package is kept.
    let empty = write(&cfg.join("empty.toml"), "");
    let before = sb.world();
    let run = apply(&sb, &empty, &["--prune", "--yes"]);
    run.ok();
    assert!(!run.stdout.lines().any(|l| l.starts_with("- ")), "pruned another file's package:\n{}", run.describe());
    assert_eq!(names(&sb), ["a", "b", "c"]);
    assert!(sb.world() == before, "an apply that pruned nothing changed DEST");

    // web.toml drops a: only a goes; b (db.toml's) and c (by hand) are shown as kept.
    write(&web, "");
    let dry = apply(&sb, &web, &["--prune", "--dry-run"]);
    dry.ok();
    let kept_b = format!("= b kept (managed by {})", db_c.display());
    for want in ["- a", kept_b.as_str(), "= c kept (installed by hand)"] {
        assert!(dry.stdout.lines().any(|l| l == want), "the plan lacks {want:?}:\n{}", dry.describe());
    }
    let j = sb
        .run(&[
            OsStr::new("--json"),
            OsStr::new("apply"),
            OsStr::new("--prune"),
            OsStr::new("--dry-run"),
            OsStr::new("--file"),
            web.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(j["result"]["managed_by"], web_c.display().to_string());
    assert_eq!(j["result"]["kept"][0], serde_json::json!({"name": "b", "managed_by": db_c.display().to_string()}));
    assert_eq!(j["result"]["needs_confirmation"], true);
    apply(&sb, &web, &["--prune", "--yes"]).ok();
    assert_eq!(names(&sb), ["b", "c"]);
    assert!(node_of(&sb.dest.join("a/app")).is_none(), "a's files are still there");
    let mut left = before.clone();
    left.retain(|k, _| !k.starts_with("a/") && k != "a");
    let mut now = sb.world();
    now.retain(|k, _| !k.starts_with("a/") && k != "a");
    assert!(now == left, "pruning a touched b's or c's files");
    sb.run(&["verify"]).ok();
}

#[test]
fn a_hand_installed_package_survives_prune_and_only_remove_names_it() {
    let sb = Sandbox::new();
    sb.run(&install_args(&sb.dest, "demo", "v1")).ok();
    let f = write(&sb.root.join("stagehand.toml"), &entry(&sb.dest, "a", "v1"));
    let before_demo = hash_tree(&sb.dest.join("demo"));
    let run = apply(&sb, &f, &["--prune", "--yes"]);
    run.ok();
    assert!(run.stdout.lines().any(|l| l == "= demo kept (installed by hand)"), "{}", run.describe());
    assert_eq!(names(&sb), ["a", "demo"], "apply --prune removed a package installed by hand");
    assert_eq!(hash_tree(&sb.dest.join("demo")), before_demo, "apply --prune touched a hand-installed package");

    // --remove names it: refused for a package the file lists, or one not installed.
    apply(&sb, &f, &["--remove", "a", "--yes"]).fails_with(&["lists a", "Nothing was changed"]);
    apply(&sb, &f, &["--remove", "nosuch", "--yes"]).fails_with(&["nosuch"]);
    assert_eq!(names(&sb), ["a", "demo"]);
    let run = apply(&sb, &f, &["--remove", "demo", "--yes"]);
    assert!(run.ok().stdout.lines().any(|l| l == "- demo"), "{}", run.describe());
    assert_eq!(names(&sb), ["a"]);
    assert!(hash_tree(&sb.dest.join("demo")).values().all(|n| *n == Node::Dir), "demo's files are still there");
}

#[test]
fn an_apply_that_removes_or_moves_refuses_without_a_terminal_unless_yes() {
    let sb = Sandbox::new();
    let cfg = sb.root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let f =
        write(&cfg.join("stagehand.toml"), &format!("{}{}", entry(&sb.dest, "a", "v1"), entry(&sb.dest, "b", "v1")));
    apply(&sb, &f, &[]).ok();

    // Uninstall b and upgrade a: refused as a whole, before anything changes
    // (a's v2 blobs are not even imported into the cache).
    write(&f, &entry(&sb.dest, "a", "v2"));
    let before = snapshot(&sb, &cfg);
    let run = apply(&sb, &f, &["--prune"]);
    run.fails_with(&["uninstall b", "--yes", "Nothing was changed"]);
    assert!(!run.stderr.contains("uninstall a"), "{}", run.describe());
    assert!(snapshot(&sb, &cfg) == before, "a refused apply changed something:\n{}", run.describe());
    let json = sb.run(&[
        OsStr::new("--json"),
        OsStr::new("apply"),
        OsStr::new("--prune"),
        OsStr::new("--file"),
        f.as_os_str(),
    ]);
    json.fails_with(&["uninstall b"]);
    assert!(json.json()["error"].as_str().unwrap().contains("--yes"), "{}", json.describe());

    // A dry run never asks.
    let dry = apply(&sb, &f, &["--prune", "--dry-run"]);
    assert!(dry.ok().stdout.lines().any(|l| l == "- b"), "{}", dry.describe());
    assert!(snapshot(&sb, &cfg) == before, "a dry run changed something");

    // Installs and upgrades in place need no confirmation (b is not pruned).
    apply(&sb, &f, &[]).ok();
    assert_eq!(sb.listed("a").map(|p| p.digest), Some(demo_digest("v2")));
    // A hand rollback keeps the file that manages a.
    let file = fs::canonicalize(&f).unwrap().display().to_string();
    sb.run(&["rollback", "a"]).ok();
    assert_eq!(sb.listed("a").map(|p| p.digest), Some(demo_digest("v1")));
    assert_eq!(managed_by(&sb, "a"), file.as_str(), "a hand rollback dropped managed_by");
    apply(&sb, &f, &[]).ok();
    assert_eq!(managed_by(&sb, "a"), file.as_str());

    // A move (a new placement for a) is refused the same way.
    let moved = sb.dest.join("elsewhere");
    write(&f, &entry_at(&demo_layout(), &moved, "a", "v2"));
    let before = snapshot(&sb, &cfg);
    apply(&sb, &f, &[]).fails_with(&["move a", "--yes"]);
    assert!(snapshot(&sb, &cfg) == before, "a refused move changed something");

    // --yes proceeds.
    apply(&sb, &f, &["--yes"]).ok();
    assert_eq!(sb.listed("a").map(|p| p.targets), Some(demo_targets_abs(&moved.join("a"), "v2")));
    apply(&sb, &f, &["--prune", "--yes"]).ok();
    assert_eq!(names(&sb), ["a"]);
    assert!(node_of(&sb.dest.join("b/app")).is_none(), "b's files are still there");
    sb.run(&["verify"]).ok();
}

/// Runs `stagehand --state-dir STATE ARGS` on a pseudo-terminal (util-linux
/// `script`), typing `answer`; its output (stdout and stderr) is in `stdout`.
fn run_on_terminal(sb: &Sandbox, args: &[&OsStr], answer: &str) -> Run {
    let mut line = format!("{} --state-dir {}", bin().to_string_lossy(), sb.state.display());
    for a in args {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).current_dir(&sb.root).env("NO_COLOR", "1");
    for k in ["STAGEHAND_STATE_DIR", "STAGEHAND_CRASH_AT", "STAGEHAND_FAIL_AT", "STAGEHAND_TRACE_POINTS", "RUST_LOG"] {
        cmd.env_remove(k);
    }
    let out = output_with_stdin(&mut cmd, Some(answer.as_bytes()));
    Run {
        argv: line,
        env: String::new(),
        code: out.status.code(),
        signal: None,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn on_a_terminal_an_apply_that_removes_asks_first() {
    if !require("on_a_terminal_an_apply_that_removes_asks_first", &["script"]) {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let f = write(
        &sb.root.join("stagehand.toml"),
        &format!("{}{}", entry(&sb.dest, "a", "v1"), entry(&sb.dest, "b", "v1")),
    );
    apply(&sb, &f, &[]).ok();
    write(&f, &entry(&sb.dest, "a", "v1"));
    let before = snapshot(&sb, &cfg);
    let args = [OsStr::new("apply"), OsStr::new("--prune"), OsStr::new("--file"), f.as_os_str()];
    let no = run_on_terminal(&sb, &args, "no\n");
    assert_eq!(no.code, Some(1), "{}", no.describe());
    assert!(no.stdout.contains("- b") && no.stdout.contains("Type 'yes'"), "no plan or question:\n{}", no.describe());
    assert!(no.stdout.contains("not confirmed") && no.stdout.contains("Nothing was changed"), "{}", no.describe());
    assert!(snapshot(&sb, &cfg) == before, "a declined apply changed something");
    let yes = run_on_terminal(&sb, &args, "yes\n");
    assert_eq!(yes.code, Some(0), "{}", yes.describe());
    assert_eq!(names(&sb), ["a"]);
}

/// `dir/layout` as a copy of the demo layout.
fn copy_demo_layout(dir: &Path) -> PathBuf {
    let lay = dir.join("layout");
    copy_tree(&demo_layout(), &lay);
    lay
}

/// Points `tag` at the manifest `to` points to, in the layout's index.json.
fn retag(layout: &Path, tag: &str, to: &str) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let manifests = index["manifests"].as_array_mut().unwrap();
    let tag_of =
        |m: &serde_json::Value| m["annotations"]["org.opencontainers.image.ref.name"].as_str().map(String::from);
    let target = manifests.iter().find(|m| tag_of(m).as_deref() == Some(to)).unwrap().clone();
    for m in manifests.iter_mut().filter(|m| tag_of(m).as_deref() == Some(tag)) {
        m["digest"] = target["digest"].clone();
        m["size"] = target["size"].clone();
    }
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn the_lock_pins_a_moved_tag_until_update() {
    let sb = Sandbox::new();
    let lay = copy_demo_layout(&sb.root);
    let cfg = sb.root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let f = write(&cfg.join("web.toml"), &entry_at(&lay, &sb.dest, "demo", "v1"));
    let lock = cfg.join("web.lock");
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));
    let reference = format!("oci-layout:{}:v1", lay.display());
    let run = apply(&sb, &f, &[]);
    let new_line = format!("demo {reference} (new) -> {v1}");
    assert!(run.ok().stdout.lines().any(|l| l.trim() == new_line), "no new-pin line:\n{}", run.describe());
    let pinned = fs::read(&lock).unwrap();

    // v1 now points to v2's manifest: a plain apply keeps the pin.
    retag(&lay, "v1", "v2");
    let run = apply(&sb, &f, &[]);
    assert!(run.ok().stdout.contains("nothing to do"), "{}", run.describe());
    assert_eq!(sb.listed("demo").map(|p| p.digest), Some(v1.clone()), "apply followed the moved tag");
    assert_eq!(fs::read(&lock).unwrap(), pinned, "apply rewrote the lock");

    // update --dry-run shows the move and writes nothing; update moves the pin, installs nothing.
    let moved = format!("demo {reference} {v1} -> {v2}");
    let dry = sb.run(&[OsStr::new("update"), OsStr::new("--dry-run"), OsStr::new("--file"), f.as_os_str()]);
    assert!(dry.ok().stdout.lines().any(|l| l == moved), "no {moved:?}:\n{}", dry.describe());
    assert_eq!(fs::read(&lock).unwrap(), pinned, "update --dry-run wrote the lock");
    let j = sb
        .run(&[
            OsStr::new("--json"),
            OsStr::new("update"),
            OsStr::new("--dry-run"),
            OsStr::new("--file"),
            f.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(j["result"]["changes"][0]["old_digest"], v1.as_str());
    assert_eq!(j["result"]["changes"][0]["new_digest"], v2.as_str());
    let up = sb.run(&[OsStr::new("update"), OsStr::new("demo"), OsStr::new("--file"), f.as_os_str()]);
    assert!(up.ok().stdout.lines().any(|l| l == moved), "{}", up.describe());
    assert!(fs::read_to_string(&lock).unwrap().contains(&v2), "update did not move the pin");
    assert_eq!(sb.listed("demo").map(|p| p.digest), Some(v1.clone()), "update installed something");
    sb.run(&[OsStr::new("update"), OsStr::new("nosuch"), OsStr::new("--file"), f.as_os_str()]).fails_with(&["nosuch"]);

    let run = apply(&sb, &f, &[]);
    assert!(run.ok().stdout.contains(&format!("~ demo {v1} -> {v2}")), "{}", run.describe());
    assert_eq!(sb.listed("demo").map(|p| p.digest), Some(v2));
}

#[test]
fn each_desired_state_file_has_its_own_lock() {
    let sb = Sandbox::new();
    let cfg = sb.root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let web = write(&cfg.join("web.toml"), &entry(&sb.dest, "a", "v1"));
    let db = write(&cfg.join("db.toml"), &entry(&sb.dest, "b", "v2"));
    sb.run(&[OsStr::new("lock"), OsStr::new("--file"), web.as_os_str()]).ok();
    sb.run(&[OsStr::new("lock"), OsStr::new("--file"), db.as_os_str()]).ok();
    let (web_lock, db_lock) =
        (fs::read_to_string(cfg.join("web.lock")).unwrap(), fs::read_to_string(cfg.join("db.lock")).unwrap());
    assert!(web_lock.contains("[package.a]") && !web_lock.contains("[package.b]"), "{web_lock}");
    assert!(db_lock.contains("[package.b]") && !db_lock.contains("[package.a]"), "{db_lock}");
    assert!(!cfg.join("stagehand.lock").exists(), "a lock named stagehand.lock was written");
    apply(&sb, &web, &["--locked"]).ok();
    apply(&sb, &db, &["--locked"]).ok();
    assert_eq!(sb.listed("a").map(|p| p.digest), Some(demo_digest("v1")));
    assert_eq!(sb.listed("b").map(|p| p.digest), Some(demo_digest("v2")));
}
