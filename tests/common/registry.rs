//! The registry tests' helpers: a real Debian `docker-registry` on a free
//! loopback port (killed by a Drop guard), pushing layouts with `skopeo`, a
//! throttling TCP proxy (so a test can kill the registry in the middle of a
//! large blob), and the registry tests' own sandbox: the demo placed with
//! `--plain-http` under DEST/{app,lib,ext}, HOME pointed at the sandbox so
//! the developer's Docker credentials are never read.
//!
//! `use common::registry::*` gives these and every shared helper.
//! Tool policy: if `docker-registry` (or `skopeo`, or `htpasswd` for the
//! auth test) is missing, a test is skipped with a loud message, unless `CI`
//! is set (and not `false`/`0`), where it fails.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use super::artifact::*;
pub use super::demo::*;
pub use super::host::*;
pub use super::run::*;
pub use super::sandbox::scratch_base;
/// The registry tests' name for [`remove_if_exists`].
pub use super::tree::remove_if_exists as remove_tree;
pub use super::tree::*;

/// A running `docker-registry serve`, killed (SIGKILL) when dropped.
pub struct Registry {
    pub port: u16,
    pub root: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    setup: RegistrySetup,
}

/// What a registry serves beyond plain HTTP storage (see [`Registry::start_with`]).
#[derive(Clone, Default)]
pub struct RegistrySetup {
    /// `(certificate, key)`: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require a client certificate signed by this CA (`http.tls.clientcas`).
    pub client_ca: Option<PathBuf>,
    /// A pull-through cache of this upstream URL (`proxy: remoteurl:`).
    pub proxy_of: Option<String>,
    /// Environment of the registry process (e.g. `SSL_CERT_FILE` for a proxy's upstream).
    pub env: Vec<(String, String)>,
}

impl Registry {
    /// Starts a registry storing under `dir/root`, on a free port, with
    /// htpasswd auth if `htpasswd` is given.
    pub fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        Registry::start_setup(dir, htpasswd, RegistrySetup::default())
    }

    /// Starts a registry as [`Registry::start`] does, with TLS, client
    /// certificates or as a pull-through cache as `setup` says.
    pub fn start_with(dir: &Path, setup: RegistrySetup) -> Registry {
        Registry::start_setup(dir, None, setup)
    }

    fn start_setup(dir: &Path, htpasswd: Option<&Path>, setup: RegistrySetup) -> Registry {
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
                setup: setup.clone(),
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
        if let Some((cert, key)) = &self.setup.tls {
            cfg.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
            if let Some(ca) = &self.setup.client_ca {
                cfg.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        if let Some(h) = htpasswd {
            cfg.push_str(&format!("auth:\n  htpasswd:\n    realm: stagehand-test\n    path: {}\n", h.display()));
        }
        if let Some(url) = &self.setup.proxy_of {
            cfg.push_str(&format!("proxy:\n  remoteurl: {url}\n"));
        }
        fs::write(&self.config, cfg).expect("write registry config");
    }

    /// Starts the process and waits for `/v2/`; false if it died.
    fn spawn(&mut self) -> bool {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("registry log");
        let log2 = log.try_clone().expect("clone log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&self.config).stdin(Stdio::null()).stdout(log).stderr(log2);
        cmd.envs(self.setup.env.iter().map(|(k, v)| (k, v)));
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
            // A TLS registry answers a plain-HTTP probe with 400.
            let status = http_status(self.port, "/v2/");
            if matches!(status, Some(200 | 401)) || (self.setup.tls.is_some() && status == Some(400)) {
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

/// A registry under `dir/registry` holding the demo's v1 and v2 as
/// `REG/demo:v1`, `REG/demo:v2`.
pub fn demo_registry(dir: &Path) -> Registry {
    let reg = Registry::start(&dir.join("registry"), None);
    for tag in ["v1", "v2"] {
        skopeo_push(&demo_layout(), tag, &format!("{}/demo:{tag}", reg.host()), None, false);
    }
    reg
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

/// The digest of `REFERENCE` (`HOST/REPO:TAG`) as the registry serves it
/// (skopeo writes an index anew when it pushes one).
pub fn registry_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
        .output()
        .expect("run skopeo");
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    format!("sha256:{}", sha256_hex(&out.stdout))
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

/// Runs `stagehand --state-dir STATE ARGS...` with `env` added and `stdin`
/// fed, HOME at the state dir's parent and no default registry.
pub fn run_bin<S: AsRef<OsStr>>(state: &Path, args: &[S], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let home = state.parent().unwrap_or(state).to_path_buf();
    // Never read the developer's own Docker credentials; a registry test
    // names its registry, so none is the default.
    let adjust = move |cmd: &mut Command| {
        cmd.env("HOME", &home).env_remove("STAGEHAND_DEFAULT_REGISTRY");
    };
    run_bin_with(state, Path::new("."), args, &env, stdin.map(str::as_bytes), &adjust)
}

/// Starts the binary as [`run_bin`] does and returns it running (a test
/// that SIGKILLs it at a moment of its choosing).
pub fn spawn_bin<S: AsRef<OsStr>>(state: &Path, args: &[S], env: &[(&str, &str)], stdin: bool) -> Child {
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let home = state.parent().unwrap_or(state).to_path_buf();
    let mut cmd = command(state, Path::new("."), args, &env);
    cmd.env("HOME", &home).env_remove("STAGEHAND_DEFAULT_REGISTRY");
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().unwrap_or_else(|e| panic!("spawn stagehand: {e}"))
}

/// A temp dir for one test (under [`scratch_base`]).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(scratch_base()).expect("tempdir")
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

/// After every registry test (pass or clean failure): the blob cache's
/// rule holds, every `blobs/sha256/<hex>` hashes to its name.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if !thread::panicking() {
            assert_cache_consistent(&self.state);
        }
    }
}

/// The demo world for `ver` under a destination laid out by
/// [`Sandbox::demo_args`], computed straight from `examples/src/demo/<ver>`.
pub fn demo_world(ver: &str) -> Tree {
    let src = demo_src(ver);
    let mut w = Tree::new();
    w.insert("app".into(), Node::Dir);
    for (k, v) in hash_tree(&src.join("app")) {
        w.insert(format!("app/{k}"), v);
    }
    for dir in ["lib", "ext"] {
        w.insert(dir.into(), Node::Dir);
    }
    for (name, v) in hash_tree(&src.join("files")) {
        let dir = if name.ends_with(".so") { "lib" } else { "ext" };
        w.insert(format!("{dir}/{name}"), v);
    }
    w
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
