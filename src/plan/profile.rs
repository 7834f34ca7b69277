//! Profiles: Steampipe's own artifacts, with their real media types,
//! placed into Steampipe's real install layout under an install dir.
//!
//! - `steampipe-plugin`: the gzipped plugin binary, license, docs and spc
//!   layers become ONE directory target
//!   `plugins/<registry>/<repository path>@<tag>/`.
//! - `steampipe-db`: the db tar layer is extracted into the directory target
//!   `db/<version>/postgres/` (Steampipe's `.staging`/`.backup` case).
//! - `steampipe-fdw`: the gzipped FDW binary, the control file and the SQL
//!   file become three FILE targets in two shared directories of the db
//!   (`lib/postgresql/`, `share/postgresql/extension/`), switched together
//!   (Steampipe's issue #4758).
//!
//! Platform layers fall back as Steampipe's do (a darwin-arm64 host may use a
//! darwin-amd64 plugin). Pure: the caller supplies the install dir, the db
//! version and the platform.

use std::path::PathBuf;

use super::{tar_compression, Compression, FileBytes, LayerUse, PlanError, PlannedContent, PlannedTarget};
use crate::source::manifest::ImageManifest;
use crate::source::Descriptor;

/// Config media type of Steampipe artifacts.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.turbot.steampipe.config.v1+json";
pub const MEDIA_TYPE_PLUGIN_CONFIG: &str = "application/vnd.turbot.steampipe.plugin.config.v1+json";
pub const MEDIA_TYPE_PLUGIN_LICENSE: &str = "application/vnd.turbot.steampipe.plugin.license.layer.v1+text";
pub const MEDIA_TYPE_PLUGIN_DOCS: &str = "application/vnd.turbot.steampipe.plugin.docs.layer.v1+tar";
pub const MEDIA_TYPE_PLUGIN_SPC: &str = "application/vnd.turbot.steampipe.plugin.spc.layer.v1+tar";
pub const MEDIA_TYPE_DB_DOC: &str = "application/vnd.turbot.steampipe.db.doc.layer.v1+text";
pub const MEDIA_TYPE_DB_LICENSE: &str = "application/vnd.turbot.steampipe.db.license.layer.v1+text";
pub const MEDIA_TYPE_FDW_CONTROL: &str = "application/vnd.turbot.steampipe.fdw.control.layer.v1+text";
pub const MEDIA_TYPE_FDW_SQL: &str = "application/vnd.turbot.steampipe.fdw.sql.layer.v1+text";
/// The installed name of the FDW binary.
pub const FDW_BINARY_NAME: &str = "steampipe_postgres_fdw.so";

/// A Steampipe artifact kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    SteampipePlugin,
    SteampipeDb,
    SteampipeFdw,
}

impl Profile {
    pub const NAMES: [&'static str; 3] = ["steampipe-plugin", "steampipe-db", "steampipe-fdw"];

    pub fn parse(s: &str) -> Result<Profile, PlanError> {
        match s {
            "steampipe-plugin" => Ok(Profile::SteampipePlugin),
            "steampipe-db" => Ok(Profile::SteampipeDb),
            "steampipe-fdw" => Ok(Profile::SteampipeFdw),
            _ => Err(PlanError::Profile(format!("unknown profile {s:?}; known: {}", Profile::NAMES.join(", ")))),
        }
    }

    /// The name `--profile` takes.
    pub fn name(self) -> &'static str {
        match self {
            Profile::SteampipePlugin => "steampipe-plugin",
            Profile::SteampipeDb => "steampipe-db",
            Profile::SteampipeFdw => "steampipe-fdw",
        }
    }

    /// The `<kind>` word in `application/vnd.turbot.steampipe.<kind>.<os>-<arch>.layer.v1+…`.
    fn kind(self) -> &'static str {
        match self {
            Profile::SteampipePlugin => "plugin",
            Profile::SteampipeDb => "db",
            Profile::SteampipeFdw => "fdw",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Profile::SteampipeDb => "tar",
            _ => "gzip",
        }
    }
}

/// What the caller knows that the manifest does not say.
#[derive(Debug, Clone)]
pub struct ProfileContext {
    /// Absolute Steampipe install dir (`~/.steampipe` by default).
    pub install_dir: PathBuf,
    /// For plugins: `<registry>/<repository path>@<tag>`, the plugin's directory under `plugins/`.
    pub plugin_path: String,
    /// For db and fdw: the database version directory under `db/`.
    pub db_version: Option<String>,
    /// The host platform in OCI words, e.g. ("linux", "amd64").
    pub os: String,
    pub arch: String,
}

/// The platform media types to look for, best first (Steampipe's fallbacks).
pub fn platform_media_types(profile: Profile, os: &str, arch: &str) -> Vec<String> {
    let fmt =
        |a: &str| format!("application/vnd.turbot.steampipe.{}.{os}-{a}.layer.v1+{}", profile.kind(), profile.suffix());
    let mut v = vec![fmt(arch)];
    if profile == Profile::SteampipePlugin && os == "darwin" && arch == "arm64" {
        v.push(fmt("amd64"));
    }
    v
}

/// Platforms (`os-arch`) an artifact has layers for.
pub fn available_platforms(profile: Profile, manifest: &ImageManifest) -> Vec<String> {
    let prefix = format!("application/vnd.turbot.steampipe.{}.", profile.kind());
    let suffix = format!(".layer.v1+{}", profile.suffix());
    manifest
        .layers
        .iter()
        .filter_map(|d| d.media_type.strip_prefix(&prefix)?.strip_suffix(&suffix).map(str::to_string))
        .filter(|p| p.contains('-'))
        .collect()
}

fn platform_layer<'m>(
    profile: Profile,
    m: &'m ImageManifest,
    ctx: &ProfileContext,
) -> Result<&'m Descriptor, PlanError> {
    for mt in platform_media_types(profile, &ctx.os, &ctx.arch) {
        if let Some(d) = m.layers.iter().find(|d| d.media_type == mt) {
            return Ok(d);
        }
    }
    let have = available_platforms(profile, m);
    Err(PlanError::Profile(format!(
        "this {} artifact has no layer for {}-{} (it has: {})",
        profile.kind(),
        ctx.os,
        ctx.arch,
        if have.is_empty() { "none".to_string() } else { have.join(", ") }
    )))
}

fn layer<'m>(m: &'m ImageManifest, media_type: &str) -> Option<&'m Descriptor> {
    m.layers.iter().find(|d| d.media_type == media_type)
}

fn file_name(d: &Descriptor, default: &str) -> Result<String, PlanError> {
    let name = d.title().map(|t| t.strip_suffix(".gz").unwrap_or(t)).unwrap_or(default);
    if super::is_plain_file_name(name) {
        Ok(name.to_string())
    } else {
        Err(PlanError::BadTitle { digest: d.digest.clone(), title: name.to_string() })
    }
}

fn db_dir(ctx: &ProfileContext, m: &ImageManifest) -> Result<PathBuf, PlanError> {
    let version = ctx
        .db_version
        .clone()
        .or_else(|| m.annotations.get("org.opencontainers.image.version").cloned())
        .ok_or_else(|| PlanError::Profile("the database version is unknown; pass --db-version VERSION".into()))?;
    if !super::is_plain_file_name(&version) {
        return Err(PlanError::Profile(format!("bad database version {version:?}")));
    }
    Ok(ctx.install_dir.join("db").join(version).join("postgres"))
}

/// Plugin directory path segments must each be plain names (no `..`).
fn checked_plugin_path(p: &str) -> Result<PathBuf, PlanError> {
    let mut out = PathBuf::new();
    for c in p.split('/') {
        if !super::is_plain_file_name(c) {
            return Err(PlanError::Profile(format!("bad plugin path {p:?}")));
        }
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        return Err(PlanError::Profile("empty plugin path".into()));
    }
    Ok(out)
}

/// Maps a Steampipe artifact's layers to targets.
pub fn place_profile(
    m: &ImageManifest,
    profile: Profile,
    ctx: &ProfileContext,
) -> Result<Vec<PlannedTarget>, PlanError> {
    if !ctx.install_dir.is_absolute() {
        return Err(PlanError::NotAbsolute(ctx.install_dir.display().to_string()));
    }
    let binary = platform_layer(profile, m, ctx)?;
    match profile {
        Profile::SteampipePlugin => {
            let short = ctx.plugin_path.rsplit('/').next().unwrap_or("plugin");
            let short = short.split('@').next().unwrap_or(short);
            let mut layers = vec![(
                binary.clone(),
                LayerUse::File {
                    name: file_name(binary, &format!("steampipe-plugin-{short}.plugin"))?,
                    bytes: FileBytes { gunzip: true, mode: 0o755 },
                },
            )];
            if let Some(d) = layer(m, MEDIA_TYPE_PLUGIN_LICENSE) {
                layers.push((d.clone(), LayerUse::File { name: file_name(d, "LICENSE")?, bytes: FileBytes::PLAIN }));
            }
            for (mt, subdir) in [(MEDIA_TYPE_PLUGIN_DOCS, "docs"), (MEDIA_TYPE_PLUGIN_SPC, "config")] {
                if let Some(d) = layer(m, mt) {
                    layers.push((d.clone(), LayerUse::Tar { compression: Compression::None, subdir: subdir.into() }));
                }
            }
            let path = ctx.install_dir.join("plugins").join(checked_plugin_path(&ctx.plugin_path)?);
            Ok(vec![PlannedTarget { path, content: PlannedContent::Dir(layers) }])
        }
        Profile::SteampipeDb => {
            let compression = tar_compression(&binary.media_type).unwrap_or(Compression::None);
            let mut layers = vec![(binary.clone(), LayerUse::Tar { compression, subdir: String::new() })];
            for (mt, default) in [(MEDIA_TYPE_DB_DOC, "README.md"), (MEDIA_TYPE_DB_LICENSE, "LICENSE")] {
                if let Some(d) = layer(m, mt) {
                    layers.push((d.clone(), LayerUse::File { name: file_name(d, default)?, bytes: FileBytes::PLAIN }));
                }
            }
            Ok(vec![PlannedTarget { path: db_dir(ctx, m)?, content: PlannedContent::Dir(layers) }])
        }
        Profile::SteampipeFdw => {
            let db = db_dir(ctx, m)?;
            let ext = db.join("share/postgresql/extension");
            let control = layer(m, MEDIA_TYPE_FDW_CONTROL)
                .ok_or_else(|| PlanError::Profile(format!("the fdw artifact has no {MEDIA_TYPE_FDW_CONTROL} layer")))?;
            let sql = layer(m, MEDIA_TYPE_FDW_SQL)
                .ok_or_else(|| PlanError::Profile(format!("the fdw artifact has no {MEDIA_TYPE_FDW_SQL} layer")))?;
            Ok(vec![
                PlannedTarget {
                    path: db.join("lib/postgresql").join(FDW_BINARY_NAME),
                    content: PlannedContent::File(binary.clone(), FileBytes { gunzip: true, mode: 0o755 }),
                },
                PlannedTarget {
                    path: ext.join(file_name(control, "steampipe_postgres_fdw.control")?),
                    content: PlannedContent::File(control.clone(), FileBytes::PLAIN),
                },
                PlannedTarget {
                    path: ext.join(file_name(sql, "steampipe_postgres_fdw--1.0.sql")?),
                    content: PlannedContent::File(sql.clone(), FileBytes::PLAIN),
                },
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn desc(mt: &str, title: Option<&str>, n: u8) -> serde_json::Value {
        let mut a = BTreeMap::new();
        if let Some(t) = title {
            a.insert(crate::source::ANNOTATION_TITLE, t);
        }
        serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", hex::encode([n; 32])), "size": 1, "annotations": a})
    }

    fn manifest(layers: Vec<serde_json::Value>) -> ImageManifest {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": format!("sha256:{}", "44".repeat(32)), "size": 2},
            "annotations": {"org.opencontainers.image.version": "14.19.0"},
            "layers": layers,
        }))
        .expect("manifest")
    }

    fn ctx(os: &str, arch: &str) -> ProfileContext {
        ProfileContext {
            install_dir: "/home/u/.steampipe".into(),
            plugin_path: "hub.steampipe.io/plugins/turbot/aws@latest".into(),
            db_version: None,
            os: os.into(),
            arch: arch.into(),
        }
    }

    #[test]
    fn fdw_is_three_file_targets_in_two_dirs() {
        let m = manifest(vec![
            desc(
                "application/vnd.turbot.steampipe.fdw.linux-amd64.layer.v1+gzip",
                Some("steampipe_postgres_fdw.so.gz"),
                1,
            ),
            desc(MEDIA_TYPE_FDW_CONTROL, Some("steampipe_postgres_fdw.control"), 2),
            desc(MEDIA_TYPE_FDW_SQL, Some("steampipe_postgres_fdw--1.0.sql"), 3),
        ]);
        let t = place_profile(&m, Profile::SteampipeFdw, &ctx("linux", "amd64")).expect("plan");
        let p: Vec<_> = t.iter().map(|t| t.path.display().to_string()).collect();
        assert_eq!(
            p,
            [
                "/home/u/.steampipe/db/14.19.0/postgres/lib/postgresql/steampipe_postgres_fdw.so",
                "/home/u/.steampipe/db/14.19.0/postgres/share/postgresql/extension/steampipe_postgres_fdw.control",
                "/home/u/.steampipe/db/14.19.0/postgres/share/postgresql/extension/steampipe_postgres_fdw--1.0.sql",
            ]
        );
        assert!(matches!(t[0].content, PlannedContent::File(_, FileBytes { gunzip: true, mode: 0o755 })));
        let e = place_profile(&m, Profile::SteampipeFdw, &ctx("darwin", "arm64")).expect_err("no darwin layer");
        assert!(e.to_string().contains("linux-amd64"), "{e}");
    }

    #[test]
    fn plugin_falls_back_on_apple_silicon_and_is_one_dir() {
        let m = manifest(vec![
            desc(
                "application/vnd.turbot.steampipe.plugin.darwin-amd64.layer.v1+gzip",
                Some("steampipe-plugin-aws.plugin.gz"),
                1,
            ),
            desc(MEDIA_TYPE_PLUGIN_LICENSE, Some("LICENSE"), 2),
            desc(MEDIA_TYPE_PLUGIN_DOCS, None, 3),
        ]);
        let t = place_profile(&m, Profile::SteampipePlugin, &ctx("darwin", "arm64")).expect("fallback");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].path, PathBuf::from("/home/u/.steampipe/plugins/hub.steampipe.io/plugins/turbot/aws@latest"));
        let PlannedContent::Dir(layers) = &t[0].content else { panic!("dir") };
        assert!(
            matches!(&layers[0].1, LayerUse::File { name, bytes } if name == "steampipe-plugin-aws.plugin" && bytes.gunzip)
        );
        assert!(matches!(&layers[2].1, LayerUse::Tar { subdir, .. } if subdir == "docs"));
        assert!(place_profile(&m, Profile::SteampipePlugin, &ctx("linux", "arm64")).is_err(), "no fallback on linux");
        let mut bad = ctx("darwin", "amd64");
        bad.plugin_path = "../../etc@x".into();
        assert!(place_profile(&m, Profile::SteampipePlugin, &bad).is_err());
    }

    #[test]
    fn db_goes_to_versioned_postgres_dir() {
        let m = manifest(vec![desc("application/vnd.turbot.steampipe.db.linux-amd64.layer.v1+tar", None, 1)]);
        let t = place_profile(&m, Profile::SteampipeDb, &ctx("linux", "amd64")).expect("plan");
        assert_eq!(t[0].path, PathBuf::from("/home/u/.steampipe/db/14.19.0/postgres"));
    }
}
