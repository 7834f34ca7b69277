//! The power-loss checker (see `tests/power_loss.rs` for the method): a
//! scenario recorded once ([`setup`]), its crash states enumerated, each one
//! materialized with the journal of its prefix ([`Checker::materialize_state`]),
//! recovered, and checked ([`Checker::recover_and_check`], [`Checker::run`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stagehand::journal::codec::{self, RecordKind};
use stagehand::txn::{BirthTime, Identity, TxnRecord};

use super::plmodel::*;
use super::plstates::*;
use super::proof::*;

#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    InstallFresh,
    Upgrade,
    Uninstall,
    /// `install --adopt` of v1 over a user's own `app` directory (with
    /// `precious.txt` and a subdirectory), nothing installed before.
    Adopt,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::InstallFresh => "install-fresh",
            Scenario::Upgrade => "upgrade",
            Scenario::Uninstall => "uninstall",
            Scenario::Adopt => "adopt",
        }
    }
    pub fn before(self) -> Option<&'static str> {
        match self {
            Scenario::InstallFresh | Scenario::Adopt => None,
            _ => Some("v1"),
        }
    }
    pub fn after(self) -> Option<&'static str> {
        match self {
            Scenario::InstallFresh | Scenario::Adopt => Some("v1"),
            Scenario::Upgrade => Some("v2"),
            Scenario::Uninstall => None,
        }
    }
}

/// `STAGEHAND_SYNC`: the default (one syncfs after staging) or `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    Syncfs,
    PerFile,
}

impl Sync {
    pub fn env(self) -> &'static str {
        match self {
            Sync::Syncfs => "syncfs",
            Sync::PerFile => "fsync",
        }
    }
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub ops: usize,
    pub prefixes: usize,
    pub candidates: usize,
    pub impossible: usize,
    pub checked: usize,
    pub ended_old: usize,
    pub ended_new: usize,
    pub violations: Vec<String>,
}

/// A check of one materialized crash state: the version DEST ended at, or
/// the violation.
pub type StateCheck<'a> = dyn FnMut(&Checker, &CrashState) -> Result<Option<&'static str>, String> + 'a;

/// One distinct crash state: its log prefix and candidate, the sandbox it
/// leaves, and the journal snapshot of that prefix (whether it holds the
/// commit record, and which flush it is).
#[derive(Debug, Clone)]
pub struct CrashState {
    pub k: usize,
    pub label: String,
    pub layout: Layout,
    pub snap: Option<u64>,
    pub committed: bool,
    pub what: Option<String>,
}

/// What a recorded scenario starts from beyond its [`Scenario`] (the
/// default: DEST at `dest`, no other package, every fsync issued).
#[derive(Debug, Clone, Default)]
pub struct Setup<'a> {
    /// `STAGEHAND_SKIP_FSYNC` for the recorded run.
    pub skip_fsync: Option<&'a str>,
    /// `STAGEHAND_FAIL_AT` for the recorded run (an error it must survive
    /// and still report success, as a retried step).
    pub fail_at: Option<&'a str>,
    /// DEST relative to the sandbox root (`dest` if empty).
    pub dest_rel: String,
    /// Demo v1 is installed first as packages `o0`, `o1`, … (one per entry)
    /// under these directories, relative to the sandbox root. They are in
    /// every world and must stay listed.
    pub others: Vec<String>,
    /// The last of `others` is installed after everything else and killed
    /// at this kill point (`STAGEHAND_CRASH_AT`), so the recorded run first
    /// recovers it: two transactions in one recorded process.
    pub interrupt_last_other: Option<&'a str>,
}

pub struct Checker {
    pub sc: Scenario,
    pub sync: Sync,
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
    pub rec_dir: PathBuf,
    pub pristine_state: PathBuf,
    pub old: Tree,
    pub new: Tree,
    pub replay: Replay,
    /// Real inode number in the recording run → model inode.
    pub rec_ino: HashMap<u64, Ino>,
    /// The packages installed before, besides the demo (see [`Setup::others`]).
    pub others: BTreeSet<String>,
    /// Whether the journal the run started from holds a pending transaction
    /// (see [`Setup::interrupt_last_other`]).
    pub pristine_pending: bool,
}

/// An `O_PATH` descriptor of every object under `dir` (not following symlinks).
fn pin_tree(dir: &Path) -> Vec<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(&p);
        out.push(f.unwrap_or_else(|e| panic!("pin {}: {e}", p.display())));
        if e.file_type().unwrap().is_dir() {
            out.extend(pin_tree(&p));
        }
    }
    out
}

pub fn setup(sc: Scenario, sync: Sync, skip_fsync: Option<&str>) -> Checker {
    setup_with(sc, sync, &Setup { skip_fsync, ..Setup::default() })
}

/// Records scenario `sc` from the start `how` describes, and checks that
/// the replayed log reproduces the recorded run.
pub fn setup_with(sc: Scenario, sync: Sync, how: &Setup) -> Checker {
    let skip_fsync = how.skip_fsync;
    let dest_rel = if how.dest_rel.is_empty() { "dest" } else { how.dest_rel.as_str() };
    let tmp = tempdir();
    let base = fs::canonicalize(tmp.path()).unwrap();
    let root = base.join("sb");
    let (dest, state) = (root.join(dest_rel), root.join("state"));
    fs::create_dir_all(&dest).unwrap();
    let sync_env = [("STAGEHAND_SYNC", OsStr::new(sync.env()))];
    if sc.before().is_some() {
        // Files in shared directories belong to nobody: they must survive.
        fs::create_dir_all(dest.join("lib")).unwrap();
        fs::create_dir_all(dest.join("share/extension")).unwrap();
        fs::write(dest.join("lib/unrelated.so"), b"not stagehand's\n").unwrap();
        fs::write(dest.join("share/extension/plpgsql.control"), b"# unrelated\n").unwrap();
    }
    if matches!(sc, Scenario::Adopt) {
        // The user's own tree where the demo's `app` goes.
        fs::create_dir_all(dest.join("app/notes")).unwrap();
        fs::write(dest.join("app/precious.txt"), b"the user's only copy\n").unwrap();
        fs::write(dest.join("app/notes/todo.txt"), b"adopt me\n").unwrap();
    }
    run_bin(&state, &root, &["repair"], &sync_env).ok();
    let mut others = BTreeSet::new();
    let other_args = |i: usize, dir: &str| {
        let d = root.join(dir);
        fs::create_dir_all(&d).unwrap();
        demo_install_args(&d, &demo_source("v1"), Some(&format!("o{i}")))
    };
    let last_killed = how.interrupt_last_other.is_some() as usize;
    for (i, dir) in how.others.iter().enumerate().take(how.others.len() - last_killed.min(how.others.len())) {
        run_bin(&state, &root, &other_args(i, dir), &sync_env).ok();
        others.insert(format!("o{i}"));
    }
    if let Some(v) = sc.before() {
        run_bin(&state, &root, &demo_install_args(&dest, &demo_source(v), None), &sync_env).ok();
    }
    if let (Some(point), Some(dir)) = (how.interrupt_last_other, how.others.last()) {
        let i = how.others.len() - 1;
        let env = [sync_env[0], ("STAGEHAND_CRASH_AT", OsStr::new(point))];
        let run = run_bin(&state, &root, &other_args(i, dir), &env);
        assert!(!run.success(), "the install of o{i} was to be killed at {point}:\n{}", run.describe());
        others.insert(format!("o{i}"));
    }
    let old = hash_tree(&dest);
    let pristine_state = base.join("pristine-state");
    copy_tree(&state, &pristine_state);
    let (inodes, initial, rec_ino_initial) = load_tree(&root);
    // Every object of the starting tree held open (`O_PATH`) until the
    // replay is checked: one the run removes (an adopted tree, a backup)
    // keeps its inode number, so no object the run creates can reuse it and
    // the remapping stays unambiguous.
    let pinned = pin_tree(&root);

    let rec_dir = base.join("record");
    let mut args = match sc.after() {
        Some(v) => demo_install_args(&dest, &demo_source(v), None),
        None => vec!["uninstall".into(), "demo".into()],
    };
    if matches!(sc, Scenario::Adopt) {
        args.push("--adopt".into());
    }
    let mut env: Vec<(&str, &OsStr)> = vec![("STAGEHAND_RECORD_OPS", rec_dir.as_os_str()), sync_env[0]];
    if let Some(s) = skip_fsync {
        env.push(("STAGEHAND_SKIP_FSYNC", OsStr::new(s)));
    }
    if let Some(f) = how.fail_at {
        env.push(("STAGEHAND_FAIL_AT", OsStr::new(f)));
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
        let Some(rel) = rel.strip_prefix(&format!("{dest_rel}/")) else { continue };
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
    drop(pinned);
    Checker {
        sc,
        sync,
        _tmp: tmp,
        root,
        dest,
        state,
        rec_dir,
        pristine_state,
        old,
        new,
        replay,
        rec_ino,
        others,
        pristine_pending: how.interrupt_last_other.is_some(),
    }
}

impl Checker {
    pub fn specs(&self, k: usize) -> Vec<CrashSpec> {
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
    pub fn journal_at(&self, k: usize) -> (Option<u64>, bool, Option<String>) {
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
    /// pending records' and pending cleanups' identities remapped to `new_ino`.
    pub fn materialize_state(&self, snap: Option<u64>, new_ino: &HashMap<Ino, (u64, Option<BirthTime>)>) {
        fs::create_dir_all(&self.state).unwrap();
        // The seal (rewritten after each finished txn, outside the model) is
        // the pristine one: the txn it names is in every snapshot's history.
        for name in ["lock", "journal", "journal.seal"] {
            replace_with_copy(&self.pristine_state.join(name), &self.state.join(name));
        }
        let journal = self.state.join("journal");
        match snap {
            Some(n) => replace_with_copy(&self.rec_dir.join(format!("journal-{n}")), &journal),
            // The pristine journal names inode numbers only if it holds a
            // pending transaction.
            None if !self.pristine_pending => return,
            None => {}
        }
        let db = sled::open(&journal).expect("open journal snapshot");
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
        // Transactions in flight, and finished ones whose cleanup is to run.
        for name in ["txns", "cleanups"] {
            let tree = db.open_tree(name).unwrap();
            for kv in tree.iter() {
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
                tree.insert(k, codec::encode(RecordKind::Txn, &rec).unwrap()).unwrap();
            }
        }
        db.flush().unwrap();
        drop(db);
        wait_sled_unlocked(&journal);
    }

    /// Recovers the materialized state and checks every invariant; returns
    /// the version DEST ended at, or the violation.
    pub fn recover_and_check(&self, committed: bool, complete: bool) -> Result<Option<&'static str>, String> {
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
        if let Some(other) = listed.keys().find(|n| *n != "demo" && !self.others.contains(*n)) {
            return Err(format!("unexpected package {other} listed"));
        }
        if let Some(gone) = self.others.iter().find(|n| !listed.contains_key(*n)) {
            return Err(format!("package {gone}, installed before, is no longer listed"));
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

    /// Every distinct crash state of the log (distinct by its sandbox and
    /// journal), oldest prefix first or, with `newest_first`, newest first;
    /// counts candidates and impossible ones into `out`.
    pub fn distinct_states(&self, newest_first: bool, out: &mut Outcome) -> Vec<CrashState> {
        use std::hash::{Hash, Hasher};
        let rp = &self.replay;
        let n = rp.events.len();
        out.ops = n;
        out.prefixes = n + 1;
        // Hashes, not layouts: with long paths the layouts of hundreds of
        // states are large.
        let mut seen: HashSet<u64> = HashSet::new();
        let order: Vec<usize> = if newest_first { (0..=n).rev().collect() } else { (0..=n).collect() };
        let mut states = Vec::new();
        for k in order {
            let (snap, committed, what) = self.journal_at(k);
            for spec in self.specs(k) {
                out.candidates += 1;
                let Some(layout) = build_layout(rp, k, &spec) else {
                    out.impossible += 1;
                    continue;
                };
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (snap, &layout).hash(&mut h);
                if !seen.insert(h.finish()) {
                    continue;
                }
                states.push(CrashState { k, label: spec.label, layout, snap, committed, what: what.clone() });
            }
        }
        states
    }

    /// Writes crash state `st` to disk: the sandbox, and the journal of its prefix.
    pub fn materialize_crash(&self, st: &CrashState) {
        let first = materialize(&self.replay, &st.layout);
        let new_ino: HashMap<Ino, (u64, Option<BirthTime>)> = first
            .iter()
            .map(|(i, p)| {
                let m = fs::symlink_metadata(p).unwrap();
                (*i, (m.ino(), stagehand::fsops::birth_time(&m)))
            })
            .collect();
        self.materialize_state(st.snap, &new_ino);
    }

    /// Materializes each of `states` and runs `check` on it (the version
    /// DEST ended at, or the violation); with `stop_at_first`, returns at
    /// the first violation.
    pub fn check_states(&self, states: &[CrashState], stop_at_first: bool, out: &mut Outcome, check: &mut StateCheck) {
        let n = self.replay.events.len();
        for st in states {
            out.checked += 1;
            self.materialize_crash(st);
            match check(self, st) {
                Ok(v) if v == self.sc.after() && self.sc.after() != self.sc.before() => out.ended_new += 1,
                Ok(_) => out.ended_old += 1,
                Err(e) => {
                    let k = st.k;
                    let last = if k == 0 { "(nothing)".to_string() } else { self.replay.ops[k - 1].short() };
                    out.violations.push(format!(
                        "[{} {}] prefix {k}/{n} (last op: {last}; journal at {}), state \"{}\": {e}",
                        self.sc.name(),
                        self.sync.env(),
                        st.what.as_deref().unwrap_or("start"),
                        st.label
                    ));
                    if stop_at_first {
                        return;
                    }
                }
            }
        }
    }

    /// Checks every crash state; with `stop_at_first`, returns at the first violation.
    pub fn run(&self, stop_at_first: bool) -> Outcome {
        let mut out = Outcome::default();
        // Hunting for one violation, start from the end: missing barriers
        // show after the commit point.
        let states = self.distinct_states(stop_at_first, &mut out);
        let n = self.replay.events.len();
        self.check_states(&states, stop_at_first, &mut out, &mut |c, st| c.recover_and_check(st.committed, st.k == n));
        out
    }
}
