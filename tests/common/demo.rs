//! The demo artifact (`examples/demo`, built from `examples/src/demo/<ver>/`):
//! where it is, how the tests install it, and the worlds a destination must
//! show with each version installed, computed straight from the sources.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::tree::{hash_tree, node_of, tree_diff, Node, Tree};

/// Name the demo package gets by default (the layout dir's last component).
pub const DEMO: &str = "demo";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo OCI image layout (tags `v1` and `v2`).
pub fn demo_layout() -> PathBuf {
    repo_root().join("examples/demo")
}

/// The source tree a demo version was built from.
pub fn demo_src(ver: &str) -> PathBuf {
    repo_root().join("examples/src/demo").join(ver)
}

/// `oci-layout:/abs/examples/demo:TAG`
pub fn demo_source(tag: &str) -> String {
    format!("oci-layout:{}:{tag}", demo_layout().display())
}

/// The manifest digest (`sha256:…`) a tag points to in an OCI layout's
/// index.json, read directly from the file.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let index_path = layout.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap_or_else(|e| panic!("read {}: {e}", index_path.display())))
            .unwrap_or_else(|e| panic!("parse {}: {e}", index_path.display()));
    let manifests =
        index["manifests"].as_array().unwrap_or_else(|| panic!("{}: no manifests array", index_path.display()));
    for m in manifests {
        if m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag) {
            return m["digest"].as_str().expect("digest is a string").to_string();
        }
    }
    panic!("{}: no manifest tagged {tag:?}", index_path.display());
}

pub fn demo_digest(tag: &str) -> String {
    layout_tag_digest(&demo_layout(), tag)
}

/// The `install` arguments for the demo layout: the app tree goes to
/// DEST/app, `*.so` to DEST/lib, the extension's control and SQL files to
/// DEST/share/extension. The one place to change if the CLI's mapping
/// syntax differs.
pub fn demo_install_args(dest: &Path, source: &str) -> Vec<OsString> {
    let map = |glob: &str, dir: &str| -> OsString {
        let mut s = OsString::from(format!("{glob}="));
        s.push(dest.join(dir));
        s
    };
    vec![
        "install".into(),
        source.into(),
        "--to".into(),
        dest.join("app").into(),
        "--map".into(),
        map("*.so", "lib"),
        "--map".into(),
        map("*.control", "share/extension"),
        "--map".into(),
        map("*.sql", "share/extension"),
    ]
}

/// Where a file of the demo's `files/` dir lands, relative to DEST.
pub fn demo_file_dest(file_name: &str) -> String {
    if file_name.ends_with(".so") {
        format!("lib/{file_name}")
    } else {
        format!("share/extension/{file_name}")
    }
}

/// Target paths (relative to DEST) that demo `ver` installs.
pub fn demo_targets_rel(ver: &str) -> BTreeSet<String> {
    let mut t = BTreeSet::new();
    t.insert("app".to_string());
    for e in
        fs::read_dir(demo_src(ver).join("files")).unwrap_or_else(|e| panic!("read examples/src/demo/{ver}/files: {e}"))
    {
        t.insert(demo_file_dest(&e.unwrap().file_name().to_string_lossy()));
    }
    t
}

/// Absolute target paths that demo `ver` installs under `dest`.
pub fn demo_targets_abs(dest: &Path, ver: &str) -> BTreeSet<String> {
    demo_targets_rel(ver).iter().map(|r| dest.join(r).to_string_lossy().into_owned()).collect()
}

/// The world `base` becomes once demo `ver` is installed over it (every
/// target of any demo version replaced).
pub fn demo_world(base: &Tree, ver: Option<&str>) -> Tree {
    let mut w = without_demo(base);
    if let Some(ver) = ver {
        let src = demo_src(ver);
        w.insert("app".to_string(), Node::Dir);
        for (rel, node) in hash_tree(&src.join("app")) {
            w.insert(format!("app/{rel}"), node);
        }
        for e in fs::read_dir(src.join("files")).unwrap() {
            let e = e.unwrap();
            let rel = demo_file_dest(&e.file_name().to_string_lossy());
            w.insert(rel, node_of(&e.path()).unwrap());
        }
        add_ancestors(&mut w);
    }
    w
}

/// `base` without anything a demo version installs (the app tree and every
/// `files/` entry of v1 and v2).
pub fn without_demo(base: &Tree) -> Tree {
    let mut rels = BTreeSet::new();
    for ver in ["v1", "v2"] {
        if demo_src(ver).exists() {
            rels.extend(demo_targets_rel(ver));
        }
    }
    base.iter()
        .filter(|(k, _)| !rels.iter().any(|r| *k == r || k.starts_with(&format!("{r}/"))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Adds every missing ancestor directory of the tree's entries.
pub fn add_ancestors(w: &mut Tree) {
    let keys: Vec<String> = w.keys().cloned().collect();
    for k in keys {
        let mut p = k.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            w.entry(parent.to_string()).or_insert(Node::Dir);
            p = parent;
        }
    }
}

/// Drops directory entries that are ancestors of a demo target (`lib`,
/// `share`, `share/extension`) and hold nothing else: whether an installer
/// leaves an empty parent directory behind after a rollback is not part of
/// the content claim.
pub fn normalize(w: &Tree) -> Tree {
    let mut out = w.clone();
    loop {
        let empty_dirs: Vec<String> = out
            .iter()
            .filter(|(k, v)| {
                **v == Node::Dir
                    && matches!(k.as_str(), "lib" | "share" | "share/extension")
                    && !out.keys().any(|o| o.starts_with(&format!("{k}/")))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if empty_dirs.is_empty() {
            return out;
        }
        for k in empty_dirs {
            out.remove(&k);
        }
    }
}

/// Which of two expected worlds the actual one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Old,
    New,
}

/// Classifies `actual` as exactly `old` or exactly `new` (after
/// [`normalize`]); `Err` with both diffs otherwise.
pub fn classify(actual: &Tree, old: &Tree, new: &Tree) -> Result<Which, String> {
    let (a, o, n) = (normalize(actual), normalize(old), normalize(new));
    if a == o {
        Ok(Which::Old)
    } else if a == n {
        Ok(Which::New)
    } else {
        Err(format!(
            "world is neither the old nor the new one\nvs OLD:\n{}\nvs NEW:\n{}",
            tree_diff(&a, &o, 25),
            tree_diff(&a, &n, 25)
        ))
    }
}

/// Which demo version (if any) `actual` is, among `candidates` (version →
/// expected world), after [`normalize`].
pub fn which_world<'a>(actual: &Tree, candidates: &[(Option<&'a str>, &Tree)]) -> Result<Option<&'a str>, String> {
    let a = normalize(actual);
    for (v, w) in candidates {
        if a == normalize(w) {
            return Ok(*v);
        }
    }
    let mut msg = String::from("the world is none of the expected ones");
    for (v, w) in candidates {
        msg.push_str(&format!("\nvs {v:?}:\n{}", tree_diff(&a, &normalize(w), 12)));
    }
    Err(msg)
}
