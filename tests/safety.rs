//! Containment: artifacts whose tar entries escape their destination are
//! refused whole, and nothing on disk changes, neither under DEST nor in a
//! sibling directory the escape would hit. Also: an existing directory that
//! stagehand does not own is only replaced with `--adopt`.
//!
//! Layout of each sandbox: ROOT/{state,dest,sibling}. The hostile tar layer
//! replaces the demo's app layer, which is extracted into DEST/app, so
//! `../../sibling/x` (relative to DEST/app) lands in ROOT/sibling if followed.
//! Absolute names point into ROOT/sibling too, so a vulnerable build writes
//! into the sandbox, never into the machine.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Everything under ROOT except the state dir.
fn outside_state(sb: &Sandbox) -> Tree {
    hash_tree(&sb.root).into_iter().filter(|(k, _)| k != "state" && !k.starts_with("state/")).collect()
}

fn sandbox_with_sibling() -> Sandbox {
    let sb = Sandbox::new();
    let sib = sb.root.join("sibling");
    fs::create_dir_all(sib.join("sub")).unwrap();
    fs::write(sib.join("secret"), b"the sibling's secret\n").unwrap();
    fs::write(sib.join("sub/keep.txt"), b"keep me\n").unwrap();
    // Shared destination dirs with an unrelated file each.
    fs::create_dir_all(sb.dest.join("lib")).unwrap();
    fs::write(sb.dest.join("lib/unrelated.so"), b"not ours\n").unwrap();
    sb
}

/// Builds a layout with `entries` as the app layer, tries to install it, and
/// checks it was refused naming one of `names`, with nothing changed.
fn assert_refused(case: &str, sb: &Sandbox, entries: &[RawEntry], names: &[&str]) {
    let layouts = tempdir();
    let layout = layouts.path().join(format!("hostile-{case}"));
    let source = hostile_demo_layout(&layout, "v1", &raw_tar(entries));
    let before = outside_state(sb);
    let sibling_before = hash_tree(&sb.root.join("sibling"));

    let run = sb.run(&demo_install_args(&sb.dest, &source));
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "[{case}] a hostile layout was not refused (or crashed):\n{}",
        run.describe()
    );
    let msg = format!("{}{}", run.stderr, run.stdout);
    assert!(
        names.iter().any(|n| msg.contains(n)),
        "[{case}] the refusal does not name the offending path (one of {names:?}):\n{}",
        run.describe()
    );

    let sibling_after = hash_tree(&sb.root.join("sibling"));
    assert!(
        sibling_after == sibling_before,
        "[{case}] the sibling directory changed:\n{}",
        tree_diff(&sibling_after, &sibling_before, 20)
    );
    let after = outside_state(sb);
    assert!(after == before, "[{case}] the sandbox changed:\n{}", tree_diff(&after, &before, 20));
    assert!(sb.leftovers().is_empty(), "[{case}] leftovers: {:?}", sb.leftovers());
    let pending = pending_of(&sb.status_json());
    assert!(pending.is_empty(), "[{case}] a refused install left a pending transaction: {pending:?}");
    let name = layout.file_name().unwrap().to_string_lossy().into_owned();
    assert!(sb.listed(&name).is_none(), "[{case}] a refused install is listed as installed");
    // Nothing was written at the escape targets either (belt and braces for
    // a path outside ROOT that the tree hashes would not see).
    for p in ["dotdot-pwned", "abs-pwned", "symlink-pwned", "rel-symlink-pwned", "mid-pwned"] {
        assert!(!sb.root.join("sibling").join(p).exists(), "[{case}] {p} was written");
        assert!(!Path::new("/").join(p).exists(), "[{case}] /{p} was written");
    }
}

fn ok_file() -> RawEntry {
    RawEntry::file("ok.txt", b"harmless\n")
}

#[test]
fn refuses_dotdot_entry() {
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::file("../../sibling/dotdot-pwned", b"x\n")];
    assert_refused("dotdot", &sb, &entries, &["../../sibling/dotdot-pwned"]);
}

#[test]
fn refuses_dotdot_in_the_middle() {
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::dir("bin/"), RawEntry::file("bin/../../../sibling/mid-pwned", b"x\n")];
    assert_refused("dotdot-middle", &sb, &entries, &["bin/../../../sibling/mid-pwned"]);
}

#[test]
fn refuses_absolute_entry() {
    let sb = sandbox_with_sibling();
    let abs = sb.root.join("sibling/abs-pwned");
    let abs = path_str(&abs);
    let entries = [ok_file(), RawEntry::file(abs, b"x\n")];
    assert_refused("absolute", &sb, &entries, &[abs]);
}

#[test]
fn refuses_symlink_to_root_then_file_through_it() {
    let sb = sandbox_with_sibling();
    // escape -> /, then escape/<ROOT>/sibling/symlink-pwned
    let through = format!("escape{}", path_str(&sb.root.join("sibling/symlink-pwned")));
    let entries = [ok_file(), RawEntry::symlink("escape", "/"), RawEntry::file(&through, b"x\n")];
    assert_refused("symlink-root", &sb, &entries, &["escape"]);
}

#[test]
fn refuses_relative_symlink_out_then_file_through_it() {
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::symlink("up", "../../sibling"), RawEntry::file("up/rel-symlink-pwned", b"x\n")];
    assert_refused("symlink-relative", &sb, &entries, &["up"]);
}

#[test]
fn refuses_symlink_chain_that_resolves_out() {
    // Each link is inside when read lexically: a/b -> .. is DEST/app itself,
    // c -> a/b/.. reads as DEST/app/a. On disk c resolves through a/b to
    // DEST, the app dir's parent; a deeper chain reaches ROOT/sibling.
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::dir("a/"), RawEntry::symlink("a/b", ".."), RawEntry::symlink("c", "a/b/..")];
    assert_refused("symlink-chain", &sb, &entries, &["\"c\""]);
    let sb = sandbox_with_sibling();
    let entries = [
        ok_file(),
        RawEntry::dir("x/y/"),
        RawEntry::symlink("x/y/top", "../.."),
        RawEntry::symlink("deep", "x/y/top/../../sibling"),
    ];
    assert_refused("symlink-chain-deep", &sb, &entries, &["deep"]);
}

#[test]
fn refuses_hardlink_out() {
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::hardlink("hardlink-out", "../../sibling/secret")];
    assert_refused("hardlink", &sb, &entries, &["hardlink-out", "../../sibling/secret"]);
}

#[test]
fn refuses_absolute_hardlink() {
    let sb = sandbox_with_sibling();
    let secret = sb.root.join("sibling/secret");
    let entries = [ok_file(), RawEntry::hardlink("hardlink-abs", path_str(&secret))];
    assert_refused("hardlink-abs", &sb, &entries, &["hardlink-abs", path_str(&secret)]);
}

#[test]
fn refuses_char_device() {
    let sb = sandbox_with_sibling();
    let entries = [ok_file(), RawEntry::char_device("dev-null", 1, 3)];
    assert_refused("chardev", &sb, &entries, &["dev-null"]);
}

/// The hostile-layout builder itself works: the same builder with harmless
/// entries produces a layout that installs. Without this, every refusal
/// above could be a refusal of a broken layout.
#[test]
fn benign_layout_from_the_same_builder_installs() {
    let sb = sandbox_with_sibling();
    let layouts = tempdir();
    let layout = layouts.path().join("benign");
    let entries = [RawEntry::dir("bin/"), RawEntry::file("bin/tool", b"#!/bin/sh\n"), ok_file()];
    let source = hostile_demo_layout(&layout, "v1", &raw_tar(&entries));
    let run = sb.run(&demo_install_args(&sb.dest, &source));
    run.ok();
    let app = hash_tree(&sb.dest.join("app"));
    let names: Vec<&str> = app.keys().map(String::as_str).collect();
    assert_eq!(names, ["bin", "bin/tool", "ok.txt"], "unexpected app tree from the benign layout");
    assert!(sb.leftovers().is_empty());
}

fn write_unowned_app(dest: &Path) {
    fs::create_dir_all(dest.join("app/bin")).unwrap();
    fs::write(dest.join("app/bin/demo"), b"someone else's binary\n").unwrap();
    fs::write(dest.join("app/notes.txt"), b"someone else's notes\n").unwrap();
}

#[test]
fn existing_unowned_dir_is_refused_without_adopt() {
    let sb = Sandbox::new();
    write_unowned_app(&sb.dest);
    let before = outside_state(&sb);
    let run = sb.install_demo("v1");
    run.expect_clean_failure();
    let app = sb.dest.join("app");
    let msg = format!("{}{}", run.stderr, run.stdout);
    assert!(
        msg.contains(path_str(&app)) || msg.contains("--adopt"),
        "the refusal names neither the directory nor --adopt:\n{}",
        run.describe()
    );
    let after = outside_state(&sb);
    assert!(after == before, "a refused install changed the sandbox:\n{}", tree_diff(&after, &before, 20));
    assert!(sb.listed(DEMO).is_none(), "a refused install is listed");
    assert!(pending_of(&sb.status_json()).is_empty());
}

#[test]
fn existing_unowned_dir_is_replaced_with_adopt() {
    let sb = Sandbox::new();
    write_unowned_app(&sb.dest);
    let base = without_demo(&sb.world());
    let mut args = sb.install_demo_args("v1");
    args.push("--adopt".into());
    sb.run(&args).ok();
    let world = sb.world();
    let expected = demo_world(&base, Some("v1"));
    assert!(
        normalize(&world) == normalize(&expected),
        "after --adopt the world is not exactly v1 (old contents must be gone):\n{}",
        tree_diff(&normalize(&world), &normalize(&expected), 25)
    );
    assert!(!sb.dest.join("app/notes.txt").exists(), "the adopted dir's old file survived");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
    let p = sb.listed(DEMO).expect("demo listed after --adopt");
    assert_eq!(p.digest, demo_digest("v1"));
    sb.run(&["verify", DEMO]).ok();
}

/// Staging hands small files to writer threads (`installer::stage::writers`)
/// while it reads on. An archive of many small files, in-tree hard links
/// right after their originals, a read-only directory with files inside,
/// and files on both sides of the hand-over size installs byte for byte,
/// as read back here, and `verify` agrees with the digests it recorded.
#[test]
fn many_small_files_links_and_read_only_dirs_install_exactly() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = Sandbox::new();
    let mut entries = Vec::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for d in 0..6u64 {
        entries.push(RawEntry::dir(&format!("d{d}/")));
        for f in 0..80u64 {
            let name = format!("d{d}/f{f}");
            let data = pseudo_random((d * 997 + f * 131) as usize % 9000, d * 1000 + f + 1);
            entries.push(RawEntry::file(&name, &data));
            files.push((name.clone(), data));
            if f % 16 == 0 {
                let link = format!("d{d}/link{f}");
                entries.push(RawEntry::hardlink(&link, &name));
                links.push((link, name));
            }
        }
    }
    entries.push(RawEntry { mode: 0o555, ..RawEntry::dir("ro/") });
    for (i, len) in [256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 1 << 20].into_iter().enumerate() {
        let name = format!("ro/big{i}");
        let data = pseudo_random(len, 77 + i as u64);
        entries.push(RawEntry::file(&name, &data));
        files.push((name, data));
    }
    let layouts = tempdir();
    let source = hostile_demo_layout(&layouts.path().join("many"), "v1", &raw_tar(&entries));
    sb.run(&demo_install_args(&sb.dest, &source)).ok();

    let app = sb.dest.join("app");
    for (name, data) in &files {
        let got = fs::read(app.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == *data,
            "{name}: {} bytes on disk, {} in the archive (or different bytes)",
            got.len(),
            data.len()
        );
    }
    for (link, original) in &links {
        let (l, o) = (fs::metadata(app.join(link)).unwrap(), fs::metadata(app.join(original)).unwrap());
        assert_eq!((l.dev(), l.ino()), (o.dev(), o.ino()), "{link} is not a hard link of {original}");
    }
    let ro = fs::metadata(app.join("ro")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(ro, 0o555 & !0o022, "the read-only directory's mode");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
    sb.run(&["verify", "many"]).ok();
}
