//! Man pages: one per command, written by `stagehand man --dir DIR`
//! (`stagehand.1`, `stagehand-install.1`, `stagehand-cache-list.1`, …), or
//! the top page on stdout by `stagehand man`. clap_mangen renders the
//! sections clap knows (NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS);
//! this adds EXAMPLES (a command's `after_long_help`), EXIT STATUS,
//! ENVIRONMENT, FILES and SEE ALSO.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_mangen::Man;
use roff::{bold, italic, roman, Roff};

/// The exit codes, as the README's "Exit codes" section gives them.
pub const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "Error: the message says what, and that nothing changed or what will finish it."),
    ("2", "Usage: bad arguments, a malformed reference, digest or --map."),
    ("3", "verify found differences (listed)."),
    (
        "4",
        "The state dir is locked by another process (the message names its pid), or sled's own lock on \
         STATE/journal/db is still held 3 s after the state-dir lock was free. Not damage: try again.",
    ),
    (
        "5",
        "Recovery could not decide, or could not prove that what is at a path is its transaction's own; the \
         message names the paths to look at. status, list, history and journal still show what they can.",
    ),
    (
        "6",
        "The journal cannot be opened (proven on a copy; every byte is kept). stagehand repair \
         --set-aside-journal moves it aside and starts a fresh one.",
    ),
    ("130", "Interrupted (Ctrl-C, SIGTERM) before the commit point; rolled back."),
];

/// The environment variables stagehand reads.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("STAGEHAND_STATE_DIR", "The state directory when --state-dir is not given."),
    ("XDG_STATE_HOME", "Without the above: the state directory is $XDG_STATE_HOME/stagehand."),
    ("HOME", "Without either: ~/.local/state/stagehand; also ~/.steampipe and ~/.docker."),
    ("STAGEHAND_FILE", "The desired-state file of apply, lock, update and outdated when --file is not given."),
    ("STAGEHAND_DEFAULT_REGISTRY", "The registry of a reference that names none (default: ghcr.io)."),
    ("STAGEHAND_HOSTS_DIR", "Registry host configuration (hosts.toml), as --hosts-dir."),
    ("DOCKER_CONFIG", "Where Docker's config.json (registry credentials) is read (default: ~/.docker)."),
    ("SSL_CERT_FILE", "CA certificates used instead of the system's, as in OpenSSL."),
    ("STEAMPIPE_INSTALL_DIR", "Steampipe's install dir for --profile (default: ~/.steampipe)."),
    (
        "STAGEHAND_CLEANUP",
        "background (default): what a transaction replaced is removed by a process the command leaves behind, \
         after it reports success; wait: the command removes it before it exits.",
    ),
    ("NO_COLOR", "When set and not empty, no colour, even on a terminal (see --color)."),
    ("RUST_LOG", "Log filter on stderr, overriding -v (e.g. stagehand=debug)."),
];

/// The files stagehand reads and writes.
pub const FILES: &[(&str, &str)] = &[
    ("STATE/journal/", "The write-ahead journal (sled); STATE is the state directory."),
    (
        "STATE/lock",
        "Taken by every command that opens the journal; a second one waits (--lock-timeout) or exits 4, \
         and waits as long as the holder is a cleanup (`PID cleanup` in the file).",
    ),
    ("STATE/blobs/sha256/", "The blob cache: every installed and kept version's blobs, for an offline rollback."),
    ("STATE/filelists/", "The file list of each installed target, for verify."),
    ("STATE/require-signature", "When it exists, install and rollback refuse what no --verify-key checked."),
    ("stagehand.toml, NAME.lock", "A desired-state file for apply, and the lock file written beside it."),
    ("/etc/stagehand/certs.d/", "Default --hosts-dir: HOST[:PORT]/hosts.toml (containerd's format)."),
];

/// Every page: the top command's, then each subcommand's (nested ones too),
/// clap's `help` subcommand left out. Names as in `stagehand-cache-list`.
pub fn pages(cmd: clap::Command) -> Vec<clap::Command> {
    fn walk(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
        out.push(cmd.clone());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            walk(sub, out);
        }
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut out);
    out
}

/// The file name of `cmd`'s page: `stagehand-install.1`.
pub fn file_name(cmd: &clap::Command) -> String {
    format!("{}.1", page_name(cmd))
}

fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_string()
}

/// Writes every page into `dir` (created if missing); returns the paths.
pub fn write_all(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let all = pages(cmd);
    let top = all.first().map(page_name).unwrap_or_default();
    let mut written = Vec::new();
    for page in &all {
        let path = dir.join(file_name(page));
        let mut f = std::fs::File::create(&path)?;
        render(page, &top, &mut f)?;
        f.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the top page (with its own sections) to `w`.
pub fn write_top(cmd: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let all = pages(cmd);
    match all.first() {
        Some(top) => render(top, &page_name(top), w),
        None => Ok(()),
    }
}

/// One page: clap_mangen's sections, then ours.
fn render(cmd: &clap::Command, top: &str, w: &mut dyn Write) -> std::io::Result<()> {
    let man = Man::new(cmd.clone()).date(env!("CARGO_PKG_VERSION")).manual("stagehand manual");
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    let mut roff = Roff::new();
    let (notes, examples) = split_examples(cmd);
    if !notes.trim().is_empty() {
        roff.control("SH", ["NOTES"]);
        paragraphs(&mut roff, &notes);
    }
    roff.control("SH", ["EXAMPLES"]);
    if examples.trim().is_empty() {
        roff.text([roman(format!("See {top}(1)."))]);
    } else {
        preformatted(&mut roff, &examples);
    }
    roff.control("SH", ["EXIT STATUS"]);
    table(&mut roff, EXIT_CODES);
    roff.control("SH", ["ENVIRONMENT"]);
    table(&mut roff, ENVIRONMENT);
    roff.control("SH", ["FILES"]);
    table(&mut roff, FILES);
    roff.control("SH", ["SEE ALSO"]);
    let name = page_name(cmd);
    let also: Vec<String> = if name == top {
        vec!["README.md, docs/json.md and journal-format.md in the source".into()]
    } else {
        vec![format!("{top}(1)")]
    };
    roff.text([roman(also.join(", "))]);
    roff.control("SH", ["VERSION"]);
    roff.text([roman(format!("v{}", env!("CARGO_PKG_VERSION")))]);
    roff.to_writer(w)
}

/// A command's `after_long_help`, split at its `Examples:` (or `Example:`)
/// line: the prose before, the example lines after.
pub fn split_examples(cmd: &clap::Command) -> (String, String) {
    let text = cmd.get_after_long_help().or_else(|| cmd.get_after_help()).map(|s| s.to_string()).unwrap_or_default();
    let mut notes = String::new();
    let mut examples = String::new();
    let mut in_examples = false;
    for line in text.lines() {
        if matches!(line.trim(), "Examples:" | "Example:") {
            in_examples = true;
            continue;
        }
        let (into, line) =
            if in_examples { (&mut examples, line.strip_prefix("  ").unwrap_or(line)) } else { (&mut notes, line) };
        into.push_str(line);
        into.push('\n');
    }
    if !in_examples {
        // Only prose: it belongs in NOTES; `Example: CMD` on one line is an example.
        if let Some(rest) = text.trim().strip_prefix("Example:") {
            return (String::new(), rest.trim().to_string());
        }
    }
    (notes, examples)
}

/// Prose: paragraphs separated by blank lines; an indented block is kept as it is.
fn paragraphs(roff: &mut Roff, text: &str) {
    let mut para: Vec<&str> = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let flush_para = |roff: &mut Roff, para: &mut Vec<&str>| {
        if !para.is_empty() {
            roff.control("PP", []);
            roff.text([roman(para.join(" "))]);
            para.clear();
        }
    };
    for line in text.lines() {
        if line.starts_with("  ") {
            flush_para(roff, &mut para);
            block.push(line);
        } else {
            if !block.is_empty() {
                preformatted(roff, &block.join("\n"));
                block.clear();
            }
            if line.trim().is_empty() {
                flush_para(roff, &mut para);
            } else {
                para.push(line.trim());
            }
        }
    }
    flush_para(roff, &mut para);
    if !block.is_empty() {
        preformatted(roff, &block.join("\n"));
    }
}

/// Lines printed as they are (no filling), indented.
fn preformatted(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for line in text.trim_end().lines() {
        if line.trim().is_empty() {
            roff.control("sp", []);
        } else if line.trim_start().starts_with('#') {
            roff.text([italic(line)]);
        } else {
            roff.text([roman(line)]);
        }
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

fn table(roff: &mut Roff, rows: &[(&str, &str)]) {
    for (term, what) in rows {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*what)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_our_sections_and_a_subcommand_page_exists_for_each_reference() {
        let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
        let all = pages(cmd);
        let names: Vec<String> = all.iter().map(file_name).collect();
        for want in ["stagehand.1", "stagehand-install.1", "stagehand-cache.1", "stagehand-cache-prune.1"] {
            assert!(names.iter().any(|n| n == want), "no {want} among {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        for page in &all {
            let mut out = Vec::new();
            render(page, "stagehand", &mut out).expect("render");
            let text = String::from_utf8(out).expect("utf-8");
            for sh in
                [".SH NAME", ".SH SYNOPSIS", ".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"]
            {
                assert!(text.contains(sh), "{} lacks {sh}:\n{text}", file_name(page));
            }
            // Every page another page names exists.
            let unescaped = text.replace("\\-", "-").replace("\\fB", " ").replace("\\fR", " ").replace("\\fI", " ");
            for word in unescaped.split(|c: char| c.is_whitespace() || c == ',') {
                if let Some(n) = word.strip_suffix("(1)") {
                    assert!(
                        names.contains(&format!("{n}.1")),
                        "{} names {n}(1), which is not written",
                        file_name(page)
                    );
                }
            }
        }
    }

    #[test]
    fn examples_are_split_from_the_prose() {
        let cmd = clap::Command::new("x").after_long_help("Some prose\nmore.\n\nExamples:\n  x a\n  # note\n  x b");
        let (notes, ex) = split_examples(&cmd);
        assert_eq!(notes.trim(), "Some prose\nmore.");
        assert_eq!(ex, "x a\n# note\nx b\n");
        let one = clap::Command::new("x").after_long_help("Example:\n  x c");
        assert_eq!(split_examples(&one).1, "x c\n");
    }
}
