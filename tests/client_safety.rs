//! Issue 25: a registry client that leaks nothing, and a state dir nobody
//! else can swap. The server cases talk to `tests/common/hostile_registry.py`
//! on loopback (127.0.0.2 and 127.0.0.3 stand in for other hosts; nothing is
//! ever sent off the machine: the off-loopback redirect points at an address
//! the client must refuse before connecting). Every case that pulls checks
//! the blob cache's rule afterwards.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::*;

fn pull_args(sb: &Sandbox, reference: &str, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["install".into(), reference.into(), "--to".into(), sb.dest.join("app").into()];
    a.extend(extra.iter().map(OsString::from));
    a
}

fn alice() -> RunOpts {
    RunOpts { stdin: Some(b"hunter2-secret\n".to_vec()), ..RunOpts::default() }
}

#[test]
fn a_redirect_target_that_asks_for_credentials_gets_none() {
    let server = HostileServer::start("cdn_challenge", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let args = pull_args(&sb, &reference, &["--plain-http", "--username", "alice", "--password-stdin"]);
    let (run, _, _) = run_bin_opts(&sb.state, &sb.root, &args, &[], &alice());
    run.expect_clean_failure();
    let log = server.requests();
    assert!(log.iter().any(|r| r.contains("/cdn/") && r.contains("host=127.0.0.2")), "no CDN request: {log:?}");
    assert!(!log.iter().any(|r| r.contains("host=127.0.0.3")), "the CDN's realm was asked for a token: {log:?}");
    assert!(
        log.iter().filter(|r| r.contains("host=127.0.0.2")).all(|r| r.ends_with("auth=no") && r.contains("referer=no")),
        "the CDN saw credentials or a Referer: {log:?}"
    );
    assert!(run.stderr.contains("answers only the registry's own challenges"), "{}", run.describe());
    assert!(!run.stderr.contains("were refused") && !run.stderr.contains("hunter2"), "{}", run.describe());
    common::registry::assert_cache_consistent(&sb.state);
}

#[test]
fn a_redirect_to_another_host_carries_no_authorization_or_referer() {
    let server = HostileServer::start("cdn_ok", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let args = pull_args(&sb, &reference, &["--plain-http", "--username", "alice", "--password-stdin"]);
    let (run, _, _) = run_bin_opts(&sb.state, &sb.root, &args, &[], &alice());
    let log = server.requests();
    assert!(log.iter().any(|r| r.contains("/manifests/") && r.ends_with("auth=yes")), "{log:?}\n{}", run.describe());
    let cdn: Vec<_> = log.iter().filter(|r| r.contains("host=127.0.0.2")).collect();
    assert!(!cdn.is_empty(), "the blobs never reached the CDN: {log:?}\n{}", run.describe());
    assert!(cdn.iter().all(|r| r.ends_with("auth=no") && r.contains("referer=no")), "{cdn:?}");
    run.ok();
    assert_eq!(fs::read(sb.dest.join("app/hello.txt")).unwrap(), b"hello from the registry\n");
    common::registry::assert_cache_consistent(&sb.state);
}

#[test]
fn plain_http_is_never_followed_off_loopback() {
    let server = HostileServer::start("off_machine", None);
    let sb = Sandbox::new();
    let reference = format!("{}/demo:v1", server.addr());
    let (run, _, took) =
        run_bin_opts(&sb.state, &sb.root, &pull_args(&sb, &reference, &["--plain-http"]), &[], &RunOpts::default());
    run.expect_clean_failure();
    // The policy's own words: refused before any connection was made.
    assert!(run.stderr.contains("plain HTTP never leaves this machine"), "{}", run.describe());
    assert!(!run.stderr.contains("SECRET-SIGNATURE"), "{}", run.describe());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(hash_tree(&sb.dest).is_empty(), "something was installed");
    common::registry::assert_cache_consistent(&sb.state);
}

#[test]
fn an_identity_token_is_traded_for_an_access_token() {
    let server = HostileServer::start("identity_token", None);
    let sb = Sandbox::new();
    let docker = sb.root.join("docker");
    fs::create_dir(&docker).unwrap();
    // As `docker login` leaves it for a registry that issues refresh tokens.
    let config =
        format!(r#"{{"auths": {{"{}": {{"auth": "PHRva2VuPjo=", "identitytoken": "refresh-xyz"}}}}}}"#, server.addr());
    fs::write(docker.join("config.json"), config).unwrap();
    let reference = format!("{}/demo:v1", server.addr());
    let docker_env = docker.into_os_string();
    let run = sb.run_env(&pull_args(&sb, &reference, &["--plain-http"]), &[("DOCKER_CONFIG", &docker_env)]);
    run.expect_clean_failure();
    let log = server.requests();
    assert!(
        log.iter().any(|r| r.starts_with("POST /token")
            && r.contains("grant_type=refresh_token")
            && r.contains("refresh_token=refresh-xyz")
            && r.contains("service=reg")),
        "no refresh-token request: {log:?}"
    );
    assert!(log.iter().any(|r| r.contains("/manifests/") && r.ends_with("auth=yes")), "{log:?}");
    assert!(run.stderr.contains("not found") || run.stderr.contains("no manifest"), "{}", run.describe());
    assert!(!run.stderr.contains("refresh-xyz"), "{}", run.describe());
}

#[test]
fn a_refresh_token_post_is_never_redirected() {
    let server = HostileServer::start("identity_token_redirect", None);
    let sb = Sandbox::new();
    let docker = sb.root.join("docker");
    fs::create_dir(&docker).unwrap();
    let config = format!(r#"{{"auths": {{"{}": {{"identitytoken": "refresh-xyz"}}}}}}"#, server.addr());
    fs::write(docker.join("config.json"), config).unwrap();
    let reference = format!("{}/demo:v1", server.addr());
    let docker_env = docker.into_os_string();
    let run = sb.run_env(&pull_args(&sb, &reference, &["--plain-http"]), &[("DOCKER_CONFIG", &docker_env)]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("does not follow it"), "{}", run.describe());
    assert!(!run.stderr.contains("refresh-xyz"), "{}", run.describe());
}

#[test]
fn a_state_dir_that_is_a_symlink_is_refused() {
    let sb = Sandbox::new();
    let victim = sb.root.join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    let link = sb.root.join("state-link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let run = run_bin(&link, &sb.root, &["list"], &[]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("is a symlink") && run.stderr.contains("--state-dir"), "{}", run.describe());
    assert!(fs::read_dir(&victim).unwrap().next().is_none(), "stagehand wrote into the symlink's target");
}

#[test]
fn a_state_dir_under_a_directory_others_can_write_is_refused() {
    let sb = Sandbox::new();
    let shared = sb.root.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let state = shared.join("state");
    let run = run_bin(&state, &sb.root, &["list"], &[]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("without the sticky bit") && run.stderr.contains("chmod"), "{}", run.describe());
    assert!(!state.exists(), "the state dir was created anyway");
    // Also when directories between it and the shared one are missing.
    let deeper = shared.join("missing/state");
    let run = run_bin(&deeper, &sb.root, &["list"], &[]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("without the sticky bit"), "{}", run.describe());
    assert!(!shared.join("missing").exists(), "a missing ancestor was created anyway");
    // Sticky (like /tmp) is fine: nobody can replace another's entry.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    run_bin(&state, &sb.root, &["list"], &[]).ok();
}
