//! Nothing outside a package's own paths is touched, and it works as an
//! ordinary user (issue 10). Each case failed on the code before it:
//!
//! - nested targets across versions (v1 `--to DEST/app`, v2 `--map
//!   *.so=DEST/app`) are refused, naming both, and nothing changes;
//! - an artifact with 0555 directories and 0444 files installs, upgrades and
//!   uninstalls as an ordinary user (uid 65534 through `setpriv` when the
//!   test runs as root), leaving nothing behind, every command usable;
//! - a filesystem mounted inside a target: the upgrade is refused naming the
//!   mount, the user's file on it survives; `fsops::remove_tree` never
//!   crosses into another filesystem (root only);
//! - the state dir on its own filesystem (a tmpfs), the targets on another:
//!   install, upgrade, uninstall, each verified (root only);
//! - targets and state dir on a filesystem without birth times (ext4 with
//!   128-byte inodes, where only inode numbers and digests tell objects
//!   apart): install, upgrade, rollback, uninstall, each verified, and an
//!   upgrade killed after its first swap recovered (root only);
//! - a full disk: an upgrade too big is refused before anything is written,
//!   and one whose layer expands past its estimate is stopped while staging
//!   before the disk fills (root only: a loop-mounted ext4).
//!
//! Root-only cases skip loudly when not root, and fail when `CI` is set.
//! The disk is read with the independent hasher of tests/common.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// `v1`: the demo installed normally; `v2` with its `*.so` mapped into
/// DEST/app, v1's app directory, and the tar layer to DEST/other.
#[test]
fn nested_targets_across_versions_are_refused() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let before = sb.world();
    let list_before = sb.list_json();
    let mut args = demo_install_args(&sb.dest, &demo_source("v2"));
    // --to DEST/other, and *.so into DEST/app.
    let to = args.iter().position(|a| a == "--to").unwrap();
    args[to + 1] = sb.dest.join("other").into();
    let so = args.iter().position(|a| a.to_string_lossy().starts_with("*.so=")).unwrap();
    let mut m = OsString::from("*.so=");
    m.push(sb.dest.join("app"));
    args[so] = m;
    // A new placement: --move, so the nesting is what is refused.
    args.push("--move".into());
    let run = sb.run(&args);
    run.expect_clean_failure();
    let app = sb.dest.join("app");
    assert!(
        run.stderr.contains(&*app.to_string_lossy()),
        "the refusal does not name {}:\n{}",
        app.display(),
        run.describe()
    );
    assert!(run.stderr.contains("nests"), "the refusal does not say the targets nest:\n{}", run.describe());
    let after = sb.world();
    assert!(after == before, "a refused upgrade changed DEST:\n{}", tree_diff(&after, &before, 20));
    assert_eq!(sb.list_json(), list_before, "a refused upgrade changed the registry");
    assert!(pending_of(&sb.status_json()).is_empty());
    sb.run(&["verify", DEMO]).ok();
}

/// A read-only tree: `ro/` and `ro/sub/` 0555, files 0444.
fn read_only_tar(tag: &str) -> Vec<u8> {
    let dir = |n: &str| RawEntry { mode: 0o555, ..RawEntry::dir(n) };
    let file = |n: &str, d: &[u8]| RawEntry { mode: 0o444, ..RawEntry::file(n, d) };
    raw_tar(&[
        dir("ro/"),
        file("ro/file.txt", format!("read-only {tag}\n").as_bytes()),
        dir("ro/sub/"),
        file("ro/sub/deep.txt", format!("deep {tag}\n").as_bytes()),
        RawEntry { mode: 0o555, ..RawEntry::dir("ro/sub/empty/") },
    ])
}

#[test]
fn read_only_tree_as_an_ordinary_user() {
    let sb = Sandbox::new();
    let layouts = sb.root.join("layouts");
    let v1 = hostile_demo_layout(&layouts.join("ro-v1"), "v1", &read_only_tar("v1"));
    let v2 = hostile_demo_layout(&layouts.join("ro-v2"), "v2", &read_only_tar("v2"));
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        chown_tree(&sb.root, NOBODY);
    }
    let run = |args: &[OsString]| run_bin_as(NOBODY, &sb.state, &sb.root, args, &[]);
    let with_name = |src: &str| {
        let mut a = demo_install_args(&sb.dest, src);
        a.extend(["--name".into(), "ro".into()]);
        a
    };
    run(&with_name(&v1)).ok();
    let f = sb.dest.join("app/ro/file.txt");
    assert_eq!(fs::symlink_metadata(sb.dest.join("app/ro")).unwrap().permissions().mode() & 0o7777, 0o555);
    assert_eq!(fs::symlink_metadata(&f).unwrap().permissions().mode() & 0o7777, 0o444);
    // The upgrade's cleanup removes the old read-only tree.
    let up = run(&with_name(&v2));
    up.ok();
    assert_eq!(fs::read(&f).unwrap(), b"read-only v2\n");
    assert!(sb.leftovers().is_empty(), "leftovers after the upgrade: {:?}\n{}", sb.leftovers(), up.describe());
    for cmd in [&["status"][..], &["list"], &["verify", "ro"], &["history"]] {
        let args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
        run(&args).ok();
    }
    // Rollback to v1 and uninstall: each removes a read-only tree.
    run(&["rollback".into(), "ro".into()]).ok();
    assert_eq!(fs::read(&f).unwrap(), b"read-only v1\n");
    assert!(sb.leftovers().is_empty(), "leftovers after rollback: {:?}", sb.leftovers());
    run(&["uninstall".into(), "ro".into()]).ok();
    assert!(node_of(&sb.dest.join("app")).is_none(), "app still there after uninstall");
    assert!(sb.leftovers().is_empty(), "leftovers after uninstall: {:?}", sb.leftovers());
    run(&["status".into()]).ok();
    println!(
        "read-only tree: install, upgrade, rollback, uninstall as {}",
        if as_root { "uid 65534" } else { "this user" }
    );
}

#[test]
fn a_mount_inside_a_target_is_never_crossed() {
    if !root_or_skip("a_mount_inside_a_target_is_never_crossed (mounts a tmpfs)") {
        return;
    }
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let mnt = sb.dest.join("app/mnt");
    let mount = Mount::tmpfs(&mnt, "4m");
    fs::write(mnt.join("user-data.txt"), b"the user's file\n").unwrap();
    let before = sb.world();
    let list_before = sb.list_json();

    for args in [sb.install_demo_args("v2"), sb.uninstall_args(DEMO)] {
        let run = sb.run(&args);
        run.expect_clean_failure();
        assert!(
            run.stderr.contains(&*mnt.to_string_lossy()),
            "the refusal does not name the mount:\n{}",
            run.describe()
        );
        assert!(run.stderr.contains("umount"), "the refusal does not say what to do:\n{}", run.describe());
        let after = sb.world();
        assert!(after == before, "a refused command changed DEST:\n{}", tree_diff(&after, &before, 20));
        assert_eq!(sb.list_json(), list_before);
        assert!(pending_of(&sb.status_json()).is_empty());
    }
    assert_eq!(fs::read(mnt.join("user-data.txt")).unwrap(), b"the user's file\n");

    // The removal primitive itself never crosses a mount: a tree with a
    // tmpfs inside is refused before anything in it is removed.
    let tree = sb.root.join("tree");
    fs::create_dir_all(tree.join("a")).unwrap();
    fs::write(tree.join("a/mine.txt"), b"x").unwrap();
    let inner = Mount::tmpfs(&tree.join("a/inner"), "1m");
    fs::write(inner.at.join("theirs.txt"), b"y").unwrap();
    let e = stagehand::fsops::remove_tree(&tree, "test").expect_err("remove_tree crossed a mount");
    assert_eq!(e.kind(), ErrorKind::CrossesDevices, "{e}");
    assert!(e.to_string().contains("inner"), "{e}");
    assert_eq!(fs::read(inner.at.join("theirs.txt")).unwrap(), b"y", "a file on the mount was removed");
    assert_eq!(fs::read(tree.join("a/mine.txt")).unwrap(), b"x", "a refused removal removed something");
    drop(inner);
    stagehand::fsops::remove_tree(&tree, "test").expect("remove after the umount");

    // Unmounted (and the mount point removed), the upgrade goes through.
    drop(mount);
    fs::remove_file(mnt.join("user-data.txt")).ok();
    fs::remove_dir(&mnt).unwrap();
    sb.install_demo("v2").ok();
    sb.run(&["verify", DEMO]).ok();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn state_dir_on_another_filesystem() {
    if !root_or_skip("state_dir_on_another_filesystem (mounts a tmpfs)") {
        return;
    }
    let sb = Sandbox::new();
    let _state = Mount::tmpfs(&sb.state, "64m");
    let base = sb.world();
    for (tag, ver) in [("v1", Some("v1")), ("v2", Some("v2"))] {
        sb.install_demo(tag).ok();
        let w = sb.world();
        let want = demo_world(&base, ver);
        assert!(w == want, "after install {tag}:\n{}", tree_diff(&w, &want, 20));
        sb.run(&["verify", DEMO]).ok();
    }
    sb.run(&["rollback", DEMO]).ok();
    let w = sb.world();
    let want = demo_world(&base, Some("v1"));
    assert!(w == want, "after rollback:\n{}", tree_diff(&w, &want, 20));
    sb.run(&["uninstall", DEMO]).ok();
    let w = normalize(&sb.world());
    let want = normalize(&demo_world(&base, None));
    assert!(w == want, "after uninstall:\n{}", tree_diff(&w, &want, 20));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(Path::new(&sb.state).join("journal").exists(), "the journal is not on the tmpfs state dir");
}

/// Everything on ext4 made with `mkfs.ext4 -I 128`: `statx` reports no
/// birth time there, so recovery has only inode numbers and digests.
#[test]
fn a_filesystem_without_birth_times() {
    if std::env::var_os("STAGEHAND_TEST_UNPRIVILEGED").is_some() {
        println!("SKIPPED (needs root, unprivileged pass): a_filesystem_without_birth_times");
        eprintln!("SKIPPED (needs root, unprivileged pass): a_filesystem_without_birth_times");
        return;
    }
    if !root_or_skip("a_filesystem_without_birth_times (loop-mounts ext4 -I 128)") {
        return;
    }
    let tmp = tempdir();
    let mnt = tmp.path().join("mnt");
    let _m = Mount::ext4_without_birth_times(&tmp.path().join("img"), 64, &mnt);
    let sb = Sandbox::at(mnt.join("sb"));
    let base = sb.world();
    let check = |what: &str, ver: Option<&str>| {
        let w = normalize(&sb.world());
        let want = normalize(&demo_world(&base, ver));
        assert!(w == want, "after {what}:\n{}", tree_diff(&w, &want, 20));
        if ver.is_some() {
            sb.run(&["verify", DEMO]).ok();
        }
        assert!(sb.leftovers().is_empty(), "after {what}: {:?}", sb.leftovers());
        assert!(pending_of(&sb.status_json()).is_empty(), "after {what}");
    };
    sb.install_demo("v1").ok();
    check("install v1", Some("v1"));
    // An upgrade killed after its first swap: recovery rolls it forward.
    let crash = [("STAGEHAND_CRASH_AT", std::ffi::OsStr::new("journal.swapping:2"))];
    let run = sb.run_env(&sb.install_demo_args("v2"), &crash);
    assert!(!run.success(), "the upgrade was to be killed:\n{}", run.describe());
    sb.run(&["repair"]).ok();
    check("the upgrade to v2, recovered", Some("v2"));
    sb.run(&["rollback", DEMO]).ok();
    check("rollback", Some("v1"));
    sb.run(&["uninstall", DEMO]).ok();
    check("uninstall", None);
}

/// Pseudo-random bytes (incompressible), from a fixed seed.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 24 MiB ext4 holds the state dir and the targets; v1 (small) is
/// installed, then an upgrade to a 20 MB artifact is tried. It is refused
/// before anything is written, with both numbers and the path, and the disk
/// is left as it was: no partial copy of the layout's blob fills it.
#[test]
fn a_full_disk_is_refused_early_and_left_as_it_was() {
    if !root_or_skip("a_full_disk_is_refused_early_and_left_as_it_was (loop-mounts an ext4)") {
        return;
    }
    let small = SmallDisk::with_demo_v1();
    let (sb, disk) = (&small.sb, &small.disk);
    let big = raw_tar(&[RawEntry::file("big.bin", &noise(20 << 20))]);
    let source = hostile_demo_layout(&small.tmp.path().join("layouts/big"), "v2", &big);
    // v1's layout blobs may wait unsynced in partial/ for a rollback to
    // promote them; the failed upgrade may add nothing beside them.
    let partials = || -> Vec<_> {
        let mut found: Vec<_> = fs::read_dir(sb.state.join("blobs/partial"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        found.sort();
        found
    };
    let partials_before = partials();
    let (run, after_free) = small.failed_upgrade(&source);
    assert!(run.stderr.contains("not enough free space"), "{}", run.describe());
    assert!(run.stderr.contains("bytes are free"), "the refusal does not give the free bytes:\n{}", run.describe());
    assert!(
        run.stderr.contains(&*disk.at.to_string_lossy()),
        "the refusal does not name the path:\n{}",
        run.describe()
    );
    let partials_after = partials();
    assert!(partials_after == partials_before, "partial blobs left: {partials_after:?}, before: {partials_before:?}");
    println!("full disk: refused with {after_free} bytes free; {}", run.stderr.lines().last().unwrap_or(""));
}

/// The same disk, and an upgrade whose tar layer the check underestimates:
/// a gzip of two members (as `cat a.gz b.gz` makes), whose last member's
/// ISIZE, the only one the check reads, says 1,024 bytes while the layer
/// expands to 40 MiB. The check lets it through; staging counts what it
/// writes and stops it once it passes what was free less the margin, before
/// the disk fills, naming the filesystem, the estimate and what was written.
/// The upgrade rolls back: v1 intact, no `.stagehand-` path, free space back.
#[test]
fn a_layer_expanding_past_its_estimate_is_stopped_while_staging() {
    if !root_or_skip("a_layer_expanding_past_its_estimate_is_stopped_while_staging (loop-mounts an ext4)") {
        return;
    }
    let small = SmallDisk::with_demo_v1();
    let big = raw_tar(&[RawEntry::file("big.bin", &vec![0u8; 40 << 20])]);
    let (head, tail) = big.split_at(big.len() - 1024);
    let two_members = |mt: &str| [encode_layer(mt, head), encode_layer(mt, tail)].concat();
    let source = hostile_demo_layout_with(&small.tmp.path().join("layouts/bomb"), "v2", &two_members);
    let (run, _) = small.failed_upgrade(&source);
    for needle in ["expands to more than the free-space check allowed", "estimated", "bytes were written"] {
        assert!(run.stderr.contains(needle), "the error lacks {needle:?}:\n{}", run.describe());
    }
    let at = small.disk.at.to_string_lossy();
    assert!(run.stderr.contains(&*at), "the error does not name the path:\n{}", run.describe());
    assert!(!run.stderr.contains("No space left"), "the disk filled before staging stopped:\n{}", run.describe());
    assert!(small.sb.leftovers().is_empty(), "left behind: {:?}", small.sb.leftovers());
    println!("stopped while staging: {}", run.stderr.lines().next().unwrap_or(""));
}

/// A committed upgrade whose cleanup cannot remove the old tree (EACCES,
/// injected at the first cleanup removal): the upgrade still finishes, the
/// message names the path and the fix, nothing stays pending, and every later
/// command works; once the user removes the path, nothing is left.
#[test]
fn a_cleanup_that_cannot_remove_keeps_every_command_usable() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    let base = without_demo(&sb.world());
    let run =
        sb.run_env(&sb.install_demo_args("v2"), &[("STAGEHAND_FAIL_AT", "fsops.remove.cleanup:1=EACCES".as_ref())]);
    run.ok();
    let left = sb.leftovers();
    let tops: Vec<&String> = left
        .iter()
        .filter(|k| !Path::new(k).parent().is_some_and(|p| p.to_string_lossy().contains("stagehand-")))
        .collect();
    assert_eq!(tops.len(), 1, "expected the one path cleanup could not remove: {left:?}\n{}", run.describe());
    let path = sb.dest.join(tops[0]);
    assert!(
        run.stderr.contains(&*path.to_string_lossy()),
        "the warning does not name {}:\n{}",
        path.display(),
        run.describe()
    );
    assert!(run.stderr.contains("rm -rf"), "the warning does not say how to remove it:\n{}", run.describe());
    assert!(pending_of(&sb.status_json()).is_empty(), "the finished upgrade is still pending");
    let w = normalize(&without_prefix_leftovers(&sb.world()));
    let want = normalize(&demo_world(&base, Some("v2")));
    assert!(w == want, "after the upgrade:\n{}", tree_diff(&w, &want, 20));
    // `verify` names it too, as a leftover of the finished transaction.
    let leftover_named = |what: &str| {
        let v = sb.run(&["verify", DEMO]);
        v.expect_code(3);
        assert!(
            v.stdout.contains(&format!("leftover   {}", path.display())),
            "{what}: verify does not name the leftover:\n{}",
            v.describe()
        );
    };
    leftover_named("after the upgrade");
    let history = sb.run(&["history"]).ok().stdout.clone();
    assert!(history.contains(&*path.to_string_lossy()), "history does not record the leftover:\n{history}");
    // Unrelated and related commands alike still work, and nothing retries it.
    sb.run(&["list"]).ok();
    sb.run(&["rollback", DEMO]).ok();
    leftover_named("after a rollback");
    assert_eq!(sb.leftovers(), left, "a later command touched the leftover");
    // The fix the message gives.
    remove_if_exists(&path);
    assert!(sb.leftovers().is_empty());
    sb.run(&["verify", DEMO]).ok();
}

/// The world without `.stagehand-` paths (what `leftovers` lists).
fn without_prefix_leftovers(w: &Tree) -> Tree {
    w.iter().filter(|(k, _)| !k.contains(".stagehand-")).map(|(k, v)| (k.clone(), v.clone())).collect()
}
