//! Output as a person reads it: colour only where asked (`--color`,
//! `NO_COLOR`, never with `--json`), the progress bar naming the package,
//! history with local time, tag and the digest a rolled-back attempt
//! tried, a note for ids the history does not hold, digest prefixes of 7
//! hex digits, and one man page per command with its sections.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const ESC: &str = "\x1b[";

fn s(p: &Path) -> &str {
    path_str(p)
}

#[test]
fn colour_only_where_asked() {
    let sb = Sandbox::new();
    let app = sb.dest.join("app");
    let v1 = demo_source("v1");
    // An error: red prefix with --color always, plain otherwise.
    let always = sb.run(&["--color", "always", "uninstall", "nothing-by-that-name"]);
    always.expect_code(1);
    assert!(always.stderr.starts_with("\x1b[1;31mstagehand: error:\x1b[0m "), "{}", always.describe());
    let never = sb.run(&["--color", "never", "uninstall", "nothing-by-that-name"]);
    assert!(never.stderr.starts_with("stagehand: error: ") && !never.stderr.contains(ESC), "{}", never.describe());
    // auto without a terminal: none.
    let auto = sb.run(&["uninstall", "nothing-by-that-name"]);
    assert!(!auto.stderr.contains(ESC), "{}", auto.describe());
    // A usage error clap finds: coloured as asked too.
    let usage = sb.run(&["--color=always", "--bogus"]);
    usage.expect_code(2);
    assert!(usage.stderr.starts_with("\x1b[1;31mstagehand: error:"), "{}", usage.describe());

    // A plan: `+` green with --color always.
    sb.run(&["install", &v1, "--to", s(&app)]).ok();
    let toml = sb.root.join("one.toml");
    fs::write(&toml, format!("[package.other]\nref = {v1:?}\nto = {:?}\n", s(&sb.dest.join("other")))).unwrap();
    let plan = sb.run(&["--color", "always", "apply", "--file", s(&toml), "--dry-run"]);
    plan.ok();
    assert!(plan.stdout.contains("\x1b[32m+ other"), "{}", plan.describe());
    // --json: never, whatever --color says.
    let json = sb.run(&["--color", "always", "--json", "apply", "--file", s(&toml), "--dry-run"]);
    json.ok();
    assert!(!json.stdout.contains(ESC) && !json.stderr.contains(ESC), "{}", json.describe());
    json.json();
    // NO_COLOR in a real terminal (script(1) gives one): none; without it: colour.
    if which("script") {
        let on = in_pty(&sb, &["history"], None);
        assert!(on.contains(ESC), "no colour on a terminal:\n{on}");
        let off = in_pty(&sb, &["history"], Some("1"));
        assert!(!off.contains(ESC), "colour despite NO_COLOR:\n{off}");
    } else {
        eprintln!("script(1) missing: the terminal half of this test did not run");
        assert!(std::env::var_os("CI").is_none(), "script(1) (bsdutils) is needed in CI");
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// Runs stagehand in a pseudo-terminal (script -qc) and returns what it wrote.
fn in_pty(sb: &Sandbox, args: &[&str], no_color: Option<&str>) -> String {
    let mut line = format!("'{}' --state-dir '{}'", bin().to_string_lossy(), s(&sb.state));
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).current_dir(&sb.root).env_remove("NO_COLOR").env("TERM", "xterm");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("script");
    assert!(out.status.success(), "script failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_progress_bar_names_the_package_with_rate_and_eta() {
    if !which("script") {
        assert!(std::env::var_os("CI").is_none(), "script(1) (bsdutils) is needed in CI");
        return;
    }
    let sb = Sandbox::new();
    let mut args: Vec<String> = vec!["install".into(), demo_source("v1"), "--to".into(), s(&sb.dest.join("a")).into()];
    args.extend(["--name".into(), "bar-named-pkg".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = in_pty(&sb, &refs, None);
    assert!(out.contains("bar-named-pkg"), "the bar does not name the package:\n{out}");
    assert!(out.contains("ETA") && out.contains("/s"), "the bar has no rate or ETA:\n{out}");
    assert!(!out.contains(&demo_digest("v1")), "the bar shows a whole digest:\n{out}");
}

#[test]
fn history_shows_time_tag_and_the_tried_digest() {
    let sb = Sandbox::new();
    sb.install_demo("v1").ok();
    // An upgrade that fails before its commit point: rolled back.
    let failed = sb.run_env(&sb.install_demo_args("v2"), &[("STAGEHAND_FAIL_AT", "journal.staged:1=EIO".as_ref())]);
    failed.expect_code(1);
    // A refused attempt: it may use an id the history does not hold.
    sb.run(&["rollback", DEMO]).expect_code(1);
    sb.install_demo("v2").ok();
    let h = sb.run(&["history"]);
    h.ok();
    let rows: Vec<&str> = h.stdout.lines().collect();
    let (v1, v2) = (demo_digest("v1"), demo_digest("v2"));
    let short = |d: &str| d[..19].to_string();
    let time = |l: &str| {
        let t: Vec<char> = l.split_whitespace().nth(1).unwrap_or("").chars().collect();
        t.len() == 10 && t[4] == '-' && t[7] == '-'
    };
    let first = rows.iter().find(|l| l.trim_start().starts_with("1 ")).expect("row 1");
    assert!(time(first), "no local date on {first:?}\n{}", h.describe());
    assert!(first.contains(&format!("- -> {} (v1)", short(&v1))), "{first:?}\n{}", h.describe());
    let tried = rows.iter().find(|l| l.contains("rolled back")).expect("the rolled-back row");
    assert!(tried.contains(&format!("-> tried {} (v2)", short(&v2))), "{tried:?}\n{}", h.describe());
    assert!(!h.stdout.contains("- -> -"), "{}", h.describe());
    // Ids are consecutive, or the gap is explained.
    let mut last = 0u64;
    for l in &rows {
        let Some(id) = l.split_whitespace().next().and_then(|w| w.parse::<u64>().ok()) else { continue };
        if id > last + 1 {
            assert!(
                rows.iter()
                    .any(|r| r.contains(&format!("id {}", last + 1)) || r.contains(&format!("ids {}-", last + 1))),
                "ids {} to {} are missing without a note:\n{}",
                last + 1,
                id - 1,
                h.describe()
            );
        }
        last = id;
    }
    // --json: the old fields, and the tag and sources added.
    let j = sb.run(&["--json", "history", DEMO]).json();
    let rows = j.as_array().expect("array");
    for key in [
        "id",
        "op",
        "txn_op",
        "package",
        "started_at",
        "finished_at",
        "old_digest",
        "new_digest",
        "outcome",
        "tag",
        "new_source",
    ] {
        assert!(rows[0].get(key).is_some(), "history --json lacks {key}: {j}");
    }
    assert_eq!(rows[0]["tag"], "v1", "{j}");
    assert_eq!(rows[1]["new_digest"], v2.as_str(), "{j}");
}

#[test]
fn a_digest_prefix_of_seven_hex_digits_is_enough() {
    let sb = Sandbox::new();
    let v1 = demo_digest("v1");
    sb.install_demo("v1").ok();
    sb.install_demo("v2").ok();
    let hex = v1.trim_start_matches("sha256:");
    sb.run(&["rollback", DEMO, "--to", &hex[..7]]).ok();
    assert_eq!(sb.listed(DEMO).unwrap().digest, v1);
    let run = sb.run(&["rollback", DEMO, "--to", &hex[..6]]);
    run.expect_code(2);
    assert!(run.stderr.contains("at least 7 of its hex digits"), "{}", run.describe());
}

#[test]
fn man_dir_writes_a_page_per_command_with_its_sections() {
    let sb = Sandbox::new();
    let dir = sb.root.join("man1");
    let run = sb.run(&["man", "--dir", s(&dir)]);
    run.ok();
    let help = sb.run(&["--help"]);
    let commands: Vec<String> = help
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() > 10, "{}", help.describe());
    let mut pages = vec!["stagehand.1".to_string(), "stagehand-cache-list.1".into(), "stagehand-cache-prune.1".into()];
    pages.extend(commands.iter().map(|c| format!("stagehand-{c}.1")));
    let groff = which("groff");
    assert!(groff || std::env::var_os("CI").is_none(), "groff (groff-base) is needed in CI");
    for p in &pages {
        let path = dir.join(p);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{p}: {e}\n{}", run.describe()));
        for sh in [".SH NAME", ".SH SYNOPSIS", ".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
            assert!(text.contains(sh), "{p} lacks {sh}");
        }
        if groff {
            // -k: UTF-8 through preconv, as man(1) does; -P-c: bold as overstrikes (`E\bE`), dropped below, not as escapes.
            let out =
                Command::new("groff").args(["-k", "-man", "-Tutf8", "-ww", "-P-c"]).arg(&path).output().expect("groff");
            let rendered = plain(&String::from_utf8_lossy(&out.stdout));
            assert!(out.status.success(), "groff failed on {p}");
            assert!(out.stderr.is_empty(), "groff warns on {p}: {}", String::from_utf8_lossy(&out.stderr));
            for title in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
                assert!(rendered.contains(title), "{p} renders without {title}");
            }
        }
    }
    let top = fs::read_to_string(dir.join("stagehand.1")).unwrap();
    assert!(top.contains("STAGEHAND_STATE_DIR") && top.contains("NO_COLOR"), "ENVIRONMENT is incomplete");
    for code in ["0", "1", "2", "3", "4", "5", "6", "130"] {
        assert!(top.contains(&format!(".TP\n\\fB{code}\\fR")), "EXIT STATUS lacks {code}:\n{top}");
    }
    // Without --dir: the top page on stdout.
    let stdout = sb.run(&["man"]);
    stdout.ok();
    assert!(stdout.stdout.contains(".SH \"EXIT STATUS\""), "{}", stdout.describe());
}

/// Text rendered by grotty with its overstrikes (`X\bX`, `_\bX`) removed.
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}
