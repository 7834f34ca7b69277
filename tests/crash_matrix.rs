//! The crash matrix: every kill point an operation passes is crashed once
//! (SIGABRT, no cleanup), then recovery runs and the invariants are checked
//! with the independent tree hasher; then recovery itself is crashed at each
//! of its own kill points and recovered again. A second matrix injects EIO
//! at every point instead of crashing.
//!
//! Scenarios: install-fresh (v1 into an empty DEST), upgrade (v1 installed,
//! install v2) and uninstall (v1 installed, uninstall it), each with the demo
//! artifact, and sampled with a read-only variant of it (the app tree's
//! directories 0555, files 0444), the shape that broke cleanup for an
//! ordinary user; scripts/test.sh runs this file again as uid 65534.
//!
//! The journal records absolute paths and the identities (device + inode)
//! of what it staged, so a sandbox is always restored to the same place,
//! and a crashed state is re-created by re-running the crash (deterministic)
//! rather than copied.

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

#[derive(Clone, Copy)]
enum Op {
    Install(&'static str),
    Uninstall,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Demo version installed before the operation.
    before: Option<&'static str>,
    op: Op,
    /// Demo version installed once the operation completes.
    after: Option<&'static str>,
}

const INSTALL_FRESH: Scenario =
    Scenario { name: "install-fresh", before: None, op: Op::Install("v1"), after: Some("v1") };
const UPGRADE: Scenario = Scenario { name: "upgrade", before: Some("v1"), op: Op::Install("v2"), after: Some("v2") };
const UNINSTALL: Scenario = Scenario { name: "uninstall", before: Some("v1"), op: Op::Uninstall, after: None };

/// The artifact a matrix installs: the demo, or the demo with its app tree
/// read-only (same bytes and exec bits, so the same expected worlds).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Artifact {
    Demo,
    ReadOnly,
}

/// Writes the read-only variant of the demo (tags v1, v2) under `root`;
/// the layout dir is named `demo`, so the package name is [`DEMO`].
fn read_only_demo(root: &Path) -> PathBuf {
    let out = root.join("layout/demo");
    let tar = |ver: &'static str| move |mt: &str| encode_layer(mt, &read_only_tar_of(&demo_src(ver).join("app")));
    let (v1, v2) = (tar("v1"), tar("v2"));
    demo_variant_layout(&out, &[("v1", "v1", &v1), ("v2", "v2", &v2)]);
    out
}

/// Panics unless every directory under DEST/app (the target itself is
/// stagehand's, 0755 less the umask) is 0555 and every file 0444 or 0555:
/// the artifact's modes reached the disk.
fn assert_read_only(app: &Path, ctx: &str) {
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert!(hash_tree(app).values().any(|n| *n == Node::Dir), "{ctx}: {} has no directory", app.display());
    for (rel, node) in hash_tree(app) {
        let m = mode(&app.join(&rel));
        let ok = match node {
            Node::Dir => m == 0o555,
            Node::File { .. } => m == 0o444 || m == 0o555,
            _ => true,
        };
        assert!(ok, "{ctx}: app/{rel} has mode {m:o}, not read-only");
    }
}

/// Evenly spaced members of `all` (the first and last included), at most `n`.
fn sample<T: Clone>(all: &[T], n: usize) -> Vec<T> {
    if all.len() <= n || n < 2 {
        return all.to_vec();
    }
    let mut idx: Vec<usize> = (0..n).map(|i| i * (all.len() - 1) / (n - 1)).collect();
    idx.dedup();
    idx.into_iter().map(|i| all[i].clone()).collect()
}

/// A prepared sandbox: the work sandbox, a pristine copy of it to restore
/// before every run, and the two worlds the operation may end in.
struct Prepared {
    sc: Scenario,
    /// The OCI layout installed from.
    layout: PathBuf,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sb: Sandbox,
    pristine: PathBuf,
    old: Tree,
    new: Tree,
    op_args: Vec<OsString>,
}

fn prepare(sc: Scenario, artifact: Artifact) -> Prepared {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let layout = match artifact {
        Artifact::Demo => demo_layout(),
        Artifact::ReadOnly => read_only_demo(&root),
    };
    let source = |tag: &str| format!("oci-layout:{}:{tag}", layout.display());
    let sb = Sandbox::at(root.join("work"));
    if sc.before.is_some() {
        // Shared directories hold files that belong to nobody: they must
        // survive every outcome untouched.
        fs::create_dir_all(sb.dest.join("lib")).unwrap();
        fs::create_dir_all(sb.dest.join("share/extension")).unwrap();
        fs::write(sb.dest.join("lib/unrelated.so"), b"not stagehand's\n").unwrap();
        fs::write(sb.dest.join("share/extension/plpgsql.control"), b"# unrelated\n").unwrap();
    }
    let base = sb.world();
    if let Some(v) = sc.before {
        sb.run(&demo_install_args(&sb.dest, &source(v))).ok();
    }
    let old = sb.world();
    let expected_old = demo_world(&base, sc.before);
    assert_eq!(
        normalize(&old),
        normalize(&expected_old),
        "[{}] prepared world is not the expected one:\n{}",
        sc.name,
        tree_diff(&normalize(&old), &normalize(&expected_old), 25)
    );
    let new = demo_world(&old, sc.after);
    let op_args = match sc.op {
        Op::Install(tag) => demo_install_args(&sb.dest, &source(tag)),
        Op::Uninstall => sb.uninstall_args(DEMO),
    };
    let pristine = root.join("pristine");
    sb.save_to(&pristine);
    Prepared { sc, layout, _tmp: tmp, root, sb, pristine, old, new, op_args }
}

impl Prepared {
    fn restore(&self) {
        self.sb.restore_from(&self.pristine);
    }

    fn run_op(&self, env: &[(&str, &OsStr)]) -> Run {
        self.sb.run_env(&self.op_args, env)
    }

    /// Restores the pristine sandbox and crashes the operation at `pt:n`.
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

    /// The package version the registry must list for a world.
    fn version_for(&self, which: Which) -> Option<&'static str> {
        match which {
            Which::Old => self.sc.before,
            Which::New => self.sc.after,
        }
    }

    /// Checks every invariant after `recovery` (a `status --json` run) and
    /// returns which world the sandbox ended in.
    #[track_caller]
    fn check_recovered(&self, recovery: &Run, ctx: &str) -> Which {
        assert!(recovery.success(), "{ctx}: recovery (`status --json`) failed:\n{}", recovery.describe());
        let status = recovery.json();
        let pending = pending_of(&status);
        assert!(pending.is_empty(), "{ctx}: transactions still pending after recovery: {pending:?}");
        let left = self.sb.leftovers();
        assert!(left.is_empty(), "{ctx}: staging/backup paths left under DEST after recovery: {left:?}");
        let world = self.sb.world();
        let which = classify(&world, &self.old, &self.new).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        // What recovery says it did must match the disk.
        for r in status["recovered"].as_array().into_iter().flatten() {
            let said = r["outcome"].as_str().unwrap_or("");
            let contradicts = match which {
                Which::Old => said.contains("forward"),
                Which::New => said.contains("back"),
            };
            assert!(!contradicts, "{ctx}: recovery reports {r} but the world is {which:?}");
        }
        let listed = self.sb.listed(DEMO);
        match (self.version_for(which), listed) {
            (None, None) => {}
            (None, Some(p)) => {
                panic!("{ctx}: world is {which:?} (no demo installed) but list shows {p:?}")
            }
            (Some(v), None) => {
                panic!("{ctx}: world is {which:?} (demo {v} on disk) but list does not show demo")
            }
            (Some(v), Some(p)) => {
                assert_eq!(
                    p.digest,
                    layout_tag_digest(&self.layout, v),
                    "{ctx}: world is {which:?} (demo {v}) but list shows another digest"
                );
                assert_eq!(
                    p.targets,
                    demo_targets_abs(&self.sb.dest, v),
                    "{ctx}: world is {which:?} (demo {v}) but list shows other targets"
                );
            }
        }
        // Recovery is idempotent: `list` recovered again and changed nothing.
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
            tree_diff(&normalize(&world), &normalize(&self.new), 25)
        );
        assert!(self.sb.leftovers().is_empty(), "{ctx}: leftovers after success: {:?}", self.sb.leftovers());
        let pairs = read_trace(&trace);
        assert!(!pairs.is_empty(), "{ctx}: STAGEHAND_TRACE_POINTS recorded no kill point at all");
        pairs
    }
}

/// Every kill point of the operation, and of each recovery after it. The
/// ordinary-user pass (scripts/test.sh, `STAGEHAND_TEST_UNPRIVILEGED`) runs
/// after the full matrix passed as root: it still crashes the operation at
/// every point, but each recovery at 6 evenly spaced points of its own (the
/// full quadratic sweep twice was a third of CI's time).
fn crash_matrix(sc: Scenario) {
    let sample_to = std::env::var_os("STAGEHAND_TEST_UNPRIVILEGED").map(|_| (usize::MAX, 6));
    crash_matrix_of(sc, Artifact::Demo, sample_to);
}

/// The crash matrix of `sc` with `artifact`; with `sample_to` = (op points,
/// recovery points per state), only that many evenly spaced points of each.
fn crash_matrix_of(sc: Scenario, artifact: Artifact, sample_to: Option<(usize, usize)>) {
    let t0 = Instant::now();
    let p = prepare(sc, artifact);
    let traced = p.trace_op();
    if artifact == Artifact::ReadOnly {
        let app = p.sb.dest.join("app");
        if sc.after.is_some() {
            assert_read_only(&app, &format!("[{}] read-only, after the op", sc.name));
        }
        p.restore();
        if sc.before.is_some() {
            assert_read_only(&app, &format!("[{}] read-only, before the op", sc.name));
        }
    }
    let pairs = match sample_to {
        Some((n, _)) => sample(&traced, n),
        None => traced.clone(),
    };
    let distinct: BTreeSet<&str> = traced.iter().map(|(pt, _)| pt.as_str()).collect();
    let (mut crash_runs, mut recovery_crash_runs, mut recovery_points_max) = (0usize, 0usize, 0usize);
    let (mut ended_old, mut ended_new) = (0usize, 0usize);
    let mut covered = BTreeSet::new();
    let rtrace = p.root.join("trace-recovery.txt");

    for (pt, n) in &pairs {
        let ctx = format!("[{}] crash at {pt}:{n}", sc.name);
        p.crash_op(pt, *n, &ctx);
        crash_runs += 1;
        // Recover (and trace the recovery's own kill points).
        remove_if_exists(&rtrace);
        let rec = p.sb.run_env(&["status", "--json"], &[("STAGEHAND_TRACE_POINTS", rtrace.as_os_str())]);
        let which = p.check_recovered(&rec, &ctx);
        match which {
            Which::Old => ended_old += 1,
            Which::New => ended_new += 1,
        }
        covered.insert((pt.clone(), *n));

        // Crash the recovery at each of its points, then recover again: the
        // outcome must be the one uninterrupted recovery reached.
        let rpairs = match sample_to {
            Some((_, n)) => sample(&read_trace(&rtrace), n),
            None => read_trace(&rtrace),
        };
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
            let which2 = p.check_recovered(&rec2, &rctx);
            assert_eq!(which2, which, "{rctx}: recovery after a crashed recovery decided differently");
        }
    }

    let all: BTreeSet<(String, u32)> = pairs.iter().cloned().collect();
    assert_eq!(covered, all, "[{}] not every chosen (point, occurrence) pair was crashed", sc.name);
    println!(
        "crash matrix [{}{}]: {} points traced ({} distinct names), {} crash runs (ended old {}, new {}), \
         {} recovery crash runs (max {} recovery points per state), {:.1}s",
        sc.name,
        match (artifact == Artifact::ReadOnly, sample_to.is_some()) {
            (true, _) => ", read-only artifact, sampled",
            (false, true) => ", recoveries sampled",
            (false, false) => "",
        },
        traced.len(),
        distinct.len(),
        crash_runs,
        ended_old,
        ended_new,
        recovery_crash_runs,
        recovery_points_max,
        t0.elapsed().as_secs_f64()
    );
    assert!(ended_old > 0, "[{}] no crash point ended in the old world (is the commit point the first step?)", sc.name);
    assert!(ended_new > 0, "[{}] no crash point ended in the new world (is nothing rolled forward?)", sc.name);
}

fn fail_matrix(sc: Scenario) {
    let t0 = Instant::now();
    let p = prepare(sc, Artifact::Demo);
    let pairs = p.trace_op();
    let (mut failed, mut succeeded, mut consistent_before_repair) = (0usize, 0usize, 0usize);
    let (mut ended_old, mut ended_new) = (0usize, 0usize);
    let mut needed_repair = Vec::new();
    let mut failed_but_new = Vec::new();
    for (pt, n) in &pairs {
        let ctx = format!("[{}] EIO at {pt}:{n}", sc.name);
        p.restore();
        let spec = format!("{pt}:{n}=EIO");
        let run = p.run_op(&[("STAGEHAND_FAIL_AT", OsStr::new(&spec))]);
        assert!(run.signal.is_none(), "{ctx}: the operation crashed instead of failing:\n{}", run.describe());
        let world = p.sb.world();
        if run.success() {
            succeeded += 1;
            assert_eq!(
                classify(&world, &p.old, &p.new),
                Ok(Which::New),
                "{ctx}: the operation exited 0 but the world is not the new one:\n{}",
                run.describe()
            );
        } else {
            failed += 1;
            assert!(
                !run.stderr.trim().is_empty(),
                "{ctx}: the operation failed without a message on stderr:\n{}",
                run.describe()
            );
        }
        if classify(&world, &p.old, &p.new).is_ok() && p.sb.leftovers().is_empty() {
            consistent_before_repair += 1;
        } else {
            needed_repair.push(format!("{pt}:{n}"));
        }
        let repair = p.sb.run(&["repair"]);
        assert!(repair.success(), "{ctx}: `repair` failed:\n{}", repair.describe());
        let rec = p.sb.run(&["status", "--json"]);
        let which = p.check_recovered(&rec, &ctx);
        if run.success() {
            assert_eq!(which, Which::New, "{ctx}: exited 0, yet repair ended in the old world");
        } else if which == Which::New {
            failed_but_new.push(format!("{pt}:{n}"));
        }
        match which {
            Which::Old => ended_old += 1,
            Which::New => ended_new += 1,
        }
    }
    println!(
        "EIO matrix [{}]: {} points, {} failed cleanly, {} succeeded anyway, {} consistent before repair, \
         after repair old {} / new {}, {:.1}s; left for `repair`: {:?}; failed yet took effect: {:?}",
        sc.name,
        pairs.len(),
        failed,
        succeeded,
        consistent_before_repair,
        ended_old,
        ended_new,
        t0.elapsed().as_secs_f64(),
        needed_repair,
        failed_but_new
    );
    assert!(failed > 0, "[{}] injecting EIO at every point never made the operation fail", sc.name);
}

#[test]
fn crash_install_fresh() {
    crash_matrix(INSTALL_FRESH);
}

#[test]
fn crash_upgrade() {
    crash_matrix(UPGRADE);
}

#[test]
fn crash_uninstall() {
    crash_matrix(UNINSTALL);
}

/// Read-only artifact (0555 directories, 0444 files), 14 kill points of the
/// operation and 4 of each recovery: as an ordinary user (scripts/test.sh's
/// uid 65534 pass), cleanup, rollback and uninstall must still remove it.
#[test]
fn crash_read_only_install_fresh() {
    crash_matrix_of(INSTALL_FRESH, Artifact::ReadOnly, Some((14, 4)));
}

#[test]
fn crash_read_only_upgrade() {
    crash_matrix_of(UPGRADE, Artifact::ReadOnly, Some((14, 4)));
}

#[test]
fn crash_read_only_uninstall() {
    crash_matrix_of(UNINSTALL, Artifact::ReadOnly, Some((14, 4)));
}

#[test]
fn eio_install_fresh() {
    fail_matrix(INSTALL_FRESH);
}

#[test]
fn eio_upgrade() {
    fail_matrix(UPGRADE);
}

#[test]
fn eio_uninstall() {
    fail_matrix(UNINSTALL);
}

/// The checker itself can fail: a world that mixes versions, a partial
/// file, a lost exec bit, a symlink in place of a file, or a staging path
/// left behind are all caught.
#[test]
fn checker_rejects_mixed_partial_and_leftover_worlds() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let old = sb.world();
    let new = demo_world(&old, Some("v2"));
    assert_eq!(classify(&old, &old, &new), Ok(Which::Old));
    assert_eq!(classify(&new, &old, &new), Ok(Which::New));
    let pristine = fast_tempdir();
    sb.save_to(pristine.path());

    let so = sb.dest.join("lib/demo_fdw.so");
    fs::copy(demo_src("v2").join("files/demo_fdw.so"), &so).unwrap();
    assert!(classify(&sb.world(), &old, &new).is_err(), "a v2 .so beside v1's app was not caught");

    sb.restore_from(pristine.path());
    let bin = sb.dest.join("app/bin/demo");
    let len = fs::metadata(&bin).unwrap().len();
    fs::OpenOptions::new().write(true).open(&bin).unwrap().set_len(len / 2).unwrap();
    assert!(classify(&sb.world(), &old, &new).is_err(), "a truncated file was not caught");

    sb.restore_from(pristine.path());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(classify(&sb.world(), &old, &new).is_err(), "a lost exec bit was not caught");

    sb.restore_from(pristine.path());
    fs::remove_file(&so).unwrap();
    std::os::unix::fs::symlink(demo_src("v1").join("files/demo_fdw.so"), &so).unwrap();
    assert!(classify(&sb.world(), &old, &new).is_err(), "a symlink in place of a file was not caught");

    sb.restore_from(pristine.path());
    fs::create_dir(sb.dest.join("app/.bin.stagehand-9.staging")).unwrap();
    assert_eq!(sb.leftovers(), vec!["app/.bin.stagehand-9.staging".to_string()]);
    assert!(classify(&sb.world(), &old, &new).is_err(), "an extra directory was not caught");
}

/// Exit 5: after a crash, someone replaces a target file (a new inode) with
/// foreign bytes. Recovery must then either finish cleanly (exit 0) or
/// refuse with exit 5, naming the path and changing nothing at all. Once the
/// bytes that were there are put back by hand (as the message advises),
/// `repair` must finish: old or new world, nothing left over.
#[test]
fn undecidable_recovery_exits_5_and_recovers_after_a_manual_fix() {
    let t0 = std::time::Instant::now();
    let p = prepare(UPGRADE, Artifact::Demo);
    let pairs = p.trace_op();
    let so = p.sb.dest.join("lib/demo_fdw.so");
    let mut refused = 0usize;
    for (pt, n) in &pairs {
        let ctx = format!("[upgrade] crash at {pt}:{n}, then foreign bytes in {}", so.display());
        p.crash_op(pt, *n, &ctx);
        let Ok(original) = fs::read(&so) else { continue };
        fs::remove_file(&so).unwrap();
        fs::write(&so, b"foreign bytes\n").unwrap();
        let before = p.sb.world();
        let repair = p.sb.run(&["repair"]);
        match repair.code {
            Some(0) => {
                assert!(p.sb.leftovers().is_empty(), "{ctx}: repair exited 0 but left {:?}", p.sb.leftovers());
                continue;
            }
            Some(5) => refused += 1,
            _ => panic!("{ctx}: repair neither succeeded nor refused with exit 5:\n{}", repair.describe()),
        }
        assert!(
            repair.stderr.contains(path_str(&so)),
            "{ctx}: the refusal does not name the path:\n{}",
            repair.describe()
        );
        let after = p.sb.world();
        assert!(after == before, "{ctx}: a refused recovery changed DEST:\n{}", tree_diff(&after, &before, 20));
        p.sb.run(&["list"]).expect_code(5);

        // Put the bytes back by hand (a new inode, as any editor or cp makes).
        fs::remove_file(&so).unwrap();
        fs::write(&so, &original).unwrap();
        let repair = p.sb.run(&["repair"]);
        assert!(
            repair.success(),
            "{ctx}: with the original bytes put back by hand, repair still fails:\n{}",
            repair.describe()
        );
        let rec = p.sb.run(&["status", "--json"]);
        p.check_recovered(&rec, &ctx);
    }
    println!(
        "undecidable recovery [upgrade]: {} points, {refused} refused with exit 5, {:.1}s",
        pairs.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(refused > 0, "no crash point made recovery refuse a foreign target file");
}
