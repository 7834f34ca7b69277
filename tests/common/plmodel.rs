//! The power-loss checker's model (see `tests/power_loss.rs` for the method):
//! the op log `STAGEHAND_RECORD_OPS` writes ([`Op`], [`parse_ops`]) and its
//! replay onto an in-memory inode model of the sandbox ([`Replay`]: every
//! inode ever seen, the directory entries at the start, one [`Event`] per op,
//! and which changes and file lengths are durable at a given prefix).
//!
//! sled's own files are outside this model: the journal at an instant is the
//! recorder's copy taken at the last journal flush (see [`super::plstates`]).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::demo::repo_root;

#[derive(Debug, Clone)]
pub enum Op {
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
    pub fn short(&self) -> String {
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

pub fn parse_ops(path: &Path) -> Vec<Op> {
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

// The inode model

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    /// A regular file's bytes: its final (longest) content; how much of it
    /// exists at a given instant is tracked by [`Event::Len`].
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u32,
}

pub type Ino = usize;
pub type Entries = BTreeMap<String, Ino>;

/// One directory-entry change of one op: in directory `dir`, `name` now
/// names `to` (or nothing).
#[derive(Debug, Clone)]
pub struct Edit {
    pub dir: Ino,
    pub name: String,
    pub to: Option<Ino>,
}

#[derive(Debug, Clone)]
pub enum Event {
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
pub struct Replay {
    pub root: PathBuf,
    pub inodes: Vec<Inode>,
    pub initial: Vec<Entries>,
    pub events: Vec<Event>,
    pub ops: Vec<Op>,
}

pub const ROOT: Ino = 0;

pub fn rel_components(root: &Path, path: &str) -> Vec<String> {
    let p = Path::new(path);
    let rel =
        p.strip_prefix(root).unwrap_or_else(|_| panic!("op path {path} is outside the sandbox {}", root.display()));
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()
}

pub fn resolve(entries: &[Entries], root: &Path, path: &str) -> Option<Ino> {
    let mut cur = ROOT;
    for c in rel_components(root, path) {
        cur = *entries.get(cur)?.get(&c)?;
    }
    Some(cur)
}

pub fn parent_and_name(entries: &[Entries], root: &Path, path: &str) -> (Ino, String) {
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
pub fn unmodelled(rel: &Path) -> bool {
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
pub fn load_tree(root: &Path) -> (Vec<Inode>, Vec<Entries>, HashMap<u64, Ino>) {
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
    pub fn new(root: &Path, initial_inodes: Vec<Inode>, initial: Vec<Entries>, ops: Vec<Op>) -> Replay {
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
    pub fn fill_partial_contents(&mut self, final_entries: &[Entries]) {
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
    pub fn durable(&self, i: usize, k: usize) -> bool {
        let Event::Change { edits, .. } = &self.events[i] else { return true };
        let later = &self.events[i + 1..k];
        later.iter().any(|ev| matches!(ev, Event::SyncFs))
            || edits.iter().all(|e| later.iter().any(|ev| matches!(ev, Event::SyncDir(d) if *d == e.dir)))
    }

    /// Each file's (current length, durable length) after the first `k` events.
    pub fn lengths(&self, k: usize) -> (Vec<usize>, Vec<usize>) {
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
