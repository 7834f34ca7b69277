//! Admission of tar entries: every entry's path and link is checked before
//! anything is written, so no entry can land outside its destination.
//!
//! Refused: absolute paths, `..` components, non-UTF-8 names, names stagehand
//! reserves, symlinks whose target is absolute or climbs out of the root,
//! hard links to anything but an earlier regular file of the same archive,
//! device files and FIFOs, an entry beneath a symlink, and an entry whose
//! path was already used. Pure: the guard only remembers what it admitted.

use std::collections::{BTreeMap, BTreeSet};

/// The entry types a tar header can announce, as far as we care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Char/block device, FIFO, or anything else.
    Special,
    /// PAX/GNU metadata entries, skipped (the tar crate folds them in).
    Metadata,
}

/// What to create for an admitted entry. Paths are relative to the root,
/// `/`-separated, normalized (no `.`, `..`, or empty components).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Parent directories the archive did not list, to create first (0755).
    Dir {
        rel: String,
        mode: u32,
        implicit_parents: Vec<String>,
    },
    File {
        rel: String,
        mode: u32,
        implicit_parents: Vec<String>,
    },
    Symlink {
        rel: String,
        target: String,
        implicit_parents: Vec<String>,
    },
    HardLink {
        rel: String,
        original: String,
        implicit_parents: Vec<String>,
    },
    /// Nothing to do (the root itself, or a metadata entry).
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe tar entry {path:?}: {reason}; nothing was installed")]
pub struct Refused {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    File,
    Symlink,
}

/// Admits tar entries one by one.
#[derive(Debug, Default)]
pub struct TarGuard {
    seen: BTreeMap<String, Seen>,
    symlinks: BTreeSet<String>,
}

fn refuse(path: &[u8], reason: impl Into<String>) -> Refused {
    Refused { path: String::from_utf8_lossy(path).into_owned(), reason: reason.into() }
}

/// Normalizes an archive path: strips `./` and empty components; refuses
/// absolute paths, `..`, NUL, non-UTF-8, and stagehand's reserved names.
/// Returns "" for the root itself.
pub fn normalize(raw: &[u8]) -> Result<String, Refused> {
    let s = std::str::from_utf8(raw).map_err(|_| refuse(raw, "the name is not UTF-8"))?;
    if s.starts_with('/') {
        return Err(refuse(raw, "absolute path"));
    }
    if s.contains('\0') {
        return Err(refuse(raw, "NUL in the name"));
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refuse(raw, "`..` climbs out of the destination")),
            c if crate::txn::is_stagehand_name(c) => {
                return Err(refuse(raw, "the name uses stagehand's reserved `.stagehand-` marker"))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// True if a symlink at `rel` pointing to `target` stays inside the root.
fn link_stays_inside(rel: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    // Resolve lexically from the link's directory.
    let mut depth: Vec<&str> = rel.split('/').collect();
    depth.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            c => depth.push(c),
        }
    }
    true
}

impl TarGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits one entry, given its raw path, kind, link name (for links)
    /// and permission bits.
    pub fn admit(
        &mut self,
        raw_path: &[u8],
        kind: TarKind,
        link: Option<&[u8]>,
        mode: u32,
    ) -> Result<Admitted, Refused> {
        if kind == TarKind::Metadata {
            return Ok(Admitted::Skip);
        }
        let rel = normalize(raw_path)?;
        if rel.is_empty() {
            return match kind {
                TarKind::Dir => Ok(Admitted::Skip),
                _ => Err(refuse(raw_path, "a non-directory entry for the destination root")),
            };
        }
        if kind == TarKind::Special {
            return Err(refuse(raw_path, "device files and FIFOs are not installed"));
        }
        // No entry may sit beneath a symlink: writing through it could escape.
        let mut implicit_parents = Vec::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for i in 1..comps.len() {
            let prefix = comps[..i].join("/");
            match self.seen.get(&prefix) {
                Some(Seen::Dir) => {}
                Some(Seen::Symlink) => return Err(refuse(raw_path, format!("it lies beneath the symlink {prefix:?}"))),
                Some(Seen::File) => return Err(refuse(raw_path, format!("its parent {prefix:?} is a file"))),
                None => {
                    self.seen.insert(prefix.clone(), Seen::Dir);
                    implicit_parents.push(prefix);
                }
            }
        }
        match (self.seen.get(&rel), kind) {
            (Some(Seen::Dir), TarKind::Dir) => return Ok(Admitted::Skip),
            (Some(_), _) => return Err(refuse(raw_path, "the archive lists this path twice")),
            (None, _) => {}
        }
        let admitted = match kind {
            TarKind::Dir => {
                self.seen.insert(rel.clone(), Seen::Dir);
                Admitted::Dir { rel, mode: mode & 0o7777, implicit_parents }
            }
            TarKind::File => {
                self.seen.insert(rel.clone(), Seen::File);
                Admitted::File { rel, mode: mode & 0o7777, implicit_parents }
            }
            TarKind::Symlink => {
                let raw_target = link.ok_or_else(|| refuse(raw_path, "a symlink without a target"))?;
                let target =
                    std::str::from_utf8(raw_target).map_err(|_| refuse(raw_path, "the link target is not UTF-8"))?;
                if !link_stays_inside(&rel, target) {
                    return Err(refuse(raw_path, format!("the symlink points outside the destination ({target:?})")));
                }
                self.seen.insert(rel.clone(), Seen::Symlink);
                self.symlinks.insert(rel.clone());
                Admitted::Symlink { rel, target: target.to_string(), implicit_parents }
            }
            TarKind::HardLink => {
                let raw_target = link.ok_or_else(|| refuse(raw_path, "a hard link without a target"))?;
                let original = normalize(raw_target)
                    .map_err(|r| refuse(raw_path, format!("the hard link's target is unsafe: {}", r.reason)))?;
                if self.seen.get(&original) != Some(&Seen::File) {
                    return Err(refuse(
                        raw_path,
                        format!("the hard link's target {original:?} is not an earlier file of this archive"),
                    ));
                }
                self.seen.insert(rel.clone(), Seen::File);
                Admitted::HardLink { rel, original, implicit_parents }
            }
            TarKind::Special | TarKind::Metadata => unreachable!("handled above"),
        };
        Ok(admitted)
    }

    /// Admits a plain file placed at the root by a title-annotated layer.
    pub fn admit_root_file(&mut self, name: &str) -> Result<(), Refused> {
        if !super::is_plain_file_name(name) {
            return Err(refuse(name.as_bytes(), "not a plain file name"));
        }
        if self.seen.contains_key(name) {
            return Err(refuse(name.as_bytes(), "a layer title collides with a path from a tar layer"));
        }
        self.seen.insert(name.to_string(), Seen::File);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_entries_pass() {
        let mut g = TarGuard::new();
        assert_eq!(g.admit(b"./", TarKind::Dir, None, 0o755), Ok(Admitted::Skip));
        assert_eq!(
            g.admit(b"./bin/demo", TarKind::File, None, 0o100755),
            Ok(Admitted::File { rel: "bin/demo".into(), mode: 0o755, implicit_parents: vec!["bin".into()] })
        );
        assert!(matches!(g.admit(b"lib/x.so.1", TarKind::File, None, 0o644), Ok(Admitted::File { .. })));
        assert!(matches!(g.admit(b"lib/x.so", TarKind::Symlink, Some(b"x.so.1"), 0o777), Ok(Admitted::Symlink { .. })));
        assert!(matches!(g.admit(b"lib/y", TarKind::HardLink, Some(b"lib/x.so.1"), 0), Ok(Admitted::HardLink { .. })));
        assert!(g.admit(b"share/a/../b", TarKind::File, None, 0o644).is_err());
    }

    #[test]
    fn escapes_are_refused() {
        let mut g = TarGuard::new();
        for (path, kind, link) in [
            (&b"../x"[..], TarKind::File, None),
            (b"a/../../x", TarKind::File, None),
            (b"/etc/x", TarKind::File, None),
            (b"up", TarKind::Symlink, Some(&b"../../etc"[..])),
            (b"abs", TarKind::Symlink, Some(&b"/"[..])),
            (b"hl", TarKind::HardLink, Some(&b"../../outside"[..])),
            (b"hl2", TarKind::HardLink, Some(&b"never-seen"[..])),
            (b"dev", TarKind::Special, None),
            (b"x/.y.stagehand-1.staging", TarKind::File, None),
            (b"\xff", TarKind::File, None),
        ] {
            assert!(g.admit(path, kind, link, 0o644).is_err(), "{:?} admitted", String::from_utf8_lossy(path));
        }
        let mut g = TarGuard::new();
        assert!(g.admit(b"root", TarKind::Symlink, Some(b"."), 0).is_ok());
        let e = g.admit(b"root/etc/passwd", TarKind::File, None, 0o644).expect_err("beneath symlink");
        assert!(e.reason.contains("symlink"), "{e}");
        assert!(g.admit(b"d/ok", TarKind::Symlink, Some(b"../root"), 0).is_ok());
        assert!(g.admit(b"d/ok", TarKind::File, None, 0).is_err(), "duplicate path");
    }
}
