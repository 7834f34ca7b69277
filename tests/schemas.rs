//! docs/schemas/: a JSON Schema (draft 2020-12) per reporting command's
//! `--json` output, every object closed (`additionalProperties: false`), so
//! an undocumented field fails. These tests run every reporting command for
//! real, in the states that fill its optional fields (nothing installed,
//! installed, upgraded, rolled back, moved, failed and rolled back, crashed
//! and recovered, refused, errors), and validate each output with python3's
//! `jsonschema` (tests/common/schema.rs). They also hold the schemas
//! themselves: valid, closed, one per command `--help` lists, each linked
//! from docs/json.md. And paths come out absolute and normalised, even when
//! given as `../x` from a subdirectory.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::schema::{metaschema_failures, schema_dir, validator_or_skip, Schemas};
use common::*;

/// Subcommands that print no report, `--json` or not.
const NOT_REPORTING: &[&str] = &["completions", "man", "help"];

/// Schema files that are not one command's output.
const SHARED: &[&str] = &["common", "error"];

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// The schema names in docs/schemas/ (file names without `.schema.json`).
fn schema_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(schema_dir())
        .expect("docs/schemas")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".schema.json").map(str::to_string))
        .collect();
    names.sort();
    names
}

fn read_schema(name: &str) -> serde_json::Value {
    let p = schema_dir().join(format!("{name}.schema.json"));
    serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// Every object schema under `v` that does not close itself, by JSON pointer.
fn open_objects(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            let is_object = m.get("type").and_then(|t| t.as_str()) == Some("object") || m.contains_key("properties");
            if is_object && !m.contains_key("additionalProperties") {
                out.push(at.to_string());
            }
            for (k, child) in m {
                open_objects(child, &format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                open_objects(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_is_a_valid_draft_2020_12_schema_with_closed_objects() {
    let names = schema_names();
    assert!(names.len() >= 15, "docs/schemas holds only {names:?}");
    for name in &names {
        let s = read_schema(name);
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}: not a draft 2020-12 schema");
        for key in ["title", "description"] {
            assert!(s[key].as_str().is_some_and(|t| !t.is_empty()), "{name}: no {key}");
        }
        let mut open = Vec::new();
        open_objects(&s, "", &mut open);
        assert!(
            open.is_empty(),
            "{name}.schema.json: objects without additionalProperties (undocumented fields would pass): {open:?}"
        );
    }
    if !validator_or_skip("every_schema_is_a_valid_draft_2020_12_schema_with_closed_objects") {
        return;
    }
    let bad = metaschema_failures(&names);
    assert!(bad.is_empty(), "schemas the draft 2020-12 metaschema rejects: {bad:#?}");
}

/// The subcommands a `--help` lists (its `Commands:` section).
fn commands_in_help(args: &[&str]) -> Vec<String> {
    let out = Command::new(bin()).args(args).arg("--help").output().expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let section =
        text.split("Commands:").nth(1).unwrap_or_else(|| panic!("no Commands: in `{args:?} --help`:\n{text}"));
    section
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn every_reporting_command_in_help_has_a_schema_linked_from_json_md() {
    let mut expected = Vec::new();
    for cmd in commands_in_help(&[]) {
        if NOT_REPORTING.contains(&cmd.as_str()) {
            continue;
        }
        // A command with subcommands: one schema per subcommand.
        let subs: Vec<String> =
            Command::new(bin()).args([cmd.as_str(), "--help"]).output().ok().map_or(Vec::new(), |o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if text.contains("Commands:") {
                    commands_in_help(&[cmd.as_str()]).into_iter().filter(|s| s != "help").collect()
                } else {
                    Vec::new()
                }
            });
        if subs.is_empty() {
            expected.push(cmd);
        } else {
            expected.extend(subs.iter().map(|s| format!("{cmd}-{s}")));
        }
    }
    for must in ["install", "apply", "history", "cache-list", "outdated"] {
        assert!(expected.iter().any(|e| e == must), "--help parsing found no {must}: {expected:?}");
    }
    let names = schema_names();
    let missing: Vec<&String> = expected.iter().filter(|e| !names.contains(e)).collect();
    assert!(missing.is_empty(), "reporting commands without docs/schemas/NAME.schema.json: {missing:?}");
    let orphans: Vec<&String> =
        names.iter().filter(|n| !expected.contains(n) && !SHARED.contains(&n.as_str())).collect();
    assert!(orphans.is_empty(), "schemas for no command in --help: {orphans:?}");
    let doc = fs::read_to_string(repo_root().join("docs/json.md")).expect("docs/json.md");
    for n in &names {
        let link = format!("schemas/{n}.schema.json");
        assert!(doc.contains(&link), "docs/json.md does not link {link}");
    }
}

/// The validator is live: a good document passes, and one undocumented
/// field, a relative path or a `..` fails.
#[test]
fn the_schemas_reject_undocumented_fields_and_unnormalised_paths() {
    if !validator_or_skip("the_schemas_reject_undocumented_fields_and_unnormalised_paths") {
        return;
    }
    let good = serde_json::json!({"result": {"txn": 3, "name": "demo", "op": "upgrade",
        "old_digest": format!("sha256:{}", "a".repeat(64)), "new_digest": format!("sha256:{}", "b".repeat(64)),
        "targets": ["/opt/demo/app"], "moved": false, "moved_from": [], "interrupted": false}, "recovered": []});
    let mut extra = good.clone();
    extra["result"]["served_by"] = serde_json::json!("localhost");
    let mut relative = good.clone();
    relative["result"]["targets"] = serde_json::json!(["opt/demo/app"]);
    let mut dotted = good.clone();
    dotted["result"]["targets"] = serde_json::json!(["/opt/x/../demo/app"]);
    let mut s = Schemas::new();
    s.check("install", "good", &good);
    s.check("install", "extra", &extra);
    s.check("install", "relative", &relative);
    s.check("install", "dotted", &dotted);
    s.check("error", "error", &serde_json::json!({"error": "x", "exit_code": 1}));
    s.check("error", "error with a field more", &serde_json::json!({"error": "x", "exit_code": 1, "hint": "y"}));
    let failed: Vec<String> = s.failures().into_iter().map(|(l, _)| l).collect();
    assert_eq!(failed, ["extra", "relative", "dotted", "error with a field more"]);
}

/// Runs `stagehand ARGS` against `sb` from `cwd`.
fn run_in<S: AsRef<OsStr>>(sb: &Sandbox, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    run_bin(&sb.state, cwd, args, env)
}

fn with_json(args: Vec<OsString>) -> Vec<OsString> {
    let mut a = args;
    a.push(os("--json"));
    a
}

/// The read-only reports, each validated.
fn read_only_reports(sb: &Sandbox, s: &mut Schemas) {
    for (schema, args) in [
        ("list", vec!["list"]),
        ("status", vec!["status"]),
        ("history", vec!["history"]),
        ("journal", vec!["journal"]),
        ("cache-list", vec!["cache", "list"]),
        ("repair", vec!["repair", "--dry-run"]),
    ] {
        let run = sb.run(&[args, vec!["--json"]].concat());
        run.ok();
        s.check_run(schema, &run);
    }
    let run = sb.run(&["verify", "--json"]);
    assert!(matches!(run.code, Some(0 | 3)), "{}", run.describe());
    s.check_run("verify", &run);
}

#[test]
fn install_upgrade_rollback_move_and_errors_match_their_schemas() {
    if !validator_or_skip("install_upgrade_rollback_move_and_errors_match_their_schemas") {
        return;
    }
    let t0 = std::time::Instant::now();
    let sb = Sandbox::new();
    let mut s = Schemas::new();
    // Nothing installed, no state dir.
    read_only_reports(&sb, &mut s);
    assert!(!sb.state.exists(), "a read-only command created the state dir");

    let v = s.check_run("install", sb.run(&with_json(sb.install_demo_args("v1"))).ok());
    assert_eq!(v["result"]["op"], "install");
    read_only_reports(&sb, &mut s);
    let v = s.check_run("install", sb.run(&with_json(sb.install_demo_args("v2"))).ok());
    assert_eq!(v["result"]["op"], "upgrade");
    let v = s.check_run("rollback", sb.run(&["rollback", DEMO, "--json"]).ok());
    assert_eq!(v["result"]["op"], "rollback");
    // Moved: `moved_from` filled.
    let elsewhere = sb.root.join("elsewhere");
    let mut args = demo_install_args(&elsewhere, &demo_source("v2"));
    args.extend([os("--move"), os("--json")]);
    let v = s.check_run("install", sb.run(&args).ok());
    assert_eq!(v["result"]["moved"], true, "{v}");
    assert!(!v["result"]["moved_from"].as_array().is_some_and(Vec::is_empty), "{v}");
    // A second package from a relative layout path, from a subdirectory.
    let sub = sb.root.join("a/b");
    fs::create_dir_all(&sub).unwrap();
    let rel_layout = pathdiff(&demo_layout(), &sub);
    let source =
        format!("oci-layout:{}/../{}:v1", rel_layout.display(), demo_layout().file_name().unwrap().to_string_lossy());
    let run = run_in(
        &sb,
        &sub,
        &[os("install"), os(&source), os("--name"), os("two"), os("--to"), os("../../two/app"), os("--json")],
        &[],
    );
    let v = s.check_run("install", run.ok());
    assert_eq!(v["result"]["targets"], serde_json::json!([sb.root.join("two/app")]), "{v}");
    let two = sb.list_json().into_iter().find(|p| p["name"] == "two").expect("two is listed");
    assert_eq!(
        two["source"],
        format!("oci-layout:{}:v1", demo_layout().display()),
        "the source is not absolute and normalised"
    );

    // verify: a modified file (exit 3, mismatches filled).
    let conf = elsewhere.join("app/share/doc/README.txt");
    fs::write(&conf, "changed by hand\n").unwrap();
    let run = sb.run(&["verify", "--json"]);
    run.expect_code(3);
    let v = s.check_run("verify", &run);
    assert_eq!(v["ok"], false, "{v}");
    read_only_reports(&sb, &mut s);
    fs::write(&conf, fs::read(demo_src("v2").join("app/share/doc/README.txt")).unwrap()).unwrap();

    // An install that fails while staging rolls back: the error object,
    // then history's `error`.
    // (demo now lives at `elsewhere`: an install there is an upgrade, not a move.)
    let there = |tag: &str| demo_install_args(&elsewhere, &demo_source(tag));
    let run = sb.run_env(&with_json(there("v1")), &[("STAGEHAND_FAIL_AT", OsStr::new("fsops.write.staging:2=EIO"))]);
    s.check_error(&run);
    let h = s.check_run("history", sb.run(&["history", "--json"]).ok());
    assert!(
        h.as_array().is_some_and(|rows| rows.iter().any(|r| r["outcome"] == "rolled back" && r["error"].is_string())),
        "{h}"
    );

    // Crashed after the commit point: repair --dry-run, then the recovery a command reports.
    let crash = sb.run_env(&there("v1"), &[("STAGEHAND_CRASH_AT", OsStr::new("journal.swapping:2"))]);
    assert!(!crash.success(), "{}", crash.describe());
    let v = s.check_run("repair", sb.run(&["repair", "--dry-run", "--json"]).ok());
    assert_eq!(v["pending"][0]["action"], "would roll forward", "{v}");
    let run = sb.run(&["status", "--json"]);
    let v = s.check_run("status", run.ok());
    assert_eq!(v["recovered"][0]["outcome"], "rolled forward", "{v}");
    // And once more through `repair`.
    let crash = sb.run_env(&there("v2"), &[("STAGEHAND_CRASH_AT", OsStr::new("journal.swapping:2"))]);
    assert!(!crash.success(), "{}", crash.describe());
    let v = s.check_run("repair", sb.run(&["repair", "--json"]).ok());
    assert_eq!(v["recovered"][0]["outcome"], "rolled forward", "{v}");
    read_only_reports(&sb, &mut s);

    // The cache.
    s.check_run("cache-prune", sb.run(&["cache", "prune", "--dry-run", "--json"]).ok());
    s.check_run("cache-prune", sb.run(&["cache", "prune", "--json"]).ok());

    // Errors: unknown package, bad flags, a bad digest, usage.
    for args in [
        vec!["uninstall", "nope"],
        vec!["verify", "nope"],
        vec!["rollback", "nope"],
        vec!["rollback", DEMO, "--to", "sha256:zz"],
        vec!["install", "--bogus"],
        vec!["install", "oci-layout:/nonexistent/layout:v1", "--to", "/tmp/x"],
        vec!["history", "a", "b"],
        vec!["frobnicate"],
    ] {
        let run = sb.run(&[args, vec!["--json"]].concat());
        s.check_error(&run);
    }
    let v = s.check_run("uninstall", sb.run(&["uninstall", "two", "--json"]).ok());
    assert_eq!(v["result"]["op"], "uninstall");
    read_only_reports(&sb, &mut s);
    let n = s.len();
    s.finish();
    println!("{n} documents valid ({:.1?})", t0.elapsed());
}

/// `to` relative to `from` (both absolute, normalised): `../../x`.
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

/// Points `tag` of the OCI layout at `layout` to the manifest `target` tags.
fn retag(layout: &Path, tag: &str, target: &str) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let name =
        |m: &serde_json::Value| m["annotations"]["org.opencontainers.image.ref.name"].as_str().map(str::to_string);
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    let mut entry = manifests.iter().find(|m| name(m).as_deref() == Some(target)).expect("target tag").clone();
    manifests.retain(|m| name(m).as_deref() != Some(tag));
    entry["annotations"]["org.opencontainers.image.ref.name"] = serde_json::json!(tag);
    manifests.push(entry);
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A `[package.NAME]` table placing the demo under `dir` (relative to the file).
fn table(name: &str, reference: &str, dir: &str) -> String {
    format!(
        "[package.{name}]\nref = \"{reference}\"\nto = \"{dir}/app\"\n\
         map = [\"*.so={dir}/lib\", \"*.control={dir}/share/extension\", \"*.sql={dir}/share/extension\"]\n\n"
    )
}

#[test]
fn apply_lock_update_outdated_match_their_schemas_with_absolute_paths() {
    if !validator_or_skip("apply_lock_update_outdated_match_their_schemas_with_absolute_paths") {
        return;
    }
    let t0 = std::time::Instant::now();
    let sb = Sandbox::new();
    let mut s = Schemas::new();
    let layout = sb.root.join("layouts/demo");
    fs::create_dir_all(sb.root.join("layouts")).unwrap();
    copy_tree(&demo_layout(), &layout);
    retag(&layout, "latest", "v1");
    let proj = sb.root.join("proj");
    let sub = proj.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let file = proj.join("web.toml");
    let lock = proj.join("web.lock");
    // Every path relative to the file, through `.` and `..`; the commands run
    // from proj/sub and name the file as ../web.toml.
    let reference = "oci-layout:../layouts/./demo:latest";
    fs::write(&file, table("demo", reference, "../dest/./x/../demo")).unwrap();
    let run = |args: &[&str]| -> Run {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--file", "../web.toml", "--json"]);
        run_in(&sb, &sub, &a, &[])
    };
    let abs = |p: &Path| serde_json::json!(p.display().to_string());

    let v = s.check_run("lock", run(&["lock"]).ok());
    assert_eq!(v["lock_file"], abs(&lock), "{v}");
    assert_eq!(v["lock_changes"][0]["reference"], reference, "a lock change names the reference as written");
    let v = s.check_run("outdated", run(&["outdated"]).ok());
    assert_eq!((&v["result"]["file"], &v["result"]["lock_file"]), (&abs(&file), &abs(&lock)), "{v}");
    assert_eq!(v["result"]["packages"][0]["status"], "current", "{v}");
    let v = s.check_run("apply", run(&["apply", "--dry-run"]).ok());
    assert_eq!((&v["result"]["file"], &v["result"]["lock_file"]), (&abs(&file), &abs(&lock)), "{v}");
    let v = s.check_run("apply", run(&["apply"]).ok());
    assert_eq!(v["result"]["changes"][0]["action"], "install", "{v}");
    let listed = sb.list_json();
    let targets = listed[0]["targets"].as_array().cloned().unwrap_or_default();
    assert!(targets.contains(&abs(&sb.dest.join("demo/app"))), "`to` is not absolute and normalised: {listed:?}");
    let source = listed[0]["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with(&format!("oci-layout:{}", layout.display())),
        "source {source:?} is not absolute and normalised"
    );
    let v = s.check_run("apply", run(&["apply"]).ok());
    assert_eq!(v["result"]["txn"], serde_json::Value::Null, "nothing to do: {v}");

    // The tag moves: outdated, update (dry run, then for real), apply upgrades.
    retag(&layout, "latest", "v2");
    let v = s.check_run("outdated", run(&["outdated"]).ok());
    assert_eq!(v["result"]["packages"][0]["status"], "outdated", "{v}");
    let v = s.check_run("update", run(&["update", "--dry-run"]).ok());
    assert_eq!(v["result"]["changes"].as_array().map(Vec::len), Some(1), "{v}");
    s.check_run("update", run(&["update"]).ok());
    let v = s.check_run("apply", run(&["apply"]).ok());
    assert_eq!(v["result"]["changes"][0]["action"], "upgrade", "{v}");

    // A new placement is a move: asked for, refused without a terminal, done with --yes.
    fs::write(&file, table("demo", reference, "../dest/moved")).unwrap();
    let v = s.check_run("apply", run(&["apply", "--dry-run"]).ok());
    assert_eq!(
        (&v["result"]["changes"][0]["action"], &v["result"]["needs_confirmation"]),
        (&serde_json::json!("move"), &serde_json::json!(true)),
        "{v}"
    );
    assert!(v["result"]["changes"][0]["moved"].is_object(), "{v}");
    s.check_error(&run(&["apply"]));
    s.check_run("apply", run(&["apply", "--yes"]).ok());

    // --prune: a hand install and another file's package are kept; this
    // file's dropped package is uninstalled.
    let mut hand = demo_install_args(&sb.dest.join("hand"), &demo_source("v1"));
    hand.extend([os("--name"), os("hand")]);
    sb.run(&hand).ok();
    let other = proj.join("other.toml");
    fs::write(&other, table("o", &format!("oci-layout:{}:v1", demo_layout().display()), "../dest/o")).unwrap();
    s.check_run("apply", run_in(&sb, &sub, &["apply", "--file", "../other.toml", "--json"], &[]).ok());
    fs::write(&file, table("demo2", reference, "../dest/demo2")).unwrap();
    let v = s.check_run("apply", run(&["apply", "--prune", "--yes"]).ok());
    let kept = v["result"]["kept"].as_array().cloned().unwrap_or_default();
    assert_eq!(kept.len(), 2, "{v}");
    assert!(kept.iter().any(|k| k["managed_by"] == abs(&other)), "{v}");
    assert!(v["result"]["changes"].as_array().is_some_and(|c| c.iter().any(|c| c["action"] == "uninstall")), "{v}");
    let v = s.check_run("rollback", run_in(&sb, &sub, &["rollback", "--apply", "--json"], &[]).ok());
    assert!(v["result"]["file"].as_str().is_some_and(|f| f.starts_with("txn ")), "{v}");

    // Errors: a tag that does not exist (outdated still reports, exit 1), bad TOML.
    fs::write(&file, table("demo", "oci-layout:../layouts/demo:nope", "../dest/demo")).unwrap();
    let r = run(&["outdated"]);
    r.expect_code(1);
    let v = s.check_run("outdated", &r);
    assert_eq!(v["result"]["packages"][0]["status"], "error", "{v}");
    s.check_error(&run(&["apply"]));
    s.check_error(&run(&["lock"]));
    fs::write(&file, "[package.demo\n").unwrap();
    s.check_error(&run(&["apply", "--dry-run"]));
    s.check_error(&run_in(&sb, &sub, &["apply", "--json"], &[("STAGEHAND_FILE", OsStr::new("/nonexistent.toml"))]));
    read_only_reports(&sb, &mut s);
    let n = s.len();
    s.finish();
    println!("{n} documents valid ({:.1?})", t0.elapsed());
}

/// `--state-dir ../state` from a subdirectory: status and cache list report
/// it absolute and normalised.
#[test]
fn a_relative_state_dir_is_reported_absolute() {
    if !validator_or_skip("a_relative_state_dir_is_reported_absolute") {
        return;
    }
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let sub = sb.root.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mut s = Schemas::new();
    for (schema, args) in [("status", vec!["status"]), ("cache-list", vec!["cache", "list"])] {
        let out = Command::new(bin())
            .args(["--state-dir", "../sub/../state", "--json"])
            .args(&args)
            .current_dir(&sub)
            .env("NO_COLOR", "1")
            .output()
            .expect("run stagehand");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let dir = if schema == "status" { &v["state_dir"] } else { &v["dir"] };
        assert!(dir.as_str().is_some_and(|d| d.starts_with(&*sb.state.to_string_lossy()) && !d.contains("..")), "{v}");
        s.check(schema, &format!("{args:?} with a relative state dir"), &v);
    }
    s.finish();
}

/// From a real registry (Debian's docker-registry, the demo pushed with
/// skopeo): installs, the journal's `served` records, the blob cache with
/// its users, and a desired-state file's pins.
#[test]
fn registry_installs_and_pins_match_their_schemas() {
    const TEST: &str = "registry_installs_and_pins_match_their_schemas";
    if !require(TEST, &["docker-registry", "skopeo"]) || !validator_or_skip(TEST) {
        return;
    }
    let t0 = std::time::Instant::now();
    let sb = Sandbox::new();
    let reg = common::registry::demo_registry(&sb.root);
    let host = reg.host();
    let mut s = Schemas::new();
    let install = |reference: &str| -> Vec<OsString> {
        let mut a = demo_install_args(&sb.dest, reference);
        a.extend([os("--plain-http"), os("--json")]);
        a
    };
    s.check_run("install", sb.run(&install(&format!("{host}/demo:v1"))).ok());
    let v2 = demo_digest("v2");
    let v = s.check_run("install", sb.run(&install(&format!("{host}/demo@{v2}"))).ok());
    assert_eq!(v["result"]["new_digest"], v2.as_str(), "{v}");
    let j = s.check_run("journal", sb.run(&["journal", "--json"]).ok());
    assert!(
        j.as_array().is_some_and(|a| a.iter().any(|e| e["key"].as_str().is_some_and(|k| k.starts_with("served/")))),
        "no served record: {j}"
    );
    let c = s.check_run("cache-list", sb.run(&["cache", "list", "--json"]).ok());
    assert!(
        c["blobs"].as_array().is_some_and(|b| b.iter().any(|b| !b["used_by"].as_array().is_some_and(Vec::is_empty))),
        "{c}"
    );
    read_only_reports(&sb, &mut s);

    let file = sb.root.join("reg.toml");
    let d = sb.dest.display();
    fs::write(
        &file,
        format!(
            "[package.demo]\nref = \"{host}/demo:v1\"\nplain-http = true\nto = \"{d}/app\"\n\
             map = [\"*.so={d}/lib\", \"*.control={d}/share/extension\", \"*.sql={d}/share/extension\"]\n"
        ),
    )
    .unwrap();
    let f = file.to_string_lossy().into_owned();
    let v = s.check_run("lock", sb.run(&["lock", "--file", &f, "--json"]).ok());
    assert_eq!(v["lock"]["package"]["demo"]["digest"], demo_digest("v1").as_str(), "{v}");
    s.check_run("outdated", sb.run(&["outdated", "--file", &f, "--json"]).ok());
    let v = s.check_run("apply", sb.run(&["apply", "--file", &f, "--dry-run", "--json"]).ok());
    assert_eq!(v["result"]["changes"][0]["action"], "upgrade", "{v}");
    s.check_run("update", sb.run(&["update", "--file", &f, "--dry-run", "--json"]).ok());
    s.check_run("cache-prune", sb.run(&["cache", "prune", "--dry-run", "--json"]).ok());
    // An unknown tag: the error object.
    s.check_error(&sb.run(&install(&format!("{host}/demo:nope"))));
    drop(reg);
    let n = s.len();
    s.finish();
    println!("{n} documents valid ({:.1?})", t0.elapsed());
}
