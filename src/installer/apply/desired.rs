//! The desired-state file (`stagehand.toml`): which packages should be
//! installed, from which reference, placed how. Parsed with serde and
//! `toml`; every error names the file, the line and the key. The keys are
//! the `install` flags' long names; relative paths are relative to the file.
//!
//! ```toml
//! [package.demo]
//! ref = "oci-layout:examples/demo:v2"
//! to = "/opt/demo/app"
//! map = ["*.so=/opt/demo/lib", "*.control=/opt/demo/share/extension"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::installer::{Error, InstallRequest, ProfileRequest, Result};
use crate::plan::{self, profile::Profile, MapRule, Placement};
use crate::source::{self, reference::LAYOUT_SCHEME};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    package: BTreeMap<String, Spanned<Spec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Spec {
    #[serde(rename = "ref")]
    reference: Spanned<String>,
    to: Option<Spanned<String>>,
    #[serde(default)]
    map: Vec<Spanned<String>>,
    profile: Option<Spanned<String>>,
    install_dir: Option<Spanned<String>>,
    db_version: Option<Spanned<String>>,
    platform: Option<Spanned<String>>,
    #[serde(default)]
    adopt: bool,
    keep_versions: Option<usize>,
    verify_key: Option<Spanned<String>>,
    #[serde(default)]
    require_signature: bool,
    #[serde(default)]
    plain_http: bool,
}

/// One package of the desired set.
#[derive(Debug, Clone)]
pub struct DesiredPackage {
    pub name: String,
    /// The reference as written in the file (what the lock file pins).
    pub reference: String,
    /// The install request it means (relative paths resolved).
    pub request: InstallRequest,
    /// `OS/ARCH` as written, if any.
    pub platform: Option<String>,
}

/// A parsed desired-state file.
#[derive(Debug, Clone)]
pub struct DesiredSet {
    pub path: PathBuf,
    /// Its canonical path (symlinks resolved): what `managed_by` records,
    /// so two spellings of one file manage the same packages.
    pub canonical: PathBuf,
    /// By name.
    pub packages: Vec<DesiredPackage>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl DesiredSet {
    /// Reads and checks `path`. Nothing is resolved or fetched yet.
    pub fn load(path: &Path) -> Result<DesiredSet> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!(
                "reading the desired-state file {} (write one, or pass --file; `stagehand apply --help` shows the form)",
                path.display()
            ),
            source,
        })?;
        DesiredSet::parse(path, &text)
    }

    /// Parses `text` as the content of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<DesiredSet> {
        let shown = path.display().to_string();
        let doc: Doc = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!(":{}", line_of(text, s.start))).unwrap_or_default();
            Error::Refused(format!("{shown}{line}: {}. Nothing was changed", e.message().trim_end()))
        })?;
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let rel = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut packages = Vec::new();
        for (name, spec) in doc.package {
            let at = |span: std::ops::Range<usize>, key: &str, why: String| {
                Error::Refused(format!(
                    "{shown}:{}: package {name:?}, key `{key}`: {why}. Nothing was changed",
                    line_of(text, span.start)
                ))
            };
            let pkg_span = spec.span();
            let spec = spec.into_inner();
            if !plan::is_plain_file_name(&name) || name.starts_with('.') {
                return Err(at(
                    pkg_span,
                    "package",
                    format!("{name:?} is not a valid package name (use letters, digits, '.', '_', '-')"),
                ));
            }
            let raw_ref = spec.reference.get_ref().clone();
            let parsed =
                source::reference::parse(&raw_ref).map_err(|e| at(spec.reference.span(), "ref", e.to_string()))?;
            // A relative layout path is relative to the file.
            let source = match &parsed {
                source::SourceRef::Layout { path: lp, .. } if lp.is_relative() => {
                    let rest = &raw_ref[LAYOUT_SCHEME.len()..];
                    let lp_str = lp.to_string_lossy();
                    match rest.strip_prefix(&*lp_str) {
                        Some(tail) => format!("{LAYOUT_SCHEME}{}{tail}", base.join(lp).display()),
                        None => raw_ref.clone(),
                    }
                }
                _ => raw_ref.clone(),
            };
            let mut maps = Vec::new();
            for m in &spec.map {
                let mut rule = MapRule::parse(m.get_ref()).map_err(|e| at(m.span(), "map", e.to_string()))?;
                rule.dir = rel(&rule.dir.to_string_lossy());
                maps.push(rule);
            }
            let to = spec.to.as_ref().map(|t| rel(t.get_ref()));
            let platform = match &spec.platform {
                None => None,
                Some(p) => Some(
                    source::registry::parse_platform(p.get_ref())
                        .map_err(|e| at(p.span(), "platform", e.to_string()))?,
                ),
            };
            let profile = match &spec.profile {
                None => None,
                Some(p) => {
                    if to.is_some() || !maps.is_empty() {
                        return Err(at(p.span(), "profile", "a profile places the files: drop `to` and `map`".into()));
                    }
                    let profile = Profile::parse(p.get_ref()).map_err(|e| at(p.span(), "profile", e.to_string()))?;
                    let install_dir = match &spec.install_dir {
                        Some(d) => rel(d.get_ref()),
                        None => default_steampipe_dir(),
                    };
                    Some(ProfileRequest {
                        profile,
                        install_dir,
                        db_version: spec.db_version.as_ref().map(|v| v.get_ref().clone()),
                        platform: platform.as_ref().map(|p| (p.os.clone(), p.architecture.clone())),
                    })
                }
            };
            if profile.is_none() {
                for (key, v) in [("install-dir", &spec.install_dir), ("db-version", &spec.db_version)] {
                    if let Some(v) = v {
                        return Err(at(v.span(), key, "only with `profile`".into()));
                    }
                }
                if to.is_none() && maps.is_empty() {
                    return Err(at(
                        pkg_span,
                        "to",
                        "needs `to` and/or `map` (or `profile`) to know where files go".into(),
                    ));
                }
            }
            let verify_key = match &spec.verify_key {
                None => None,
                Some(k) => Some(
                    source::signature::VerifyKey::load(&rel(k.get_ref()))
                        .map_err(|e| at(k.span(), "verify-key", e.to_string()))?,
                ),
            };
            let request = InstallRequest {
                source,
                placement: Placement { to, maps },
                name: Some(name.clone()),
                adopt: spec.adopt,
                // The file's words name the placement: a changed one moves the package.
                move_placement: true,
                profile,
                registry: source::registry::RegistryOptions {
                    plain_http: spec.plain_http,
                    platform,
                    ..Default::default()
                },
                keep_versions: spec.keep_versions.unwrap_or(0),
                rollback: false,
                verify_key,
                require_signature: spec.require_signature,
                limits: plan::limits::Limits::default(),
            };
            packages.push(DesiredPackage {
                name,
                reference: raw_ref,
                request,
                platform: spec.platform.map(|p| p.into_inner()),
            });
        }
        let canonical =
            std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf());
        Ok(DesiredSet { path: path.to_path_buf(), canonical, packages })
    }

    /// The `managed_by` value of the packages this file applies.
    pub fn manager(&self) -> String {
        self.canonical.to_string_lossy().into_owned()
    }
}

/// `$STEAMPIPE_INSTALL_DIR`, else `~/.steampipe` (as `install --profile`).
pub fn default_steampipe_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STEAMPIPE_INSTALL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/")).join(".steampipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match DesiredSet::parse(Path::new("/x/stagehand.toml"), text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("parsed: {text}"),
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let s = DesiredSet::parse(
            Path::new("/x/y/stagehand.toml"),
            "[package.demo]\nref = \"oci-layout:lay/demo:v2\"\nto = \"app\"\nmap = [\"*.so=lib\"]\n",
        )
        .expect("parses");
        let r = &s.packages[0].request;
        assert_eq!(r.source, "oci-layout:/x/y/lay/demo:v2");
        assert_eq!(r.placement.to.as_deref(), Some(Path::new("/x/y/app")));
        assert_eq!(r.placement.maps[0].dir, Path::new("/x/y/lib"));
        assert_eq!(s.packages[0].reference, "oci-layout:lay/demo:v2");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[package.demo]\nref = \"oci-layout:d:v1\"\nto = \"/a\"\nmpa = []\n");
        assert!(e.contains("/x/stagehand.toml:4") && e.contains("mpa"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d:v1\"\nmap = [\"nodir\"]\n");
        assert!(e.contains("/x/stagehand.toml:3") && e.contains("`map`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:\"\nto = \"/a\"\n");
        assert!(e.contains("/x/stagehand.toml:2") && e.contains("`ref`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\n");
        assert!(e.contains("`to`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\ndb-version = \"1\"\n");
        assert!(e.contains(":4") && e.contains("db-version"), "{e}");
    }
}
