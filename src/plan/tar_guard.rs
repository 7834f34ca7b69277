//! Admission of tar entries: every entry's path and link is checked before
//! anything is written, so no entry can land outside its destination.
//!
//! Refused: absolute paths, `..` components, non-UTF-8 names, names stagehand
//! reserves, symlinks whose target is absolute or climbs out of the root —
//! resolved the way the kernel will, through the symlinks already admitted
//! (`a/b -> ..` then `c -> a/b/..` is refused), and re-resolved whenever a
//! later symlink could change where an earlier one leads —
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
    /// Admitted symlinks: path -> target.
    symlinks: BTreeMap<String, String>,
    /// Symlinks whose resolution went through a path not admitted yet: a
    /// symlink admitted there later could change where they lead.
    unsettled: BTreeSet<String>,
    /// Symlinks may point anywhere ([`TarGuard::keeping_links`]).
    links_anywhere: bool,
}

/// Most symlinks one resolution follows (the kernel's own limit is 40).
const MAX_LINK_HOPS: usize = 40;

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

/// How a symlink's target resolves from inside the root.
#[derive(Debug, PartialEq, Eq)]
enum Resolution {
    /// Inside the root; `settled` is false if a path on the way is not
    /// admitted yet (a later symlink there could change the answer).
    Inside { settled: bool },
    /// Climbs out of the root, or loops.
    Outside,
}

impl TarGuard {
    /// Resolves `target` from the directory `dir` (components from the root)
    /// the way the kernel will: each component that is an admitted symlink
    /// is replaced by where its own target leads, from that link's
    /// directory. `None` if it climbs out of the root or loops. `settled`
    /// is cleared if a path on the way is not admitted yet.
    fn walk(&self, mut dir: Vec<String>, target: &str, hops: &mut usize, settled: &mut bool) -> Option<Vec<String>> {
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return None;
        }
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    dir.pop()?;
                }
                c => {
                    dir.push(c.to_string());
                    let here = dir.join("/");
                    if let Some(next) = self.symlinks.get(&here) {
                        *hops += 1;
                        if *hops > MAX_LINK_HOPS {
                            return None;
                        }
                        dir.pop();
                        dir = self.walk(dir, next, hops, settled)?;
                    } else if !self.seen.contains_key(&here) {
                        *settled = false;
                    }
                }
            }
        }
        Some(dir)
    }

    /// Where a symlink at `rel` pointing to `target` leads.
    fn link_resolution(&self, rel: &str, target: &str) -> Resolution {
        let mut dir: Vec<String> = rel.split('/').map(str::to_string).collect();
        dir.pop();
        let mut settled = true;
        match self.walk(dir, target, &mut 0, &mut settled) {
            Some(_) => Resolution::Inside { settled },
            None => Resolution::Outside,
        }
    }
}

impl TarGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard for content stagehand captured itself (what `--adopt`
    /// replaced): a symlink is restored as the link it was, wherever it
    /// points, since it is never followed — nothing is ever admitted
    /// beneath a symlink, and hard links name earlier files only. Every
    /// other rule holds.
    pub fn keeping_links() -> Self {
        TarGuard { links_anywhere: true, ..Self::default() }
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
                if self.links_anywhere {
                    if target.is_empty() || target.contains('\0') {
                        return Err(refuse(raw_path, "a symlink without a valid target"));
                    }
                    self.seen.insert(rel.clone(), Seen::Symlink);
                    return Ok(Admitted::Symlink { rel, target: target.to_string(), implicit_parents });
                }
                let settled = match self.link_resolution(&rel, target) {
                    Resolution::Outside => {
                        return Err(refuse(
                            raw_path,
                            format!("the symlink points outside the destination ({target:?}, resolved through the archive's links)"),
                        ))
                    }
                    Resolution::Inside { settled } => settled,
                };
                self.seen.insert(rel.clone(), Seen::Symlink);
                self.symlinks.insert(rel.clone(), target.to_string());
                // Resolved again with itself in place: a link through itself loops.
                if !settled && self.link_resolution(&rel, target) == Resolution::Outside {
                    self.symlinks.remove(&rel);
                    self.seen.remove(&rel);
                    return Err(refuse(raw_path, format!("the symlink leads through itself ({target:?})")));
                }
                // This link may change where an earlier, unsettled one leads.
                let mut still = BTreeSet::new();
                for other in std::mem::take(&mut self.unsettled) {
                    let Some(t) = self.symlinks.get(&other).cloned() else { continue };
                    match self.link_resolution(&other, &t) {
                        Resolution::Outside => {
                            self.symlinks.remove(&rel);
                            self.seen.remove(&rel);
                            return Err(refuse(
                                raw_path,
                                format!("with this symlink, the earlier symlink {other:?} -> {t:?} would lead outside the destination"),
                            ));
                        }
                        Resolution::Inside { settled: false } => {
                            still.insert(other);
                        }
                        Resolution::Inside { settled: true } => {}
                    }
                }
                self.unsettled = still;
                if !settled {
                    self.unsettled.insert(rel.clone());
                }
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

    #[test]
    fn keeping_links_admits_links_anywhere_but_nothing_beneath_them() {
        let mut g = TarGuard::keeping_links();
        assert!(matches!(g.admit(b"abs", TarKind::Symlink, Some(b"/etc"), 0o777), Ok(Admitted::Symlink { .. })));
        assert!(matches!(g.admit(b"up", TarKind::Symlink, Some(b"../../x"), 0o777), Ok(Admitted::Symlink { .. })));
        assert!(g.admit(b"abs/passwd", TarKind::File, None, 0o644).is_err(), "beneath a symlink");
        assert!(g.admit(b"up/x", TarKind::Dir, None, 0o755).is_err(), "beneath a symlink");
        assert!(g.admit(b"h", TarKind::HardLink, Some(b"abs"), 0).is_err(), "a hard link to a symlink");
        assert!(g.admit(b"../x", TarKind::File, None, 0o644).is_err());
        assert!(g.admit(b"dev", TarKind::Special, None, 0o644).is_err());
    }

    #[test]
    fn symlink_chains_are_resolved_through_admitted_links() {
        // Each inside when read lexically; on disk c leads to the parent.
        let mut g = TarGuard::new();
        assert!(g.admit(b"a/", TarKind::Dir, None, 0o755).is_ok());
        assert!(g.admit(b"a/b", TarKind::Symlink, Some(b".."), 0).is_ok(), "a/b -> .. is the root: inside");
        let e = g.admit(b"c", TarKind::Symlink, Some(b"a/b/.."), 0).expect_err("c -> a/b/.. is the parent");
        assert!(e.reason.contains("outside"), "{e}");
        // Deeper: each hop climbs one more level.
        let mut g = TarGuard::new();
        assert!(g.admit(b"x/y/z/", TarKind::Dir, None, 0o755).is_ok());
        assert!(g.admit(b"x/y/z/up", TarKind::Symlink, Some(b"../../.."), 0).is_ok(), "x/y/z/up is the root");
        assert!(g.admit(b"x/l", TarKind::Symlink, Some(b"y/z/up/.."), 0).is_err(), "x/y/z/up/.. is the root's parent");
        assert!(g.admit(b"x/m", TarKind::Symlink, Some(b"y/z/up"), 0).is_ok(), "x/y/z/up is the root itself");
        // A later link that changes where an earlier one leads.
        let mut g = TarGuard::new();
        assert!(g.admit(b"d/", TarKind::Dir, None, 0o755).is_ok());
        assert!(g.admit(b"d/early", TarKind::Symlink, Some(b"later/.."), 0).is_ok(), "d/later not there yet");
        let e = g.admit(b"d/later", TarKind::Symlink, Some(b".."), 0).expect_err("d/early now leads outside");
        assert!(e.reason.contains("d/early"), "{e}");
        // Loops are refused, not followed forever.
        let mut g = TarGuard::new();
        assert!(g.admit(b"p", TarKind::Symlink, Some(b"q"), 0).is_ok());
        assert!(g.admit(b"q", TarKind::Symlink, Some(b"p/x"), 0).is_err());
        assert!(g.admit(b"self", TarKind::Symlink, Some(b"self"), 0).is_err());
        assert!(g.admit(b"d/self", TarKind::Symlink, Some(b"../d/self/x"), 0).is_err());
    }
}
