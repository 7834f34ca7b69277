//! The power-loss checker's crash states: one candidate state of a log
//! prefix ([`CrashSpec`]: which volatile changes are dropped, which files
//! lose unsynced data, which removed directories are half removed), the
//! sandbox it leaves ([`build_layout`]), and that sandbox written to disk at
//! the recorded absolute paths ([`materialize`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::plmodel::*;
use super::tree::remove_if_exists;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    /// Everything written so far.
    Full,
    /// Only what was durable (fsynced).
    Lost,
    /// Half of what was not durable survived.
    Half,
}

/// One candidate crash state: which changes of the prefix are dropped,
/// which files lose data, which removed directories are half-removed.
pub struct CrashSpec {
    pub label: String,
    pub dropped: BTreeSet<usize>,
    pub data: BTreeMap<Ino, Data>,
    pub emptied_dirs: BTreeSet<Ino>,
}

/// A crash state's sandbox as a list of (relative path, inode, bytes of a
/// file) in depth-first order, parents first.
pub type Layout = Vec<(String, Ino, usize)>;

pub fn build_layout(rp: &Replay, k: usize, spec: &CrashSpec) -> Option<Layout> {
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
pub fn materialize(rp: &Replay, layout: &Layout) -> HashMap<Ino, PathBuf> {
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
