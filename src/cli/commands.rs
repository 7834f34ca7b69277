//! One handler per subcommand that needs the state dir: builds the
//! installer's request from the parsed flags, calls it, and hands the
//! result to `output`.

use serde_json::json;

use super::args::{CacheAction, Cli, Command};
use super::output::{
    counted, decode_any, package_json, print_cache_listing, print_json, print_txn_report, served_json, short,
    shown_path, signed_note,
};
use super::{
    apply, default_steampipe_dir, parse_platform, read_password_stdin, signature_flags, signature_policy,
    EXIT_MISMATCH, EXIT_OK,
};
use crate::installer::{self, InstallRequest, Installer, ProfileRequest};
use crate::plan::profile::Profile;
use crate::plan::Placement;
use crate::source::printable;
use crate::txn::RecoveryDecision;

pub(super) fn run_command(
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
            keyless,
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
                verify_key: signature_policy(verify_key.as_deref(), keyless)?,
                require_signature: *require_signature,
                limits: (*limits).into(),
            };
            let rep = inst.install(&req)?;
            Ok(print_txn_report(cli, &rep, recovered))
        }
        Command::Rollback { apply: true, limits, verify_key, keyless, require_signature, .. } => {
            let flags = signature_flags(verify_key.as_deref(), keyless, *require_signature)?;
            let rep = inst.rollback_apply(cli.keep_versions, (*limits).into(), &flags)?;
            Ok(apply::print_report(cli, &rep, recovered))
        }
        Command::Rollback { name, to, limits, verify_key, keyless, require_signature, .. } => {
            let name = name.as_deref().unwrap_or_default();
            let flags = signature_flags(verify_key.as_deref(), keyless, *require_signature)?;
            let rep = inst.rollback(name, to.as_deref(), cli.keep_versions, (*limits).into(), &flags)?;
            Ok(print_txn_report(cli, &rep, recovered))
        }
        Command::Apply { file, dry_run, prune, remove, yes, locked, detailed_exitcode } => {
            use std::io::IsTerminal as _;
            let opts = installer::ApplyOptions {
                dry_run: *dry_run,
                prune: *prune,
                remove: remove.clone(),
                locked: *locked,
                progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
                keep_versions: cli.keep_versions,
            };
            let file = installer::desired::find(file.as_deref())?;
            apply::run_apply(cli, inst, &file, &opts, *yes, *detailed_exitcode, recovered)
        }
        Command::Lock { file } => {
            let set = installer::desired::DesiredSet::load(&installer::desired::find(file.as_deref())?)?;
            let (lock, path, changes) = inst.lock(&set)?;
            Ok(apply::print_lock(cli, &lock, &path, &changes))
        }
        Command::Update { names, file, dry_run } => {
            let set = installer::desired::DesiredSet::load(&installer::desired::find(file.as_deref())?)?;
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
            let cleanups = inst.cleanups_pending()?;
            let installed = inst.list()?;
            let packages = installed.len();
            let last_txn = inst.journal().last_finished_txn()?;
            if cli.json {
                let mut served = serde_json::Map::new();
                for p in &installed {
                    served.insert(p.name.clone(), served_json(inst, p.txn, &p.name)?);
                }
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
                    "cleanup_pending": cleanups.iter().map(|c| json!({"id": c.txn, "name": c.package, "paths": c.paths})).collect::<Vec<_>>(),
                    "recovered": recovered,
                    "packages": packages,
                    "last_txn": last_txn,
                    "served_by": served,
                    "in_progress": inst.in_progress().is_some(),
                    "writer_pid": inst.in_progress().flatten(),
                }));
            } else if !cli.quiet {
                println!("state dir:  {}", shown_path(inst.state_dir()));
                println!("packages:   {packages}");
                println!(
                    "pending:    {}",
                    if pending.is_empty() { "none".to_string() } else { pending.len().to_string() }
                );
                println!("last txn:   {}", last_txn.map(|t| t.to_string()).unwrap_or_else(|| "none".into()));
                for c in &cleanups {
                    let (txn, package, left) = (c.txn, printable(&c.package), counted(c.paths.len(), "path"));
                    match inst.in_progress() {
                        Some(_) => println!("cleanup:    txn {txn} ({package}): what it replaced is being removed ({left} left)"),
                        None => println!(
                            "cleanup:    txn {txn} ({package}): what it replaced is still on disk ({left}): recovery refused to remove it (see above)"
                        ),
                    }
                }
                if let Some(pid) = inst.in_progress() {
                    let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    if cleanups.is_empty() {
                        println!("in progress: yes: a transaction is in progress (another stagehand process{who} holds the state dir)");
                    } else {
                        println!("in progress: yes: stagehand{who} is removing what the last transaction replaced");
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Command::List => {
            let pkgs = inst.list()?;
            if cli.json {
                let mut v = Vec::with_capacity(pkgs.len());
                for p in &pkgs {
                    let mut j = package_json(p);
                    j["served_by"] = served_json(inst, p.txn, &p.name)?;
                    v.push(j);
                }
                print_json(&serde_json::Value::Array(v));
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
                if reports.iter().flat_map(|r| &r.mismatches).any(|m| m.problem == "leftover") {
                    println!(
                        "a leftover is a copy a finished transaction made beside a target and could not see \
                         removed (a failing disk can undo a removal); it holds nothing stagehand needs: \
                         remove it with `rm -rf PATH`"
                    );
                }
            }
            Ok(if bad { EXIT_MISMATCH } else { EXIT_OK })
        }
        Command::History { name } => {
            super::history::print_history(cli, inst, name.as_deref())?;
            Ok(EXIT_OK)
        }
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Outdated { .. }
        | Command::FinishCleanup { .. } => Ok(EXIT_OK),
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
