//! Simulated power loss, ALICE/CrashMonkey style (Pillai et al. OSDI'14,
//! Mohan et al. OSDI'18).
//!
//! Each scenario (install-fresh, upgrade v1→v2, uninstall), in both sync
//! modes (the default one `syncfs` after staging, and `STAGEHAND_SYNC=fsync`,
//! per file and directory), runs once with `STAGEHAND_RECORD_OPS`, which logs
//! every filesystem mutation, every fsync/syncfs barrier and a copy of the
//! durable journal after each journal flush. The checker replays the log onto
//! an in-memory inode model of the sandbox (DEST and the state dir's blob
//! cache; the journal itself is sled's and comes from the snapshots) and,
//! for every prefix of the log, builds the states that power loss at that
//! instant could leave on disk:
//!
//! - a directory-entry change (create, mkdir, symlink, link, rename,
//!   exchange, remove) is durable once every directory it touched was
//!   fsynced after it, or a syncfs came after it; until then it may be undone. Considered: all volatile
//!   changes kept, all dropped, each one dropped alone, every in-order prefix
//!   of them kept (ext4 commits metadata in order), and each volatile remove
//!   of a directory as "children gone, directory still there";
//! - a file's data is durable up to its length at its last fsync (or
//!   syncfs); what was written since may be lost or half lost (all such files
//!   at once, or each alone);
//! - the journal is the copy taken at the last journal flush in the prefix,
//!   taken only once our own fsyncs of sled's files and directories are
//!   done: sled's `flush()` (a `sync_file_range` on Linux, no fsync of its
//!   blob files or directories) counts for nothing.
//!
//! Each distinct state is materialized at the SAME absolute paths (the
//! journal records absolute paths), the identities (inode numbers) in the
//! journal's pending transaction records are remapped to the materialized
//! objects (they are what recovery compares), `stagehand status --json`
//! recovers, and the invariants are checked with this file's own hashing:
//! DEST is exactly the old or the new world, no `.stagehand-` name is left,
//! nothing is pending, `list --json` agrees with the disk; once the commit
//! record is durable the outcome must be the new world (the commit point
//! means roll forward), and after the whole log (success reported) too;
//! every blob under `STATE/blobs/sha256/` hashes to its name (the cache's
//! own rule).
//!
//! A second test removes one fsync with `STAGEHAND_SKIP_FSYNC` and asserts
//! the checker reports violations: proof that the checker can see a missing
//! barrier at all. One of its cases skips every fsync of sled's files (what
//! stagehand did before it issued them: it trusted sled's `flush()`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::proof::*;
use stagehand::journal::codec::{self, RecordKind};
use stagehand::txn::{BirthTime, Identity, TxnRecord};

// ---------------------------------------------------------------------------
// The recorded log
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    WriteFile { path: String, mode: u32, data: Vec<u8> },
    Mkdir { path: String, mode: u32 },
    Chmod { path: String, mode: u32 },
    Symlink { path: String, target: String },
    Link { path: String, original: String },
    Rename { from: String, to: String },
    Exchange { a: String, b: String },
    RemoveTree { path: String },
    Fsync { path: String },
    FsyncDir { path: String },
    Syncfs { path: String },
    CreatePartial { path: String },
    Append { path: String, bytes: u64 },
    Truncate { path: String },
    JournalFlush { what: String, snapshot: u64 },
}

impl Op {
    fn short(&self) -> String {
        match self {
            Op::WriteFile { path, data, .. } => format!("write_file {path} ({}B)", data.len()),
            Op::Mkdir { path, .. } => format!("mkdir {path}"),
            Op::Chmod { path, mode } => format!("chmod {path} {mode:o}"),
            Op::Symlink { path, target } => format!("symlink {path} -> {target}"),
            Op::Link { path, original } => format!("link {path} = {original}"),
            Op::Rename { from, to } => format!("rename {from} -> {to}"),
            Op::Exchange { a, b } => format!("exchange {a} <-> {b}"),
            Op::RemoveTree { path } => format!("remove_tree {path}"),
            Op::Fsync { path } => format!("fsync {path}"),
            Op::FsyncDir { path } => format!("fsync_dir {path}"),
            Op::Syncfs { path } => format!("syncfs {path}"),
            Op::CreatePartial { path } => format!("create_partial {path}"),
            Op::Append { path, bytes } => format!("append {path} ({bytes}B)"),
            Op::Truncate { path } => format!("truncate {path}"),
            Op::JournalFlush { what, snapshot } => format!("journal_flush {what} #{snapshot}"),
        }
    }
}

fn parse_ops(path: &Path) -> Vec<Op> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        // The journal seal (STATE/journal.seal, rewritten by rename after
        // every finished txn) is outside the model: it is only ever behind
        // the journal, and a crash state without it is accepted by design.
        .filter(|l| !l.contains("journal.seal"))
        // sled's own files (STATE/journal/...: our fsyncs of them, the
        // leftovers we fix before opening) are outside the model too: the
        // journal is the copy taken after our fsyncs of them completed.
        .filter(|l| !l.contains("/state/journal/") && !l.contains("/state/journal\""))
        // The probe's scratch copy of the journal (opened instead of the
        // journal after an unclean stop, removed before the open returns)
        // and the clean-close mark (no fsync by design: losing it only
        // costs the next open a copy) are outside the model too.
        .filter(|l| !l.contains("/state/journal.probe") && !l.contains("journal.clean"))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad op line {l}: {e}"));
            let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("op line without {k}: {l}")).to_string();
            let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("op line without {k}: {l}"));
            match v["op"].as_str().unwrap_or("") {
                "write_file" => Op::WriteFile {
                    path: s("path"),
                    mode: n("mode") as u32,
                    data: hex::decode(s("data")).expect("hex data"),
                },
                "mkdir" => Op::Mkdir { path: s("path"), mode: n("mode") as u32 },
                "chmod" => Op::Chmod { path: s("path"), mode: n("mode") as u32 },
                "symlink" => Op::Symlink { path: s("path"), target: s("target") },
                "link" => Op::Link { path: s("path"), original: s("original") },
                "rename" => Op::Rename { from: s("from"), to: s("to") },
                "exchange" => Op::Exchange { a: s("a"), b: s("b") },
                "remove_tree" => Op::RemoveTree { path: s("path") },
                "fsync" => Op::Fsync { path: s("path") },
                "fsync_dir" => Op::FsyncDir { path: s("path") },
                "syncfs" => Op::Syncfs { path: s("path") },
                "create_partial" => Op::CreatePartial { path: s("path") },
                "append" => Op::Append { path: s("path"), bytes: n("bytes") },
                "truncate" => Op::Truncate { path: s("path") },
                "journal_flush" => Op::JournalFlush { what: s("what"), snapshot: n("snapshot") },
                other => panic!("unknown op {other:?} in {l}"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The inode model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    /// A regular file's bytes: its final (longest) content; how much of it
    /// exists at a given instant is tracked by [`Event::Len`].
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Inode {
    kind: Kind,
    mode: u32,
}

type Ino = usize;
type Entries = BTreeMap<String, Ino>;

/// One directory-entry change of one op: in directory `dir`, `name` now
/// names `to` (or nothing).
#[derive(Debug, Clone)]
struct Edit {
    dir: Ino,
    name: String,
    to: Option<Ino>,
}

#[derive(Debug, Clone)]
enum Event {
    /// A directory-entry op: its edits, applied as one unit. A created file
    /// comes with its length and how much of it is durable at once.
    Change {
        edits: Vec<Edit>,
        removed_dir: Option<Ino>,
        created: Option<(Ino, usize, usize)>,
    },
    /// A file's data now has this length (append, truncate).
    Len(Ino, usize),
    SyncData(Ino),
    SyncDir(Ino),
    /// syncfs: everything before it is durable.
    SyncFs,
    Chmod(Ino, u32),
    Flush {
        what: String,
        snapshot: u64,
    },
}

/// The model of the sandbox: every inode ever seen (never freed, so ids
/// are stable), the directory entries as of the start, one event per op.
struct Replay {
    root: PathBuf,
    inodes: Vec<Inode>,
    initial: Vec<Entries>,
    events: Vec<Event>,
    ops: Vec<Op>,
}

const ROOT: Ino = 0;

fn rel_components(root: &Path, path: &str) -> Vec<String> {
    let p = Path::new(path);
    let rel =
        p.strip_prefix(root).unwrap_or_else(|_| panic!("op path {path} is outside the sandbox {}", root.display()));
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()
}

fn resolve(entries: &[Entries], root: &Path, path: &str) -> Option<Ino> {
    let mut cur = ROOT;
    for c in rel_components(root, path) {
        cur = *entries.get(cur)?.get(&c)?;
    }
    Some(cur)
}

fn parent_and_name(entries: &[Entries], root: &Path, path: &str) -> (Ino, String) {
    let mut comps = rel_components(root, path);
    let name = comps.pop().unwrap_or_else(|| panic!("op on the sandbox root itself: {path}"));
    let mut cur = ROOT;
    for c in comps {
        cur = *entries[cur].get(&c).unwrap_or_else(|| panic!("replay: parent of {path} missing at {c}"));
    }
    (cur, name)
}

/// Paths under the sandbox that are not modelled: sled's own files (the
/// journal comes from the snapshots) and the lock file.
fn unmodelled(rel: &Path) -> bool {
    rel == Path::new("state/journal")
        || rel == Path::new("state/lock")
        || rel == Path::new("state/journal.seal")
        || rel == Path::new("state/.journal.seal.stagehand-tmp")
        || rel == Path::new("state/journal.clean")
        || rel == Path::new("state/.journal.clean.stagehand-tmp")
        || rel == Path::new("state/journal.probe")
}

/// Loads the real tree at `root` into a fresh model; returns the model and
/// the real inode number of each model inode.
fn load_tree(root: &Path) -> (Vec<Inode>, Vec<Entries>, HashMap<u64, Ino>) {
    let inodes = vec![Inode { kind: Kind::Dir, mode: 0o755 }];
    let entries = vec![Entries::new()];
    let mut real = HashMap::new();
    real.insert(fs::symlink_metadata(root).unwrap().ino(), ROOT);
    struct Ctx<'a> {
        top: &'a Path,
        inodes: Vec<Inode>,
        entries: Vec<Entries>,
        real: HashMap<u64, Ino>,
    }
    fn rec(c: &mut Ctx, dir: &Path, me: Ino) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            if unmodelled(p.strip_prefix(c.top).unwrap()) {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let name = n.to_string_lossy().into_owned();
            if let Some(&existing) = c.real.get(&m.ino()) {
                c.entries[me].insert(name, existing);
                continue;
            }
            let kind = if m.is_dir() {
                Kind::Dir
            } else if m.file_type().is_symlink() {
                Kind::Symlink(fs::read_link(&p).unwrap().to_string_lossy().into_owned())
            } else {
                Kind::File(fs::read(&p).unwrap())
            };
            let id = c.inodes.len();
            c.inodes.push(Inode { kind, mode: m.permissions().mode() & 0o7777 });
            c.entries.push(Entries::new());
            c.real.insert(m.ino(), id);
            c.entries[me].insert(name, id);
            if m.is_dir() {
                rec(c, &p, id);
            }
        }
    }
    let mut c = Ctx { top: root, inodes, entries, real };
    rec(&mut c, root, ROOT);
    (c.inodes, c.entries, c.real)
}

impl Replay {
    fn new(root: &Path, initial_inodes: Vec<Inode>, initial: Vec<Entries>, ops: Vec<Op>) -> Replay {
        let mut inodes = initial_inodes;
        let mut cur = initial.clone();
        let mut events = Vec::new();
        let mut len: HashMap<Ino, usize> = HashMap::new();
        let new_inode = |inodes: &mut Vec<Inode>, cur: &mut Vec<Entries>, kind: Kind, mode: u32| {
            inodes.push(Inode { kind, mode });
            cur.push(Entries::new());
            inodes.len() - 1
        };
        let create = |d: Ino, n: String, id: Ino, created: Option<(Ino, usize, usize)>| Event::Change {
            edits: vec![Edit { dir: d, name: n, to: Some(id) }],
            removed_dir: None,
            created,
        };
        for op in &ops {
            let ev = match op {
                Op::WriteFile { path, mode, data } => {
                    let (d, n) = parent_and_name(&cur, root, path);
                    assert!(!cur[d].contains_key(&n), "replay: write_file over an existing {path}");
                    let id = new_inode(&mut inodes, &mut cur, Kind::File(data.clone()), *mode);
                    create(d, n, id, Some((id, data.len(), 0)))
                }
                Op::CreatePartial { path } => match resolve(&cur, root, path) {
                    // An existing file is truncated in place.
                    Some(id) => {
                        len.insert(id, 0);
                        Event::Len(id, 0)
                    }
                    None => {
                        let (d, n) = parent_and_name(&cur, root, path);
                        let id = new_inode(&mut inodes, &mut cur, Kind::File(Vec::new()), 0o644);
                        len.insert(id, 0);
                        create(d, n, id, Some((id, 0, 0)))
                    }
                },
                Op::Append { path, bytes } => {
                    let id = resolve(&cur, root, path).expect("appended file exists");
                    let l = len.entry(id).or_insert(0);
                    *l += *bytes as usize;
                    Event::Len(id, *l)
                }
                Op::Truncate { path } => {
                    let id = resolve(&cur, root, path).expect("truncated file exists");
                    len.insert(id, 0);
                    Event::Len(id, 0)
                }
                Op::Mkdir { path, mode } => {
                    let (d, n) = parent_and_name(&cur, root, path);
                    let id = new_inode(&mut inodes, &mut cur, Kind::Dir, *mode);
                    create(d, n, id, None)
                }
                Op::Symlink { path, target } => {
                    let (d, n) = parent_and_name(&cur, root, path);
                    let id = new_inode(&mut inodes, &mut cur, Kind::Symlink(target.clone()), 0o777);
                    create(d, n, id, None)
                }
                Op::Link { path, original } => {
                    let (d, n) = parent_and_name(&cur, root, path);
                    if Path::new(original).starts_with(root) {
                        let o = resolve(&cur, root, original).expect("link original exists");
                        create(d, n, o, None)
                    } else {
                        // A hard link to a file outside the sandbox (an OCI
                        // layout's blob imported into the cache): its bytes
                        // were durable before the operation began.
                        let data = fs::read(original).unwrap_or_else(|e| panic!("read {original}: {e}"));
                        let mode = fs::metadata(original).unwrap().permissions().mode() & 0o7777;
                        let l = data.len();
                        let id = new_inode(&mut inodes, &mut cur, Kind::File(data), mode);
                        create(d, n, id, Some((id, l, l)))
                    }
                }
                Op::Rename { from, to } => {
                    let x = resolve(&cur, root, from).expect("rename source exists");
                    let (fd, fname) = parent_and_name(&cur, root, from);
                    let (td, tname) = parent_and_name(&cur, root, to);
                    Event::Change {
                        edits: vec![
                            Edit { dir: fd, name: fname, to: None },
                            Edit { dir: td, name: tname, to: Some(x) },
                        ],
                        removed_dir: None,
                        created: None,
                    }
                }
                Op::Exchange { a, b } => {
                    let x = resolve(&cur, root, a).expect("exchange a exists");
                    let y = resolve(&cur, root, b).expect("exchange b exists");
                    let (ad, an) = parent_and_name(&cur, root, a);
                    let (bd, bn) = parent_and_name(&cur, root, b);
                    Event::Change {
                        edits: vec![Edit { dir: ad, name: an, to: Some(y) }, Edit { dir: bd, name: bn, to: Some(x) }],
                        removed_dir: None,
                        created: None,
                    }
                }
                Op::RemoveTree { path } => {
                    let x = resolve(&cur, root, path).expect("removed path exists");
                    let (d, n) = parent_and_name(&cur, root, path);
                    let removed_dir = matches!(inodes[x].kind, Kind::Dir).then_some(x);
                    Event::Change { edits: vec![Edit { dir: d, name: n, to: None }], removed_dir, created: None }
                }
                Op::Chmod { path, mode } => Event::Chmod(resolve(&cur, root, path).expect("chmod target"), *mode),
                Op::Fsync { path } => Event::SyncData(resolve(&cur, root, path).expect("fsynced file exists")),
                Op::FsyncDir { path } => Event::SyncDir(resolve(&cur, root, path).expect("fsynced dir exists")),
                Op::Syncfs { .. } => Event::SyncFs,
                Op::JournalFlush { what, snapshot } => Event::Flush { what: what.clone(), snapshot: *snapshot },
            };
            if let Event::Change { edits, .. } = &ev {
                for e in edits {
                    match e.to {
                        Some(t) => cur[e.dir].insert(e.name.clone(), t),
                        None => cur[e.dir].remove(&e.name),
                    };
                }
            }
            if let Event::Chmod(i, m) = ev {
                inodes[i].mode = m;
            }
            events.push(ev);
        }
        let mut rp = Replay { root: root.to_path_buf(), inodes, initial, events, ops };
        rp.fill_partial_contents(&cur);
        rp
    }

    /// Appended data is logged by length only: the bytes are those the file
    /// holds at the end of the run, or the blob its name is the digest of
    /// (from the example layouts), or zeros.
    fn fill_partial_contents(&mut self, final_entries: &[Entries]) {
        let mut max_len: HashMap<Ino, usize> = HashMap::new();
        let mut names: HashMap<Ino, String> = HashMap::new();
        for (ev, op) in self.events.iter().zip(&self.ops) {
            if let (
                Event::Len(id, l) | Event::Change { created: Some((id, l, _)), .. },
                Op::CreatePartial { path } | Op::Append { path, .. } | Op::Truncate { path },
            ) = (ev, op)
            {
                let m = max_len.entry(*id).or_insert(0);
                *m = (*m).max(*l);
                names.insert(*id, Path::new(path).file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        let mut at_end: HashMap<Ino, PathBuf> = HashMap::new();
        fn walk(e: &[Entries], d: Ino, p: &Path, out: &mut HashMap<Ino, PathBuf>) {
            for (n, &i) in &e[d] {
                out.entry(i).or_insert_with(|| p.join(n));
                walk(e, i, &p.join(n), out);
            }
        }
        walk(final_entries, ROOT, &self.root, &mut at_end);
        for (id, want) in max_len {
            let from_end = at_end.get(&id).and_then(|p| fs::read(p).ok()).filter(|b| b.len() >= want);
            let from_examples = || {
                let name = names.get(&id)?;
                fs::read_dir(repo_root().join("examples"))
                    .ok()?
                    .filter_map(|e| fs::read(e.ok()?.path().join("blobs/sha256").join(name)).ok())
                    .find(|b| b.len() >= want)
            };
            let bytes = from_end.or_else(from_examples).unwrap_or_else(|| vec![0; want]);
            self.inodes[id].kind = Kind::File(bytes);
        }
    }

    /// Whether change `i` is durable at prefix length `k`: a syncfs came
    /// after it, or every directory it edited was fsynced after it.
    fn durable(&self, i: usize, k: usize) -> bool {
        let Event::Change { edits, .. } = &self.events[i] else { return true };
        let later = &self.events[i + 1..k];
        later.iter().any(|ev| matches!(ev, Event::SyncFs))
            || edits.iter().all(|e| later.iter().any(|ev| matches!(ev, Event::SyncDir(d) if *d == e.dir)))
    }

    /// Each file's (current length, durable length) after the first `k` events.
    fn lengths(&self, k: usize) -> (Vec<usize>, Vec<usize>) {
        let n = self.inodes.len();
        let mut len = vec![0usize; n];
        let mut dur = vec![0usize; n];
        for (i, node) in self.inodes.iter().enumerate().take(self.initial.len()) {
            if let Kind::File(b) = &node.kind {
                len[i] = b.len();
                dur[i] = b.len();
            }
        }
        for ev in &self.events[..k] {
            match ev {
                Event::Change { created: Some((id, l, d)), .. } => {
                    len[*id] = *l;
                    dur[*id] = *d;
                }
                Event::Len(id, l) => {
                    len[*id] = *l;
                    dur[*id] = dur[*id].min(*l);
                }
                Event::SyncData(id) => dur[*id] = len[*id],
                Event::SyncFs => dur.clone_from(&len),
                _ => {}
            }
        }
        (len, dur)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Data {
    /// Everything written so far.
    Full,
    /// Only what was durable (fsynced).
    Lost,
    /// Half of what was not durable survived.
    Half,
}

/// One candidate crash state: which changes of the prefix are dropped,
/// which files lose data, which removed directories are half-removed.
struct CrashSpec {
    label: String,
    dropped: BTreeSet<usize>,
    data: BTreeMap<Ino, Data>,
    emptied_dirs: BTreeSet<Ino>,
}

/// A crash state's sandbox as a list of (relative path, inode, bytes of a
/// file) in depth-first order, parents first.
type Layout = Vec<(String, Ino, usize)>;

fn build_layout(rp: &Replay, k: usize, spec: &CrashSpec) -> Option<Layout> {
    let mut entries = rp.initial.clone();
    entries.resize(rp.inodes.len(), Entries::new());
    for (i, ev) in rp.events[..k].iter().enumerate() {
        if let Event::Change { edits, .. } = ev {
            if spec.dropped.contains(&i) {
                continue;
            }
            for e in edits {
                match e.to {
                    Some(t) => entries[e.dir].insert(e.name.clone(), t),
                    None => entries[e.dir].remove(&e.name),
                };
            }
        }
    }
    for d in &spec.emptied_dirs {
        entries[*d].clear();
    }
    let (len, dur) = rp.lengths(k);
    let size = |ino: Ino| match spec.data.get(&ino).copied().unwrap_or(Data::Full) {
        Data::Full => len[ino],
        Data::Lost => dur[ino],
        Data::Half => dur[ino] + (len[ino].saturating_sub(dur[ino])) / 2,
    };
    let mut out = Vec::new();
    let mut seen_dirs = HashSet::from([ROOT]);
    #[allow(clippy::too_many_arguments)]
    fn walk(
        rp: &Replay,
        entries: &[Entries],
        dir: Ino,
        prefix: &str,
        size: &dyn Fn(Ino) -> usize,
        seen: &mut HashSet<Ino>,
        out: &mut Layout,
    ) -> bool {
        for (name, &ino) in &entries[dir] {
            let rel = format!("{prefix}{name}");
            let is_dir = matches!(rp.inodes[ino].kind, Kind::Dir);
            out.push((rel.clone(), ino, if is_dir { 0 } else { size(ino) }));
            // A directory reachable twice cannot exist on a real filesystem.
            if is_dir && (!seen.insert(ino) || !walk(rp, entries, ino, &format!("{rel}/"), size, seen, out)) {
                return false;
            }
        }
        true
    }
    walk(rp, &entries, ROOT, "", &size, &mut seen_dirs, &mut out).then_some(out)
}

/// Writes a layout under the sandbox root (whose top-level entries are
/// replaced); returns each inode's first materialized path.
fn materialize(rp: &Replay, layout: &Layout) -> HashMap<Ino, PathBuf> {
    for e in fs::read_dir(&rp.root).unwrap() {
        remove_if_exists(&e.unwrap().path());
    }
    let mut first: HashMap<Ino, PathBuf> = HashMap::new();
    first.insert(ROOT, rp.root.clone());
    let mut dirs = Vec::new();
    for (rel, ino, n) in layout {
        let p = rp.root.join(rel);
        if let Some(orig) = first.get(ino) {
            fs::hard_link(orig, &p).unwrap();
            continue;
        }
        let node = &rp.inodes[*ino];
        match &node.kind {
            Kind::Dir => {
                fs::create_dir(&p).unwrap();
                dirs.push((p.clone(), node.mode));
            }
            Kind::File(bytes) => {
                fs::write(&p, &bytes[..(*n).min(bytes.len())]).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(node.mode)).unwrap();
            }
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
        }
        first.insert(*ino, p);
    }
    for (p, mode) in dirs.iter().rev() {
        fs::set_permissions(p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    first
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Scenario {
    InstallFresh,
    Upgrade,
    Uninstall,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::InstallFresh => "install-fresh",
            Scenario::Upgrade => "upgrade",
            Scenario::Uninstall => "uninstall",
        }
    }
    fn before(self) -> Option<&'static str> {
        match self {
            Scenario::InstallFresh => None,
            _ => Some("v1"),
        }
    }
    fn after(self) -> Option<&'static str> {
        match self {
            Scenario::InstallFresh => Some("v1"),
            Scenario::Upgrade => Some("v2"),
            Scenario::Uninstall => None,
        }
    }
}

/// `STAGEHAND_SYNC`: the default (one syncfs after staging) or `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    Syncfs,
    PerFile,
}

impl Sync {
    fn env(self) -> &'static str {
        match self {
            Sync::Syncfs => "syncfs",
            Sync::PerFile => "fsync",
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    ops: usize,
    prefixes: usize,
    candidates: usize,
    impossible: usize,
    checked: usize,
    ended_old: usize,
    ended_new: usize,
    violations: Vec<String>,
}

struct Checker {
    sc: Scenario,
    sync: Sync,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dest: PathBuf,
    state: PathBuf,
    rec_dir: PathBuf,
    pristine_state: PathBuf,
    old: Tree,
    new: Tree,
    replay: Replay,
    /// Real inode number in the recording run → model inode.
    rec_ino: HashMap<u64, Ino>,
}

fn setup(sc: Scenario, sync: Sync, skip_fsync: Option<&str>) -> Checker {
    let tmp = tempdir();
    let base = fs::canonicalize(tmp.path()).unwrap();
    let root = base.join("sb");
    let (dest, state) = (root.join("dest"), root.join("state"));
    fs::create_dir_all(&dest).unwrap();
    let sync_env = [("STAGEHAND_SYNC", OsStr::new(sync.env()))];
    if sc.before().is_some() {
        // Files in shared directories belong to nobody: they must survive.
        fs::create_dir_all(dest.join("lib")).unwrap();
        fs::create_dir_all(dest.join("share/extension")).unwrap();
        fs::write(dest.join("lib/unrelated.so"), b"not stagehand's\n").unwrap();
        fs::write(dest.join("share/extension/plpgsql.control"), b"# unrelated\n").unwrap();
    }
    run_bin(&state, &root, &["repair"], &sync_env).ok();
    if let Some(v) = sc.before() {
        run_bin(&state, &root, &demo_install_args(&dest, &demo_source(v), None), &sync_env).ok();
    }
    let old = hash_tree(&dest);
    let pristine_state = base.join("pristine-state");
    copy_tree(&state, &pristine_state);
    let (inodes, initial, rec_ino_initial) = load_tree(&root);

    let rec_dir = base.join("record");
    let args = match sc.after() {
        Some(v) => demo_install_args(&dest, &demo_source(v), None),
        None => vec!["uninstall".into(), "demo".into()],
    };
    let mut env: Vec<(&str, &OsStr)> = vec![("STAGEHAND_RECORD_OPS", rec_dir.as_os_str()), sync_env[0]];
    if let Some(s) = skip_fsync {
        env.push(("STAGEHAND_SKIP_FSYNC", OsStr::new(s)));
    }
    run_bin(&state, &root, &args, &env).ok();
    let new = hash_tree(&dest);
    assert_eq!(
        normalize(&new),
        normalize(&demo_world(&old, sc.after())),
        "[{}] the recorded run did not produce the expected world",
        sc.name()
    );
    let ops = parse_ops(&rec_dir.join("ops.jsonl"));
    let replay = Replay::new(&root, inodes, initial, ops);

    // The model's final volatile state must be what the run left on disk:
    // this validates the replay itself.
    let spec = CrashSpec {
        label: "final".into(),
        dropped: BTreeSet::new(),
        data: BTreeMap::new(),
        emptied_dirs: BTreeSet::new(),
    };
    let layout = build_layout(&replay, replay.events.len(), &spec).expect("final layout");
    let mut model_tree = Tree::new();
    let mut rec_ino = rec_ino_initial;
    for (rel, ino, n) in &layout {
        let p = root.join(rel);
        let real = fs::symlink_metadata(&p).unwrap().ino();
        if let Some(prev) = rec_ino.insert(real, *ino) {
            assert_eq!(prev, *ino, "inode number {real} reused within the recorded run; cannot remap");
        }
        let Some(rel) = rel.strip_prefix("dest/") else { continue };
        model_tree.insert(
            rel.to_string(),
            match &replay.inodes[*ino].kind {
                Kind::Dir => Node::Dir,
                Kind::File(b) => Node::File {
                    sha256: sha256_hex(&b[..*n]),
                    exec: replay.inodes[*ino].mode & 0o111 != 0,
                    len: *n as u64,
                },
                Kind::Symlink(t) => Node::Symlink { target: t.clone() },
            },
        );
    }
    assert_eq!(model_tree, new, "[{}] the replayed op log does not reproduce the recorded run's DEST", sc.name());
    Checker { sc, sync, _tmp: tmp, root, dest, state, rec_dir, pristine_state, old, new, replay, rec_ino }
}

impl Checker {
    fn specs(&self, k: usize) -> Vec<CrashSpec> {
        let rp = &self.replay;
        let volatile: Vec<usize> =
            (0..k).filter(|&i| matches!(rp.events[i], Event::Change { .. }) && !rp.durable(i, k)).collect();
        // Files with data written but not yet durable at k.
        let (len, dur) = rp.lengths(k);
        let unsynced: Vec<Ino> = (0..rp.inodes.len()).filter(|&i| dur[i] < len[i]).collect();
        let all = |d: Data| unsynced.iter().map(|&i| (i, d)).collect::<BTreeMap<_, _>>();
        let spec = |label: String, dropped: BTreeSet<usize>, data: BTreeMap<Ino, Data>| CrashSpec {
            label,
            dropped,
            data,
            emptied_dirs: BTreeSet::new(),
        };
        let none = BTreeSet::new;
        let vset: BTreeSet<usize> = volatile.iter().copied().collect();
        let mut out = vec![
            spec("all persisted".into(), none(), BTreeMap::new()),
            spec("unsynced data lost".into(), none(), all(Data::Lost)),
            spec("unsynced data half".into(), none(), all(Data::Half)),
            spec("no volatile entry persisted".into(), vset.clone(), BTreeMap::new()),
            spec("nothing volatile persisted".into(), vset.clone(), all(Data::Lost)),
        ];
        for &v in &volatile {
            out.push(spec(format!("dropped #{v} ({})", rp.ops[v].short()), BTreeSet::from([v]), BTreeMap::new()));
            if let Event::Change { removed_dir: Some(d), .. } = &rp.events[v] {
                let mut s =
                    spec(format!("half-removed #{v} ({})", rp.ops[v].short()), BTreeSet::from([v]), BTreeMap::new());
                s.emptied_dirs.insert(*d);
                out.push(s);
            }
        }
        for j in 0..volatile.len() {
            let dropped: BTreeSet<usize> = volatile[j..].iter().copied().collect();
            out.push(spec(
                format!("in-order: first {j} of {} volatile kept", volatile.len()),
                dropped,
                BTreeMap::new(),
            ));
        }
        for &u in &unsynced {
            out.push(spec(format!("data of inode {u} lost"), none(), BTreeMap::from([(u, Data::Lost)])));
        }
        out
    }

    /// The last journal snapshot of the prefix, and whether the commit record is in it.
    fn journal_at(&self, k: usize) -> (Option<u64>, bool, Option<String>) {
        let mut snap = None;
        let mut committed = false;
        let mut what = None;
        for ev in &self.replay.events[..k] {
            if let Event::Flush { what: w, snapshot } = ev {
                snap = Some(*snapshot);
                committed |= w == "commit";
                what = Some(w.clone());
            }
        }
        (snap, committed, what)
    }

    /// Puts the unmodelled parts of STATE in place: the lock file, the seal,
    /// and the journal of snapshot `snap` (the pristine one if none) with its
    /// pending records' identities remapped to `new_ino`.
    fn materialize_state(&self, snap: Option<u64>, new_ino: &HashMap<Ino, (u64, Option<BirthTime>)>) {
        fs::create_dir_all(&self.state).unwrap();
        // The seal (rewritten after each finished txn, outside the model) is
        // the pristine one: the txn it names is in every snapshot's history.
        for name in ["lock", "journal", "journal.seal"] {
            replace_with_copy(&self.pristine_state.join(name), &self.state.join(name));
        }
        let Some(n) = snap else { return };
        let journal = self.state.join("journal");
        replace_with_copy(&self.rec_dir.join(format!("journal-{n}")), &journal);
        let db = sled::open(&journal).expect("open journal snapshot");
        let txns = db.open_tree("txns").unwrap();
        let mut unknown = 0u64;
        let mut remap = |id: &mut Identity| {
            match self.rec_ino.get(&id.ino).and_then(|m| new_ino.get(m)) {
                Some(&(n, btime)) => {
                    id.ino = n;
                    id.btime = btime;
                }
                None => {
                    // The object no longer exists anywhere: nothing may match it by inode.
                    unknown += 1;
                    id.ino = u64::MAX - unknown;
                }
            }
        };
        for kv in txns.iter() {
            let (k, v) = kv.unwrap();
            let mut rec: TxnRecord = codec::decode(RecordKind::Txn, &v).expect("snapshot txn record decodes");
            for t in rec.targets.iter_mut() {
                if let Some(o) = t.old.as_mut() {
                    remap(o);
                }
                if let Some(id) = t.new.as_mut().and_then(|n| n.identity.as_mut()) {
                    remap(id);
                }
            }
            txns.insert(k, codec::encode(RecordKind::Txn, &rec).unwrap()).unwrap();
        }
        db.flush().unwrap();
        drop(txns);
        drop(db);
        wait_sled_unlocked(&journal);
    }

    /// Recovers the materialized state and checks every invariant; returns
    /// the version DEST ended at, or the violation.
    fn recover_and_check(&self, committed: bool, complete: bool) -> Result<Option<&'static str>, String> {
        let env = [("STAGEHAND_SYNC", OsStr::new(self.sync.env()))];
        let status = run_bin(&self.state, &self.root, &["status", "--json"], &env);
        if !status.success() {
            return Err(format!("recovery (`status --json`) failed:\n{}", status.describe()));
        }
        let pending = pending_of(&status.try_json()?)?;
        if !pending.is_empty() {
            return Err(format!("still pending after recovery: {pending:?}"));
        }
        let left = leftovers_under(&self.dest);
        if !left.is_empty() {
            return Err(format!("leftovers after recovery: {left:?}"));
        }
        let world = hash_tree(&self.dest);
        let (b, a) = (self.sc.before(), self.sc.after());
        let ver = which_world(&world, &[(b, &self.old), (a, &self.new)])?;
        let listed = parse_list(&run_bin(&self.state, &self.root, &["list", "--json"], &env))?;
        registry_matches(listed.get("demo"), &self.dest, ver)?;
        // `verify` reads the file lists the registry names: they must be durable too.
        if ver.is_some() {
            let v = run_bin(&self.state, &self.root, &["verify", "demo"], &env);
            if !v.success() {
                return Err(format!("verify after recovery failed:\n{}", v.describe()));
            }
        }
        if let Some(other) = listed.keys().find(|n| *n != "demo") {
            return Err(format!("unexpected package {other} listed"));
        }
        // The blob cache's rule: whatever is under blobs/sha256/ hashes to its name.
        for (rel, node) in hash_tree(&self.state.join("blobs/sha256")) {
            if let Node::File { sha256, len, .. } = node {
                if sha256 != rel {
                    return Err(format!("the blob cache holds blobs/sha256/{rel} with other content ({len} bytes)"));
                }
            }
        }
        let is_new = ver == a && (a != b);
        if complete && !is_new {
            return Err(
                "the operation completed (success reported), yet the state after power loss is the old one".to_string()
            );
        }
        if committed && !is_new {
            return Err("the commit record was durable, yet recovery ended in the old world".to_string());
        }
        Ok(ver)
    }

    /// Checks every crash state; with `stop_at_first`, returns at the first violation.
    fn run(&self, stop_at_first: bool) -> Outcome {
        let rp = &self.replay;
        let n = rp.events.len();
        let mut out = Outcome { ops: n, prefixes: n + 1, ..Outcome::default() };
        let mut seen: HashSet<(Option<u64>, Layout)> = HashSet::new();
        // Hunting for one violation, start from the end: missing barriers
        // show after the commit point.
        let order: Vec<usize> = if stop_at_first { (0..=n).rev().collect() } else { (0..=n).collect() };
        for k in order {
            let (snap, committed, what) = self.journal_at(k);
            for spec in self.specs(k) {
                out.candidates += 1;
                let Some(layout) = build_layout(rp, k, &spec) else {
                    out.impossible += 1;
                    continue;
                };
                if !seen.insert((snap, layout.clone())) {
                    continue;
                }
                out.checked += 1;
                let first = materialize(rp, &layout);
                let new_ino: HashMap<Ino, (u64, Option<BirthTime>)> = first
                    .iter()
                    .map(|(i, p)| {
                        let m = fs::symlink_metadata(p).unwrap();
                        (*i, (m.ino(), stagehand::fsops::birth_time(&m)))
                    })
                    .collect();
                self.materialize_state(snap, &new_ino);
                match self.recover_and_check(committed, k == n) {
                    Ok(v) if v == self.sc.after() && self.sc.after() != self.sc.before() => out.ended_new += 1,
                    Ok(_) => out.ended_old += 1,
                    Err(e) => {
                        let last = if k == 0 { "(nothing)".to_string() } else { rp.ops[k - 1].short() };
                        out.violations.push(format!(
                            "[{} {}] prefix {k}/{n} (last op: {last}; journal at {}), state \"{}\": {e}",
                            self.sc.name(),
                            self.sync.env(),
                            what.as_deref().unwrap_or("start"),
                            spec.label
                        ));
                        if stop_at_first {
                            return out;
                        }
                    }
                }
            }
        }
        out
    }
}

fn check_scenario(sc: Scenario) {
    let mut total = 0;
    for sync in [Sync::Syncfs, Sync::PerFile] {
        let t0 = Instant::now();
        let c = setup(sc, sync, None);
        let o = c.run(false);
        println!(
            "power loss [{} {}]: {} ops logged, {} prefixes, {} candidate crash states ({} impossible), \
             {} distinct crash states checked (ended old {}, new {}), {} violations, {:.1}s",
            sc.name(),
            sync.env(),
            o.ops,
            o.prefixes,
            o.candidates,
            o.impossible,
            o.checked,
            o.ended_old,
            o.ended_new,
            o.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        for v in o.violations.iter().take(20) {
            println!("  VIOLATION {v}");
        }
        assert!(o.checked > 0 && o.ended_old > 0, "[{}] the checker checked too little: {o:?}", sc.name());
        if sc.after().is_some() {
            assert!(o.ended_new > 0, "[{}] no crash state ended in the new world", sc.name());
        }
        assert!(
            o.violations.is_empty(),
            "[{} {}] {} power-loss violations, first: {}",
            sc.name(),
            sync.env(),
            o.violations.len(),
            o.violations[0]
        );
        total += o.checked;
    }
    println!("power loss [{}]: {total} crash states checked in both sync modes, 0 violations", sc.name());
}

#[test]
fn power_loss_install_fresh() {
    check_scenario(Scenario::InstallFresh);
}

#[test]
fn power_loss_upgrade() {
    check_scenario(Scenario::Upgrade);
}

#[test]
fn power_loss_uninstall() {
    check_scenario(Scenario::Uninstall);
}

/// Removing a needed barrier must be caught. Each candidate removes one the
/// design relies on; every one must produce violations.
#[test]
fn missing_fsync_is_detected() {
    let candidates: &[(Scenario, Sync, &str, &str)] = &[
        (Scenario::InstallFresh, Sync::Syncfs, "fsops.syncfs.staging:1", "the one syncfs after staging"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync.staging:1", "the data of the first staged file"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync_dir.staging:1", "the entries of the first staged dir"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync_dir.swap:1", "the parent of the first swapped target"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.cache:1", "the data of a blob before it enters the cache"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.journal:*", "our fsyncs of sled's files: sled's flush alone"),
        (Scenario::Upgrade, Sync::Syncfs, "fsops.fsync.filelist:1", "the data of the first new file list"),
        (Scenario::InstallFresh, Sync::PerFile, "fsops.fsync_dir.filelist:*", "the entries of the file lists"),
    ];
    let mut missed = Vec::new();
    for (sc, sync, skip, what) in candidates {
        let t0 = Instant::now();
        let c = setup(*sc, *sync, Some(skip));
        let o = c.run(true);
        println!(
            "skip {skip} ({what}) [{} {}]: violation found after {} distinct crash states ({} violations), {:.1}s",
            sc.name(),
            sync.env(),
            o.checked,
            o.violations.len(),
            t0.elapsed().as_secs_f64()
        );
        match o.violations.first() {
            Some(v) => println!("  e.g. {}", v.lines().next().unwrap_or("")),
            None => missed.push(*skip),
        }
    }
    assert!(missed.is_empty(), "removing these barriers went unnoticed by the checker: {missed:?}");
}
