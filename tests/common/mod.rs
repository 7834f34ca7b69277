//! Helpers shared by the integration tests: running the `stagehand` binary in
//! a sandbox (state dir + destination dir), an independent tree hasher that
//! reads the disk with `std::fs` only (never through stagehand's library),
//! the expected "worlds" computed straight from `examples/src/demo/<ver>/`,
//! cheap sandbox snapshots, and a builder for hostile OCI layouts whose tar
//! entries are written byte by byte.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Name the demo package gets by default (the layout dir's last component).
pub const DEMO: &str = "demo";

/// Environment variables of the binary that a test must never inherit.
const SCRUBBED_ENV: &[&str] = &[
    "STAGEHAND_STATE_DIR",
    "STAGEHAND_TRACE_POINTS",
    "STAGEHAND_CRASH_AT",
    "STAGEHAND_FAIL_AT",
    "STAGEHAND_RECORD_OPS",
    "STAGEHAND_SKIP_FSYNC",
    "STAGEHAND_DEFAULT_REGISTRY",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

// ---------------------------------------------------------------------------
// Paths of the repository's examples
// ---------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo OCI image layout (tags `v1` and `v2`).
pub fn demo_layout() -> PathBuf {
    repo_root().join("examples/demo")
}

/// The source tree a demo version was built from.
pub fn demo_src(ver: &str) -> PathBuf {
    repo_root().join("examples/src/demo").join(ver)
}

/// `oci-layout:/abs/examples/demo:TAG`
pub fn demo_source(tag: &str) -> String {
    format!("oci-layout:{}:{tag}", demo_layout().display())
}

/// The manifest digest (`sha256:…`) a tag points to in an OCI layout's
/// index.json, read directly from the file.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let index_path = layout.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap_or_else(|e| panic!("read {}: {e}", index_path.display())))
            .unwrap_or_else(|e| panic!("parse {}: {e}", index_path.display()));
    let manifests =
        index["manifests"].as_array().unwrap_or_else(|| panic!("{}: no manifests array", index_path.display()));
    for m in manifests {
        if m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag) {
            return m["digest"].as_str().expect("digest is a string").to_string();
        }
    }
    panic!("{}: no manifest tagged {tag:?}", index_path.display());
}

pub fn demo_digest(tag: &str) -> String {
    layout_tag_digest(&demo_layout(), tag)
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Run {
    pub argv: String,
    pub env: String,
    /// Exit code; `None` if the process died by a signal.
    pub code: Option<i32>,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "unknown status".to_string(),
        };
        format!(
            "`stagehand {}`{} -> {how}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv,
            if self.env.is_empty() { String::new() } else { format!(" [env {}]", self.env) },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the run exited 0; returns self for chaining.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.success(), "expected success:\n{}", self.describe());
        self
    }

    /// Panics unless the run exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "expected exit code {code}:\n{}", self.describe());
        self
    }

    /// Panics unless the run failed cleanly: a non-zero exit code (not a
    /// signal) and something on stderr.
    #[track_caller]
    pub fn expect_clean_failure(&self) -> &Self {
        assert!(matches!(self.code, Some(c) if c != 0), "expected a non-zero exit (not a crash):\n{}", self.describe());
        assert!(!self.stderr.trim().is_empty(), "expected an error message on stderr:\n{}", self.describe());
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }
}

/// Runs `stagehand --state-dir STATE ARGS...` with the given extra
/// environment, in `cwd`, without inheriting any STAGEHAND_* variables and
/// with core dumps disabled (crash runs abort on purpose).
pub fn run_bin<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state-dir").arg(state);
    cmd.args(args);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    // A reference without a registry must never reach the internet from a
    // test: point the default registry at a closed local port.
    cmd.env("STAGEHAND_DEFAULT_REGISTRY", "127.0.0.1:9");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd);
    cmd.stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    Run {
        argv: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        env: env.iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy())).collect::<Vec<_>>().join(" "),
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Sandboxes
// ---------------------------------------------------------------------------

/// Where sandboxes live: `$STAGEHAND_TEST_TMPDIR`, else the system temp dir.
pub fn scratch_base() -> PathBuf {
    match std::env::var_os("STAGEHAND_TEST_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    }
}

/// A fresh temporary directory under [`scratch_base`].
pub fn tempdir() -> tempfile::TempDir {
    tempdir_in(scratch_base())
}

/// Where the crash matrices put their sandboxes: `$STAGEHAND_TEST_TMPDIR`,
/// else `/dev/shm` when it is a writable directory (thousands of runs; a
/// crash by abort() does not depend on fsync reaching the disk), else the
/// system temp dir.
pub fn fast_scratch_base() -> PathBuf {
    if let Some(d) = std::env::var_os("STAGEHAND_TEST_TMPDIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::Builder::new().prefix("sh-probe-").tempdir_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// A fresh temporary directory under [`fast_scratch_base`].
pub fn fast_tempdir() -> tempfile::TempDir {
    tempdir_in(fast_scratch_base())
}

fn tempdir_in(base: PathBuf) -> tempfile::TempDir {
    fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("sh-test-").tempdir_in(base).unwrap()
}

/// A state dir and a destination dir side by side under one root.
/// The paths are absolute and canonical: the journal records them, so a
/// sandbox restored from a snapshot must live at the same place.
pub struct Sandbox {
    _tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub dest: PathBuf,
}

impl Sandbox {
    /// A new sandbox in its own temporary directory; DEST exists and is empty,
    /// STATE does not exist yet.
    pub fn new() -> Sandbox {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let mut sb = Sandbox::at(root);
        sb._tmp = Some(tmp);
        sb
    }

    /// A sandbox rooted at `root` (created if missing), not deleted on drop.
    pub fn at(root: PathBuf) -> Sandbox {
        fs::create_dir_all(root.join("dest")).unwrap();
        let root = fs::canonicalize(root).unwrap();
        Sandbox { _tmp: None, state: root.join("state"), dest: root.join("dest"), root }
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        run_bin(&self.state, &self.root, args, &[])
    }

    pub fn run_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &OsStr)]) -> Run {
        run_bin(&self.state, &self.root, args, env)
    }

    /// The arguments that install demo `tag` into this sandbox's DEST.
    pub fn install_demo_args(&self, tag: &str) -> Vec<OsString> {
        demo_install_args(&self.dest, &demo_source(tag))
    }

    pub fn install_demo(&self, tag: &str) -> Run {
        self.run(&self.install_demo_args(tag))
    }

    pub fn uninstall_args(&self, name: &str) -> Vec<OsString> {
        vec!["uninstall".into(), name.into()]
    }

    /// `status --json`, asserting exit 0.
    #[track_caller]
    pub fn status_json(&self) -> serde_json::Value {
        self.run(&["status", "--json"]).ok().json()
    }

    /// `list --json`, asserting exit 0 and that it is an array.
    #[track_caller]
    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["list", "--json"]);
        run.ok();
        match run.json() {
            serde_json::Value::Array(a) => a,
            other => panic!("list --json is not an array: {other}\n{}", run.describe()),
        }
    }

    /// The `list --json` entry for package `name`, if any.
    #[track_caller]
    pub fn listed(&self, name: &str) -> Option<ListedPackage> {
        package_in_list(&self.list_json(), name)
    }

    /// Copies STATE and DEST into `dir` (replacing whatever is there).
    pub fn save_to(&self, dir: &Path) {
        remove_if_exists(dir);
        fs::create_dir_all(dir).unwrap();
        if self.state.exists() {
            copy_tree(&self.state, &dir.join("state"));
        }
        copy_tree(&self.dest, &dir.join("dest"));
    }

    /// Replaces STATE and DEST with the copies saved in `dir`.
    pub fn restore_from(&self, dir: &Path) {
        remove_if_exists(&self.state);
        remove_if_exists(&self.dest);
        if dir.join("state").exists() {
            copy_tree(&dir.join("state"), &self.state);
        }
        copy_tree(&dir.join("dest"), &self.dest);
    }

    /// Every path under DEST whose name contains `stagehand-`.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers_under(&self.dest)
    }

    pub fn world(&self) -> Tree {
        hash_tree(&self.dest)
    }
}

/// The `install` arguments for the demo layout: the app tree goes to
/// DEST/app, `*.so` to DEST/lib, the extension's control and SQL files to
/// DEST/share/extension. The one place to change if the CLI's mapping
/// syntax differs.
pub fn demo_install_args(dest: &Path, source: &str) -> Vec<OsString> {
    let map = |glob: &str, dir: &str| -> OsString {
        let mut s = OsString::from(format!("{glob}="));
        s.push(dest.join(dir));
        s
    };
    vec![
        "install".into(),
        source.into(),
        "--to".into(),
        dest.join("app").into(),
        "--map".into(),
        map("*.so", "lib"),
        "--map".into(),
        map("*.control", "share/extension"),
        "--map".into(),
        map("*.sql", "share/extension"),
    ]
}

/// A package as `list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPackage {
    pub name: String,
    pub digest: String,
    pub source: String,
    pub targets: BTreeSet<String>,
}

#[track_caller]
pub fn package_in_list(list: &[serde_json::Value], name: &str) -> Option<ListedPackage> {
    let mut found = list.iter().filter(|p| p["name"].as_str() == Some(name));
    let p = found.next()?;
    assert!(found.next().is_none(), "package {name} listed twice: {list:?}");
    let targets = p["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("list entry has no targets array: {p}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_else(|| panic!("target is not a string: {p}")).to_string())
        .collect();
    Some(ListedPackage {
        name: name.to_string(),
        digest: p["digest"].as_str().unwrap_or_else(|| panic!("no digest: {p}")).to_string(),
        source: p["source"].as_str().unwrap_or_else(|| panic!("no source: {p}")).to_string(),
        targets,
    })
}

/// The `pending` array of `status --json`.
#[track_caller]
pub fn pending_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["pending"].as_array().unwrap_or_else(|| panic!("status --json has no `pending` array: {status}")).clone()
}

pub fn remove_if_exists(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display())),
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display())),
        Err(_) => {}
    }
}

/// Recursively copies `src` to `dst` (which must not exist): regular files
/// with their permission bits, directories, symlinks as symlinks.
pub fn copy_tree(src: &Path, dst: &Path) {
    let meta = fs::symlink_metadata(src).unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src).unwrap(), dst).unwrap();
    } else if ft.is_dir() {
        fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
        for entry in fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &dst.join(entry.file_name()));
        }
        fs::set_permissions(dst, meta.permissions()).unwrap();
    } else if ft.is_file() {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("cp {} {}: {e}", src.display(), dst.display()));
    } else {
        panic!("copy_tree: cannot copy special file {}", src.display());
    }
}

/// Every path under `dir` (relative, slash-separated) whose name contains
/// `stagehand-`.
pub fn leftovers_under(dir: &Path) -> Vec<String> {
    hash_tree(dir).keys().filter(|k| k.contains("stagehand-")).cloned().collect()
}

// ---------------------------------------------------------------------------
// The independent tree hasher
// ---------------------------------------------------------------------------

/// One filesystem entry, as the tests see it.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { sha256: String, exec: bool, len: u64 },
    Symlink { target: String },
    Special { kind: String },
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir => write!(f, "dir"),
            Node::File { sha256, exec, len } => {
                write!(f, "file {}{} {len}B", &sha256[..12], if *exec { " +x" } else { "" })
            }
            Node::Symlink { target } => write!(f, "symlink -> {target}"),
            Node::Special { kind } => write!(f, "{kind}"),
        }
    }
}

/// Relative path (slash-separated, no leading slash) → entry. The root itself
/// is not an entry.
pub type Tree = BTreeMap<String, Node>;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(p: &Path) -> (String, u64) {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    (hex::encode(h.finalize()), len)
}

/// Hashes one entry (without following a symlink at `p`).
pub fn node_of(p: &Path) -> Option<Node> {
    let meta = fs::symlink_metadata(p).ok()?;
    let ft = meta.file_type();
    Some(if ft.is_symlink() {
        Node::Symlink { target: fs::read_link(p).unwrap().to_string_lossy().into_owned() }
    } else if ft.is_dir() {
        Node::Dir
    } else if ft.is_file() {
        let (sha256, len) = sha256_file(p);
        Node::File { sha256, exec: meta.permissions().mode() & 0o111 != 0, len }
    } else {
        let kind = if ft.is_char_device() {
            "char device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "unknown"
        };
        Node::Special { kind: kind.to_string() }
    })
}

/// Every entry under `root` (not following symlinks), keyed by relative
/// path. A missing root gives an empty tree.
pub fn hash_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    if fs::symlink_metadata(root).map(|m| m.is_dir()).unwrap_or(false) {
        walk(root, "", &mut out);
    }
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Tree) {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let p = dir.join(&name);
        let node = node_of(&p).unwrap_or_else(|| panic!("vanished during walk: {}", p.display()));
        let is_dir = node == Node::Dir;
        out.insert(rel.clone(), node);
        if is_dir {
            walk(&p, &format!("{rel}/"), out);
        }
    }
}

/// One sha256 over a whole tree (relative path, kind, exec bit, content,
/// symlink target of every entry), for cheap comparisons.
pub fn tree_digest(tree: &Tree) -> String {
    let mut h = Sha256::new();
    for (k, v) in tree {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(format!("{v:?}").as_bytes());
        if let Node::File { sha256, .. } = v {
            h.update(sha256.as_bytes());
        }
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Human-readable differences between two trees (at most `max` lines).
pub fn tree_diff(actual: &Tree, expected: &Tree, max: usize) -> String {
    let mut lines = Vec::new();
    let keys: BTreeSet<&String> = actual.keys().chain(expected.keys()).collect();
    for k in keys {
        match (actual.get(k), expected.get(k)) {
            (Some(a), Some(e)) if a == e => {}
            (Some(a), Some(e)) => lines.push(format!("  {k}: is {a:?}, expected {e:?}")),
            (Some(a), None) => lines.push(format!("  {k}: unexpected {a:?}")),
            (None, Some(e)) => lines.push(format!("  {k}: missing (expected {e:?})")),
            (None, None) => unreachable!(),
        }
    }
    let n = lines.len();
    if n > max {
        lines.truncate(max);
        lines.push(format!("  … and {} more", n - max));
    }
    if lines.is_empty() {
        "  (identical)".to_string()
    } else {
        lines.join("\n")
    }
}

// ---------------------------------------------------------------------------
// Expected worlds
// ---------------------------------------------------------------------------

/// Where a file of the demo's `files/` dir lands, relative to DEST.
pub fn demo_file_dest(file_name: &str) -> String {
    if file_name.ends_with(".so") {
        format!("lib/{file_name}")
    } else {
        format!("share/extension/{file_name}")
    }
}

/// Target paths (relative to DEST) that demo `ver` installs.
pub fn demo_targets_rel(ver: &str) -> BTreeSet<String> {
    let mut t = BTreeSet::new();
    t.insert("app".to_string());
    for e in
        fs::read_dir(demo_src(ver).join("files")).unwrap_or_else(|e| panic!("read examples/src/demo/{ver}/files: {e}"))
    {
        t.insert(demo_file_dest(&e.unwrap().file_name().to_string_lossy()));
    }
    t
}

/// Absolute target paths that demo `ver` installs under `dest`.
pub fn demo_targets_abs(dest: &Path, ver: &str) -> BTreeSet<String> {
    demo_targets_rel(ver).iter().map(|r| dest.join(r).to_string_lossy().into_owned()).collect()
}

/// The world `base` becomes once demo `ver` is installed over it (every
/// target of any demo version replaced).
pub fn demo_world(base: &Tree, ver: Option<&str>) -> Tree {
    let mut w = without_demo(base);
    if let Some(ver) = ver {
        let src = demo_src(ver);
        w.insert("app".to_string(), Node::Dir);
        for (rel, node) in hash_tree(&src.join("app")) {
            w.insert(format!("app/{rel}"), node);
        }
        for e in fs::read_dir(src.join("files")).unwrap() {
            let e = e.unwrap();
            let rel = demo_file_dest(&e.file_name().to_string_lossy());
            w.insert(rel, node_of(&e.path()).unwrap());
        }
        add_ancestors(&mut w);
    }
    w
}

/// `base` without anything a demo version installs (the app tree and every
/// `files/` entry of v1 and v2).
pub fn without_demo(base: &Tree) -> Tree {
    let mut rels = BTreeSet::new();
    for ver in ["v1", "v2"] {
        if demo_src(ver).exists() {
            rels.extend(demo_targets_rel(ver));
        }
    }
    base.iter()
        .filter(|(k, _)| !rels.iter().any(|r| *k == r || k.starts_with(&format!("{r}/"))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn add_ancestors(w: &mut Tree) {
    let keys: Vec<String> = w.keys().cloned().collect();
    for k in keys {
        let mut p = k.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            w.entry(parent.to_string()).or_insert(Node::Dir);
            p = parent;
        }
    }
}

/// Drops directory entries that are ancestors of a demo target (`lib`,
/// `share`, `share/extension`) and hold nothing else: whether an installer
/// leaves an empty parent directory behind after a rollback is not part of
/// the content claim.
pub fn normalize(w: &Tree) -> Tree {
    let mut out = w.clone();
    loop {
        let empty_dirs: Vec<String> = out
            .iter()
            .filter(|(k, v)| {
                **v == Node::Dir
                    && matches!(k.as_str(), "lib" | "share" | "share/extension")
                    && !out.keys().any(|o| o.starts_with(&format!("{k}/")))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if empty_dirs.is_empty() {
            return out;
        }
        for k in empty_dirs {
            out.remove(&k);
        }
    }
}

/// Which of two expected worlds the actual one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Old,
    New,
}

/// Classifies `actual` as exactly `old` or exactly `new` (after
/// [`normalize`]); `Err` with both diffs otherwise.
pub fn classify(actual: &Tree, old: &Tree, new: &Tree) -> Result<Which, String> {
    let (a, o, n) = (normalize(actual), normalize(old), normalize(new));
    if a == o {
        Ok(Which::Old)
    } else if a == n {
        Ok(Which::New)
    } else {
        Err(format!(
            "world is neither the old nor the new one\nvs OLD:\n{}\nvs NEW:\n{}",
            tree_diff(&a, &o, 25),
            tree_diff(&a, &n, 25)
        ))
    }
}

// ---------------------------------------------------------------------------
// Kill-point traces
// ---------------------------------------------------------------------------

/// Reads a trace file into (point, occurrence) pairs, in order.
pub fn read_trace(path: &Path) -> Vec<(String, u32)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let c = counts.entry(l.to_string()).or_insert(0);
            *c += 1;
            (l.to_string(), *c)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Hostile OCI layouts
// ---------------------------------------------------------------------------

/// One raw tar entry. `name` and `link` are written byte for byte into the
/// header, so `..` and absolute names survive.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            mode: 0o644,
            data: data.to_vec(),
            link: Vec::new(),
            dev: (0, 0),
        }
    }
    pub fn dir(name: &str) -> RawEntry {
        RawEntry { kind: tar::EntryType::Directory, mode: 0o755, ..RawEntry::file(name, b"") }
    }
    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            link: target.as_bytes().to_vec(),
            ..RawEntry::file(name, b"")
        }
    }
    pub fn hardlink(name: &str, target: &str) -> RawEntry {
        RawEntry { kind: tar::EntryType::Link, link: target.as_bytes().to_vec(), ..RawEntry::file(name, b"") }
    }
    pub fn char_device(name: &str, major: u32, minor: u32) -> RawEntry {
        RawEntry { kind: tar::EntryType::Char, mode: 0o666, dev: (major, minor), ..RawEntry::file(name, b"") }
    }
}

/// A tar archive of `entries`, headers written by hand.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        assert!(e.name.len() < 100, "raw tar name too long: {:?}", String::from_utf8_lossy(&e.name));
        assert!(e.link.len() < 100, "raw tar link too long");
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(&e.name);
            old.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if e.kind == tar::EntryType::Char || e.kind == tar::EntryType::Block {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Compresses a tar for a layer of `media_type` (`+gzip`, `+zstd` or plain).
pub fn encode_layer(media_type: &str, tar: &[u8]) -> Vec<u8> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(tar).unwrap();
        enc.finish().unwrap()
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        zstd::encode_all(tar, 3).unwrap()
    } else {
        tar.to_vec()
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let hexd = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hexd), bytes).unwrap();
    format!("sha256:{hexd}")
}

/// Writes an OCI layout at `out` holding one manifest tagged `tag`: a copy
/// of the demo's `v1` manifest whose first tar layer is replaced by `tar`
/// (compressed as the original was). Every other layer and the config are
/// copied as they are, so the layout follows the demo's conventions exactly.
/// Returns the `oci-layout:` source string.
pub fn hostile_demo_layout(out: &Path, tag: &str, tar: &[u8]) -> String {
    hostile_demo_layout_with(out, tag, &|mt| encode_layer(mt, tar))
}

/// [`hostile_demo_layout`] with the replaced layer's bytes made by `encode`
/// from its media type (e.g. a tar bomb streamed into gzip, never held whole).
pub fn hostile_demo_layout_with(out: &Path, tag: &str, encode: &dyn Fn(&str) -> Vec<u8>) -> String {
    let demo = demo_layout();
    let digest = demo_digest("v1");
    let blob = |d: &str| demo.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(&digest)).unwrap()).unwrap();
    remove_if_exists(out);
    fs::create_dir_all(out).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let cfg = manifest["config"]["digest"].as_str().unwrap().to_string();
    write_blob(out, &fs::read(blob(&cfg)).unwrap());
    let mut replaced = false;
    for layer in manifest["layers"].as_array_mut().expect("manifest has layers") {
        let d = layer["digest"].as_str().unwrap().to_string();
        let mt = layer["mediaType"].as_str().unwrap_or("").to_string();
        if !replaced && mt.contains("tar") {
            let bytes = encode(&mt);
            layer["digest"] = serde_json::Value::String(write_blob(out, &bytes));
            layer["size"] = serde_json::Value::from(bytes.len() as u64);
            replaced = true;
        } else {
            write_blob(out, &fs::read(blob(&d)).unwrap());
        }
    }
    assert!(replaced, "the demo v1 manifest has no tar layer to replace: {manifest}");
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = write_blob(out, &mbytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": manifest["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json"),
            "digest": mdigest,
            "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    fs::write(out.join("index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    format!("oci-layout:{}:{tag}", out.display())
}

/// The relative path bytes of a path, for raw tar names.
pub fn path_str(p: &Path) -> &str {
    std::str::from_utf8(p.as_os_str().as_bytes()).unwrap()
}

// ---------------------------------------------------------------------------
// Hostile neighbours and servers (issue 14)
// ---------------------------------------------------------------------------

/// How [`run_bin_opts`] runs the binary, beyond [`run_bin`].
#[derive(Debug, Clone, Default)]
pub struct RunOpts {
    /// The child's umask.
    pub umask: Option<u32>,
    /// Run as uid/gid 65534 (nobody) through `setpriv` (the test must be root).
    pub as_nobody: bool,
    /// Bytes on stdin (else /dev/null).
    pub stdin: Option<Vec<u8>>,
}

/// [`run_bin`] with [`RunOpts`]; also returns the child's peak RSS in KiB
/// and its wall time, measured by `wait4` on the child itself.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
pub fn run_bin_opts<S: AsRef<OsStr>>(
    state: &Path,
    cwd: &Path,
    args: &[S],
    env: &[(&str, &OsStr)],
    opts: &RunOpts,
) -> (Run, u64, Duration) {
    let mut cmd = if opts.as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--state-dir").arg(state);
    cmd.args(args);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    cmd.env("STAGEHAND_DEFAULT_REGISTRY", "127.0.0.1:9");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd);
    cmd.stdin(if opts.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let umask = opts.umask;
    // SAFETY: setrlimit and umask are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    if let (Some(bytes), Some(mut stdin)) = (opts.stdin.clone(), child.stdin.take()) {
        stdin.write_all(&bytes).unwrap();
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let elapsed = start.elapsed();
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    let run = Run {
        argv: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        env: env.iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy())).collect::<Vec<_>>().join(" "),
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    (run, usage.ru_maxrss as u64, elapsed)
}

/// True when running in CI, where a missing prerequisite fails a test
/// instead of skipping it.
pub fn ci() -> bool {
    in_ci()
}

/// True if `tool --version`-style `probe` runs. Outside CI a missing tool
/// skips the calling test loudly; in CI it fails.
pub fn tool_or_skip(test: &str, tool: &str, probe: &[&str]) -> bool {
    if Command::new(tool).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    let msg = format!("{test}: {tool} is not installed (scripts/test.sh installs it)");
    assert!(!ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

// ---------------------------------------------------------------------------
// Root-only fixtures: mounts, another user
// ---------------------------------------------------------------------------

/// True when running as root. Otherwise says loudly that `what` is skipped,
/// and fails instead when `CI` is set (CI runs as root and must run it),
/// except in scripts/test.sh's unprivileged pass
/// (`STAGEHAND_TEST_UNPRIVILEGED`), which follows the root pass.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none() || std::env::var_os("STAGEHAND_TEST_UNPRIVILEGED").is_some(),
        "{what} needs root, and CI is set: it must run there"
    );
    eprintln!("SKIPPED (needs root): {what}");
    println!("SKIPPED (needs root): {what}");
    false
}

/// A filesystem mounted for a test, unmounted (lazily) when dropped.
pub struct Mount {
    pub at: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "8m") at `at` (created if missing).
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(st.success(), "mount tmpfs at {}: {st}", at.display());
        Mount { at: at.to_path_buf() }
    }

    /// Makes a `size_mib` ext4 image in `image` and loop-mounts it at `at`.
    pub fn ext4(image: &Path, size_mib: u64, at: &Path) -> Mount {
        let f = fs::File::create(image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(image)
            .status()
            .unwrap_or_else(|e| panic!("spawn mkfs.ext4 (e2fsprogs): {e}"));
        assert!(st.success(), "mkfs.ext4 {}: {st}", image.display());
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .status()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(st.success(), "loop-mount {} at {}: {st}", image.display(), at.display());
        Mount { at: at.to_path_buf() }
    }

    /// Free bytes for an ordinary user on the mounted filesystem.
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.at.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0, "statvfs {}", self.at.display());
        v.f_bavail as u64 * v.f_frsize as u64
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// The uid tests use as an ordinary user when they run as root ("nobody").
pub const NOBODY: u32 = 65534;

/// Gives `path` and everything under it to `uid` (its group too).
pub fn chown_tree(path: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("spawn chown: {e}"));
    assert!(st.success(), "chown -R {uid} {}: {st}", path.display());
}

/// Like [`run_bin`], as user `uid` (with HOME set to `cwd`) when the test
/// runs as root; as the current user otherwise.
pub fn run_bin_as<S: AsRef<OsStr>>(uid: u32, state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return run_bin(state, cwd, args, env);
    }
    let mut all: Vec<(&str, &OsStr)> = env.to_vec();
    all.push(("HOME", cwd.as_os_str()));
    let uid_s = uid.to_string();
    let mut argv: Vec<OsString> = vec![
        format!("--reuid={uid_s}").into(),
        format!("--regid={uid_s}").into(),
        "--clear-groups".into(),
        "--".into(),
        BIN.into(),
        "--state-dir".into(),
        state.into(),
    ];
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let mut cmd = Command::new("setpriv");
    cmd.args(&argv);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1").env("STAGEHAND_DEFAULT_REGISTRY", "127.0.0.1:9");
    for (k, v) in &all {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd).stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn setpriv: {e}"));
    Run {
        argv: format!(
            "(as uid {uid}) {}",
            args.iter().map(|a| a.as_ref().to_string_lossy()).collect::<Vec<_>>().join(" ")
        ),
        env: String::new(),
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Tests that need the machine (root, Debian tools)
// ---------------------------------------------------------------------------

/// True when running in CI (`CI` set, and not `false`/`0`), where a test
/// that cannot run is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0").unwrap_or(false)
}

/// A test that cannot run here: panics in CI; elsewhere prints a loud
/// SKIPPED banner straight to fd 2 (past the harness's capture).
pub fn skip_unless_ci(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
    }
    let bar = "!".repeat(76);
    let _ = std::io::stderr().write_all(format!("\n{bar}\n!!! SKIPPED {test}: {why}\n{bar}\n\n").as_bytes());
}

/// Whether `tool` is an executable file on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                fs::metadata(d.join(tool)).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// A hostile HTTP server on loopback (`tests/common/hostile_registry.py`),
/// killed on drop. It logs every request line to [`HostileServer::log`].
pub struct HostileServer {
    child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostileServer {
    /// Starts the server in `mode`; with `tls` = (cert, key) it speaks https.
    pub fn start(mode: &str, tls: Option<(&Path, &Path)>) -> HostileServer {
        let dir = tempdir();
        let log = dir.path().join("requests.log");
        fs::write(&log, b"").unwrap();
        let script = repo_root().join("tests/common/hostile_registry.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(mode).arg(&log);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn python3");
        let mut line = String::new();
        {
            use std::io::BufRead as _;
            let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
            r.read_line(&mut line).unwrap();
        }
        let port = line.trim().parse().unwrap_or_else(|_| panic!("hostile server printed {line:?}"));
        HostileServer { child, port, log, _dir: dir }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request lines it received so far.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).unwrap().lines().map(str::to_string).collect()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
