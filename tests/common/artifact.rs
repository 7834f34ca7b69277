//! Artifacts built in the tests: raw tar archives written header by header
//! (so `..`, absolute names and devices survive), compressed layers, OCI
//! image layouts (a copy of the demo with one layer replaced, small
//! file/tar layouts, and a [`LayoutBuilder`] for indexes and platforms).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::demo::{demo_digest, demo_layout};
use super::tree::{remove_if_exists, sha256_hex};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One raw tar entry. `name` and `link` are written byte for byte into the
/// header, so `..` and absolute names survive.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            mode: 0o644,
            data: data.to_vec(),
            link: Vec::new(),
            dev: (0, 0),
        }
    }
    pub fn dir(name: &str) -> RawEntry {
        RawEntry { kind: tar::EntryType::Directory, mode: 0o755, ..RawEntry::file(name, b"") }
    }
    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            link: target.as_bytes().to_vec(),
            ..RawEntry::file(name, b"")
        }
    }
    pub fn hardlink(name: &str, target: &str) -> RawEntry {
        RawEntry { kind: tar::EntryType::Link, link: target.as_bytes().to_vec(), ..RawEntry::file(name, b"") }
    }
    pub fn char_device(name: &str, major: u32, minor: u32) -> RawEntry {
        RawEntry { kind: tar::EntryType::Char, mode: 0o666, dev: (major, minor), ..RawEntry::file(name, b"") }
    }
}

/// A tar archive of `entries`, headers written by hand.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        assert!(e.name.len() < 100, "raw tar name too long: {:?}", String::from_utf8_lossy(&e.name));
        assert!(e.link.len() < 100, "raw tar link too long");
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(&e.name);
            old.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if e.kind == tar::EntryType::Char || e.kind == tar::EntryType::Block {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Compresses a tar for a layer of `media_type` (`+gzip`, `+zstd` or plain).
pub fn encode_layer(media_type: &str, tar: &[u8]) -> Vec<u8> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(tar).unwrap();
        enc.finish().unwrap()
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        zstd::encode_all(tar, 3).unwrap()
    } else {
        tar.to_vec()
    }
}

/// Stores `bytes` as a blob of the layout at `layout`; returns its digest
/// (`sha256:…`) and size.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hexd = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hexd), bytes).unwrap();
    (format!("sha256:{hexd}"), bytes.len())
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    put_blob(layout, bytes).0
}

/// Writes an OCI layout at `out` holding one manifest tagged `tag`: a copy
/// of the demo's `v1` manifest whose first tar layer is replaced by `tar`
/// (compressed as the original was). Every other layer and the config are
/// copied as they are, so the layout follows the demo's conventions exactly.
/// Returns the `oci-layout:` source string.
pub fn hostile_demo_layout(out: &Path, tag: &str, tar: &[u8]) -> String {
    hostile_demo_layout_with(out, tag, &|mt| encode_layer(mt, tar))
}

/// [`hostile_demo_layout`] with the replaced layer's bytes made by `encode`
/// from its media type (e.g. a tar bomb streamed into gzip, never held whole).
pub fn hostile_demo_layout_with(out: &Path, tag: &str, encode: &dyn Fn(&str) -> Vec<u8>) -> String {
    demo_variant_layout(out, &[("v1", tag, encode)]);
    format!("oci-layout:{}:{tag}", out.display())
}

/// One version of a [`demo_variant_layout`]: the demo tag whose manifest is
/// copied, the tag it gets, and the bytes of its replaced tar layer made
/// from that layer's media type.
pub type DemoVariant<'a> = (&'a str, &'a str, &'a dyn Fn(&str) -> Vec<u8>);

/// Writes an OCI layout at `out` with one manifest per [`DemoVariant`]: a
/// copy of that demo version's manifest whose first tar layer is replaced
/// (every other layer and the config copied as they are).
pub fn demo_variant_layout(out: &Path, versions: &[DemoVariant]) {
    let demo = demo_layout();
    let blob = |d: &str| demo.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    remove_if_exists(out);
    fs::create_dir_all(out).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut index = Vec::new();
    for (from, tag, encode) in versions {
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(&demo_digest(from))).unwrap()).unwrap();
        let cfg = manifest["config"]["digest"].as_str().unwrap().to_string();
        write_blob(out, &fs::read(blob(&cfg)).unwrap());
        let mut replaced = false;
        for layer in manifest["layers"].as_array_mut().expect("manifest has layers") {
            let d = layer["digest"].as_str().unwrap().to_string();
            let mt = layer["mediaType"].as_str().unwrap_or("").to_string();
            if !replaced && mt.contains("tar") {
                let bytes = encode(&mt);
                layer["digest"] = serde_json::Value::String(write_blob(out, &bytes));
                layer["size"] = serde_json::Value::from(bytes.len() as u64);
                replaced = true;
            } else {
                write_blob(out, &fs::read(blob(&d)).unwrap());
            }
        }
        assert!(replaced, "the demo {from} manifest has no tar layer to replace: {manifest}");
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        index.push(serde_json::json!({
            "mediaType": manifest["mediaType"].as_str().unwrap_or(MT_MANIFEST),
            "digest": write_blob(out, &mbytes),
            "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": index});
    fs::write(out.join("index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// A tar of the tree at `dir` made read-only: directories 0555, files 0444
/// (0555 if executable), symlinks as they are; parents before children.
pub fn read_only_tar_of(dir: &Path) -> Vec<u8> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<RawEntry>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let rel = format!("{prefix}{}", name.to_string_lossy());
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push(RawEntry::symlink(&rel, &fs::read_link(&p).unwrap().to_string_lossy()));
            } else if meta.is_dir() {
                out.push(RawEntry { mode: 0o555, ..RawEntry::dir(&format!("{rel}/")) });
                walk(&p, &format!("{rel}/"), out);
            } else {
                let mode = if meta.permissions().mode() & 0o111 != 0 { 0o555 } else { 0o444 };
                out.push(RawEntry { mode, ..RawEntry::file(&rel, &fs::read(&p).unwrap()) });
            }
        }
    }
    let mut entries = Vec::new();
    walk(dir, "", &mut entries);
    raw_tar(&entries)
}

/// The relative path bytes of a path, for raw tar names.
pub fn path_str(p: &Path) -> &str {
    std::str::from_utf8(p.as_os_str().as_bytes()).unwrap()
}

/// One version of a file layout: its tag and its (title, bytes) files.
pub type FileVersion<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);

/// Writes an OCI layout at `out` with one manifest per `(tag, files)`, each
/// file one title-annotated `application/octet-stream` layer (so each file
/// becomes one file target, placed by `--map GLOB=DIR`).
pub fn make_file_layout(out: &Path, versions: &[FileVersion]) {
    let versions: Vec<_> = versions.iter().map(|(t, f)| (*t, None, f.clone())).collect();
    make_layout(out, &versions);
}

/// An uncompressed tar of regular files `(relative path, bytes)`, mode 0644,
/// parent directories first.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (rel, _) in files {
        let mut p = Path::new(rel).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (rel, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, rel, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// One version of a layout: its tag, an optional tar layer, its (title, bytes) files.
pub type LayoutVersion<'a> = (&'a str, Option<Vec<u8>>, Vec<(&'a str, Vec<u8>)>);

/// Like [`make_file_layout`], with an optional uncompressed tar layer first
/// in each manifest (placed by `--to DIR`), as the demo has.
pub fn make_layout(out: &Path, versions: &[LayoutVersion]) {
    remove_if_exists(out);
    fs::create_dir_all(out).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (cfg, cfg_size) = put_blob(out, b"{}");
    let mut index = Vec::new();
    for (tag, tar, files) in versions {
        let mut layers: Vec<serde_json::Value> = Vec::new();
        if let Some(tar) = tar {
            let (d, s) = put_blob(out, tar);
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                "size": s}));
        }
        layers.extend(files.iter().map(|(title, bytes)| {
            let (d, s) = put_blob(out, bytes);
            serde_json::json!({"mediaType": "application/octet-stream", "digest": d, "size": s,
                "annotations": {"org.opencontainers.image.title": title}})
        }));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg, "size": cfg_size},
            "layers": layers,
        });
        let (d, s) = put_blob(out, &serde_json::to_vec(&manifest).unwrap());
        index.push(serde_json::json!({"mediaType": MT_MANIFEST, "digest": d,
            "size": s, "annotations": {"org.opencontainers.image.ref.name": tag}}));
    }
    let idx = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": index});
    fs::write(out.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// An OCI image layout under construction.
pub struct LayoutBuilder {
    pub dir: PathBuf,
    entries: Vec<serde_json::Value>,
}

impl LayoutBuilder {
    pub fn new(dir: &Path) -> LayoutBuilder {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        let b = LayoutBuilder { dir: dir.to_path_buf(), entries: Vec::new() };
        b.write_index();
        b
    }

    /// Stores a blob; returns its descriptor (without annotations).
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let (digest, size) = put_blob(&self.dir, bytes);
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
    }

    /// A manifest whose layers are plain files with titles.
    pub fn file_manifest(&self, files: &[(&str, &[u8])]) -> serde_json::Value {
        let layers: Vec<serde_json::Value> = files
            .iter()
            .map(|(title, bytes)| {
                let mut d = self.blob("application/octet-stream", bytes);
                d["annotations"] = serde_json::json!({"org.opencontainers.image.title": title});
                d
            })
            .collect();
        self.manifest(&layers)
    }

    /// A manifest with these layer descriptors (and an empty config).
    pub fn manifest(&self, layers: &[serde_json::Value]) -> serde_json::Value {
        let config = self.blob("application/vnd.oci.empty.v1+json", b"{}");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": "application/vnd.stagehand.test.v1",
            "config": config,
            "layers": layers,
        });
        self.blob(MT_MANIFEST, &serde_json::to_vec(&manifest).expect("json"))
    }

    /// An image index over `(platform os, arch, manifest descriptor)`.
    pub fn index(&self, entries: &[(&str, &str, serde_json::Value)]) -> serde_json::Value {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, desc)| {
                let mut d = desc.clone();
                d["platform"] = serde_json::json!({"os": os, "architecture": arch});
                d
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        self.blob(MT_INDEX, &serde_json::to_vec(&index).expect("json"))
    }

    /// Tags `desc` in index.json.
    pub fn tag(&mut self, tag: &str, desc: &serde_json::Value) {
        let mut d = desc.clone();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.entries.push(d);
        self.write_index();
    }

    fn write_index(&self) {
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.entries});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index.json");
    }
}

/// `len` bytes from a fixed xorshift stream (incompressible, reproducible).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `bytes`, gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, bytes).expect("gzip");
    enc.finish().expect("gzip")
}
