//! `stagehand outdated`: for each package of a desired-state file, the lock
//! file's pin against what its reference resolves to now. It reads
//! manifests only and changes nothing: no lock write, no blob cache entry,
//! no state dir needed (an existing blob cache is only read). It checks no
//! signature: it says where tags point, and `update` and `apply` verify.

use std::path::Path;

use super::desired::DesiredSet;
use super::lockfile::{self, LockFile};
use super::pins::platform_of;
use crate::installer::{interrupt, Result};
use crate::source::{self, SourceError, SourceRef};

/// One package: its pin and where its reference points now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outdated {
    pub name: String,
    /// The reference as the file writes it.
    pub reference: String,
    /// `OS/ARCH` it resolves for.
    pub platform: String,
    /// The digest the lock pins; `None`: the lock has no pin for this
    /// entry (no lock, a new package, or its reference or platform changed).
    pub locked: Option<String>,
    /// The manifest digest the reference resolves to now; `None` if it
    /// could not be resolved (see `error`).
    pub latest: Option<String>,
    /// "current" (the pin is where the reference points), "outdated" (the
    /// reference has moved: `stagehand update NAME` moves the pin),
    /// "unlocked" (no pin: `stagehand lock` writes one) or "error".
    pub status: &'static str,
    /// Why the reference could not be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `outdated` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutdatedReport {
    /// The desired-state file (absolute).
    pub file: String,
    /// Its lock file (absolute), whether or not it exists.
    pub lock_file: String,
    /// In the file's order.
    pub packages: Vec<Outdated>,
}

/// Resolves every reference of `set` (manifests only) and compares it with
/// the lock's pin. `state_dir`'s blob cache is read if it exists; nothing is
/// written anywhere. A reference that cannot be resolved is reported, and
/// the others are still checked.
pub fn outdated(state_dir: &Path, set: &DesiredSet) -> Result<OutdatedReport> {
    let lock_path = lockfile::path_for(&set.path);
    let lock = LockFile::read(&lock_path)?;
    let mut packages = Vec::new();
    for p in &set.packages {
        let platform = platform_of(&p.request);
        let locked = lock
            .as_ref()
            .and_then(|l| l.package.get(&p.name))
            .filter(|pin| pin.reference == p.reference && pin.platform == platform)
            .map(|pin| pin.digest.clone());
        let (latest, error) = match latest(state_dir, &p.request) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let status = match (&locked, &latest) {
            (_, None) => "error",
            (None, Some(_)) => "unlocked",
            (Some(l), Some(n)) if l == n => "current",
            (Some(_), Some(_)) => "outdated",
        };
        packages.push(Outdated {
            name: p.name.clone(),
            reference: p.reference.clone(),
            platform,
            locked,
            latest,
            status,
            error,
        });
    }
    Ok(OutdatedReport {
        file: set.canonical.display().to_string(),
        lock_file: crate::installer::abspath::normalise(&lock_path).display().to_string(),
        packages,
    })
}

/// The manifest digest `req.source` resolves to now, for its platform.
fn latest(state_dir: &Path, req: &crate::installer::InstallRequest) -> std::result::Result<String, SourceError> {
    let platform = req.registry.platform.clone().unwrap_or_else(source::layout::host_platform);
    let artifact = match source::reference::parse(&req.source)? {
        SourceRef::Layout { path, selector } => {
            source::OciLayout::open(&path)?.resolve_for_platform(&selector, &req.source, &platform)?
        }
        SourceRef::Registry { registry, repository, selector } => {
            // No signature is checked here (see the module doc).
            let opts = source::registry::RegistryOptions { verify_key: None, progress: false, ..req.registry.clone() };
            source::registry::resolve_manifest(
                state_dir,
                &registry,
                &repository,
                &selector,
                &req.source,
                &opts,
                interrupt::requested,
            )?
        }
    };
    Ok(artifact.manifest_digest)
}
