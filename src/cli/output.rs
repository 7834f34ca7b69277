//! Printing for people and for machines (`--json`): package rows, the
//! report of a transaction, the cache listing, the empty answers of a
//! read-only command without a state dir, and the small formatting helpers
//! (counts with their noun, short digests, escaped paths).

use serde_json::json;

use super::args::{Cli, Command};
use super::EXIT_OK;
use crate::installer;
use crate::source::printable;
use crate::txn::PackageRecord;

pub(crate) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into()));
}

/// `man --dir`: the pages written.
pub(super) fn print_written(cli: &Cli, paths: &[std::path::PathBuf]) {
    if cli.json {
        print_json(&json!({"written": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()}));
    } else if !cli.quiet {
        for p in paths {
            println!("{}", shown_path(p));
        }
        println!("wrote {}", counted(paths.len(), "man page"));
    }
}

/// `verify`'s note on whether a package's signature was checked at install.
pub(super) fn signed_note(r: &installer::VerifyReport) -> String {
    match &r.signed_by {
        Some(fp) => format!("; cosign signature checked at install, key {fp}"),
        None => "; no signature checked at install".to_string(),
    }
}

pub(super) fn package_json(p: &PackageRecord) -> serde_json::Value {
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

/// Which host served each manifest and blob that transaction `txn` fetched
/// for `package` (`[]` when nothing was fetched: a local layout, the cache,
/// or a transaction from before the served tree).
pub(super) fn served_json(
    inst: &installer::Installer,
    txn: crate::txn::TxnId,
    package: &str,
) -> Result<serde_json::Value, installer::Error> {
    let rec = inst.journal().served(txn)?;
    let blobs = rec.map(|r| r.blobs).unwrap_or_default();
    Ok(serde_json::Value::Array(
        blobs.iter().filter(|b| b.package == package).map(|b| json!({"digest": b.digest, "host": b.host})).collect(),
    ))
}

/// A read-only command on a state dir that does not exist: nothing is
/// installed, so it prints the empty result (and says why on stderr)
/// without creating the state dir or anything above it.
pub(super) fn print_without_state_dir(cli: &Cli, state_dir: &std::path::Path) -> Result<i32, installer::Error> {
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
            "cleanup_pending": [],
            "recovered": [],
            "packages": 0,
            "last_txn": null,
            "served_by": {},
            "in_progress": false,
            "writer_pid": null,
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
pub(super) fn print_cache_listing(cli: &Cli, listing: &installer::CacheListing) {
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
pub(super) fn print_txn_report(cli: &Cli, rep: &installer::TxnReport, recovered: &[installer::RecoveryReport]) -> i32 {
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
pub(super) fn shown_list(paths: &[String]) -> String {
    if paths.is_empty() {
        return "-".to_string();
    }
    paths.iter().map(|p| printable(p)).collect::<Vec<_>>().join(", ")
}

pub(super) fn history_op(c: &crate::txn::ChangeSummary) -> &'static str {
    match (c.op, &c.old) {
        (crate::txn::Op::Install, Some(v)) if v.is_adopted() => "adopt",
        (crate::txn::Op::Install, Some(_)) if c.moved => "move",
        (crate::txn::Op::Install, Some(_)) => "upgrade",
        (op, _) => op.name(),
    }
}

pub(super) fn decode_any(key: &str, bytes: &[u8]) -> serde_json::Value {
    use crate::journal::codec::{decode, RecordKind};
    let r = if key.starts_with("txns/") {
        decode::<crate::txn::TxnRecord>(RecordKind::Txn, bytes).map(|r| serde_json::to_value(r).unwrap_or_default())
    } else if key.starts_with("served/") {
        decode::<crate::txn::ServedRecord>(RecordKind::Served, bytes)
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    } else if key.starts_with("history/") {
        decode::<crate::txn::HistoryEntry>(RecordKind::History, bytes)
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    } else {
        decode::<PackageRecord>(RecordKind::Package, bytes).map(|r| serde_json::to_value(r).unwrap_or_default())
    };
    r.unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// A path for human output, control characters escaped.
pub(super) fn shown_path(p: &std::path::Path) -> String {
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

pub(super) fn short(d: &str) -> &str {
    let end = d.len().min("sha256:".len() + 12);
    &d[..end]
}
