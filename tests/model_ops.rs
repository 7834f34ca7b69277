//! Model-based property test: random sequences of operations (install v1,
//! install v2 — an upgrade or downgrade when installed —, rollback to the
//! kept earlier version, uninstall) on two packages (`a` and `b`, the demo
//! artifact installed into two different destinations), each operation optionally crashed at a random kill point
//! of its own trace (`STAGEHAND_CRASH_AT`, the process aborts as SIGKILL
//! would) or failed there with an injected error (`STAGEHAND_FAIL_AT`, EIO
//! or ENOSPC). After each operation and a recovering `stagehand status`,
//! both destinations (hashed independently) and `list --json` must equal
//! the reference model (package → version, and the earlier version kept
//! for rollback) before or after the operation;
//! the model then follows what happened. A run that exited 0 must have
//! taken effect.
//!
//! Cases: `PROPTEST_CASES` (default 16; sequences of up to 6 operations).
//! Long campaign: `PROPTEST_CASES=1000 cargo test --release --test model_ops -- --nocapture`.
//! A failure shrinks to a short sequence, printed by proptest.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use common::proof::*;
use proptest::prelude::*;

const PKGS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone, Copy)]
enum Act {
    Install { pkg: usize, ver: &'static str },
    Uninstall { pkg: usize },
    Rollback { pkg: usize },
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Crash at the (seed mod trace length)-th kill point of the operation.
    Crash(u32),
    /// Inject `errno` there instead.
    Fail(u32, &'static str),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        (0..2usize, prop_oneof![Just("v1"), Just("v2")]).prop_map(|(pkg, ver)| Act::Install { pkg, ver }),
        (0..2usize).prop_map(|pkg| Act::Uninstall { pkg }),
        (0..2usize).prop_map(|pkg| Act::Rollback { pkg }),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => Just(Fault::None),
        3 => any::<u32>().prop_map(Fault::Crash),
        2 => (any::<u32>(), prop_oneof![Just("EIO"), Just("ENOSPC")]).prop_map(|(s, e)| Fault::Fail(s, e)),
    ]
}

static OPS: AtomicU64 = AtomicU64::new(0);
static CRASHES: AtomicU64 = AtomicU64::new(0);
static FAILS: AtomicU64 = AtomicU64::new(0);
static ENDED_NEW: AtomicU64 = AtomicU64::new(0);
static ENDED_OLD: AtomicU64 = AtomicU64::new(0);
static CASES: AtomicU64 = AtomicU64::new(0);

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    dests: [PathBuf; 2],
    model: BTreeMap<usize, &'static str>,
    /// The earlier version each package keeps for rollback.
    kept: BTreeMap<usize, &'static str>,
}

impl World {
    fn new() -> World {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let dests = [root.join("a"), root.join("b")];
        for d in &dests {
            fs::create_dir_all(d).unwrap();
        }
        World { state: root.join("state"), root, dests, _tmp: tmp, model: BTreeMap::new(), kept: BTreeMap::new() }
    }

    fn args(&self, a: Act) -> Vec<OsString> {
        match a {
            Act::Install { pkg, ver } => demo_install_args(&self.dests[pkg], &demo_source(ver), Some(PKGS[pkg])),
            Act::Uninstall { pkg } => vec!["uninstall".into(), PKGS[pkg].into()],
            Act::Rollback { pkg } => vec!["rollback".into(), PKGS[pkg].into()],
        }
    }

    fn run(&self, args: &[OsString], env: &[(&str, &OsStr)]) -> Run {
        run_bin(&self.state, &self.root, args, env)
    }

    fn snapshot(&self, dir: &Path) {
        remove_if_exists(dir);
        fs::create_dir_all(dir).unwrap();
        for (src, name) in [(&self.state, "state"), (&self.dests[0], "a"), (&self.dests[1], "b")] {
            if src.exists() {
                copy_tree(src, &dir.join(name));
            }
        }
    }

    fn restore(&self, dir: &Path) {
        for (dst, name) in [(&self.state, "state"), (&self.dests[0], "a"), (&self.dests[1], "b")] {
            replace_with_copy(&dir.join(name), dst);
        }
    }

    /// The kill points the operation passes from the current state (run
    /// traced on the real sandbox, then the sandbox is put back).
    fn trace(&self, args: &[OsString]) -> Vec<(String, u32)> {
        let snap = self.root.join("snap");
        let trace = self.root.join("trace.txt");
        self.snapshot(&snap);
        remove_if_exists(&trace);
        self.run(args, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
        self.restore(&snap);
        read_trace(&trace)
    }

    /// Checks the disk and the registry against the model, allowing the
    /// operated package to be at `old` or `new`; returns which it is at.
    fn check(
        &self,
        pkg: usize,
        old: Option<&'static str>,
        new: Option<&'static str>,
    ) -> Result<Option<&'static str>, String> {
        let status = self.run(&["status".into(), "--json".into()], &[]);
        if !status.success() {
            return Err(format!("recovery failed:\n{}", status.describe()));
        }
        let pending = pending_of(&status.try_json()?)?;
        if !pending.is_empty() {
            return Err(format!("pending after recovery: {pending:?}"));
        }
        let listed = parse_list(&self.run(&["list".into(), "--json".into()], &[]))?;
        let empty = Tree::new();
        let mut ended = None;
        for (i, dest) in self.dests.iter().enumerate() {
            let left = leftovers_under(dest);
            if !left.is_empty() {
                return Err(format!("leftovers in {}: {left:?}", dest.display()));
            }
            let world = hash_tree(dest);
            let ver = if i == pkg {
                let (wo, wn) = (demo_world(&empty, old), demo_world(&empty, new));
                which_world(&world, &[(old, &wo), (new, &wn)]).map_err(|e| format!("package {}: {e}", PKGS[i]))?
            } else {
                let v = self.model.get(&i).copied();
                which_world(&world, &[(v, &demo_world(&empty, v))])
                    .map_err(|e| format!("package {} (not operated on) changed: {e}", PKGS[i]))?
            };
            registry_matches(listed.get(PKGS[i]), dest, ver).map_err(|e| format!("package {}: {e}", PKGS[i]))?;
            if i == pkg {
                ended = ver;
            }
        }
        if let Some(extra) = listed.keys().find(|n| !PKGS.contains(&n.as_str())) {
            return Err(format!("unexpected package {extra} listed"));
        }
        Ok(ended)
    }

    fn step(&mut self, i: usize, a: Act, f: Fault) -> Result<(), String> {
        OPS.fetch_add(1, Ordering::Relaxed);
        let args = self.args(a);
        let pkg = match a {
            Act::Install { pkg, .. } | Act::Uninstall { pkg } | Act::Rollback { pkg } => pkg,
        };
        let old = self.model.get(&pkg).copied();
        let kept = self.kept.get(&pkg).copied();
        let new = match a {
            Act::Install { ver, .. } => Some(ver),
            Act::Uninstall { .. } => None,
            // Nothing to roll back to: the package stays as it is.
            Act::Rollback { .. } => kept.or(old),
        };
        let (env, what) = match f {
            Fault::None => (None, "no fault".to_string()),
            Fault::Crash(seed) | Fault::Fail(seed, _) => {
                let pairs = self.trace(&args);
                if pairs.is_empty() {
                    (None, "no fault (no kill point)".to_string())
                } else {
                    let (pt, n) = &pairs[seed as usize % pairs.len()];
                    match f {
                        Fault::Crash(_) => {
                            CRASHES.fetch_add(1, Ordering::Relaxed);
                            (Some(("STAGEHAND_CRASH_AT", format!("{pt}:{n}"))), format!("crash at {pt}:{n}"))
                        }
                        Fault::Fail(_, e) => {
                            FAILS.fetch_add(1, Ordering::Relaxed);
                            (Some(("STAGEHAND_FAIL_AT", format!("{pt}:{n}={e}"))), format!("{e} at {pt}:{n}"))
                        }
                        Fault::None => unreachable!(),
                    }
                }
            }
        };
        let env_vec: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v.as_str()))).collect();
        let run = self.run(&args, &env_vec);
        let ctx = format!("op {i} ({a:?}, {what})");
        if matches!(f, Fault::Crash(_)) && env.is_some() && run.signal != Some(libc::SIGABRT) {
            return Err(format!("{ctx}: did not crash at its kill point:\n{}", run.describe()));
        }
        if run.signal.is_none() && run.code == Some(101) {
            return Err(format!("{ctx}: panicked:\n{}", run.describe()));
        }
        if run.signal.is_none() && !run.success() && run.stderr.trim().is_empty() {
            return Err(format!("{ctx}: failed without a message:\n{}", run.describe()));
        }
        let not_installed = matches!(a, Act::Uninstall { .. } | Act::Rollback { .. }) && old.is_none();
        let nothing_kept = matches!(a, Act::Rollback { .. }) && kept.is_none();
        let ended = self.check(pkg, old, new).map_err(|e| format!("{ctx}: {e}\n{}", run.describe()))?;
        if run.success() && ended != new {
            return Err(format!("{ctx}: exited 0 but the package is at {ended:?}, not {new:?}"));
        }
        if (not_installed || nothing_kept) && run.success() {
            return Err(format!("{ctx}: succeeded with nothing to act on (installed {old:?}, kept {kept:?})"));
        }
        if env.is_none() && !run.success() && !not_installed && !nothing_kept {
            return Err(format!("{ctx}: failed without an injected fault:\n{}", run.describe()));
        }
        if ended == new && old != new {
            ENDED_NEW.fetch_add(1, Ordering::Relaxed);
        } else {
            ENDED_OLD.fetch_add(1, Ordering::Relaxed);
        }
        // The kept version follows what happened: the version replaced, if
        // it differs (an install never keeps the version it installs).
        if ended != old {
            match (old, ended) {
                (_, None) => {
                    self.kept.remove(&pkg);
                }
                (Some(o), Some(_)) => {
                    self.kept.insert(pkg, o);
                }
                (None, Some(_)) => {}
            }
        }
        match ended {
            Some(v) => self.model.insert(pkg, v),
            None => self.model.remove(&pkg),
        };
        Ok(())
    }
}

fn run_sequence(ops: &[(Act, Fault)]) -> Result<(), TestCaseError> {
    CASES.fetch_add(1, Ordering::Relaxed);
    let mut w = World::new();
    for (i, (a, f)) in ops.iter().enumerate() {
        w.step(i, *a, *f).map_err(|e| TestCaseError::fail(format!("{e}\nsequence: {ops:?}")))?;
    }
    Ok(())
}

#[test]
fn model_based_operations() {
    let cases = env_num("PROPTEST_CASES", 16) as u32;
    let config =
        ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 200, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let t0 = std::time::Instant::now();
    let result = runner.run(&proptest::collection::vec((act(), fault()), 1..=6), |ops| run_sequence(&ops));
    println!(
        "model ops: {} cases run (incl. shrinking), {} operations ({} crashed at a kill point, {} failed with an \
         injected error); the operated package ended old {} / new {} times; {:.1}s",
        CASES.load(Ordering::Relaxed),
        OPS.load(Ordering::Relaxed),
        CRASHES.load(Ordering::Relaxed),
        FAILS.load(Ordering::Relaxed),
        ENDED_OLD.load(Ordering::Relaxed),
        ENDED_NEW.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(CASES.load(Ordering::Relaxed) >= cases as u64);
    assert!(CRASHES.load(Ordering::Relaxed) > 0 && FAILS.load(Ordering::Relaxed) > 0);
}
