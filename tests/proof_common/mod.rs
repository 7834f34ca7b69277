//! Helpers for the "prove it" tests (power loss, model-based ops, races,
//! random kills, sled faults, fuzz corpus replay): running the `stagehand`
//! binary with a scrubbed environment, an independent tree hasher that reads
//! the disk with `std::fs` only, the expected demo worlds computed from
//! `examples/src/demo/<ver>/`, and small sandbox utilities.
//!
//! Self-contained on purpose (a copy of the few helpers needed from
//! `tests/common`, which another engineer owns), so these tests keep building
//! whatever happens there. Each test binary uses a subset.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Environment variables of the binary that a test must never inherit.
const SCRUBBED_ENV: &[&str] = &[
    "STAGEHAND_STATE_DIR",
    "STAGEHAND_TRACE_POINTS",
    "STAGEHAND_CRASH_AT",
    "STAGEHAND_FAIL_AT",
    "STAGEHAND_RECORD_OPS",
    "STAGEHAND_SKIP_FSYNC",
    "STAGEHAND_SYNC",
    "STAGEHAND_SIGNAL_AT",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo_layout() -> PathBuf {
    repo_root().join("examples/demo")
}

pub fn demo_src(ver: &str) -> PathBuf {
    repo_root().join("examples/src/demo").join(ver)
}

pub fn demo_source(tag: &str) -> String {
    format!("oci-layout:{}:{tag}", demo_layout().display())
}

/// The manifest digest a tag points to in an OCI layout's index.json.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    for m in index["manifests"].as_array().expect("manifests array") {
        if m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag) {
            return m["digest"].as_str().unwrap().to_string();
        }
    }
    panic!("{}: no manifest tagged {tag:?}", layout.display());
}

pub fn demo_digest(tag: &str) -> String {
    layout_tag_digest(&demo_layout(), tag)
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Run {
    pub argv: String,
    pub env: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

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

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.success(), "expected success:\n{}", self.describe());
        self
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.stdout).map_err(|e| format!("stdout is not JSON ({e}):\n{}", self.describe()))
    }
}

/// A `stagehand --state-dir STATE ARGS...` command with a scrubbed
/// environment, no stdin and core dumps disabled.
/// The binary under test: `STAGEHAND_TEST_BIN` if set (to run a proof
/// against another build, e.g. an older commit, for before/after numbers),
/// else this build's.
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("STAGEHAND_TEST_BIN").unwrap_or_else(|| BIN.into())
}

pub fn command<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--state-dir").arg(state);
    cmd.args(args);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
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
    cmd
}

fn describe_args<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> (String, String) {
    (
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        env.iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy())).collect::<Vec<_>>().join(" "),
    )
}

pub fn run_bin<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    let out = command(state, cwd, args, env).output().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let (argv, env) = describe_args(args, env);
    Run {
        argv,
        env,
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts the binary with stdout/stderr piped; see [`finish`].
pub fn spawn_bin<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> (Child, String) {
    let mut cmd = command(state, cwd, args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    (child, describe_args(args, env).0)
}

/// Waits for a child started by [`spawn_bin`].
pub fn finish(child: Child, argv: String) -> Run {
    let out = child.wait_with_output().expect("wait");
    Run {
        argv,
        env: String::new(),
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Sandboxes
// ---------------------------------------------------------------------------

pub fn scratch_base() -> PathBuf {
    match std::env::var_os("STAGEHAND_TEST_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    let base = scratch_base();
    fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("sh-proof-").tempdir_in(base).unwrap()
}

/// The `install` arguments that put demo `source` under `dest` (app tree in
/// DEST/app, `*.so` in DEST/lib, control and SQL files in DEST/share/extension).
pub fn demo_install_args(dest: &Path, source: &str, name: Option<&str>) -> Vec<OsString> {
    let map = |glob: &str, dir: &str| -> OsString {
        let mut s = OsString::from(format!("{glob}="));
        s.push(dest.join(dir));
        s
    };
    let mut v: Vec<OsString> = vec![
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
    ];
    if let Some(n) = name {
        v.push("--name".into());
        v.push(n.into());
    }
    v
}

pub fn remove_if_exists(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display())),
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display())),
        Err(_) => {}
    }
}

/// Recursively copies `src` to `dst` (which must not exist).
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
    } else {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("cp {} {}: {e}", src.display(), dst.display()));
    }
}

/// Replaces `dst` with a copy of `src` (absent `src`: `dst` removed).
pub fn replace_with_copy(src: &Path, dst: &Path) {
    remove_if_exists(dst);
    if src.exists() {
        copy_tree(src, dst);
    }
}

// ---------------------------------------------------------------------------
// The independent tree hasher
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Dir,
    File { sha256: String, exec: bool, len: u64 },
    Symlink { target: String },
    Special,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir => write!(f, "dir"),
            Node::File { sha256, exec, len } => {
                write!(f, "file {}{} {len}B", &sha256[..12], if *exec { " +x" } else { "" })
            }
            Node::Symlink { target } => write!(f, "symlink -> {target}"),
            Node::Special => write!(f, "special"),
        }
    }
}

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
        Node::Special
    })
}

/// Every entry under `root` (not following symlinks). Missing root: empty.
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
        "  (identical)".into()
    } else {
        lines.join("\n")
    }
}

/// Paths (relative) under `root` whose name contains `.stagehand-`.
pub fn leftovers_under(root: &Path) -> Vec<String> {
    hash_tree(root).keys().filter(|k| k.contains(".stagehand-")).cloned().collect()
}

// ---------------------------------------------------------------------------
// Expected worlds of the demo artifact
// ---------------------------------------------------------------------------

pub fn demo_file_dest(file_name: &str) -> String {
    if file_name.ends_with(".so") {
        format!("lib/{file_name}")
    } else {
        format!("share/extension/{file_name}")
    }
}

/// Target paths (relative to DEST) that demo `ver` installs.
pub fn demo_targets_rel(ver: &str) -> BTreeSet<String> {
    let mut t = BTreeSet::from(["app".to_string()]);
    for e in fs::read_dir(demo_src(ver).join("files")).unwrap() {
        t.insert(demo_file_dest(&e.unwrap().file_name().to_string_lossy()));
    }
    t
}

pub fn demo_targets_abs(dest: &Path, ver: &str) -> BTreeSet<String> {
    demo_targets_rel(ver).iter().map(|r| dest.join(r).to_string_lossy().into_owned()).collect()
}

/// `base` without anything a demo version installs.
pub fn without_demo(base: &Tree) -> Tree {
    let mut rels = BTreeSet::new();
    for ver in ["v1", "v2"] {
        rels.extend(demo_targets_rel(ver));
    }
    base.iter()
        .filter(|(k, _)| !rels.iter().any(|r| *k == r || k.starts_with(&format!("{r}/"))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The world `base` becomes once demo `ver` is installed over it.
pub fn demo_world(base: &Tree, ver: Option<&str>) -> Tree {
    let mut w = without_demo(base);
    if let Some(ver) = ver {
        let src = demo_src(ver);
        w.insert("app".into(), Node::Dir);
        for (rel, node) in hash_tree(&src.join("app")) {
            w.insert(format!("app/{rel}"), node);
        }
        for e in fs::read_dir(src.join("files")).unwrap() {
            let e = e.unwrap();
            w.insert(demo_file_dest(&e.file_name().to_string_lossy()), node_of(&e.path()).unwrap());
        }
        let keys: Vec<String> = w.keys().cloned().collect();
        for k in keys {
            let mut p = k.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                w.entry(parent.to_string()).or_insert(Node::Dir);
                p = parent;
            }
        }
    }
    w
}

/// Drops empty `lib`, `share`, `share/extension` directories: whether an
/// empty parent directory survives a rollback is not part of the claim.
pub fn normalize(w: &Tree) -> Tree {
    let mut out = w.clone();
    loop {
        let empty: Vec<String> = out
            .iter()
            .filter(|(k, v)| {
                **v == Node::Dir
                    && matches!(k.as_str(), "lib" | "share" | "share/extension")
                    && !out.keys().any(|o| o.starts_with(&format!("{k}/")))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if empty.is_empty() {
            return out;
        }
        for k in empty {
            out.remove(&k);
        }
    }
}

/// Which demo version (if any) `actual` is, among `candidates` (version →
/// expected world), after [`normalize`].
pub fn which_world<'a>(actual: &Tree, candidates: &[(Option<&'a str>, &Tree)]) -> Result<Option<&'a str>, String> {
    let a = normalize(actual);
    for (v, w) in candidates {
        if a == normalize(w) {
            return Ok(*v);
        }
    }
    let mut msg = String::from("the world is none of the expected ones");
    for (v, w) in candidates {
        msg.push_str(&format!("\nvs {v:?}:\n{}", tree_diff(&a, &normalize(w), 12)));
    }
    Err(msg)
}

// ---------------------------------------------------------------------------
// list / status output
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub digest: String,
    pub targets: BTreeSet<String>,
}

/// Parses `list --json` output.
pub fn parse_list(run: &Run) -> Result<BTreeMap<String, Listed>, String> {
    if !run.success() {
        return Err(format!("list failed:\n{}", run.describe()));
    }
    let v = run.json()?;
    let arr = v.as_array().ok_or_else(|| format!("list --json is not an array: {v}"))?;
    let mut out = BTreeMap::new();
    for p in arr {
        let name = p["name"].as_str().ok_or("no name")?.to_string();
        let digest = p["digest"].as_str().ok_or("no digest")?.to_string();
        let targets =
            p["targets"].as_array().ok_or("no targets")?.iter().map(|t| t.as_str().unwrap_or("").to_string()).collect();
        if out.insert(name.clone(), Listed { name: name.clone(), digest, targets }).is_some() {
            return Err(format!("package {name} listed twice"));
        }
    }
    Ok(out)
}

/// Checks that `listed` (the registry entry of a package, or None) agrees
/// with demo version `ver` installed under `dest`.
pub fn registry_matches(listed: Option<&Listed>, dest: &Path, ver: Option<&str>) -> Result<(), String> {
    match (ver, listed) {
        (None, None) => Ok(()),
        (None, Some(p)) => Err(format!("nothing installed on disk, but the registry lists {p:?}")),
        (Some(v), None) => Err(format!("demo {v} on disk, but the registry lists nothing")),
        (Some(v), Some(p)) => {
            if p.digest != demo_digest(v) {
                return Err(format!("demo {v} on disk, but the registry lists digest {}", p.digest));
            }
            if p.targets != demo_targets_abs(dest, v) {
                return Err(format!("demo {v} on disk, but the registry lists targets {:?}", p.targets));
            }
            Ok(())
        }
    }
}

/// The `pending` array of `status --json`.
pub fn pending_of(status: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    status["pending"].as_array().cloned().ok_or_else(|| format!("status --json has no `pending` array: {status}"))
}

/// Reads a kill-point trace file into (point, occurrence) pairs, in order.
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

/// A small deterministic PRNG (splitmix64) so runs can be replayed by seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn from_env(var: &str, default: u64) -> Rng {
        Rng(std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Reads an env var as a number, with a default.
pub fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Small OCI layouts built on the fly
// ---------------------------------------------------------------------------

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hexd = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hexd), bytes).unwrap();
    (format!("sha256:{hexd}"), bytes.len())
}

/// One version of a file layout: its tag and its (title, bytes) files.
pub type FileVersion<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);

/// Writes an OCI layout at `out` with one manifest per `(tag, files)`, each
/// file one title-annotated `application/octet-stream` layer (so each file
/// becomes one file target, placed by `--map GLOB=DIR`).
pub fn make_file_layout(out: &Path, versions: &[FileVersion]) {
    let versions: Vec<_> = versions.iter().map(|(t, f)| (*t, None, f.clone())).collect();
    make_layout(out, &versions);
}

/// An uncompressed tar of regular files `(relative path, bytes)`, mode 0644,
/// parent directories first.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (rel, _) in files {
        let mut p = Path::new(rel).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (rel, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, rel, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// One version of a layout: its tag, an optional tar layer, its (title, bytes) files.
pub type LayoutVersion<'a> = (&'a str, Option<Vec<u8>>, Vec<(&'a str, Vec<u8>)>);

/// Like [`make_file_layout`], with an optional uncompressed tar layer first
/// in each manifest (placed by `--to DIR`), as the demo has.
pub fn make_layout(out: &Path, versions: &[LayoutVersion]) {
    remove_if_exists(out);
    fs::create_dir_all(out).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (cfg, cfg_size) = put_blob(out, b"{}");
    let mut index = Vec::new();
    for (tag, tar, files) in versions {
        let mut layers: Vec<serde_json::Value> = Vec::new();
        if let Some(tar) = tar {
            let (d, s) = put_blob(out, tar);
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                "size": s}));
        }
        layers.extend(files.iter().map(|(title, bytes)| {
            let (d, s) = put_blob(out, bytes);
            serde_json::json!({"mediaType": "application/octet-stream", "digest": d, "size": s,
                "annotations": {"org.opencontainers.image.title": title}})
        }));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg, "size": cfg_size},
            "layers": layers,
        });
        let (d, s) = put_blob(out, &serde_json::to_vec(&manifest).unwrap());
        index.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d,
            "size": s, "annotations": {"org.opencontainers.image.ref.name": tag}}));
    }
    let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index});
    fs::write(out.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// Waits until no open file description of this process (or of a child
/// forked by another test thread and not yet exec'd) holds sled's lock on
/// `journal/db`: sled releases its lock when its last background reference
/// goes away, which can be a moment after the `Db` is dropped.
pub fn wait_sled_unlocked(journal: &Path) {
    use std::os::fd::AsRawFd;
    let db = journal.join("db");
    let t0 = std::time::Instant::now();
    loop {
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&db) else { return };
        // SAFETY: flock on a valid fd we own; released by closing it.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "sled's lock on {} never released", db.display());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
