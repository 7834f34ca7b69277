//! Property test of `stagehand apply` over random desired sets, read back
//! with the tests' own tree hasher.
//!
//! Three packages (`p0`, `p1`, `p2`), each an OCI layout built here with
//! three versions that differ in content and in their target sets (a tar
//! tree placed with `to`, and title-annotated `*.conf` files mapped to a
//! directory: v1 has `a.conf`, v2 `a.conf` and `b.conf`, v3 only `c.conf`).
//! Two desired-state files (`f0.toml`, `f1.toml`) share one state dir.
//! Each case is a sequence of 2–4 steps; a step either writes a random
//! desired set (each package absent, or at a random version and placement:
//! its tree at `pN/app` or `pN/moved/app`, so a changed placement is a
//! move) into one of the files and applies it with or without `--prune`
//! (always `--yes`, which a move or removal needs without a terminal), in
//! some steps crashing the apply (SIGABRT, as SIGKILL would) at a random
//! kill point of that apply's own trace, then running `repair`; or installs
//! one package by hand at its recorded placement; or adopts a user's
//! directory (distinct modes and mtimes) with `install --adopt` and rolls
//! it back, either run possibly crashed likewise (see `World::adopt` for
//! what is checked: exactly the user's directory or exactly the package's
//! version, never a mix). After every step:
//! - DEST, hashed with `std::fs` only, is exactly the union of the trees of
//!   the versions the state says, each at its placement (nothing else: no
//!   staging, no backup, no file of a removed target or of the placement
//!   a package moved from; only empty parent directories may remain);
//! - that state is the desired one, or after a crash possibly the previous
//!   one, for EVERY package at once. The model is scoped to files: a
//!   package records the file that last installed or changed it (a hand
//!   install keeps it), and `--prune` uninstalls only the unlisted packages
//!   of the applied file (another file's, and hand-installed ones, stay);
//! - `list --json` shows the same set (names, digests, targets, and the
//!   `managed_by` file of each);
//! - `verify` is clean, and nothing is pending.
//!
//! Cases: `PROPTEST_CASES` (default 32). Long campaign:
//! `PROPTEST_CASES=500 cargo test --release --test apply_prop -- --nocapture`.
//! A failure shrinks to a short sequence, printed by proptest.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use common::proof::*;
use common::sandbox::{fast_tempdir, Sandbox};
use proptest::prelude::*;

const PKGS: usize = 3;
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
const FILES: usize = 2;

/// Where a package's tree goes: `pN/app` or, moved, `pN/moved/app`.
const PLACES: [&str; 2] = ["app", "moved/app"];

/// Package index → (version index, placement index).
type State = BTreeMap<usize, (usize, usize)>;

/// Package index → (version index, placement index, the file that manages
/// it; `None`: by hand).
type Model = BTreeMap<usize, (usize, usize, Option<usize>)>;

fn versions(m: &Model) -> State {
    m.iter().map(|(p, (v, at, _))| (*p, (*v, *at))).collect()
}

#[derive(Debug, Clone)]
enum Step {
    Apply {
        /// Which desired-state file.
        file: usize,
        desired: State,
        prune: bool,
        /// Crash at the (seed mod trace length)-th kill point of the apply.
        crash: Option<u32>,
    },
    /// `install` of one package by hand, at its recorded placement.
    Hand { pkg: usize, ver: usize },
    /// `install --adopt` of package `pkg` at `ver` (named `aI`, I the step)
    /// over a user's directory outside DEST, then `rollback aI`; each run
    /// crashed at its (seed mod trace length)-th kill point, or not.
    Adopt { pkg: usize, ver: usize, crash_install: Option<u32>, crash_rollback: Option<u32> },
}

fn step() -> impl Strategy<Value = Step> {
    let apply = (
        0..FILES,
        proptest::collection::vec(
            proptest::option::of((0..VERSIONS.len(), proptest::bool::weighted(0.3).prop_map(usize::from))),
            PKGS,
        ),
        any::<bool>(),
        proptest::option::weighted(0.4, any::<u32>()),
    )
        .prop_map(|(file, vers, prune, crash)| Step::Apply {
            file,
            desired: vers.iter().enumerate().filter_map(|(p, v)| v.map(|v| (p, v))).collect(),
            prune,
            crash,
        });
    let hand = (0..PKGS, 0..VERSIONS.len()).prop_map(|(pkg, ver)| Step::Hand { pkg, ver });
    let adopt = (
        0..PKGS,
        0..VERSIONS.len(),
        proptest::option::weighted(0.5, any::<u32>()),
        proptest::option::weighted(0.5, any::<u32>()),
    )
        .prop_map(|(pkg, ver, crash_install, crash_rollback)| Step::Adopt {
            pkg,
            ver,
            crash_install,
            crash_rollback,
        });
    prop_oneof![5 => apply, 1 => hand, 1 => adopt]
}

/// The model after `s` succeeds from `old`.
fn after(old: &Model, s: &Step) -> Model {
    let mut new = old.clone();
    match s {
        Step::Apply { file, desired, prune, .. } => {
            if *prune {
                new.retain(|p, (_, _, owner)| desired.contains_key(p) || *owner != Some(*file));
            }
            for (p, (v, at)) in desired {
                // Already as desired: left alone, its manager too. Another
                // version or placement (a move): this file manages it now.
                if old.get(p).map(|(ov, oat, _)| (ov, oat)) != Some((v, at)) {
                    new.insert(*p, (*v, *at, Some(*file)));
                }
            }
        }
        Step::Hand { pkg, ver } => {
            let (at, owner) = old.get(pkg).map_or((0, None), |(_, at, o)| (*at, *o));
            new.insert(*pkg, (*ver, at, owner));
        }
        // The adopted package is not one of the `pN`: checked on its own.
        Step::Adopt { .. } => {}
    }
    new
}

/// One version's tar tree (relative path, bytes) and its title-annotated
/// files (title, bytes).
type VersionFiles = (Vec<(String, Vec<u8>)>, Vec<(&'static str, Vec<u8>)>);

/// One version of one package: its files.
fn version_files(pkg: usize, ver: usize) -> VersionFiles {
    let tag = VERSIONS[ver];
    let mut tree = vec![
        ("bin/tool".to_string(), format!("p{pkg} tool {tag}\n").into_bytes()),
        // The same bytes in every version: an upgrade still replaces the tree.
        ("share/doc.txt".to_string(), format!("p{pkg} documentation\n").into_bytes()),
    ];
    if ver == 2 {
        tree.push(("share/extra/new.txt".to_string(), format!("p{pkg} new in v3\n").into_bytes()));
        tree.retain(|(p, _)| p != "bin/tool");
    }
    let titles: &[&'static str] = match ver {
        0 => &["a.conf"],
        1 => &["a.conf", "b.conf"],
        _ => &["c.conf"],
    };
    let files = titles.iter().map(|t| (*t, format!("p{pkg} {t} {tag}\n").into_bytes())).collect();
    (tree, files)
}

static LAYOUTS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// Builds every package's layout under `dir`, once for the test binary.
fn build_layouts(dir: &Path) {
    let dirs = (0..PKGS)
        .map(|pkg| {
            let out = dir.join(format!("layout-p{pkg}"));
            let versions: Vec<LayoutVersion> = (0..VERSIONS.len())
                .map(|v| {
                    let (tree, files) = version_files(pkg, v);
                    (VERSIONS[v], Some(tar_of(&tree)), files)
                })
                .collect();
            make_layout(&out, &versions);
            out
        })
        .collect();
    LAYOUTS.set(dirs).expect("layouts built once");
}

fn layout(pkg: usize) -> &'static Path {
    &LAYOUTS.get().expect("layouts built")[pkg]
}

fn digest_of(pkg: usize, ver: usize) -> String {
    layout_tag_digest(layout(pkg), VERSIONS[ver])
}

/// What package `pkg` at `ver` leaves under `dest` when its tree goes to
/// `dest/TO` and its mapped files to `dest/ETC`, computed from the bytes
/// the layout was built from, and its targets (absolute).
fn placed_tree(dest: &Path, pkg: usize, ver: usize, to: &str, etc: &str) -> (Tree, BTreeSet<String>) {
    let (tree, files) = version_files(pkg, ver);
    let mut w = Tree::new();
    let file = |b: &[u8]| Node::File { sha256: sha256_hex(b), exec: false, len: b.len() as u64 };
    w.insert(to.to_string(), Node::Dir);
    for (rel, bytes) in &tree {
        w.insert(format!("{to}/{rel}"), file(bytes));
    }
    let mut targets = BTreeSet::from([dest.join(to).display().to_string()]);
    for (title, bytes) in &files {
        w.insert(format!("{etc}/{title}"), file(bytes));
        targets.insert(dest.join(format!("{etc}/{title}")).display().to_string());
    }
    add_ancestors(&mut w);
    (w, targets)
}

/// What package `pkg` at `ver`, placed at `PLACES[at]`, leaves under DEST.
fn expected_tree(dest: &Path, pkg: usize, (ver, at): (usize, usize)) -> (Tree, BTreeSet<String>) {
    placed_tree(dest, pkg, ver, &format!("p{pkg}/{}", PLACES[at]), &format!("p{pkg}/etc"))
}

fn expected_world(dest: &Path, state: &State) -> Tree {
    state.iter().flat_map(|(p, v)| expected_tree(dest, *p, *v).0).collect()
}

/// DEST as hashed, without the empty parent directories (`pN`, `pN/etc`)
/// an uninstall may leave: whether they stay is not part of the claim.
fn actual_world(dest: &Path) -> Tree {
    let mut w = hash_tree(dest);
    loop {
        let empty: Vec<String> = w
            .iter()
            .filter(|(k, v)| {
                **v == Node::Dir
                    && (0..PKGS).any(|p| [format!("p{p}"), format!("p{p}/etc"), format!("p{p}/moved")].contains(k))
                    && !w.keys().any(|o| o.starts_with(&format!("{k}/")))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if empty.is_empty() {
            return w;
        }
        for k in empty {
            w.remove(&k);
        }
    }
}

static STEPS: AtomicU64 = AtomicU64::new(0);
static CRASHES: AtomicU64 = AtomicU64::new(0);
static HANDS: AtomicU64 = AtomicU64::new(0);
static ADOPTS: AtomicU64 = AtomicU64::new(0);
static ADOPT_CRASHES: AtomicU64 = AtomicU64::new(0);
static MOVES: AtomicU64 = AtomicU64::new(0);
static ENDED_OLD: AtomicU64 = AtomicU64::new(0);
static ENDED_NEW: AtomicU64 = AtomicU64::new(0);
static CASES: AtomicU64 = AtomicU64::new(0);

struct World {
    _tmp: tempfile::TempDir,
    sb: Sandbox,
    /// The desired-state files, `cfg/f0.toml` and `cfg/f1.toml`.
    files: Vec<PathBuf>,
    snap: PathBuf,
    model: Model,
}

/// `install SOURCE --name NAME --to TO --map *.conf=ETC` of `pkg` at `ver`.
fn hand_install(pkg: usize, ver: usize, name: &str, to: &Path, etc: &Path) -> Vec<OsString> {
    vec![
        "install".into(),
        format!("oci-layout:{}:{}", layout(pkg).display(), VERSIONS[ver]).into(),
        "--name".into(),
        name.into(),
        "--to".into(),
        to.into(),
        "--map".into(),
        format!("*.conf={}", etc.display()).into(),
    ]
}

impl World {
    fn new() -> World {
        let tmp = fast_tempdir();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let sb = Sandbox::at(root.join("work"));
        let cfg = root.join("cfg");
        fs::create_dir_all(&cfg).unwrap();
        let files = (0..FILES).map(|f| cfg.join(format!("f{f}.toml"))).collect();
        World { sb, files, snap: root.join("snap"), _tmp: tmp, model: Model::new() }
    }

    fn cfg(&self) -> PathBuf {
        self.files[0].parent().unwrap().to_path_buf()
    }

    fn write_desired(&self, file: usize, desired: &State) {
        let mut body = String::new();
        for (p, (v, at)) in desired {
            let d = self.sb.dest.join(format!("p{p}"));
            body.push_str(&format!(
                "[package.p{p}]\nref = \"oci-layout:{}:{}\"\nto = \"{}/{}\"\nmap = [\"*.conf={}/etc\"]\n\n",
                layout(*p).display(),
                VERSIONS[*v],
                d.display(),
                PLACES[*at],
                d.display()
            ));
        }
        fs::write(&self.files[file], body).unwrap();
    }

    fn args(&self, s: &Step) -> Vec<OsString> {
        match s {
            Step::Apply { file, prune, .. } => {
                let mut a: Vec<OsString> =
                    vec!["apply".into(), "--yes".into(), "--file".into(), self.files[*file].clone().into()];
                if *prune {
                    a.push("--prune".into());
                }
                a
            }
            Step::Hand { pkg, ver } => {
                let d = self.sb.dest.join(format!("p{pkg}"));
                let at = self.model.get(pkg).map_or(0, |(_, at, _)| *at);
                hand_install(*pkg, *ver, &format!("p{pkg}"), &d.join(PLACES[at]), &d.join("etc"))
            }
            Step::Adopt { .. } => unreachable!("an adopt step runs two commands: see World::adopt"),
        }
    }

    /// The kill points the apply passes from the current state (run traced,
    /// then STATE, DEST and the config dir with the lock files are put back).
    fn trace(&self, args: &[OsString]) -> Vec<(String, u32)> {
        self.sb.save_to(&self.snap);
        // The config dir too: the lock files, and a temporary beside one that
        // a crash while writing it left (the traced run removes it, and the
        // replay must find it again).
        let cfg = self.cfg();
        let files_of = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| (p.clone(), fs::read(&p).unwrap())).collect()
        };
        let cfg_before = files_of(&cfg);
        let trace = self.snap.with_file_name("trace.txt");
        remove_if_exists(&trace);
        self.sb.run_env(args, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
        self.sb.restore_from(&self.snap);
        for (p, _) in files_of(&cfg) {
            remove_if_exists(&p);
        }
        for (p, bytes) in cfg_before {
            fs::write(p, bytes).unwrap();
        }
        read_trace(&trace)
    }

    /// Runs `args` killed at `point`, then `repair`.
    fn kill_and_repair(&self, args: &[OsString], (pt, n): &(String, u32)) -> Result<Run, String> {
        let spec = format!("{pt}:{n}");
        let run = self.sb.run_env(args, &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        if run.signal != Some(libc::SIGABRT) {
            return Err(format!("did not crash at its kill point:\n{}", run.describe()));
        }
        let repair = self.sb.run(&["repair"]);
        if !repair.success() {
            return Err(format!("repair failed:\n{}", repair.describe()));
        }
        Ok(run)
    }

    /// The kill point `seed` picks from the trace of `args`, and `reset`
    /// run after the traced run (which STATE and DEST are put back from).
    fn pick_point(&self, args: &[OsString], seed: u32, reset: impl FnOnce()) -> Option<(String, u32)> {
        let pairs = self.trace(args);
        reset();
        (!pairs.is_empty()).then(|| pairs[seed as usize % pairs.len()].clone())
    }

    /// The adopt step: a user's directory `adopt/aI/app` (outside DEST) is
    /// adopted by `aI` (`pkg` at `ver`, mapped files to `adopt/aI/etc`),
    /// then rolled back, either run possibly killed and repaired. After
    /// each, `adopt/aI` holds exactly the user's directory (bytes, modes,
    /// mtimes; `etc` at most an empty directory) with `aI` not installed
    /// or installed at its adopted version, or exactly the package's
    /// version with `aI` listed at it; never a mix, and never `.stagehand-`
    /// leftovers. A run that is not killed must succeed and leave the new one.
    fn adopt(
        &self,
        i: usize,
        pkg: usize,
        ver: usize,
        crash_install: Option<u32>,
        crash_rollback: Option<u32>,
    ) -> Result<(), String> {
        let name = format!("a{i}");
        let base = self.cfg().with_file_name("adopt").join(&name);
        let (app, etc) = (base.join("app"), base.join("etc"));
        let make_user = || {
            remove_if_exists(&base);
            user_tree(&app);
        };
        make_user();
        let before = exact_tree(&app);
        let pkg_tree = placed_tree(&base, pkg, ver, "app", "etc").0;
        // Which of the two `base` holds: `Ok(true)` the package's version.
        let holds = |ctx: &str| -> Result<bool, String> {
            let leftovers = leftovers_under(&base);
            if !leftovers.is_empty() {
                return Err(format!("{ctx}: leftovers {leftovers:?}"));
            }
            let all = hash_tree(&base);
            if all == pkg_tree {
                return Ok(true);
            }
            let now = exact_tree(&app);
            let others: Vec<&String> =
                all.keys().filter(|k| *k != "app" && !k.starts_with("app/") && *k != "etc").collect();
            if now == before && others.is_empty() {
                return Ok(false);
            }
            Err(format!(
                "{ctx}: {} is neither the user's directory nor the package's version\nvs the user's:\n{}entries \
                 beside it: {others:?}\nvs the package's:\n{}",
                base.display(),
                exact_diff(&now, &before),
                tree_diff(&all, &pkg_tree, 20)
            ))
        };
        let listed = |ctx: &str| -> Result<Option<Listed>, String> {
            let status = self.sb.run(&["status", "--json"]);
            let pending = pending_of(&status.try_json()?)?;
            if !pending.is_empty() {
                return Err(format!("{ctx}: pending after repair: {pending:?}"));
            }
            Ok(parse_list(&self.sb.run(&["list", "--json"]))?.remove(&name))
        };

        let install = {
            let mut a = hand_install(pkg, ver, &name, &app, &etc);
            a.push("--adopt".into());
            a
        };
        let point = crash_install.and_then(|seed| self.pick_point(&install, seed, make_user));
        let run = match &point {
            Some(point) => {
                ADOPT_CRASHES.fetch_add(1, Ordering::Relaxed);
                self.kill_and_repair(&install, point)?
            }
            None => self.sb.run(&install),
        };
        let ctx = format!("install --adopt (crash at {point:?})");
        let is_pkg = holds(&ctx).map_err(|e| format!("{e}\n{}", run.describe()))?;
        match listed(&ctx)? {
            None if !is_pkg && point.is_some() => return Ok(()),
            Some(l) if is_pkg && l.digest == digest_of(pkg, ver) => {}
            l => {
                return Err(format!("{ctx}: listed as {l:?}, the disk holds the package: {is_pkg}\n{}", run.describe()))
            }
        }

        let rollback: Vec<OsString> = vec!["rollback".into(), name.clone().into()];
        let installed = self.cfg().with_file_name("adopt-installed");
        let point = crash_rollback.and_then(|seed| {
            replace_with_copy(&base, &installed);
            self.pick_point(&rollback, seed, || replace_with_copy(&installed, &base))
        });
        let run = match &point {
            Some(point) => {
                ADOPT_CRASHES.fetch_add(1, Ordering::Relaxed);
                self.kill_and_repair(&rollback, point)?
            }
            None => self.sb.run(&rollback),
        };
        let ctx = format!("rollback {name} (crash at {point:?})");
        let is_pkg = holds(&ctx).map_err(|e| format!("{e}\n{}", run.describe()))?;
        match listed(&ctx)? {
            Some(l) if is_pkg && point.is_some() && l.digest == digest_of(pkg, ver) => Ok(()),
            Some(l) if !is_pkg && l.source.starts_with("adopted:") => Ok(()),
            l => Err(format!("{ctx}: listed as {l:?}, the disk holds the package: {is_pkg}\n{}", run.describe())),
        }
    }

    /// Checks DEST, the registry and `verify` against `old` or `new` (the
    /// same one for every package); returns which.
    fn check(&self, old: &Model, new: &Model) -> Result<Which, String> {
        let status = self.sb.run(&["status", "--json"]);
        if !status.success() {
            return Err(format!("status failed:\n{}", status.describe()));
        }
        let pending = pending_of(&status.try_json()?)?;
        if !pending.is_empty() {
            return Err(format!("pending after repair: {pending:?}"));
        }
        let dest = &self.sb.dest;
        let leftovers = self.sb.leftovers();
        if !leftovers.is_empty() {
            return Err(format!("leftovers in DEST: {leftovers:?}"));
        }
        let actual = actual_world(dest);
        let (vold, vnew) = (versions(old), versions(new));
        let which = if actual == expected_world(dest, &vnew) {
            Which::New
        } else if actual == expected_world(dest, &vold) {
            Which::Old
        } else {
            return Err(format!(
                "DEST is neither the old set {old:?} nor the new set {new:?}\nvs old:\n{}\nvs new:\n{}",
                tree_diff(&actual, &expected_world(dest, &vold), 20),
                tree_diff(&actual, &expected_world(dest, &vnew), 20)
            ));
        };
        // Old and new may hold the same versions with other managers.
        let model = if which == Which::New { new } else { old };
        let list = self.sb.run(&["list", "--json"]);
        let listed = parse_list(&list)?;
        let names: BTreeSet<String> = model.keys().map(|p| format!("p{p}")).collect();
        // The adopted packages (`aI`) are checked by `World::adopt`.
        if listed.keys().filter(|k| k.starts_with('p')).cloned().collect::<BTreeSet<_>>() != names {
            return Err(format!("DEST holds {names:?} but list shows {:?}", listed.keys()));
        }
        let managers: BTreeMap<String, serde_json::Value> = list
            .try_json()?
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p["managed_by"].clone()))
            .collect();
        for (p, (v, at, owner)) in model {
            let l = &listed[&format!("p{p}")];
            if l.digest != digest_of(*p, *v) {
                return Err(format!("p{p} is {} on disk, list shows digest {}", VERSIONS[*v], l.digest));
            }
            if l.targets != expected_tree(dest, *p, (*v, *at)).1 {
                return Err(format!("p{p} {} at {}: list shows targets {:?}", VERSIONS[*v], PLACES[*at], l.targets));
            }
            let want = owner.map_or(serde_json::Value::Null, |f| self.files[f].display().to_string().into());
            if managers[&format!("p{p}")] != want {
                return Err(format!("p{p}: managed_by is {}, the model says {want}", managers[&format!("p{p}")]));
            }
        }
        let verify = self.sb.run(&["verify"]);
        if !verify.success() {
            return Err(format!("verify is not clean:\n{}", verify.describe()));
        }
        Ok(which)
    }

    fn step(&mut self, i: usize, s: &Step) -> Result<(), String> {
        STEPS.fetch_add(1, Ordering::Relaxed);
        let old = self.model.clone();
        let new = after(&old, s);
        let crash_seed = match s {
            Step::Apply { file, desired, crash, .. } => {
                self.write_desired(*file, desired);
                *crash
            }
            Step::Hand { .. } => {
                HANDS.fetch_add(1, Ordering::Relaxed);
                None
            }
            Step::Adopt { pkg, ver, crash_install, crash_rollback } => {
                ADOPTS.fetch_add(1, Ordering::Relaxed);
                let ctx = format!("step {i} ({s:?}, from {old:?})");
                self.adopt(i, *pkg, *ver, *crash_install, *crash_rollback).map_err(|e| format!("{ctx}: {e}"))?;
                // The `pN` are untouched, and `verify` covers `aI` too.
                return self.check(&old, &old).map(|_| ()).map_err(|e| format!("{ctx}: {e}"));
            }
        };
        let args = self.args(s);
        let crash = match crash_seed {
            Some(seed) => {
                let pairs = self.trace(&args);
                (!pairs.is_empty()).then(|| pairs[seed as usize % pairs.len()].clone())
            }
            None => None,
        };
        let ctx = format!("step {i} ({s:?}, from {old:?}, crash at {crash:?})");
        if let Step::Apply { desired, .. } = s {
            if desired.iter().any(|(p, (_, at))| old.get(p).is_some_and(|(_, oat, _)| oat != at)) {
                MOVES.fetch_add(1, Ordering::Relaxed);
            }
        }
        let run = match &crash {
            Some(point) => {
                CRASHES.fetch_add(1, Ordering::Relaxed);
                self.kill_and_repair(&args, point).map_err(|e| format!("{ctx}: {e}"))?
            }
            None => {
                let run = self.sb.run(&args);
                if !run.success() {
                    return Err(format!("{ctx}: {} failed:\n{}", args[0].to_string_lossy(), run.describe()));
                }
                let is_apply = matches!(s, Step::Apply { .. });
                if is_apply && old == new && !run.stdout.contains("nothing to do") {
                    return Err(format!("{ctx}: nothing to do, but it did not say so:\n{}", run.describe()));
                }
                run
            }
        };
        let which = self.check(&old, &new).map_err(|e| format!("{ctx}: {e}\n{}", run.describe()))?;
        if run.success() && which != Which::New && versions(&old) != versions(&new) {
            return Err(format!("{ctx}: exited 0 but the old set is installed"));
        }
        if which == Which::New {
            ENDED_NEW.fetch_add(1, Ordering::Relaxed);
            self.model = new;
        } else {
            ENDED_OLD.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn run_sequence(steps: &[Step]) -> Result<(), TestCaseError> {
    CASES.fetch_add(1, Ordering::Relaxed);
    let mut w = World::new();
    for (i, s) in steps.iter().enumerate() {
        w.step(i, s).map_err(|e| TestCaseError::fail(format!("{e}\nsequence: {steps:?}")))?;
    }
    Ok(())
}

#[test]
fn random_desired_sets_with_crashes() {
    let cases = env_num("PROPTEST_CASES", 32) as u32;
    let config =
        ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 100, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let t0 = std::time::Instant::now();
    let layouts = tempdir();
    build_layouts(&fs::canonicalize(layouts.path()).unwrap());
    let result = runner.run(&proptest::collection::vec(step(), 2..=4), |steps| run_sequence(&steps));
    println!(
        "apply proptest: {} cases run (incl. shrinking), {} steps ({} hand installs; {} adopt-then-rollback, {} of \
         their runs crashed; {} applies moved a package; {} applies crashed at a kill point, then repaired); ended \
         on the new set {} / the old set {} times; {:.1}s",
        CASES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed),
        HANDS.load(Ordering::Relaxed),
        ADOPTS.load(Ordering::Relaxed),
        ADOPT_CRASHES.load(Ordering::Relaxed),
        MOVES.load(Ordering::Relaxed),
        CRASHES.load(Ordering::Relaxed),
        ENDED_NEW.load(Ordering::Relaxed),
        ENDED_OLD.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(CASES.load(Ordering::Relaxed) >= cases as u64);
    assert!(CRASHES.load(Ordering::Relaxed) > 0, "no step crashed");
}
