//! The desired-state file (`stagehand.toml`): which packages should be
//! installed, from which reference, placed how. Parsed with serde and
//! `toml`; every error names the file, the line and the key. The keys are
//! the `install` flags' long names (`desired_keys` lists them); a
//! `[defaults]` table sets keys for every package that does not set them;
//! relative paths are relative to the file. A registry password is never
//! in the file: `password-env` names the environment variable holding it.
//!
//! ```toml
//! [defaults]
//! verify-key = "keys/cosign.pub"
//!
//! [package.demo]
//! ref = "oci-layout:examples/demo:v2"
//! to = "/opt/demo/app"
//! map = ["*.so=/opt/demo/lib", "*.control=/opt/demo/share/extension"]
//! ```
//!
//! Which file: `--file`, else `$STAGEHAND_FILE`, else the first
//! `stagehand.toml` found walking up from the current directory ([`find`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::desired_keys::{line_of, Keys, Table};
use crate::installer::{Error, InstallRequest, ProfileRequest, Result};
use crate::plan::{self, profile::Profile, MapRule, Placement};
use crate::source::{self, reference::LAYOUT_SCHEME};

/// The file's name that [`find`] looks for.
pub const FILE_NAME: &str = "stagehand.toml";

/// The environment variable naming the desired-state file.
pub const FILE_ENV: &str = "STAGEHAND_FILE";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    defaults: Table,
    #[serde(default)]
    package: BTreeMap<String, Spanned<Table>>,
}

/// One package of the desired set.
#[derive(Debug, Clone)]
pub struct DesiredPackage {
    pub name: String,
    /// The reference as written in the file (what the lock file pins).
    pub reference: String,
    /// The install request it means (relative paths resolved, `[defaults]` applied).
    pub request: InstallRequest,
    /// `OS/ARCH` as written, if any.
    pub platform: Option<String>,
    /// The line of its `[package.NAME]` table.
    pub line: usize,
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

/// The desired-state file to use: `file` if given (`--file`), else
/// `$STAGEHAND_FILE`, else the first [`FILE_NAME`] in the current directory
/// or one of its parents (as cargo finds Cargo.toml).
pub fn find(file: Option<&Path>) -> Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    if let Some(f) = std::env::var_os(FILE_ENV).filter(|f| !f.is_empty()) {
        let f = PathBuf::from(f);
        if !f.is_file() {
            return Err(Error::Refused(format!(
                "${FILE_ENV} names {}, which is not a file; nothing was changed. Set it to the desired-state \
                 file, unset it to use the first {FILE_NAME} in this directory or above, or pass --file",
                f.display()
            )));
        }
        return Ok(f);
    }
    let cwd = std::env::current_dir()
        .map_err(|source| Error::Io { context: "finding the current directory".into(), source })?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::Refused(format!(
        "no {FILE_NAME} in {} or any directory above it, and ${FILE_ENV} is not set; nothing was changed. \
         Write one (`stagehand apply --help` shows the form), or pass --file FILE",
        cwd.display()
    )))
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
        // Absolute and normalised: every path below is reported in --json.
        let path = &crate::installer::abspath::normalise(path);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let mut packages: Vec<DesiredPackage> = Vec::new();
        for (table, spec) in &doc.package {
            let keys = Keys::merge(&shown, text, table, spec.get_ref(), &doc.defaults)?;
            let line = line_of(text, spec.span().start);
            let p = package(&keys, &base, line)?;
            if let Some(other) = packages.iter().find(|o| o.name == p.name) {
                return Err(
                    keys.error("name", &format!("{:?} is also the name of the package at line {}", p.name, other.line))
                );
            }
            packages.push(p);
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

/// One package's install request, from its keys (see the module doc).
fn package(keys: &Keys, base: &Path, line: usize) -> Result<DesiredPackage> {
    let rel = |p: &str| -> PathBuf { crate::installer::abspath::normalise(&base.join(p)) };
    let name = keys.string("name")?.unwrap_or_else(|| keys.package.to_string());
    if !plan::is_plain_file_name(&name) || name.starts_with('.') {
        let key = if keys.has("name") { "name" } else { "package" };
        return Err(
            keys.error(key, &format!("{name:?} is not a valid package name (use letters, digits, '.', '_', '-')"))
        );
    }
    let raw_ref = keys.string("ref")?.ok_or_else(|| keys.error("ref", "needs `ref`, the reference to install"))?;
    let parsed = source::reference::parse(&raw_ref).map_err(|e| keys.error("ref", &e.to_string()))?;
    // A relative layout path is relative to the file.
    let source = match &parsed {
        source::SourceRef::Layout { path: lp, .. } if lp.is_relative() => {
            let rest = &raw_ref[LAYOUT_SCHEME.len()..];
            let lp_str = lp.to_string_lossy();
            match rest.strip_prefix(&*lp_str) {
                Some(tail) => crate::installer::abspath::normal_source(&format!(
                    "{LAYOUT_SCHEME}{}{tail}",
                    base.join(lp).display()
                )),
                None => raw_ref.clone(),
            }
        }
        _ => crate::installer::abspath::normal_source(&raw_ref),
    };
    let mut maps = Vec::new();
    for m in keys.strings("map")? {
        let mut rule = MapRule::parse(&m).map_err(|e| keys.error("map", &e.to_string()))?;
        rule.dir = rel(&rule.dir.to_string_lossy());
        maps.push(rule);
    }
    let to = keys.string("to")?.map(|t| rel(&t));
    let platform_text = keys.string("platform")?;
    let platform = match &platform_text {
        None => None,
        Some(p) => Some(source::registry::parse_platform(p).map_err(|e| keys.error("platform", &e))?),
    };
    let install_dir = keys.string("install-dir")?;
    let db_version = keys.string("db-version")?;
    let profile = match keys.string("profile")? {
        None => None,
        Some(p) => {
            if to.is_some() || !maps.is_empty() {
                return Err(keys.error("profile", "a profile places the files: drop `to` and `map`"));
            }
            let profile = Profile::parse(&p).map_err(|e| keys.error("profile", &e.to_string()))?;
            Some(ProfileRequest {
                profile,
                install_dir: install_dir.as_deref().map(rel).unwrap_or_else(default_steampipe_dir),
                db_version: db_version.clone(),
                platform: platform.as_ref().map(|p| (p.os.clone(), p.architecture.clone())),
            })
        }
    };
    if profile.is_none() {
        for (key, v) in [("install-dir", &install_dir), ("db-version", &db_version)] {
            if v.is_some() {
                return Err(keys.error(key, "only with `profile`"));
            }
        }
        if to.is_none() && maps.is_empty() {
            return Err(keys.error("to", "needs `to` and/or `map` (or `profile`) to know where files go"));
        }
    }
    let keyless = source::keyless::KeylessOptions {
        identity: keys.string("certificate-identity")?,
        identity_regexp: keys.string("certificate-identity-regexp")?,
        issuer: keys.string("certificate-oidc-issuer")?,
        trusted_root: keys.string("trusted-root")?.map(|p| rel(&p)),
    };
    let verify_key = match keys.string("verify-key")? {
        Some(_) if !keyless.is_empty() => {
            return Err(
                keys.error("verify-key", "give `verify-key` or a keyless policy (`certificate-identity`…), not both")
            )
        }
        Some(k) => {
            Some(source::signature::VerifyKey::load(&rel(&k)).map_err(|e| keys.error("verify-key", &e.to_string()))?)
        }
        None => {
            let blamed =
                ["trusted-root", "certificate-oidc-issuer", "certificate-identity-regexp", "certificate-identity"]
                    .into_iter()
                    .find(|k| keys.has(k))
                    .unwrap_or("trusted-root");
            source::keyless::KeylessPolicy::from_options(&keyless)
                .map_err(|e| keys.error(blamed, &e))?
                .map(source::signature::VerifyKey::keyless)
        }
    };
    let (username, password) = credentials(keys)?;
    let defaults = plan::limits::Limits::default();
    let request = InstallRequest {
        source,
        placement: Placement { to, maps },
        name: Some(name.clone()),
        adopt: keys.flag("adopt")?,
        // The file's words name the placement: a changed one moves the package.
        move_placement: true,
        profile,
        registry: source::registry::RegistryOptions {
            plain_http: keys.flag("plain-http")?,
            platform,
            username,
            password,
            request_timeout: std::time::Duration::from_secs(
                keys.count("request-timeout")?.unwrap_or(source::registry::DEFAULT_REQUEST_TIMEOUT_SECS),
            ),
            ..Default::default()
        },
        keep_versions: usize::try_from(keys.count("keep-versions")?.unwrap_or(0)).unwrap_or(usize::MAX),
        rollback: false,
        verify_key,
        require_signature: keys.flag("require-signature")?,
        limits: plan::limits::Limits {
            max_entries: keys.count("max-entries")?.unwrap_or(defaults.max_entries),
            max_layer_bytes: keys.size("max-layer-bytes")?.unwrap_or(defaults.max_layer_bytes),
            max_path_bytes: keys.count("max-path-bytes")?.unwrap_or(defaults.max_path_bytes),
        },
    };
    Ok(DesiredPackage { name, reference: raw_ref, request, platform: platform_text, line })
}

/// `username` with `password-env`: the password is read from the named
/// environment variable now, never from the file.
fn credentials(keys: &Keys) -> Result<(Option<String>, Option<source::registry::Secret>)> {
    let username = keys.string("username")?;
    let var = keys.string("password-env")?;
    match (&username, var) {
        (None, None) => Ok((None, None)),
        (Some(_), None) => Err(keys.error(
            "username",
            "needs `password-env`, the environment variable that holds the password or token",
        )),
        (None, Some(_)) => Err(keys.error("password-env", "needs `username`")),
        (Some(_), Some(var)) => match std::env::var(&var) {
            Ok(p) if !p.is_empty() => Ok((username, Some(source::registry::Secret(p)))),
            _ => Err(keys.error(
                "password-env",
                &format!("the environment variable {var} is not set (or empty, or not UTF-8); set it to the password or token"),
            )),
        },
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

    fn parse(text: &str) -> DesiredSet {
        DesiredSet::parse(Path::new("/x/y/stagehand.toml"), text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn err(text: &str) -> String {
        match DesiredSet::parse(Path::new("/x/stagehand.toml"), text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("parsed: {text}"),
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let s = parse("[package.demo]\nref = \"oci-layout:lay/demo:v2\"\nto = \"app\"\nmap = [\"*.so=lib\"]\n");
        let r = &s.packages[0].request;
        assert_eq!(r.source, "oci-layout:/x/y/lay/demo:v2");
        assert_eq!(r.placement.to.as_deref(), Some(Path::new("/x/y/app")));
        assert_eq!(r.placement.maps[0].dir, Path::new("/x/y/lib"));
        assert_eq!(s.packages[0].reference, "oci-layout:lay/demo:v2");
    }

    #[test]
    fn every_key_reaches_the_request() {
        let s = parse(
            "[package.demo]\nref = \"oci-layout:d:v1\"\nname = \"other\"\nto = \"/a\"\nadopt = true\n\
             platform = \"linux/arm64\"\nplain-http = true\nrequire-signature = true\nrequest-timeout = 7\n\
             max-entries = 10\nmax-layer-bytes = \"2 MiB\"\nmax-path-bytes = 100\nkeep-versions = 3\n",
        );
        let p = &s.packages[0];
        let r = &p.request;
        assert_eq!(p.name, "other");
        assert_eq!(r.name.as_deref(), Some("other"));
        assert!(r.adopt && r.registry.plain_http && r.require_signature);
        assert_eq!(p.platform.as_deref(), Some("linux/arm64"));
        assert_eq!(r.registry.platform.as_ref().map(|p| p.architecture.as_str()), Some("arm64"));
        assert_eq!(r.registry.request_timeout, std::time::Duration::from_secs(7));
        assert_eq!((r.limits.max_entries, r.limits.max_layer_bytes, r.limits.max_path_bytes), (10, 2 << 20, 100));
        assert_eq!(r.keep_versions, 3);
        let s = parse(
            "[package.db]\nref = \"oci-layout:d:v1\"\nprofile = \"steampipe-db\"\ninstall-dir = \"sp\"\n\
             db-version = \"14.19.0\"\n",
        );
        let r = &s.packages[0].request;
        let p = r.profile.as_ref().expect("a profile");
        assert_eq!((p.install_dir.as_path(), p.db_version.as_deref()), (Path::new("/x/y/sp"), Some("14.19.0")));
        // Unset: the flags' defaults.
        let r = &parse("[package.demo]\nref = \"oci-layout:d:v1\"\nto = \"/a\"\n").packages[0].request;
        assert_eq!(r.limits, plan::limits::Limits::default());
        assert!(!r.adopt && !r.registry.plain_http && !r.require_signature);
        assert_eq!(r.registry.request_timeout.as_secs(), source::registry::DEFAULT_REQUEST_TIMEOUT_SECS);
    }

    #[test]
    fn defaults_fill_in_and_packages_override() {
        let s = parse(
            "[defaults]\nmax-entries = 5\nmap = [\"*.so=lib\"]\nplain-http = true\n\n\
             [package.a]\nref = \"oci-layout:d:v1\"\n\n\
             [package.b]\nref = \"oci-layout:d:v1\"\nmax-entries = 9\nmap = [\"*.so=/other\"]\nplain-http = false\n",
        );
        let (a, b) = (&s.packages[0].request, &s.packages[1].request);
        assert_eq!((a.limits.max_entries, b.limits.max_entries), (5, 9));
        assert_eq!(a.placement.maps[0].dir, Path::new("/x/y/lib"));
        assert_eq!(b.placement.maps.len(), 1);
        assert_eq!(b.placement.maps[0].dir, Path::new("/other"));
        assert!(a.registry.plain_http && !b.registry.plain_http);
    }

    #[test]
    fn credentials_come_from_the_environment_never_the_file() {
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\nusername = \"u\"\npassword = \"p\"\n");
        assert!(e.contains(":5") && e.contains("never holds a password") && e.contains("password-env"), "{e}");
        let e = err("[defaults]\npassword = \"p\"\n[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\n");
        assert!(e.contains(":2") && e.contains("[defaults]") && e.contains("password-env"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\nusername = \"u\"\n");
        assert!(e.contains(":4") && e.contains("password-env"), "{e}");
        let var = "STAGEHAND_DESIRED_UNIT_TEST_SURELY_UNSET";
        let e = err(&format!(
            "[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\nusername = \"u\"\npassword-env = \"{var}\"\n"
        ));
        assert!(e.contains(":5") && e.contains(var) && e.contains("not set"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[package.demo]\nref = \"oci-layout:d:v1\"\nto = \"/a\"\nmpa = []\n");
        assert!(e.contains("/x/stagehand.toml:4") && e.contains("mpa") && e.contains("did you mean `map`"), "{e}");
        let e = err("[defaults]\nmax-entrys = 1\n[package.demo]\nref = \"oci-layout:d:v1\"\nto = \"/a\"\n");
        assert!(e.contains(":2") && e.contains("[defaults]") && e.contains("`max-entries`"), "{e}");
        let e = err("[defaults]\nref = \"oci-layout:d:v1\"\n[package.demo]\nto = \"/a\"\n");
        assert!(e.contains(":2") && e.contains("[package.NAME]"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d:v1\"\nmap = [\"nodir\"]\n");
        assert!(e.contains("/x/stagehand.toml:3") && e.contains("`map`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:\"\nto = \"/a\"\n");
        assert!(e.contains("/x/stagehand.toml:2") && e.contains("`ref`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\n");
        assert!(e.contains("`to`"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\ndb-version = \"1\"\n");
        assert!(e.contains(":4") && e.contains("db-version"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\nmax-layer-bytes = \"64 GB\"\n");
        assert!(e.contains(":4") && e.contains("max-layer-bytes") && e.contains("GiB"), "{e}");
        let e = err("[package.demo]\nref = \"oci-layout:d\"\nto = \"/a\"\nadopt = \"yes\"\n");
        assert!(e.contains(":4") && e.contains("true or false"), "{e}");
        let e = err("[package.a]\nref = \"oci-layout:d\"\nto = \"/a\"\n[package.b]\nname = \"a\"\nref = \"oci-layout:d\"\nto = \"/b\"\n");
        assert!(e.contains(":5") && e.contains("line 1"), "{e}");
    }
}
