//! Installs from a real OCI registry (Debian's `docker-registry`, one per
//! test, on a free loopback port, artifacts pushed with `skopeo`): by tag and
//! by digest, upgrades, offline reinstall from the blob cache, the crash
//! matrix around download / staging / journal for a registry install, a
//! tampered blob, the registry killed in the middle of a large blob, unknown
//! tags and repositories, credentials, an image index with two platforms,
//! and `apply --dry-run` leaving the blob cache as it was. The destination is always checked with an independent hasher.
//!
//! Skipped with a loud message if the tools are missing, except in CI
//! (`CI` set), where that is a failure.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::registry::*;

const TOOLS: &[&str] = &["docker-registry", "skopeo"];

fn v(tag: &str) -> String {
    layout_tag_digest(&demo_layout(), tag)
}

#[test]
fn install_by_tag_digest_upgrade_and_offline_from_cache() {
    if !require("install_by_tag_digest_upgrade_and_offline_from_cache", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-basic");
    let mut reg = demo_registry(tmp.path());
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let host = reg.host();

    // By tag.
    let r = sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &[]));
    r.ok();
    assert!(r.stdout.contains("install demo"), "{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    assert_eq!(sb.listed().get("demo"), Some(&v("v1")));
    let list = sb.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["source"], format!("{host}/demo:v1"));
    assert_cache_consistent(&sb.state);

    // Upgrade by digest.
    sb.run(&sb.demo_args(&format!("{host}/demo@{}", v("v2")), &[])).ok();
    assert_eq!(sb.world(), demo_world("v2"));
    assert_eq!(sb.listed().get("demo"), Some(&v("v2")));
    sb.run(&["verify"]).ok();

    // The cache names who uses what.
    let listing = sb.run(&["cache", "list", "--json"]).ok().json();
    let blobs = listing["blobs"].as_array().expect("blobs").clone();
    let used: BTreeSet<String> = blobs
        .iter()
        .filter(|b| !b["used_by"].as_array().expect("used_by").is_empty())
        .map(|b| b["digest"].as_str().expect("digest").to_string())
        .collect();
    // v2 is installed; v1 is kept for rollback (--keep-versions defaults to 2).
    assert!(used.contains(&v("v2")) && used.contains(&v("v1")), "{listing}");
    let why_v1: Vec<String> = blobs
        .iter()
        .filter(|b| b["digest"] == v("v1").as_str())
        .flat_map(|b| b["used_by"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    assert_eq!(why_v1, ["package demo (kept for rollback)"], "{listing}");

    // Registry gone: going back to v1 by digest needs only the cache.
    reg.kill();
    let r = sb.run(&sb.demo_args(&format!("{host}/demo@{}", v("v1")), &["-v"]));
    r.ok();
    assert!(!r.stderr.contains("GET "), "no request may be made:\n{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    // ... but a tag must be resolved, so that fails cleanly and changes nothing.
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &[])).fails_with(&["cannot reach registry", &host]);
    assert_eq!(sb.world(), demo_world("v1"));

    // Prune keeps v2 too: it is the version v1 replaced, kept for rollback.
    let pruned = sb.run(&["cache", "prune", "--json"]).ok().json();
    assert!(pruned["removed"].as_array().expect("removed").is_empty(), "{pruned}");
    assert_eq!(pruned["kept"], 11, "{pruned}");
    // Keeping one version only: the next transaction drops v2's blobs.
    sb.run(&sb.demo_args(&format!("{host}/demo@{}", v("v1")), &["--keep-versions", "1"])).ok();
    let left = sb.run(&["cache", "list", "--json"]).ok().json();
    assert!(!left["blobs"].as_array().expect("blobs").iter().any(|b| b["digest"] == v("v2")), "{left}");
    for b in left["blobs"].as_array().expect("blobs") {
        assert!(!b["used_by"].as_array().expect("used_by").is_empty(), "unused blob survived prune: {b}");
    }
    assert_eq!(left["blobs"].as_array().expect("blobs").len(), 6, "manifest + config + 4 layers of v1: {left}");
    sb.run(&sb.demo_args(&format!("{host}/demo@{}", v("v1")), &[])).ok();
    sb.run(&["verify"]).ok();
}

/// The crash matrix for a registry upgrade (v1 installed from the registry,
/// then v2): every kill point whose name contains `cache`, `staging` or
/// `journal` is crashed at each of its hits. After each crash, `status`
/// recovers and the destination is all-v1 or all-v2 (hashed independently),
/// `list --json` agrees, no staging/backup path is left, every cached blob
/// hashes to its name; then the same install is run again and must succeed.
#[test]
fn crash_matrix_registry_upgrade() {
    if !require("crash_matrix_registry_upgrade", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-crash");
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    let sb = Sandbox::at(&tmp.path().join("sb"));
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &[])).ok();
    let (old, new) = (demo_world("v1"), demo_world("v2"));
    assert_eq!(sb.world(), old);
    let pristine = tmp.path().join("pristine");
    fs::create_dir(&pristine).expect("mkdir");
    copy_tree(&sb.state, &pristine.join("state"));
    copy_tree(&sb.dest, &pristine.join("dest"));
    let restore = || {
        remove_tree(&sb.state);
        remove_tree(&sb.dest);
        copy_tree(&pristine.join("state"), &sb.state);
        copy_tree(&pristine.join("dest"), &sb.dest);
    };
    let args = sb.demo_args(&format!("{host}/demo:v2"), &[]);

    // Trace: which points does the upgrade pass, how often?
    let trace = tmp.path().join("trace");
    let traced = run_bin(&sb.state, &args, &[("STAGEHAND_TRACE_POINTS", trace.to_str().expect("utf8"))], None);
    traced.ok();
    let mut counts: Vec<(String, u32)> = Vec::new();
    for line in fs::read_to_string(&trace).expect("trace").lines() {
        match counts.iter_mut().find(|(n, _)| n == line) {
            Some((_, c)) => *c += 1,
            None => counts.push((line.to_string(), 1)),
        }
    }
    let cases: Vec<(String, u32)> = counts
        .iter()
        .filter(|(n, _)| n.contains("cache") || n.contains("staging") || n.contains("journal"))
        .flat_map(|(n, c)| (1..=*c).map(move |i| (n.clone(), i)))
        .collect();
    for needle in ["fsops.create.cache", "fsops.append.cache", "fsops.fsync.cache", "fsops.rename.cache"] {
        assert!(counts.iter().any(|(n, _)| n == needle), "{needle} never reached: {counts:?}");
    }
    assert!(cases.len() >= 20, "too few crash points: {counts:?}");

    let started = Instant::now();
    let (mut ended_old, mut ended_new) = (0, 0);
    for (point, nth) in &cases {
        restore();
        let spec = format!("{point}:{nth}");
        let crashed = run_bin(&sb.state, &args, &[("STAGEHAND_CRASH_AT", &spec)], None);
        assert_eq!(crashed.signal, Some(libc::SIGABRT), "[{spec}] expected a crash:\n{}", crashed.describe());
        let status = sb.run(&["status", "--json"]);
        status.ok();
        let pending = status.json()["pending"].as_array().expect("pending").len();
        assert_eq!(pending, 0, "[{spec}] pending after recovery:\n{}", status.describe());
        let world = sb.world();
        let listed = sb.listed();
        if world == old {
            ended_old += 1;
            assert_eq!(listed.get("demo"), Some(&v("v1")), "[{spec}] world is v1, list is not");
        } else if world == new {
            ended_new += 1;
            assert_eq!(listed.get("demo"), Some(&v("v2")), "[{spec}] world is v2, list is not");
        } else {
            panic!("[{spec}] destination is neither all-old nor all-new:\n{world:#?}");
        }
        let leftovers: Vec<&String> = world.keys().filter(|k| k.contains("stagehand-")).collect();
        assert!(leftovers.is_empty(), "[{spec}] leftovers: {leftovers:?}");
        assert_cache_consistent(&sb.state);
        sb.run(&["verify"]).ok();
        // The next attempt completes (resuming or replacing what the crash left).
        sb.run(&args).ok();
        assert_eq!(sb.world(), new, "[{spec}] the retried install did not reach v2");
        assert_cache_consistent(&sb.state);
    }
    eprintln!(
        "registry crash matrix: {} crash points ({} distinct), {ended_old} ended v1, {ended_new} ended v2, {:.1}s",
        cases.len(),
        counts.iter().filter(|(n, _)| n.contains("cache") || n.contains("staging") || n.contains("journal")).count(),
        started.elapsed().as_secs_f64()
    );
    assert!(ended_old > 0 && ended_new > 0, "the matrix must cover both sides of the commit point");
}

#[test]
fn tampered_blob_is_refused_and_nothing_changes() {
    if !require("tampered_blob_is_refused_and_nothing_changes", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-tamper");
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    let sb = Sandbox::at(&tmp.path().join("sb"));
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &[])).ok();

    // v2's demo_fdw.so layer, tampered in the registry's storage.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(demo_layout().join("blobs/sha256").join(&v("v2")[7..])).expect("manifest"))
            .expect("json");
    let so = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "demo_fdw.so")
        .expect("so layer")["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let data = reg.blob_data(&so);
    let original = fs::read(&data).expect("registry blob");
    let mut evil = original.clone();
    evil[0] ^= 0xff;
    fs::write(&data, &evil).expect("tamper");

    let r = sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &[]));
    r.fails_with(&["digest mismatch", "demo_fdw.so", &so]);
    assert_eq!(sb.world(), demo_world("v1"), "the installed version must be intact");
    assert_eq!(sb.listed().get("demo"), Some(&v("v1")));
    assert!(!sb.state.join("blobs/sha256").join(&so[7..]).exists(), "a bad blob entered the cache");
    assert!(partials(&sb.state).is_empty(), "a bad partial was left: {:?}", partials(&sb.state));
    assert_cache_consistent(&sb.state);

    // A blob longer than its descriptor says is refused too, naming the layer.
    let mut longer = original.clone();
    longer.extend_from_slice(b"trailing garbage");
    fs::write(&data, &longer).expect("tamper size");
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &[])).fails_with(&["size mismatch", "demo_fdw.so"]);
    assert_eq!(sb.world(), demo_world("v1"));
    assert!(partials(&sb.state).is_empty(), "{:?}", partials(&sb.state));

    // Repaired registry: the upgrade goes through.
    fs::write(&data, &original).expect("repair");
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &[])).ok();
    assert_eq!(sb.world(), demo_world("v2"));
}

#[test]
fn registry_killed_mid_blob_then_resumed() {
    if !require("registry_killed_mid_blob_then_resumed", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-kill");
    let mut reg = Registry::start(&tmp.path().join("registry"), None);
    let big = pseudo_random(50 * 1024 * 1024, 0x5eed);
    let big_hex = sha256_hex(&big);
    let mut layout = LayoutBuilder::new(&tmp.path().join("layout"));
    let m = layout.file_manifest(&[("big.bin", &big), ("small.txt", b"small\n")]);
    layout.tag("v1", &m);
    drop(big);
    skopeo_push(&layout.dir, "v1", &format!("{}/big:v1", reg.host()), None, false);
    // ~20 MiB/s through the proxy: the 50 MiB blob takes a few seconds.
    let proxy = SlowProxy::start(reg.port, 20 * 1024 * 1024);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let out = sb.dest.join("files");
    let source = format!("127.0.0.1:{}/big:v1", proxy.port);
    let args: Vec<String> =
        vec!["install".into(), source.clone(), "--map".into(), format!("*={}", out.display()), "--plain-http".into()];

    let state = sb.state.clone();
    let args2 = args.clone();
    let runner = thread::spawn(move || run_bin(&state, &args2, &[], None));
    let partial = sb.state.join("blobs/partial").join(&big_hex);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if size >= 8 * 1024 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "the download never got going");
        assert!(!runner.is_finished(), "the install finished before the registry could be killed");
        thread::sleep(Duration::from_millis(20));
    }
    reg.kill();
    let r = runner.join().expect("runner");
    r.fails_with(&["big.bin", "stopped after", "of 52428800 bytes", "run the same command again to resume"]);
    assert!(!out.exists(), "nothing may be installed: {:?}", hash_tree(&sb.dest));
    assert!(sb.listed().is_empty());
    let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 0, "the partial download should be kept for a resume");
    assert!(!sb.state.join("blobs/sha256").join(&big_hex).exists());

    reg.restart();
    let r = sb.run_env(&[args.clone(), vec!["-v".into()]].concat(), &[], None);
    r.ok();
    assert!(
        r.stderr.contains("resuming a partial download") && r.stderr.contains(&format!("bytes={kept}-")),
        "expected a range request from byte {kept}:\n{}",
        r.describe()
    );
    assert_eq!(sha256_file(&out.join("big.bin")), big_hex);
    assert_eq!(fs::read(out.join("small.txt")).expect("small"), b"small\n");
    assert!(partials(&sb.state).is_empty());
    assert_cache_consistent(&sb.state);
    drop(proxy);
}

#[test]
fn unknown_tag_unknown_repo_and_credentials() {
    if !require("unknown_tag_unknown_repo_and_credentials", &["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    let tmp = tempdir("reg-auth");
    let open = demo_registry(tmp.path());
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let host = open.host();
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &[])).ok();
    let before = (sb.world(), sb.listed());
    let unchanged = |what: &str| assert_eq!((sb.world(), sb.listed()), before, "{what} changed something");

    sb.run(&sb.demo_args(&format!("{host}/demo:v9"), &[])).fails_with(&[
        "no manifest tagged \"v9\"",
        &format!("{host}/demo"),
        "tags there: v1, v2",
    ]);
    unchanged("unknown tag");
    let zero = format!("sha256:{}", "0".repeat(64));
    sb.run(&sb.demo_args(&format!("{host}/demo@{zero}"), &[])).fails_with(&["no manifest with digest", &zero]);
    unchanged("unknown digest");
    sb.run(&sb.demo_args(&format!("{host}/nope:v1"), &[]))
        .fails_with(&["repository \"nope\" not found on registry", &host]);
    unchanged("unknown repo");
    // No --plain-http: refused with a hint, never silently downgraded.
    let mut no_plain = sb.demo_args(&format!("{host}/demo:v2"), &[]);
    no_plain.retain(|a| a != "--plain-http");
    sb.run(&no_plain).fails_with(&["cannot reach registry", "pass --plain-http"]);
    unchanged("https to a plain registry");
    sb.run(&sb.demo_args("ghcr.io/some/thing:v1", &[])).fails_with(&["--plain-http is allowed only for a loopback"]);
    unchanged("plain http off loopback");

    // A second registry that wants a password.
    let htpasswd = tmp.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let locked = Registry::start(&tmp.path().join("locked"), Some(&htpasswd));
    let lhost = locked.host();
    skopeo_push(&demo_layout(), "v2", &format!("{lhost}/demo:v2"), Some("alice:s3cret"), false);
    let src = format!("{lhost}/demo:v2");

    sb.run(&sb.demo_args(&src, &[])).fails_with(&[
        &format!("registry {lhost} refused access"),
        "401",
        &format!("docker login {lhost}"),
        "--password-stdin",
    ]);
    unchanged("anonymous");
    sb.run_env(&sb.demo_args(&src, &["--username", "alice", "--password-stdin"]), &[], Some("wrong\n"))
        .fails_with(&[&format!("registry {lhost} refused access"), "--username/--password-stdin were refused"]);
    unchanged("wrong password");

    // Docker's config.json, found through $DOCKER_CONFIG: a bad entry is refused...
    let dc = tmp.path().join("docker");
    fs::create_dir_all(&dc).expect("docker dir");
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    fs::write(dc.join("config.json"), format!(r#"{{"auths":{{"{lhost}":{{"auth":"{}"}}}}}}"#, b64("alice:nope")))
        .expect("config");
    let dcs = dc.to_str().expect("utf8");
    sb.run_env(&sb.demo_args(&src, &[]), &[("DOCKER_CONFIG", dcs)], None)
        .fails_with(&["refused access", &dc.join("config.json").display().to_string()]);
    unchanged("wrong config.json");
    // ... a credential helper is asked first ...
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).expect("bin");
    let helper = bin.join("docker-credential-stagehandtest");
    fs::write(
        &helper,
        "#!/bin/sh\nread server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\necho '{\"ServerURL\":\"x\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}'\n",
    )
    .expect("helper");
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(
        dc.join("config.json"),
        format!(
            r#"{{"auths":{{"{lhost}":{{"auth":"{}"}}}},"credHelpers":{{"{lhost}":"stagehandtest"}}}}"#,
            b64("alice:nope")
        ),
    )
    .expect("config");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    sb.run_env(&sb.demo_args(&src, &[]), &[("DOCKER_CONFIG", dcs), ("PATH", &path)], None).ok();
    assert_eq!(fs::read_to_string(bin.join("asked")).expect("helper was asked").trim(), lhost);
    assert_eq!(sb.world(), demo_world("v2"));
    // ... and a right auths entry works on its own.
    fs::write(dc.join("config.json"), format!(r#"{{"auths":{{"{lhost}":{{"auth":"{}"}}}}}}"#, b64("alice:s3cret")))
        .expect("config");
    let cache_before = hash_tree(&sb.state.join("blobs/sha256"));
    sb.run_env(&sb.demo_args(&format!("{lhost}/demo@{}", v("v2")), &[]), &[("DOCKER_CONFIG", dcs)], None).ok();
    assert_eq!(hash_tree(&sb.state.join("blobs/sha256")), cache_before);
    // Right password on stdin.
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &[])).ok();
    sb.run_env(&sb.demo_args(&src, &["--username", "alice", "--password-stdin"]), &[], Some("s3cret\n")).ok();
    assert_eq!(sb.world(), demo_world("v2"));
}

#[test]
fn image_index_with_two_platforms_picks_the_right_one() {
    if !require("image_index_with_two_platforms_picks_the_right_one", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-index");
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let mut layout = LayoutBuilder::new(&tmp.path().join("layout"));
    let amd = layout.file_manifest(&[("arch.txt", b"amd64\n")]);
    let arm = layout.file_manifest(&[("arch.txt", b"arm64\n")]);
    let index = layout.index(&[("linux", "amd64", amd.clone()), ("linux", "arm64", arm.clone())]);
    layout.tag("multi", &index);
    skopeo_push(&layout.dir, "multi", &format!("{}/multi:v1", reg.host()), None, true);
    let src = format!("{}/multi:v1", reg.host());

    for (platform, want, manifest) in [("linux/arm64", "arm64\n", &arm), ("linux/amd64", "amd64\n", &amd)] {
        let sb = Sandbox::at(&tmp.path().join(platform.replace('/', "-")));
        let out = sb.dest.join("out");
        let args = ["install", &src, "--map", &format!("*={}", out.display()), "--plain-http", "--platform", platform];
        sb.run(&args).ok();
        assert_eq!(fs::read_to_string(out.join("arch.txt")).expect("arch.txt"), want, "{platform}");
        assert_eq!(sb.listed().get("multi").map(String::as_str), manifest["digest"].as_str(), "{platform}");
    }

    // The host's platform by default.
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    };
    if let Some(arch) = host_arch {
        let sb = Sandbox::at(&tmp.path().join("default"));
        let out = sb.dest.join("out");
        sb.run(&["install", &src, "--map", &format!("*={}", out.display()), "--plain-http"]).ok();
        assert_eq!(fs::read_to_string(out.join("arch.txt")).expect("arch.txt"), format!("{arch}\n"));
    }

    let sb = Sandbox::at(&tmp.path().join("none"));
    let out = sb.dest.join("out");
    sb.run(&["install", &src, "--map", &format!("*={}", out.display()), "--plain-http", "--platform", "linux/s390x"])
        .fails_with(&["no manifest for platform linux/s390x", "linux/amd64, linux/arm64"]);
    assert!(!out.exists());
}

/// `apply --dry-run` of a registry-sourced package resolves manifests only:
/// the blob cache is left exactly as it was (no blob downloaded, no
/// manifest written), on a fresh state dir and over an installed version,
/// and DEST and `list` do not change; the apply after it pulls and installs.
#[test]
fn apply_dry_run_from_a_registry_leaves_the_cache_unchanged() {
    if !require("apply_dry_run_from_a_registry_leaves_the_cache_unchanged", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-apply-dry");
    let reg = demo_registry(tmp.path());
    let sb = Sandbox::at(&tmp.path().join("sb"));
    fs::create_dir_all(&sb.dest).expect("dest");
    let (host, d) = (reg.host(), sb.dest.display().to_string());
    let file = sb.root.join("stagehand.toml");
    let write = |tag: &str| {
        let body = format!(
            "[package.demo]\nref = \"{host}/demo:{tag}\"\nplain-http = true\nto = \"{d}/app\"\n\
             map = [\"*.so={d}/lib\", \"*.control={d}/ext\", \"*.sql={d}/ext\"]\n"
        );
        fs::write(&file, body).expect("write stagehand.toml");
    };
    let cache = sb.state.join("blobs");
    let f = file.display().to_string();
    let dry = || sb.run(&["apply", "--dry-run", "--file", &f]);

    write("v1");
    let before = hash_tree(&cache);
    let r = dry();
    assert!(r.ok().stdout.contains(&format!("+ demo {}", v("v1"))), "{}", r.describe());
    assert_eq!(hash_tree(&cache), before, "a dry run on a fresh state dir changed the blob cache");
    assert!(hash_tree(&sb.dest).is_empty() && sb.listed().is_empty(), "a dry run installed something");
    assert!(!sb.root.join("stagehand.lock").exists(), "a dry run wrote the lock file");

    sb.run(&["apply", "--file", &f]).ok();
    assert_eq!(sb.world(), demo_world("v1"));
    write("v2");
    let before = hash_tree(&cache);
    assert!(before.keys().any(|k| k.ends_with(v("v1").trim_start_matches("sha256:"))), "v1 not cached: {before:?}");
    let r = dry();
    assert!(r.ok().stdout.contains(&format!("~ demo {} -> {}", v("v1"), v("v2"))), "{}", r.describe());
    assert_eq!(hash_tree(&cache), before, "a dry run of an upgrade changed the blob cache");
    assert_eq!(sb.world(), demo_world("v1"), "a dry run changed DEST");
    assert_eq!(sb.listed().get("demo"), Some(&v("v1")));

    sb.run(&["apply", "--file", &f]).ok();
    assert_eq!(sb.world(), demo_world("v2"));
    assert_eq!(sb.listed().get("demo"), Some(&v("v2")));
    assert!(hash_tree(&cache).keys().any(|k| k.ends_with(v("v2").trim_start_matches("sha256:"))), "v2 not cached");
    assert_cache_consistent(&sb.state);
    sb.run(&["verify"]).ok();
}

/// Two packages of one `apply` that need the same 20 MiB blob: it is
/// downloaded once (one GET at the registry), both packages install it, and
/// the cache holds it under its own digest. (Before: both downloads wrote
/// the same partial file at once, the apply failed, and the cache kept a
/// `sha256/<hex>` file that hashed to something else.)
#[test]
fn apply_downloads_a_blob_two_packages_share_once() {
    if !require("apply_downloads_a_blob_two_packages_share_once", TOOLS) {
        return;
    }
    let tmp = tempdir("reg-apply-shared");
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let big = pseudo_random(20 * 1024 * 1024, 0x5ba7ed);
    let big_hex = sha256_hex(&big);
    let mut layout = LayoutBuilder::new(&tmp.path().join("layout"));
    for name in ["a", "b"] {
        let m = layout.file_manifest(&[("big.bin", &big), (&format!("{name}.txt"), name.as_bytes())]);
        layout.tag(name, &m);
    }
    drop(big);
    for name in ["a", "b"] {
        skopeo_push(&layout.dir, name, &format!("{}/big:{name}", reg.host()), None, false);
    }
    // ~40 MiB/s: the shared blob takes long enough for both pulls to want it at once.
    let proxy = SlowProxy::start(reg.port, 40 * 1024 * 1024);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    fs::create_dir_all(&sb.dest).expect("dest");
    let d = sb.dest.display().to_string();
    let file = sb.root.join("stagehand.toml");
    let body: String = ["a", "b"]
        .iter()
        .map(|n| {
            format!(
                "[package.{n}]\nref = \"127.0.0.1:{}/big:{n}\"\nplain-http = true\nmap = [\"*={d}/{n}\"]\n",
                proxy.port
            )
        })
        .collect();
    fs::write(&file, body).expect("write stagehand.toml");
    let f = file.display().to_string();
    let run = sb.run_env(&["apply", "--file", &f], &[("RUST_LOG", "stagehand=debug")], None);
    let run = run.ok();
    for n in ["a", "b"] {
        let got = sha256_file(&sb.dest.join(n).join("big.bin"));
        assert_eq!(got, big_hex, "package {n}'s big.bin");
    }
    assert_cache_consistent(&sb.state);
    let gets = run.stderr.lines().filter(|l| l.contains("GET blob") && l.contains(&big_hex)).count();
    assert_eq!(gets, 1, "the shared blob was fetched {gets} times:\n{}", run.stderr);
    drop(proxy);
}
