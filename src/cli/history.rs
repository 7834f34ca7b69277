//! `stagehand history`: one row per package change, for people (local
//! time, package, op, old -> new digest with the tag it came from, outcome;
//! a note for ids the history does not hold) or for machines (`--json`,
//! fields only ever added).

use std::collections::BTreeMap;

use serde_json::json;

use super::colour;
use super::output::{history_op, print_json, served_json, short};
use super::Cli;
use crate::installer::{self, Installer};
use crate::source::printable;
use crate::txn::{ChangeSummary, HistoryEntry, PackageRecord};

/// Prints the history of every package, or of `name`.
pub(super) fn print_history(cli: &Cli, inst: &Installer, name: Option<&str>) -> Result<(), installer::Error> {
    let h = inst.history()?;
    let installed = inst.list()?;
    let sources = known_sources(&h, &installed);
    // One row per package change; an apply's rows share its txn id.
    let rows: Vec<(&HistoryEntry, &ChangeSummary)> = h
        .iter()
        .flat_map(|e| e.changes.iter().map(move |c| (e, c)))
        .filter(|(_, c)| name.is_none_or(|n| c.package == n))
        .collect();
    let source_of = |c: &ChangeSummary| -> Option<String> {
        let d = c.new_digest.as_deref()?;
        sources.get(&(c.package.as_str(), d)).cloned()
    };
    if cli.json {
        let mut v = Vec::with_capacity(rows.len());
        for (e, c) in &rows {
            let source = source_of(c);
            let tag = source.as_deref().and_then(tag_of).map(str::to_string);
            let served_by = served_json(inst, e.id, &c.package)?;
            v.push(json!({"id": e.id, "op": history_op(c), "txn_op": e.op.name(), "package": c.package,
                   "started_at": e.started_at, "finished_at": e.finished_at,
                   "old_digest": c.old_digest(), "new_digest": c.new_digest,
                   "outcome": e.outcome.name(), "error": e.error, "signed_by": c.signed_by, "moved": c.moved,
                   "old_source": c.old.as_ref().map(|v| v.source.as_str()),
                   "new_source": source, "tag": tag, "served_by": served_by}));
        }
        print_json(&serde_json::Value::Array(v));
        return Ok(());
    }
    if cli.quiet {
        return Ok(());
    }
    if rows.is_empty() {
        println!("no transactions yet");
    }
    let pending: Vec<u64> = inst.pending()?.iter().map(|r| r.id).collect();
    let mut previous_id = 0;
    let w = rows.iter().map(|(_, c)| printable(&c.package).chars().count()).max().unwrap_or(0).max(7);
    for (i, (e, c)) in rows.iter().enumerate() {
        if name.is_none() && e.id > previous_id + 1 {
            println!("{}", gap_note(previous_id + 1, e.id - 1, &pending));
        }
        previous_id = e.id;
        let old = c.old_digest().map(short).unwrap_or("-");
        let new = c.new_digest.as_deref().map(short).unwrap_or("-");
        let op = if e.op == crate::txn::Op::Apply {
            format!("{} (apply)", history_op(c))
        } else {
            history_op(c).to_string()
        };
        let tag = source_of(c).and_then(|s| tag_of(&s).map(|t| format!(" ({})", printable(t)))).unwrap_or_default();
        let package = printable(&c.package);
        let tried = if e.outcome.name().starts_with("rolled back") && c.new_digest.is_some() { " tried" } else { "" };
        println!(
            "{:>6}  {}  {package:w$}  {op:9}  {old} ->{tried} {new}{tag}  {}",
            e.id,
            local_time(e.started_at),
            colour::outcome(e.outcome.name())
        );
        let last_of_txn = rows.get(i + 1).is_none_or(|(n, _)| n.id != e.id);
        if let (true, Some(note)) = (last_of_txn, &e.error) {
            println!("        {}", printable(note));
        }
    }
    for id in pending.iter().filter(|&&p| p > previous_id && name.is_none()) {
        println!("{id:>6}  (in progress: see `stagehand status`)");
    }
    Ok(())
}

/// The note printed where ids `from..=to` are missing from the history.
fn gap_note(from: u64, to: u64, pending: &[u64]) -> String {
    let ids = if from == to { format!("id {from}") } else { format!("ids {from}-{to}") };
    if (from..=to).all(|i| pending.contains(&i)) {
        return format!("{:>6}  ({ids}: in progress, see `stagehand status`)", "");
    }
    format!(
        "{:>6}  ({ids}: attempts refused or failed before their first journal record; nothing was changed, so nothing was recorded)",
        ""
    )
}

/// The source each version was installed from, by (package, digest): the
/// installed versions, the kept ones, and every version a change replaced.
fn known_sources<'a>(
    history: &'a [HistoryEntry],
    installed: &'a [PackageRecord],
) -> BTreeMap<(&'a str, &'a str), String> {
    let mut out = BTreeMap::new();
    for e in history {
        for c in &e.changes {
            if let Some(v) = &c.old {
                out.insert((c.package.as_str(), v.manifest_digest.as_str()), v.source.clone());
            }
        }
    }
    for p in installed {
        out.insert((p.name.as_str(), p.manifest_digest.as_str()), p.source.clone());
        for v in &p.previous {
            out.insert((p.name.as_str(), v.manifest_digest.as_str()), v.source.clone());
        }
    }
    out
}

/// The tag of a source: `v1` for `oci-layout:examples/demo:v1` or
/// `ghcr.io/org/demo:v1`; none for one named by digest, or an adopted capture.
pub(super) fn tag_of(source: &str) -> Option<&str> {
    if source.contains('@') || source.starts_with("adopted:") {
        return None;
    }
    let path = source.strip_prefix("oci-layout:").unwrap_or(source);
    let last = path.rsplit('/').next()?;
    last.rsplit_once(':').map(|(_, tag)| tag).filter(|t| !t.is_empty())
}

/// Unix seconds as local time, `2026-12-05 13:02:11`.
pub(super) fn local_time(secs: u64) -> String {
    let t = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: `tm` is a plain C struct (all-zero is valid), and
    // localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{secs}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_sources() {
        assert_eq!(tag_of("oci-layout:/x/examples/demo:v1"), Some("v1"));
        assert_eq!(tag_of("oci-layout:examples/demo"), None);
        assert_eq!(tag_of("oci-layout:demo"), None);
        assert_eq!(tag_of("127.0.0.1:5000/demo:v2"), Some("v2"));
        assert_eq!(tag_of("ghcr.io/org/demo@sha256:abcd"), None);
        assert_eq!(tag_of("adopted:/srv/x"), None);
    }

    #[test]
    fn gap_notes_name_the_ids() {
        assert!(gap_note(3, 4, &[]).contains("ids 3-4: attempts refused"));
        assert!(gap_note(3, 3, &[3]).contains("id 3: in progress"));
    }
}
