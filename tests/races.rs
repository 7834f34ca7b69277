//! Races and random kills.
//!
//! - `eight_processes_at_once`: rounds of 8 processes started together on
//!   one state dir, installing, upgrading and uninstalling two packages.
//!   Each must succeed, or exit 4 ("locked") with a message naming the
//!   holder's pid, or (uninstalling what is not installed) exit 1 saying so.
//!   After each round the journal's history is the serial order: replaying
//!   it must give the disk (hashed here) and the registry, and it must hold
//!   exactly one finished transaction per successful process. `apply` of a
//!   file setting both packages (one transaction of two changes, or none
//!   when nothing differs) is in the mix.
//! - `second_process_recovers_first`: a process killed mid-install (at a kill
//!   point before and after the commit point) while a second one waits for
//!   the lock; the second recovers the first's transaction before its own
//!   work, and says so.
//! - `random_kills_short`: 30 real SIGKILLs at random instants of installs,
//!   upgrades and uninstalls of the demo, recovering in between
//!   (`scripts/stress-kill.sh` is the long version, with a large artifact).

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proof::*;

const PKGS: [&str; 2] = ["a", "b"];

struct Sb {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    dests: [PathBuf; 2],
}

impl Sb {
    fn new() -> Sb {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let dests = [root.join("a"), root.join("b")];
        for d in &dests {
            fs::create_dir_all(d).unwrap();
        }
        Sb { state: root.join("state"), root, dests, _tmp: tmp }
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        run_bin(&self.state, &self.root, args, &[])
    }

    fn install_args(&self, pkg: usize, ver: &str) -> Vec<OsString> {
        demo_install_args(&self.dests[pkg], &demo_source(ver), Some(PKGS[pkg]))
    }

    /// `apply` of a desired-state file that sets a to `va` and b to `vb`,
    /// placed exactly as [`Sb::install_args`] places them.
    fn apply_args(&self, va: &str, vb: &str) -> Vec<OsString> {
        let mut body = String::new();
        for (i, ver) in [va, vb].iter().enumerate() {
            let d = self.dests[i].display();
            body.push_str(&format!(
                "[package.{}]\nref = \"{}\"\nto = \"{d}/app\"\nmap = [\"*.so={d}/lib\", \"*.control={d}/share/extension\", \"*.sql={d}/share/extension\"]\n\n",
                PKGS[i],
                demo_source(ver)
            ));
        }
        let f = self.root.join(format!("apply-{va}-{vb}.toml"));
        // Written once: a process of an earlier round may still read it.
        if !f.exists() {
            fs::write(&f, body).unwrap();
        }
        vec!["apply".into(), "--file".into(), f.into_os_string()]
    }

    /// Recovers, then checks that each package's destination holds exactly
    /// the version the registry lists (or nothing); returns the versions.
    #[track_caller]
    fn check(&self, ctx: &str) -> [Option<&'static str>; 2] {
        let st = self.run(&["status", "--json"]);
        assert!(st.success(), "{ctx}: status failed:\n{}", st.describe());
        let pending = pending_of(&st.try_json().unwrap()).unwrap();
        assert!(pending.is_empty(), "{ctx}: pending after recovery: {pending:?}");
        let listed = parse_list(&self.run(&["list", "--json"])).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let empty = Tree::new();
        let (w1, w2) = (demo_world(&empty, Some("v1")), demo_world(&empty, Some("v2")));
        let mut out = [None, None];
        for (i, dest) in self.dests.iter().enumerate() {
            let left = leftovers_under(dest);
            assert!(left.is_empty(), "{ctx}: leftovers in {}: {left:?}", dest.display());
            let ver = which_world(&hash_tree(dest), &[(None, &empty), (Some("v1"), &w1), (Some("v2"), &w2)])
                .unwrap_or_else(|e| panic!("{ctx}: package {}: {e}", PKGS[i]));
            registry_matches(listed.get(PKGS[i]), dest, ver).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", PKGS[i]));
            out[i] = ver;
        }
        out
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let h = self.run(&["history", "--json"]);
        h.ok();
        h.try_json().unwrap().as_array().cloned().unwrap()
    }
}

fn version_of_digest(d: &str) -> &'static str {
    if d == demo_digest("v1") {
        "v1"
    } else if d == demo_digest("v2") {
        "v2"
    } else {
        panic!("unknown digest {d}")
    }
}

/// The pid a "locked" message names, if any.
fn named_pid(stderr: &str) -> Option<u32> {
    let i = stderr.find("pid ")?;
    stderr[i + 4..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn eight_processes_at_once() {
    let sb = Sb::new();
    let mut rng = Rng::from_env("STAGEHAND_RACE_SEED", 0x5eed_0001);
    let rounds = env_num("STAGEHAND_RACE_ROUNDS", 4);
    let mut state = sb.check("start");
    let (mut ok, mut locked, mut not_installed, mut waited) = (0, 0, 0, 0);
    let (mut applies, mut applies_noop) = (0, 0);
    let mut pids_named = 0;
    let mut history_seen = 0usize;
    for round in 0..rounds {
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for p in 0..8 {
            let pkg = rng.below(2) as usize;
            let ver = |r: u64| if r == 0 { "v1" } else { "v2" };
            let mut args = match rng.below(6) {
                0 => vec!["uninstall".into(), PKGS[pkg].into()],
                1 | 2 => sb.install_args(pkg, "v1"),
                5 => sb.apply_args(ver(rng.below(2)), ver(rng.below(2))),
                _ => sb.install_args(pkg, "v2"),
            };
            // Half the processes wait for the lock, half give up at once.
            if p % 2 == 1 {
                args.push("--lock-timeout".into());
                args.push("60".into());
            }
            let (child, argv) = spawn_bin(&sb.state, &sb.root, &args, &[]);
            pids.push(child.id());
            children.push((child, argv, p % 2 == 1));
        }
        let mut successes = 0usize;
        for (child, argv, waits) in children {
            let run = finish(child, argv);
            let ctx = format!("round {round}");
            match run.code {
                // An apply with nothing to do runs no transaction.
                Some(0) if run.argv.starts_with("apply") && run.stdout.contains("nothing to do") => {
                    ok += 1;
                    applies_noop += 1;
                }
                Some(0) => {
                    if run.argv.starts_with("apply") {
                        applies += 1;
                    }
                    successes += 1;
                    ok += 1;
                    if waits {
                        waited += 1;
                    }
                }
                Some(4) => {
                    locked += 1;
                    assert!(!waits, "{ctx}: a process waiting 60 s for the lock gave up:\n{}", run.describe());
                    assert!(run.stderr.contains("locked"), "{ctx}: exit 4 without saying locked:\n{}", run.describe());
                    match named_pid(&run.stderr) {
                        Some(pid) => {
                            pids_named += 1;
                            assert!(pids.contains(&pid), "{ctx}: the message names pid {pid}, not one of {pids:?}")
                        }
                        None => panic!("{ctx}: the locked message names no pid:\n{}", run.describe()),
                    }
                }
                Some(1) if run.argv.starts_with("uninstall") && run.stderr.contains("no package named") => {
                    not_installed += 1
                }
                _ => panic!("{ctx}: unexpected result:\n{}", run.describe()),
            }
        }
        // The history is the serial order the lock imposed: replay it.
        let hist = sb.history();
        let new_entries = &hist[history_seen..];
        history_seen = hist.len();
        let done: Vec<&serde_json::Value> = new_entries.iter().filter(|e| e["outcome"] == "done").collect();
        // One row per package change: an apply's rows share its txn id.
        let done_txns: std::collections::BTreeSet<u64> = done.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert_eq!(
            done_txns.len(),
            successes,
            "round {round}: {successes} processes succeeded but {} transactions finished: {new_entries:?}",
            done_txns.len()
        );
        let ids: Vec<u64> = new_entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "history not in txn order: {ids:?}");
        let mut expect = BTreeMap::from([(0usize, state[0]), (1usize, state[1])]);
        for e in &done {
            let pkg = PKGS.iter().position(|p| e["package"] == *p).expect("known package");
            // An install or upgrade names the digest it installed; an uninstall none.
            let v = e["new_digest"].as_str().map(version_of_digest);
            if e["op"] == "uninstall" {
                assert_eq!(v, None, "an uninstall with a new digest: {e}");
            }
            expect.insert(pkg, v);
        }
        state = sb.check(&format!("after round {round}"));
        assert_eq!([expect[&0], expect[&1]], state, "round {round}: the disk is not the history's serial result");
    }
    println!(
        "races: {rounds} rounds x 8 processes: {ok} succeeded ({waited} after waiting for the lock), {locked} got \
         'locked' (every message named a holder pid: {pids_named}), {not_installed} uninstalls of nothing, {applies} applies ({applies_noop} more with nothing \
         to do); final state {state:?}"
    );
    assert!(ok > 0 && locked > 0, "no contention was produced");
}

fn trace_points(sb: &Sb, args: &[OsString]) -> Vec<(String, u32)> {
    // Trace on a throwaway copy: the same absolute paths matter little here.
    let trace = sb.root.join("trace.txt");
    remove_if_exists(&trace);
    let snap = sb.root.join("snap");
    remove_if_exists(&snap);
    fs::create_dir_all(&snap).unwrap();
    for (p, n) in [(&sb.state, "state"), (&sb.dests[0], "a"), (&sb.dests[1], "b")] {
        if p.exists() {
            copy_tree(p, &snap.join(n));
        }
    }
    run_bin(&sb.state, &sb.root, args, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]).ok();
    for (p, n) in [(&sb.state, "state"), (&sb.dests[0], "a"), (&sb.dests[1], "b")] {
        replace_with_copy(&snap.join(n), p);
    }
    read_trace(&trace)
}

#[test]
fn second_process_recovers_first() {
    let mut cases = 0;
    for before_commit in [true, false] {
        let sb = Sb::new();
        sb.check("start");
        let a_args = sb.install_args(0, "v1");
        let pairs = trace_points(&sb, &a_args);
        let commit = pairs.iter().position(|(p, _)| p == "journal.commit").expect("a commit point");
        // Before: the first staging write; after: the first swap.
        let (pt, n) = if before_commit {
            pairs[..commit].iter().find(|(p, _)| p == "fsops.write.staging").expect("a staging write").clone()
        } else {
            pairs[commit..].iter().find(|(p, _)| p.contains(".swap")).expect("a swap").clone()
        };
        let spec = format!("{pt}:{n}");
        let (first, fargv) = spawn_bin(&sb.state, &sb.root, &a_args, &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        // The second starts while the first holds the lock (its pid is in
        // the lock file) and waits for it.
        let lock = sb.state.join("lock");
        let t0 = Instant::now();
        let first_pid = first.id().to_string();
        while fs::read_to_string(&lock).map(|s| s.trim() != first_pid).unwrap_or(true) {
            assert!(t0.elapsed() < Duration::from_secs(20), "the first process never took the lock");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut b_args = sb.install_args(1, "v2");
        b_args.push("--lock-timeout".into());
        b_args.push("60".into());
        let (second, sargv) = spawn_bin(&sb.state, &sb.root, &b_args, &[]);
        let r1 = finish(first, fargv);
        assert_eq!(r1.signal, Some(libc::SIGABRT), "the first did not die at {spec}:\n{}", r1.describe());
        let r2 = finish(second, sargv);
        assert!(r2.success(), "the second process failed:\n{}", r2.describe());
        let expect = if before_commit { "rolled back" } else { "rolled forward" };
        assert!(
            r2.stderr.contains("recovered transaction") && r2.stderr.contains(expect),
            "the second process does not say it recovered ({expect}):\n{}",
            r2.describe()
        );
        let state = sb.check("after");
        assert_eq!(state, [if before_commit { None } else { Some("v1") }, Some("v2")]);
        // The recovery finished before the second process's own transaction.
        let hist = sb.history();
        assert_eq!(hist.len(), 2, "{hist:?}");
        assert_eq!(hist[0]["package"], "a");
        assert!(hist[0]["outcome"].as_str().unwrap().ends_with("by recovery"), "{hist:?}");
        assert_eq!(hist[1]["package"], "b");
        assert!(hist[0]["finished_at"].as_u64() <= hist[1]["started_at"].as_u64(), "{hist:?}");
        cases += 1;
        println!("recovery by the next process: first killed at {spec}, second {expect} it, then installed b");
    }
    assert_eq!(cases, 2);
}

/// Real SIGKILLs at random instants (30 by default; `STAGEHAND_KILLS`).
#[test]
fn random_kills_short() {
    let kills = env_num("STAGEHAND_KILLS", 30);
    let mut rng = Rng::from_env("STAGEHAND_KILL_SEED", 0x5eed_0002);
    let sb = Sb::new();
    // How long each kind of operation takes (the quicker of two passes, as
    // other tests may be running), to spread the kills over it.
    let mut op_time = [Duration::MAX; 3];
    for _ in 0..2 {
        for (i, args) in [sb.install_args(0, "v1"), sb.install_args(0, "v2"), vec!["uninstall".into(), "a".into()]]
            .into_iter()
            .enumerate()
        {
            let t0 = Instant::now();
            sb.run(&args).ok();
            op_time[i] = op_time[i].min(t0.elapsed());
        }
    }
    let mut cur = sb.check("start")[0];
    let (mut killed, mut finished, mut ended_old, mut ended_new) = (0, 0, 0, 0);
    for k in 0..kills {
        let (args, new): (Vec<OsString>, Option<&str>) = match (cur, rng.below(3)) {
            (None, _) => (sb.install_args(0, "v1"), Some("v1")),
            (Some("v1"), 0) => (vec!["uninstall".into(), "a".into()], None),
            (Some("v1"), _) => (sb.install_args(0, "v2"), Some("v2")),
            (Some(_), 0) => (sb.install_args(0, "v1"), Some("v1")),
            (Some(_), _) => (vec!["uninstall".into(), "a".into()], None),
        };
        let t = op_time[match (cur, new) {
            (None, _) => 0,
            (_, None) => 2,
            _ => 1,
        }];
        let delay = Duration::from_micros(rng.below(t.as_micros() as u64 * 12 / 10 + 1));
        let (mut child, argv) = spawn_bin(&sb.state, &sb.root, &args, &[]);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let run = finish(child, argv);
        match run.signal {
            Some(libc::SIGKILL) => killed += 1,
            None => {
                assert!(run.success(), "kill {k}: the operation failed by itself:\n{}", run.describe());
                finished += 1;
            }
            Some(s) => panic!("kill {k}: died by signal {s}:\n{}", run.describe()),
        }
        let after = sb.check(&format!("kill {k} ({delay:?} into {})", run.argv))[0];
        if run.success() {
            assert_eq!(after, new, "kill {k}: completed, yet not the new version");
        }
        assert!(after == cur || after == new, "kill {k}: ended at {after:?}, neither {cur:?} nor {new:?}");
        if after == new {
            ended_new += 1;
        } else {
            ended_old += 1;
        }
        cur = after;
    }
    println!(
        "random kills: {kills} SIGKILLs at random delays (ops take {op_time:?}): {killed} killed mid-run, {finished} \
         finished first; after recovery old {ended_old}, new {ended_new}"
    );
    assert!(killed > 0, "no kill landed while the operation was running");
}

/// One version of the large artifact: the tar tree (`app/...`) and the three
/// mapped files, as (path under DEST, bytes).
type Files<N> = Vec<(N, Vec<u8>)>;

fn large_version(files: usize, ver: u8) -> (Files<String>, Files<&'static str>) {
    let mut tree = Vec::new();
    for i in 0..files + if ver == 2 { 100 } else { 0 } {
        let changed = ver == 2 && (i % 10 == 0 || i >= files);
        if ver == 2 && i % 20 == 5 {
            continue;
        }
        let len = 64 + (i * 37) % 192;
        let tag = if changed { 2 } else { 1 };
        let mut bytes = format!("v{tag} file {i} ").into_bytes();
        bytes.resize(len, b'a' + (i % 26) as u8);
        tree.push((format!("d{}/e{}/f{i}.dat", i % 40, i % 7), bytes));
    }
    let mapped = vec![
        ("big.so", vec![ver; 256 * 1024]),
        ("big.control", format!("default_version = '{ver}.0'\n").into_bytes()),
        ("big--1.0.sql", format!("-- version {ver}\n").into_bytes()),
    ];
    (tree, mapped)
}

/// The tree DEST must hash to with `ver` installed, written here by plain
/// `fs::write` (not by stagehand) and hashed.
fn large_world(root: &Path, files: usize, ver: u8) -> Tree {
    let dir = root.join(format!("expect-v{ver}"));
    let (tree, mapped) = large_version(files, ver);
    for (rel, bytes) in &tree {
        let p = dir.join("app").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }
    for (title, bytes) in &mapped {
        let sub = if title.ends_with(".so") { "lib" } else { "share/extension" };
        fs::create_dir_all(dir.join(sub)).unwrap();
        fs::write(dir.join(sub).join(title), bytes).unwrap();
    }
    let t = hash_tree(&dir);
    remove_if_exists(&dir);
    t
}

/// A SIGKILL soak of a large artifact (2,000 files by default,
/// `STAGEHAND_SOAK_FILES`; without the content-addressed file lists each of
/// its journal records would be far above sled's 128 KiB page threshold): upgrades and
/// downgrades, each SIGKILLed at a random instant up to 1.3 times its
/// duration (so some land during the process's exit, some after it),
/// `STAGEHAND_SOAK_KILLS` times (100). After each: the next command must
/// open the journal, recover, and leave DEST exactly v1 or v2 (hashed here
/// against trees written independently), with no `.stagehand-` leftovers,
/// the registry agreeing. Counts journals that failed to open and other
/// violations, and asserts both are 0.
#[test]
fn random_kills_large() {
    let files = env_num("STAGEHAND_SOAK_FILES", 2000) as usize;
    let kills = env_num("STAGEHAND_SOAK_KILLS", 100);
    let mut rng = Rng::from_env("STAGEHAND_KILL_SEED", 0x5eed_0003);
    let tmp = tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (layout, state, dest) = (root.join("layout"), root.join("state"), root.join("dest"));
    let mut versions = Vec::new();
    for ver in [1u8, 2] {
        let (tree, mapped) = large_version(files, ver);
        versions.push((if ver == 1 { "v1" } else { "v2" }, Some(tar_of(&tree)), mapped));
    }
    make_layout(&layout, &versions);
    let worlds = [large_world(&root, files, 1), large_world(&root, files, 2)];
    let digests = ["v1", "v2"].map(|t| layout_tag_digest(&layout, t));
    let args =
        |ver: usize| demo_install_args(&dest, &format!("oci-layout:{}:v{}", layout.display(), ver + 1), Some("big"));
    let run = |a: &[OsString]| run_bin(&state, &root, a, &[]);
    // Fresh start (also after a journal that cannot be opened, counted).
    let reset = || {
        remove_if_exists(&state);
        remove_if_exists(&dest);
        fs::create_dir_all(&dest).unwrap();
        run(&args(0)).ok();
    };
    reset();
    // The kill window follows how long an upgrade takes now: the first one
    // also fills the blob cache, the machine's load changes as the tests
    // beside this one start and end, and one upgrade can take twice as long
    // as the one before (ext4 allocating inodes after a large removal). An
    // un-killed upgrade is timed every 5 kills and the window is 1.3 times
    // the shortest of the last three, so most kills land mid-run and some
    // after the exit.
    let timed = |to: usize| {
        let t0 = Instant::now();
        let r = run(&args(to));
        assert!(r.success(), "an upgrade to v{} without a kill failed:\n{}", to + 1, r.describe());
        t0.elapsed()
    };
    let mut recent = std::collections::VecDeque::from([timed(1), timed(0)]);
    let mut op_time = recent.iter().copied().min().unwrap();
    let mut cur = 0usize;
    let (mut killed, mut finished, mut unopenable, mut violations, mut ended_new) = (0, 0, 0, 0, 0);
    let mut first_failures = Vec::new();
    let started = Instant::now();
    for k in 0..kills {
        if k % 5 == 0 && k > 0 {
            recent.push_back(timed(1 - cur));
            cur = 1 - cur;
            if recent.len() > 3 {
                recent.pop_front();
            }
            op_time = recent.iter().copied().min().unwrap();
        }
        let new = 1 - cur;
        let delay = Duration::from_micros(rng.below(op_time.as_micros() as u64 * 13 / 10 + 1));
        let (mut child, argv) = spawn_bin(&state, &root, &args(new), &[]);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let r = finish(child, argv);
        match r.signal {
            Some(libc::SIGKILL) => killed += 1,
            None if r.success() => finished += 1,
            _ => panic!("kill {k}: the upgrade failed by itself:\n{}", r.describe()),
        }
        let ctx = format!("kill {k} ({delay:?} into v{} -> v{})", cur + 1, new + 1);
        let st = run(&["status".into(), "--json".into()]);
        if !st.success() {
            unopenable += 1;
            first_failures.push(format!("{ctx}: the journal does not open:\n{}", st.describe()));
            reset();
            cur = 0;
            continue;
        }
        let problem = (|| -> Result<usize, String> {
            let pending = pending_of(&st.try_json()?)?;
            if !pending.is_empty() {
                return Err(format!("pending after recovery: {pending:?}"));
            }
            let left = leftovers_under(&dest);
            if !left.is_empty() {
                return Err(format!("leftovers: {left:?}"));
            }
            let now = hash_tree(&dest);
            let after = worlds
                .iter()
                .position(|w| *w == now)
                .ok_or_else(|| format!("DEST is neither v1 nor v2:\n{}", tree_diff(&now, &worlds[cur], 10)))?;
            if r.success() && after != new {
                return Err("the upgrade reported success, yet DEST holds the old version".into());
            }
            let listed = parse_list(&run(&["list".into(), "--json".into()]))?;
            let digest = listed.get("big").map(|l| l.digest.clone());
            if digest.as_deref() != Some(digests[after].as_str()) {
                return Err(format!("the registry lists {digest:?}, DEST holds v{}", after + 1));
            }
            // `verify` reads the package's file lists: they survived too.
            let v = run(&["verify".into(), "big".into()]);
            if !v.success() {
                return Err(format!("verify after recovery failed:\n{}", v.describe()));
            }
            Ok(after)
        })();
        match problem {
            Ok(after) => {
                ended_new += usize::from(after == new);
                cur = after;
            }
            Err(e) => {
                violations += 1;
                first_failures.push(format!("{ctx}: {e}"));
                reset();
                cur = 0;
            }
        }
    }
    println!(
        "random kills, large: {kills} SIGKILLs of {files}-file upgrades (last kill window 1.3 × {op_time:?}) in {:.0?}: {killed} \
         killed mid-run, {finished} finished first; ended new {ended_new}; journals that failed to open \
         {unopenable}; invariant violations {violations}",
        started.elapsed()
    );
    for f in first_failures.iter().take(3) {
        println!("  {f}");
    }
    assert_eq!((unopenable, violations), (0, 0), "see the failures above");
    assert!(killed > kills / 2, "too few kills landed while the upgrade was running: {killed} of {kills}");
    // For this soak's data (one package, records of a few hundred bytes
    // whatever its file count) sled wrote no blob file: the file lists keep
    // file entries out of the records. That holds for this data only: sled's
    // threshold is per serialized page, and other data (many packages with
    // long paths) does reach `blobs/`, whose files are fsynced like the rest.
    let blobs: Vec<_> = fs::read_dir(state.join("journal/blobs")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(
        blobs.is_empty(),
        "sled wrote blob files for one {files}-file package's records (file entries in a record?): {:?}",
        blobs.first().map(|e| e.path())
    );
    let lists = fs::read_dir(state.join("filelists/sha256")).unwrap().count();
    assert!(lists >= 4, "the file lists of {files}-file package versions: {lists} files under filelists/sha256");
}
