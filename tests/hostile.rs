//! Issue 14: hostile artifacts, hostile neighbours, hostile servers.
//!
//! Tar bombs are built here; the state-dir cases run the binary as uid
//! 65534 through `setpriv` (skipped loudly when not root, failing in CI);
//! the server cases talk to `tests/common/hostile_registry.py`, a real HTTP
//! server on loopback started per test. Every case checks the disk with the
//! shared tree hasher, not with stagehand.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use common::*;

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).mode() & 0o7777
}

/// Everything in the sandbox but the state dir.
fn outside_state(sb: &Sandbox) -> Tree {
    hash_tree(&sb.root).into_iter().filter(|(k, _)| k != "state" && !k.starts_with("state/")).collect()
}

fn with_mode(e: RawEntry, mode: u32) -> RawEntry {
    RawEntry { mode, ..e }
}

// ---------------------------------------------------------------------------
// Hostile artifacts
// ---------------------------------------------------------------------------

/// A gzip layer of under 1 MiB that holds one GNU long-name entry of
/// `name_bytes` bytes, streamed into the encoder (never held whole).
fn long_name_bomb(name_bytes: u64) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_mode(0o644);
    h.set_size(name_bytes);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut left = name_bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    let pad = (512 - (name_bytes % 512) as usize) % 512;
    enc.write_all(&vec![0u8; pad]).unwrap();
    enc.write_all(&raw_tar(&[RawEntry::file("ok.txt", b"ok\n")])).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_512_mib_long_name_fails_fast_in_little_memory() {
    let sb = Sandbox::new();
    let layouts = tempdir();
    let layer = long_name_bomb(512 << 20);
    assert!(layer.len() < 1 << 20, "the bomb layer is {} bytes, not under 1 MiB", layer.len());
    let source = hostile_demo_layout_with(&layouts.path().join("bomb"), "v1", &|mt| {
        assert!(mt.contains("gzip"), "the demo's first tar layer is not gzip: {mt}");
        layer.clone()
    });
    let before = outside_state(&sb);
    let (run, rss_kib, took) =
        run_bin_opts(&sb.state, &sb.root, &demo_install_args(&sb.dest, &source), &[], &RunOpts::default());
    run.expect_clean_failure();
    assert!(run.stderr.contains("--max-path-bytes"), "the failure does not name the cap:\n{}", run.describe());
    eprintln!("long-name bomb: layer {} bytes, peak RSS {} KiB, {:?}", layer.len(), rss_kib, took);
    assert!(rss_kib < 150 * 1024, "peak RSS {rss_kib} KiB: the long name was buffered\n{}", run.describe());
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(outside_state(&sb) == before, "the install changed the disk");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
}

/// Files of a tar layer: name and content.
type Files = [(String, Vec<u8>)];

/// A tar with long names and many entries, written by the `tar` crate.
fn tar_of(files: &Files) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn exceeding_a_cap_fails_before_the_commit_point_naming_it() {
    let many: Vec<(String, Vec<u8>)> = (0..30).map(|i| (format!("f{i}.txt"), b"x".to_vec())).collect();
    let big = vec![("big.bin".to_string(), vec![7u8; 5000])];
    let long = vec![(format!("{}file.txt", "d/".repeat(145)), b"deep\n".to_vec())];
    let cases: [(&str, &Files, [&str; 2]); 3] = [
        ("entries", &many, ["--max-entries", "10"]),
        ("bytes", &big, ["--max-layer-bytes", "4096"]),
        ("path", &long, ["--max-path-bytes", "200"]),
    ];
    for (case, files, cap) in cases {
        let sb = Sandbox::new();
        let layouts = tempdir();
        let source = hostile_demo_layout(&layouts.path().join(case), "v1", &tar_of(files));
        sb.install_demo("v1").ok();
        let before = outside_state(&sb);
        let mut args = demo_install_args(&sb.dest, &source);
        args.extend(cap.iter().map(OsString::from));
        args.extend(["--name", "demo"].map(OsString::from));
        let run = sb.run(&args);
        run.expect_clean_failure();
        assert!(run.stderr.contains(cap[0]), "[{case}] the failure does not name {}:\n{}", cap[0], run.describe());
        assert!(outside_state(&sb) == before, "[{case}] the failed upgrade changed the disk");
        assert!(sb.leftovers().is_empty(), "[{case}] leftovers: {:?}", sb.leftovers());
        // The same artifact installs under the default caps.
        let mut args = demo_install_args(&sb.dest, &source);
        args.extend(["--name", "demo"].map(OsString::from));
        sb.run(&args).ok();
    }
}

/// A tar whose PAX header says `size` twice: 0 first (what the tar crate
/// uses), then the length of the 100 entries that follow (what the cap
/// checker used before issue 25, skipping them as one file's data).
fn duplicate_pax_size_tar() -> Vec<u8> {
    let hidden = tar_of(&(0..100).map(|i| (format!("h{i}.txt"), b"x".to_vec())).collect::<Vec<_>>());
    let hidden = &hidden[..hidden.len() - 1024]; // without its end marker
    let record = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        format!("{n}{body}")
    };
    let records = record("size", "0") + &record("size", &hidden.len().to_string());
    let mut out = Vec::new();
    let mut x = tar::Header::new_ustar();
    x.set_path("pax").unwrap();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(records.len() as u64);
    x.set_mode(0o644);
    x.set_cksum();
    out.extend_from_slice(x.as_bytes());
    out.extend_from_slice(records.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
    let mut f = tar::Header::new_ustar();
    f.set_path("first.txt").unwrap();
    f.set_size(0);
    f.set_mode(0o644);
    f.set_cksum();
    out.extend_from_slice(f.as_bytes());
    out.extend_from_slice(hidden);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A gzip layer under 1 MiB whose PAX header says `size` twice (0 for the
/// tar crate, 512 MiB + 1 KiB for the cap checker before issue 25), then a
/// GNU long name of 512 MiB that only the tar crate reads as a header, and
/// would read whole into memory.
fn hidden_long_name_bomb() -> Vec<u8> {
    let name_bytes: u64 = 512 << 20;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let record = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        format!("{n}{body}")
    };
    let records = record("size", "0") + &record("size", &(name_bytes + 1024).to_string());
    let mut x = tar::Header::new_ustar();
    x.set_path("pax").unwrap();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(records.len() as u64);
    x.set_mode(0o644);
    x.set_cksum();
    enc.write_all(x.as_bytes()).unwrap();
    let mut data = records.into_bytes();
    data.resize(data.len().div_ceil(512) * 512, 0);
    enc.write_all(&data).unwrap();
    let mut f = tar::Header::new_ustar();
    f.set_path("first.txt").unwrap();
    f.set_size(0);
    f.set_mode(0o644);
    f.set_cksum();
    enc.write_all(f.as_bytes()).unwrap();
    let mut bomb = long_name_bomb_tar_prefix(name_bytes);
    enc.write_all(&bomb.0).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    while bomb.1 > 0 {
        let n = bomb.1.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        bomb.1 -= n as u64;
    }
    enc.write_all(&vec![0u8; (512 - (name_bytes % 512) as usize) % 512]).unwrap();
    enc.write_all(&raw_tar(&[RawEntry::file("ok.txt", b"ok\n")])).unwrap();
    enc.finish().unwrap()
}

/// The header of a GNU long name of `name_bytes`, and how many name bytes follow it.
fn long_name_bomb_tar_prefix(name_bytes: u64) -> (Vec<u8>, u64) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_mode(0o644);
    h.set_size(name_bytes);
    h.set_cksum();
    (h.as_bytes().to_vec(), name_bytes)
}

#[test]
fn a_long_name_hidden_from_the_caps_is_never_read() {
    let sb = Sandbox::new();
    let layouts = tempdir();
    let layer = hidden_long_name_bomb();
    assert!(layer.len() < 1 << 20, "the bomb layer is {} bytes, not under 1 MiB", layer.len());
    let source = hostile_demo_layout_with(&layouts.path().join("hidden"), "v1", &|mt| {
        assert!(mt.contains("gzip"), "the demo's first tar layer is not gzip: {mt}");
        layer.clone()
    });
    let before = outside_state(&sb);
    let (run, rss_kib, took) =
        run_bin_opts(&sb.state, &sb.root, &demo_install_args(&sb.dest, &source), &[], &RunOpts::default());
    run.expect_clean_failure();
    eprintln!("hidden long-name bomb: layer {} bytes, peak RSS {} KiB, {:?}", layer.len(), rss_kib, took);
    assert!(rss_kib < 150 * 1024, "peak RSS {rss_kib} KiB: the long name was buffered\n{}", run.describe());
    assert!(run.stderr.contains("repeats the key"), "{}", run.describe());
    assert!(outside_state(&sb) == before, "the install changed the disk");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
}

#[test]
fn a_layer_read_differently_by_tar_and_the_caps_is_refused() {
    let sb = Sandbox::new();
    let layouts = tempdir();
    let source = hostile_demo_layout(&layouts.path().join("dup-pax"), "v1", &duplicate_pax_size_tar());
    let before = outside_state(&sb);
    let mut args = demo_install_args(&sb.dest, &source);
    args.extend(["--max-entries", "10"].map(OsString::from));
    let run = sb.run(&args);
    run.expect_clean_failure();
    assert!(run.stderr.contains("repeats the key"), "{}", run.describe());
    assert!(outside_state(&sb) == before, "the refused install changed the disk");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
}

#[test]
fn rollback_stages_the_kept_version_under_the_caps_it_is_given() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    sb.install_demo("v2").ok();
    let before = outside_state(&sb);
    // Journal records keep no caps: rollback takes install's flags, and
    // stages the kept version under them, not under the defaults.
    let run = sb.run(&["rollback", "demo", "--max-entries", "1"]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("--max-entries"), "the failure does not name the cap:\n{}", run.describe());
    assert!(outside_state(&sb) == before, "the refused rollback changed the disk");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
    sb.run(&["rollback", "demo", "--max-entries", "1000", "--max-layer-bytes", "1000000"]).ok();
    assert!(outside_state(&sb) != before, "the rollback under roomy caps changed nothing");
}

#[test]
fn artifact_modes_lose_write_for_others_and_special_bits() {
    let entries = [
        with_mode(RawEntry::dir("plugins/"), 0o777),
        with_mode(RawEntry::file("plugins/run.sh", b"#!/bin/sh\n"), 0o777),
        with_mode(RawEntry::dir("sgid/"), 0o2777),
        with_mode(RawEntry::file("sgid/setuid", b"suid\n"), 0o4755),
        with_mode(RawEntry::file("ro.txt", b"ro\n"), 0o444),
    ];
    let layouts = tempdir();
    let source = hostile_demo_layout(&layouts.path().join("modes"), "v1", &raw_tar(&entries));
    for (umask, want) in [(0o022, [0o755, 0o755, 0o755, 0o755, 0o444]), (0o077, [0o700, 0o700, 0o700, 0o700, 0o400])] {
        let sb = Sandbox::new();
        let opts = RunOpts { umask: Some(umask), ..RunOpts::default() };
        let (run, _, _) = run_bin_opts(&sb.state, &sb.root, &demo_install_args(&sb.dest, &source), &[], &opts);
        run.ok();
        let app = sb.dest.join("app");
        let got: Vec<u32> = ["plugins", "plugins/run.sh", "sgid", "sgid/setuid", "ro.txt"]
            .iter()
            .map(|p| mode_of(&app.join(p)))
            .collect();
        assert_eq!(got, want, "umask {umask:o}: modes {:?}", got.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>());
        for entry in fs::read_dir(sb.dest.join("lib")).unwrap() {
            let m = mode_of(&entry.unwrap().path());
            assert_eq!(m & 0o7022, 0, "umask {umask:o}: a mapped file is {m:o}");
        }
        assert_eq!(mode_of(&sb.state), 0o700, "a new state dir is private");
        assert_eq!(mode_of(&sb.state.join("lock")), 0o600);
        // verify agrees with what is on disk.
        sb.run(&["verify"]).ok();
    }
}

// ---------------------------------------------------------------------------
// Hostile neighbours: the state dir
// ---------------------------------------------------------------------------

#[test]
fn a_new_state_dir_is_private_and_existing_ancestors_keep_their_mode() {
    let sb = Sandbox::new();
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o751)).unwrap();
    let state = sb.root.join("x/y/state");
    let run = run_bin(&state, &sb.root, &["repair"], &[]);
    run.ok();
    for p in [sb.root.join("x"), sb.root.join("x/y"), state.clone()] {
        assert_eq!(mode_of(&p), 0o700, "{}", p.display());
    }
    assert_eq!(mode_of(&sb.root), 0o751, "an existing ancestor's mode changed");
}

#[test]
fn a_state_dir_others_can_write_is_refused_saying_how_to_fix_it() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let dest_before = sb.world();

    fs::set_permissions(&sb.state, fs::Permissions::from_mode(0o775)).unwrap();
    let run = sb.run(&["list"]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("chmod go-w") && run.stderr.contains("group or others"), "{}", run.describe());
    fs::set_permissions(&sb.state, fs::Permissions::from_mode(0o700)).unwrap();
    sb.run(&["list"]).ok();

    let lock = sb.state.join("lock");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
    let run = sb.run(&["uninstall", "demo"]);
    run.expect_clean_failure();
    assert!(run.stderr.contains(path_str(&lock)), "the refusal does not name the lock:\n{}", run.describe());
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o600)).unwrap();

    // A symlink planted in the state dir (here: the lock) is refused too.
    fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(sb.root.join("elsewhere"), &lock).unwrap();
    let run = sb.run(&["uninstall", "demo"]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("symlink"), "{}", run.describe());
    assert!(!sb.root.join("elsewhere").exists(), "the symlinked lock was followed");
    assert!(sb.world() == dest_before, "a refused command changed the destination");
}

#[test]
fn a_state_dir_of_another_user_is_refused() {
    if !root_or_skip("a_state_dir_of_another_user_is_refused") {
        return;
    }
    let sb = Sandbox::new();
    // nobody must reach into the sandbox to be refused for the right reason.
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o755)).unwrap();
    sb.install_demo("v1").ok();
    let nobody = RunOpts { as_nobody: true, ..RunOpts::default() };

    // root's state dir, used by nobody.
    let (run, _, _) = run_bin_opts(&sb.state, &sb.root, &["list"], &[], &nobody);
    run.expect_clean_failure();
    assert!(run.stderr.contains("owned by uid 0") && run.stderr.contains("chown"), "{}", run.describe());

    // nobody's own new state dir works, and is created 0700 and theirs.
    let home = sb.root.join("nobody-home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let theirs = home.join(".local/state/stagehand");
    let (run, _, _) = run_bin_opts(&theirs, &home, &["repair"], &[], &nobody);
    run.ok();
    let meta = fs::metadata(&theirs).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (65534, 0o700));
    assert_eq!(mode_of(&home.join(".local")), 0o700, "a missing ancestor is created private");

    // nobody's state dir, used by root.
    let run = run_bin(&theirs, &sb.root, &["list"], &[]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("owned by uid 65534"), "{}", run.describe());
}

// ---------------------------------------------------------------------------
// Hostile servers
// ---------------------------------------------------------------------------

fn pull_args(sb: &Sandbox, reference: &str, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["install".into(), reference.into(), "--to".into(), sb.dest.join("app").into()];
    a.extend(extra.iter().map(OsString::from));
    a
}

#[test]
fn an_endless_manifest_is_cut_off_at_its_cap() {
    let server = HostileServer::start("endless_manifest", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let (run, rss_kib, took) =
        run_bin_opts(&sb.state, &sb.root, &pull_args(&sb, &reference, &["--plain-http"]), &[], &RunOpts::default());
    run.expect_clean_failure();
    eprintln!("endless manifest: peak RSS {rss_kib} KiB, {took:?}");
    assert!(run.stderr.contains("4194304-byte limit"), "{}", run.describe());
    assert!(rss_kib < 150 * 1024, "peak RSS {rss_kib} KiB");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(hash_tree(&sb.dest).is_empty(), "something was installed");
}

#[test]
fn a_trickling_server_meets_the_request_deadline() {
    let server = HostileServer::start("trickle", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let args = pull_args(&sb, &reference, &["--plain-http", "--request-timeout", "3"]);
    let (run, _, took) = run_bin_opts(&sb.state, &sb.root, &args, &[], &RunOpts::default());
    run.expect_clean_failure();
    eprintln!("trickle: failed after {took:?}");
    assert!(run.stderr.contains("timed out") && run.stderr.contains("--request-timeout"), "{}", run.describe());
    assert!(took < Duration::from_secs(20), "a 3 s deadline took {took:?}");
}

#[test]
fn credentials_never_go_to_a_plain_http_token_realm_off_loopback() {
    let server = HostileServer::start("http_realm", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let args = pull_args(&sb, &reference, &["--plain-http", "--username", "alice", "--password-stdin"]);
    let opts = RunOpts { stdin: Some(b"hunter2-secret\n".to_vec()), ..RunOpts::default() };
    let (run, _, _) = run_bin_opts(&sb.state, &sb.root, &args, &[], &opts);
    run.expect_clean_failure();
    assert!(run.stderr.contains("http://192.0.2.1/token") && run.stderr.contains("not https"), "{}", run.describe());
    assert!(!run.stderr.contains("hunter2"), "{}", run.describe());
    assert!(server.requests().iter().all(|r| r.ends_with("auth=no")), "{:?}", server.requests());
}

#[test]
fn urls_in_errors_lose_their_query_string() {
    let server = HostileServer::start("redirect_secret", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let run = sb.run(&pull_args(&sb, &reference, &["--plain-http", "--request-timeout", "2"]));
    run.expect_clean_failure();
    assert!(run.stderr.contains("/slow"), "the error does not say where it failed:\n{}", run.describe());
    assert!(!run.stderr.contains("SECRET-SIGNATURE"), "{}", run.describe());
}

#[test]
fn registry_text_is_printed_with_control_characters_escaped() {
    let server = HostileServer::start("escape_error", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    for json in [false, true] {
        let mut args = pull_args(&sb, &reference, &["--plain-http"]);
        if json {
            args.push("--json".into());
        }
        let run = sb.run(&args);
        run.expect_clean_failure();
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains('\u{1b}') && !all.contains('\u{7}'), "raw escapes printed:\n{all:?}");
        assert!(all.contains("evil"), "the tag list is not shown:\n{all}");
    }
}

#[test]
fn plain_http_to_loopback_ignores_proxies() {
    let server = HostileServer::start("anonymous_404", None);
    let proxy = HostileServer::start("anonymous_404", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let proxy_url = OsString::from(format!("http://{}", proxy.addr()));
    let env: Vec<(&str, &OsStr)> =
        ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"].iter().map(|k| (*k, proxy_url.as_os_str())).collect();
    let run = sb.run_env(&pull_args(&sb, &reference, &["--plain-http"]), &env);
    run.expect_clean_failure();
    assert!(run.stderr.contains("not found") || run.stderr.contains("no manifest"), "{}", run.describe());
    assert!(!server.requests().is_empty(), "the registry got no request");
    assert!(proxy.requests().is_empty(), "the proxy got {:?}", proxy.requests());
}

#[test]
fn a_bad_auths_entry_affects_only_its_registry_and_is_not_echoed() {
    let server = HostileServer::start("anonymous_404", None);
    let sb = Sandbox::new();
    let docker = sb.root.join("docker");
    fs::create_dir(&docker).unwrap();
    let reference = format!("{}/demo:v1", server.addr());
    let docker_env = docker.clone().into_os_string();

    let other = r#"{"auths": {"other.example": {"auth": ["SECRET-OTHER"]}}}"#;
    fs::write(docker.join("config.json"), other).unwrap();
    let run = sb.run_env(&pull_args(&sb, &reference, &["--plain-http"]), &[("DOCKER_CONFIG", &docker_env)]);
    run.expect_clean_failure();
    assert!(!run.stderr.contains("auths"), "another registry's entry broke this pull:\n{}", run.describe());
    assert!(!server.requests().is_empty(), "the pull never reached the registry");

    let ours = format!(r#"{{"auths": {{"{}": {{"auth": ["SECRET-OURS"]}}}}}}"#, server.addr());
    fs::write(docker.join("config.json"), ours).unwrap();
    let run = sb.run_env(&pull_args(&sb, &reference, &["--plain-http"]), &[("DOCKER_CONFIG", &docker_env)]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("auths entry for"), "{}", run.describe());
    assert!(!run.stderr.contains("SECRET"), "the entry's value was echoed:\n{}", run.describe());
}

/// A self-signed certificate for 127.0.0.1, made with `openssl`.
fn loopback_cert(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some((cert, key))
}

#[test]
fn an_https_registry_may_not_redirect_to_http() {
    if !tool_or_skip("an_https_registry_may_not_redirect_to_http", "openssl", &["version"])
        || !tool_or_skip("an_https_registry_may_not_redirect_to_http", "python3", &["--version"])
    {
        return;
    }
    let sb = Sandbox::new();
    let (cert, key) = loopback_cert(&sb.root).expect("openssl made a certificate");
    let server = HostileServer::start("https_to_http", Some((&cert, &key)));
    let reference = format!("{}/demo:v1", server.addr());
    let cert_env = cert.clone().into_os_string();
    let run = sb.run_env(&pull_args(&sb, &reference, &[]), &[("SSL_CERT_FILE", &cert_env)]);
    run.expect_clean_failure();
    assert!(
        run.stderr.contains("refused a redirect from https"),
        "the https->http redirect was not refused by policy:\n{}",
        run.describe()
    );
    assert!(server.requests().iter().any(|r| r.contains("/manifests/")), "{:?}", server.requests());
}
