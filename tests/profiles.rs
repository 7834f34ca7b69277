//! Steampipe profiles (`--profile steampipe-db|steampipe-fdw|steampipe-plugin`)
//! against the example layouts `examples/steampipe-{db,fdw,plugin}` (tags v1
//! and v2, built by `scripts/make-steampipe-examples.sh` from
//! `examples/src/steampipe/<kind>/<ver>/`).
//!
//! - Crash matrices, the method of tests/crash_matrix.rs: trace the operation
//!   once with STAGEHAND_TRACE_POINTS, then crash it at every traced
//!   (point, occurrence), recover with `status --json`, and check with the
//!   independent tree hasher that the install dir holds exactly the old or
//!   exactly the new world across every target, that nothing is pending or
//!   left over, that `list --json` agrees and that `verify` passes. Scenarios:
//!   the FDW upgrade (three file targets inside the db dir that must switch
//!   together, Steampipe's issue #4758), the db upgrade with the FDW installed
//!   inside it (the FDW's files are carried over into the new `postgres/`
//!   whichever way the db went; recovery itself is crashed too here) and the
//!   plugin upgrade (`…@v1` removed and `…@v2` created in one transaction).
//! - `verify` after every clean install and after the db upgrade.
//! - `uninstall db` is refused while the FDW lives inside it, and so is a db
//!   `--db-version` change (it would remove the FDW's directory).
//! - Platform fallback (darwin/arm64 → darwin-amd64 plugin layer) and the
//!   error that lists the platforms an artifact has.
//!
//! The disk is only ever read through the hasher in tests/common (std::fs).

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

/// The db version directory the db example's manifest annotates.
const PG: &str = "db/14.19.0/postgres";
/// The FDW's three files and their directories inside `postgres/`.
const FDW_FILES: [(&str, &str); 3] = [
    ("steampipe_postgres_fdw.so", "lib/postgresql"),
    ("steampipe_postgres_fdw.control", "share/postgresql/extension"),
    ("steampipe_postgres_fdw--1.0.sql", "share/postgresql/extension"),
];
/// The plugin's directory, without the tag (the plugin path of a local
/// layout is `local/<layout dir name>@<tag>`).
const PLUGIN_DIR: &str = "plugins/local/steampipe-plugin@";
/// Files that belong to no package and must survive every outcome untouched.
const FOREIGN: [(&str, &[u8]); 2] = [
    ("db/14.19.0/data/PG_VERSION", b"14\n"),
    ("plugins/local/other@latest/steampipe-plugin-other.plugin", b"#!/bin/sh\necho other\n"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Db,
    Fdw,
    Plugin,
}

const KINDS: [Kind; 3] = [Kind::Db, Kind::Fdw, Kind::Plugin];

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Db => "db",
            Kind::Fdw => "fdw",
            Kind::Plugin => "plugin",
        }
    }
    fn layout(self) -> PathBuf {
        repo_root().join(format!("examples/steampipe-{}", self.word()))
    }
    fn src(self, ver: &str) -> PathBuf {
        repo_root().join("examples/src/steampipe").join(self.word()).join(ver)
    }
    fn profile(self) -> String {
        format!("steampipe-{}", self.word())
    }
    /// The package name the tests install it under.
    fn name(self) -> &'static str {
        match self {
            Kind::Db => "db",
            Kind::Fdw => "fdw",
            Kind::Plugin => "demo-plugin",
        }
    }
    fn source(self, tag: &str) -> String {
        format!("oci-layout:{}:{tag}", self.layout().display())
    }
    fn digest(self, tag: &str) -> String {
        layout_tag_digest(&self.layout(), tag)
    }
}

fn install_args(sp: &Path, kind: Kind, source: &str, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "install".into(),
        source.into(),
        "--profile".into(),
        kind.profile().into(),
        "--install-dir".into(),
        sp.into(),
        "--name".into(),
        kind.name().into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Which version of each package is installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pkgs {
    db: Option<&'static str>,
    fdw: Option<&'static str>,
    plugin: Option<&'static str>,
}

impl Pkgs {
    fn get(self, kind: Kind) -> Option<&'static str> {
        match kind {
            Kind::Db => self.db,
            Kind::Fdw => self.fdw,
            Kind::Plugin => self.plugin,
        }
    }
}

fn fdw_rel(file: &str, dir: &str) -> String {
    format!("{PG}/{dir}/{file}")
}

fn plugin_rel(ver: &str) -> String {
    format!("{PLUGIN_DIR}{ver}")
}

/// Target paths (relative to the install dir) of `kind` at `ver`.
fn targets_rel(kind: Kind, ver: &str) -> BTreeSet<String> {
    match kind {
        Kind::Db => [PG.to_string()].into(),
        Kind::Fdw => FDW_FILES.iter().map(|(f, d)| fdw_rel(f, d)).collect(),
        Kind::Plugin => [plugin_rel(ver)].into(),
    }
}

fn insert_tree(w: &mut Tree, at: &str, src: &Path) {
    w.insert(at.to_string(), Node::Dir);
    for (rel, node) in hash_tree(src) {
        w.insert(format!("{at}/{rel}"), node);
    }
}

/// The install dir `base` (foreign files only) becomes with `pkgs`
/// installed, computed straight from `examples/src/steampipe/`.
fn expected_world(base: &Tree, pkgs: Pkgs) -> Tree {
    let mut w = base.clone();
    if let Some(v) = pkgs.db {
        let src = Kind::Db.src(v);
        insert_tree(&mut w, PG, &src.join("postgres"));
        w.insert(format!("{PG}/LICENSE"), node_of(&src.join("LICENSE")).expect("db LICENSE source"));
    }
    if let Some(v) = pkgs.fdw {
        assert!(pkgs.db.is_some(), "the fdw lives inside the db");
        for (f, d) in FDW_FILES {
            w.insert(fdw_rel(f, d), node_of(&Kind::Fdw.src(v).join(f)).expect("fdw source file"));
        }
    }
    if let Some(v) = pkgs.plugin {
        insert_tree(&mut w, &plugin_rel(v), &Kind::Plugin.src(v));
    }
    add_ancestors(&mut w);
    w
}

fn write_foreign(sp: &Path) {
    for (rel, bytes) in FOREIGN {
        let p = sp.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
    }
}

/// `list --json` shows exactly `pkgs` (digests and absolute targets).
#[track_caller]
fn check_list(sb: &Sandbox, pkgs: Pkgs, ctx: &str) {
    let list = sb.list_json();
    let mut expected_names = BTreeSet::new();
    for kind in KINDS {
        let got = package_in_list(&list, kind.name());
        match (pkgs.get(kind), got) {
            (None, None) => {}
            (None, Some(p)) => panic!("{ctx}: {} is not installed on disk but list shows {p:?}", kind.name()),
            (Some(v), None) => panic!("{ctx}: {} {v} is on disk but list does not show it: {list:?}", kind.name()),
            (Some(v), Some(p)) => {
                expected_names.insert(kind.name());
                assert_eq!(
                    p.digest,
                    kind.digest(v),
                    "{ctx}: {} {v} on disk but list shows another digest",
                    kind.name()
                );
                let want: BTreeSet<String> =
                    targets_rel(kind, v).iter().map(|r| sb.dest.join(r).to_string_lossy().into_owned()).collect();
                assert_eq!(p.targets, want, "{ctx}: {} {v} on disk but list shows other targets", kind.name());
            }
        }
    }
    let names: BTreeSet<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, expected_names, "{ctx}: list shows other packages: {list:?}");
}

/// `verify NAME` exits 0 for every installed package.
#[track_caller]
fn check_verify(sb: &Sandbox, pkgs: Pkgs, ctx: &str) {
    for kind in KINDS {
        if pkgs.get(kind).is_some() {
            let run = sb.run(&["verify", kind.name()]);
            assert!(run.success(), "{ctx}: verify {} failed:\n{}", kind.name(), run.describe());
        }
    }
}

/// The FDW's three files inside `postgres/` are byte-identical to fdw `ver`'s
/// sources, with the modes the profile gives them.
#[track_caller]
fn check_fdw_files(sp: &Path, ver: &str, ctx: &str) {
    for (f, d) in FDW_FILES {
        let p = sp.join(fdw_rel(f, d));
        let got = node_of(&p).unwrap_or_else(|| panic!("{ctx}: {} is missing", p.display()));
        let want = node_of(&Kind::Fdw.src(ver).join(f)).unwrap();
        assert_eq!(got, want, "{ctx}: {} is not fdw {ver}'s {f}", p.display());
    }
}

#[track_caller]
fn assert_mode(p: &Path, mode: u32) {
    let m =
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).permissions().mode() & 0o7777;
    assert_eq!(m, mode, "{}: mode {m:o}, expected {mode:o}", p.display());
}

// ---------------------------------------------------------------------------
// Crash matrices
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    before: Pkgs,
    /// The package installed by the operation, and its tag.
    op: (Kind, &'static str),
    after: Pkgs,
    /// Also crash recovery at each of its own points (and recover again).
    crash_recovery: bool,
}

const FDW_UPGRADE: Scenario = Scenario {
    name: "fdw-upgrade",
    before: Pkgs { db: Some("v1"), fdw: Some("v1"), plugin: None },
    op: (Kind::Fdw, "v2"),
    after: Pkgs { db: Some("v1"), fdw: Some("v2"), plugin: None },
    crash_recovery: false,
};

const DB_UPGRADE: Scenario = Scenario {
    name: "db-upgrade-with-fdw",
    before: Pkgs { db: Some("v1"), fdw: Some("v1"), plugin: None },
    op: (Kind::Db, "v2"),
    after: Pkgs { db: Some("v2"), fdw: Some("v1"), plugin: None },
    crash_recovery: true,
};

const PLUGIN_UPGRADE: Scenario = Scenario {
    name: "plugin-upgrade",
    before: Pkgs { db: None, fdw: None, plugin: Some("v1") },
    op: (Kind::Plugin, "v2"),
    after: Pkgs { db: None, fdw: None, plugin: Some("v2") },
    crash_recovery: false,
};

struct Prepared {
    sc: Scenario,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sb: Sandbox,
    pristine: PathBuf,
    old: Tree,
    new: Tree,
    op_args: Vec<OsString>,
}

/// Installs `pkgs` (db, then fdw, then plugin) with a clean install each,
/// checking `verify` after each.
fn install_all(sb: &Sandbox, pkgs: Pkgs) {
    let mut so_far = Pkgs::default();
    for kind in KINDS {
        if let Some(v) = pkgs.get(kind) {
            sb.run(&install_args(&sb.dest, kind, &kind.source(v), &[])).ok();
            match kind {
                Kind::Db => so_far.db = Some(v),
                Kind::Fdw => so_far.fdw = Some(v),
                Kind::Plugin => so_far.plugin = Some(v),
            }
            check_verify(sb, so_far, &format!("after installing {} {v}", kind.name()));
        }
    }
}

fn prepare(sc: Scenario) -> Prepared {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let sb = Sandbox::at(root.join("work"));
    write_foreign(&sb.dest);
    let base = sb.world();
    install_all(&sb, sc.before);
    let old = sb.world();
    let expected_old = expected_world(&base, sc.before);
    assert!(
        old == expected_old,
        "[{}] prepared world is not the expected one:\n{}",
        sc.name,
        tree_diff(&old, &expected_old, 25)
    );
    let new = expected_world(&base, sc.after);
    let (kind, tag) = sc.op;
    let op_args = install_args(&sb.dest, kind, &kind.source(tag), &[]);
    let pristine = root.join("pristine");
    sb.save_to(&pristine);
    Prepared { sc, _tmp: tmp, root, sb, pristine, old, new, op_args }
}

impl Prepared {
    fn restore(&self) {
        self.sb.restore_from(&self.pristine);
    }

    fn run_op(&self, env: &[(&str, &OsStr)]) -> Run {
        self.sb.run_env(&self.op_args, env)
    }

    #[track_caller]
    fn crash_op(&self, pt: &str, n: u32, ctx: &str) {
        self.restore();
        let spec = format!("{pt}:{n}");
        let run = self.run_op(&[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(
            run.signal,
            Some(libc::SIGABRT),
            "{ctx}: the operation did not die by SIGABRT at its kill point:\n{}",
            run.describe()
        );
    }

    fn pkgs_for(&self, which: Which) -> Pkgs {
        match which {
            Which::Old => self.sc.before,
            Which::New => self.sc.after,
        }
    }

    /// Checks every invariant after `recovery` (a `status --json` run) and
    /// returns which world the install dir ended in. `verify` runs only when
    /// `with_verify` (skipped in the recovery-crash inner loop, for time).
    #[track_caller]
    fn check_recovered(&self, recovery: &Run, ctx: &str, with_verify: bool) -> Which {
        assert!(recovery.success(), "{ctx}: recovery (`status --json`) failed:\n{}", recovery.describe());
        let status = recovery.json();
        let pending = pending_of(&status);
        assert!(pending.is_empty(), "{ctx}: transactions still pending after recovery: {pending:?}");
        let left = self.sb.leftovers();
        assert!(left.is_empty(), "{ctx}: staging/backup paths left under the install dir: {left:?}");
        let world = self.sb.world();
        let which = classify(&world, &self.old, &self.new).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        for r in status["recovered"].as_array().into_iter().flatten() {
            let said = r["outcome"].as_str().unwrap_or("");
            let contradicts = match which {
                Which::Old => said.contains("forward"),
                Which::New => said.contains("back"),
            };
            assert!(!contradicts, "{ctx}: recovery reports {r} but the world is {which:?}");
        }
        let pkgs = self.pkgs_for(which);
        if let Some(v) = pkgs.fdw {
            check_fdw_files(&self.sb.dest, v, ctx);
        }
        if pkgs.plugin.is_some() {
            // All-old = only @v1, all-new = only @v2 (the classification
            // already implies it; said out loud for the failure message).
            let other = if pkgs.plugin == Some("v1") { "v2" } else { "v1" };
            assert!(node_of(&self.sb.dest.join(plugin_rel(other))).is_none(), "{ctx}: both plugin dirs exist");
        }
        check_list(&self.sb, pkgs, ctx);
        if with_verify {
            check_verify(&self.sb, pkgs, ctx);
        }
        let again = self.sb.world();
        assert!(again == world, "{ctx}: a second recovery changed the world:\n{}", tree_diff(&again, &world, 25));
        which
    }

    fn trace_op(&self) -> Vec<(String, u32)> {
        self.restore();
        let trace = self.root.join("trace-op.txt");
        remove_if_exists(&trace);
        let run = self.run_op(&[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
        let ctx = format!("[{}] traced run", self.sc.name);
        assert!(run.success(), "{ctx}: failed:\n{}", run.describe());
        let world = self.sb.world();
        assert_eq!(
            classify(&world, &self.old, &self.new),
            Ok(Which::New),
            "{ctx}: a successful run did not leave the new world:\n{}",
            tree_diff(&world, &self.new, 25)
        );
        assert!(self.sb.leftovers().is_empty(), "{ctx}: leftovers after success: {:?}", self.sb.leftovers());
        check_list(&self.sb, self.sc.after, &ctx);
        check_verify(&self.sb, self.sc.after, &ctx);
        let pairs = read_trace(&trace);
        assert!(!pairs.is_empty(), "{ctx}: STAGEHAND_TRACE_POINTS recorded no kill point at all");
        pairs
    }
}

fn crash_matrix(sc: Scenario) {
    let t0 = Instant::now();
    let p = prepare(sc);
    let pairs = p.trace_op();
    let distinct: BTreeSet<&str> = pairs.iter().map(|(pt, _)| pt.as_str()).collect();
    let (mut crash_runs, mut recovery_crash_runs, mut recovery_points_max) = (0usize, 0usize, 0usize);
    let (mut ended_old, mut ended_new) = (0usize, 0usize);
    let mut covered = BTreeSet::new();
    let rtrace = p.root.join("trace-recovery.txt");

    for (pt, n) in &pairs {
        let ctx = format!("[{}] crash at {pt}:{n}", sc.name);
        p.crash_op(pt, *n, &ctx);
        crash_runs += 1;
        remove_if_exists(&rtrace);
        let rec = p.sb.run_env(&["status", "--json"], &[("STAGEHAND_TRACE_POINTS", rtrace.as_os_str())]);
        let which = p.check_recovered(&rec, &ctx, true);
        match which {
            Which::Old => ended_old += 1,
            Which::New => ended_new += 1,
        }
        covered.insert((pt.clone(), *n));

        if !sc.crash_recovery {
            continue;
        }
        let rpairs = read_trace(&rtrace);
        recovery_points_max = recovery_points_max.max(rpairs.len());
        for (rp, rn) in &rpairs {
            let rctx = format!("{ctx}, recovery crashed at {rp}:{rn}");
            p.crash_op(pt, *n, &rctx);
            let spec = format!("{rp}:{rn}");
            let crashed = p.sb.run_env(&["status", "--json"], &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
            assert_eq!(
                crashed.signal,
                Some(libc::SIGABRT),
                "{rctx}: recovery did not die by SIGABRT at its traced kill point:\n{}",
                crashed.describe()
            );
            recovery_crash_runs += 1;
            let rec2 = p.sb.run(&["status", "--json"]);
            let which2 = p.check_recovered(&rec2, &rctx, false);
            assert_eq!(which2, which, "{rctx}: recovery after a crashed recovery decided differently");
        }
    }

    let all: BTreeSet<(String, u32)> = pairs.iter().cloned().collect();
    assert_eq!(covered, all, "[{}] not every traced (point, occurrence) pair was crashed", sc.name);
    println!(
        "crash matrix [{}]: {} points traced ({} distinct names), {} crash runs (ended old {}, new {}), \
         {} recovery crash runs (max {} recovery points per state), {:.1}s",
        sc.name,
        pairs.len(),
        distinct.len(),
        crash_runs,
        ended_old,
        ended_new,
        recovery_crash_runs,
        recovery_points_max,
        t0.elapsed().as_secs_f64()
    );
    assert!(ended_old > 0, "[{}] no crash point ended in the old world", sc.name);
    assert!(ended_new > 0, "[{}] no crash point ended in the new world", sc.name);
}

#[test]
fn crash_fdw_upgrade_switches_three_files_together() {
    crash_matrix(FDW_UPGRADE);
}

#[test]
fn crash_db_upgrade_carries_the_fdw_over() {
    crash_matrix(DB_UPGRADE);
}

#[test]
fn crash_plugin_upgrade_swaps_tagged_dirs() {
    crash_matrix(PLUGIN_UPGRADE);
}

// ---------------------------------------------------------------------------
// Clean installs, verify, uninstall refusal
// ---------------------------------------------------------------------------

/// A sandbox whose DEST is the Steampipe install dir, with the foreign files.
fn steampipe_sandbox() -> (Sandbox, Tree) {
    let sb = Sandbox::new();
    write_foreign(&sb.dest);
    let base = sb.world();
    (sb, base)
}

#[track_caller]
fn check_world(sb: &Sandbox, base: &Tree, pkgs: Pkgs, ctx: &str) {
    let world = sb.world();
    let want = expected_world(base, pkgs);
    assert!(world == want, "{ctx}: the install dir is not the expected world:\n{}", tree_diff(&world, &want, 25));
    assert!(sb.leftovers().is_empty(), "{ctx}: leftovers: {:?}", sb.leftovers());
    check_list(sb, pkgs, ctx);
    check_verify(sb, pkgs, ctx);
}

#[test]
fn clean_installs_and_upgrades_verify() {
    let t0 = Instant::now();
    let (sb, base) = steampipe_sandbox();
    let sp = sb.dest.clone();
    let mut pkgs = Pkgs::default();
    let steps: [(Kind, &str); 6] = [
        (Kind::Db, "v1"),
        (Kind::Fdw, "v1"),
        (Kind::Plugin, "v1"),
        (Kind::Db, "v2"),
        (Kind::Fdw, "v2"),
        (Kind::Plugin, "v2"),
    ];
    for (kind, tag) in steps {
        let ctx = format!("install {} {tag}", kind.name());
        sb.run(&install_args(&sp, kind, &kind.source(tag), &[])).ok();
        match kind {
            Kind::Db => pkgs.db = Some(tag),
            Kind::Fdw => pkgs.fdw = Some(tag),
            Kind::Plugin => pkgs.plugin = Some(tag),
        }
        check_world(&sb, &base, pkgs, &ctx);
        let status = sb.status_json();
        assert!(pending_of(&status).is_empty(), "{ctx}: pending after a clean install: {status}");
        // Modes the profiles give (the hasher only sees the exec bit).
        if pkgs.db.is_some() {
            assert_mode(&sp.join(PG).join("bin/postgres"), 0o755);
            assert_mode(&sp.join(PG).join("LICENSE"), 0o644);
        }
        if let Some(v) = pkgs.fdw {
            assert_mode(&sp.join(fdw_rel(FDW_FILES[0].0, FDW_FILES[0].1)), 0o755);
            assert_mode(&sp.join(fdw_rel(FDW_FILES[1].0, FDW_FILES[1].1)), 0o644);
            assert_mode(&sp.join(fdw_rel(FDW_FILES[2].0, FDW_FILES[2].1)), 0o644);
            check_fdw_files(&sp, v, &ctx);
        }
        if let Some(v) = pkgs.plugin {
            let dir = sp.join(plugin_rel(v));
            assert_mode(&dir.join("steampipe-plugin-demo.plugin"), 0o755);
            assert_mode(&dir.join("LICENSE"), 0o644);
            assert_mode(&dir.join("config/demo.spc"), 0o644);
        }
        if kind == Kind::Db && tag == "v2" {
            // The db upgrade replaced the whole postgres/ dir and carried the
            // fdw's v1 files over; both still verify.
            check_fdw_files(&sp, "v1", &ctx);
            for name in ["db", "fdw"] {
                sb.run(&["verify", name]).ok();
            }
        }
    }
    // `verify` with no name checks every package.
    sb.run(&["verify"]).ok();
    println!("clean installs/upgrades with verify: {} steps, {:.1}s", steps.len(), t0.elapsed().as_secs_f64());
}

#[test]
fn uninstall_db_is_refused_while_fdw_is_inside() {
    let (sb, base) = steampipe_sandbox();
    let pkgs = Pkgs { db: Some("v1"), fdw: Some("v1"), plugin: None };
    install_all(&sb, pkgs);
    check_world(&sb, &base, pkgs, "before");
    let before_world = sb.world();
    let before_list = sb.run(&["list", "--json"]).ok().json();

    let run = sb.run(&["uninstall", "db"]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("fdw"), "the refusal does not name the fdw:\n{}", run.describe());
    let after = sb.world();
    assert!(
        after == before_world,
        "a refused uninstall changed the install dir:\n{}",
        tree_diff(&after, &before_world, 25)
    );
    assert_eq!(sb.run(&["list", "--json"]).ok().json(), before_list, "a refused uninstall changed the registry");
    assert!(pending_of(&sb.status_json()).is_empty());
    check_world(&sb, &base, pkgs, "after the refused uninstall");

    // In the right order both go, and the foreign files stay.
    sb.run(&["uninstall", "fdw"]).ok();
    check_world(&sb, &base, Pkgs { db: Some("v1"), ..Pkgs::default() }, "after uninstall fdw");
    sb.run(&["uninstall", "db"]).ok();
    let world = sb.world();
    for (rel, bytes) in FOREIGN {
        assert_eq!(
            world.get(rel),
            Some(&Node::File { sha256: sha256_hex(bytes), exec: false, len: bytes.len() as u64 }),
            "foreign file {rel} changed by the uninstalls"
        );
    }
    assert!(node_of(&sb.dest.join(PG)).is_none(), "postgres/ still there after uninstall db");
    assert!(sb.list_json().is_empty(), "packages still listed after uninstalling both");
}

/// Steampipe's own flow when it bumps Postgres: the db again with a new
/// `--db-version` (a new placement: `--move`, else refused as a move). Its
/// old `db/<ver>/postgres` holds the FDW's three files, so the upgrade is
/// refused, naming the fdw package and what to run; nothing changes and
/// `verify` stays clean. In that order the bump works.
#[test]
fn db_version_change_is_refused_while_fdw_is_inside() {
    let (sb, base) = steampipe_sandbox();
    let pkgs = Pkgs { db: Some("v1"), fdw: Some("v1"), plugin: None };
    install_all(&sb, pkgs);
    let before_world = sb.world();
    let before_list = sb.run(&["list", "--json"]).ok().json();

    let bump = ["--db-version", "14.20.0", "--move"];
    let run = sb.run(&install_args(&sb.dest, Kind::Db, &Kind::Db.source("v1"), &bump));
    run.expect_clean_failure();
    for want in ["\"fdw\"", "uninstall fdw", "--db-version", PG] {
        assert!(run.stderr.contains(want), "the refusal does not say {want:?}:\n{}", run.describe());
    }
    let after = sb.world();
    assert!(
        after == before_world,
        "a refused db bump changed the install dir:\n{}",
        tree_diff(&after, &before_world, 25)
    );
    assert_eq!(sb.run(&["list", "--json"]).ok().json(), before_list, "a refused db bump changed the registry");
    assert!(pending_of(&sb.status_json()).is_empty());
    check_world(&sb, &base, pkgs, "after the refused db bump");

    // What the message says to do: uninstall the fdw, bump, reinstall the fdw.
    sb.run(&["uninstall", "fdw"]).ok();
    sb.run(&install_args(&sb.dest, Kind::Db, &Kind::Db.source("v1"), &["--db-version", "14.20.0"]))
        .fails_with(&["--move", "--db-version 14.20.0"]);
    sb.run(&install_args(&sb.dest, Kind::Db, &Kind::Db.source("v1"), &bump)).ok();
    sb.run(&install_args(&sb.dest, Kind::Fdw, &Kind::Fdw.source("v1"), &["--db-version", "14.20.0"])).ok();
    sb.run(&["verify"]).ok();
    assert!(node_of(&sb.dest.join(PG)).is_none(), "the old postgres/ is still there");
    let new_pg = sb.dest.join("db/14.20.0/postgres");
    for (f, d) in FDW_FILES {
        assert!(node_of(&new_pg.join(d).join(f)).is_some(), "{d}/{f} missing in the new db version");
    }
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

// ---------------------------------------------------------------------------
// Platforms
// ---------------------------------------------------------------------------

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hexd = sha256_hex(bytes);
    fs::write(layout.join("blobs/sha256").join(&hexd), bytes).unwrap();
    format!("sha256:{hexd}")
}

/// The plugin binary each platform layer of the crafted layout holds.
fn platform_binary(platform: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho \"demo plugin built for {platform}\"\n").into_bytes()
}

/// A copy of the plugin layout (same dir name, so the same plugin path) in
/// which tag v1's platform layers hold a different binary per platform, so
/// the installed bytes tell which layer was chosen.
fn per_platform_plugin_layout(dir: &Path) -> PathBuf {
    let out = dir.join("steampipe-plugin");
    copy_tree(&Kind::Plugin.layout(), &out);
    for e in fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(out.join("blobs/sha256"), fs::Permissions::from_mode(0o755)).unwrap();
    let digest = layout_tag_digest(&out, "v1");
    let mpath = out.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    let mut replaced = 0;
    for layer in manifest["layers"].as_array_mut().unwrap() {
        let mt = layer["mediaType"].as_str().unwrap().to_string();
        let Some(platform) =
            mt.strip_prefix("application/vnd.turbot.steampipe.plugin.").and_then(|s| s.strip_suffix(".layer.v1+gzip"))
        else {
            continue;
        };
        let blob = gzip(&platform_binary(platform));
        layer["size"] = serde_json::Value::from(blob.len() as u64);
        layer["digest"] = serde_json::Value::String(put_blob(&out, &blob));
        replaced += 1;
    }
    assert_eq!(replaced, 3, "the plugin example should have three platform layers: {manifest}");
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = put_blob(&out, &mbytes);
    let ipath = out.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&ipath).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        if m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some("v1") {
            m["digest"] = serde_json::Value::String(mdigest.clone());
            m["size"] = serde_json::Value::from(mbytes.len() as u64);
        }
    }
    fs::set_permissions(&ipath, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&ipath, serde_json::to_vec(&index).unwrap()).unwrap();
    out
}

#[test]
fn platform_fallback_and_unknown_platform() {
    // The real example: darwin/arm64 installs (through the darwin-amd64 layer).
    let (sb, base) = steampipe_sandbox();
    let sp = sb.dest.clone();
    let args = install_args(&sp, Kind::Plugin, &Kind::Plugin.source("v1"), &["--platform", "darwin/arm64"]);
    sb.run(&args).ok();
    let pkgs = Pkgs { plugin: Some("v1"), ..Pkgs::default() };
    check_world(&sb, &base, pkgs, "plugin v1 for darwin/arm64");

    // windows/amd64: refused, listing the platforms the artifact has; nothing
    // changes (an upgrade attempt leaves v1 in place).
    let before_world = sb.world();
    let before_list = sb.run(&["list", "--json"]).ok().json();
    for tag in ["v2", "v1"] {
        let args = install_args(&sp, Kind::Plugin, &Kind::Plugin.source(tag), &["--platform", "windows/amd64"]);
        let run = sb.run(&args);
        run.expect_clean_failure();
        for platform in ["linux-amd64", "linux-arm64", "darwin-amd64"] {
            assert!(run.stderr.contains(platform), "the error does not list {platform}:\n{}", run.describe());
        }
        assert!(run.stderr.contains("windows"), "the error does not name the platform asked for:\n{}", run.describe());
        let after = sb.world();
        assert!(
            after == before_world,
            "a refused install changed the install dir:\n{}",
            tree_diff(&after, &before_world, 25)
        );
        assert_eq!(sb.run(&["list", "--json"]).ok().json(), before_list, "a refused install changed the registry");
        assert!(pending_of(&sb.status_json()).is_empty());
    }
    // Same on a fresh install dir: nothing is created.
    let (fresh, fresh_base) = steampipe_sandbox();
    let args = install_args(&fresh.dest, Kind::Db, &Kind::Db.source("v1"), &["--platform", "windows/amd64"]);
    let run = fresh.run(&args);
    run.expect_clean_failure();
    assert!(run.stderr.contains("linux-amd64"), "the db error does not list platforms:\n{}", run.describe());
    check_world(&fresh, &fresh_base, Pkgs::default(), "after a refused db install for windows/amd64");

    // A layout whose platform layers differ: the bytes show which was chosen.
    let tmp = tempdir();
    let layout = per_platform_plugin_layout(tmp.path());
    let source = format!("oci-layout:{}:v1", layout.display());
    let bin = |sb: &Sandbox| sb.dest.join(plugin_rel("v1")).join("steampipe-plugin-demo.plugin");
    for (platform, layer) in [
        ("darwin/arm64", "darwin-amd64"),
        ("darwin/amd64", "darwin-amd64"),
        ("linux/arm64", "linux-arm64"),
        ("linux/amd64", "linux-amd64"),
    ] {
        let (sb, _) = steampipe_sandbox();
        sb.run(&install_args(&sb.dest, Kind::Plugin, &source, &["--platform", platform])).ok();
        let want = platform_binary(layer);
        let got = node_of(&bin(&sb)).expect("plugin binary installed");
        assert_eq!(
            got,
            Node::File { sha256: sha256_hex(&want), exec: true, len: want.len() as u64 },
            "--platform {platform}: the installed binary is not the (gunzipped) {layer} layer"
        );
        assert_mode(&bin(&sb), 0o755);
        sb.run(&["verify", Kind::Plugin.name()]).ok();
    }
}

/// The checker itself can fail: an FDW .so of v2 beside v1's control and SQL
/// files, both plugin dirs at once, a carried-over FDW file missing from a
/// new postgres/ dir, and a staging path left behind are all caught.
#[test]
fn checker_rejects_mixed_worlds() {
    let p = prepare(FDW_UPGRADE);
    let sp = &p.sb.dest;
    let so = sp.join(fdw_rel(FDW_FILES[0].0, FDW_FILES[0].1));
    fs::copy(Kind::Fdw.src("v2").join(FDW_FILES[0].0), &so).unwrap();
    assert!(classify(&p.sb.world(), &p.old, &p.new).is_err(), "a v2 .so beside v1 control/SQL was not caught");

    let db = prepare(DB_UPGRADE);
    assert_eq!(classify(&db.sb.world(), &db.old, &db.new), Ok(Which::Old));
    let new_without_fdw =
        expected_world(&without_prefix(&db.new, PG), Pkgs { db: Some("v2"), fdw: None, plugin: None });
    assert!(
        classify(&new_without_fdw, &db.old, &db.new).is_err(),
        "a v2 postgres/ without the carried-over fdw files was not caught"
    );
    fs::create_dir(db.sb.dest.join(PG).join("lib/.postgresql.stagehand-1.staging")).unwrap();
    assert_eq!(db.sb.leftovers().len(), 1, "a staging dir was not seen as a leftover");

    let pl = prepare(PLUGIN_UPGRADE);
    copy_tree(&Kind::Plugin.src("v2"), &pl.sb.dest.join(plugin_rel("v2")));
    assert!(classify(&pl.sb.world(), &pl.old, &pl.new).is_err(), "both plugin dirs at once were not caught");
}

/// `w` without `prefix` and everything under it.
fn without_prefix(w: &Tree, prefix: &str) -> Tree {
    w.iter()
        .filter(|(k, _)| *k != prefix && !k.starts_with(&format!("{prefix}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Issue 14: a file of another package carried into a new directory must
/// still be what that package installed, and is never read through a symlink.
#[test]
fn a_carried_file_that_was_changed_or_replaced_by_a_symlink_is_refused() {
    let (sb, _base) = steampipe_sandbox();
    let sp = sb.dest.clone();
    install_all(&sb, Pkgs { db: Some("v1"), fdw: Some("v1"), plugin: None });
    let carried = sp.join(fdw_rel(FDW_FILES[1].0, FDW_FILES[1].1));
    let original = fs::read(&carried).unwrap();
    let upgrade = install_args(&sp, Kind::Db, &Kind::Db.source("v2"), &[]);

    fs::write(&carried, b"changed by hand\n").unwrap();
    let before = sb.world();
    let run = sb.run(&upgrade);
    run.expect_clean_failure();
    assert!(
        run.stderr.contains(path_str(&carried)) && run.stderr.contains("changed since it was installed"),
        "the refusal does not name the changed file:\n{}",
        run.describe()
    );
    assert!(sb.world() == before, "the refused upgrade changed the install dir");

    let elsewhere = sb.root.join("elsewhere.control");
    fs::write(&elsewhere, &original).unwrap();
    fs::remove_file(&carried).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &carried).unwrap();
    let run = sb.run(&upgrade);
    run.expect_clean_failure();
    assert!(run.stderr.contains("symlink"), "{}", run.describe());

    fs::remove_file(&carried).unwrap();
    fs::write(&carried, &original).unwrap();
    sb.run(&upgrade).ok();
    assert_eq!(fs::read(&carried).unwrap(), original, "the carried file did not survive the upgrade");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
}
