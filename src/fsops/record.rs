//! Test-only recording of every filesystem mutation and barrier, for the
//! simulated power-loss checker (ALICE/CrashMonkey style).
//!
//! With `STAGEHAND_RECORD_OPS=DIR`, each successful mutation appends one JSON
//! line to `DIR/ops.jsonl` (`write_file` carries its bytes as hex), each
//! fsync appends a barrier line, and each journal flush, once our fsyncs of sled's files and
//! directories are done, appends a `journal_flush` line after copying the
//! journal directory to `DIR/journal-<n>` (the durable journal at that
//! instant: of sled's blob files, `blobs/<lsn>`, the copy holds only those
//! this process fsynced with an fsync of `blobs/` after it, so a blob file
//! whose fsync was skipped, or that sled wrote after our last fsyncs, is not
//! in it). A checker replays
//! prefixes of the log onto a copy of the starting tree, dropping what power
//! loss may drop, and runs recovery on each result.
//!
//! `STAGEHAND_SKIP_FSYNC=POINT[:N]` skips the Nth fsync passing kill point
//! POINT (`POINT:*`: every one), so a test can prove the checker notices a
//! missing barrier; `P1:*+P2:*` skips at both points, each counted apart.
//! The journal's copy is taken after our own fsyncs of sled's files, and
//! not at all across a skipped one: sled's `flush()` alone counts for
//! nothing.
//! Neither variable has any effect when unset.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub const ENV_RECORD: &str = "STAGEHAND_RECORD_OPS";
pub const ENV_SKIP_FSYNC: &str = "STAGEHAND_SKIP_FSYNC";

struct Recorder {
    dir: PathBuf,
    file: std::fs::File,
    snapshots: u64,
    /// Blob files (`.../blobs/<lsn>`) fsynced, their directory not yet since.
    blobs_synced: HashSet<PathBuf>,
    /// Blob files fsynced and then their directory: durable.
    blobs_durable: HashSet<PathBuf>,
}

fn recorder() -> Option<&'static Mutex<Recorder>> {
    static R: OnceLock<Option<Mutex<Recorder>>> = OnceLock::new();
    R.get_or_init(|| {
        let dir = PathBuf::from(std::env::var_os(ENV_RECORD)?);
        std::fs::create_dir_all(&dir).ok()?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("ops.jsonl")).ok()?;
        Some(Mutex::new(Recorder {
            dir,
            file,
            snapshots: 0,
            blobs_synced: HashSet::new(),
            blobs_durable: HashSet::new(),
        }))
    })
    .as_ref()
}

/// True when recording is on (callers skip building log lines otherwise).
pub fn enabled() -> bool {
    recorder().is_some()
}

/// Appends one op line.
pub fn log(line: serde_json::Value) {
    if let Some(r) = recorder() {
        let mut r = match r.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = writeln!(r.file, "{line}");
        let path = line["path"].as_str().map(PathBuf::from);
        match (line["op"].as_str(), path) {
            (Some("fsync"), Some(p)) if p.parent().is_some_and(|d| d.ends_with("blobs")) => {
                r.blobs_synced.insert(p);
            }
            (Some("fsync_dir"), Some(d)) if d.ends_with("blobs") => {
                let now: Vec<PathBuf> =
                    r.blobs_synced.iter().filter(|p| p.parent() == Some(d.as_path())).cloned().collect();
                for p in now {
                    r.blobs_synced.remove(&p);
                    r.blobs_durable.insert(p);
                }
            }
            _ => {}
        }
    }
}

/// Copies the tree `from` to `to`, leaving out every file under a `blobs`
/// directory that is not in `durable_blobs`.
fn copy_dir(from: &Path, to: &Path, durable_blobs: &HashSet<PathBuf>) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let in_blobs = from.ends_with("blobs");
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t, durable_blobs)?;
        } else if !in_blobs || durable_blobs.contains(&e.path()) {
            std::fs::copy(e.path(), t)?;
        }
    }
    Ok(())
}

/// After a journal flush: snapshot the journal directory and log it.
pub fn journal_flushed(journal_dir: &Path, what: &str) {
    if let Some(r) = recorder() {
        let mut r = match r.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        r.snapshots += 1;
        let n = r.snapshots;
        let snap = r.dir.join(format!("journal-{n}"));
        let _ = copy_dir(journal_dir, &snap, &r.blobs_durable);
        let _ = writeln!(r.file, "{}", serde_json::json!({"op": "journal_flush", "what": what, "snapshot": n}));
    }
}

static SKIPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many fsyncs [`skip_fsync`] has skipped so far in this process: the
/// journal takes no durable snapshot across a skipped fsync of its own.
pub fn skipped_fsyncs() -> u64 {
    SKIPPED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether the fsync at kill point `point` (its `count`th hit) is to be
/// skipped. `POINT:*` skips every hit of POINT; `A+B` joins specs.
pub fn skip_fsync(point: &str) -> bool {
    type Spec = Vec<(String, Option<u64>)>;
    static SPEC: OnceLock<Spec> = OnceLock::new();
    static COUNTS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let spec = SPEC.get_or_init(|| {
        let Ok(s) = std::env::var(ENV_SKIP_FSYNC) else { return Vec::new() };
        s.split('+')
            .filter_map(|one| match one.rsplit_once(':') {
                Some((p, "*")) => Some((p.to_string(), None)),
                Some((p, n)) => Some((p.to_string(), Some(n.parse().ok()?))),
                None => Some((one.to_string(), Some(1))),
            })
            .collect()
    });
    let Some(i) = spec.iter().position(|(p, _)| p == point) else { return false };
    let mut counts = match COUNTS.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    };
    if counts.len() < spec.len() {
        counts.resize(spec.len(), 0);
    }
    counts[i] += 1;
    let skip = spec[i].1.is_none_or(|n| counts[i] == n);
    if skip {
        SKIPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    skip
}
