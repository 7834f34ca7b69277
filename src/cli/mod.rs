//! The command line: parses arguments, calls the `installer` API, prints
//! results for people (aligned, short) or machines (`--json`), and maps
//! errors to stable exit codes. It holds no behaviour of its own.
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 verify found differences,
//! 4 state dir locked by another process, 5 recovery could not decide.

mod apply;
mod units;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::installer::{self, InstallRequest, Installer, OpenOptions, ProfileRequest};
use crate::plan::profile::Profile;
use crate::plan::{MapRule, Placement};
use crate::source::printable;
use crate::txn::{PackageRecord, RecoveryDecision};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_MISMATCH: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "stagehand",
    version,
    about = "Crash-safe installer for OCI artifacts",
    long_about = "Installs OCI artifacts so that a crash at any instant leaves every destination with the complete old version or the complete new one. Every step is journaled before it runs; every command first finishes or undoes an interrupted install.",
    after_help = "`stagehand --help` and `stagehand COMMAND --help` give details and examples.",
    after_long_help = TOP_EXAMPLES
)]
pub struct Cli {
    /// State directory (journal, lock). Default: $STAGEHAND_STATE_DIR, else $XDG_STATE_HOME/stagehand, else ~/.local/state/stagehand.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Versions of each package to keep for `rollback`, the installed one included.
    #[arg(long, global = true, value_name = "K", default_value_t = installer::DEFAULT_KEEP_VERSIONS,
          value_parser = clap::value_parser!(usize))]
    pub keep_versions: usize,
    /// Seconds to wait for another stagehand process holding the state dir.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    pub lock_timeout: u64,
    /// Let an upgrade, rollback, uninstall or apply delete files you put inside a package's directory
    /// (without it, such a command is refused and names them).
    #[arg(long, global = true)]
    pub discard_local_files: bool,
    /// Registry host configuration: DIR/HOST[:PORT]/hosts.toml (containerd's format: mirrors,
    /// `ca`, `client`) and DIR/_default/hosts.toml; /etc/containerd/certs.d works as it is.
    #[arg(long, global = true, value_name = "DIR", env = "STAGEHAND_HOSTS_DIR",
          default_value = crate::source::registry::hosts::DEFAULT_HOSTS_DIR)]
    pub hosts_dir: PathBuf,
    /// PEM CA certificates added to the system roots for every registry and mirror.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

const TOP_EXAMPLES: &str = "\
Examples:
  # install a package: a directory it owns, and files mapped into shared directories
  stagehand install oci-layout:examples/demo:v1 --to /opt/demo/app --map '*.so=/opt/demo/lib'
  # upgrade it where it is, then go back, offline
  stagehand install oci-layout:examples/demo:v2
  stagehand rollback demo
  # what is installed, what happened, whether files were changed by hand
  stagehand list
  stagehand history demo
  stagehand verify demo
  # a whole set from a desired-state file, in one transaction
  stagehand apply --file stagehand.toml --dry-run";

const INSTALL_HELP: &str = "\
Examples:
  # install: the app tree to /opt/demo/app, three files into shared directories
  stagehand install oci-layout:examples/demo:v1 --to /opt/demo/app \\
      --map '*.so=/opt/demo/lib' --map '*.control=/opt/demo/share/extension' \\
      --map '*.sql=/opt/demo/share/extension'
  # upgrade in place: the recorded placement is used
  stagehand install oci-layout:examples/demo:v2
  # move it (removes the old paths): the new placement, and --move
  stagehand install oci-layout:examples/demo:v2 --to /srv/demo/app --move
  # a second copy beside the first
  stagehand install oci-layout:examples/demo:v2 --to /srv/demo2 --name demo2";

// Parsed once per process: the size of `Install`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install or upgrade a package from an OCI artifact, in one transaction.
    ///
    /// A package's placement (--to, --map, --profile with --install-dir and
    /// --db-version, --platform) is recorded. Installing an installed package
    /// again with no placement flags upgrades it where it is. A different
    /// placement is refused unless --move; --name installs a second copy.
    #[command(after_long_help = INSTALL_HELP)]
    Install {
        /// [REGISTRY/]REPO:TAG, [REGISTRY/]REPO@sha256:DIGEST (default registry:
        /// $STAGEHAND_DEFAULT_REGISTRY, else ghcr.io), or oci-layout:PATH[:TAG|@sha256:DIGEST]
        source: String,
        /// Directory the package owns; swapped as one directory target (default for an
        /// installed package: its recorded placement).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// GLOB=DIR: layers whose title matches GLOB become files in DIR (repeatable; a GLOB
        /// that matches no file of the artifact is an error).
        #[arg(long = "map", value_name = "GLOB=DIR")]
        maps: Vec<String>,
        /// Package name (default: the layout directory's name, or the repository's last path component).
        #[arg(long)]
        name: Option<String>,
        /// Take over an existing destination no package owns.
        #[arg(long)]
        adopt: bool,
        /// Move an installed package to the placement given here (without it, a
        /// placement other than the recorded one is refused and nothing changes).
        #[arg(long = "move")]
        move_placement: bool,
        /// Place a Steampipe artifact in Steampipe's layout: steampipe-plugin, steampipe-db or steampipe-fdw.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["to", "maps"])]
        profile: Option<String>,
        /// Steampipe's install dir, for --profile (default: $STEAMPIPE_INSTALL_DIR, else ~/.steampipe).
        #[arg(long, value_name = "DIR", requires = "profile")]
        install_dir: Option<PathBuf>,
        /// Database version directory under db/, for --profile steampipe-db/-fdw.
        #[arg(long, value_name = "VERSION", requires = "profile")]
        db_version: Option<String>,
        /// Platform OS/ARCH to pick layers for, and the manifest of an image index (default: this host's).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// Talk plain HTTP to the registry (allowed only for localhost / 127.0.0.0/8 / [::1]).
        #[arg(long)]
        plain_http: bool,
        /// Registry user name; the password or token is read from stdin (--password-stdin).
        #[arg(long, value_name = "USER", requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password or token from stdin (with --username).
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Install only if a cosign signature by this public key (PEM, as in cosign.pub)
        /// names the artifact's manifest digest; checked before anything is downloaded or staged.
        #[arg(long, value_name = "PATH")]
        verify_key: Option<PathBuf>,
        /// Refuse to install without --verify-key (the default when STATE/require-signature exists).
        #[arg(long)]
        require_signature: bool,
        /// Give up on any one registry request (a manifest, a token) after this many seconds; a blob gets one more second per 64 KiB of its size.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::source::registry::DEFAULT_REQUEST_TIMEOUT_SECS)]
        request_timeout: u64,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Switch a package back to the version it replaced (or --to an earlier kept one), offline, in one transaction.
    #[command(
        after_long_help = "Examples:\n  stagehand rollback demo\n  stagehand rollback demo --to sha256:a46b5619"
    )]
    Rollback {
        #[arg(required_unless_present = "apply")]
        name: Option<String>,
        /// The manifest digest of a kept version, or a unique prefix of it (8 hex digits or more;
        /// see `stagehand history NAME`).
        #[arg(long, value_name = "DIGEST")]
        to: Option<String>,
        /// Undo the last `stagehand apply` as a whole: every package it changed
        /// goes back to its earlier version, in one transaction.
        #[arg(long, conflicts_with_all = ["name", "to"])]
        apply: bool,
        /// Reinstall only a version whose signature by this public key (cosign.pub) was
        /// verified when it was installed, as its history shows (a rollback reads the cache,
        /// where no signature can be checked again).
        #[arg(long, value_name = "PATH")]
        verify_key: Option<PathBuf>,
        /// Refuse a version without such a record (the default when STATE/require-signature exists).
        #[arg(long)]
        require_signature: bool,
        // The caps the older version is staged under (journal records do
        // not keep an install's caps: give the ones it was installed with).
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Switch the installed packages to a desired-state file's, in ONE transaction.
    #[command(after_long_help = apply::APPLY_HELP)]
    Apply {
        /// The desired-state file.
        #[arg(long, value_name = "FILE", default_value = "stagehand.toml")]
        file: PathBuf,
        /// Print the plan (`+ name digest`, `~ name old -> new`, `- name`, `= name kept`); change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also uninstall the packages THIS file applied and no longer lists
        /// (packages another file or a hand install manages are kept).
        #[arg(long)]
        prune: bool,
        /// Also uninstall NAME, a package the file does not list, whoever installed it (repeatable).
        #[arg(long, value_name = "NAME")]
        remove: Vec<String>,
        /// Uninstall and move without asking (needed without a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Install exactly the digests pinned in the lock file; fail if it and the file disagree.
        #[arg(long)]
        locked: bool,
    },
    /// Pin every reference of a desired-state file in its lock file (installs nothing; pins already there are kept).
    #[command(
        after_long_help = "Example:\n  stagehand lock --file web.toml && stagehand apply --file web.toml --locked"
    )]
    Lock {
        /// The desired-state file.
        #[arg(long, value_name = "FILE", default_value = "stagehand.toml")]
        file: PathBuf,
    },
    /// Resolve tags again and move the lock file's pins (all, or the named packages); installs nothing.
    #[command(after_long_help = "Examples:\n  stagehand update --dry-run\n  stagehand update demo && stagehand apply")]
    Update {
        /// Packages to re-resolve (default: every package of the file).
        names: Vec<String>,
        /// The desired-state file.
        #[arg(long, value_name = "FILE", default_value = "stagehand.toml")]
        file: PathBuf,
        /// Show what would move; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove an installed package, in one transaction.
    #[command(after_long_help = "Example:\n  stagehand uninstall demo")]
    Uninstall { name: String },
    /// Finish or undo interrupted transactions and report what was done.
    #[command(after_long_help = "Examples:\n  stagehand repair --dry-run\n  stagehand repair --set-aside-journal")]
    Repair {
        /// Say what recovery would do without doing it.
        #[arg(long)]
        dry_run: bool,
        /// Only when the journal cannot be opened (exit 6): move it, its seal
        /// and its file lists aside (nothing is deleted), list the staging and backup paths
        /// it names that exist on disk, and start a fresh journal. Installed
        /// files stay; stagehand forgets what it installed.
        #[arg(long, conflicts_with = "dry_run")]
        set_aside_journal: bool,
    },
    /// Show unfinished transactions (after recovery) and counts.
    #[command(after_long_help = "Example:\n  stagehand status --json")]
    Status,
    /// List installed packages.
    #[command(after_long_help = "Example:\n  stagehand list --json")]
    List,
    /// Re-hash installed files against the registry (exit 3 on differences).
    #[command(after_long_help = "Example:\n  stagehand verify demo")]
    Verify { name: Option<String> },
    /// Past transactions: when, what, old -> new digest, outcome.
    #[command(after_long_help = "Example:\n  stagehand history demo")]
    History { name: Option<String> },
    /// Dump the raw journal records, decoded, for debugging.
    #[command(after_long_help = "Example:\n  stagehand journal --json")]
    Journal,
    /// The blob cache of registry pulls: list it, or prune what nothing uses.
    #[command(after_long_help = "Examples:\n  stagehand cache list\n  stagehand cache prune --dry-run")]
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_long_help = "Example:\n  stagehand completions bash > /etc/bash_completion.d/stagehand")]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout.
    #[command(after_long_help = "Example:\n  stagehand man > stagehand.1 && man ./stagehand.1")]
    Man,
}

/// The caps on what one layer may expand to, shared by `install` and
/// `rollback` (which stages a kept version again).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LimitArgs {
    /// Refuse a tar layer holding more entries than this.
    #[arg(long, value_name = "N", default_value_t = crate::plan::limits::DEFAULT_MAX_ENTRIES)]
    max_entries: u64,
    /// Refuse a layer whose files add up to more bytes than this.
    /// Bytes, or a number with KiB, MiB, GiB or TiB. [default: 64 GiB]
    #[arg(long, value_name = "BYTES", default_value = "64 GiB", hide_default_value = true, value_parser = units::parse_size)]
    max_layer_bytes: u64,
    /// Refuse an entry whose path or link name (long names included) is longer than this, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::plan::limits::DEFAULT_MAX_PATH_BYTES)]
    max_path_bytes: u64,
}

impl From<LimitArgs> for crate::plan::limits::Limits {
    fn from(a: LimitArgs) -> Self {
        crate::plan::limits::Limits {
            max_entries: a.max_entries,
            max_layer_bytes: a.max_layer_bytes,
            max_path_bytes: a.max_path_bytes,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// List cached blobs and partial downloads, with the packages that use each.
    #[command(after_long_help = "Example:\n  stagehand cache list --json")]
    List,
    /// Remove cached blobs no installed package, kept version or pending transaction uses, and partial downloads.
    #[command(after_long_help = "Example:\n  stagehand cache prune --dry-run")]
    Prune {
        /// Say what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
}

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

/// `rollback`'s `--verify-key` (loaded) and `--require-signature`.
fn signature_flags(
    verify_key: Option<&std::path::Path>,
    require_signature: bool,
) -> Result<installer::SignatureFlags, installer::Error> {
    let verify_key = match verify_key {
        None => None,
        Some(p) => Some(crate::source::signature::VerifyKey::load(p).map_err(|e| installer::Error::Source(e.into()))?),
    };
    Ok(installer::SignatureFlags { verify_key, require_signature })
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("stagehand={level},reqwest={client_level},warn"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour_on_stderr())
        .try_init();
}

/// Colour only on a terminal, and never with `NO_COLOR` set (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into()));
}

/// `verify`'s note on whether a package's signature was checked at install.
fn signed_note(r: &installer::VerifyReport) -> String {
    match &r.signed_by {
        Some(fp) => format!("; cosign signature checked at install, key {fp}"),
        None => "; no signature checked at install".to_string(),
    }
}

fn package_json(p: &PackageRecord) -> serde_json::Value {
    json!({
        "name": p.name,
        "digest": p.manifest_digest,
        "source": p.source,
        "installed_at": p.installed_at,
        "txn": p.txn,
        "targets": p.targets.iter().map(|t| t.path.clone()).collect::<Vec<_>>(),
        "signed_by": p.signed_by,
        "previous": p.previous.iter().map(|v| json!({
            "digest": v.manifest_digest,
            "source": v.source,
            "installed_at": v.installed_at,
            "adopted": v.placement.adopted,
        })).collect::<Vec<_>>(),
        "managed_by": p.managed_by,
    })
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
    format!("stagehand: error: {body}")
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
            if code == EXIT_USAGE {
                // One prefix for every error, clap's usage errors included.
                eprint!("{}", usage_error_text(&e.render().to_string()));
            } else {
                let _ = e.print();
            }
            return code;
        }
    };
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
            eprintln!("stagehand: error: {}", shown(&message));
            e.exit_code()
        }
    }
}

fn run(cli: &Cli) -> Result<i32, installer::Error> {
    // Commands that need no state dir.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "stagehand", &mut std::io::stdout());
            return Ok(EXIT_OK);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|source| installer::Error::Io { context: "writing the man page".into(), source })?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    if read_only(&cli.command) && installer::statedir::is_missing(&state_dir)? {
        return print_without_state_dir(cli, &state_dir);
    }
    let dry_run = matches!(cli.command, Command::Repair { dry_run: true, .. });
    let quiet = cli.quiet;
    let opts = OpenOptions {
        lock_timeout: Duration::from_secs(cli.lock_timeout),
        recover: !dry_run,
        tolerate_refusal: matches!(
            cli.command,
            Command::Status | Command::List | Command::Journal | Command::History { .. } | Command::Repair { .. }
        ),
        on_lock_wait: Some(Box::new(move |pid: Option<u32>| {
            if !quiet {
                let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                eprintln!("stagehand: waiting for another stagehand process{who} to release the state dir…");
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
    let (mut inst, recovered) = Installer::open(&state_dir, &opts)?;
    inst.set_discard_local_files(cli.discard_local_files);
    if !cli.json && !cli.quiet {
        for r in recovered.iter().filter(|r| r.reason.is_none()) {
            eprintln!("stagehand: recovered transaction {} ({} of {}): {}", r.txn, r.op, r.package, r.outcome);
        }
    }
    let code = run_command(cli, &mut inst, &recovered, placement)?;
    // A transaction recovery could not decide: the command showed what it
    // could; now say what blocks and exit 5.
    if let Some(r) = recovered.iter().find(|r| r.reason.is_some()) {
        let e = installer::Error::RecoveryRefused {
            txn: r.txn,
            package: r.package.clone(),
            reason: r.reason.clone().unwrap_or_default(),
        };
        eprintln!("stagehand: error: {}", shown(&e.to_string()));
        return Ok(e.exit_code());
    }
    Ok(code)
}

fn run_command(
    cli: &Cli,
    inst: &mut Installer,
    recovered: &[installer::RecoveryReport],
    placement: Option<Placement>,
) -> Result<i32, installer::Error> {
    match &cli.command {
        Command::Install {
            source,
            name,
            adopt,
            move_placement,
            profile,
            install_dir,
            db_version,
            platform,
            plain_http,
            username,
            password_stdin,
            verify_key,
            require_signature,
            request_timeout,
            limits,
            ..
        } => {
            use std::io::IsTerminal as _;
            let registry = crate::source::registry::RegistryOptions {
                plain_http: *plain_http,
                platform: match platform {
                    None => None,
                    Some(s) => Some(crate::source::registry::parse_platform(s).map_err(installer::Error::Refused)?),
                },
                username: username.clone(),
                password: if *password_stdin {
                    Some(crate::source::registry::Secret(read_password_stdin()?))
                } else {
                    None
                },
                progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
                max_concurrent_downloads: 0,
                verify_key: None,
                request_timeout: std::time::Duration::from_secs(*request_timeout),
            };
            let profile = match profile {
                None => None,
                Some(p) => Some(ProfileRequest {
                    profile: Profile::parse(p)?,
                    install_dir: install_dir.clone().unwrap_or_else(default_steampipe_dir),
                    db_version: db_version.clone(),
                    platform: match platform {
                        None => None,
                        Some(s) => Some(parse_platform(s)?),
                    },
                }),
            };
            let req = InstallRequest {
                source: source.clone(),
                placement: placement.unwrap_or_default(),
                name: name.clone(),
                adopt: *adopt,
                move_placement: *move_placement,
                profile,
                registry,
                keep_versions: cli.keep_versions,
                rollback: false,
                verify_key: match verify_key {
                    None => None,
                    Some(p) => Some(
                        crate::source::signature::VerifyKey::load(p).map_err(|e| installer::Error::Source(e.into()))?,
                    ),
                },
                require_signature: *require_signature,
                limits: (*limits).into(),
            };
            let rep = inst.install(&req)?;
            Ok(print_txn_report(cli, &rep, recovered))
        }
        Command::Rollback { apply: true, limits, verify_key, require_signature, .. } => {
            let flags = signature_flags(verify_key.as_deref(), *require_signature)?;
            let rep = inst.rollback_apply(cli.keep_versions, (*limits).into(), &flags)?;
            Ok(apply::print_report(cli, &rep, recovered))
        }
        Command::Rollback { name, to, limits, verify_key, require_signature, .. } => {
            let name = name.as_deref().unwrap_or_default();
            let flags = signature_flags(verify_key.as_deref(), *require_signature)?;
            let rep = inst.rollback(name, to.as_deref(), cli.keep_versions, (*limits).into(), &flags)?;
            Ok(print_txn_report(cli, &rep, recovered))
        }
        Command::Apply { file, dry_run, prune, remove, yes, locked } => {
            use std::io::IsTerminal as _;
            let opts = installer::ApplyOptions {
                dry_run: *dry_run,
                prune: *prune,
                remove: remove.clone(),
                locked: *locked,
                progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
                keep_versions: cli.keep_versions,
            };
            apply::run_apply(cli, inst, file, &opts, *yes, recovered)
        }
        Command::Lock { file } => {
            let set = installer::desired::DesiredSet::load(file)?;
            let (lock, path, changes) = inst.lock(&set)?;
            Ok(apply::print_lock(cli, &lock, &path, &changes))
        }
        Command::Update { names, file, dry_run } => {
            let set = installer::desired::DesiredSet::load(file)?;
            let rep = inst.update(&set, names, *dry_run)?;
            Ok(apply::print_update(cli, &rep))
        }
        Command::Uninstall { name } => {
            let rep = inst.uninstall(name)?;
            Ok(print_txn_report(cli, &rep, recovered))
        }
        Command::Repair { dry_run: true, .. } => {
            let preview = inst.preview_recovery()?;
            let items: Vec<_> = preview
                .iter()
                .map(|(rec, d)| {
                    let what = match d {
                        RecoveryDecision::RollForward { .. } => "would roll forward".to_string(),
                        RecoveryDecision::RollBack { .. } => "would roll back".to_string(),
                        RecoveryDecision::Refuse { reason } => format!("cannot decide: {reason}"),
                    };
                    json!({"txn": rec.id, "package": rec.package_names(), "step": rec.step.name(), "action": what})
                })
                .collect();
            if cli.json {
                print_json(&json!({"dry_run": true, "pending": items}));
            } else if items.is_empty() {
                println!("nothing pending");
            } else {
                for i in &items {
                    println!(
                        "txn {} ({}, at {}): {}",
                        i["txn"],
                        i["package"].as_str().unwrap_or(""),
                        i["step"].as_str().unwrap_or(""),
                        i["action"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Command::Repair { dry_run: false, .. } => {
            if cli.json {
                print_json(&json!({"recovered": recovered}));
            } else if recovered.is_empty() {
                println!("nothing pending");
            } else {
                for r in recovered {
                    let why = r.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
                    println!(
                        "txn {} ({} of {}, found at {}): {}{why}",
                        r.txn, r.op, r.package, r.step_found, r.outcome
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Command::Status => {
            let pending = inst.pending()?;
            let packages = inst.list()?.len();
            let last_txn = inst.journal().last_finished_txn()?;
            if cli.json {
                let p: Vec<_> = pending
                    .iter()
                    .map(|r| {
                        let refused = recovered.iter().find(|x| x.txn == r.id).and_then(|x| x.reason.clone());
                        json!({"id": r.id, "op": format!("{:?}", r.op).to_lowercase(), "name": r.package_names(), "step": r.step.name(), "refused": refused})
                    })
                    .collect();
                print_json(&json!({
                    "state_dir": inst.state_dir().display().to_string(),
                    "pending": p,
                    "recovered": recovered,
                    "packages": packages,
                    "last_txn": last_txn,
                }));
            } else if !cli.quiet {
                println!("state dir:  {}", shown_path(inst.state_dir()));
                println!("packages:   {packages}");
                println!(
                    "pending:    {}",
                    if pending.is_empty() { "none".to_string() } else { pending.len().to_string() }
                );
                println!("last txn:   {}", last_txn.map(|t| t.to_string()).unwrap_or_else(|| "none".into()));
            }
            Ok(EXIT_OK)
        }
        Command::List => {
            let pkgs = inst.list()?;
            if cli.json {
                print_json(&serde_json::Value::Array(pkgs.iter().map(package_json).collect()));
            } else if !cli.quiet {
                if pkgs.is_empty() {
                    println!("no packages installed");
                }
                let w = pkgs.iter().map(|p| printable(&p.name).chars().count()).max().unwrap_or(4).max(4);
                for p in &pkgs {
                    println!("{:w$}  {}  {}", printable(&p.name), short(&p.manifest_digest), printable(&p.source));
                    for t in &p.targets {
                        println!("{:w$}    {}", "", printable(&t.path));
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Command::Verify { name } => {
            let reports = inst.verify(name.as_deref())?;
            let bad = reports.iter().any(|r| !r.mismatches.is_empty());
            if cli.json {
                print_json(&json!({"ok": !bad, "packages": reports}));
            } else {
                for r in &reports {
                    if r.mismatches.is_empty() {
                        if !cli.quiet {
                            println!("{}: ok ({} files){}", printable(&r.name), r.files_checked, signed_note(r));
                        }
                    } else {
                        println!(
                            "{}: {}{}",
                            printable(&r.name),
                            counted(r.mismatches.len(), "difference"),
                            signed_note(r)
                        );
                        for m in &r.mismatches {
                            println!("  {:10} {}", m.problem, printable(&m.path));
                        }
                    }
                }
            }
            Ok(if bad { EXIT_MISMATCH } else { EXIT_OK })
        }
        Command::History { name } => {
            // One row per package change; an apply's rows share its txn id.
            let h = inst.history()?;
            let rows: Vec<(&crate::txn::HistoryEntry, &crate::txn::ChangeSummary)> = h
                .iter()
                .flat_map(|e| e.changes.iter().map(move |c| (e, c)))
                .filter(|(_, c)| name.as_ref().is_none_or(|n| &c.package == n))
                .collect();
            if cli.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(e, c)| json!({"id": e.id, "op": history_op(c), "txn_op": e.op.name(), "package": c.package, "started_at": e.started_at, "finished_at": e.finished_at, "old_digest": c.old_digest(), "new_digest": c.new_digest, "outcome": e.outcome.name(), "error": e.error, "signed_by": c.signed_by, "moved": c.moved}))
                    .collect();
                print_json(&serde_json::Value::Array(v));
            } else if !cli.quiet {
                for (i, (e, c)) in rows.iter().enumerate() {
                    let old = c.old_digest().map(short).unwrap_or("-");
                    let new = c.new_digest.as_deref().map(short).unwrap_or("-");
                    let op = if e.op == crate::txn::Op::Apply {
                        format!("{} (apply)", history_op(c))
                    } else {
                        history_op(c).to_string()
                    };
                    let package = printable(&c.package);
                    println!("{:>6}  {package:10}  {op:9}  {old} -> {new}  {}", e.id, e.outcome.name());
                    let last_of_txn = rows.get(i + 1).is_none_or(|(n, _)| n.id != e.id);
                    if let (true, Some(note)) = (last_of_txn, &e.error) {
                        println!("        {}", printable(note));
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Command::Completions { .. } | Command::Man => Ok(EXIT_OK),
        Command::Cache { action: CacheAction::List } => {
            let listing = inst.cache_list()?;
            print_cache_listing(cli, &listing);
            Ok(EXIT_OK)
        }
        Command::Cache { action: CacheAction::Prune { dry_run } } => {
            let rep = inst.cache_prune(*dry_run)?;
            if cli.json {
                print_json(&json!(rep));
            } else if !cli.quiet {
                let verb = if rep.dry_run { "would remove" } else { "removed" };
                for b in &rep.removed {
                    println!("{verb} {}  {} bytes", b.digest, b.size);
                }
                for p in &rep.removed_partials {
                    println!("{verb} {}  {} bytes (partial download)", p.path, p.size);
                }
                println!(
                    "{verb} {} and {} ({}); kept {} in use",
                    counted(rep.removed.len(), "blob"),
                    counted(rep.removed_partials.len(), "partial download"),
                    counted(rep.bytes_freed, "byte"),
                    counted(rep.kept, "blob")
                );
            }
            Ok(EXIT_OK)
        }
        Command::Journal => {
            let raw = inst.journal().raw()?;
            let decoded: Vec<_> =
                raw.iter().map(|(k, v)| json!({"key": k, "bytes": v.len(), "record": decode_any(k, v)})).collect();
            if cli.json {
                print_json(&serde_json::Value::Array(decoded));
            } else {
                for d in &decoded {
                    println!("{} ({} bytes): {}", d["key"].as_str().unwrap_or(""), d["bytes"], d["record"]);
                }
            }
            Ok(EXIT_OK)
        }
    }
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

/// A read-only command on a state dir that does not exist: nothing is
/// installed, so it prints the empty result (and says why on stderr)
/// without creating the state dir or anything above it.
fn print_without_state_dir(cli: &Cli, state_dir: &std::path::Path) -> Result<i32, installer::Error> {
    if let Command::Verify { name: Some(n) } = &cli.command {
        return Err(installer::Error::NotInstalled(n.clone()));
    }
    if !cli.json && !cli.quiet {
        eprintln!("stagehand: no state dir at {}: nothing installed yet", shown_path(state_dir));
    }
    let shown_dir = state_dir.display().to_string();
    match &cli.command {
        Command::Cache { .. } => {
            let cache = crate::source::cache::BlobCache::new(state_dir);
            let listing = installer::CacheListing {
                dir: cache.root().display().to_string(),
                blobs: Vec::new(),
                partials: Vec::new(),
                total_bytes: 0,
            };
            print_cache_listing(cli, &listing);
        }
        Command::Status if cli.json => print_json(&json!({
            "state_dir": shown_dir,
            "pending": [],
            "recovered": [],
            "packages": 0,
            "last_txn": null,
        })),
        Command::Status if !cli.quiet => {
            println!("state dir:  {} (not created yet)", shown_path(state_dir));
            println!("packages:   0");
            println!("pending:    none");
            println!("last txn:   none");
        }
        Command::Verify { .. } if cli.json => print_json(&json!({"ok": true, "packages": []})),
        Command::Repair { .. } if cli.json => print_json(&json!({"dry_run": true, "pending": []})),
        Command::Repair { .. } if !cli.quiet => println!("nothing pending"),
        Command::List if !cli.json && !cli.quiet => println!("no packages installed"),
        _ if cli.json => print_json(&json!([])),
        _ => {}
    }
    Ok(EXIT_OK)
}

/// `cache list`: every blob with its users, partial downloads, totals.
fn print_cache_listing(cli: &Cli, listing: &installer::CacheListing) {
    if cli.json {
        print_json(&json!(listing));
    } else if !cli.quiet {
        println!("{}", listing.dir);
        if listing.blobs.is_empty() && listing.partials.is_empty() {
            println!("the blob cache is empty");
        }
        for b in &listing.blobs {
            let used = if b.used_by.is_empty() { "unused".to_string() } else { b.used_by.join(", ") };
            println!("{}  {:>12}  {used}", b.blob.digest, b.blob.size);
        }
        for p in &listing.partials {
            println!("{}  {:>12}  partial download", p.path, p.size);
        }
        println!(
            "{}, {} partial, {}",
            counted(listing.blobs.len(), "blob"),
            listing.partials.len(),
            counted(listing.total_bytes, "byte")
        );
    }
}

/// Prints what a finished install, upgrade, rollback or uninstall did.
fn print_txn_report(cli: &Cli, rep: &installer::TxnReport, recovered: &[installer::RecoveryReport]) -> i32 {
    if rep.interrupted {
        eprintln!("stagehand: interrupted after the commit point: the {} was finished, not undone", rep.op);
    }
    if cli.json {
        print_json(&json!({"result": rep, "recovered": recovered}));
    } else if !cli.quiet {
        let old = rep.old_digest.as_deref().map(short).unwrap_or("-");
        let new = rep.new_digest.as_deref().map(short).unwrap_or("-");
        let n = rep.targets.len();
        match rep.op.as_str() {
            "uninstall" => println!("uninstalled {} ({} removed, txn {})", rep.name, counted(n, "target"), rep.txn),
            _ if rep.moved => println!(
                "{} {}: {old} -> {new}, moved from {} to {} ({}, txn {})",
                rep.op,
                rep.name,
                shown_list(&rep.moved_from),
                shown_list(&rep.targets),
                counted(n, "target"),
                rep.txn
            ),
            op => println!("{op} {}: {old} -> {new} ({}, txn {})", rep.name, counted(n, "target"), rep.txn),
        }
    }
    EXIT_OK
}

/// Paths for human output, comma-separated, control characters escaped.
fn shown_list(paths: &[String]) -> String {
    if paths.is_empty() {
        return "-".to_string();
    }
    paths.iter().map(|p| printable(p)).collect::<Vec<_>>().join(", ")
}

fn history_op(c: &crate::txn::ChangeSummary) -> &'static str {
    match (c.op, &c.old) {
        (crate::txn::Op::Install, Some(v)) if v.is_adopted() => "adopt",
        (crate::txn::Op::Install, Some(_)) if c.moved => "move",
        (crate::txn::Op::Install, Some(_)) => "upgrade",
        (op, _) => op.name(),
    }
}

fn decode_any(key: &str, bytes: &[u8]) -> serde_json::Value {
    use crate::journal::codec::{decode, RecordKind};
    let r = if key.starts_with("txns/") {
        decode::<crate::txn::TxnRecord>(RecordKind::Txn, bytes).map(|r| serde_json::to_value(r).unwrap_or_default())
    } else if key.starts_with("history/") {
        decode::<crate::txn::HistoryEntry>(RecordKind::History, bytes)
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    } else {
        decode::<PackageRecord>(RecordKind::Package, bytes).map(|r| serde_json::to_value(r).unwrap_or_default())
    };
    r.unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// A path for human output, control characters escaped.
fn shown_path(p: &std::path::Path) -> String {
    printable(&p.display().to_string())
}

/// `1 target`, `2 targets`: a count and its noun, in the right number.
pub(crate) fn counted<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn short(d: &str) -> &str {
    let end = d.len().min("sha256:".len() + 12);
    &d[..end]
}
