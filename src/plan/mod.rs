//! Placement: which layers of an artifact become which target paths.
//!
//! This module owns two pure decisions: [`place`] maps a manifest's layers
//! onto targets (a `--to` directory target, `--map` file targets in shared
//! directories), and [`tar_guard::TarGuard`] admits or refuses each tar entry
//! before anything is written, so an artifact whose paths escape its
//! destination is refused while the old version is still untouched.
//!
//! It does no I/O: paths are computed, never looked at.

pub mod limits;
pub mod profile;
pub mod tar_bounds;
pub mod tar_guard;

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};

use crate::source::manifest::ImageManifest;
use crate::source::Descriptor;
use crate::txn::MAX_TARGETS;

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How one layer is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerUse {
    /// A tar layer, extracted at `subdir` ("" = the root) of a directory target.
    Tar { compression: Compression, subdir: String },
    /// A single file called `name` in a directory target.
    File { name: String, bytes: FileBytes },
}

/// How a single-file layer's bytes become a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBytes {
    /// The layer is gzip-compressed; install its decompressed bytes.
    pub gunzip: bool,
    /// Permission bits of the installed file.
    pub mode: u32,
}

impl FileBytes {
    /// The layer's bytes as they are, mode 0644.
    pub const PLAIN: FileBytes = FileBytes { gunzip: false, mode: 0o644 };
}

/// Where layers go, as the user asked.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// `--to DIR`: the package owns DIR; swapped as one directory target.
    pub to: Option<PathBuf>,
    /// `--map GLOB=DIR`: title-matched layers become file targets in DIR.
    pub maps: Vec<MapRule>,
}

#[derive(Debug, Clone)]
pub struct MapRule {
    pub glob: String,
    pub dir: PathBuf,
    matcher: GlobMatcher,
}

impl MapRule {
    /// Parses `GLOB=DIR`.
    pub fn parse(spec: &str) -> Result<Self, PlanError> {
        let (glob, dir) = spec
            .split_once('=')
            .filter(|(g, d)| !g.is_empty() && !d.is_empty())
            .ok_or_else(|| PlanError::BadMap { spec: spec.to_string(), reason: "expected GLOB=DIR".into() })?;
        let matcher = Glob::new(glob)
            .map_err(|e| PlanError::BadMap { spec: spec.to_string(), reason: e.to_string() })?
            .compile_matcher();
        Ok(MapRule { glob: glob.to_string(), dir: PathBuf::from(dir), matcher })
    }

    pub fn matches(&self, title: &str) -> bool {
        self.matcher.is_match(title)
    }
}

/// One target to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTarget {
    /// Absolute destination path.
    pub path: PathBuf,
    pub content: PlannedContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedContent {
    /// A directory built from these layers, in manifest order.
    Dir(Vec<(Descriptor, LayerUse)>),
    /// A single file: this layer's bytes.
    File(Descriptor, FileBytes),
}

/// For a Steampipe layer placed by hand: the profile that places it.
fn steampipe_hint(media_type: &str) -> String {
    let profile = ["plugin", "db", "fdw"].into_iter().find(|kind| {
        media_type.contains(&format!(".steampipe.{kind}.")) || media_type.contains(&format!(".steampipe.{kind}+"))
    });
    match profile {
        Some(kind) => format!(
            ". It is a Steampipe {kind} artifact, which its profile places: use --profile steampipe-{kind} \
             (profile = \"steampipe-{kind}\" in a desired-state file, see the README's profiles) instead of --to and --map"
        ),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--map {spec:?}: {reason}")]
    BadMap { spec: String, reason: String },
    #[error("layer {digest} (media type {media_type}) is neither a tar layer nor annotated with org.opencontainers.image.title, so there is no way to place it{}", steampipe_hint(media_type))]
    Unplaceable { digest: String, media_type: String },
    #[error("layer {digest} has an unsafe title {title:?}: a title must be one plain file name")]
    BadTitle { digest: String, title: String },
    #[error("layer {what} matches no --map and there is no --to DIR to put it in; pass --to DIR or a --map GLOB=DIR that matches it")]
    Unplaced { what: String },
    #[error("--map {glob:?} matches no file of the artifact ({}); nothing was changed: give a glob that matches one of its files, or leave the --map out", if files.is_empty() { "it has no file layers, only tar layers: use --to DIR".to_string() } else { format!("its files are: {}", files.join(", ")) })]
    MapMatchesNothing { glob: String, files: Vec<String> },
    #[error("--to {0} receives no layer: every layer was mapped elsewhere")]
    EmptyTo(String),
    #[error("two layers would both be installed at {0}")]
    Duplicate(String),
    #[error("the artifact has no layers")]
    NoLayers,
    #[error("{0} is not an absolute path")]
    NotAbsolute(String),
    #[error("the plan has {0} targets, over the limit of {MAX_TARGETS}")]
    TooMany(usize),
    #[error("{0}")]
    Profile(String),
}

/// Media types of tar layers, and their compression.
pub fn tar_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// True if `name` is one plain file name: no separators, not `.`/`..`, no
/// NUL, and not a name stagehand reserves for its own staging files.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && !crate::txn::is_stagehand_name(name)
        && name.len() <= 255
}

/// How each layer is used.
pub fn layer_uses(manifest: &ImageManifest) -> Result<Vec<(Descriptor, LayerUse)>, PlanError> {
    manifest
        .layers
        .iter()
        .map(|d| {
            if let Some(compression) = tar_compression(&d.media_type) {
                return Ok((d.clone(), LayerUse::Tar { compression, subdir: String::new() }));
            }
            match d.title() {
                Some(t) if is_plain_file_name(t) => {
                    Ok((d.clone(), LayerUse::File { name: t.to_string(), bytes: FileBytes::PLAIN }))
                }
                Some(t) => Err(PlanError::BadTitle { digest: d.digest.clone(), title: t.to_string() }),
                None => Err(PlanError::Unplaceable { digest: d.digest.clone(), media_type: d.media_type.clone() }),
            }
        })
        .collect()
}

/// Maps the manifest's layers to targets. Paths in `placement` must be
/// absolute (the caller resolves them).
pub fn place(manifest: &ImageManifest, placement: &Placement) -> Result<Vec<PlannedTarget>, PlanError> {
    if manifest.layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    let abs = |p: &Path| if p.is_absolute() { Ok(()) } else { Err(PlanError::NotAbsolute(p.display().to_string())) };
    if let Some(to) = &placement.to {
        abs(to)?;
    }
    for m in &placement.maps {
        abs(&m.dir)?;
    }
    let uses = layer_uses(manifest)?;
    let files: Vec<&str> = uses
        .iter()
        .filter_map(|(_, u)| match u {
            LayerUse::File { name, .. } => Some(name.as_str()),
            LayerUse::Tar { .. } => None,
        })
        .collect();
    if let Some(m) = placement.maps.iter().find(|m| !files.iter().any(|f| m.matches(f))) {
        return Err(PlanError::MapMatchesNothing {
            glob: m.glob.clone(),
            files: files.iter().map(|f| f.to_string()).collect(),
        });
    }
    let mut targets = Vec::new();
    let mut to_layers = Vec::new();
    for (desc, usage) in uses {
        let mapped = match &usage {
            LayerUse::File { name, .. } => placement.maps.iter().find(|m| m.matches(name)).map(|m| m.dir.join(name)),
            LayerUse::Tar { .. } => None,
        };
        match (mapped, &placement.to) {
            (Some(path), _) => {
                let bytes = match usage {
                    LayerUse::File { bytes, .. } => bytes,
                    LayerUse::Tar { .. } => FileBytes::PLAIN,
                };
                targets.push(PlannedTarget { path, content: PlannedContent::File(desc, bytes) })
            }
            (None, Some(_)) => to_layers.push((desc, usage)),
            (None, None) => {
                let what = match &usage {
                    LayerUse::File { name, .. } => format!("{name:?} ({})", desc.digest),
                    LayerUse::Tar { .. } => format!("{} (a tar layer)", desc.digest),
                };
                return Err(PlanError::Unplaced { what });
            }
        }
    }
    if let Some(to) = &placement.to {
        if to_layers.is_empty() {
            return Err(PlanError::EmptyTo(to.display().to_string()));
        }
        targets.push(PlannedTarget { path: to.clone(), content: PlannedContent::Dir(to_layers) });
    }
    let mut paths: Vec<&PathBuf> = targets.iter().map(|t| &t.path).collect();
    paths.sort();
    for w in paths.windows(2) {
        if w[1].starts_with(w[0]) {
            return Err(PlanError::Duplicate(w[1].display().to_string()));
        }
    }
    if targets.len() > MAX_TARGETS {
        return Err(PlanError::TooMany(targets.len()));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn layer(media: &str, title: Option<&str>, n: u8) -> Descriptor {
        let mut annotations = BTreeMap::new();
        if let Some(t) = title {
            annotations.insert(crate::source::ANNOTATION_TITLE.to_string(), t.to_string());
        }
        Descriptor {
            media_type: media.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 1,
            annotations,
            platform: None,
        }
    }

    fn manifest(layers: Vec<Descriptor>) -> ImageManifest {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": format!("sha256:{}", "44".repeat(32)), "size": 2},
            "layers": layers,
        }))
        .expect("manifest json")
    }

    #[test]
    fn fdw_case_maps_three_files_and_a_dir() {
        let m = manifest(vec![
            layer("application/vnd.oci.image.layer.v1.tar+gzip", None, 1),
            layer("application/octet-stream", Some("x_fdw.so"), 2),
            layer("text/plain", Some("x_fdw.control"), 3),
            layer("text/plain", Some("x_fdw--1.0.sql"), 4),
        ]);
        let p = Placement {
            to: Some("/d/app".into()),
            maps: vec![
                MapRule::parse("*.so=/d/lib").expect("map"),
                MapRule::parse("*.{control,sql}=/d/share/extension").expect("map"),
            ],
        };
        let t = place(&m, &p).expect("plan");
        let paths: Vec<_> = t.iter().map(|t| t.path.display().to_string()).collect();
        assert_eq!(
            paths,
            ["/d/lib/x_fdw.so", "/d/share/extension/x_fdw.control", "/d/share/extension/x_fdw--1.0.sql", "/d/app"]
        );
        assert!(matches!(&t[3].content, PlannedContent::Dir(l) if l.len() == 1));
    }

    #[test]
    fn refusals() {
        let untitled = manifest(vec![layer("application/octet-stream", None, 1)]);
        assert!(matches!(place(&untitled, &Placement::default()), Err(PlanError::Unplaceable { .. })));
        let escaping = manifest(vec![layer("application/octet-stream", Some("../x"), 1)]);
        let to = Placement { to: Some("/d".into()), maps: vec![] };
        assert!(matches!(place(&escaping, &to), Err(PlanError::BadTitle { .. })));
        let tar = manifest(vec![layer("application/vnd.oci.image.layer.v1.tar", None, 1)]);
        assert!(matches!(place(&tar, &Placement::default()), Err(PlanError::Unplaced { .. })));
        let two = manifest(vec![layer("a/b", Some("f"), 1), layer("a/b", Some("f"), 2)]);
        let m = Placement { to: None, maps: vec![MapRule::parse("*=/d").expect("map")] };
        assert_eq!(place(&two, &m), Err(PlanError::Duplicate("/d/f".into())));
        assert!(MapRule::parse("nodir").is_err());
        let so = Placement { to: Some("/d".into()), maps: vec![MapRule::parse("*.so=/lib").expect("map")] };
        let files = manifest(vec![layer("a/b", Some("x.control"), 1), layer("a/b", Some("x.sql"), 2)]);
        assert_eq!(
            place(&files, &so),
            Err(PlanError::MapMatchesNothing { glob: "*.so".into(), files: vec!["x.control".into(), "x.sql".into()] })
        );
        assert!(matches!(place(&tar, &so), Err(PlanError::MapMatchesNothing { files, .. }) if files.is_empty()));
        let rel = Placement { to: Some("rel".into()), maps: vec![] };
        assert!(matches!(place(&tar, &rel), Err(PlanError::NotAbsolute(_))));
    }
}
