//! Local files: entries a user put inside a package's directory target
//! after it was installed. An upgrade, rollback, uninstall or apply
//! replaces or removes that directory as a whole; without
//! `--discard-local-files` it is refused, names them, and changes nothing.

mod common;

use std::fs;

use common::*;

/// DEST/app of the demo with a note, a directory of the user's and an extra
/// file in a package directory.
fn with_local_files(sb: &Sandbox) -> Vec<String> {
    let app = sb.dest.join("app");
    fs::write(app.join("user-notes.txt"), b"mine\n").unwrap();
    fs::create_dir_all(app.join("mydir/deep")).unwrap();
    fs::write(app.join("mydir/deep/a"), b"a\n").unwrap();
    let some_dir = fs::read_dir(&app).unwrap().filter_map(|e| e.ok()).find(|e| e.path().is_dir()).unwrap().path();
    fs::write(some_dir.join("extra.local"), b"x\n").unwrap();
    vec![
        app.join("user-notes.txt").display().to_string(),
        app.join("mydir").display().to_string(),
        some_dir.join("extra.local").display().to_string(),
    ]
}

#[track_caller]
fn assert_refused_naming(sb: &Sandbox, run: &Run, named: &[String], before: &Tree) {
    assert_eq!(run.code, Some(1), "not refused:\n{}", run.describe());
    for n in named {
        assert!(run.stderr.contains(n.as_str()), "the refusal does not name {n}:\n{}", run.describe());
    }
    assert!(run.stderr.contains("--discard-local-files"), "no way out named:\n{}", run.describe());
    assert!(
        !run.stderr.contains("mydir/deep"),
        "a local directory is named once, not its contents:\n{}",
        run.describe()
    );
    assert_eq!(&sb.world(), before, "a refused command changed DEST");
    assert!(sb.leftovers().is_empty(), "leftovers: {:?}", sb.leftovers());
}

#[test]
fn upgrade_uninstall_and_rollback_refuse_to_delete_local_files() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    sb.install_demo("v2").ok();
    let named = with_local_files(&sb);
    let before = sb.world();
    let digest = sb.listed("demo").unwrap().digest;

    let run = sb.install_demo("v1");
    assert_refused_naming(&sb, &run, &named, &before);
    let run = sb.run(&["rollback", "demo"]);
    assert_refused_naming(&sb, &run, &named, &before);
    let run = sb.run(&["uninstall", "demo"]);
    assert_refused_naming(&sb, &run, &named, &before);
    assert_eq!(sb.listed("demo").unwrap().digest, digest, "the registry changed");
    assert!(pending_of(&sb.status_json()).is_empty());

    // Named on purpose: the old tree goes, local files with it.
    let mut args = sb.install_demo_args("v1");
    args.push("--discard-local-files".into());
    sb.run(&args).ok();
    assert!(!sb.dest.join("app/user-notes.txt").exists());
    assert!(!sb.dest.join("app/mydir").exists());
    sb.run(&["verify"]).ok();
}

#[test]
fn a_clean_tree_and_files_of_other_packages_are_not_local() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    // An unchanged tree upgrades without the flag.
    sb.install_demo("v2").ok();
    // A file target of another package inside demo's directory is carried,
    // not local: the upgrade goes through and keeps it.
    let layouts = tempdir();
    let layout = layouts.path().join("one");
    make_file_layout(&layout, &[("v1", vec![("one.txt", b"one\n".to_vec())])]);
    let one = format!("oci-layout:{}:v1", layout.display());
    let app = sb.dest.join("app");
    sb.run(&["install", one.as_str(), "--name", "one", "--map", &format!("*.txt={}", app.display())]).ok();
    sb.install_demo("v1").ok();
    assert_eq!(fs::read(app.join("one.txt")).unwrap(), b"one\n");
}

#[test]
fn apply_refuses_too_and_the_dry_run_says_so() {
    let sb = Sandbox::new();
    let file = sb.root.join("stagehand.toml");
    let write = |tag: &str| {
        fs::write(
            &file,
            format!(
                "[package.demo]\nref = \"{}\"\nto = \"{}\"\n",
                demo_source(tag).replace('\\', "\\\\"),
                sb.dest.join("app").display()
            ),
        )
        .unwrap()
    };
    write("v1");
    sb.run(&["apply", "--file", file.to_str().unwrap()]).ok();
    fs::write(sb.dest.join("app/user-notes.txt"), b"mine\n").unwrap();
    let before = sb.world();
    write("v2");
    for dry in [true, false] {
        let mut args = vec!["apply", "--file", file.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        let run = sb.run(&args);
        assert_eq!(run.code, Some(1), "dry run {dry}: not refused:\n{}", run.describe());
        assert!(run.stderr.contains("user-notes.txt"), "{}", run.describe());
        assert_eq!(sb.world(), before);
    }
}
