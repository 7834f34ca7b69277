//! `stagehand apply`: one transaction over several packages.
//!
//! The crash matrix runs an apply that installs package `a` (demo v1, fresh),
//! upgrades `b` (v1 → v2) and prunes `c` (v1), each in its own directory
//! under DEST. It traces every kill point, reruns the apply crashing
//! (SIGABRT) at each, recovers, and checks with the tests' own tree hasher
//! that the three directories are ALL old or ALL new, that `list` agrees,
//! and that no `.stagehand-` path is left; then it crashes the recovery at
//! each of its own points — in every 32nd crashed state by default (the CI
//! budget; `STAGEHAND_APPLY_RECOVERY_EVERY=1` crashes the recovery of every
//! state, which takes over 15 minutes on 2 shared cores) — and recovers again. The EIO matrix
//! injects an error at every point instead. Also: the front end (dry run,
//! nothing to do, errors naming the line and key, --locked, rollback --apply).

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// The `[package.NAME]` entry placing demo `tag` under DEST/NAME.
fn entry(dest: &Path, name: &str, tag: &str) -> String {
    let d = dest.join(name);
    let d = d.display();
    format!(
        "[package.{name}]\nref = \"{}\"\nto = \"{d}/app\"\nmap = [\"*.so={d}/lib\", \"*.control={d}/share/extension\", \"*.sql={d}/share/extension\"]\n\n",
        demo_source(tag)
    )
}

/// Each package's expected tree under DEST/NAME, for a version (or none).
fn expected(ver: Option<&str>) -> Tree {
    normalize(&demo_world(&Tree::new(), ver))
}

fn world_of(dest: &Path, name: &str) -> Tree {
    let d = dest.join(name);
    if d.exists() {
        normalize(&hash_tree(&d))
    } else {
        Tree::new()
    }
}

struct Prepared {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sb: Sandbox,
    pristine: PathBuf,
    args: Vec<OsString>,
    old: [Option<&'static str>; 3],
    new: [Option<&'static str>; 3],
}

fn prepare() -> Prepared {
    let tmp = fast_tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let sb = Sandbox::at(root.join("work"));
    let cfg = root.join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    let file = cfg.join("stagehand.toml");
    // b and c are this file's (a prune removes only what its file applied).
    fs::write(&file, format!("{}{}", entry(&sb.dest, "b", "v1"), entry(&sb.dest, "c", "v1"))).unwrap();
    sb.run(&[OsStr::new("apply"), OsStr::new("--file"), file.as_os_str()]).ok();
    fs::write(&file, format!("{}{}", entry(&sb.dest, "a", "v1"), entry(&sb.dest, "b", "v2"))).unwrap();
    let pristine = root.join("pristine");
    sb.save_to(&pristine);
    let args = vec!["apply".into(), "--prune".into(), "--yes".into(), "--file".into(), file.into_os_string()];
    Prepared {
        _tmp: tmp,
        root,
        sb,
        pristine,
        args,
        old: [None, Some("v1"), Some("v1")],
        new: [Some("v1"), Some("v2"), None],
    }
}

impl Prepared {
    fn restore(&self) {
        self.sb.restore_from(&self.pristine);
        // The lock file is written after the transaction; an earlier run's
        // would make this one skip writing it (and its kill points).
        remove_if_exists(&self.root.join("cfg/stagehand.lock"));
    }

    /// Which world every package is in: all old, or all new; else an error
    /// naming the packages that differ.
    fn classify(&self) -> Result<Which, String> {
        let mut seen = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let w = world_of(&self.sb.dest, name);
            let which = if w == expected(self.old[i]) {
                Which::Old
            } else if w == expected(self.new[i]) {
                Which::New
            } else {
                return Err(format!(
                    "package {name}: neither old nor new\nvs old:\n{}\nvs new:\n{}",
                    tree_diff(&w, &expected(self.old[i]), 15),
                    tree_diff(&w, &expected(self.new[i]), 15)
                ));
            };
            seen.push((name, which));
        }
        // When old and new coincide for no package, every package must agree.
        let first = seen[0].1;
        if seen.iter().any(|(_, w)| *w != first) {
            return Err(format!("a mix across packages: {seen:?}"));
        }
        Ok(first)
    }

    #[track_caller]
    fn check_recovered(&self, recovery: &Run, ctx: &str) -> Which {
        assert!(recovery.success(), "{ctx}: recovery (`status --json`) failed:\n{}", recovery.describe());
        let pending = pending_of(&recovery.json());
        assert!(pending.is_empty(), "{ctx}: transactions still pending after recovery: {pending:?}");
        let left = self.sb.leftovers();
        assert!(left.is_empty(), "{ctx}: .stagehand- paths left under DEST after recovery: {left:?}");
        let which = self.classify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let list = self.sb.list_json();
        for (i, name) in NAMES.iter().enumerate() {
            let ver = match which {
                Which::Old => self.old[i],
                Which::New => self.new[i],
            };
            let listed = package_in_list(&list, name);
            match (ver, listed) {
                (None, None) => {}
                (Some(v), Some(p)) => {
                    assert_eq!(p.digest, demo_digest(v), "{ctx}: {name} is {v} on disk, list shows another digest");
                    assert_eq!(p.targets, demo_targets_abs(&self.sb.dest.join(name), v), "{ctx}: {name}'s targets");
                }
                (v, p) => panic!("{ctx}: {name}: disk has {v:?}, list shows {p:?}"),
            }
        }
        which
    }

    fn trace(&self) -> Vec<(String, u32)> {
        self.restore();
        let trace = self.root.join("trace-op.txt");
        remove_if_exists(&trace);
        let run = self.sb.run_env(&self.args, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
        assert!(run.success(), "traced apply failed:\n{}", run.describe());
        assert_eq!(self.classify(), Ok(Which::New), "a successful apply did not leave the new world");
        let h = self.sb.run(&["history", "--json"]);
        let rows = h.json();
        let last_id = rows.as_array().and_then(|a| a.last()).map(|r| r["id"].clone()).unwrap();
        let of_last = rows.as_array().unwrap().iter().filter(|r| r["id"] == last_id).count();
        assert_eq!(of_last, 3, "the apply is not ONE transaction of three package changes:\n{}", h.describe());
        read_trace(&trace)
    }

    #[track_caller]
    fn crash(&self, pt: &str, n: u32, ctx: &str) {
        self.restore();
        let spec = format!("{pt}:{n}");
        let run = self.sb.run_env(&self.args, &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
        assert_eq!(run.signal, Some(libc::SIGABRT), "{ctx}: apply did not die at its kill point:\n{}", run.describe());
    }
}

#[test]
fn crash_matrix_apply_install_upgrade_prune() {
    let t0 = Instant::now();
    let p = prepare();
    let pairs = p.trace();
    let every: usize =
        std::env::var("STAGEHAND_APPLY_RECOVERY_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(32).max(1);
    let rtrace = p.root.join("trace-recovery.txt");
    let (mut old, mut new, mut rcrashes) = (0, 0, 0);
    for (i, (pt, n)) in pairs.iter().enumerate() {
        let ctx = format!("[apply] crash at {pt}:{n}");
        p.crash(pt, *n, &ctx);
        remove_if_exists(&rtrace);
        let rec = p.sb.run_env(&["status", "--json"], &[("STAGEHAND_TRACE_POINTS", rtrace.as_os_str())]);
        let which = p.check_recovered(&rec, &ctx);
        match which {
            Which::Old => old += 1,
            Which::New => new += 1,
        }
        if i % every != 0 {
            continue;
        }
        for (rp, rn) in read_trace(&rtrace) {
            let rctx = format!("{ctx}, recovery crashed at {rp}:{rn}");
            p.crash(pt, *n, &rctx);
            let spec = format!("{rp}:{rn}");
            let crashed = p.sb.run_env(&["status", "--json"], &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
            assert_eq!(crashed.signal, Some(libc::SIGABRT), "{rctx}: recovery did not die:\n{}", crashed.describe());
            rcrashes += 1;
            let again = p.check_recovered(&p.sb.run(&["status", "--json"]), &rctx);
            assert_eq!(again, which, "{rctx}: recovery after a crashed recovery decided differently");
        }
    }
    let distinct: BTreeSet<&str> = pairs.iter().map(|(pt, _)| pt.as_str()).collect();
    println!(
        "crash matrix [apply +a ~b -c]: {} points ({} distinct), ended old {old} / new {new}, \
         {rcrashes} recovery crash runs (recovery crashed after every {every}th state), {:.1}s",
        pairs.len(),
        distinct.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(old > 0 && new > 0, "the matrix never ended on one side: old {old}, new {new}");
}

#[test]
fn eio_matrix_apply_install_upgrade_prune() {
    let t0 = Instant::now();
    let p = prepare();
    let pairs = p.trace();
    let (mut failed, mut old, mut new) = (0, 0, 0);
    for (pt, n) in &pairs {
        let ctx = format!("[apply] EIO at {pt}:{n}");
        p.restore();
        let spec = format!("{pt}:{n}=EIO");
        let run = p.sb.run_env(&p.args, &[("STAGEHAND_FAIL_AT", OsStr::new(&spec))]);
        assert!(run.signal.is_none(), "{ctx}: crashed instead of failing:\n{}", run.describe());
        if run.success() {
            assert_eq!(p.classify(), Ok(Which::New), "{ctx}: exited 0 but the world is not the new one");
        } else {
            failed += 1;
            assert!(!run.stderr.trim().is_empty(), "{ctx}: failed without a message");
        }
        let repair = p.sb.run(&["repair"]);
        assert!(repair.success(), "{ctx}: repair failed:\n{}", repair.describe());
        match p.check_recovered(&p.sb.run(&["status", "--json"]), &ctx) {
            Which::Old => old += 1,
            Which::New => {
                new += 1;
            }
        }
    }
    println!(
        "EIO matrix [apply +a ~b -c]: {} points, {failed} failed cleanly, after repair old {old} / new {new}, {:.1}s",
        pairs.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed > 0, "injecting EIO never made the apply fail");
}

fn file_with(sb: &Sandbox, body: &str) -> PathBuf {
    let f = sb.root.join("stagehand.toml");
    fs::write(&f, body).unwrap();
    f
}

#[test]
fn dry_run_changes_nothing_then_apply_then_nothing_to_do() {
    let sb = Sandbox::new();
    let f = file_with(&sb, &format!("{}{}", entry(&sb.dest, "b", "v1"), entry(&sb.dest, "c", "v1")));
    sb.run(&[OsStr::new("apply"), OsStr::new("--file"), f.as_os_str()]).ok();
    fs::remove_file(sb.root.join("stagehand.lock")).unwrap();
    let f = file_with(&sb, &format!("{}{}", entry(&sb.dest, "a", "v1"), entry(&sb.dest, "b", "v2")));
    let before = sb.world();
    let dry = sb.run(&[
        OsStr::new("apply"),
        OsStr::new("--dry-run"),
        OsStr::new("--prune"),
        OsStr::new("--file"),
        f.as_os_str(),
    ]);
    dry.ok();
    assert!(dry.stdout.contains(&format!("+ a {}", demo_digest("v1"))), "{}", dry.describe());
    assert!(dry.stdout.contains(&format!("~ b {} -> {}", demo_digest("v1"), demo_digest("v2"))), "{}", dry.describe());
    assert!(dry.stdout.lines().any(|l| l == "- c"), "{}", dry.describe());
    assert!(sb.world() == before, "--dry-run changed DEST");
    assert!(!sb.root.join("stagehand.lock").exists(), "--dry-run wrote the lock file");
    let json = sb.run(&[
        OsStr::new("--json"),
        OsStr::new("apply"),
        OsStr::new("--dry-run"),
        OsStr::new("--file"),
        f.as_os_str(),
    ]);
    let j = json.ok().json();
    let actions: Vec<&str> =
        j["result"]["changes"].as_array().unwrap().iter().map(|c| c["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["install", "upgrade"], "{}", json.describe());

    sb.run(&[OsStr::new("apply"), OsStr::new("--prune"), OsStr::new("--yes"), OsStr::new("--file"), f.as_os_str()])
        .ok();
    assert_eq!(world_of(&sb.dest, "a"), expected(Some("v1")));
    assert_eq!(world_of(&sb.dest, "b"), expected(Some("v2")));
    assert_eq!(world_of(&sb.dest, "c"), expected(None));
    let lock = fs::read_to_string(sb.root.join("stagehand.lock")).unwrap();
    assert!(lock.contains(&demo_digest("v2")) && lock.contains("[package.a]"), "{lock}");
    sb.run(&["verify"]).ok();

    let again = sb.run(&[OsStr::new("apply"), OsStr::new("--prune"), OsStr::new("--file"), f.as_os_str()]);
    assert!(again.ok().stdout.contains("nothing to do"), "{}", again.describe());
    let hist = sb.run(&["history", "--json"]).ok().json();
    assert_eq!(hist.as_array().unwrap().len(), 2 + 3, "nothing to do still ran a transaction");

    // rollback --apply restores the whole previous set in one transaction.
    sb.run(&["rollback", "--apply"]).ok();
    assert_eq!(world_of(&sb.dest, "a"), expected(None));
    assert_eq!(world_of(&sb.dest, "b"), expected(Some("v1")));
    assert_eq!(world_of(&sb.dest, "c"), expected(Some("v1")));
    let names: BTreeSet<String> = sb.list_json().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["b", "c"].iter().map(|s| s.to_string()).collect());
    sb.run(&["verify"]).ok();
}

#[test]
fn bad_files_name_the_line_and_key_and_change_nothing() {
    let sb = Sandbox::new();
    let good = entry(&sb.dest, "a", "v1");
    for (body, line, key) in [
        (format!("{good}[package.b]\nref = \"{}\"\nto = \"x\"\ntoo = 1\n", demo_source("v1")), 9, "too"),
        (format!("{good}[package.b]\nref = \"oci-layout:\"\nto = \"x\"\n"), 7, "ref"),
        (format!("{good}[package.b]\nref = \"{}\"\nmap = [\"nodir\"]\n", demo_source("v1")), 8, "map"),
    ] {
        let f = file_with(&sb, &body);
        let run = sb.run(&[OsStr::new("apply"), OsStr::new("--file"), f.as_os_str()]);
        run.expect_clean_failure();
        let want = format!("{}:{line}", f.display());
        assert!(run.stderr.contains(&want) && run.stderr.contains(key), "wanted {want} and {key}:\n{}", run.describe());
        assert!(sb.list_json().is_empty(), "a refused file installed something");
        assert!(hash_tree(&sb.dest).is_empty(), "a refused file changed DEST");
    }
}

#[test]
fn locked_installs_the_pinned_digest_and_refuses_a_disagreeing_file() {
    let sb = Sandbox::new();
    let f = file_with(&sb, &entry(&sb.dest, "a", "v1"));
    let lock = sb.run(&[OsStr::new("lock"), OsStr::new("--file"), f.as_os_str()]);
    lock.ok();
    assert!(sb.list_json().is_empty(), "`lock` installed something");
    sb.run(&[OsStr::new("apply"), OsStr::new("--locked"), OsStr::new("--file"), f.as_os_str()]).ok();
    assert_eq!(sb.listed("a").map(|p| p.digest), Some(demo_digest("v1")));
    // The file now asks for v2 but the lock pins v1's reference: refused.
    fs::write(&f, entry(&sb.dest, "a", "v2")).unwrap();
    let before = sb.world();
    let run = sb.run(&[OsStr::new("apply"), OsStr::new("--locked"), OsStr::new("--file"), f.as_os_str()]);
    run.expect_clean_failure();
    assert!(run.stderr.contains("disagree") && run.stderr.contains("stagehand lock"), "{}", run.describe());
    assert!(sb.world() == before, "a refused --locked apply changed DEST");
    assert_eq!(sb.listed("a").map(|p| p.digest), Some(demo_digest("v1")));
}

/// The Steampipe worked example: the db, the FDW inside its version
/// directory, and a plugin, from the shipped `examples/steampipe-*`. A
/// `db-version` bump of both the db and the fdw in the desired file moves
/// the FDW into the new version's directory in the same transaction (a
/// single `install` of the db refuses that change while the FDW is inside).
#[test]
fn steampipe_db_version_bump_carries_the_fdw_in_one_transaction() {
    let sb = Sandbox::new();
    let layout = |k: &str| repo_root().join(format!("examples/steampipe-{k}")).display().to_string();
    let body = |ver: &str| {
        format!(
            "[package.db]\nref = \"oci-layout:{}:v1\"\nprofile = \"steampipe-db\"\ninstall-dir = \"{sp}\"\ndb-version = \"{ver}\"\n\n\
             [package.fdw]\nref = \"oci-layout:{}:v1\"\nprofile = \"steampipe-fdw\"\ninstall-dir = \"{sp}\"\ndb-version = \"{ver}\"\n\n\
             [package.plugin]\nref = \"oci-layout:{}:v1\"\nprofile = \"steampipe-plugin\"\ninstall-dir = \"{sp}\"\n",
            layout("db"),
            layout("fdw"),
            layout("plugin"),
            sp = sb.dest.display()
        )
    };
    let f = file_with(&sb, &body("14.19.0"));
    sb.run(&[OsStr::new("apply"), OsStr::new("--file"), f.as_os_str()]).ok();
    let fdw_files = |ver: &str| -> Vec<PathBuf> {
        let pg = sb.dest.join(format!("db/{ver}/postgres"));
        vec![
            pg.join("lib/postgresql/steampipe_postgres_fdw.so"),
            pg.join("share/postgresql/extension/steampipe_postgres_fdw.control"),
            pg.join("share/postgresql/extension/steampipe_postgres_fdw--1.0.sql"),
        ]
    };
    let old_hashes: Vec<Node> = fdw_files("14.19.0").iter().map(|p| node_of(p).expect("fdw file installed")).collect();

    fs::write(&f, body("14.20.0")).unwrap();
    let dry = sb.run(&[OsStr::new("apply"), OsStr::new("--dry-run"), OsStr::new("--file"), f.as_os_str()]);
    let lines: Vec<&str> = dry.ok().stdout.lines().filter(|l| l.starts_with("~ ")).collect();
    assert_eq!(lines.len(), 2, "the dry run does not list the db and the fdw as changing:\n{}", dry.describe());
    // A new db-version moves the db and the fdw: confirmed with --yes.
    let run = sb.run(&[OsStr::new("apply"), OsStr::new("--yes"), OsStr::new("--file"), f.as_os_str()]);
    run.ok();
    assert!(node_of(&sb.dest.join("db/14.19.0/postgres")).is_none(), "the old postgres/ is still there");
    let new_hashes: Vec<Node> = fdw_files("14.20.0").iter().map(|p| node_of(p).expect("fdw file moved")).collect();
    assert_eq!(new_hashes, old_hashes, "the FDW's files in the new version differ from the ones installed");
    let hist = sb.run(&["history", "--json"]).ok().json();
    let rows = hist.as_array().unwrap();
    let last = rows.last().unwrap()["id"].clone();
    let changed: BTreeSet<&str> =
        rows.iter().filter(|r| r["id"] == last).map(|r| r["package"].as_str().unwrap()).collect();
    assert_eq!(changed, ["db", "fdw"].into_iter().collect(), "not one transaction of the db and the fdw");
    let fdw = sb.listed("fdw").expect("fdw listed");
    let want: BTreeSet<String> = fdw_files("14.20.0").iter().map(|p| p.display().to_string()).collect();
    assert_eq!(fdw.targets, want, "the registry does not put the FDW in the new version");
    sb.run(&["verify"]).ok();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
