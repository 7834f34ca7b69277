//! The desired-state file and its lock, through the binary: install keys
//! by their flags' long names with a `[defaults]` table that packages
//! override; the file found by walking up from the current directory, by
//! `$STAGEHAND_FILE`, or by `--file`; unknown keys named with their line;
//! `stagehand outdated` after a tag moves in a real `docker-registry`
//! (reached with `plain-http`, `username` and `password-env` from the file),
//! touching nothing; and the lock's signer: recorded, with the index of a
//! multi-arch tag signed on its index, and a different signer refused by
//! `apply --locked`, naming both.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use common::cosign::{fingerprint, keypair, layout_blob, legacy_sig_manifest, set_tag, sig_tag};
use common::registry::{skopeo_push, write_htpasswd, Registry};
use common::*;
use serde_json::{json, Value};

/// A `[package.NAME]` table placing `source` under `dir` (relative to the
/// file), with `extra` lines.
fn package(name: &str, source: &str, dir: &str, extra: &str) -> String {
    format!(
        "[package.{name}]\nref = \"{source}\"\nto = \"{dir}/app\"\n\
         map = [\"*.so={dir}/lib\", \"*.control={dir}/share/extension\", \"*.sql={dir}/share/extension\"]\n{extra}\n"
    )
}

/// The tree demo `ver` leaves in `dir` (an empty tree for none).
fn world_of(dir: &Path) -> Tree {
    if dir.exists() {
        normalize(&hash_tree(dir))
    } else {
        Tree::new()
    }
}

fn expected(ver: Option<&str>) -> Tree {
    normalize(&demo_world(&Tree::new(), ver))
}

fn arg(p: &Path) -> &OsStr {
    p.as_os_str()
}

#[test]
fn keys_come_from_defaults_unless_a_package_sets_them() {
    let sb = Sandbox::new();
    let file = sb.root.join("stagehand.toml");
    let src = demo_source("v1");
    let apply = ["apply", "--yes", "--file", file.to_str().expect("utf-8")];
    let dir = sb.root.join("out");
    // Each [defaults] cap is honoured by a package that does not set it,
    // and a package's own value overrides it; sizes as the flag takes them.
    let cases = [
        ("max-entries = 1", "", "--max-entries cap"),
        ("max-entries = 1\nmax-layer-bytes = \"1 B\"", "max-entries = 100000", "--max-layer-bytes cap"),
        (
            "max-entries = 1\nmax-layer-bytes = \"1 B\"\nmax-path-bytes = 3",
            "max-entries = 100000\nmax-layer-bytes = \"1 MiB\"",
            "--max-path-bytes",
        ),
    ];
    for (defaults, own, needle) in cases {
        let text =
            format!("[defaults]\n{defaults}\n\n{}", package("p", &src, "out", &format!("name = \"mine\"\n{own}")));
        fs::write(&file, &text).expect("write file");
        sb.run(&apply).fails_with(&[needle]);
        assert!(sb.list_json().is_empty(), "a refused apply installed something:\n{text}");
        assert_eq!(world_of(&dir), Tree::new(), "a refused apply left files:\n{text}");
    }
    let own = "name = \"mine\"\nmax-entries = 100000\nmax-layer-bytes = \"1 MiB\"\nmax-path-bytes = 4096";
    let text = format!("[defaults]\n{}\n\n{}", cases[2].0, package("p", &src, "out", own));
    fs::write(&file, &text).expect("write file");
    sb.run(&apply).ok();
    assert_eq!(world_of(&dir), expected(Some("v1")));
    // `name` names the installed package; the table's name does not.
    let names: Vec<String> = sb.list_json().iter().map(|p| p["name"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(names, ["mine"]);
}

#[test]
fn the_file_is_found_walking_up_or_by_stagehand_file_and_file_wins() {
    let sb = Sandbox::new();
    let proj = sb.root.join("proj");
    let deep = proj.join("sub/deeper");
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(proj.join("stagehand.toml"), package("a", &demo_source("v1"), "out", "")).expect("write");
    let other = sb.root.join("other.toml");
    fs::write(&other, package("b", &demo_source("v2"), "out", "")).expect("write");
    let lock_file = |r: &Run| r.json()["lock_file"].as_str().unwrap_or_default().to_string();

    // Walking up from a subdirectory: the nearest stagehand.toml, its lock beside it.
    let r = run_bin(&sb.state, &deep, &["lock", "--json"], &[]);
    assert_eq!(lock_file(r.ok()), proj.join("stagehand.lock").display().to_string());
    assert!(fs::read_to_string(proj.join("stagehand.lock")).expect("lock").contains("[package.a]"));
    // $STAGEHAND_FILE wins over walking up; --file wins over both.
    let env = [("STAGEHAND_FILE", other.as_os_str())];
    let r = run_bin(&sb.state, &deep, &["lock", "--json"], &env);
    assert_eq!(lock_file(r.ok()), sb.root.join("other.lock").display().to_string());
    let named = proj.join("stagehand.toml");
    let r =
        run_bin(&sb.state, &deep, &[OsStr::new("lock"), OsStr::new("--json"), OsStr::new("--file"), arg(&named)], &env);
    assert_eq!(lock_file(r.ok()), proj.join("stagehand.lock").display().to_string());

    // Errors say which file: a missing $STAGEHAND_FILE, none found walking
    // up, and an unknown key (its line, and the key meant).
    let missing = sb.root.join("nope.toml");
    let r = run_bin(&sb.state, &deep, &["apply", "--dry-run"], &[("STAGEHAND_FILE", missing.as_os_str())]);
    r.fails_with(&["$STAGEHAND_FILE", &missing.display().to_string()]);
    // (Unless a stagehand.toml lies above the scratch dir, outside this test.)
    if !sb.root.ancestors().any(|d| d.join("stagehand.toml").is_file()) {
        let r = run_bin(&sb.state, &sb.root, &["outdated"], &[]);
        r.fails_with(&["no stagehand.toml in", &sb.root.display().to_string(), "--file"]);
    }
    let moved = sb.root.join("moved.toml");
    fs::write(&moved, format!("# a comment\n\n{}", package("a", &demo_source("v9"), "out", ""))).expect("write");
    let r = run_bin(&sb.state, &deep, &["apply", "--dry-run"], &[("STAGEHAND_FILE", moved.as_os_str())]);
    r.fails_with(&[&format!("{}:3: package \"a\"", moved.display()), "v9"]);
    let bad = sb.root.join("bad.toml");
    fs::write(&bad, "[package.a]\nref = \"oci-layout:x:v1\"\nto = \"/a\"\nmax-entrys = 5\n").expect("write");
    let r = run_bin(&sb.state, &deep, &["apply", "--dry-run"], &[("STAGEHAND_FILE", bad.as_os_str())]);
    r.fails_with(&[&format!("{}:4", bad.display()), "max-entrys", "did you mean `max-entries`"]);
    let r = run_bin(&sb.state, &deep, &["apply", "--dry-run"], &[("STAGEHAND_FILE", bad.as_os_str())]);
    assert!(!r.stderr.contains("proj/stagehand.toml"), "{}", r.describe());
}

#[test]
fn outdated_shows_a_moved_tag_and_touches_nothing() {
    if !require("outdated_shows_a_moved_tag_and_touches_nothing", &["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    let sb = Sandbox::new();
    let htpasswd = sb.root.join("htpasswd");
    write_htpasswd(&htpasswd, "ci", "s3cret");
    let reg = Registry::start(&sb.root.join("registry"), Some(&htpasswd));
    let host = reg.host();
    skopeo_push(&demo_layout(), "v1", &format!("{host}/demo:latest"), Some("ci:s3cret"), false);
    let file = sb.root.join("stagehand.toml");
    let defaults =
        "[defaults]\nplain-http = true\nusername = \"ci\"\npassword-env = \"REG_PW\"\nrequest-timeout = 30\n\n";
    fs::write(&file, format!("{defaults}{}", package("demo", &format!("{host}/demo:latest"), "out", "")))
        .expect("write");
    // `outdated` needs no state dir and makes none.
    let no_state = sb.root.join("no-state");
    let home = sb.root.as_os_str();
    let pw = [("REG_PW", OsStr::new("s3cret")), ("HOME", home)];
    let outdated = |env: &[(&str, &OsStr)]| run_bin(&no_state, &sb.root, &["outdated", "--json"], env);
    let statuses =
        |r: &Run| -> Vec<Value> { r.ok().json()["result"]["packages"].as_array().expect("packages").clone() };

    // The password comes from the environment variable the file names.
    outdated(&[("HOME", home)]).fails_with(&[&format!("{}:4", file.display()), "REG_PW", "not set"]);
    assert_eq!(statuses(&outdated(&pw))[0]["status"], "unlocked");
    sb.run_env(&["lock"], &pw).ok();
    let lock = fs::read(sb.root.join("stagehand.lock")).expect("lock written");
    let p = &statuses(&outdated(&pw))[0];
    assert_eq!((&p["status"], &p["locked"]), (&json!("current"), &p["latest"]), "{p}");
    let v1 = p["locked"].as_str().expect("a digest").to_string();

    // The tag moves: outdated says so, and changes nothing.
    skopeo_push(&demo_layout(), "v2", &format!("{host}/demo:latest"), Some("ci:s3cret"), false);
    let r = outdated(&pw);
    let p = &statuses(&r)[0];
    assert_eq!((&p["name"], &p["status"], &p["locked"]), (&json!("demo"), &json!("outdated"), &json!(v1)), "{p}");
    assert!(p["latest"].as_str().is_some_and(|d| d.starts_with("sha256:") && d != v1), "{p}");
    let human = run_bin(&no_state, &sb.root, &["outdated"], &pw);
    assert!(
        human.ok().stdout.contains(&format!("{v1} -> ")) && human.stdout.contains("(outdated)"),
        "{}",
        human.describe()
    );
    assert_eq!(fs::read(sb.root.join("stagehand.lock")).expect("lock"), lock, "outdated rewrote the lock");
    assert!(!no_state.exists(), "outdated made a state dir");

    // apply installs the pin (v1), through the file's credentials.
    sb.run_env(&["apply", "--yes"], &pw).ok();
    assert_eq!(world_of(&sb.root.join("out")), expected(Some("v1")));
}

/// A multi-arch index in `layout`: linux/amd64 is the demo's v1, linux/arm64 its v2.
fn multi_arch_index(layout: &Path) -> Value {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read")).expect("json");
    let entry = |tag: &str, arch: &str| {
        let mut d = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .expect("tagged")
            .clone();
        d.as_object_mut().expect("object").remove("annotations");
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    };
    let nested =
        json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [entry("v1", "amd64"), entry("v2", "arm64")]});
    layout_blob(layout, MT_INDEX, &serde_json::to_vec(&nested).expect("json"))
}

#[test]
fn the_lock_records_the_signer_and_locked_refuses_another() {
    if !require("the_lock_records_the_signer_and_locked_refuses_another", &["openssl"]) {
        return;
    }
    let sb = Sandbox::new();
    let layout = sb.root.join("demo");
    copy_tree(&demo_layout(), &layout);
    let index = multi_arch_index(&layout);
    set_tag(&layout, "multi", &index);
    let index_digest = index["digest"].as_str().expect("digest").to_string();
    let keys = sb.root.join("keys");
    fs::create_dir_all(&keys).expect("mkdir");
    let (a_key, a_pub) = keypair(&keys, "a");
    let (b_key, b_pub) = keypair(&keys, "b");
    // `cosign sign repo:multi` signs the index, not the platform manifest.
    let sign =
        |key: &Path| set_tag(&layout, &sig_tag(&index_digest), &legacy_sig_manifest(&layout, key, &index_digest));
    sign(&a_key);
    let file = sb.root.join("stagehand.toml");
    let write = |key: &str| {
        let src = format!("oci-layout:{}:multi", layout.display());
        let extra = format!("platform = \"linux/amd64\"\nverify-key = \"keys/{key}.pub\"");
        fs::write(&file, package("demo", &src, "out", &extra)).expect("write");
    };
    let lock_path = sb.root.join("stagehand.lock");
    let pin = || -> toml::Table {
        let lock: toml::Table = fs::read_to_string(&lock_path).expect("lock").parse().expect("toml");
        lock["package"]["demo"].as_table().expect("pin").clone()
    };
    let f = file.to_str().expect("utf-8");

    write("a");
    sb.run(&["lock", "--file", f]).ok();
    let p = pin();
    assert_eq!(p["digest"].as_str(), Some(demo_digest("v1").as_str()), "{p}");
    assert_eq!(p["index"].as_str(), Some(index_digest.as_str()), "{p}");
    assert_eq!(p["signer"]["key"].as_str(), Some(fingerprint(&a_pub).as_str()), "{p}");
    // --locked installs by the index, so the index's signature is checked again.
    sb.run(&["apply", "--locked", "--yes", "--file", f]).ok();
    assert_eq!(world_of(&sb.root.join("out")), expected(Some("v1")));

    // The publisher re-signs with another key, and the file trusts it: the
    // signature verifies, but the lock recorded another signer.
    sign(&b_key);
    write("b");
    let listed = sb.list_json();
    let lock = fs::read(&lock_path).expect("lock");
    let r = sb.run(&["apply", "--locked", "--yes", "--file", f]);
    r.fails_with(&["--locked", "signer", &fingerprint(&a_pub), &fingerprint(&b_pub), "nothing was changed"]);
    assert_eq!(sb.list_json(), listed, "a refused apply changed the installed set");
    assert_eq!(fs::read(&lock_path).expect("lock"), lock, "a refused apply rewrote the lock");
    // `lock` records the new signer on purpose; then --locked agrees.
    let r = sb.run(&["lock", "--file", f]);
    assert!(r.ok().stdout.contains(&format!("signed by key {}", fingerprint(&b_pub))), "{}", r.describe());
    assert_eq!(pin()["signer"]["key"].as_str(), Some(fingerprint(&b_pub).as_str()));
    sb.run(&["apply", "--locked", "--yes", "--file", f]).ok();
}
