//! Output of `apply`, `lock`, `update` and `rollback --apply`: the plan for
//! people (`+ name digest`, `~ name old -> new`, `- name`, `= name kept`,
//! and the lock pins that moved) or JSON; and the question an apply that
//! removes or moves packages asks on a terminal. What needs asking is the
//! library's decision (`PlannedChange::needs_confirmation`); this only asks.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use serde_json::json;

use super::output::{counted, print_json};
use super::{Cli, EXIT_OK};
use crate::installer::{self, lockfile::LockFile, pins::LockChange, Confirm, Installer};

pub const APPLY_HELP: &str = "\
The desired-state file: --file, else $STAGEHAND_FILE, else the first
stagehand.toml in this directory or one above it. It lists packages; keys are
the install flags' long names (ref, name, to, map, adopt, profile, install-dir,
db-version, platform, plain-http, verify-key, certificate-identity,
certificate-identity-regexp, certificate-oidc-issuer, trusted-root,
require-signature, request-timeout, max-entries, max-layer-bytes, max-path-bytes, keep-versions,
and username with password-env, the environment variable holding the
password: never a password in the file). [defaults] sets keys for every
package that does not set them. Relative paths are relative to the file:

  [defaults]
  max-layer-bytes = \"2 GiB\"
  keep-versions = 3

  [package.demo]
  ref = \"oci-layout:examples/demo:v2\"
  to = \"/opt/demo/app\"
  map = [\"*.so=/opt/demo/lib\", \"*.control=/opt/demo/share/extension\"]

  [package.db]
  ref = \"oci-layout:examples/steampipe-db:v1\"
  profile = \"steampipe-db\"
  install-dir = \"/home/me/.steampipe\"
  db-version = \"14.19.0\"

Every reference is pinned first; then one transaction installs, upgrades and
(with --prune) uninstalls every package whose state differs: after any crash,
all of them are at their old versions or all at their new ones.

--prune removes only packages THIS file applied (each package records the
file that last applied it); packages another file or a hand install manages
are shown as kept. --remove NAME uninstalls one of those on purpose. An apply
that uninstalls or moves a package asks first on a terminal; without one it
refuses unless --yes is given.

The lock file sits beside the file, named after it (web.toml: web.lock,
stagehand.toml: stagehand.lock). Like Cargo.lock, it pins each reference to
a manifest digest: apply keeps every pin whose entry is unchanged (tags are
not resolved again) and prints each pin that moves; `stagehand update`
re-resolves tags on purpose; `apply --locked` installs exactly the pins,
verifies each signature again and refuses a signer other than the one the
lock records. `stagehand outdated` shows which tags moved, changing nothing.

The plan is printed before any work. `apply --dry-run --detailed-exitcode`
exits 0 when nothing would change, 10 when the plan has changes.

Examples:
  stagehand apply --dry-run
  stagehand apply --dry-run --detailed-exitcode || [ $? = 10 ]
  stagehand apply --file fleet/web.toml --prune --yes
  stagehand update --dry-run && stagehand update && stagehand apply
  stagehand lock && stagehand apply --locked
  stagehand outdated
  stagehand rollback --apply";

/// Exit code of `apply --dry-run --detailed-exitcode` when the plan has changes.
pub const EXIT_CHANGES: i32 = 10;

/// Runs `apply`: prints the plan as soon as it is known (before anything
/// is fetched or journaled, so a failing apply still shows it); asks on a
/// terminal when the plan uninstalls or moves a package, unless `yes`;
/// without a terminal the library refuses. With `detailed`, exits
/// [`EXIT_CHANGES`] when the plan has changes.
pub fn run_apply(
    cli: &Cli,
    inst: &mut Installer,
    file: &Path,
    opts: &installer::ApplyOptions,
    yes: bool,
    detailed: bool,
    recovered: &[installer::RecoveryReport],
) -> Result<i32, installer::Error> {
    let set = installer::desired::DesiredSet::load(file)?;
    let mut ask = |rep: &installer::ApplyReport| ask_on_terminal(rep);
    let confirm = if yes {
        Confirm::Yes
    } else if std::io::stdin().is_terminal() {
        Confirm::Ask(&mut ask)
    } else {
        Confirm::Refuse
    };
    let human = !cli.json && !cli.quiet;
    let mut show = |rep: &installer::ApplyReport| {
        if human {
            print_plan(rep);
        }
    };
    let rep = inst.apply_showing(&set, opts, confirm, &mut show)?;
    let code = finish_report(cli, &rep, recovered, false);
    Ok(if detailed && code == EXIT_OK && !rep.changes.is_empty() { EXIT_CHANGES } else { code })
}

/// The plan: pins that move, then each change with its details, and the
/// packages a prune keeps.
fn print_plan(rep: &installer::ApplyReport) {
    let verb = if rep.dry_run { "would update" } else { "will update" };
    print_lock_changes(rep.lock_file.as_deref(), &rep.lock_changes, verb);
    if rep.changes.is_empty() {
        println!("nothing to do: {} already as {} says", counted(rep.unchanged.len(), "package"), rep.file);
    }
    for c in &rep.changes {
        println!("{}", super::colour::plan_line(&c.line()));
        for d in c.details() {
            println!("{d}");
        }
    }
    for k in &rep.kept {
        println!("{}", k.line());
    }
    let _ = std::io::stdout().flush();
}

/// Asks on stderr (the plan was just printed) and reads the answer from the terminal.
fn ask_on_terminal(rep: &installer::ApplyReport) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "This will {}. Type 'yes' to go ahead: ", rep.to_confirm().join(", "));
    let _ = err.flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

pub fn print_report(cli: &Cli, rep: &installer::ApplyReport, recovered: &[installer::RecoveryReport]) -> i32 {
    finish_report(cli, rep, recovered, true)
}

/// The report after the work: the plan too unless it was shown before (`with_plan`).
fn finish_report(
    cli: &Cli,
    rep: &installer::ApplyReport,
    recovered: &[installer::RecoveryReport],
    with_plan: bool,
) -> i32 {
    if rep.interrupted {
        eprintln!("stagehand: interrupted after the commit point: the apply was finished, not undone");
    }
    if cli.json {
        print_json(&json!({"result": rep, "recovered": recovered}));
        return EXIT_OK;
    }
    if cli.quiet {
        return EXIT_OK;
    }
    if with_plan {
        print_plan(rep);
    }
    match (rep.dry_run, rep.txn) {
        (true, _) => println!("(dry run: nothing was changed)"),
        (false, Some(t)) => println!("applied {} in one transaction (txn {t})", counted(rep.changes.len(), "change")),
        (false, None) => {}
    }
    EXIT_OK
}

/// `lock FILE: NAME REF old -> new` for each pin that moved.
fn print_lock_changes(lock_file: Option<&str>, changes: &[LockChange], verb: &str) {
    if changes.is_empty() {
        return;
    }
    println!("{verb} {}:", lock_file.unwrap_or("the lock file"));
    for c in changes {
        println!("  {}", c.line());
    }
}

pub fn print_lock(cli: &Cli, lock: &LockFile, path: &Path, changes: &[LockChange]) -> i32 {
    if cli.json {
        print_json(&json!({"lock_file": path.display().to_string(), "lock": lock, "lock_changes": changes}));
    } else if !cli.quiet {
        for (name, pin) in &lock.package {
            let index = pin.index.as_deref().map(|i| format!(", index {i}")).unwrap_or_default();
            let signer = pin.signer.as_ref().map(|s| format!(", signed by {s}")).unwrap_or_default();
            println!("{name} {} -> {} ({}{index}{signer})", pin.reference, pin.digest, pin.platform);
        }
        for c in changes {
            println!("  {}", c.line());
        }
        println!("wrote {}", path.display());
    }
    EXIT_OK
}

pub fn print_update(cli: &Cli, rep: &installer::UpdateReport) -> i32 {
    if cli.json {
        print_json(&json!({"result": rep}));
    } else if !cli.quiet {
        for c in &rep.changes {
            println!("{}", c.line());
        }
        let moved = rep.changes.len();
        match (moved, rep.dry_run) {
            (0, _) => println!(
                "every pin is current ({} resolved); {} unchanged",
                counted(rep.checked.len(), "package"),
                rep.lock_file
            ),
            (_, true) => println!("(dry run: {} not written; {} would move)", rep.lock_file, counted(moved, "pin")),
            (_, false) => {
                println!(
                    "wrote {} ({} moved); run `stagehand apply` to install them",
                    rep.lock_file,
                    counted(moved, "pin")
                )
            }
        }
    }
    EXIT_OK
}

/// `NAME REF locked -> latest (status)`, one line a package; exit 1 if a
/// reference could not be resolved.
pub fn print_outdated(cli: &Cli, rep: &installer::outdated::OutdatedReport) -> i32 {
    let failed = rep.packages.iter().any(|p| p.error.is_some());
    if cli.json {
        print_json(&json!({"result": rep}));
    } else {
        for p in &rep.packages {
            let locked = p.locked.as_deref().unwrap_or("(not locked)");
            let line = match (p.status, &p.latest, &p.error) {
                ("current", _, _) => format!("{} {} {locked} (current)", p.name, p.reference),
                (_, Some(latest), _) => format!("{} {} {locked} -> {latest} ({})", p.name, p.reference, p.status),
                (_, None, e) => {
                    format!("{} {} {locked}: cannot resolve: {}", p.name, p.reference, e.as_deref().unwrap_or(""))
                }
            };
            if !cli.quiet || p.error.is_some() {
                println!("{line}");
            }
        }
    }
    if failed {
        eprintln!("{} a reference of {} could not be resolved (shown above)", super::colour::error_prefix(), rep.file);
        return super::EXIT_ERROR;
    }
    EXIT_OK
}
