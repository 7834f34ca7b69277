//! The command line: parses arguments, calls the `installer` API, prints
//! results for people (aligned, short) or machines (`--json`), and maps
//! errors to stable exit codes. It holds no behaviour of its own.
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 verify found differences,
//! 4 state dir locked by another process, 5 recovery could not decide.

mod apply;
mod args;
mod cleanup;
mod colour;
mod commands;
mod history;
mod manpages;
mod output;
pub(crate) mod units;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

pub use args::{CacheAction, Cli, Command, KeylessArgs, LimitArgs};
use output::{print_json, print_without_state_dir};

use crate::installer::{self, Installer, OpenOptions};
use crate::plan::{MapRule, Placement};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_MISMATCH: i32 = 3;

/// Reads the registry password for --password-stdin (one line, or all of stdin).
fn read_password_stdin() -> Result<String, installer::Error> {
    use std::io::Read as _;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| installer::Error::Io {
        context: "reading the password from stdin (--password-stdin)".into(),
        source: e,
    })?;
    let pass = s.trim_end_matches(['\n', '\r']).to_string();
    if pass.is_empty() {
        return Err(installer::Error::Refused("--password-stdin: stdin was empty".into()));
    }
    Ok(pass)
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STAGEHAND_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("stagehand");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/state/stagehand")
}

fn default_steampipe_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STEAMPIPE_INSTALL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/")).join(".steampipe")
}

/// `rollback`'s `--verify-key` or keyless policy (loaded) and `--require-signature`.
fn signature_flags(
    verify_key: Option<&std::path::Path>,
    keyless: &KeylessArgs,
    require_signature: bool,
) -> Result<installer::SignatureFlags, installer::Error> {
    Ok(installer::SignatureFlags { verify_key: signature_policy(verify_key, keyless)?, require_signature })
}

/// What `--verify-key PATH` or the keyless flags ask signatures to be checked with.
fn signature_policy(
    verify_key: Option<&std::path::Path>,
    keyless: &KeylessArgs,
) -> Result<Option<crate::source::signature::VerifyKey>, installer::Error> {
    use crate::source::{keyless::KeylessPolicy, signature::VerifyKey};
    if let Some(p) = verify_key {
        return Ok(Some(VerifyKey::load(p).map_err(|e| installer::Error::Source(e.into()))?));
    }
    let policy = KeylessPolicy::from_options(&keyless.options())
        .map_err(|e| installer::Error::Refused(format!("{e}. Nothing was changed")))?;
    Ok(policy.map(VerifyKey::keyless))
}

fn parse_platform(s: &str) -> Result<(String, String), installer::Error> {
    match s.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => {
            Ok((os.to_string(), arch.to_string()))
        }
        _ => Err(installer::Error::Refused(format!("--platform {s:?}: expected OS/ARCH, e.g. linux/amd64"))),
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "debug",
        _ => "trace",
    };
    // -vv also shows the HTTP client's own request log.
    let client_level = if verbose >= 2 && !quiet { "debug" } else { "warn" };
    // sled's own log only with -v: its failures reach the user as
    // stagehand's errors, and it logs at ERROR things that are not (a cache
    // capped by a cgroup's memory limit).
    let sled_level = if verbose >= 1 && !quiet { "warn" } else { "off" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("stagehand={level},reqwest={client_level},sled={sled_level},warn"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour::on_stderr())
        .try_init();
}

/// An error message as printed: control characters (terminal escapes from
/// a registry's or an artifact's text) escaped, line breaks kept.
fn shown(message: &str) -> String {
    message.split('\n').map(crate::source::printable).collect::<Vec<_>>().join("\n")
}

/// A clap usage error as printed: `stagehand: error: …` like every other
/// error, instead of clap's bare `error: …`.
fn usage_error_text(rendered: &str) -> String {
    let body = rendered.strip_prefix("error: ").unwrap_or(rendered);
    format!("{} {body}", colour::error_prefix())
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            // `--json` promises an error object on stdout even for usage errors.
            if code == EXIT_USAGE && std::env::args().any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
                print_json(&json!({"error": first, "exit_code": code}));
            }
            colour::init(colour::choice_in_args(), false);
            if code == EXIT_USAGE {
                // One prefix for every error, clap's usage errors included.
                eprint!("{}", usage_error_text(&e.render().to_string()));
            } else {
                let _ = e.print();
            }
            return code;
        }
    };
    colour::init(cli.color, cli.json);
    init_tracing(cli.verbose, cli.quiet);
    crate::source::registry::hosts::configure(Some(cli.hosts_dir.clone()), cli.ca_file.clone());
    installer::interrupt::install_handlers();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let message = match installer::hints::next_step(&e) {
                Some(hint) => format!("{e}\n{hint}"),
                None => e.to_string(),
            };
            if cli.json {
                print_json(&json!({"error": message, "exit_code": e.exit_code()}));
            }
            eprintln!("{} {}", colour::error_prefix(), shown(&message));
            e.exit_code()
        }
    }
}

fn run(cli: &Cli) -> Result<i32, installer::Error> {
    // Commands that need no state dir.
    match &cli.command {
        Command::FinishCleanup { lock_fd, layout_blobs } => {
            let state_dir = installer::abspath::normalise(&cli.state_dir.clone().unwrap_or_else(default_state_dir));
            return cleanup::finish_handed_over(&state_dir, *lock_fd, layout_blobs);
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "stagehand", &mut std::io::stdout());
            return Ok(EXIT_OK);
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match dir {
                None => manpages::write_top(cmd, &mut std::io::stdout())
                    .map_err(|source| installer::Error::Io { context: "writing the man page".into(), source })?,
                Some(dir) => {
                    let written = manpages::write_all(cmd, dir).map_err(|source| installer::Error::Io {
                        context: format!("writing the man pages into {}", dir.display()),
                        source,
                    })?;
                    output::print_written(cli, &written);
                }
            }
            return Ok(EXIT_OK);
        }
        // Reads no state: works without a state dir, and while another command holds it.
        Command::Outdated { file } => {
            let set = installer::desired::DesiredSet::load(&installer::desired::find(file.as_deref())?)?;
            let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
            let rep = installer::outdated::outdated(&state_dir, &set)?;
            return Ok(apply::print_outdated(cli, &rep));
        }
        _ => {}
    }
    // Absolute and normalised, as --json reports it (status, cache list, repair).
    let state_dir = installer::abspath::normalise(&cli.state_dir.clone().unwrap_or_else(default_state_dir));
    if read_only(&cli.command) && installer::statedir::is_missing(&state_dir)? {
        return print_without_state_dir(cli, &state_dir);
    }
    let dry_run = matches!(cli.command, Command::Repair { dry_run: true, .. });
    let quiet = cli.quiet;
    // Readers never wait for a writer: they read a copy instead.
    let reader = matches!(
        cli.command,
        Command::List | Command::Status | Command::History { .. } | Command::Verify { .. } | Command::Journal
    );
    let opts = OpenOptions {
        lock_timeout: Duration::from_secs(if reader { 0 } else { cli.lock_timeout }),
        recover: !dry_run,
        wait_for_cleanup: !reader,
        tolerate_refusal: matches!(
            cli.command,
            Command::Status | Command::List | Command::Journal | Command::History { .. } | Command::Repair { .. }
        ),
        on_lock_wait: Some(Box::new(move |holder: installer::lock::Holder| {
            if !quiet {
                let who = holder.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                if holder.cleanup {
                    eprintln!(
                        "stagehand: waiting for stagehand{who} to finish removing what the last transaction replaced…"
                    );
                } else {
                    eprintln!("stagehand: waiting for another stagehand process{who} to release the state dir…");
                }
            }
        })),
    };
    // Usage errors in --map are caught before anything is opened.
    let placement = match &cli.command {
        // No placement at all: an installed package's recorded one (the
        // installer decides, and refuses when the package is not installed).
        Command::Install { to, maps, .. } => {
            let maps = maps.iter().map(|m| MapRule::parse(m)).collect::<Result<Vec<_>, _>>()?;
            Some(Placement { to: to.clone(), maps })
        }
        _ => None,
    };
    if matches!(cli.command, Command::Repair { set_aside_journal: true, .. }) {
        let rep = installer::set_aside_journal(&state_dir, &opts)?;
        if cli.json {
            print_json(&json!({
                "moved": rep.moved.iter().map(|(f, t)| json!({"from": f, "to": t})).collect::<Vec<_>>(),
                "stagehand_paths": rep.stagehand_paths,
                "named": rep.named,
                "next_txn_after": rep.max_txn,
            }));
        } else if !cli.quiet {
            for (f, t) in &rep.moved {
                println!("moved {f} to {t}");
            }
            for p in &rep.stagehand_paths {
                println!("left on disk: {p}");
            }
            println!(
                "a fresh journal is in place; nothing was deleted. Inspect the paths above: a `.staging` path holds \
                 new content, a `.backup` path old content; move back what you need, then remove them by hand. \
                 Installed packages are no longer listed: install them again with --adopt"
            );
        }
        return Ok(EXIT_OK);
    }
    let (mut inst, recovered) = match Installer::open(&state_dir, &opts) {
        Err(installer::Error::Locked { pid, .. }) if reader => {
            let inst = Installer::open_read_view(&state_dir, pid)?;
            if !cli.json && !cli.quiet {
                let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                if installer::lock::holder(&state_dir.join("lock")).cleanup {
                    eprintln!(
                        "stagehand: stagehand{who} is removing what the last transaction replaced; \
                         showing the state as of its last journal write"
                    );
                } else {
                    eprintln!(
                        "stagehand: a transaction is in progress: another stagehand process{who} holds the state dir; \
                         showing the state as of its last journal write"
                    );
                }
            }
            (inst, Vec::new())
        }
        r => r?,
    };
    inst.set_discard_local_files(cli.discard_local_files);
    inst.set_cleanup_later(true);
    if !cli.json && !cli.quiet {
        for r in recovered.iter().filter(|r| r.reason.is_none()) {
            eprintln!("stagehand: recovered transaction {} ({} of {}): {}", r.txn, r.op, r.package, r.outcome);
        }
    }
    let code = commands::run_command(cli, &mut inst, &recovered, placement)?;
    // The command has reported; now remove what its transaction replaced.
    cleanup::after_report(cli, inst, recovered.iter().any(|r| r.reason.is_some()))?;
    // A transaction recovery could not decide: the command showed what it
    // could; now say what blocks and exit 5.
    if let Some(r) = recovered.iter().find(|r| r.reason.is_some()) {
        let e = installer::Error::RecoveryRefused {
            txn: r.txn,
            package: r.package.clone(),
            reason: r.reason.clone().unwrap_or_default(),
        };
        eprintln!("{} {}", colour::error_prefix(), shown(&e.to_string()));
        return Ok(e.exit_code());
    }
    Ok(code)
}

/// The commands that only read the state dir (`repair --dry-run` too): on one that does not exist
/// they report the empty result and create nothing.
fn read_only(command: &Command) -> bool {
    matches!(
        command,
        Command::List
            | Command::Status
            | Command::History { .. }
            | Command::Verify { .. }
            | Command::Journal
            | Command::Cache { action: CacheAction::List }
            | Command::Repair { dry_run: true, .. }
    )
}
