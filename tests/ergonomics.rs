//! Everyday output as a person reads it: one error prefix, counts that agree
//! with their nouns, one arrow style; read-only commands that create
//! nothing; permission errors that say what to do; digest prefixes.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::Path;

use common::*;

/// stderr begins with `stagehand: error: ` and no line carries another
/// error prefix (clap's bare `error:` included).
#[track_caller]
fn assert_one_prefix(run: &Run) {
    run.expect_clean_failure();
    assert!(run.stderr.starts_with("stagehand: error: "), "stderr lacks the one error prefix:\n{}", run.describe());
    for line in run.stderr.lines() {
        assert!(
            !line.starts_with("error:") && !line.starts_with("Error:"),
            "a second error prefix on stderr: {line:?}\n{}",
            run.describe()
        );
    }
}

fn s(p: &Path) -> &str {
    path_str(p)
}

#[test]
fn every_error_has_one_prefix() {
    let sb = Sandbox::new();
    let dest = sb.dest.join("app");
    let v1 = demo_source("v1");
    let missing = format!("oci-layout:{}:v1", sb.root.join("no-such-layout").display());
    let cases: [(&[&str], i32); 6] = [
        // clap's own usage errors
        (&["--bogus"], 2),
        (&["install"], 2),
        (&["rollback", "demo", "--apply"], 2),
        // a usage error stagehand finds itself
        (&["install", &v1, "--to", s(&dest), "--map", "no-equals-sign"], 2),
        // errors from the installer
        (&["install", &missing, "--to", s(&dest)], 1),
        (&["uninstall", "nothing-by-that-name"], 1),
    ];
    for (args, code) in cases {
        let run = sb.run(args);
        run.expect_code(code);
        assert_one_prefix(&run);
    }
    // --json still puts the usage error on stdout, as an object.
    let run = sb.run(&["--json", "install"]);
    run.expect_code(2);
    assert_one_prefix(&run);
    assert_eq!(run.json()["exit_code"], 2, "{}", run.describe());
}

#[test]
fn counts_agree_with_their_nouns_and_one_arrow() {
    let sb = Sandbox::new();
    let app = sb.dest.join("one/app");
    let v1 = demo_source("v1");
    let v2 = demo_source("v2");

    // One target.
    let run = sb.run(&["install", &v1, "--to", s(&app)]);
    run.ok();
    assert!(run.stdout.contains("(1 target, txn"), "{}", run.describe());
    // Several targets.
    let mut args = demo_install_args(&sb.dest.join("many"), &v1);
    args.extend(["--name".into(), "many".into()]);
    let run = sb.run(&args);
    run.ok();
    let n = demo_targets_rel("v1").len();
    assert!(n > 1, "the demo has one target only");
    assert!(run.stdout.contains(&format!("({n} targets, txn")), "{}", run.describe());

    // One difference.
    let file = hash_tree(&app)
        .into_iter()
        .find(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(k, _)| app.join(k))
        .expect("demo v1 has a file");
    fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"edit\n").unwrap();
    let run = sb.run(&["verify", DEMO]);
    run.expect_code(3);
    assert!(run.stdout.contains("demo: 1 difference;"), "{}", run.describe());

    // An apply plan and its summary: `->`, `1 change`, `1 package`.
    let toml = sb.root.join("one.toml");
    fs::write(&toml, format!("[package.demo]\nref = {v2:?}\nto = {:?}\n", s(&app))).unwrap();
    let run = sb.run(&["--discard-local-files", "apply", "--file", s(&toml), "--yes"]);
    run.ok();
    assert!(
        run.stdout.contains(&format!("~ demo {} -> {}", demo_digest("v1"), demo_digest("v2"))),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("applied 1 change in one transaction"), "{}", run.describe());
    let run = sb.run(&["apply", "--file", s(&toml)]);
    run.ok();
    assert!(run.stdout.contains("nothing to do: 1 package already as"), "{}", run.describe());

    let run = sb.run(&["uninstall", DEMO]);
    run.ok();
    assert!(run.stdout.contains("(1 target removed, txn"), "{}", run.describe());

    // Nowhere a count in the wrong number, an `(s)`, or the other arrow.
    for args in [vec!["history"], vec!["list"], vec!["cache", "list"], vec!["cache", "prune", "--dry-run"]] {
        let run = sb.run(&args);
        run.ok();
        for bad in ["(s)", "→", " 1 targets", " 1 blobs", " 1 bytes", " 1 changes"] {
            assert!(!run.stdout.contains(bad), "{bad:?} in the output:\n{}", run.describe());
        }
    }
}

/// Everything under `dir`, as relative paths.
fn entries_under(dir: &Path) -> Vec<String> {
    hash_tree(dir).into_keys().filter(|k| !k.is_empty()).collect()
}

#[test]
fn read_only_commands_create_no_state_dir() {
    let tmp = tempdir();
    let home = fs::canonicalize(tmp.path()).unwrap();
    let reads: [&[&str]; 7] =
        [&["list"], &["status"], &["history"], &["verify"], &["journal"], &["cache", "list"], &["repair", "--dry-run"]];
    for args in reads {
        for json in [false, true] {
            let mut argv: Vec<&str> = args.to_vec();
            if json {
                argv.insert(0, "--json");
            }
            // The default state dir, under HOME.
            let run = run_bin_default_state(&home, &argv);
            run.ok();
            assert_eq!(entries_under(&home), Vec::<String>::new(), "it created something:\n{}", run.describe());
            if json {
                let v = run.json();
                let empty = match args[0] {
                    "status" => v["packages"] == 0 && v["pending"].as_array().is_some_and(|a| a.is_empty()),
                    "verify" => v["ok"] == true && v["packages"].as_array().is_some_and(|a| a.is_empty()),
                    "cache" => v["blobs"].as_array().is_some_and(|a| a.is_empty()),
                    "repair" => v["pending"].as_array().is_some_and(|a| a.is_empty()),
                    _ => v.as_array().is_some_and(|a| a.is_empty()),
                };
                assert!(empty, "not the empty result:\n{}", run.describe());
            } else {
                assert!(run.stderr.contains("nothing installed yet"), "{}", run.describe());
            }
            // A --state-dir that does not exist, nor its parent.
            let state = home.join("deep/state");
            let run = run_bin(&state, &home, &argv, &[]);
            run.ok();
            assert_eq!(entries_under(&home), Vec::<String>::new(), "it created something:\n{}", run.describe());
        }
    }
    // `verify NAME`: not installed (exit 1), and still nothing created.
    let run = run_bin_default_state(&home, &["verify", DEMO]);
    run.fails_with(&["stagehand: error: ", "no package named"]);
    assert_eq!(entries_under(&home), Vec::<String>::new(), "it created something:\n{}", run.describe());
    // A command that writes does create it.
    run_bin_default_state(&home, &["repair"]).ok();
    assert!(home.join(".local/state/stagehand").is_dir(), "repair created no state dir");
}

/// A directory nobody but root may write (mode 0555, owned by root when the
/// test runs as root, else by the test's own user, who then runs stagehand
/// and is refused just the same).
fn read_only_dir(at: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(at).unwrap();
    fs::set_permissions(at, fs::Permissions::from_mode(0o555)).unwrap();
}

#[test]
fn permission_errors_say_what_to_do() {
    use std::os::unix::fs::PermissionsExt as _;
    const NOBODY: u32 = 65534;
    let tmp = tempdir();
    let root = fs::canonicalize(tmp.path()).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    // The user's own directory, for its state dir.
    let own = root.join("own");
    fs::create_dir_all(&own).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        chown_tree(&own, NOBODY);
    }
    let ro = root.join("ro");
    read_only_dir(&ro);
    // The demo copied where uid 65534 can read it (a checkout may sit under
    // a private directory, as a clean clone in a mktemp dir does).
    let demo = root.join("demo");
    copy_tree(&demo_layout(), &demo);
    let v1 = format!("oci-layout:{}:v1", demo.display());

    // A first install into a directory the user may not write.
    let app = ro.join("app");
    let run = run_bin_as(NOBODY, &own.join("state"), &own, &["install", &v1, "--to", s(&app)], &[]);
    run.expect_code(1);
    run.fails_with(&[
        "stagehand: error: ",
        "Permission denied",
        "nothing was installed; nothing was changed",
        "run it as root",
        "choose a destination you own",
    ]);
    assert!(!run.stderr.contains("old version"), "a first install has no old version:\n{}", run.describe());
    assert!(!app.exists(), "{} was created", app.display());

    // A destination that cannot even be looked at (outside any transaction).
    let closed = root.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    let run = run_bin_as(NOBODY, &own.join("state"), &own, &["install", &v1, "--to", s(&closed.join("x/app"))], &[]);
    run.fails_with(&["stagehand: error: ", "Permission denied", "run it as root", "choose a destination you own"]);
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).unwrap();

    // A state dir that cannot be created.
    let state = ro.join("state");
    let run = run_bin_as(NOBODY, &state, &own, &["install", &v1, "--to", s(&own.join("app"))], &[]);
    run.fails_with(&["stagehand: error: ", "cannot create the state dir", "--state-dir", "STAGEHAND_STATE_DIR"]);
    assert!(!state.exists() && !own.join("app").exists(), "something was created:\n{}", run.describe());
}

#[test]
fn rollback_takes_a_unique_digest_prefix() {
    let sb = Sandbox::new();
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));
    sb.install_demo("v1").ok();
    sb.install_demo("v2").ok();
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();

    // 8 hex digits, bare.
    sb.run(&["rollback", DEMO, "--to", &hex(&v1)[..8]]).ok();
    assert_eq!(sb.listed(DEMO).unwrap().digest, v1);
    // With the algorithm, 10 digits, upper case.
    let upper = format!("sha256:{}", hex(&v2)[..10].to_ascii_uppercase());
    sb.run(&["rollback", DEMO, "--to", &upper]).ok();
    assert_eq!(sb.listed(DEMO).unwrap().digest, v2);

    // Unknown: refused, listing the kept versions; nothing changes.
    let before = sb.world();
    let unknown =
        if hex(&v1).starts_with("deadbeef") || hex(&v2).starts_with("deadbeef") { "feedf00d" } else { "deadbeef" };
    sb.run(&["rollback", DEMO, "--to", unknown]).fails_with(&["not a kept version", "kept: ", &v1]);
    // Too short to be a prefix (7 hex digits is the least): a usage error.
    sb.run(&["rollback", DEMO, "--to", &hex(&v1)[..6]]).expect_code(2);
    // The installed one: already there.
    sb.run(&["rollback", DEMO, "--to", &hex(&v2)[..8]]).fails_with(&["already at", &v2]);
    assert!(sb.world() == before, "a refused rollback changed the destination");
    assert_eq!(sb.listed(DEMO).unwrap().digest, v2);
}

#[test]
fn short_help_long_help_examples_and_human_sizes() {
    let sb = Sandbox::new();
    for cmd in [vec![], vec!["install"], vec!["apply"], vec!["rollback"]] {
        let short = sb.run(&[cmd.clone(), vec!["-h"]].concat());
        let long = sb.run(&[cmd.clone(), vec!["--help"]].concat());
        short.ok();
        long.ok();
        assert!(short.stdout.len() < long.stdout.len(), "-h is not shorter than --help:\n{}", short.describe());
        assert!(long.stdout.contains("Example"), "--help has no examples:\n{}", long.describe());
        assert!(!short.stdout.contains("Examples:"), "-h carries the examples:\n{}", short.describe());
    }
    let top = sb.run(&["--help"]);
    for line in ["Examples:", "stagehand install oci-layout:", "stagehand rollback demo", "stagehand apply --file"] {
        assert!(top.stdout.contains(line), "top-level --help lacks {line:?}:\n{}", top.describe());
    }
    // Sizes in units people read, and accepted in them.
    let help = sb.run(&["install", "--help"]);
    assert!(help.stdout.contains("[default: 64 GiB]"), "{}", help.describe());
    assert!(!help.stdout.contains("68719476736"), "{}", help.describe());
    let app = sb.dest.join("app");
    let run = sb.run(&["install", &demo_source("v1"), "--to", s(&app), "--max-layer-bytes", "10 B"]);
    run.fails_with(&["stagehand: error: ", "more than 10 bytes, the --max-layer-bytes cap"]);
    sb.run(&["install", &demo_source("v1"), "--to", s(&app), "--max-layer-bytes", "64 GB"]).expect_code(2);
    sb.run(&["install", &demo_source("v1"), "--to", s(&app), "--max-layer-bytes", "2MiB"]).ok();
}
