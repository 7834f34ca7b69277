//! Every example in the help texts (`stagehand --help` and each command's
//! `--help`) and every line of the README's Usage block is run, as written,
//! against a copy of the shipped example layouts (offline). The only change
//! made to a line: absolute paths under /opt, /srv, /etc, /usr/local and
//! /home/me are moved into the test's scratch directory, and `stagehand`
//! is this build with its own state dir. A command's examples run in order
//! after that command's setup (below); each must exit as its table says
//! (0 unless listed).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// A scratch world: `root` is the working directory, holding a copy of
/// examples/ and the directories the examples write under.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    fn new() -> World {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).expect("canonicalize");
        let st = Command::new("cp")
            .arg("-r")
            .arg(repo_root().join("examples"))
            .arg(root.join("examples"))
            .status()
            .expect("cp");
        assert!(st.success(), "copying examples/ failed");
        for d in ["opt", "srv", "etc/bash_completion.d", "usr/local/share/man", "home/me"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        World { _tmp: tmp, root }
    }

    /// The line with its absolute paths moved under the scratch root.
    fn rewrite(&self, line: &str) -> String {
        let r = self.root.display().to_string();
        let mut out = line.to_string();
        for prefix in ["/opt/", "/srv/", "/etc/", "/usr/local/", "/home/me/"] {
            for before in [" ", "=", "'", "\"", ">"] {
                out = out.replace(&format!("{before}{prefix}"), &format!("{before}{r}{prefix}"));
            }
        }
        out
    }

    /// Runs `line` with bash in the scratch root; `stagehand` is this build.
    fn sh(&self, line: &str) -> Run {
        let script = format!(
            "stagehand() {{ \"$STAGEHAND_BIN\" --state-dir \"$STAGEHAND_TEST_STATE\" \"$@\"; }}\n{}",
            self.rewrite(line)
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home/me"))
            .env("STAGEHAND_BIN", bin())
            .env("STAGEHAND_TEST_STATE", self.root.join("state"))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "80")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bash");
        Run {
            argv: self.rewrite(line),
            env: String::new(),
            code: out.status.code(),
            signal: None,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, self.rewrite(text)).expect("write");
    }
}

/// `stagehand ARGS --help`, as printed.
fn help(args: &[&str]) -> String {
    let tmp = tempdir();
    let mut a: Vec<&str> = args.to_vec();
    a.push("--help");
    let run = run_bin(&tmp.path().join("state"), tmp.path(), &a, &[]);
    run.ok();
    run.stdout
}

/// The commands `--help` lists under "Commands:" (`help` left out).
fn commands_of(help_text: &str) -> Vec<String> {
    help_text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The example lines of a help text: the lines after `Examples:` or
/// `Example:` that run stagehand; a trailing `\` joins the next line.
fn examples_of(help_text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_examples = false;
    let mut pending = String::new();
    for line in help_text.lines() {
        let t = line.trim();
        if t == "Examples:" || t == "Example:" {
            in_examples = true;
            continue;
        }
        if !in_examples {
            continue;
        }
        if !pending.is_empty() {
            pending.push(' ');
            pending.push_str(t.trim_end_matches('\\').trim());
            if !t.ends_with('\\') {
                out.push(std::mem::take(&mut pending));
            }
            continue;
        }
        if t.starts_with("stagehand ") {
            if t.ends_with('\\') {
                pending = t.trim_end_matches('\\').trim().to_string();
            } else {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// The desired-state file shown in `apply --help`: its indented TOML block.
fn apply_help_toml(apply_help: &str) -> String {
    let toml: Vec<&str> = apply_help
        .lines()
        .skip_while(|l| l.trim() != "[defaults]")
        .take_while(|l| l.starts_with("  ") || l.trim().is_empty())
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    assert!(toml.len() > 5, "no TOML example in apply --help:\n{apply_help}");
    toml.join("\n") + "\n"
}

/// What a command's examples need first, run in the same world.
fn setup(w: &World, command: &str, toml: &str) {
    let demo_v1 = "stagehand install oci-layout:examples/demo:v1 --to /opt/demo/app --map '*.so=/opt/demo/lib'";
    let steps: &[&str] = match command {
        "rollback" => &[demo_v1, "stagehand install oci-layout:examples/demo:v2"],
        "uninstall" | "verify" | "history" | "list" | "status" | "journal" | "cache" => &[demo_v1],
        "apply" | "lock" | "update" | "outdated" => {
            w.write("stagehand.toml", toml);
            w.write("web.toml", toml);
            w.write("fleet/web.toml", &toml.replace("oci-layout:examples/", "oci-layout:../examples/"));
            &[]
        }
        _ => &[],
    };
    for s in steps {
        w.sh(s).ok();
    }
}

/// Examples that are right to fail where they are run: (text, exit code).
const EXPECTED: &[(&str, i32)] = &[
    // Only after exit 6; on a journal that opens it refuses, changing nothing.
    ("stagehand repair --set-aside-journal", 1),
];

fn expected_code(line: &str) -> i32 {
    let comment = line.split_once("  #").map(|(_, c)| c.trim()).unwrap_or("");
    if comment.starts_with("refused") {
        return 1;
    }
    let cmd = line.split_once("  #").map(|(c, _)| c.trim()).unwrap_or(line.trim());
    EXPECTED.iter().find(|(t, _)| *t == cmd).map(|(_, c)| *c).unwrap_or(0)
}

#[test]
fn every_help_example_runs_as_written() {
    let top = help(&[]);
    let apply = help(&["apply"]);
    let toml = apply_help_toml(&apply);
    let mut pages: Vec<Vec<String>> = vec![vec![]];
    for c in commands_of(&top) {
        let h = help(&[&c]);
        let subs = commands_of(&h);
        pages.push(vec![c.clone()]);
        pages.extend(subs.into_iter().map(|s| vec![c.clone(), s]));
    }
    assert!(pages.len() > 15, "too few commands found in --help:\n{top}");
    let mut ran = 0;
    for page in &pages {
        let args: Vec<&str> = page.iter().map(String::as_str).collect();
        let text = help(&args);
        let examples = examples_of(&text);
        assert!(!examples.is_empty(), "`stagehand {} --help` has no example:\n{text}", page.join(" "));
        let w = World::new();
        setup(&w, args.first().copied().unwrap_or(""), &toml);
        for ex in &examples {
            let run = w.sh(ex);
            let want = expected_code(ex);
            assert_eq!(
                run.code,
                Some(want),
                "the example of `stagehand {} --help` did not exit {want}:\n{}",
                page.join(" "),
                run.describe()
            );
            ran += 1;
        }
    }
    eprintln!("ran {ran} help examples from {} help pages", pages.len());
}

/// The first ```sh block under `## Usage`, as (line, expected exit code):
/// comments dropped, continuation lines joined.
fn readme_usage() -> Vec<String> {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "## Usage")
        .skip_while(|l| *l != "```sh")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let mut out = Vec::new();
    let mut pending = String::new();
    for l in block {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if !pending.is_empty() || t.ends_with('\\') {
            pending.push_str(t.trim_end_matches('\\').trim());
            pending.push(' ');
            if !t.ends_with('\\') {
                out.push(std::mem::take(&mut pending).trim().to_string());
            }
            continue;
        }
        out.push(t.to_string());
    }
    out
}

#[test]
fn the_readme_usage_block_runs_as_written() {
    let lines = readme_usage();
    assert!(lines.len() > 20, "the README's Usage block was not found: {lines:?}");
    let w = World::new();
    // The file its `apply --file web.toml` lines use.
    w.write("web.toml", "[package.demo3]\nref = \"oci-layout:examples/demo:v1\"\nto = \"/opt/demo3\"\n");
    for line in &lines {
        assert!(line.starts_with("stagehand "), "not a stagehand command in the Usage block: {line}");
        let run = w.sh(line);
        let want = expected_code(line);
        assert_eq!(run.code, Some(want), "a README Usage line did not exit {want}:\n{}", run.describe());
    }
    // What the block says it leaves: demo uninstalled, demo2 and demo3 there, and man pages.
    let list = w.sh("stagehand list --json");
    let names: Vec<String> =
        list.json().as_array().expect("array").iter().map(|p| p["name"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(names, vec!["demo2".to_string(), "demo3".to_string()], "{}", list.describe());
    assert!(w.root.join("man1/stagehand-install.1").is_file());
    assert!(fs::read_to_string(w.root.join("etc/bash_completion.d/stagehand"))
        .expect("completions")
        .contains("stagehand"));
}

#[test]
fn example_lines_are_found() {
    let ex =
        examples_of("About\n\nExamples:\n  # a comment\n  stagehand a \\\n      --b c\n  stagehand d && stagehand e\n");
    assert_eq!(ex, vec!["stagehand a --b c".to_string(), "stagehand d && stagehand e".to_string()]);
    assert_eq!(expected_code("stagehand x   # refused: it would"), 1);
    assert_eq!(expected_code("stagehand repair --set-aside-journal    # only after exit 6"), 1);
    assert_eq!(expected_code("stagehand list"), 0);
}
