//! Output of `apply`, `lock` and `rollback --apply`: the plan for people
//! (`+ name digest`, `~ name old → new`, `- name`) or JSON.

use serde_json::json;

use super::{print_json, Cli, EXIT_OK};
use crate::installer::{self, lockfile::LockFile};

pub const APPLY_HELP: &str = "\
The desired-state file lists packages; keys are the install flags' long names,
relative paths are relative to the file:

  [package.demo]
  ref = \"oci-layout:examples/demo:v2\"
  to = \"/opt/demo/app\"
  map = [\"*.so=/opt/demo/lib\", \"*.control=/opt/demo/share/extension\"]

  [package.db]
  ref = \"oci-layout:examples/steampipe-db:14.19.0\"
  profile = \"steampipe-db\"
  install-dir = \"/home/me/.steampipe\"
  db-version = \"14.19.0\"

Every reference is resolved and every blob fetched first; then one transaction
installs, upgrades and (with --prune) uninstalls every package whose state
differs: after any crash, all of them are at their old versions or all at
their new ones. stagehand.lock (beside the file) pins each reference to its
manifest digest; `apply --locked` installs exactly those.

Examples:
  stagehand apply --dry-run
  stagehand apply --file fleet/stagehand.toml --prune
  stagehand lock && stagehand apply --locked
  stagehand rollback --apply";

pub fn print_report(cli: &Cli, rep: &installer::ApplyReport, recovered: &[installer::RecoveryReport]) -> i32 {
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
    if rep.changes.is_empty() {
        println!("nothing to do: {} package(s) already as {} says", rep.unchanged.len(), rep.file);
        return EXIT_OK;
    }
    for c in &rep.changes {
        println!("{}", c.line());
    }
    match (rep.dry_run, rep.txn) {
        (true, _) => println!("(dry run: nothing was changed)"),
        (false, Some(t)) => println!("applied {} change(s) in one transaction (txn {t})", rep.changes.len()),
        (false, None) => {}
    }
    EXIT_OK
}

pub fn print_lock(cli: &Cli, lock: &LockFile, path: &std::path::Path) -> i32 {
    if cli.json {
        print_json(&json!({"lock_file": path.display().to_string(), "lock": lock}));
    } else if !cli.quiet {
        for (name, pin) in &lock.package {
            println!("{name} {} → {} ({})", pin.reference, pin.digest, pin.platform);
        }
        println!("wrote {}", path.display());
    }
    EXIT_OK
}
