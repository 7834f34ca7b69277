//! Mirrors and private CAs against real registries (Debian's
//! `docker-registry` on loopback, artifacts pushed with `skopeo`): a second
//! registry in proxy mode as a real pull-through cache of the first, named
//! in a containerd `hosts.toml` (a `pull`-only mirror never resolving a
//! tag); falling back to the upstream when the
//! mirror is down, and not when the file makes it mirror-only; a mirror
//! serving wrong bytes refused by the digest check; registries on TLS with
//! CAs made by `openssl` (per host in `hosts.toml`, Docker's `ca.crt`, and
//! `--ca-file` beside the system roots), a registry that requires a client
//! certificate, and `skip_verify` refused; a mirror reached through
//! `hosts.toml`'s `proxy`, given its `header`s and told `ns=REGISTRY`, and a
//! mirror that never accepts a connection given up after its `dial_timeout`.
//!
//! Skipped with a loud message if the tools are missing, except in CI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::certs::Ca;
use common::registry::*;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "openssl"];

fn v(tag: &str) -> String {
    layout_tag_digest(&demo_layout(), tag)
}

/// Writes `dir/NAMESPACE/hosts.toml` and returns `dir`.
fn hosts_dir(dir: &Path, namespace: &str, toml: &str) -> PathBuf {
    fs::create_dir_all(dir.join(namespace)).expect("hosts dir");
    fs::write(dir.join(namespace).join("hosts.toml"), toml).expect("hosts.toml");
    dir.to_path_buf()
}

/// The demo's install arguments over TLS (no `--plain-http`), then `extra`.
fn tls_args(sb: &Sandbox, source: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = sb.demo_args(source, &[]).into_iter().filter(|x| x != "--plain-http").collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `skopeo copy` of the demo's `tag` to a TLS registry (not verifying it;
/// with a client certificate from `cert_dir` when it asks for one).
fn push_tls(tag: &str, dest: &str, cert_dir: Option<&Path>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some(d) = cert_dir {
        cmd.arg("--dest-cert-dir").arg(d);
    }
    cmd.arg(format!("oci:{}:{tag}", demo_layout().display())).arg(format!("docker://{dest}"));
    let out = cmd.output().expect("run skopeo");
    assert!(out.status.success(), "skopeo -> {dest}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `list --json`'s `served_by` of one package: (digest, host) pairs.
fn served_by(sb: &Sandbox, name: &str) -> Vec<(String, String)> {
    let j = sb.run(&["list", "--json"]).ok().json();
    let pkg = j.as_array().and_then(|a| a.iter().find(|p| p["name"] == name).cloned());
    let pkg = pkg.unwrap_or_else(|| panic!("{name} not listed: {j}"));
    pkg["served_by"]
        .as_array()
        .unwrap_or_else(|| panic!("no served_by: {pkg}"))
        .iter()
        .map(|s| (s["digest"].as_str().unwrap_or_default().into(), s["host"].as_str().unwrap_or_default().into()))
        .collect()
}

#[test]
fn pull_through_cache_serves_falls_back_and_mirror_only_does_not() {
    if !require("pull_through_cache_serves_falls_back_and_mirror_only_does_not", TOOLS) {
        return;
    }
    let tmp = tempdir("mirror-proxy");
    let mut upstream = demo_registry(&tmp.path().join("upstream"));
    let setup = RegistrySetup { proxy_of: Some(format!("http://{}", upstream.host())), ..Default::default() };
    let mut mirror = Registry::start_with(&tmp.path().join("mirror"), setup);
    let up = upstream.host();
    let hosts = hosts_dir(
        &tmp.path().join("certs.d"),
        &up,
        &format!("[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n", mirror.host()),
    );
    let hd = hosts.to_str().expect("utf-8");

    // Through the mirror: it fetched every blob from the upstream and kept it.
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", hd]));
    r.ok();
    assert!(!r.stderr.contains("trying the next host"), "the mirror failed:\n{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    assert_eq!(sb.listed().get("demo"), Some(&v("v1")));
    assert_cache_consistent(&sb.state);
    let cached: Vec<String> = fs::read_dir(sb.state.join("blobs/sha256"))
        .expect("cache")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for hex in &cached {
        assert!(mirror.blob_data(&format!("sha256:{hex}")).exists(), "the mirror did not serve {hex}");
    }
    // The record says so: every fetched blob and the manifest, served by the mirror.
    let served = served_by(&sb, "demo");
    assert!(served.iter().all(|(_, h)| h == &mirror.host()), "served_by names another host: {served:?}");
    for hex in &cached {
        assert!(
            served.iter().any(|(d, _)| d == &format!("sha256:{hex}")),
            "sha256:{hex} missing from served_by: {served:?}"
        );
    }
    assert!(served.iter().any(|(d, _)| d == &v("v1")), "the manifest missing from served_by: {served:?}");

    // The upstream gone, a fresh state dir installs from the mirror alone.
    upstream.kill();
    let sb2 = Sandbox::at(&tmp.path().join("sb2"));
    // ... but not by tag from a mirror trusted only to `pull`: tags are the upstream's word.
    let pull_only = hosts_dir(
        &tmp.path().join("certs-pull.d"),
        &up,
        &format!("[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n", mirror.host()),
    );
    let pd = pull_only.to_str().expect("utf-8");
    sb2.run(&sb2.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", pd])).fails_with(&["cannot reach registry", &up]);
    assert!(sb2.listed().is_empty());
    sb2.run(&sb2.demo_args(&format!("{up}/demo@{}", v("v1")), &["--hosts-dir", pd, "--name", "by-digest"])).ok();
    assert_eq!(sb2.listed().get("by-digest"), Some(&v("v1")));
    let sb2 = Sandbox::at(&tmp.path().join("sb3"));
    let r = sb2.run(&sb2.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", hd]));
    r.ok();
    assert_eq!(sb2.world(), demo_world("v1"));
    assert_cache_consistent(&sb2.state);

    // The mirror down: the upstream answers, with a warning naming the mirror.
    upstream.restart();
    mirror.kill();
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v2"), &["--hosts-dir", hd]));
    r.ok();
    assert!(
        r.stderr.contains("trying the next host") && r.stderr.contains(&mirror.host()),
        "no fallback warning:\n{}",
        r.describe()
    );
    assert_eq!(sb.world(), demo_world("v2"));
    assert_cache_consistent(&sb.state);
    let served = served_by(&sb, "demo");
    assert!(!served.is_empty() && served.iter().all(|(_, h)| h == &up), "v2 came from the upstream: {served:?}");
    let history = sb.run(&["history", "--json"]).ok().json();
    let rows = history.as_array().expect("history is an array");
    let hosts_of = |digest: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["new_digest"] == digest)
            .flat_map(|r| r["served_by"].as_array().cloned().unwrap_or_default())
            .map(|s| s["host"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(hosts_of(&v("v1")).contains(&mirror.host()), "history of v1: {history}");
    assert!(hosts_of(&v("v2")).iter().all(|h| h == &up) && !hosts_of(&v("v2")).is_empty(), "history of v2: {history}");
    let status = sb.run(&["status", "--json"]).ok().json();
    assert_eq!(status["served_by"]["demo"].as_array().map(Vec::len), Some(served.len()), "status: {status}");

    // Mirror-only (the mirror is the `server`), mirror down: a clear error,
    // the upstream never asked, nothing changed.
    let only = hosts_dir(&tmp.path().join("certs-only.d"), &up, &format!("server = \"http://{}\"\n", mirror.host()));
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", only.to_str().expect("utf-8")]));
    r.fails_with(&["names only mirrors", &mirror.host(), "was not tried"]);
    assert_eq!(sb.world(), demo_world("v2"));
    assert_eq!(sb.listed().get("demo"), Some(&v("v2")));
}

#[test]
fn a_mirror_serving_wrong_bytes_is_refused() {
    if !require("a_mirror_serving_wrong_bytes_is_refused", TOOLS) {
        return;
    }
    let tmp = tempdir("mirror-evil");
    let upstream = Registry::start(&tmp.path().join("upstream"), None);
    let mirror = Registry::start(&tmp.path().join("mirror"), None);
    for reg in [&upstream, &mirror] {
        skopeo_push(&demo_layout(), "v1", &format!("{}/demo:v1", reg.host()), None, false);
    }
    // The largest blob (a layer) of the mirror's copy, its bytes changed.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(demo_layout().join("blobs/sha256").join(&v("v1")[7..])).expect("manifest"))
            .expect("json");
    let layer = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap_or(0))
        .expect("a layer")["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let data = mirror.blob_data(&layer);
    let mut evil = fs::read(&data).expect("mirror blob");
    evil[0] ^= 0xff;
    fs::write(&data, &evil).expect("tamper");

    let up = upstream.host();
    let hosts = hosts_dir(&tmp.path().join("certs.d"), &up, &format!("[host.\"http://{}\"]\n", mirror.host()));
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", hosts.to_str().expect("utf-8")]));
    r.fails_with(&["digest mismatch", &layer, &format!("served by the mirror {}", mirror.host())]);
    assert!(sb.listed().is_empty(), "nothing may be installed");
    assert!(!sb.state.join("blobs/sha256").join(&layer[7..]).exists(), "the mirror's bytes entered the cache");
    assert!(partials(&sb.state).is_empty(), "{:?}", partials(&sb.state));
    assert_cache_consistent(&sb.state);
}

#[test]
fn private_cas_client_certificates_and_skip_verify() {
    if !require("private_cas_client_certificates_and_skip_verify", TOOLS) {
        return;
    }
    let tmp = tempdir("mirror-tls");
    let certs = tmp.path().join("pki");
    let (ca_a, ca_b) = (Ca::new(&certs, "ca-a"), Ca::new(&certs, "ca-b"));
    let tls = |ca: &Ca, name: &str| Some(ca.issue(name, true));

    // A: TLS under CA A. B: TLS under CA B, client certificates from CA A required.
    let a = Registry::start_with(&tmp.path().join("a"), RegistrySetup { tls: tls(&ca_a, "a"), ..Default::default() });
    let b = Registry::start_with(
        &tmp.path().join("b"),
        RegistrySetup { tls: tls(&ca_b, "b"), client_ca: Some(ca_a.cert.clone()), ..Default::default() },
    );
    let (client_cert, client_key) = ca_a.issue("client", false);
    let skopeo_certs = tmp.path().join("skopeo-certs");
    fs::create_dir_all(&skopeo_certs).expect("mkdir");
    fs::copy(&client_cert, skopeo_certs.join("client.cert")).expect("copy");
    fs::copy(&client_key, skopeo_certs.join("client.key")).expect("copy");
    push_tls("v1", &format!("{}/demo:v1", a.host()), None);
    push_tls("v1", &format!("{}/demo:v1", b.host()), Some(&skopeo_certs));
    // The "system" roots of these runs: CA B only (rustls reads SSL_CERT_DIR).
    let system = tmp.path().join("system-roots");
    fs::create_dir_all(&system).expect("mkdir");
    fs::copy(&ca_b.cert, system.join("ca-b.pem")).expect("copy");
    let system_env = [("SSL_CERT_DIR", system.to_str().expect("utf-8"))];
    let empty = tmp.path().join("empty.d");
    fs::create_dir_all(&empty).expect("mkdir");
    let none = ["--hosts-dir", empty.to_str().expect("utf-8")];
    let src_a = format!("{}/demo:v1", a.host());
    let src_b = format!("{}/demo:v1", b.host());
    let run = |sb: &Sandbox, args: Vec<String>| sb.run_env(&args, &system_env, None);

    // A's CA is trusted by nothing yet.
    let sb = Sandbox::at(&tmp.path().join("sb-none"));
    run(&sb, tls_args(&sb, &src_a, &none)).fails_with(&["cannot reach registry", &a.host(), "add it with --ca-file"]);
    assert!(sb.listed().is_empty());

    // A's CA in its hosts.toml (relative to it), and as Docker's ca.crt.
    let with_ca = hosts_dir(&tmp.path().join("ca.d"), &a.host(), "ca = \"a-ca.pem\"\n");
    fs::copy(&ca_a.cert, with_ca.join(a.host()).join("a-ca.pem")).expect("copy");
    let sb = Sandbox::at(&tmp.path().join("sb-hosts-ca"));
    run(&sb, tls_args(&sb, &src_a, &["--hosts-dir", with_ca.to_str().expect("utf-8")])).ok();
    assert_eq!(sb.world(), demo_world("v1"));
    let docker = tmp.path().join("docker.d");
    fs::create_dir_all(docker.join(a.host())).expect("mkdir");
    fs::copy(&ca_a.cert, docker.join(a.host()).join("ca.crt")).expect("copy");
    let sb = Sandbox::at(&tmp.path().join("sb-docker-ca"));
    run(&sb, tls_args(&sb, &src_a, &["--hosts-dir", docker.to_str().expect("utf-8")])).ok();
    assert_eq!(sb.world(), demo_world("v1"));

    // --ca-file adds A's CA for every registry; the system roots (B's CA) still work.
    let ca_file = ["--ca-file", ca_a.cert.to_str().expect("utf-8")];
    let sb = Sandbox::at(&tmp.path().join("sb-ca-file"));
    run(&sb, tls_args(&sb, &src_a, &[&none[..], &ca_file[..]].concat())).ok();
    assert_eq!(sb.world(), demo_world("v1"));

    // B wants a client certificate: refused without one, accepted with it.
    let sb = Sandbox::at(&tmp.path().join("sb-client"));
    run(&sb, tls_args(&sb, &src_b, &[&none[..], &ca_file[..]].concat())).fails_with(&[
        "cannot reach registry",
        &b.host(),
        "client certificate",
    ]);
    assert!(sb.listed().is_empty());
    let with_client = hosts_dir(
        &tmp.path().join("client.d"),
        &b.host(),
        &format!("client = [[\"{}\", \"{}\"]]\n", client_cert.display(), client_key.display()),
    );
    let args = tls_args(&sb, &src_b, &["--hosts-dir", with_client.to_str().expect("utf-8"), ca_file[0], ca_file[1]]);
    run(&sb, args).ok();
    assert_eq!(sb.world(), demo_world("v1"));
    assert_cache_consistent(&sb.state);

    // skip_verify is refused, before anything is sent.
    let skip = hosts_dir(&tmp.path().join("skip.d"), &a.host(), "skip_verify = true\n");
    let sb = Sandbox::at(&tmp.path().join("sb-skip"));
    run(&sb, tls_args(&sb, &src_a, &["--hosts-dir", skip.to_str().expect("utf-8")]))
        .fails_with(&["skip_verify", "never disables certificate verification"]);
    assert!(sb.listed().is_empty());
}

#[test]
fn tls_pull_through_cache_in_front_of_a_tls_registry() {
    if !require("tls_pull_through_cache_in_front_of_a_tls_registry", TOOLS) {
        return;
    }
    let tmp = tempdir("mirror-tls-proxy");
    let pki = tmp.path().join("pki");
    let (ca_up, ca_mirror) = (Ca::new(&pki, "upstream-ca"), Ca::new(&pki, "mirror-ca"));
    let mut upstream = Registry::start_with(
        &tmp.path().join("upstream"),
        RegistrySetup { tls: Some(ca_up.issue("upstream", true)), ..Default::default() },
    );
    push_tls("v1", &format!("{}/demo:v1", upstream.host()), None);
    let mirror = Registry::start_with(
        &tmp.path().join("mirror"),
        RegistrySetup {
            tls: Some(ca_mirror.issue("mirror", true)),
            proxy_of: Some(format!("https://{}", upstream.host())),
            env: vec![("SSL_CERT_FILE".into(), ca_up.cert.display().to_string())],
            ..Default::default()
        },
    );
    let up = upstream.host();
    let hosts = hosts_dir(
        &tmp.path().join("certs.d"),
        &up,
        &format!(
            "server = \"https://{up}\"\nca = \"{}\"\n\n[host.\"https://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\nca = \"{}\"\n",
            ca_up.cert.display(),
            mirror.host(),
            ca_mirror.cert.display()
        ),
    );
    let hd = hosts.to_str().expect("utf-8");
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let r = sb.run(&tls_args(&sb, &format!("{up}/demo:v1"), &["--hosts-dir", hd]));
    r.ok();
    assert!(!r.stderr.contains("trying the next host"), "the mirror failed:\n{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));

    // Served from the mirror's cache alone, the upstream gone.
    upstream.kill();
    let sb2 = Sandbox::at(&tmp.path().join("sb2"));
    sb2.run(&tls_args(&sb2, &format!("{up}/demo@{}", v("v1")), &["--hosts-dir", hd])).ok();
    assert_eq!(sb2.world(), demo_world("v1"));
    assert_cache_consistent(&sb2.state);
}

#[test]
fn a_mirror_gets_only_its_own_credentials() {
    if !require("a_mirror_gets_only_its_own_credentials", &["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    let tmp = tempdir("mirror-creds");
    // Both want alice's password: a mirror handed the registry's credentials would serve.
    let (up_pw, mirror_pw) = (tmp.path().join("up.htpasswd"), tmp.path().join("mirror.htpasswd"));
    write_htpasswd(&up_pw, "alice", "s3cret");
    write_htpasswd(&mirror_pw, "alice", "s3cret");
    let upstream = Registry::start(&tmp.path().join("upstream"), Some(&up_pw));
    let mirror = Registry::start(&tmp.path().join("mirror"), Some(&mirror_pw));
    for reg in [&upstream, &mirror] {
        skopeo_push(&demo_layout(), "v1", &format!("{}/demo:v1", reg.host()), Some("alice:s3cret"), false);
    }
    let up = upstream.host();
    let hosts = hosts_dir(&tmp.path().join("certs.d"), &up, &format!("[host.\"http://{}\"]\n", mirror.host()));
    let hd = hosts.to_str().expect("utf-8");
    let login = ["--hosts-dir", hd, "--username", "alice", "--password-stdin"];

    let sb = Sandbox::at(&tmp.path().join("sb"));
    let r = sb.run_env(&sb.demo_args(&format!("{up}/demo:v1"), &login), &[], Some("s3cret\n"));
    r.ok();
    assert!(
        r.stderr.contains("trying the next host") && r.stderr.contains("401"),
        "the mirror must have been asked without the registry's credentials:\n{}",
        r.describe()
    );
    assert_eq!(sb.world(), demo_world("v1"));

    // Docker's config holding the mirror's own credentials: it serves.
    let dc = tmp.path().join("docker");
    fs::create_dir_all(&dc).expect("docker dir");
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    };
    fs::write(dc.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, mirror.host()))
        .expect("config");
    let sb = Sandbox::at(&tmp.path().join("sb2"));
    let env = [("DOCKER_CONFIG", dc.to_str().expect("utf-8"))];
    let r = sb.run_env(&sb.demo_args(&format!("{up}/demo:v1"), &login), &env, Some("s3cret\n"));
    r.ok();
    assert!(!r.stderr.contains("trying the next host"), "the mirror failed:\n{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    assert_cache_consistent(&sb.state);
}

/// A TCP port that accepts no connection: a listener with a backlog of 0
/// whose queue is already full, so the kernel drops every new SYN and a
/// connect hangs (as a firewalled mirror does). Killed on drop.
struct Blackhole(std::process::Child, u16);

impl Blackhole {
    fn start() -> Blackhole {
        use std::io::BufRead as _;
        let script = "import socket,time\n\
                      s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(0)\n\
                      port=s.getsockname()[1]; held=[]\n\
                      for _ in range(3):\n    c=socket.socket(); c.setblocking(False); c.connect_ex(('127.0.0.1',port)); held.append(c)\n\
                      time.sleep(0.2); print(port, flush=True); time.sleep(600)\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("blackhole printed {line:?}"));
        Blackhole(child, port)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_mirror_gets_ns_and_its_headers_a_proxy_tunnels_tls_and_a_dead_mirror_its_dial_timeout() {
    const TEST: &str = "a_mirror_gets_ns_and_its_headers_a_proxy_tunnels_tls_and_a_dead_mirror_its_dial_timeout";
    if !require(TEST, TOOLS) {
        return;
    }
    let tmp = tempdir("mirror-knobs");
    let upstream = demo_registry(&tmp.path().join("upstream"));
    let setup = RegistrySetup { proxy_of: Some(format!("http://{}", upstream.host())), ..Default::default() };
    let mirror = Registry::start_with(&tmp.path().join("mirror"), setup);
    // The mirror host is a logging proxy in front of the pull-through cache:
    // it records each request line and its X- headers.
    let front = common::cosign::ReferrersProxy::start(mirror.port, &tmp.path().join("front"));
    let up = upstream.host();
    let mirror_toml = format!(
        "[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n[host.\"http://{}\".header]\nX-Fleet = \"blue\"\n",
        front.host(),
        front.host()
    );
    let hosts = hosts_dir(&tmp.path().join("certs.d"), &up, &mirror_toml);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v1"), &["--hosts-dir", hosts.to_str().expect("utf-8")]));
    r.ok();
    assert!(!r.stderr.contains("trying the next host"), "the mirror failed:\n{}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    // Every request to the mirror names the registry in `ns=` (as containerd's
    // do) and carries the header.
    let asked = front.requests();
    let ns = format!("ns={}", up.replace(':', "%3A"));
    let lines: Vec<&String> = asked.iter().filter(|l| !l.starts_with("  ")).collect();
    assert!(lines.iter().any(|l| l.contains("/blobs/sha256:")), "no blob from the mirror: {asked:?}");
    for l in &lines {
        assert!(l.starts_with("GET /v2/demo/") && l.contains(&ns), "no {ns}: {l}");
    }
    let fleet = asked.iter().filter(|l| l.trim().eq_ignore_ascii_case("X-Fleet: blue")).count();
    assert_eq!(fleet, lines.len(), "the header missed some requests: {asked:?}");

    // `proxy` on a plain-HTTP host is refused: clear text never goes through a proxy.
    let hosts = hosts_dir(
        &tmp.path().join("certs-proxied.d"),
        &up,
        &mirror_toml.replacen("capabilities", &format!("proxy = \"http://{}\"\ncapabilities", front.host()), 1),
    );
    let r = sb.run(&sb.demo_args(&format!("{up}/demo:v2"), &["--hosts-dir", hosts.to_str().expect("utf-8")]));
    r.fails_with(&["never sends plain HTTP through a proxy", "hosts.toml"]);
    assert_eq!(sb.world(), demo_world("v1"));

    // Over TLS, `proxy` is used: the registry is reached through a CONNECT tunnel.
    let pki = tmp.path().join("pki");
    let ca = Ca::new(&pki, "tls-ca");
    let tls = Registry::start_with(
        &tmp.path().join("tls"),
        RegistrySetup { tls: Some(ca.issue("tls", true)), ..Default::default() },
    );
    push_tls("v2", &format!("{}/demo:v2", tls.host()), None);
    let tunnel = common::cosign::ReferrersProxy::start(tls.port, &tmp.path().join("tunnel"));
    let th = tls.host();
    let hosts = hosts_dir(
        &tmp.path().join("certs-tls.d"),
        &th,
        &format!("ca = \"{}\"\nproxy = \"http://{}\"\n", ca.cert.display(), tunnel.host()),
    );
    let sb2 = Sandbox::at(&tmp.path().join("sb2"));
    sb2.run(&tls_args(&sb2, &format!("{th}/demo:v2"), &["--hosts-dir", hosts.to_str().expect("utf-8")])).ok();
    assert_eq!(sb2.world(), demo_world("v2"));
    let tunnelled = tunnel.requests();
    assert!(
        tunnelled.iter().any(|l| l == &format!("CONNECT {th} HTTP/1.1") || l.starts_with(&format!("CONNECT {th}"))),
        "{tunnelled:?}"
    );

    // A mirror that never accepts a connection: `dial_timeout` gives up on it
    // long before the default 30 s, and the registry serves.
    let dead = Blackhole::start();
    let hosts = hosts_dir(
        &tmp.path().join("certs-dead.d"),
        &up,
        &format!(
            "[host.\"http://127.0.0.1:{}\"]\ncapabilities = [\"pull\", \"resolve\"]\ndial_timeout = \"1s\"\n",
            dead.1
        ),
    );
    let sb3 = Sandbox::at(&tmp.path().join("sb3"));
    let started = std::time::Instant::now();
    let r = sb3.run(&sb3.demo_args(&format!("{up}/demo:v2"), &["--hosts-dir", hosts.to_str().expect("utf-8")]));
    let took = started.elapsed();
    r.ok();
    let fallbacks = r.stderr.matches("trying the next host").count();
    assert!(fallbacks > 0 && r.stderr.contains(&format!("127.0.0.1:{}", dead.1)), "{}", r.describe());
    assert_eq!(sb3.world(), demo_world("v2"));
    // Each request tried the dead mirror first; with the default it would wait 30 s each.
    let each = took.as_secs_f64() / fallbacks as f64;
    assert!(each < 10.0, "dial_timeout = 1s, yet {fallbacks} fallbacks took {took:?}");
}
