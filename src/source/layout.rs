//! Reading artifacts from an OCI image layout directory on the local disk.
//!
//! This module owns the layout's structure (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`): choosing a manifest by tag, digest or "the only
//! one", following a nested index to the host platform's manifest, and
//! opening blobs as digest-verified streams. It only ever reads: it never
//! writes into the layout or anywhere else, and it never turns a digest into
//! a path before [`validate_digest`] has accepted it.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::manifest::{
    digest_hex, is_index_media_type, is_manifest_media_type, parse_index, parse_manifest, validate_digest, ImageIndex,
};
use super::verify::{blob_label, into_source_error, VerifyingReader};
use super::{
    BlobSource, Descriptor, Platform, ResolvedArtifact, Selector, SourceError, ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES,
};

/// Name of the layout marker file.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// Name of the layout's top-level index.
pub const INDEX_FILE: &str = "index.json";
/// The only `imageLayoutVersion` we understand.
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";
/// Largest `oci-layout` marker file we read.
const MAX_LAYOUT_MARKER_BYTES: u64 = 64 * 1024;
/// Buffer size for blob reads.
const BLOB_BUFFER_BYTES: usize = 64 * 1024;

/// An OCI image layout directory, checked to be one when opened.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

impl OciLayout {
    /// Opens the layout at `path`: it must be a directory holding an
    /// `oci-layout` file with `imageLayoutVersion` `1.0.0` and an `index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let root = path.as_ref().to_path_buf();
        let not_a_layout = |reason: String| SourceError::NotALayout { path: root.display().to_string(), reason };
        match fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(not_a_layout("not a directory".to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_a_layout("no such directory".to_string())),
            Err(e) => return Err(not_a_layout(format!("cannot read it: {e}"))),
        }
        let marker_path = root.join(OCI_LAYOUT_FILE);
        let marker = match read_capped(&marker_path, MAX_LAYOUT_MARKER_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_layout(format!("no {OCI_LAYOUT_FILE} file")))
            }
            Err(e) => return Err(not_a_layout(format!("cannot read {OCI_LAYOUT_FILE}: {e}"))),
        };
        let marker: LayoutMarker = serde_json::from_slice(&marker)
            .map_err(|e| not_a_layout(format!("{OCI_LAYOUT_FILE} is not valid: {e}")))?;
        if marker.image_layout_version != IMAGE_LAYOUT_VERSION {
            return Err(not_a_layout(format!(
                "imageLayoutVersion is {:?}, expected {IMAGE_LAYOUT_VERSION:?}",
                marker.image_layout_version
            )));
        }
        if !root.join(INDEX_FILE).is_file() {
            return Err(not_a_layout(format!("no {INDEX_FILE} file")));
        }
        Ok(OciLayout { root })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and validates the top-level `index.json`.
    pub fn index(&self) -> Result<ImageIndex, SourceError> {
        let path = self.root.join(INDEX_FILE);
        let what = path.display().to_string();
        let bytes = read_capped(&path, MAX_MANIFEST_BYTES).map_err(|e| io_error(&what, e))?;
        parse_index(&bytes, &what)
    }

    /// The tags (`org.opencontainers.image.ref.name`) in `index.json`,
    /// sorted and without duplicates.
    pub fn tags(&self) -> Result<Vec<String>, SourceError> {
        Ok(tags_of(&self.index()?))
    }

    /// Picks the manifest `sel` names, following a nested index to the host
    /// platform, and returns it parsed and verified against its digest.
    pub fn resolve(&self, sel: &Selector, display: &str) -> Result<ResolvedArtifact, SourceError> {
        self.resolve_for_platform(sel, display, &host_platform())
    }

    /// Like [`resolve`](Self::resolve), for a given platform instead of the host's.
    pub fn resolve_for_platform(
        &self,
        sel: &Selector,
        display: &str,
        platform: &Platform,
    ) -> Result<ResolvedArtifact, SourceError> {
        let index = self.index()?;
        let entry = self.select(&index, sel)?;
        let (manifest_desc, index_digest) = if is_index_media_type(&entry.media_type) {
            let what = format!("index {} in {}", entry.digest, self.name());
            let bytes = self.read_small_blob(&entry, &what)?;
            let nested = parse_index(&bytes, &what)?;
            (pick_platform(&nested, platform, &what)?, Some(entry.digest))
        } else {
            (entry, None)
        };
        let what = format!("manifest {} in {}", manifest_desc.digest, self.name());
        if !is_manifest_media_type(&manifest_desc.media_type) {
            return Err(SourceError::Malformed {
                what,
                reason: format!(
                    "its descriptor has mediaType {:?}, which is neither an image manifest nor an index",
                    manifest_desc.media_type
                ),
            });
        }
        let bytes = self.read_small_blob(&manifest_desc, &what)?;
        let manifest = parse_manifest(&bytes, &what)?;
        Ok(ResolvedArtifact {
            display: display.to_string(),
            manifest_digest: manifest_desc.digest,
            manifest,
            index_digest,
            signer: None,
        })
    }

    /// Where the blob with `digest` lives; refuses invalid digests, so the
    /// result always stays inside `blobs/sha256/`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, SourceError> {
        validate_digest(digest)?;
        Ok(self.root.join("blobs").join("sha256").join(digest_hex(digest)))
    }

    fn name(&self) -> String {
        self.root.display().to_string()
    }

    /// The top-level index entry `sel` names.
    fn select(&self, index: &ImageIndex, sel: &Selector) -> Result<Descriptor, SourceError> {
        let layout = self.name();
        let matches: Vec<&Descriptor> = match sel {
            Selector::Tag(tag) => {
                let found: Vec<&Descriptor> =
                    index.manifests.iter().filter(|d| d.annotations.get(ANNOTATION_REF_NAME) == Some(tag)).collect();
                if found.is_empty() {
                    let tags = tags_of(index);
                    let available = if tags.is_empty() { "none".to_string() } else { tags.join(", ") };
                    return Err(SourceError::TagNotFound { tag: tag.clone(), layout, available });
                }
                found
            }
            Selector::Digest(digest) => {
                validate_digest(digest)?;
                let found: Vec<&Descriptor> = index.manifests.iter().filter(|d| &d.digest == digest).collect();
                if found.is_empty() {
                    return self.unlisted_manifest(index, digest);
                }
                found
            }
            Selector::Only => {
                if index.manifests.is_empty() {
                    return Err(SourceError::NotALayout {
                        path: layout,
                        reason: format!("{INDEX_FILE} lists no manifests"),
                    });
                }
                index.manifests.iter().collect()
            }
        };
        // Several entries for one digest (e.g. two tags) are one manifest.
        let mut digests: Vec<&str> = matches.iter().map(|d| d.digest.as_str()).collect();
        digests.sort_unstable();
        digests.dedup();
        match (matches.first(), digests.len()) {
            (Some(first), 1) => Ok((*first).clone()),
            (_, count) => Err(SourceError::Ambiguous { layout, count }),
        }
    }

    /// A manifest the top-level index does not list, by digest: one an
    /// index it lists names (a platform's manifest, as a lock file pins
    /// it), else a manifest blob still in `blobs/` after its tag moved (a
    /// lock file pins the old one). The blob is read whole, its digest
    /// checked, and it must be a manifest or an index.
    fn unlisted_manifest(&self, index: &ImageIndex, digest: &str) -> Result<Descriptor, SourceError> {
        let not_found = || SourceError::DigestNotFound { digest: digest.to_string(), layout: self.name() };
        for entry in index.manifests.iter().filter(|d| is_index_media_type(&d.media_type)) {
            let what = format!("index {} in {}", entry.digest, self.name());
            let nested = parse_index(&self.read_small_blob(entry, &what)?, &what)?;
            if let Some(d) = nested.manifests.into_iter().find(|d| d.digest == digest) {
                return Ok(d);
            }
        }
        let size = match fs::symlink_metadata(self.blob_path(digest)?) {
            Ok(m) if m.is_file() && m.len() <= MAX_MANIFEST_BYTES => m.len(),
            _ => return Err(not_found()),
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct MediaTypeOnly {
            #[serde(default)]
            media_type: String,
        }
        let mut desc = Descriptor {
            media_type: String::new(),
            digest: digest.to_string(),
            size,
            annotations: Default::default(),
            platform: None,
        };
        let bytes = self.read_small_blob(&desc, &format!("blob {digest} in {}", self.name()))?;
        desc.media_type = match serde_json::from_slice::<MediaTypeOnly>(&bytes) {
            Ok(m) if is_manifest_media_type(&m.media_type) || is_index_media_type(&m.media_type) => m.media_type,
            _ => return Err(not_found()),
        };
        Ok(desc)
    }

    /// Reads a manifest or index blob whole, refusing anything over
    /// [`MAX_MANIFEST_BYTES`] before reading it, and verifying its digest.
    pub(crate) fn read_small_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, SourceError> {
        if desc.size > MAX_MANIFEST_BYTES {
            return Err(SourceError::Malformed {
                what: what.to_string(),
                reason: format!("descriptor says {} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit", desc.size),
            });
        }
        let mut reader = self.open_blob(desc)?;
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| into_source_error(e, what))?;
        Ok(bytes)
    }
}

impl BlobSource for OciLayout {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, SourceError> {
        let path = self.blob_path(&desc.digest)?;
        let what = path.display().to_string();
        // Check the metadata before opening, so a FIFO planted in the layout
        // cannot block us in `open`.
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::BlobMissing { digest: desc.digest.clone(), layout: self.name() })
            }
            Err(e) => return Err(io_error(&what, e)),
        };
        if !meta.is_file() {
            return Err(io_error(&what, io::Error::new(io::ErrorKind::InvalidData, "not a regular file")));
        }
        if meta.len() != desc.size {
            return Err(SourceError::SizeMismatch { what: blob_label(desc), expected: desc.size, actual: meta.len() });
        }
        let file = File::open(&path).map_err(|e| io_error(&what, e))?;
        let buffered = BufReader::with_capacity(BLOB_BUFFER_BYTES, file);
        Ok(Box::new(VerifyingReader::for_descriptor(buffered, desc)))
    }
}

/// The host's platform in OCI terms (`linux`/`amd64`, `linux`/`arm64`, …).
pub fn host_platform() -> Platform {
    Platform {
        architecture: oci_arch(std::env::consts::ARCH).to_string(),
        os: oci_os(std::env::consts::OS).to_string(),
        variant: None,
    }
}

/// Maps a Rust `target_arch` name to the OCI (Go `GOARCH`) name.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Maps a Rust `target_os` name to the OCI (Go `GOOS`) name.
pub fn oci_os(rust_os: &str) -> &str {
    match rust_os {
        "macos" => "darwin",
        other => other,
    }
}

/// The entry of a nested index for `platform`. An entry matches on os and
/// architecture; if `platform` names a variant, the entry's variant must be
/// that one or absent.
fn pick_platform(index: &ImageIndex, platform: &Platform, what: &str) -> Result<Descriptor, SourceError> {
    let found = index.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant.is_none() || p.variant == platform.variant)
        })
    });
    if let Some(desc) = found {
        return Ok(desc.clone());
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .map(|d| d.platform.as_ref().map_or_else(|| "unspecified".to_string(), platform_name))
        .collect();
    Err(SourceError::PlatformNotFound {
        index: what.to_string(),
        wanted: platform_name(platform),
        available: if available.is_empty() { "none".to_string() } else { available.join(", ") },
    })
}

/// `os/architecture[/variant]`.
pub fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

fn tags_of(index: &ImageIndex) -> Vec<String> {
    let mut tags: Vec<String> =
        index.manifests.iter().filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).cloned()).collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Reads a whole file, failing with `InvalidData` if it is over `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than the {cap}-byte limit")));
    }
    Ok(bytes)
}

fn io_error(what: &str, source: io::Error) -> SourceError {
    SourceError::Io { what: what.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::verify::drain;
    use crate::source::{ANNOTATION_TITLE, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
    use sha2::{Digest as _, Sha256};
    use std::collections::BTreeMap;

    /// A layout under construction in a temp dir.
    struct Fixture {
        dir: tempfile::TempDir,
        entries: Vec<Descriptor>,
    }

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
            fs::write(dir.path().join(OCI_LAYOUT_FILE), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
            let f = Fixture { dir, entries: Vec::new() };
            f.write_index();
            f
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
            let digest = digest_of(bytes);
            fs::write(self.path().join("blobs/sha256").join(digest_hex(&digest)), bytes).unwrap();
            Descriptor {
                media_type: media_type.to_string(),
                digest,
                size: bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            }
        }

        fn titled(&self, title: &str, bytes: &[u8]) -> Descriptor {
            let mut d = self.blob("application/octet-stream", bytes);
            d.annotations.insert(ANNOTATION_TITLE.into(), title.into());
            d
        }

        fn manifest(&self, layers: &[Descriptor]) -> Descriptor {
            let config = self.blob("application/vnd.oci.empty.v1+json", b"{}");
            let json = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "artifactType": "application/vnd.stagehand.test.v1",
                "config": config,
                "layers": layers,
            });
            self.blob(MEDIA_TYPE_MANIFEST, json.to_string().as_bytes())
        }

        fn nested_index(&self, entries: &[Descriptor]) -> Descriptor {
            let json = serde_json::json!({
                "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries,
            });
            self.blob(MEDIA_TYPE_INDEX, json.to_string().as_bytes())
        }

        fn add(&mut self, mut entry: Descriptor, tag: Option<&str>) -> Descriptor {
            if let Some(t) = tag {
                entry.annotations.insert(ANNOTATION_REF_NAME.into(), t.into());
            }
            self.entries.push(entry.clone());
            self.write_index();
            entry
        }

        fn write_index(&self) {
            let json = serde_json::json!({
                "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": self.entries,
            });
            fs::write(self.path().join(INDEX_FILE), json.to_string()).unwrap();
        }

        fn open(&self) -> OciLayout {
            OciLayout::open(self.path()).unwrap()
        }
    }

    fn with_platform(mut d: Descriptor, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        d.platform = Some(Platform { os: os.into(), architecture: arch.into(), variant: variant.map(String::from) });
        d
    }

    fn platform(os: &str, arch: &str) -> Platform {
        Platform { os: os.into(), architecture: arch.into(), variant: None }
    }

    fn read_blob(layout: &OciLayout, d: &Descriptor) -> io::Result<Vec<u8>> {
        let mut r = layout.open_blob(d).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn not_a_layout_reason(path: &Path) -> String {
        match OciLayout::open(path) {
            Err(SourceError::NotALayout { reason, .. }) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_checks_marker_and_index() {
        let f = Fixture::new();
        assert_eq!(f.open().root(), f.path());

        assert!(not_a_layout_reason(&f.path().join("nope")).contains("no such directory"));
        assert!(not_a_layout_reason(&f.path().join(INDEX_FILE)).contains("not a directory"));

        fs::write(f.path().join(OCI_LAYOUT_FILE), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
        assert!(not_a_layout_reason(f.path()).contains("imageLayoutVersion is \"2.0.0\""));
        fs::write(f.path().join(OCI_LAYOUT_FILE), "garbage").unwrap();
        assert!(not_a_layout_reason(f.path()).contains("is not valid"));
        fs::remove_file(f.path().join(OCI_LAYOUT_FILE)).unwrap();
        assert!(not_a_layout_reason(f.path()).contains("no oci-layout file"));

        fs::write(f.path().join(OCI_LAYOUT_FILE), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::remove_file(f.path().join(INDEX_FILE)).unwrap();
        assert!(not_a_layout_reason(f.path()).contains("no index.json"));
    }

    #[test]
    fn resolves_by_tag_and_lists_tags_when_missing() {
        let mut f = Fixture::new();
        let l1 = f.titled("a.so", b"one");
        let l2 = f.titled("a.so", b"two");
        let m1 = f.add(f.manifest(std::slice::from_ref(&l1)), Some("v1"));
        let m2 = f.add(f.manifest(std::slice::from_ref(&l2)), Some("v2"));
        let layout = f.open();
        assert_eq!(layout.tags().unwrap(), vec!["v1".to_string(), "v2".to_string()]);

        let r1 = layout.resolve(&Selector::Tag("v1".into()), "disp:v1").unwrap();
        assert_eq!(r1.display, "disp:v1");
        assert_eq!(r1.manifest_digest, m1.digest);
        assert_eq!(r1.manifest.layers, vec![l1]);
        let r2 = layout.resolve(&Selector::Tag("v2".into()), "x").unwrap();
        assert_eq!(r2.manifest_digest, m2.digest);
        assert_eq!(r2.manifest.layers, vec![l2]);

        match layout.resolve(&Selector::Tag("v3".into()), "x") {
            Err(SourceError::TagNotFound { tag, available, .. }) => {
                assert_eq!(tag, "v3");
                assert_eq!(available, "v1, v2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolves_by_digest() {
        let mut f = Fixture::new();
        let m1 = f.add(f.manifest(&[f.titled("a", b"1")]), Some("v1"));
        let m2 = f.add(f.manifest(&[f.titled("a", b"2")]), None);
        let layout = f.open();
        for m in [&m1, &m2] {
            let r = layout.resolve(&Selector::Digest(m.digest.clone()), "x").unwrap();
            assert_eq!(r.manifest_digest, m.digest);
        }
        let absent = digest_of(b"absent");
        assert!(matches!(layout.resolve(&Selector::Digest(absent), "x"), Err(SourceError::DigestNotFound { .. })));
        assert!(matches!(
            layout.resolve(&Selector::Digest("sha256:../../etc/passwd".into()), "x"),
            Err(SourceError::BadDigest { .. })
        ));
    }

    #[test]
    fn only_requires_exactly_one_manifest() {
        let mut f = Fixture::new();
        assert!(matches!(f.open().resolve(&Selector::Only, "x"), Err(SourceError::NotALayout { .. })));
        let m1 = f.add(f.manifest(&[f.titled("a", b"1")]), Some("v1"));
        assert_eq!(f.open().resolve(&Selector::Only, "x").unwrap().manifest_digest, m1.digest);
        // The same manifest under a second tag is still one manifest.
        f.add(m1.clone(), Some("latest"));
        assert_eq!(f.open().resolve(&Selector::Only, "x").unwrap().manifest_digest, m1.digest);
        f.add(f.manifest(&[f.titled("a", b"2")]), Some("v2"));
        assert!(matches!(f.open().resolve(&Selector::Only, "x"), Err(SourceError::Ambiguous { count: 2, .. })));
    }

    #[test]
    fn one_tag_on_two_manifests_is_ambiguous() {
        let mut f = Fixture::new();
        f.add(f.manifest(&[f.titled("a", b"1")]), Some("v1"));
        f.add(f.manifest(&[f.titled("a", b"2")]), Some("v1"));
        assert!(matches!(
            f.open().resolve(&Selector::Tag("v1".into()), "x"),
            Err(SourceError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn nested_index_picks_platform() {
        let mut f = Fixture::new();
        let amd = with_platform(f.manifest(&[f.titled("a", b"amd")]), "linux", "amd64", None);
        let arm = with_platform(f.manifest(&[f.titled("a", b"arm")]), "linux", "arm64", Some("v8"));
        let idx = f.add(f.nested_index(&[amd.clone(), arm.clone()]), Some("multi"));
        let layout = f.open();
        let sel = Selector::Tag("multi".into());
        let r = layout.resolve_for_platform(&sel, "x", &platform("linux", "amd64")).unwrap();
        assert_eq!(r.manifest_digest, amd.digest);
        let r = layout.resolve_for_platform(&sel, "x", &platform("linux", "arm64")).unwrap();
        assert_eq!(r.manifest_digest, arm.digest);
        assert_ne!(r.manifest_digest, idx.digest);
        match layout.resolve_for_platform(&sel, "x", &platform("linux", "riscv64")) {
            Err(SourceError::PlatformNotFound { wanted, available, .. }) => {
                assert_eq!(wanted, "linux/riscv64");
                assert_eq!(available, "linux/amd64, linux/arm64/v8");
            }
            other => panic!("{other:?}"),
        }
        // The host resolves whenever its platform is one of these two.
        let host = host_platform();
        if host.os == "linux" && (host.architecture == "amd64" || host.architecture == "arm64") {
            assert!(layout.resolve(&sel, "x").is_ok());
        }
    }

    /// A lock file pins a platform's manifest (inside a nested index), or a
    /// manifest whose tag has since moved: both resolve by digest; a layer
    /// blob or a missing blob does not.
    #[test]
    fn a_pinned_digest_resolves_when_the_index_does_not_list_it() {
        let mut f = Fixture::new();
        let amd = with_platform(f.manifest(&[f.titled("a", b"amd")]), "linux", "amd64", None);
        f.add(f.nested_index(std::slice::from_ref(&amd)), Some("multi"));
        let old = f.manifest(&[f.titled("a", b"old")]);
        let layer = f.titled("b", b"layer");
        let layout = f.open();
        let by = |d: &str| layout.resolve_for_platform(&Selector::Digest(d.into()), "x", &platform("linux", "amd64"));
        assert_eq!(by(&amd.digest).unwrap().manifest_digest, amd.digest);
        assert_eq!(by(&old.digest).unwrap().manifest_digest, old.digest);
        assert!(matches!(by(&layer.digest), Err(SourceError::DigestNotFound { .. })));
        assert!(matches!(by(&digest_of(b"absent")), Err(SourceError::DigestNotFound { .. })));
    }

    #[test]
    fn manifest_blob_is_verified_and_capped() {
        let mut f = Fixture::new();
        let m = f.add(f.manifest(&[f.titled("a", b"1")]), Some("v1"));
        let blob = f.path().join("blobs/sha256").join(digest_hex(&m.digest));
        let good = fs::read(&blob).unwrap();

        // Same size, one byte changed: the digest check catches it.
        let mut bad = good.clone();
        let pos = bad.iter().position(|&b| b == b'1').unwrap();
        bad[pos] = b'3';
        fs::write(&blob, &bad).unwrap();
        match f.open().resolve(&Selector::Tag("v1".into()), "x") {
            Err(SourceError::DigestMismatch { expected, actual, .. }) => {
                assert_eq!(expected, m.digest);
                assert_eq!(actual, digest_of(&bad));
            }
            other => panic!("{other:?}"),
        }

        fs::remove_file(&blob).unwrap();
        assert!(matches!(f.open().resolve(&Selector::Tag("v1".into()), "x"), Err(SourceError::BlobMissing { .. })));

        let mut huge = m.clone();
        huge.size = MAX_MANIFEST_BYTES + 1;
        f.entries = vec![];
        f.add(huge, Some("huge"));
        match f.open().resolve(&Selector::Tag("huge".into()), "x") {
            Err(SourceError::Malformed { reason, .. }) => {
                assert!(reason.contains("limit"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_manifest_entries_are_refused() {
        let mut f = Fixture::new();
        f.add(f.titled("x", b"not a manifest"), Some("v1"));
        match f.open().resolve(&Selector::Tag("v1".into()), "x") {
            Err(SourceError::Malformed { reason, .. }) => {
                assert!(reason.contains("mediaType"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_blob_verifies_content() {
        let f = Fixture::new();
        let d = f.titled("a.so", b"0123456789");
        let layout = f.open();
        assert_eq!(read_blob(&layout, &d).unwrap(), b"0123456789");

        let path = layout.blob_path(&d.digest).unwrap();
        fs::write(&path, b"0123456780").unwrap();
        let err = read_blob(&layout, &d).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("layer \"a.so\"") && err.to_string().contains("digest mismatch"));

        fs::write(&path, b"012345678").unwrap();
        assert!(matches!(layout.open_blob(&d), Err(SourceError::SizeMismatch { expected: 10, actual: 9, .. })));

        fs::remove_file(&path).unwrap();
        assert!(matches!(layout.open_blob(&d), Err(SourceError::BlobMissing { .. })));

        fs::create_dir(&path).unwrap();
        assert!(matches!(layout.open_blob(&d), Err(SourceError::Io { .. })));
    }

    #[test]
    fn blob_reader_verifies_when_drained() {
        let f = Fixture::new();
        let d = f.titled("a", b"abc");
        let layout = f.open();
        let mut r = layout.open_blob(&d).unwrap();
        let mut first = [0u8; 3];
        r.read_exact(&mut first).unwrap();
        assert_eq!(drain(&mut r).unwrap(), 0);
    }

    #[test]
    fn digests_never_become_paths_unvalidated() {
        let f = Fixture::new();
        let layout = f.open();
        fs::write(f.path().join("secret"), b"s").unwrap();
        for evil in ["sha256:../../secret", "sha256:/etc/passwd", "sha512:aa", "../secret"] {
            assert!(matches!(layout.blob_path(evil), Err(SourceError::BadDigest { .. })), "{evil}");
            let d = Descriptor {
                media_type: "x".into(),
                digest: evil.into(),
                size: 1,
                annotations: BTreeMap::new(),
                platform: None,
            };
            assert!(matches!(layout.open_blob(&d), Err(SourceError::BadDigest { .. })), "{evil}");
        }
        let good = digest_of(b"x");
        assert_eq!(layout.blob_path(&good).unwrap(), f.path().join("blobs").join("sha256").join(digest_hex(&good)));
    }

    #[test]
    fn arch_and_os_names_map_to_oci() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("x86"), "386");
        assert_eq!(oci_arch("riscv64"), "riscv64");
        assert_eq!(oci_os("linux"), "linux");
        assert_eq!(oci_os("macos"), "darwin");
        let host = host_platform();
        assert!(!host.architecture.is_empty() && host.variant.is_none());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(platform_name(&host), "linux/amd64");
        }
    }

    /// The tar layer holds exactly the files and directories of `app`, with
    /// their contents and modes, as relative paths without a `./` entry.
    fn check_tar_layer_matches_source(layout: &OciLayout, desc: &Descriptor, app: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let reader = layout.open_blob(desc).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
        let mut in_tar = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            assert!(path.is_relative() && !path.starts_with("."), "{path:?}");
            let on_disk = app.join(&path);
            let meta = fs::metadata(&on_disk).unwrap();
            // The script normalizes modes: 0755 for directories and bin/*,
            // 0644 for the rest. The checkout's umask may differ, but the
            // executable bit must agree with the source.
            let want = if meta.is_dir() || path.starts_with("bin") { 0o755 } else { 0o644 };
            assert_eq!(entry.header().mode().unwrap(), want, "{path:?}");
            assert_eq!(meta.permissions().mode() & 0o100 != 0, want & 0o100 != 0, "{path:?}");
            if entry.header().entry_type().is_dir() {
                assert!(meta.is_dir(), "{path:?}");
            } else {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                assert_eq!(content, fs::read(&on_disk).unwrap(), "{path:?}");
            }
            in_tar.push(path);
        }
        let mut on_disk = Vec::new();
        let mut stack = vec![app.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                on_disk.push(p.strip_prefix(app).unwrap().to_path_buf());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        in_tar.sort();
        on_disk.sort();
        assert_eq!(in_tar, on_disk);
    }

    /// The committed example layout (built by scripts/make-examples.sh)
    /// resolves and every blob of both tags verifies.
    #[test]
    fn example_layout_resolves_and_verifies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
        let layout = OciLayout::open(&root).unwrap();
        assert_eq!(layout.tags().unwrap(), vec!["v1".to_string(), "v2".to_string()]);
        let mut digests = Vec::new();
        for tag in ["v1", "v2"] {
            let r = layout.resolve(&Selector::Tag(tag.into()), tag).unwrap();
            assert_eq!(r.manifest.artifact_type.as_deref(), Some("application/vnd.stagehand.demo.v1"));
            assert_eq!(r.manifest.config.media_type, "application/vnd.oci.empty.v1+json");
            assert_eq!(r.manifest.layers.len(), 4);
            assert_eq!(r.manifest.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
            let titles: Vec<_> = r.manifest.layers[1..].iter().filter_map(|d| d.title()).collect();
            assert_eq!(titles, ["demo_fdw.so", "demo_fdw.control", "demo_fdw--1.0.sql"]);
            for d in std::iter::once(&r.manifest.config).chain(&r.manifest.layers) {
                let bytes = read_blob(&layout, d).unwrap();
                assert_eq!(bytes.len() as u64, d.size);
            }
            for (d, name) in r.manifest.layers[1..].iter().zip(&titles) {
                let src = root.join("../src/demo").join(tag).join("files").join(name);
                assert_eq!(read_blob(&layout, d).unwrap(), fs::read(src).unwrap(), "{tag} {name}");
            }
            check_tar_layer_matches_source(
                &layout,
                &r.manifest.layers[0],
                &root.join("../src/demo").join(tag).join("app"),
            );
            digests.push(r.manifest_digest);
        }
        assert_ne!(digests[0], digests[1]);
        assert!(matches!(layout.resolve(&Selector::Only, "x"), Err(SourceError::Ambiguous { count: 2, .. })));
    }
}
