//! Sandboxes: a state dir and a destination side by side in a fresh
//! temporary directory, the binary run against them, cheap snapshots, and
//! what `list --json` / `status --json` say.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use super::demo::{demo_install_args, demo_source};
use super::run::{run_bin, Run};
use super::tree::{copy_tree, hash_tree, leftovers_under, remove_if_exists, Tree};

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

/// A package as `list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPackage {
    pub name: String,
    pub digest: String,
    pub source: String,
    pub targets: BTreeSet<String>,
}

/// One entry of `list --json`, or what is wrong with it.
pub fn listed_package(p: &serde_json::Value) -> Result<ListedPackage, String> {
    let text = |field: &str| p[field].as_str().map(str::to_string).ok_or_else(|| format!("no {field}: {p}"));
    let targets = p["targets"]
        .as_array()
        .ok_or_else(|| format!("list entry has no targets array: {p}"))?
        .iter()
        .map(|t| t.as_str().map(str::to_string).ok_or_else(|| format!("target is not a string: {p}")))
        .collect::<Result<_, _>>()?;
    Ok(ListedPackage { name: text("name")?, digest: text("digest")?, source: text("source")?, targets })
}

#[track_caller]
pub fn package_in_list(list: &[serde_json::Value], name: &str) -> Option<ListedPackage> {
    let mut found = list.iter().filter(|p| p["name"].as_str() == Some(name));
    let p = found.next()?;
    assert!(found.next().is_none(), "package {name} listed twice: {list:?}");
    Some(listed_package(p).unwrap_or_else(|e| panic!("{e}")))
}

/// The `pending` array of `status --json`, or what is wrong with it.
pub fn try_pending_of(status: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    status["pending"].as_array().cloned().ok_or_else(|| format!("status --json has no `pending` array: {status}"))
}

/// The `pending` array of `status --json`.
#[track_caller]
pub fn pending_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    try_pending_of(status).unwrap_or_else(|e| panic!("{e}"))
}
