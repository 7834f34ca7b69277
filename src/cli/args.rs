//! The command line's grammar: every subcommand, flag and help text, as
//! clap parses them. Behaviour lives in `commands`; this holds none.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{apply, units};
use crate::installer;

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
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never. --json is never coloured.
    #[arg(long, global = true, value_name = "WHEN", value_enum, default_value_t = super::colour::ColorChoice::Auto)]
    pub color: super::colour::ColorChoice,
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
  # a whole set from a desired-state file, in one transaction: first the plan
  stagehand apply --file examples/stagehand.toml --dry-run";

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
        #[command(flatten)]
        keyless: KeylessArgs,
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
        after_long_help = "Examples:\n  # back to the version the last install replaced\n  stagehand rollback demo\n  # to a kept version, by a unique prefix of its digest (see `stagehand history demo`)\n  stagehand rollback demo --to sha256:5cdbcdf1"
    )]
    Rollback {
        #[arg(required_unless_present = "apply")]
        name: Option<String>,
        /// The manifest digest of a kept version, or a unique prefix of it (7 hex digits or more;
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
        #[command(flatten)]
        keyless: KeylessArgs,
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
        /// The desired-state file (default: $STAGEHAND_FILE, else the first stagehand.toml
        /// in this directory or one above it).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Print the plan (`+ name digest`, `~ name old -> new`, `- name`, `= name kept`, each with its
        /// details); change nothing.
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
        /// With --dry-run: exit 0 if nothing would change, 10 if the plan has changes (errors keep their codes).
        #[arg(long, requires = "dry_run")]
        detailed_exitcode: bool,
    },
    /// Pin every reference of a desired-state file in its lock file (installs nothing; pins already there are kept).
    #[command(
        after_long_help = "Example:\n  stagehand lock --file web.toml && stagehand apply --file web.toml --locked"
    )]
    Lock {
        /// The desired-state file (default: $STAGEHAND_FILE, else the first stagehand.toml
        /// in this directory or one above it).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Resolve tags again and move the lock file's pins (all, or the named packages); installs nothing.
    #[command(after_long_help = "Examples:\n  stagehand update --dry-run\n  stagehand update demo && stagehand apply")]
    Update {
        /// Packages to re-resolve (default: every package of the file).
        names: Vec<String>,
        /// The desired-state file (default: $STAGEHAND_FILE, else the first stagehand.toml
        /// in this directory or one above it).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Show what would move; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// For each package of a desired-state file: the lock's pin against what its reference
    /// resolves to now. Changes nothing (no lock write, no state dir needed).
    #[command(after_long_help = "Examples:\n  stagehand outdated\n  stagehand outdated --file web.toml --json")]
    Outdated {
        /// The desired-state file (default: $STAGEHAND_FILE, else the first stagehand.toml
        /// in this directory or one above it).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
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
    /// Internal: remove what the last transaction replaced, holding the
    /// state-dir lock the command that started this process handed over.
    #[command(hide = true)]
    FinishCleanup {
        /// The inherited descriptor that holds the lock.
        #[arg(long, value_name = "FD")]
        lock_fd: i32,
        /// A layout whose manifest DIGEST's blobs to keep in the cache.
        #[arg(long, value_name = "DIGEST=PATH")]
        layout_blobs: Vec<std::ffi::OsString>,
    },
    /// List installed packages.
    #[command(after_long_help = "Example:\n  stagehand list --json")]
    List,
    /// Re-hash installed files against the registry (exit 3 on differences).
    #[command(
        after_long_help = "Differences: missing, modified, unexpected (a file put inside a package's directory), \
                           kind, mode, and leftover (a copy `.NAME.stagehand-N.staging` or `.backup` beside a \
                           target that finished transaction N made and did not see removed: remove it by hand).\n\n\
                           Example:\n  stagehand verify demo"
    )]
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
    /// Write the man pages: one per command into --dir, or the top page on stdout.
    #[command(
        after_long_help = "Examples:\n  stagehand man --dir /usr/local/share/man/man1\n  stagehand man > stagehand.1 && man -l stagehand.1"
    )]
    Man {
        /// Write stagehand.1, stagehand-install.1, ... (one page per command) into DIR, created if missing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// A keyless signature policy, shared by `install` and `rollback`: checked
/// offline against a trusted root, instead of `--verify-key`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeylessArgs {
    /// Keyless: accept a Sigstore bundle whose Fulcio certificate names exactly this
    /// identity (an email, or a CI workflow URL); with --certificate-oidc-issuer and --trusted-root.
    #[arg(long, value_name = "IDENTITY", conflicts_with_all = ["verify_key", "certificate_identity_regexp"])]
    pub certificate_identity: Option<String>,
    /// Keyless: as --certificate-identity, a regular expression the identity must match in full.
    #[arg(long, value_name = "REGEXP", conflicts_with = "verify_key")]
    pub certificate_identity_regexp: Option<String>,
    /// Keyless: the OIDC issuer the certificate must name (e.g. https://token.actions.githubusercontent.com).
    #[arg(long, value_name = "URL", conflicts_with = "verify_key")]
    pub certificate_oidc_issuer: Option<String>,
    /// Keyless: Sigstore's trusted_root.json (Fulcio CAs, Rekor and TSA keys), read offline.
    #[arg(long, value_name = "FILE", conflicts_with = "verify_key")]
    pub trusted_root: Option<PathBuf>,
}

impl KeylessArgs {
    pub fn options(&self) -> crate::source::keyless::KeylessOptions {
        crate::source::keyless::KeylessOptions {
            identity: self.certificate_identity.clone(),
            identity_regexp: self.certificate_identity_regexp.clone(),
            issuer: self.certificate_oidc_issuer.clone(),
            trusted_root: self.trusted_root.clone(),
        }
    }
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
