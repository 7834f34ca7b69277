//! A journal that cannot be opened is evidence, kept byte for byte; the way
//! back (`repair --set-aside-journal`) finds what the old journal left on
//! disk even without its bytes; sled's own lock is not damage.
//!
//! Each case damages a real state dir left by the real binary (an upgrade
//! killed at its commit point, so staging paths hold v2 content only the
//! journal knows about) and checks the journal's files with sha256.

mod common;

use std::path::Path;

use common::*;

/// v1 installed, then an upgrade to v2 killed before its commit record: the
/// staging paths (returned, absolute) exist and only the journal names them.
fn killed_upgrade() -> (Sandbox, Vec<String>) {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let crash = [("STAGEHAND_CRASH_AT", std::ffi::OsStr::new("journal.commit"))];
    let run = sb.run_env(&sb.install_demo_args("v2"), &crash);
    assert!(!run.success(), "the upgrade was to be killed:\n{}", run.describe());
    let staged: Vec<String> = sb
        .leftovers()
        .into_iter()
        .filter(|s| s.rsplit('/').next().is_some_and(|n| n.contains(".stagehand-")))
        .map(|s| sb.dest.join(s).display().to_string())
        .collect();
    assert!(!staged.is_empty(), "no staging paths after the kill");
    (sb, staged)
}

/// sha256 of every file under the journal directory.
fn journal_hashes(sb: &Sandbox) -> Tree {
    hash_tree(&sb.state.join("journal"))
}

fn garbage_at_4096(db: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

fn reported(run: &Run) -> Vec<String> {
    run.json()["stagehand_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

#[track_caller]
fn assert_all_reported(staged: &[String], reported: &[String]) {
    for s in staged {
        assert!(reported.contains(s), "staging path {s} not reported by set-aside: {reported:?}");
    }
}

/// Garbage over the second 4 KiB of `db`: every command refuses (exit 6) and
/// leaves every byte of the journal as it was (sled would rewrite the rest
/// of the damaged segment and fsync it); set-aside afterwards still finds
/// the staging paths, and says nothing was changed only when that is true.
#[test]
fn garbage_in_db_is_refused_byte_for_byte_then_set_aside_finds_staging() {
    let (sb, staged) = killed_upgrade();
    let db = sb.state.join("journal/db");
    garbage_at_4096(&db);
    let before = journal_hashes(&sb);
    let db_sum = sha256_file(&db);
    for cmd in [&["status"][..], &["list"], &["status", "--json"], &["repair", "--dry-run"]] {
        let run = sb.run(cmd);
        assert_eq!(run.code, Some(6), "`{cmd:?}` on garbage in db:\n{}", run.describe());
        assert_eq!(sha256_file(&db), db_sum, "`{cmd:?}` changed journal/db while refusing it");
        let now = journal_hashes(&sb);
        assert!(now == before, "`{cmd:?}` changed the journal:\n{}", tree_diff(&now, &before, 20));
        if !cmd.contains(&"--json") {
            assert!(run.stderr.contains("Nothing was changed"), "{}", run.describe());
            assert!(run.stderr.contains("--set-aside-journal"), "{}", run.describe());
        }
    }
    assert!(!sb.state.join("journal.probe").exists(), "the probe copy was left behind");
    let run = sb.run(&["repair", "--set-aside-journal", "--json"]);
    run.ok();
    assert_all_reported(&staged, &reported(&run));
    let moved = run.json()["moved"][0]["to"].as_str().unwrap().to_string();
    assert_eq!(sha256_file(&Path::new(&moved).join("db")), db_sum, "the journal was not set aside byte for byte");
}

/// The same damage, and set-aside is the first command run: it scans
/// before anything opens sled (which would erase the names it looks for).
#[test]
fn set_aside_run_first_on_garbage_finds_staging() {
    let (sb, staged) = killed_upgrade();
    let db = sb.state.join("journal/db");
    garbage_at_4096(&db);
    let db_sum = sha256_file(&db);
    let run = sb.run(&["repair", "--set-aside-journal", "--json"]);
    run.ok();
    assert_all_reported(&staged, &reported(&run));
    let moved = run.json()["moved"][0]["to"].as_str().unwrap().to_string();
    assert_eq!(sha256_file(&Path::new(&moved).join("db")), db_sum, "the journal was not set aside byte for byte");
}

/// `db` cut to 0 bytes: the journal's bytes are gone, yet set-aside reports
/// the staging paths, found in the directories `STATE/places` recorded
/// before they were created; the next transaction numbers past them.
#[test]
fn set_aside_of_an_emptied_db_finds_staging_by_scanning() {
    let (sb, staged) = killed_upgrade();
    let db = sb.state.join("journal/db");
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(0).unwrap();
    let status = sb.run(&["status"]);
    assert_eq!(status.code, Some(6), "{}", status.describe());
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "`status` wrote to the emptied db it refused");
    let run = sb.run(&["repair", "--set-aside-journal", "--json"]);
    run.ok();
    assert_all_reported(&staged, &reported(&run));
    let next = run.json()["next_txn_after"].as_u64().unwrap();
    assert!(next >= 2, "the staging names carry txn 2, yet next_txn_after is {next}");
}

/// Another process holds sled's flock on `journal/db` (as sled does, and as
/// an exiting stagehand or a forked child still can after the state-dir lock
/// is free): exit 4 naming that process, no set-aside hint, nothing changed;
/// once it lets go, the same command succeeds.
#[test]
fn sled_lock_held_by_another_process_is_locked_not_damage() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let db = sb.state.join("journal/db");
    let before = journal_hashes(&sb);
    let c_db = std::ffi::CString::new(db.as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    // SAFETY: between fork and exec only async-signal-safe calls (open, flock);
    // the descriptor is opened without O_CLOEXEC so the lock outlives exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(c_db.as_ptr(), libc::O_RDWR);
            if fd < 0 || libc::flock(fd, libc::LOCK_EX) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn a lock holder");
    let pid = child.id();
    let t0 = std::time::Instant::now();
    let run = sb.run(&["status"]);
    let waited = t0.elapsed();
    let json = sb.run(&["list", "--json"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(run.code, Some(4), "sled's lock held elsewhere must exit 4 (locked):\n{}", run.describe());
    assert!(run.stderr.contains(&pid.to_string()), "the holder {pid} is not named:\n{}", run.describe());
    assert!(!run.stderr.contains("set-aside"), "a held lock is not damage; no set-aside hint:\n{}", run.describe());
    assert!(waited >= std::time::Duration::from_secs(2), "it did not wait for the holder ({waited:?})");
    assert_eq!(json.json()["exit_code"], 4, "{}", json.describe());
    let now = journal_hashes(&sb);
    assert!(now == before, "the journal changed:\n{}", tree_diff(&now, &before, 20));
    sb.run(&["status"]).ok();
    assert!(sb.listed(DEMO).is_some());
}

/// `repair --set-aside-journal` killed at each kill point it passes (traced
/// first), on a journal with garbage in `db`: afterwards the damaged
/// journal's bytes still exist (as `journal` or a `journal.damaged-*`),
/// every staging path is still on disk, and once the user follows the
/// messages (`status`; on exit 6, set-aside again) the state dir works, the
/// staging paths are still there, and a new transaction does not reuse
/// their id.
#[test]
fn set_aside_killed_at_each_point_loses_nothing() {
    let (sb, staged) = killed_upgrade();
    garbage_at_4096(&sb.state.join("journal/db"));
    let db_sum = sha256_file(&sb.state.join("journal/db"));
    let saved = tempdir();
    sb.save_to(saved.path());
    let trace = saved.path().join("trace");
    let t = sb.run_env(&["repair", "--set-aside-journal"], &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]);
    t.ok();
    let points = read_trace(&trace);
    assert!(
        points.iter().any(|(p, _)| p == "fsops.rename.journal_aside")
            && points.iter().any(|(p, _)| p.starts_with("fsops.copy.journal_probe")),
        "set-aside passes no rename or probe copy point: {points:?}"
    );
    let other = Sandbox::new();
    for (point, n) in &points {
        sb.restore_from(saved.path());
        let at = format!("{point}:{n}");
        let crash =
            sb.run_env(&["repair", "--set-aside-journal"], &[("STAGEHAND_CRASH_AT", std::ffi::OsStr::new(&at))]);
        assert!(crash.code != Some(0), "not killed at {at}:\n{}", crash.describe());
        // The damaged journal, byte for byte, is still somewhere.
        let kept = std::fs::read_dir(&sb.state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("journal"))
            .any(|e| e.path().join("db").is_file() && sha256_file(&e.path().join("db")) == db_sum);
        assert!(kept, "killed at {at}: the damaged journal's db is gone or changed");
        for s in &staged {
            assert!(Path::new(s).exists(), "killed at {at}: {s} is gone");
        }
        // Follow the messages until the state dir works.
        let mut worked = false;
        for _ in 0..3 {
            let st = sb.run(&["status"]);
            if st.code == Some(0) {
                worked = true;
                break;
            }
            assert_eq!(st.code, Some(6), "killed at {at}, then `status`:\n{}", st.describe());
            sb.run(&["repair", "--set-aside-journal"]).ok();
        }
        assert!(worked, "killed at {at}: the state dir never worked again");
        for s in &staged {
            assert!(Path::new(s).exists(), "killed at {at}, after recovery: {s} is gone");
        }
        let args = demo_install_args(&other.dest, &demo_source("v1"));
        let run = sb.run(&[args.as_slice(), &["--json".into(), "--name".into(), "other".into()]].concat());
        run.ok();
        let txn = run.json()["result"]["txn"].as_u64().unwrap_or(0);
        assert!(txn > 2, "killed at {at}: the next transaction reused id {txn}:\n{}", run.describe());
        remove_if_exists(&other.dest);
        std::fs::create_dir_all(&other.dest).unwrap();
    }
    println!("set-aside killed at {} points: nothing lost", points.len());
}

/// A full disk while copying the journal to check it is not damage: after a
/// kill (so the next open checks a copy), ENOSPC injected into the copy
/// makes `status` fail cleanly (exit 1, not 6, no set-aside hint) and
/// `repair --set-aside-journal` refuse, moving nothing; without the fault
/// both the journal and the kill's staging paths are recovered as usual.
#[test]
fn a_full_disk_while_probing_is_not_damage() {
    let (sb, _staged) = killed_upgrade();
    let before = journal_hashes(&sb);
    let enospc = [("STAGEHAND_FAIL_AT", std::ffi::OsStr::new("fsops.copy.journal_probe:2=ENOSPC"))];
    let st = sb.run_env(&["status"], &enospc);
    assert_eq!(st.code, Some(1), "{}", st.describe());
    assert!(!st.stderr.contains("set-aside"), "{}", st.describe());
    let aside = sb.run_env(&["repair", "--set-aside-journal"], &enospc);
    assert_eq!(aside.code, Some(1), "set-aside of a good journal on a full disk:\n{}", aside.describe());
    assert!(sb.state.join("journal/db").exists(), "the journal was moved aside");
    let now = journal_hashes(&sb);
    assert!(now == before, "the journal changed:\n{}", tree_diff(&now, &before, 20));
    sb.run(&["status"]).ok();
    assert!(sb.leftovers().is_empty(), "recovery left {:?}", sb.leftovers());
}
