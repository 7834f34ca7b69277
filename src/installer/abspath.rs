//! Paths as `--json` reports them: absolute, with `.` and `..` removed.
//!
//! [`normalise`] is lexical, like `cd -L` or Go's `filepath.Abs`, with one
//! exception that keeps it honest: a `..` that follows a symlink is
//! resolved through the link (the kernel's meaning of `link/..` is the
//! parent of the link's target, not the directory holding the link). No
//! other symlink is followed, so a path keeps the spelling its user chose.
//! [`normal_source`] does the same to the path of an `oci-layout:`
//! reference and leaves every other reference as it is.

use std::path::{Component, Path, PathBuf};

use crate::source::reference::{self, Selector, SourceRef, LAYOUT_SCHEME};

/// `p` made absolute (against the current directory) with `.` and `..`
/// removed. A `..` after a symlink is resolved through it (see the module
/// doc); `..` at the root stays at the root. If the current directory
/// cannot be read, a relative `p` is returned as it is.
pub fn normalise(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(p),
            Err(_) => return p.to_path_buf(),
        }
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                let is_link = std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    if let Ok(target) = std::fs::canonicalize(&out) {
                        out = target;
                    }
                }
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// `oci-layout:PATH[:TAG|@DIGEST]` with PATH [`normalise`]d; any other
/// reference (a registry's, or one that does not parse) unchanged. A
/// directory whose own name holds `:` or `@` keeps the `/.` that the
/// reference grammar needs to read it as a path; if the rewritten
/// reference would not parse to the same layout and selector, the
/// original is kept.
pub fn normal_source(source: &str) -> String {
    let Ok(SourceRef::Layout { path, selector }) = reference::parse(source) else {
        return source.to_string();
    };
    let abs = normalise(&path);
    let mut shown = abs.display().to_string();
    if abs.file_name().is_some_and(|n| n.to_string_lossy().contains([':', '@'])) {
        shown.push_str("/.");
    }
    let rewritten = match &selector {
        Selector::Tag(t) => format!("{LAYOUT_SCHEME}{shown}:{t}"),
        Selector::Digest(d) => format!("{LAYOUT_SCHEME}{shown}@{d}"),
        Selector::Only => format!("{LAYOUT_SCHEME}{shown}"),
    };
    match reference::parse(&rewritten) {
        Ok(SourceRef::Layout { path: p2, selector: s2 }) if s2 == selector && normalise(&p2) == abs => rewritten,
        _ => source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_removed_lexically() {
        assert_eq!(normalise(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(normalise(Path::new("/a/b/../../..")), Path::new("/"));
        assert_eq!(normalise(Path::new("/a//b/")), Path::new("/a/b"));
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(normalise(Path::new("x/../y")), cwd.join("y"));
        assert_eq!(normalise(Path::new(".")), cwd);
        assert_eq!(normalise(Path::new("..")), cwd.parent().unwrap_or(&cwd));
    }

    #[test]
    fn a_dot_dot_after_a_symlink_goes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(root.join("real/inner"), root.join("link")).unwrap();
        // link/.. is real, not root; a link not followed by `..` is kept.
        assert_eq!(normalise(&root.join("link/../x")), root.join("real/x"));
        assert_eq!(normalise(&root.join("link/./y")), root.join("link/y"));
    }

    #[test]
    fn layout_references_get_an_absolute_path_and_keep_their_selector() {
        let cwd = std::env::current_dir().unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normal_source("oci-layout:/p/../ex/demo:v1"), "oci-layout:/ex/demo:v1");
        assert_eq!(
            normal_source(&format!("oci-layout:ex/./demo@{d}")),
            format!("oci-layout:{}/ex/demo@{d}", cwd.display())
        );
        assert_eq!(normal_source("oci-layout:ex/demo"), format!("oci-layout:{}/ex/demo", cwd.display()));
        // A directory named with a colon keeps the `/.` that marks it a path.
        assert_eq!(normal_source("oci-layout:/x/a:b/."), "oci-layout:/x/a:b/.");
        assert_eq!(normal_source("oci-layout:/x/y/../a:b/.:v2"), "oci-layout:/x/a:b/.:v2");
        // Registry references and nonsense are left alone.
        assert_eq!(normal_source("localhost:5000/demo:v1"), "localhost:5000/demo:v1");
        assert_eq!(normal_source("oci-layout:"), "oci-layout:");
    }
}
