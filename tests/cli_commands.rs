//! The command line end to end, through the real binary: `rollback` (offline,
//! with pruned blobs, with `--keep-versions 1`), Ctrl-C (one signal before and
//! after the commit point, and a second signal that exits at once), every
//! JSON document of docs/json.md, completions, the man page, `--help`, and
//! the documented exit codes including the state-dir lock.
//!
//! The disk is read with the independent tree hasher of `common` (std::fs and
//! sha2 only), never through the stagehand library.

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers: sandboxes, worlds
// ---------------------------------------------------------------------------

/// A sandbox whose shared dirs DEST/lib and DEST/share/extension already hold
/// a file no package owns; returns it with its base world.
fn sandbox_with_unrelated() -> (Sandbox, Tree) {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.dest.join("lib")).unwrap();
    fs::create_dir_all(sb.dest.join("share/extension")).unwrap();
    fs::write(sb.dest.join("lib/unrelated.so"), b"someone else's library\n").unwrap();
    fs::write(sb.dest.join("share/extension/plpgsql.control"), b"# someone else's extension\n").unwrap();
    let base = sb.world();
    (sb, base)
}

/// A copy of the demo layout in the sandbox, owned by whoever runs the test:
/// its blobs enter STATE/blobs/sha256 by hard link, as a user's own layout
/// does (a layout another user owns, as the checkout is for uid 65534,
/// waits in blobs/partial instead: tests/corruption.rs covers that).
fn own_demo_layout(sb: &Sandbox) -> PathBuf {
    let copy = sb.root.join("layout").join("demo");
    fs::create_dir(sb.root.join("layout")).unwrap();
    copy_tree(&demo_layout(), &copy);
    copy
}

/// Installs tag `tag` of the OCI layout at `layout` with the demo placement.
fn install_from(sb: &Sandbox, layout: &Path, tag: &str, extra: &[&str]) -> Run {
    let mut args = demo_install_args(&sb.dest, &format!("oci-layout:{}:{tag}", layout.display()));
    args.extend(extra.iter().map(OsString::from));
    sb.run(&args)
}

/// The world must be `base` with demo `ver` installed (or none), with no
/// `.stagehand-` leftovers; when a version is installed, its files are also
/// compared byte for byte (content, exec bit, kind) with
/// examples/src/demo/<ver>.
#[track_caller]
fn assert_demo_world(sb: &Sandbox, base: &Tree, ver: Option<&str>, what: &str) {
    let world = sb.world();
    let expected = demo_world(base, ver);
    assert!(
        normalize(&world) == normalize(&expected),
        "{what}: the world is not the expected one:\n{}",
        tree_diff(&normalize(&world), &normalize(&expected), 25)
    );
    assert!(sb.leftovers().is_empty(), "{what}: leftovers under DEST: {:?}", sb.leftovers());
    if let Some(ver) = ver {
        let app = hash_tree(&sb.dest.join("app"));
        let src = hash_tree(&demo_src(ver).join("app"));
        assert!(
            app == src,
            "{what}: DEST/app differs from examples/src/demo/{ver}/app:\n{}",
            tree_diff(&app, &src, 25)
        );
        for e in fs::read_dir(demo_src(ver).join("files")).unwrap() {
            let e = e.unwrap();
            let rel = demo_file_dest(&e.file_name().to_string_lossy());
            assert_eq!(
                node_of(&sb.dest.join(&rel)),
                node_of(&e.path()),
                "{what}: DEST/{rel} differs from examples/src/demo/{ver}/files/{}",
                e.file_name().to_string_lossy()
            );
        }
    }
}

/// The manifest a tag of a layout points to, parsed from the layout's blob.
fn manifest_of(layout: &Path, tag: &str) -> Value {
    let d = layout_tag_digest(layout, tag);
    let p = layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))).unwrap()
}

/// Every blob a tag needs: the manifest, its config and its layers.
fn closure_of(layout: &Path, tag: &str) -> BTreeSet<String> {
    let m = manifest_of(layout, tag);
    let mut out = BTreeSet::new();
    out.insert(layout_tag_digest(layout, tag));
    out.insert(m["config"]["digest"].as_str().expect("config digest").to_string());
    for l in m["layers"].as_array().expect("layers") {
        out.insert(l["digest"].as_str().expect("layer digest").to_string());
    }
    out
}

/// STATE/blobs/sha256/<hex> of a digest.
fn cached_blob(sb: &Sandbox, digest: &str) -> PathBuf {
    sb.state.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// The digests of the files in STATE/blobs/sha256, read from the directory.
fn cached_digests(sb: &Sandbox) -> BTreeSet<String> {
    match fs::read_dir(sb.state.join("blobs/sha256")) {
        Ok(rd) => rd.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy())).collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[track_caller]
fn history_json(sb: &Sandbox) -> Vec<Value> {
    let run = sb.run(&["history", "--json"]);
    run.ok();
    match run.json() {
        Value::Array(a) => a,
        other => panic!("history --json is not an array: {other}"),
    }
}

#[track_caller]
fn assert_listed_digest(sb: &Sandbox, digest: &str, what: &str) {
    let p = sb.listed(DEMO).unwrap_or_else(|| panic!("{what}: demo is not listed"));
    assert_eq!(p.digest, digest, "{what}: `list --json` shows the wrong digest");
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// ---------------------------------------------------------------------------
// Helpers: JSON fields
// ---------------------------------------------------------------------------

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[track_caller]
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"))
        .get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {v}"))
}

#[track_caller]
fn u64_of(v: &Value, key: &str) -> u64 {
    field(v, key).as_u64().unwrap_or_else(|| panic!("{key:?} is not an unsigned integer in {v}"))
}

#[track_caller]
fn str_of(v: &Value, key: &str) -> String {
    field(v, key).as_str().unwrap_or_else(|| panic!("{key:?} is not a string in {v}")).to_string()
}

#[track_caller]
fn digest_of(v: &Value, key: &str) -> String {
    let s = str_of(v, key);
    assert!(is_digest(&s), "{key:?} is not a sha256:<64 hex> digest in {v}");
    s
}

/// A field that is a digest or null.
#[track_caller]
fn opt_digest_of(v: &Value, key: &str) -> Option<String> {
    match field(v, key) {
        Value::Null => None,
        _ => Some(digest_of(v, key)),
    }
}

#[track_caller]
fn array_of<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    field(v, key).as_array().unwrap_or_else(|| panic!("{key:?} is not an array in {v}"))
}

/// An array of absolute path strings.
#[track_caller]
fn abs_paths_of(v: &Value, key: &str) -> BTreeSet<String> {
    array_of(v, key)
        .iter()
        .map(|p| {
            let s = p.as_str().unwrap_or_else(|| panic!("{key:?} holds a non-string in {v}"));
            assert!(Path::new(s).is_absolute(), "{key:?} holds a relative path {s:?} in {v}");
            s.to_string()
        })
        .collect()
}

/// `{"result": {...}, "recovered": [...]}` of install/uninstall/rollback:
/// checks every documented field, returns the txn id and the recovered list.
#[track_caller]
fn check_txn_result(
    run: &Run,
    op: &str,
    old: Option<&str>,
    new: Option<&str>,
    targets: &BTreeSet<String>,
    interrupted: bool,
) -> (u64, Vec<Value>) {
    let doc = run.json();
    let r = field(&doc, "result");
    let txn = u64_of(r, "txn");
    assert_eq!(str_of(r, "name"), DEMO, "result.name:\n{}", run.describe());
    assert_eq!(str_of(r, "op"), op, "result.op:\n{}", run.describe());
    assert_eq!(opt_digest_of(r, "old_digest").as_deref(), old, "result.old_digest:\n{}", run.describe());
    assert_eq!(opt_digest_of(r, "new_digest").as_deref(), new, "result.new_digest:\n{}", run.describe());
    assert_eq!(&abs_paths_of(r, "targets"), targets, "result.targets:\n{}", run.describe());
    assert_eq!(field(r, "interrupted"), &Value::Bool(interrupted), "result.interrupted:\n{}", run.describe());
    let recovered = array_of(&doc, "recovered").clone();
    for rec in &recovered {
        check_recovery(rec);
    }
    (txn, recovered)
}

/// A RECOVERY object of docs/json.md.
#[track_caller]
fn check_recovery(rec: &Value) {
    u64_of(rec, "txn");
    assert!(!str_of(rec, "package").is_empty(), "empty package in {rec}");
    let op = str_of(rec, "op");
    assert!(["install", "uninstall", "rollback"].contains(&op.as_str()), "RECOVERY op {op:?} not documented: {rec}");
    let outcome = str_of(rec, "outcome");
    assert!(
        ["rolled forward", "rolled back", "refused"].contains(&outcome.as_str()),
        "RECOVERY outcome {outcome:?} not documented: {rec}"
    );
    assert!(!str_of(rec, "step_found").is_empty(), "empty step_found in {rec}");
    let reason = rec.get("reason").unwrap_or(&Value::Null);
    if outcome == "refused" {
        assert!(reason.as_str().is_some_and(|r| !r.is_empty()), "a refused RECOVERY has no reason: {rec}");
    } else {
        assert!(reason.is_null(), "RECOVERY has a reason although it was not refused: {rec}");
    }
}

/// `--json` on a failure: stdout is exactly `{"error": STRING, "exit_code":
/// N}`, the process exits N, and the message names `needle`.
#[track_caller]
fn check_json_error(run: &Run, code: i32, needle: &str) {
    run.expect_code(code);
    let doc = run.json();
    let o = doc.as_object().unwrap_or_else(|| panic!("error JSON is not an object:\n{}", run.describe()));
    assert_eq!(o.get("exit_code").and_then(Value::as_i64), Some(code as i64), "exit_code:\n{}", run.describe());
    let e = o.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("no error string:\n{}", run.describe()));
    assert!(e.contains(needle), "the error does not name {needle:?}:\n{}", run.describe());
    assert!(o.len() == 2, "the error object has undocumented fields:\n{}", run.describe());
}

// ---------------------------------------------------------------------------
// 1. rollback
// ---------------------------------------------------------------------------

/// v1 → v2, then `rollback` restores v1 byte for byte from the blob cache,
/// although the layout it was installed from has been deleted; rollback again
/// gives v2; `--to` a kept digest works; `--to` an unknown digest is refused
/// with a message naming it and what is kept, changing nothing.
#[test]
fn rollback_restores_the_replaced_version_offline() {
    let (sb, base) = sandbox_with_unrelated();
    let copies = sb.root.join("layouts");
    fs::create_dir_all(&copies).unwrap();
    let layout = copies.join("demo"); // the package name comes from the dir name
    copy_tree(&demo_layout(), &layout);
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));

    install_from(&sb, &layout, "v1", &[]).ok();
    install_from(&sb, &layout, "v2", &[]).ok();
    assert_demo_world(&sb, &base, Some("v2"), "after the upgrade");
    let upgrade_txn = history_json(&sb).last().map(|h| u64_of(h, "id")).unwrap();

    // Offline: the source layout no longer exists.
    remove_if_exists(&layout);
    assert!(!layout.exists());

    let hist_before = history_json(&sb).len();
    let run = sb.run(&["rollback", DEMO, "--json"]);
    run.ok();
    let (txn, recovered) =
        check_txn_result(&run, "rollback", Some(&v2), Some(&v1), &demo_targets_abs(&sb.dest, "v1"), false);
    assert!(txn > upgrade_txn, "the rollback's txn {txn} is not after the upgrade's {upgrade_txn}");
    assert!(recovered.is_empty(), "nothing was pending, yet recovered = {recovered:?}");
    assert_demo_world(&sb, &base, Some("v1"), "after rollback (layout deleted)");
    assert_listed_digest(&sb, &v1, "after rollback");
    sb.run(&["verify", DEMO]).ok();
    let hist = history_json(&sb);
    assert_eq!(hist.len(), hist_before + 1, "rollback must add exactly one history entry: {hist:?}");
    let last = hist.last().unwrap();
    assert_eq!(str_of(last, "op"), "rollback", "{last}");
    assert_eq!(str_of(last, "outcome"), "done", "{last}");
    assert_eq!(u64_of(last, "id"), txn, "{last}");
    assert_eq!(opt_digest_of(last, "old_digest").as_deref(), Some(v2.as_str()), "{last}");
    assert_eq!(opt_digest_of(last, "new_digest").as_deref(), Some(v1.as_str()), "{last}");
    assert!(field(last, "error").is_null(), "{last}");

    // Rollback again: back to v2 (the version the rollback replaced).
    let again = sb.run(&["rollback", DEMO]);
    again.ok();
    assert!(again.stdout.contains("rollback"), "human output does not say rollback:\n{}", again.describe());
    assert_demo_world(&sb, &base, Some("v2"), "after the second rollback");
    assert_listed_digest(&sb, &v2, "after the second rollback");

    // --to a named kept version.
    sb.run(&["rollback", DEMO, "--to", &v1]).ok();
    assert_demo_world(&sb, &base, Some("v1"), "after rollback --to v1");
    assert_listed_digest(&sb, &v1, "after rollback --to v1");
    assert_eq!(
        opt_digest_of(history_json(&sb).last().unwrap(), "new_digest").as_deref(),
        Some(v1.as_str()),
        "history does not record the rollback --to v1"
    );

    // Refusals change nothing.
    let world = sb.world();
    let list = sb.list_json();
    let hist_len = history_json(&sb).len();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let refused = sb.run(&["rollback", DEMO, "--to", &unknown]);
    refused.expect_clean_failure();
    assert_eq!(refused.code, Some(1), "unknown --to digest:\n{}", refused.describe());
    assert!(refused.stderr.contains(&unknown), "the message does not name the digest:\n{}", refused.describe());
    assert!(refused.stderr.contains("kept"), "the message does not say what is kept:\n{}", refused.describe());
    assert!(refused.stderr.contains(&v2), "the message does not list the kept version v2:\n{}", refused.describe());
    check_json_error(&sb.run(&["rollback", DEMO, "--to", &unknown, "--json"]), 1, &unknown);
    let current = sb.run(&["rollback", DEMO, "--to", &v1]);
    current.expect_clean_failure();
    assert!(current.stderr.contains("already"), "rollback --to the installed digest:\n{}", current.describe());
    let nobody = sb.run(&["rollback", "no-such-package"]);
    nobody.expect_clean_failure();
    assert!(nobody.stderr.contains("no-such-package"), "{}", nobody.describe());
    assert!(sb.world() == world, "a refused rollback changed DEST:\n{}", tree_diff(&sb.world(), &world, 20));
    assert_eq!(sb.list_json(), list, "a refused rollback changed the package list");
    assert_eq!(history_json(&sb).len(), hist_len, "a refused rollback added a history entry");
    assert!(sb.leftovers().is_empty());
}

/// One blob of v1 deleted from the cache after v1 → v2: `rollback` exits
/// non-zero, says the blobs are gone and how to reinstall, and the world
/// stays exactly v2. Putting the blob back makes rollback work again. With
/// `--keep-versions 1` on the upgrade, v1's blobs are not kept and rollback
/// says there is no earlier version.
#[test]
fn rollback_refuses_when_the_old_blobs_were_pruned() {
    let (sb, base) = sandbox_with_unrelated();
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));
    let layout = own_demo_layout(&sb);
    install_from(&sb, &layout, "v1", &[]).ok();
    install_from(&sb, &layout, "v2", &[]).ok();

    // A layer only v1 uses (read from examples/demo/index.json → manifest).
    let v1_manifest = manifest_of(&demo_layout(), "v1");
    let v2_blobs = closure_of(&demo_layout(), "v2");
    let victim = v1_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .find(|d| !v2_blobs.contains(d))
        .expect("v1 has a layer v2 does not share");
    let victim_path = cached_blob(&sb, &victim);
    assert!(victim_path.is_file(), "v1's layer {victim} is not in the cache at {}", victim_path.display());
    let saved = fs::read(&victim_path).unwrap();
    fs::remove_file(&victim_path).unwrap();

    let world = sb.world();
    let hist_len = history_json(&sb).len();
    for args in [vec!["rollback", DEMO], vec!["rollback", DEMO, "--to", v1.as_str()]] {
        let run = sb.run(&args);
        run.expect_clean_failure();
        assert_eq!(run.code, Some(1), "{}", run.describe());
        let msg = run.stderr.to_lowercase();
        assert!(
            msg.contains("no longer in the cache") || msg.contains("pruned"),
            "the message does not say the blobs are gone:\n{}",
            run.describe()
        );
        assert!(
            run.stderr.contains("stagehand install")
                && run.stderr.contains(&format!("oci-layout:{}:v1", layout.display())),
            "the message does not say how to reinstall v1 ({}):\n{}",
            layout.display(),
            run.describe()
        );
        assert!(sb.world() == world, "a refused rollback changed DEST:\n{}", tree_diff(&sb.world(), &world, 20));
    }
    let json_run = sb.run(&["rollback", DEMO, "--json"]);
    check_json_error(&json_run, 1, &v1);
    assert_demo_world(&sb, &base, Some("v2"), "after the refused rollbacks");
    assert_listed_digest(&sb, &v2, "after the refused rollbacks");
    assert_eq!(history_json(&sb).len(), hist_len, "a refused rollback added a history entry");
    assert!(!victim_path.exists(), "a refused rollback re-fetched the blob from somewhere");

    // The blob back: the same rollback now works (the refusal was the blob).
    fs::write(&victim_path, &saved).unwrap();
    sb.run(&["rollback", DEMO]).ok();
    assert_demo_world(&sb, &base, Some("v1"), "after rollback with the blob restored");

    // --keep-versions 1: only the installed version is kept.
    let sb2 = Sandbox::new();
    let base2 = sb2.world();
    let layout2 = own_demo_layout(&sb2);
    install_from(&sb2, &layout2, "v1", &[]).ok();
    install_from(&sb2, &layout2, "v2", &["--keep-versions", "1"]).ok();
    let cached = cached_digests(&sb2);
    assert!(!cached.contains(&v1), "--keep-versions 1 left v1's manifest in the cache: {cached:?}");
    assert!(!cached.contains(&victim), "--keep-versions 1 left v1's layer in the cache: {cached:?}");
    assert!(v2_blobs.is_subset(&cached), "v2's blobs are not all cached: {cached:?}");
    let run = sb2.run(&["rollback", DEMO]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("no earlier version"), "rollback with nothing kept:\n{}", run.describe());
    assert_demo_world(&sb2, &base2, Some("v2"), "after rollback with --keep-versions 1");
}

// ---------------------------------------------------------------------------
// 3. Ctrl-C
// ---------------------------------------------------------------------------

/// One SIGINT before the commit point rolls back (exit 130, nothing left);
/// one after it finishes the transaction (exit 0, `interrupted: true`).
#[test]
fn ctrl_c_rolls_back_before_the_commit_point_and_finishes_after_it() {
    let sb = Sandbox::new();
    let base = sb.world();
    // Fresh install, interrupted while staging.
    let env = [("STAGEHAND_SIGNAL_AT", os("fsops.write.staging:2"))];
    let run = sb.run_env(&sb.install_demo_args("v1"), &env);
    run.expect_code(130);
    assert!(run.stderr.contains("rolled back"), "exit 130 without saying it rolled back:\n{}", run.describe());
    for t in demo_targets_abs(&sb.dest, "v1") {
        assert!(!Path::new(&t).exists(), "{t} exists after an interrupted fresh install");
    }
    assert_eq!(normalize(&sb.world()), normalize(&base), "an interrupted fresh install left files in DEST");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
    assert!(sb.list_json().is_empty(), "an interrupted fresh install is listed");
    let status = sb.status_json();
    assert!(pending_of(&status).is_empty() && array_of(&status, "recovered").is_empty(), "{status}");
    let last = history_json(&sb).pop().expect("the interrupted install is in the history");
    assert_eq!(str_of(&last, "outcome"), "rolled back", "{last}");

    // Fresh install, interrupted after the commit point: finished.
    let env = [("STAGEHAND_SIGNAL_AT", os("journal.swapping"))];
    let run = sb.run_env(&sb.install_demo_args("v1"), &env);
    run.ok();
    assert!(run.stderr.contains("finished"), "a Ctrl-C after the commit point is not reported:\n{}", run.describe());
    assert_demo_world(&sb, &base, Some("v1"), "after an install interrupted past the commit point");
    assert_listed_digest(&sb, &demo_digest("v1"), "after an install interrupted past the commit point");

    // Upgrade interrupted before the commit point, with --json: the error
    // object carries 130 and v1 stays.
    let env = [("STAGEHAND_SIGNAL_AT", os("fsops.write.staging:2"))];
    let mut args = sb.install_demo_args("v2");
    args.push("--json".into());
    let run = sb.run_env(&args, &env);
    check_json_error(&run, 130, "interrupted");
    assert_demo_world(&sb, &base, Some("v1"), "after an upgrade interrupted while staging");

    // Upgrade interrupted after the commit point, with --json.
    let env = [("STAGEHAND_SIGNAL_AT", os("journal.swapping:2"))];
    let run = sb.run_env(&args, &env);
    run.ok();
    assert!(run.stderr.contains("finished"), "{}", run.describe());
    check_txn_result(
        &run,
        "upgrade",
        Some(&demo_digest("v1")),
        Some(&demo_digest("v2")),
        &demo_targets_abs(&sb.dest, "v2"),
        true,
    );
    assert_demo_world(&sb, &base, Some("v2"), "after an upgrade interrupted past the commit point");
    assert!(pending_of(&sb.status_json()).is_empty());
}

/// One file of a generated tar layer.
struct GenFile {
    name: &'static str,
    len: u64,
    fill: u8,
}

/// A zstd-compressed tar holding `files`, built in a stream (a few hundred
/// MiB of one byte compress to a few KiB).
fn zstd_tar_layer(files: &[GenFile]) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(f.name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(f.len);
        h.set_cksum();
        enc.write_all(h.as_bytes()).unwrap();
        let buf = vec![f.fill; 1 << 20];
        let mut left = f.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            enc.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        enc.write_all(&vec![0u8; ((512 - f.len % 512) % 512) as usize]).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hexd = sha256_hex(bytes);
    fs::write(layout.join("blobs/sha256").join(&hexd), bytes).unwrap();
    format!("sha256:{hexd}")
}

/// An OCI layout at `dir` with one single-layer (tar+zstd) manifest per tag.
fn generated_layout(dir: &Path, versions: &[(&str, &[GenFile])]) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = put_blob(dir, b"{}");
    let mut manifests = Vec::new();
    for (tag, files) in versions {
        let layer = zstd_tar_layer(files);
        let layer_digest = put_blob(dir, &layer);
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": layer_digest, "size": layer.len()}]
        });
        let mb = serde_json::to_vec(&m).unwrap();
        let md = put_blob(dir, &mb);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": mb.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Spawns the binary like `run_bin` does, without waiting for it.
fn spawn_bin(state: &Path, cwd: &Path, args: &[OsString], env: &[(&str, &OsStr)]) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state-dir").arg(state).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("STAGEHAND_") || k == "RUST_LOG" || k == "RUST_BACKTRACE" {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").env("STAGEHAND_DEFAULT_REGISTRY", "127.0.0.1:9").env("STAGEHAND_CLEANUP", "wait");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

/// Waits until the trace file has a line `point`; panics if the child exits
/// first or it takes too long.
fn wait_for_point(child: &mut std::process::Child, trace: &Path, point: &str) {
    let t0 = Instant::now();
    loop {
        if fs::read_to_string(trace).unwrap_or_default().lines().any(|l| l.trim() == point) {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the child exited ({st}) before reaching {point}");
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the child did not reach {point} within 30 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn child_output(child: std::process::Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A second SIGINT exits at once (exit 130, no rollback in-process), and the
/// next command recovers: the world is all-old, no leftovers.
///
/// The window: the upgrade's layer holds a 192 MiB file of zeros then a small
/// file. The first SIGINT is raised internally when staging reaches the big
/// file; the stager checks for it only between tar entries, so the process
/// keeps writing for the whole big file, and the test's external SIGINT
/// lands during that write. A control run with only the first signal shows
/// the contrast: it rolls back in-process and leaves nothing to recover.
#[test]
fn second_ctrl_c_exits_at_once_and_the_next_command_recovers() {
    const BIG: u64 = 192 << 20;
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let sb = Sandbox::at(root.join("work"));
    let layout = root.join("layouts/big");
    let t_build = Instant::now();
    generated_layout(
        &layout,
        &[
            ("old", &[GenFile { name: "old.txt", len: 100, fill: b'o' }]),
            (
                "new",
                &[GenFile { name: "big.bin", len: BIG, fill: 0 }, GenFile { name: "tail.txt", len: 10, fill: b't' }],
            ),
        ],
    );
    let build_time = t_build.elapsed();
    let install = |tag: &str| -> Vec<OsString> {
        vec![
            "install".into(),
            format!("oci-layout:{}:{tag}", layout.display()).into(),
            "--to".into(),
            sb.dest.join("big").into(),
        ]
    };
    sb.run(&install("old")).ok();
    let old_world = sb.world();
    assert!(
        matches!(old_world.get("big/old.txt"), Some(Node::File { len: 100, .. })),
        "the old version is not installed: {old_world:?}"
    );
    let old_digest = layout_tag_digest(&layout, "old");
    let trace = root.join("trace.txt");
    let env: Vec<(&str, &OsStr)> =
        vec![("STAGEHAND_SIGNAL_AT", os("fsops.write.staging:1")), ("STAGEHAND_TRACE_POINTS", trace.as_os_str())];

    // Control: one signal. The process finishes writing the big file, then
    // rolls back by itself.
    let mut child = spawn_bin(&sb.state, &sb.root, &install("new"), &env);
    wait_for_point(&mut child, &trace, "fsops.write.staging");
    let reached = Instant::now();
    let (status, stderr) = child_output(child);
    let window = reached.elapsed();
    assert_eq!(status.code(), Some(130), "one signal: {status}\n{stderr}");
    assert!(stderr.contains("rolled back"), "one signal: no rollback message:\n{stderr}");
    assert!(sb.world() == old_world, "one signal: the world is not the old one");
    assert!(sb.leftovers().is_empty(), "one signal: leftovers {:?}", sb.leftovers());
    let status_doc = sb.status_json();
    assert!(array_of(&status_doc, "recovered").is_empty(), "one signal left work for recovery: {status_doc}");

    // Two signals: the internal one, then ours while the big file is written.
    fs::remove_file(&trace).unwrap();
    let mut child = spawn_bin(&sb.state, &sb.root, &install("new"), &env);
    let pid = child.id() as libc::pid_t;
    wait_for_point(&mut child, &trace, "fsops.write.staging");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child exited before the second signal could be sent (the write window of {window:?} was too short)"
    );
    let sent = Instant::now();
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (status, stderr) = child_output(child);
    let exit_after = sent.elapsed();
    assert_eq!(status.code(), Some(130), "two signals: {status} (signal {:?})\n{stderr}", status.signal());
    assert!(
        exit_after < Duration::from_secs(2),
        "the second signal did not exit at once: {exit_after:?} (one signal took {window:?} to finish)"
    );
    // It left the work half done: the staging dir is still there and the
    // journal holds the transaction (the in-process rollback never ran).
    assert!(!sb.leftovers().is_empty(), "two signals: no staging left behind, so no immediate exit happened");
    assert!(sb.world().contains_key("big/old.txt"), "two signals: the old version was touched before the commit point");

    let status_doc = sb.status_json();
    assert!(pending_of(&status_doc).is_empty(), "{status_doc}");
    let recovered = array_of(&status_doc, "recovered");
    assert_eq!(recovered.len(), 1, "the next command did not recover the abandoned transaction: {status_doc}");
    check_recovery(&recovered[0]);
    assert_eq!(str_of(&recovered[0], "outcome"), "rolled back", "{status_doc}");
    assert_eq!(str_of(&recovered[0], "package"), "big", "{status_doc}");
    assert!(
        sb.world() == old_world,
        "after recovery the world is not all-old:\n{}",
        tree_diff(&sb.world(), &old_world, 20)
    );
    assert!(sb.leftovers().is_empty(), "after recovery: leftovers {:?}", sb.leftovers());
    let list = sb.list_json();
    assert_eq!(package_in_list(&list, "big").map(|p| p.digest), Some(old_digest), "{list:?}");
    let last = history_json(&sb).pop().unwrap();
    assert_eq!(str_of(&last, "outcome"), "rolled back by recovery", "{last}");
    println!(
        "second-signal test: layout built in {build_time:?}; one signal finished {window:?} after the point; \
         the second signal's process exited {exit_after:?} after it was sent"
    );
}

// ---------------------------------------------------------------------------
// 4. JSON outputs
// ---------------------------------------------------------------------------

/// Every reporting command's `--json`, parsed and checked field by field
/// against docs/json.md and against the disk.
#[test]
fn json_outputs_carry_the_documented_fields() {
    let start = now_secs();
    let (sb, base) = sandbox_with_unrelated();
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));
    let layout = own_demo_layout(&sb);
    let source = |tag: &str| format!("oci-layout:{}:{tag}", layout.display());
    let json_args = |tag: &str| {
        let mut a = demo_install_args(&sb.dest, &source(tag));
        a.push("--json".into());
        a
    };

    // install
    let run = sb.run(&json_args("v1"));
    run.ok();
    let (t1, rec) = check_txn_result(&run, "install", None, Some(&v1), &demo_targets_abs(&sb.dest, "v1"), false);
    assert!(rec.is_empty());

    // verify: ok, then five kinds of mismatch
    let expected_checked = |ver: &str| {
        (hash_tree(&demo_src(ver).join("app")).len() + fs::read_dir(demo_src(ver).join("files")).unwrap().count())
            as u64
    };
    let ok = sb.run(&["verify", "--json"]);
    ok.ok();
    let doc = ok.json();
    assert_eq!(field(&doc, "ok"), &Value::Bool(true), "{doc}");
    let pkgs = array_of(&doc, "packages");
    assert_eq!(pkgs.len(), 1, "{doc}");
    assert_eq!(str_of(&pkgs[0], "name"), DEMO);
    assert_eq!(digest_of(&pkgs[0], "digest"), v1);
    assert_eq!(u64_of(&pkgs[0], "files_checked"), expected_checked("v1"), "files_checked vs examples/src/demo/v1");
    assert!(array_of(&pkgs[0], "mismatches").is_empty(), "{doc}");

    let app = sb.dest.join("app");
    fs::OpenOptions::new().append(true).open(app.join("share/doc/README.txt")).unwrap().write_all(b"edit\n").unwrap();
    fs::remove_file(sb.dest.join("lib/demo_fdw.so")).unwrap();
    fs::write(app.join("extra.txt"), b"added by hand\n").unwrap();
    fs::set_permissions(app.join("bin/demo"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_file(app.join("etc/demo.conf")).unwrap();
    fs::create_dir(app.join("etc/demo.conf")).unwrap();
    let expected: BTreeSet<(String, String)> = [
        ("app/share/doc/README.txt", "modified"),
        ("lib/demo_fdw.so", "missing"),
        ("app/extra.txt", "unexpected"),
        ("app/bin/demo", "mode"),
        ("app/etc/demo.conf", "kind"),
    ]
    .iter()
    .map(|(p, what)| (sb.dest.join(p).display().to_string(), what.to_string()))
    .collect();
    for args in [vec!["verify", "--json"], vec!["verify", DEMO, "--json"]] {
        let bad = sb.run(&args);
        bad.expect_code(3);
        let doc = bad.json();
        assert_eq!(field(&doc, "ok"), &Value::Bool(false), "{doc}");
        let pkgs = array_of(&doc, "packages");
        assert_eq!(pkgs.len(), 1, "{doc}");
        let got: BTreeSet<(String, String)> = array_of(&pkgs[0], "mismatches")
            .iter()
            .map(|m| {
                let p = str_of(m, "path");
                assert!(Path::new(&p).is_absolute(), "{m}");
                (p, str_of(m, "problem"))
            })
            .collect();
        assert_eq!(got, expected, "`{}` mismatches", args.join(" "));
    }
    // Undo by hand from examples/src/demo/v1; verify and the hasher agree again.
    let src = demo_src("v1");
    fs::copy(src.join("app/share/doc/README.txt"), app.join("share/doc/README.txt")).unwrap();
    fs::copy(src.join("files/demo_fdw.so"), sb.dest.join("lib/demo_fdw.so")).unwrap();
    fs::remove_file(app.join("extra.txt")).unwrap();
    fs::set_permissions(app.join("bin/demo"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_dir(app.join("etc/demo.conf")).unwrap();
    fs::copy(src.join("app/etc/demo.conf"), app.join("etc/demo.conf")).unwrap();
    fs::set_permissions(sb.dest.join("lib/demo_fdw.so"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_demo_world(&sb, &base, Some("v1"), "after undoing the edits");
    sb.run(&["verify", "--json"]).ok();

    // upgrade
    let run = sb.run(&json_args("v2"));
    run.ok();
    let (t2, rec) = check_txn_result(&run, "upgrade", Some(&v1), Some(&v2), &demo_targets_abs(&sb.dest, "v2"), false);
    assert!(rec.is_empty() && t2 > t1, "txn ids {t1} then {t2}");
    let after_upgrade = now_secs();

    // list
    let list = sb.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    let p = &list[0];
    assert_eq!(str_of(p, "name"), DEMO);
    assert_eq!(digest_of(p, "digest"), v2);
    assert_eq!(str_of(p, "source"), source("v2"));
    let installed_at = u64_of(p, "installed_at");
    assert!(
        (start.saturating_sub(2)..=after_upgrade + 2).contains(&installed_at),
        "installed_at {installed_at} is not now"
    );
    assert_eq!(u64_of(p, "txn"), t2);
    assert_eq!(abs_paths_of(p, "targets"), demo_targets_abs(&sb.dest, "v2"));

    // status
    let st = sb.status_json();
    assert_eq!(str_of(&st, "state_dir"), sb.state.display().to_string(), "{st}");
    assert!(pending_of(&st).is_empty() && array_of(&st, "recovered").is_empty(), "{st}");
    assert_eq!(u64_of(&st, "packages"), 1, "{st}");
    assert_eq!(u64_of(&st, "last_txn"), t2, "{st}");

    // history
    let hist = history_json(&sb);
    assert_eq!(hist.len(), 2, "{hist:?}");
    for (h, (id, op, old, new)) in hist.iter().zip([(t1, "install", None, &v1), (t2, "upgrade", Some(&v1), &v2)]) {
        assert_eq!(u64_of(h, "id"), id, "{h}");
        assert_eq!(str_of(h, "op"), op, "{h}");
        assert_eq!(str_of(h, "package"), DEMO, "{h}");
        let (s, f) = (u64_of(h, "started_at"), u64_of(h, "finished_at"));
        assert!(start.saturating_sub(2) <= s && s <= f && f <= after_upgrade + 2, "times {s} {f}: {h}");
        assert_eq!(opt_digest_of(h, "old_digest").as_ref(), old, "{h}");
        assert_eq!(opt_digest_of(h, "new_digest").as_ref(), Some(new), "{h}");
        assert_eq!(str_of(h, "outcome"), "done", "{h}");
        assert!(field(h, "error").is_null(), "{h}");
    }
    // history NAME filters
    let other = sb.run(&["history", "no-such-package", "--json"]);
    other.ok();
    assert_eq!(other.json(), json!([]), "history of an unknown name");

    // journal
    let run = sb.run(&["journal", "--json"]);
    run.ok();
    let journal = match run.json() {
        Value::Array(a) => a,
        other => panic!("journal --json is not an array: {other}"),
    };
    let mut keys = BTreeSet::new();
    for r in &journal {
        let key = str_of(r, "key");
        assert!(
            ["txns/", "history/", "packages/"].iter().any(|p| key.starts_with(p)),
            "undocumented journal key {key:?}"
        );
        assert!(u64_of(r, "bytes") > 0, "{r}");
        let rec = field(r, "record");
        assert!(rec.is_object() && rec.get("error").is_none_or(|e| !e.is_string()), "undecodable record: {r}");
        keys.insert(key);
    }
    let want: BTreeSet<String> = [format!("history/{t1}"), format!("history/{t2}"), format!("packages/{DEMO}")].into();
    assert!(want.is_subset(&keys), "journal keys {keys:?} lack {want:?}");
    assert!(!keys.iter().any(|k| k.starts_with("txns/")), "a finished txn record is still in the journal: {keys:?}");
    let pkg_rec = journal.iter().find(|r| r["key"] == json!(format!("packages/{DEMO}"))).unwrap();
    assert_eq!(pkg_rec["record"]["manifest_digest"], json!(v2), "{pkg_rec}");

    // repair, nothing to do
    let run = sb.run(&["repair", "--json"]);
    run.ok();
    assert_eq!(run.json(), json!({"recovered": []}));
    let run = sb.run(&["repair", "--dry-run", "--json"]);
    run.ok();
    assert_eq!(run.json(), json!({"dry_run": true, "pending": []}));

    // cache list, with an orphan blob and a partial download planted
    let orphan_bytes = b"a blob nothing uses\n";
    let orphan = format!("sha256:{}", sha256_hex(orphan_bytes));
    fs::write(cached_blob(&sb, &orphan), orphan_bytes).unwrap();
    let partial_digest = format!("sha256:{}", sha256_hex(b"some future blob"));
    let partial_path = sb.state.join("blobs/partial").join(partial_digest.trim_start_matches("sha256:"));
    fs::create_dir_all(partial_path.parent().unwrap()).unwrap();
    fs::write(&partial_path, b"12345").unwrap();
    let in_use = closure_of(&demo_layout(), "v2");
    let kept = closure_of(&demo_layout(), "v1");
    let on_disk = cached_digests(&sb);
    let expected_disk: BTreeSet<String> = in_use.iter().chain(&kept).cloned().chain([orphan.clone()]).collect();
    assert_eq!(on_disk, expected_disk, "STATE/blobs/sha256 holds other blobs than v1's, v2's and the orphan");

    let run = sb.run(&["cache", "list", "--json"]);
    run.ok();
    let cl = run.json();
    assert_eq!(str_of(&cl, "dir"), sb.state.join("blobs").display().to_string(), "{cl}");
    let mut listed = BTreeSet::new();
    let mut sum = 0;
    for b in array_of(&cl, "blobs") {
        let d = digest_of(b, "digest");
        let size = u64_of(b, "size");
        assert_eq!(size, fs::metadata(cached_blob(&sb, &d)).unwrap().len(), "size of {d}");
        sum += size;
        let used: Vec<String> =
            array_of(b, "used_by").iter().map(|u| u.as_str().expect("used_by string").into()).collect();
        if in_use.contains(&d) {
            assert!(used.contains(&format!("package {DEMO}")), "{d} is v2's, used_by {used:?}");
        }
        if kept.contains(&d) {
            assert!(used.contains(&format!("package {DEMO} (kept for rollback)")), "{d} is v1's, used_by {used:?}");
        }
        if d == orphan {
            assert!(used.is_empty(), "the orphan blob is used by {used:?}");
        }
        listed.insert(d);
    }
    assert_eq!(listed, on_disk, "cache list vs the directory");
    let partials = array_of(&cl, "partials");
    assert_eq!(partials.len(), 1, "{cl}");
    assert_eq!(opt_digest_of(&partials[0], "digest"), Some(partial_digest.clone()), "{cl}");
    assert_eq!(str_of(&partials[0], "path"), partial_path.display().to_string(), "{cl}");
    assert_eq!(u64_of(&partials[0], "size"), 5, "{cl}");
    assert_eq!(u64_of(&cl, "total_bytes"), sum + 5, "total_bytes vs the sizes listed: {cl}");

    // cache prune --dry-run, then for real
    let orphan_len = orphan_bytes.len() as u64;
    for dry in [true, false] {
        let args: Vec<&str> =
            if dry { vec!["cache", "prune", "--dry-run", "--json"] } else { vec!["cache", "prune", "--json"] };
        let run = sb.run(&args);
        run.ok();
        let pr = run.json();
        assert_eq!(field(&pr, "dry_run"), &Value::Bool(dry), "{pr}");
        assert_eq!(field(&pr, "removed"), &json!([{"digest": orphan, "size": orphan_len}]), "{pr}");
        let rp = array_of(&pr, "removed_partials");
        assert_eq!(rp.len(), 1, "{pr}");
        assert_eq!(str_of(&rp[0], "path"), partial_path.display().to_string(), "{pr}");
        assert_eq!(u64_of(&pr, "kept"), (on_disk.len() - 1) as u64, "{pr}");
        assert_eq!(u64_of(&pr, "bytes_freed"), orphan_len + 5, "{pr}");
        assert_eq!(cached_blob(&sb, &orphan).exists(), dry, "dry_run={dry}: the orphan blob");
        assert_eq!(partial_path.exists(), dry, "dry_run={dry}: the partial download");
    }
    assert_eq!(cached_digests(&sb), expected_disk.iter().filter(|d| **d != orphan).cloned().collect());

    // A crash before the commit point of a rollback: dry-run says "would roll
    // back" and changes nothing; repair does it and reports it.
    let steps = ["planned", "staged", "committed", "cleaning", "rolling-back", "rolling-back-after-commit"];
    let crash = sb.run_env(&["rollback", DEMO], &[("STAGEHAND_CRASH_AT", os("fsops.write.staging:2"))]);
    assert_eq!(crash.signal, Some(libc::SIGABRT), "{}", crash.describe());
    let world = sb.world();
    let mut previews = Vec::new();
    for _ in 0..2 {
        let run = sb.run(&["repair", "--dry-run", "--json"]);
        run.ok();
        previews.push(run.json());
    }
    assert_eq!(previews[0], previews[1], "repair --dry-run changed something");
    assert!(sb.world() == world, "repair --dry-run changed DEST");
    let dry = &previews[0];
    assert_eq!(field(dry, "dry_run"), &Value::Bool(true));
    let pending = array_of(dry, "pending");
    assert_eq!(pending.len(), 1, "{dry}");
    let crashed_txn = u64_of(&pending[0], "txn");
    assert!(crashed_txn > t2, "{dry}");
    assert_eq!(str_of(&pending[0], "package"), DEMO);
    assert!(steps.contains(&str_of(&pending[0], "step").as_str()), "undocumented step: {dry}");
    assert_eq!(str_of(&pending[0], "action"), "would roll back", "{dry}");
    let run = sb.run(&["repair", "--json"]);
    run.ok();
    let doc = run.json();
    let recovered = array_of(&doc, "recovered");
    assert_eq!(recovered.len(), 1, "{doc}");
    check_recovery(&recovered[0]);
    assert_eq!(
        (u64_of(&recovered[0], "txn"), str_of(&recovered[0], "op"), str_of(&recovered[0], "outcome")),
        (crashed_txn, "rollback".to_string(), "rolled back".to_string()),
        "{doc}"
    );
    assert_demo_world(&sb, &base, Some("v2"), "after repair rolled the crashed rollback back");
    let last = history_json(&sb).pop().unwrap();
    assert_eq!((str_of(&last, "op"), str_of(&last, "outcome")), ("rollback".into(), "rolled back by recovery".into()));

    // A crash after the commit point: "would roll forward"; `status` recovers it.
    let crash = sb.run_env(&["rollback", DEMO], &[("STAGEHAND_CRASH_AT", os("journal.swapping:2"))]);
    assert_eq!(crash.signal, Some(libc::SIGABRT), "{}", crash.describe());
    let run = sb.run(&["repair", "--dry-run", "--json"]);
    run.ok();
    let dry = run.json();
    let pending = array_of(&dry, "pending");
    assert_eq!(pending.len(), 1, "{dry}");
    assert_eq!(str_of(&pending[0], "action"), "would roll forward", "{dry}");
    assert!(steps.contains(&str_of(&pending[0], "step").as_str()), "undocumented step: {dry}");
    let st = sb.status_json();
    assert!(pending_of(&st).is_empty(), "{st}");
    let recovered = array_of(&st, "recovered");
    assert_eq!(recovered.len(), 1, "{st}");
    check_recovery(&recovered[0]);
    assert_eq!(str_of(&recovered[0], "outcome"), "rolled forward", "{st}");
    assert_eq!(str_of(&recovered[0], "op"), "rollback", "{st}");
    assert_eq!(u64_of(&st, "last_txn"), u64_of(&pending[0], "txn"), "{st}");
    assert_demo_world(&sb, &base, Some("v1"), "after status rolled the crashed rollback forward");
    assert_listed_digest(&sb, &v1, "after status rolled the crashed rollback forward");

    // A crashed upgrade, recovered first by `uninstall --json`.
    let crash =
        sb.run_env(&demo_install_args(&sb.dest, &source("v2")), &[("STAGEHAND_CRASH_AT", os("journal.swapping:2"))]);
    assert_eq!(crash.signal, Some(libc::SIGABRT), "{}", crash.describe());
    let run = sb.run(&["uninstall", DEMO, "--json"]);
    run.ok();
    let (_, recovered) = check_txn_result(&run, "uninstall", Some(&v2), None, &demo_targets_abs(&sb.dest, "v2"), false);
    assert_eq!(recovered.len(), 1, "{}", run.describe());
    assert_eq!(
        (str_of(&recovered[0], "op"), str_of(&recovered[0], "outcome")),
        ("install".into(), "rolled forward".into())
    );
    assert_demo_world(&sb, &base, None, "after uninstall");
    assert!(sb.list_json().is_empty());

    // Errors with --json.
    let dest_app = sb.dest.join("app").display().to_string();
    check_json_error(&sb.run(&["install", "oci-layout:", "--to", &dest_app, "--json"]), 2, "oci-layout:");
    check_json_error(&sb.run(&["--json", "install", "oci-layout:", "--to", &dest_app]), 2, "oci-layout:");
    check_json_error(
        &sb.run(&["install", "oci-layout:x:v1", "--map", "no-equals-sign", "--json"]),
        2,
        "no-equals-sign",
    );
    check_json_error(&sb.run(&["uninstall", "no-such-package", "--json"]), 1, "no-such-package");
    check_json_error(&sb.run(&["verify", "no-such-package", "--json"]), 1, "no-such-package");
    check_json_error(&sb.run(&["rollback", "no-such-package", "--json"]), 1, "no-such-package");
    let missing_tag = format!("oci-layout:{}:v9", demo_layout().display());
    check_json_error(&sb.run(&["install", &missing_tag, "--to", &dest_app, "--json"]), 1, "v9");
    assert_demo_world(&sb, &base, None, "after the refused commands");
}

// ---------------------------------------------------------------------------
// 5. completions, man, --help
// ---------------------------------------------------------------------------

/// The subcommands `stagehand --help` lists (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    let section = help.split("Commands:").nth(1).expect("`stagehand --help` has a Commands section");
    section
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn completions_man_and_help() {
    let sb = Sandbox::new();
    let script_dir = tempdir();
    for shell in ["bash", "zsh", "fish"] {
        let run = sb.run(&["completions", shell]);
        run.ok();
        assert!(run.stdout.len() > 200, "{shell} completions are nearly empty:\n{}", run.describe());
        for word in ["stagehand", "install", "rollback", "lock-timeout"] {
            assert!(run.stdout.contains(word), "{shell} completions do not mention {word}");
        }
        if shell == "bash" && Path::new("/bin/bash").exists() {
            let f = script_dir.path().join("stagehand.bash");
            fs::write(&f, &run.stdout).unwrap();
            let out = Command::new("/bin/bash").arg("-n").arg(&f).output().unwrap();
            assert!(out.status.success(), "bash -n rejects the completions: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    sb.run(&["completions", "no-such-shell"]).expect_code(2);

    let man = sb.run(&["man"]);
    man.ok();
    assert!(man.stdout.starts_with(".TH") || man.stdout.starts_with(".ie"), "not roff:\n{}", man.describe());
    assert!(man.stdout.contains(".TH stagehand"), "no .TH stagehand header:\n{}", man.describe());
    assert!(man.stdout.contains("rollback"), "the man page does not mention rollback");
    assert!(!sb.state.exists(), "completions/man created the state dir");

    let top = sb.run(&["--help"]);
    top.ok();
    let cmds = subcommands(&top.stdout);
    let documented = [
        "install",
        "rollback",
        "uninstall",
        "repair",
        "status",
        "list",
        "verify",
        "history",
        "journal",
        "cache",
        "completions",
        "man",
    ];
    for c in documented {
        assert!(cmds.iter().any(|x| x == c), "`stagehand --help` does not list {c}: {cmds:?}");
    }
    for c in &cmds {
        let run = sb.run(&[c.as_str(), "--help"]);
        run.ok();
        assert!(run.stdout.contains("Example"), "`stagehand {c} --help` has no example:\n{}", run.describe());
    }
    // -h works too and the short help still exits 0.
    sb.run(&["install", "-h"]).ok();
}

/// README: "Every subcommand has `--help` with an example." The cache's own
/// subcommands have none (the example is only on `cache --help`).
#[test]
fn cache_subcommand_help_has_an_example() {
    let sb = Sandbox::new();
    for sub in ["list", "prune"] {
        let run = sb.run(&["cache", sub, "--help"]);
        run.ok();
        assert!(run.stdout.contains("Example"), "`stagehand cache {sub} --help` has no example:\n{}", run.describe());
    }
}

// ---------------------------------------------------------------------------
// 6. exit codes and the lock
// ---------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    sb.run(&["list"]).ok();
    let dest_app = sb.dest.join("app").display().to_string();
    let layout = demo_source("v1");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["list", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["install"], "Usage"),
        (vec!["rollback"], "Usage"),
        (vec!["--lock-timeout", "soon", "list"], "soon"),
        (vec!["install", "oci-layout:", "--to", &dest_app], "oci-layout:"),
        (vec!["install", &layout, "--map", "no-equals-sign"], "no-equals-sign"),
        (vec!["install", &layout], "--to"),
    ];
    for (args, needle) in cases {
        let run = sb.run(&args);
        run.expect_code(2);
        assert!(run.stderr.contains(needle), "the usage message does not name {needle:?}:\n{}", run.describe());
    }
    assert!(sb.world().is_empty(), "a usage error changed DEST");
    assert!(sb.list_json().is_empty());
}

/// docs/json.md: "On failure, stdout carries {"error", "exit_code"}" for any
/// command. Usage errors found by the argument parser print only clap's
/// message on stderr.
#[test]
fn usage_errors_with_json_print_the_error_object() {
    let sb = Sandbox::new();
    check_json_error(&sb.run(&["list", "--bogus", "--json"]), 2, "--bogus");
    check_json_error(&sb.run(&["--json", "frobnicate"]), 2, "frobnicate");
}

/// Holds an exclusive flock on STATE/lock with our pid written in it, as a
/// running stagehand would.
fn hold_lock(sb: &Sandbox) -> fs::File {
    let lock_path = sb.state.join("lock");
    let mut lock = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path).unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "could not take the lock on {} ourselves", lock_path.display());
    lock.set_len(0).unwrap();
    lock.write_all(format!("{}\n", std::process::id()).as_bytes()).unwrap();
    lock.flush().unwrap();
    lock
}

#[test]
fn locked_state_dir_exits_4_and_lock_timeout_waits() {
    let sb = Sandbox::new();
    sb.run(&["repair"]).ok(); // creates the state dir (a read-only command would not)
    let pid = std::process::id().to_string();
    let lock = hold_lock(&sb);

    // Readers do not wait (they read a copy, naming the holder); writers exit 4.
    for args in [vec!["list"], vec!["status"], vec!["history"]] {
        let run = sb.run(&args);
        run.ok();
        assert!(run.stderr.contains(&pid) && run.stderr.contains("in progress"), "{}", run.describe());
    }
    for args in [vec!["rollback", DEMO], vec!["uninstall", DEMO]] {
        let run = sb.run(&args);
        run.expect_code(4);
        assert!(
            run.stderr.contains(&pid),
            "the lock message does not name the holder's pid {pid}:\n{}",
            run.describe()
        );
    }
    check_json_error(&sb.run(&["uninstall", DEMO, "--json"]), 4, &pid);
    let run = sb.install_demo("v1");
    run.expect_code(4);
    assert!(sb.world().is_empty(), "an install that lost the lock changed DEST");

    // A timeout that expires: waits about that long, says so, then exit 4.
    let t0 = Instant::now();
    let run = sb.run(&["--lock-timeout", "1", "uninstall", DEMO]);
    let waited = t0.elapsed();
    run.expect_code(4);
    assert!(waited >= Duration::from_millis(900), "--lock-timeout 1 gave up after {waited:?}");
    assert!(run.stderr.contains("waiting"), "no waiting message:\n{}", run.describe());
    assert!(run.stderr.contains(&pid), "{}", run.describe());

    // The holder lets go after ~1 s: `--lock-timeout 2` waits, then succeeds.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        drop(lock);
    });
    let t0 = Instant::now();
    let mut args = sb.install_demo_args("v1");
    args.splice(0..0, ["--lock-timeout".into(), "2".into()]);
    let run = sb.run(&args);
    let waited = t0.elapsed();
    releaser.join().unwrap();
    run.ok();
    assert!(waited >= Duration::from_millis(900), "the install did not wait for the holder ({waited:?})");
    assert!(run.stderr.contains("waiting"), "no message while waiting for the lock:\n{}", run.describe());
    assert!(run.stderr.contains(&pid), "the waiting message does not name the holder:\n{}", run.describe());
    assert_demo_world(&sb, &Tree::new(), Some("v1"), "after waiting for the lock");
}

/// `verify` exits 3 on a difference and 0 once it is undone; the other
/// codes are covered above (1 errors, 2 usage, 4 locked, 130 interrupted).
#[test]
fn verify_mismatch_exits_3() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let conf = sb.dest.join("app/etc/demo.conf");
    let original = fs::read(&conf).unwrap();
    fs::write(&conf, b"changed by hand\n").unwrap();
    let run = sb.run(&["verify"]);
    run.expect_code(3);
    assert!(run.stdout.contains(path_str(&conf)) && run.stdout.contains("modified"), "{}", run.describe());
    fs::write(&conf, &original).unwrap();
    sb.run(&["verify"]).ok();
}

/// A staging copy of a finished upgrade that came back beside its target
/// (a failing disk undid its removal: the block-level write-error campaign
/// saw it on btrfs) is named by `verify` as a `leftover`, which nothing else
/// would remove; the same name of a transaction that has not finished
/// (a live one's) is not.
#[test]
fn verify_names_a_copy_a_finished_transaction_left_beside_a_target() {
    let (sb, _base) = sandbox_with_unrelated();
    let layout = own_demo_layout(&sb);
    install_from(&sb, &layout, "v1", &[]).ok();
    install_from(&sb, &layout, "v2", &[]).ok();
    let last = history_json(&sb).last().map(|h| u64_of(h, "id")).expect("a history");
    let finished = sb.dest.join(format!(".app.stagehand-{last}.staging"));
    let live = sb.dest.join(format!(".app.stagehand-{}.staging", last + 1));
    for d in [&finished, &live] {
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::write(d.join("bin/demo"), b"the old version\n").unwrap();
    }

    let run = sb.run(&["verify", "--json"]);
    run.expect_code(3);
    let doc = run.json();
    let got: Vec<(String, String)> = array_of(&array_of(&doc, "packages")[0], "mismatches")
        .iter()
        .map(|m| (str_of(m, "path"), str_of(m, "problem")))
        .collect();
    assert_eq!(got, vec![(path_str(&finished).to_string(), "leftover".to_string())], "{doc}");
    let human = sb.run(&["verify"]);
    human.expect_code(3);
    assert!(
        human.stdout.contains(&format!("leftover   {}", path_str(&finished))) && human.stdout.contains("rm -rf"),
        "{}",
        human.describe()
    );
    assert!(finished.exists() && live.exists(), "verify changes nothing");

    fs::remove_dir_all(&finished).unwrap();
    fs::remove_dir_all(&live).unwrap();
    sb.run(&["verify"]).ok();
}
