//! The independent tree hasher: reads the disk with `std::fs` only (never
//! through stagehand's library) into a [`Tree`] of [`Node`]s, compares and
//! diffs trees; plus copying, removing and snapshotting trees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// One filesystem entry, as the tests see it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Dir,
    File { sha256: String, exec: bool, len: u64 },
    Symlink { target: String },
    Special { kind: String },
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir => write!(f, "dir"),
            Node::File { sha256, exec, len } => {
                write!(f, "file {}{} {len}B", &sha256[..12], if *exec { " +x" } else { "" })
            }
            Node::Symlink { target } => write!(f, "symlink -> {target}"),
            Node::Special { kind } => write!(f, "{kind}"),
        }
    }
}

/// Relative path (slash-separated, no leading slash) → entry. The root itself
/// is not an entry.
pub type Tree = BTreeMap<String, Node>;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sha256 (hex) of a file's content.
pub fn sha256_file(p: &Path) -> String {
    sha256_file_len(p).0
}

fn sha256_file_len(p: &Path) -> (String, u64) {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    (hex::encode(h.finalize()), len)
}

/// Hashes one entry (without following a symlink at `p`).
pub fn node_of(p: &Path) -> Option<Node> {
    let meta = fs::symlink_metadata(p).ok()?;
    let ft = meta.file_type();
    Some(if ft.is_symlink() {
        Node::Symlink { target: fs::read_link(p).unwrap().to_string_lossy().into_owned() }
    } else if ft.is_dir() {
        Node::Dir
    } else if ft.is_file() {
        let (sha256, len) = sha256_file_len(p);
        Node::File { sha256, exec: meta.permissions().mode() & 0o111 != 0, len }
    } else {
        let kind = if ft.is_char_device() {
            "char device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "unknown"
        };
        Node::Special { kind: kind.to_string() }
    })
}

/// Every entry under `root` (not following symlinks), keyed by relative
/// path. A missing root gives an empty tree.
pub fn hash_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    if fs::symlink_metadata(root).map(|m| m.is_dir()).unwrap_or(false) {
        walk(root, "", &mut out);
    }
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Tree) {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let p = dir.join(&name);
        let node = node_of(&p).unwrap_or_else(|| panic!("vanished during walk: {}", p.display()));
        let is_dir = node == Node::Dir;
        out.insert(rel.clone(), node);
        if is_dir {
            walk(&p, &format!("{rel}/"), out);
        }
    }
}

/// One sha256 over a whole tree (relative path, kind, exec bit, content,
/// symlink target of every entry), for cheap comparisons.
pub fn tree_digest(tree: &Tree) -> String {
    let mut h = Sha256::new();
    for (k, v) in tree {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(format!("{v:?}").as_bytes());
        if let Node::File { sha256, .. } = v {
            h.update(sha256.as_bytes());
        }
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Human-readable differences between two trees (at most `max` lines).
pub fn tree_diff(actual: &Tree, expected: &Tree, max: usize) -> String {
    let mut lines = Vec::new();
    let keys: BTreeSet<&String> = actual.keys().chain(expected.keys()).collect();
    for k in keys {
        match (actual.get(k), expected.get(k)) {
            (Some(a), Some(e)) if a == e => {}
            (Some(a), Some(e)) => lines.push(format!("  {k}: is {a:?}, expected {e:?}")),
            (Some(a), None) => lines.push(format!("  {k}: unexpected {a:?}")),
            (None, Some(e)) => lines.push(format!("  {k}: missing (expected {e:?})")),
            (None, None) => unreachable!(),
        }
    }
    let n = lines.len();
    if n > max {
        lines.truncate(max);
        lines.push(format!("  … and {} more", n - max));
    }
    if lines.is_empty() {
        "  (identical)".to_string()
    } else {
        lines.join("\n")
    }
}

pub fn remove_if_exists(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // A read-only tree (0555 directories) can only be emptied by an
            // ordinary user once its directories are writable again.
            if fs::remove_dir_all(p).is_err() {
                make_dirs_writable(p);
                fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display()));
            }
        }
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display())),
        Err(_) => {}
    }
}

/// Adds u+rwx to every directory under (and at) `dir`, not following symlinks.
fn make_dirs_writable(dir: &Path) {
    let Ok(m) = fs::symlink_metadata(dir) else { return };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.permissions().mode() | 0o700));
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        make_dirs_writable(&e.path());
    }
}

/// Recursively copies `src` to `dst` (which must not exist): regular files
/// with their permission bits, directories, symlinks as symlinks.
pub fn copy_tree(src: &Path, dst: &Path) {
    let meta = fs::symlink_metadata(src).unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src).unwrap(), dst).unwrap();
    } else if ft.is_dir() {
        fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
        for entry in fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &dst.join(entry.file_name()));
        }
        fs::set_permissions(dst, meta.permissions()).unwrap();
    } else if ft.is_file() {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("cp {} {}: {e}", src.display(), dst.display()));
    } else {
        panic!("copy_tree: cannot copy special file {}", src.display());
    }
}

/// Every path under `dir` (relative, slash-separated) whose name contains
/// `stagehand-` (so every `.stagehand-` staging or backup path too).
pub fn leftovers_under(dir: &Path) -> Vec<String> {
    hash_tree(dir).keys().filter(|k| k.contains("stagehand-")).cloned().collect()
}

/// Replaces `dst` with a copy of `src` (absent `src`: `dst` removed).
pub fn replace_with_copy(src: &Path, dst: &Path) {
    remove_if_exists(dst);
    if src.exists() {
        copy_tree(src, dst);
    }
}

/// One entry with everything a restored `--adopt` capture must give back:
/// kind and content, all twelve mode bits (not for symlinks, whose mode
/// Linux fixes at 0777), mtime to the nanosecond, owner and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactNode {
    pub node: Node,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub uid: u32,
    pub gid: u32,
}

/// `root` itself (key "") and, for a directory, every entry under it (not
/// following symlinks), read with `std::fs` only.
pub fn exact_tree(root: &Path) -> BTreeMap<String, ExactNode> {
    use std::os::unix::fs::MetadataExt;
    let exact = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let node = node_of(p).unwrap_or_else(|| panic!("vanished: {}", p.display()));
        let mode = if m.file_type().is_symlink() { 0 } else { m.mode() & 0o7777 };
        ExactNode { node, mode, mtime: (m.mtime(), m.mtime_nsec()), uid: m.uid(), gid: m.gid() }
    };
    let mut out = BTreeMap::new();
    out.insert(String::new(), exact(root));
    if out[""].node == Node::Dir {
        for rel in hash_tree(root).into_keys() {
            let e = exact(&root.join(&rel));
            out.insert(rel, e);
        }
    }
    out
}

/// The entries of two exact trees that differ, for a failure message.
pub fn exact_diff(actual: &BTreeMap<String, ExactNode>, expected: &BTreeMap<String, ExactNode>) -> String {
    let mut out = String::new();
    for k in actual.keys().chain(expected.keys()).collect::<BTreeSet<_>>() {
        if actual.get(k) != expected.get(k) {
            out.push_str(&format!("  {k:?}: is {:?}, was {:?}\n", actual.get(k), expected.get(k)));
        }
    }
    out
}

/// Sets the mtime of `p` (not following a symlink) to `secs` + `nanos`.
pub fn set_mtime(p: &Path, secs: i64, nanos: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as libc::c_long },
    ];
    // SAFETY: a valid C path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}: {}", p.display(), std::io::Error::last_os_error());
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A user's directory at `dir`: files of modes 0640, 0700 and 04750, a
/// 300 KB file, a subdirectory and an empty 0700 one, a hard link, and
/// symlinks (relative, absolute outside, dangling); every mtime set with
/// nanoseconds, directories last. As root one file belongs to uid 65534.
pub fn user_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/empty")).unwrap();
    fs::write(dir.join("a.txt"), b"the user's own notes\n").unwrap();
    chmod(&dir.join("a.txt"), 0o640);
    fs::write(dir.join("run.sh"), b"#!/bin/sh\necho mine\n").unwrap();
    chmod(&dir.join("run.sh"), 0o700);
    fs::write(dir.join("tool"), b"a setuid tool\n").unwrap();
    chmod(&dir.join("tool"), 0o4750);
    fs::write(dir.join("sub/big.bin"), super::artifact::pseudo_random(300_000, 7)).unwrap();
    fs::hard_link(dir.join("a.txt"), dir.join("sub/a-again.txt")).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../nowhere", dir.join("sub/dangling")).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(dir.join("run.sh"), Some(65534), Some(65534)).unwrap();
    }
    chmod(&dir.join("sub/empty"), 0o700);
    chmod(&dir.join("sub"), 0o750);
    for (i, rel) in ["a.txt", "run.sh", "tool", "sub/big.bin", "link", "abs-link", "sub/dangling"].iter().enumerate() {
        set_mtime(&dir.join(rel), 1_000_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
    }
    set_mtime(&dir.join("sub/empty"), 900_000_000, 1);
    set_mtime(&dir.join("sub"), 900_000_001, 999_999_999);
    set_mtime(dir, 800_000_000, 42);
}
