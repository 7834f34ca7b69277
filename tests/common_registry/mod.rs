//! Helpers for the registry tests: a real Debian `docker-registry` on a free
//! loopback port (killed by a Drop guard), pushing layouts with `skopeo`,
//! a throttling TCP proxy (so a test can kill the registry in the middle of
//! a large blob), OCI layouts built from Rust, running the `stagehand`
//! binary, and an independent tree hasher that reads the disk with `std::fs`
//! only.
//!
//! Tool policy: if `docker-registry` (or `skopeo`, or `htpasswd` for the
//! auth test) is missing, a test is skipped with a loud message — unless the
//! environment variable `CI` is set (and not `false`/`0`), where it fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Environment variables of the binary that a test must never inherit.
const SCRUBBED_ENV: &[&str] = &[
    "STAGEHAND_STATE_DIR",
    "STAGEHAND_TRACE_POINTS",
    "STAGEHAND_CRASH_AT",
    "STAGEHAND_FAIL_AT",
    "STAGEHAND_SIGNAL_AT",
    "STAGEHAND_RECORD_OPS",
    "STAGEHAND_SKIP_FSYNC",
    "STAGEHAND_DEFAULT_REGISTRY",
    "DOCKER_CONFIG",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo_layout() -> PathBuf {
    repo_root().join("examples/demo")
}

/// True when running in CI, where a missing tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0").unwrap_or(false)
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                fs::metadata(d.join(tool)).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// Checks that `tools` are installed. Returns false (after a loud message)
/// if one is missing outside CI; panics if one is missing in CI.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: {} not installed (Debian packages docker-registry, skopeo, apache2-utils, openssl; scripts/test.sh installs them)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("{msg}; CI is set, so this is a failure, not a skip");
    }
    // Straight to fd 2, past the test harness's output capture, so the skip is seen.
    let bar = "!".repeat(76);
    let _ = std::io::stderr().write_all(format!("\n{bar}\n!!! SKIPPED {msg}\n{bar}\n\n").as_bytes());
    false
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Sends `GET path` over plain HTTP/1.0 and returns the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

/// A running `docker-registry serve`, killed (SIGKILL) when dropped.
pub struct Registry {
    pub port: u16,
    pub root: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry storing under `dir/root`, on a free port, with
    /// htpasswd auth if `htpasswd` is given.
    pub fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        fs::create_dir_all(dir).expect("registry dir");
        let root = dir.join("root");
        fs::create_dir_all(&root).expect("registry root");
        for attempt in 0..5 {
            let port = free_port();
            let mut reg = Registry {
                port,
                root: root.clone(),
                config: dir.join("config.yml"),
                log: dir.join("registry.log"),
                child: None,
            };
            reg.write_config(htpasswd);
            if reg.spawn() {
                return reg;
            }
            eprintln!("registry did not start on port {port} (attempt {attempt}); retrying");
        }
        panic!("docker-registry would not start; see {}", dir.join("registry.log").display());
    }

    fn write_config(&self, htpasswd: Option<&Path>) {
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: stagehand-test-secret\n",
            self.root.display(),
            self.port
        );
        if let Some(h) = htpasswd {
            cfg.push_str(&format!("auth:\n  htpasswd:\n    realm: stagehand-test\n    path: {}\n", h.display()));
        }
        fs::write(&self.config, cfg).expect("write registry config");
    }

    /// Starts the process and waits for `/v2/`; false if it died.
    fn spawn(&mut self) -> bool {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("registry log");
        let log2 = log.try_clone().expect("clone log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&self.config).stdin(Stdio::null()).stdout(log).stderr(log2);
        // Die with the test process if it is killed.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if matches!(http_status(self.port, "/v2/"), Some(200 | 401)) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the registry process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "registry would not restart on port {}", self.port);
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The data file of a blob in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.root.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `skopeo copy [--all] oci:SRC docker://DEST`, over plain HTTP.
pub fn skopeo_push(src_layout: &Path, src_tag: &str, dest: &str, creds: Option<&str>, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    if let Some(c) = creds {
        cmd.arg("--dest-creds").arg(c);
    }
    cmd.arg(format!("oci:{}:{src_tag}", src_layout.display()));
    cmd.arg(format!("docker://{dest}"));
    let out = cmd.output().expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {src_tag} -> {dest} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes an htpasswd file with one bcrypt user (via `htpasswd -Bbn`).
pub fn write_htpasswd(path: &Path, user: &str, pass: &str) {
    let out = Command::new("htpasswd").args(["-Bbn", user, pass]).output().expect("run htpasswd");
    assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    fs::write(path, out.stdout).expect("write htpasswd");
}

// ---------------------------------------------------------------------------
// A throttling proxy, so a large blob takes long enough to be interrupted
// ---------------------------------------------------------------------------

/// Forwards connections from its port to `127.0.0.1:upstream`, sending
/// responses at about `bytes_per_sec`. Stops accepting when dropped.
/// [`SlowProxy::dropping`] also breaks connections off halfway.
pub struct SlowProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Connections still to be cut off (see [`SlowProxy::dropping`]).
    pub cuts_left: Arc<std::sync::atomic::AtomicU64>,
}

/// How a [`SlowProxy`] misbehaves.
#[derive(Debug, Clone, Copy)]
struct Misbehave {
    bytes_per_sec: u64,
    /// Close a connection once it carried this many response bytes, while
    /// `cuts_left` is above zero (each cut takes one).
    cut_after: u64,
    /// Remove `Range:` headers from requests.
    strip_range: bool,
}

impl SlowProxy {
    pub fn start(upstream: u16, bytes_per_sec: u64) -> SlowProxy {
        SlowProxy::dropping(upstream, bytes_per_sec, 0, u64::MAX, false)
    }

    /// Like [`SlowProxy::start`], and the first `cuts` connections that
    /// carry more than `cut_after` response bytes are closed right there
    /// (the registry "drops the connection halfway"). With `strip_range`,
    /// `Range` headers are removed from requests (a registry that ignores
    /// range requests and sends the whole blob again).
    pub fn dropping(upstream: u16, bytes_per_sec: u64, cuts: u64, cut_after: u64, strip_range: bool) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let cuts_left = Arc::new(std::sync::atomic::AtomicU64::new(cuts));
        let cuts2 = cuts_left.clone();
        let how = Misbehave { bytes_per_sec, cut_after, strip_range };
        thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let cuts = cuts2.clone();
                        thread::spawn(move || proxy_conn(client, upstream, how, cuts));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SlowProxy { port, stop, cuts_left }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `request` without its `Range:` header lines.
fn without_range(request: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    if !text.to_ascii_lowercase().contains("\r\nrange:") {
        return request.to_vec();
    }
    text.split_inclusive("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("range:"))
        .collect::<String>()
        .into_bytes()
}

fn proxy_conn(client: TcpStream, upstream: u16, how: Misbehave, cuts: Arc<std::sync::atomic::AtomicU64>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else { return };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let out = if how.strip_range { without_range(&buf[..n]) } else { buf[..n].to_vec() };
                    if s_write.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let chunk = 64 * 1024;
    let pause = Duration::from_secs_f64(chunk as f64 / how.bytes_per_sec as f64);
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    loop {
        match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let over = sent + n as u64 > how.cut_after;
                let cut = over && cuts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)).is_ok();
                let n = if cut { (how.cut_after - sent) as usize } else { n };
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                if cut {
                    let _ = s_read.shutdown(Shutdown::Both);
                    break;
                }
                thread::sleep(pause);
            }
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Run {
    pub argv: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "`stagehand {}` -> code {:?} signal {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv,
            self.code,
            self.signal,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        self
    }

    /// A clean failure: non-zero exit (not a signal) and stderr containing every `needle`.
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        assert!(matches!(self.code, Some(c) if c != 0), "expected a clean failure:\n{}", self.describe());
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.describe());
        }
        self
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.describe()))
    }
}

/// Runs `stagehand --state-dir STATE ARGS...` with `env` added and `stdin` fed.
pub fn run_bin<S: AsRef<OsStr>>(state: &Path, args: &[S], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut child = spawn_bin(state, args, env, stdin.is_some());
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        argv: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts the binary as [`run_bin`] does and returns it running (a test
/// that SIGKILLs it at a moment of its choosing).
pub fn spawn_bin<S: AsRef<OsStr>>(state: &Path, args: &[S], env: &[(&str, &str)], stdin: bool) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state-dir").arg(state).args(args);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    // Never read the developer's own Docker credentials.
    cmd.env("HOME", state.parent().unwrap_or(state));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

/// A state dir and a destination dir under one temp dir.
pub struct Sandbox {
    pub root: PathBuf,
    pub state: PathBuf,
    pub dest: PathBuf,
}

impl Sandbox {
    pub fn at(root: &Path) -> Sandbox {
        fs::create_dir_all(root).expect("sandbox root");
        let root = fs::canonicalize(root).expect("canonical");
        Sandbox { state: root.join("state"), dest: root.join("dest"), root }
    }

    /// The demo's placement flags: `--to DEST/app --map '*.so=DEST/lib' ...`.
    pub fn demo_args(&self, source: &str, extra: &[&str]) -> Vec<String> {
        let d = self.dest.display();
        let mut v = vec![
            "install".to_string(),
            source.to_string(),
            "--to".into(),
            format!("{d}/app"),
            "--map".into(),
            format!("*.so={d}/lib"),
            "--map".into(),
            format!("*.control={d}/ext"),
            "--map".into(),
            format!("*.sql={d}/ext"),
            "--plain-http".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    pub fn run(&self, args: &[impl AsRef<OsStr>]) -> Run {
        run_bin(&self.state, args, &[], None)
    }

    pub fn run_env(&self, args: &[impl AsRef<OsStr>], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
        run_bin(&self.state, args, env, stdin)
    }

    /// `list --json`: package name → manifest digest.
    pub fn listed(&self) -> BTreeMap<String, String> {
        let j = self.run(&["list", "--json"]).ok().json();
        j.as_array()
            .unwrap_or_else(|| panic!("list --json is not an array: {j}"))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn world(&self) -> Tree {
        hash_tree(&self.dest)
    }
}

// ---------------------------------------------------------------------------
// The independent tree hasher and the expected demo worlds
// ---------------------------------------------------------------------------

/// Relative path → "dir" | "file <sha256>" | "link <target>".
pub type Tree = BTreeMap<String, String>;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

pub fn hash_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    fn walk(base: &Path, dir: &Path, out: &mut Tree) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.map(|e| e.expect("dir entry")).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).expect("stat");
            if m.file_type().is_symlink() {
                out.insert(rel, format!("link {}", fs::read_link(&p).expect("readlink").display()));
            } else if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &p, out);
            } else {
                out.insert(rel, format!("file {}", sha256_file(&p)));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The demo world for `ver` under a destination laid out by
/// [`Sandbox::demo_args`], computed straight from `examples/src/demo/<ver>`.
pub fn demo_world(ver: &str) -> Tree {
    let src = repo_root().join("examples/src/demo").join(ver);
    let mut w = Tree::new();
    w.insert("app".into(), "dir".into());
    for (k, v) in hash_tree(&src.join("app")) {
        w.insert(format!("app/{k}"), v);
    }
    for dir in ["lib", "ext"] {
        w.insert(dir.into(), "dir".into());
    }
    for (name, v) in hash_tree(&src.join("files")) {
        let dir = if name.ends_with(".so") { "lib" } else { "ext" };
        w.insert(format!("{dir}/{name}"), v);
    }
    w
}

/// The manifest digest a tag points to in an OCI layout's index.json.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read index.json")).expect("parse");
    for m in index["manifests"].as_array().expect("manifests") {
        if m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag) {
            return m["digest"].as_str().expect("digest").to_string();
        }
    }
    panic!("no tag {tag} in {}", layout.display());
}

/// Every `blobs/sha256/<hex>` in a state dir's cache hashes to its name.
#[track_caller]
pub fn assert_cache_consistent(state: &Path) {
    let dir = state.join("blobs/sha256");
    let Ok(rd) = fs::read_dir(&dir) else { return };
    for e in rd {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(sha256_file(&e.path()), name, "cached blob {} does not hash to its name", e.path().display());
    }
}

/// Files under the cache's `partial/` dir.
pub fn partials(state: &Path) -> Vec<(String, u64)> {
    let Ok(rd) = fs::read_dir(state.join("blobs/partial")) else { return Vec::new() };
    rd.map(|e| {
        let e = e.expect("entry");
        (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("stat").len())
    })
    .collect()
}

/// Recursively copies `src` to `dst` (which must not exist).
pub fn copy_tree(src: &Path, dst: &Path) {
    let meta = fs::symlink_metadata(src).unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src).expect("readlink"), dst).expect("symlink");
    } else if meta.is_dir() {
        fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
        for entry in fs::read_dir(src).expect("read dir") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &dst.join(entry.file_name()));
        }
        fs::set_permissions(dst, meta.permissions()).expect("chmod");
    } else {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("cp {}: {e}", src.display()));
    }
}

pub fn remove_tree(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).expect("rm -r"),
        Ok(_) => fs::remove_file(p).expect("rm"),
        Err(_) => {}
    }
}

// ---------------------------------------------------------------------------
// OCI layouts built from Rust
// ---------------------------------------------------------------------------

/// An OCI image layout under construction.
pub struct LayoutBuilder {
    pub dir: PathBuf,
    entries: Vec<serde_json::Value>,
}

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl LayoutBuilder {
    pub fn new(dir: &Path) -> LayoutBuilder {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        let b = LayoutBuilder { dir: dir.to_path_buf(), entries: Vec::new() };
        b.write_index();
        b
    }

    /// Stores a blob; returns its descriptor (without annotations).
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let hex = sha256_hex(bytes);
        fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).expect("write blob");
        serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    /// A manifest whose layers are plain files with titles.
    pub fn file_manifest(&self, files: &[(&str, &[u8])]) -> serde_json::Value {
        let config = self.blob("application/vnd.oci.empty.v1+json", b"{}");
        let layers: Vec<serde_json::Value> = files
            .iter()
            .map(|(title, bytes)| {
                let mut d = self.blob("application/octet-stream", bytes);
                d["annotations"] = serde_json::json!({"org.opencontainers.image.title": title});
                d
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": config,
            "layers": layers,
        });
        self.blob(MT_MANIFEST, &serde_json::to_vec(&manifest).expect("json"))
    }

    /// A manifest with these layer descriptors (and an empty config).
    pub fn manifest(&self, layers: &[serde_json::Value]) -> serde_json::Value {
        let config = self.blob("application/vnd.oci.empty.v1+json", b"{}");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": config,
            "layers": layers,
        });
        self.blob(MT_MANIFEST, &serde_json::to_vec(&manifest).expect("json"))
    }

    /// An image index over `(platform os, arch, manifest descriptor)`.
    pub fn index(&self, entries: &[(&str, &str, serde_json::Value)]) -> serde_json::Value {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, desc)| {
                let mut d = desc.clone();
                d["platform"] = serde_json::json!({"os": os, "architecture": arch});
                d
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        self.blob(MT_INDEX, &serde_json::to_vec(&index).expect("json"))
    }

    /// Tags `desc` in index.json.
    pub fn tag(&mut self, tag: &str, desc: &serde_json::Value) {
        let mut d = desc.clone();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.entries.push(d);
        self.write_index();
    }

    fn write_index(&self) {
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.entries});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index.json");
    }
}

/// A tar archive of regular files (mode 0644, mtime 0), directories implied.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data.as_slice()).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

/// `bytes`, gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// `len` bytes from a fixed xorshift stream (incompressible, reproducible).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A temp dir for one test (under `$STAGEHAND_TEST_TMPDIR` if set).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("STAGEHAND_TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix(prefix).tempdir_in(base).expect("tempdir")
}
