//! The cleanup after a transaction, as a user meets it by default
//! (`STAGEHAND_CLEANUP` unset, here `background`): the command reports
//! success and returns once the new version is in place and durable; a
//! process it leaves behind, holding the state-dir lock it handed over,
//! removes what the transaction replaced. Meanwhile readers say so (and
//! `verify` counts no leftover), a
//! writer waits for it (whatever `--lock-timeout`), and a crash of that
//! process leaves the removal to the next command's recovery. Every other
//! test sets `wait`, so it reads the disk as the command left it.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::time::{Duration, Instant};

use common::*;

fn background() -> (&'static str, &'static OsStr) {
    ("STAGEHAND_CLEANUP", OsStr::new("background"))
}

/// The pid the state-dir lock file names, if it says `cleanup` (a holder
/// rewrites the file: it may be caught empty).
fn cleanup_holder(sb: &Sandbox) -> Option<u32> {
    let text = fs::read_to_string(sb.state.join("lock")).expect("read the lock file");
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [pid, "cleanup"] => pid.parse().ok(),
        _ => None,
    }
}

/// The pid of the process a command left behind, once it has written
/// itself into the lock file (it may have ended since).
fn left_behind(sb: &Sandbox) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(pid) = cleanup_holder(sb) {
            return pid;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no process was left behind to clean up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` still runs: a zombie (or no process) has closed its
/// descriptors, so it holds no lock any more. (`/proc/PID/exe` goes before
/// the descriptors do, while the process exits.)
fn alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// Waits until `pid` has ended and the state-dir lock is free: a killed
/// process's main thread turns zombie before its other threads have
/// closed the descriptors they share.
fn wait_gone(sb: &Sandbox, pid: u32) {
    use std::os::fd::AsRawFd;
    let t0 = Instant::now();
    let lock = fs::File::open(sb.state.join("lock")).expect("open the lock file");
    loop {
        // SAFETY: flock(2) on a descriptor this test owns; released at once.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if free {
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            if !alive(pid) {
                return;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "process {pid} never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The upgrade returns with v2 in place while its cleaner, stopped before
/// its first removal, still holds the lock: `status` shows the cleanup and
/// the paths left, `list` shows v2, an `uninstall` started now waits and
/// says for what; once the cleaner resumes, it removes v1's copies, and the
/// uninstall runs after it.
#[test]
fn the_replaced_version_is_removed_after_the_command_returns() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let stop = ("STAGEHAND_STOP_AT", OsStr::new("fsops.remove.cleanup"));
    let run = sb.run_env(&sb.install_demo_args("v2"), &[background(), stop]);
    run.ok();
    assert!(run.stdout.contains("upgrade demo"), "{}", run.describe());
    let cleaner = left_behind(&sb);
    let resume = Resume(cleaner);
    wait_stopped(cleaner);

    // The new version is in place and recorded before the old one goes.
    assert_eq!(sb.listed(DEMO).expect("demo is listed").digest, demo_digest("v2"));
    let left = sb.leftovers();
    assert!(!left.is_empty(), "v1's copies are still there while the cleaner is stopped");
    let status = sb.status_json();
    if schema::validator_or_skip("the_replaced_version_is_removed_after_the_command_returns") {
        let mut schemas = schema::Schemas::new();
        schemas.check("status", "status --json with a cleanup pending", &status);
        schemas.finish();
    }
    assert_eq!(status["in_progress"], true, "{status}");
    assert_eq!(status["writer_pid"], cleaner, "{status}");
    assert!(pending_of(&status).is_empty(), "the transaction itself is finished: {status}");
    let cleanups = status["cleanup_pending"].as_array().cloned().unwrap_or_default();
    assert_eq!(cleanups.len(), 1, "{status}");
    let paths: Vec<String> =
        cleanups[0]["paths"].as_array().expect("paths").iter().map(|p| p.as_str().expect("path").into()).collect();
    assert!(!paths.is_empty() && paths.iter().all(|p| p.contains(".stagehand-")), "{status}");
    let human = sb.run(&["status"]);
    human.ok();
    assert!(human.stdout.contains("what it replaced is being removed"), "{}", human.describe());
    assert!(human.stderr.contains("is removing what the last transaction replaced"), "{}", human.describe());

    // What is being removed is no leftover: `verify` finds nothing wrong.
    sb.run(&["verify"]).ok();

    // A writer waits for the cleanup, even with the default lock timeout of 0.
    let (writer, argv) = spawn_bin(&sb.state, &sb.root, &sb.uninstall_args(DEMO), &[background()]);
    std::thread::sleep(Duration::from_millis(500));
    let mut writer = writer;
    assert!(writer.try_wait().expect("try_wait").is_none(), "the uninstall did not wait for the cleanup");
    drop(resume);
    let done = finish(writer, argv);
    done.ok();
    assert!(done.stderr.contains("waiting for stagehand"), "{}", done.describe());
    assert!(done.stderr.contains("to finish removing what the last transaction replaced"), "{}", done.describe());
    wait_gone(&sb, cleaner);
    // The uninstall's own process left behind (it removes the app tree) ends too.
    wait_gone(&sb, left_behind(&sb));
    assert!(sb.leftovers().is_empty(), "left behind: {:?}", sb.leftovers());
    assert!(sb.listed(DEMO).is_none());
    let status = sb.status_json();
    assert!(status["cleanup_pending"].as_array().is_some_and(|c| c.is_empty()), "{status}");
    let history = sb.run(&["history", "--json"]).ok().json();
    let outcomes: Vec<&str> =
        history.as_array().expect("history").iter().filter_map(|h| h["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["done", "done", "done"], "{history}");
}

/// The cleaner killed in the middle of removing v1's tree: the upgrade had
/// already reported success and v2 stays; the next command (`status`)
/// finishes the removal in its recovery and says so; `verify` is clean.
#[test]
fn a_cleaner_killed_midway_leaves_the_removal_to_recovery() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let v2_world = {
        let other = Sandbox::new();
        other.install_demo("v2").ok();
        other.world()
    };
    let crash = ("STAGEHAND_CRASH_AT", OsStr::new("fsops.remove.cleanup.partial"));
    sb.run_env(&sb.install_demo_args("v2"), &[background(), crash]).ok();
    wait_gone(&sb, left_behind(&sb));
    let left = sb.leftovers();
    assert!(!left.is_empty(), "the cleaner was killed before it removed everything");
    let mut seen = sb.world();
    seen.retain(|path, _| !path.split('/').any(|part| part.contains(".stagehand-")));
    assert_eq!(normalize(&seen), normalize(&v2_world), "v2 is in place beside the leftovers");

    let status = sb.run(&["status", "--json"]);
    status.ok();
    if schema::validator_or_skip("a_cleaner_killed_midway_leaves_the_removal_to_recovery") {
        let mut schemas = schema::Schemas::new();
        schemas.check_run("status", &status);
        schemas.finish();
    }
    let status = status.json();
    let recovered = status["recovered"].as_array().cloned().unwrap_or_default();
    assert!(
        recovered.iter().any(|r| r["outcome"] == "cleaned up" && r["step_found"] == "cleaning"),
        "recovery finished the cleanup: {status}"
    );
    assert!(sb.leftovers().is_empty(), "left behind: {:?}", sb.leftovers());
    assert_eq!(normalize(&sb.world()), normalize(&v2_world));
    sb.run(&["verify"]).ok();
}

/// `finish-cleanup` is internal: given a descriptor that is not the lock,
/// it refuses and changes nothing.
#[test]
fn finish_cleanup_refuses_a_descriptor_that_is_not_the_lock() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let before = sb.world();
    sb.run(&["finish-cleanup", "--lock-fd", "9"]).fails_with(&["descriptor 9 is not the lock"]);
    assert_eq!(sb.world(), before);
}

/// The blobs of a version installed from a layout are kept in the cache by
/// the process the command leaves behind: once it is done, the layout can
/// go, and `rollback` (offline, from the cache) still brings v1 back.
#[test]
fn the_process_left_behind_keeps_a_layouts_blobs_for_rollback() {
    let sb = Sandbox::new();
    // Named as the package is (a layout's directory names its package).
    let layout = sb.root.join("layouts").join(DEMO);
    fs::create_dir_all(sb.root.join("layouts")).expect("mkdir");
    copy_tree(&demo_layout(), &layout);
    let source = |tag: &str| format!("oci-layout:{}:{tag}", layout.display());
    for tag in ["v1", "v2"] {
        sb.run_env(&demo_install_args(&sb.dest, &source(tag)), &[background()]).ok();
        wait_gone(&sb, left_behind(&sb));
    }
    fs::rename(sb.root.join("layouts"), sb.root.join("layouts.gone")).expect("move the layout away");
    sb.run(&["rollback", DEMO]).ok();
    assert_eq!(sb.listed(DEMO).expect("demo is listed").digest, demo_digest("v1"));
    assert!(sb.leftovers().is_empty(), "left behind: {:?}", sb.leftovers());
}

/// A mistyped `STAGEHAND_CLEANUP` is named in a warning, and the default
/// (a process left behind) is used: the upgrade still succeeds.
#[test]
fn a_mistyped_cleanup_setting_is_named_and_the_default_used() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let typo = ("STAGEHAND_CLEANUP", OsStr::new("wiat"));
    let run = sb.run_env(&sb.install_demo_args("v2"), &[typo]);
    run.ok();
    assert!(run.stderr.contains("STAGEHAND_CLEANUP=\"wiat\" is neither"), "{}", run.describe());
    wait_gone(&sb, left_behind(&sb));
    assert!(sb.leftovers().is_empty(), "left behind: {:?}", sb.leftovers());
}

/// SIGKILL of the process left behind at an arbitrary instant, 24 times:
/// each upgrade or downgrade has reported success, so after the next
/// command's recovery the disk holds exactly the version it installed
/// (hashed here) and no `.stagehand-` name, and `list` agrees.
#[test]
fn the_process_left_behind_killed_at_random_instants() {
    let sb = Sandbox::new();
    let base = sb.world();
    sb.install_demo("v1").ok();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut left_work, mut after_the_end) = (0, 0);
    for round in 0..24u64 {
        let tag = if round % 2 == 0 { "v2" } else { "v1" };
        sb.run_env(&sb.install_demo_args(tag), &[background()]).ok();
        let cleaner = left_behind(&sb);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // From at once to well after the removal (a few ms), 2 ms apart, jittered.
        std::thread::sleep(Duration::from_micros(round * 2_000 + seed % 2_000));
        // SAFETY: kill(2) of a process this test's command started; if it
        // has ended, its pid is not reused within the round.
        unsafe { libc::kill(cleaner as libc::pid_t, libc::SIGKILL) };
        wait_gone(&sb, cleaner);
        match sb.leftovers().is_empty() {
            false => left_work += 1,
            true => after_the_end += 1,
        }
        let status = sb.run(&["status", "--json"]);
        status.ok();
        assert!(sb.leftovers().is_empty(), "round {round}: left behind: {:?}\n{}", sb.leftovers(), status.describe());
        assert_eq!(normalize(&sb.world()), normalize(&demo_world(&base, Some(tag))), "round {round}");
        assert_eq!(sb.listed(DEMO).expect("demo is listed").digest, demo_digest(tag), "round {round}");
    }
    println!("{left_work} of 24 kills left a removal for recovery, {after_the_end} found it done");
    assert!(left_work > 0, "no kill landed before the removal ended: the test tested nothing");
}
