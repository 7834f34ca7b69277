//! The lock file (beside the desired-state file and named after it:
//! `web.toml` gives `web.lock`, `stagehand.toml` gives `stagehand.lock`):
//! each package's reference pinned to the manifest digest it resolved to,
//! with the platform it was resolved for. It works like Cargo.lock: `apply`
//! and `lock` keep every pin whose entry (reference, platform) is unchanged
//! and resolve only new or changed entries; `update` re-resolves on purpose;
//! `apply --locked` installs exactly these digests. TOML:
//!
//! ```toml
//! version = 1
//!
//! [package.demo]
//! ref = "oci-layout:examples/demo:v2"
//! digest = "sha256:…"
//! platform = "linux/amd64"
//! index = "sha256:…"            # a multi-arch tag: the index the manifest was picked from
//! signer = { key = "sha256:…" } # the signer verified when it was pinned
//! ```
//!
//! A pin with `index` is installed by the index's digest (the platform's
//! manifest within it is checked against `digest`), so a signature over the
//! index is found and checked again by `apply --locked`. `signer` is the
//! key (its fingerprint) whose signature was verified; a keyless signer is
//! written `{ identity = "…", issuer = "…" }`, the identity the
//! certificate names (under a regexp policy too, so a new signer the
//! pattern also accepts is a change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsops;
use crate::installer::{Error, Result};

/// The lock file's format version.
pub const LOCK_VERSION: u32 = 1;

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The reference as the desired-state file writes it.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `sha256:…` of the manifest it resolved to.
    pub digest: String,
    /// `OS/ARCH` it was resolved for.
    pub platform: String,
    /// `sha256:…` of the image index `digest` was picked from (a multi-arch tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Whose signature was verified when it was pinned; `None`: none was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
}

impl Pin {
    /// The digest to install it by: the index's if there is one (so a
    /// signature over the index covers it), else the manifest's.
    pub fn install_digest(&self) -> &str {
        self.index.as_deref().unwrap_or(&self.digest)
    }
}

/// Who signed a pinned artifact, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Signer {
    /// A cosign key: its fingerprint (`sha256:…` of its public key, DER).
    Key { key: String },
    /// A keyless signature: the certificate's identity and OIDC issuer.
    Identity { identity: String, issuer: String },
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key { key } => write!(f, "key {key}"),
            Signer::Identity { identity, issuer } => write!(f, "identity {identity} (issuer {issuer})"),
        }
    }
}

/// A lock file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    #[serde(default)]
    pub package: BTreeMap<String, Pin>,
}

/// The lock file of a desired-state file: beside it, its extension
/// replaced by `.lock` (`web.toml` → `web.lock`, `fleet` → `fleet.lock`;
/// a file already named `*.lock` gets `.lock` appended, never itself).
pub fn path_for(desired: &Path) -> PathBuf {
    match (desired.extension(), desired.file_name()) {
        (Some(ext), Some(name)) if ext == "lock" => {
            let mut name = name.to_os_string();
            name.push(".lock");
            desired.with_file_name(name)
        }
        _ => desired.with_extension("lock"),
    }
}

impl LockFile {
    /// Reads a lock file; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<LockFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { context: format!("reading {}", path.display()), source }),
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| format!(":{}", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
            Error::Refused(format!(
                "{}{line}: {}. Nothing was changed; remove it, and `stagehand lock` writes it again",
                path.display(),
                e.message().trim_end()
            ))
        })?;
        if lock.version != LOCK_VERSION {
            return Err(Error::Refused(format!(
                "{}: lock file version {} (this stagehand writes {LOCK_VERSION}); nothing was changed",
                path.display(),
                lock.version
            )));
        }
        Ok(Some(lock))
    }

    /// The file's bytes.
    pub fn render(&self) -> Result<String> {
        let body = toml::to_string(self).map_err(|e| Error::Refused(format!("cannot write the lock file: {e}")))?;
        Ok(format!(
            "# Written by `stagehand apply`, `lock` and `update`; do not edit.\n\
             # Each package's reference, pinned to the manifest digest it resolved to.\n{body}"
        ))
    }

    /// Writes it durably: a temporary sibling, fsynced, renamed over `path`
    /// (parent fsynced), through `fsops` (kill points `fsops.*.lockfile`).
    /// Unchanged content is not rewritten.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.render()?;
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("stagehand.lock");
        let tmp = path.with_file_name(format!(".{name}.stagehand-tmp"));
        let io = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |source| Error::Io { context, source }
        };
        if fsops::identity(&tmp).map_err(io("observing"))?.is_some() {
            // Left by a crash while writing: it was never the lock file.
            fsops::remove_tree(&tmp, "lockfile").map_err(io("removing a stale temporary beside"))?;
        }
        let mut bytes = text.as_bytes();
        fsops::write_file(&tmp, &mut bytes, 0o644 & !fsops::umask(), "lockfile").map_err(io("writing"))?;
        fsops::fsync_file(&tmp, "lockfile").map_err(io("syncing"))?;
        fsops::rename(&tmp, path, "lockfile").map_err(io("replacing"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("stagehand.lock");
        let mut l = LockFile { version: LOCK_VERSION, package: BTreeMap::new() };
        l.package.insert(
            "demo".into(),
            Pin {
                reference: "oci-layout:d:v1".into(),
                digest: "sha256:ab".into(),
                platform: "linux/amd64".into(),
                index: None,
                signer: None,
            },
        );
        l.package.insert(
            "signed".into(),
            Pin {
                reference: "r/x:v1".into(),
                digest: "sha256:cd".into(),
                platform: "linux/amd64".into(),
                index: Some("sha256:ef".into()),
                signer: Some(Signer::Key { key: "sha256:12".into() }),
            },
        );
        l.package.insert(
            "keyless".into(),
            Pin {
                reference: "r/y:v1".into(),
                digest: "sha256:cd".into(),
                platform: "linux/amd64".into(),
                index: None,
                signer: Some(Signer::Identity { identity: "me@example.org".into(), issuer: "https://issuer".into() }),
            },
        );
        l.write(&p).expect("write");
        assert_eq!(LockFile::read(&p).expect("read"), Some(l));
        std::fs::write(&p, "version = 1\n[package.demo]\nref = \"x\"\ndigest = \"y\"\nplatform = \"z\"\nextra = 1\n")
            .expect("write");
        let e = LockFile::read(&p).expect_err("unknown key").to_string();
        assert!(e.contains("stagehand.lock:6") && e.contains("extra"), "{e}");
    }

    #[test]
    fn the_lock_is_named_after_its_file() {
        assert_eq!(path_for(Path::new("/d/web.toml")), Path::new("/d/web.lock"));
        assert_eq!(path_for(Path::new("/d/stagehand.toml")), Path::new("/d/stagehand.lock"));
        assert_eq!(path_for(Path::new("rel/db.toml")), Path::new("rel/db.lock"));
        assert_eq!(path_for(Path::new("/d/fleet")), Path::new("/d/fleet.lock"));
        assert_eq!(path_for(Path::new("/d/x.lock")), Path::new("/d/x.lock.lock"));
    }
}
