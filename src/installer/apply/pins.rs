//! Pinning a desired set's references, as Cargo.lock pins versions: an
//! entry whose reference and platform are unchanged keeps the digest its
//! lock pins (the tag is not resolved again); a new or changed entry is
//! resolved; `update` re-resolves the entries it names (or all). Every pin
//! that moves is reported as a [`LockChange`]. Resolution here reads
//! manifests only: no blob is downloaded, nothing enters the cache, and
//! nothing is written (the caller writes the lock file).

use std::collections::BTreeMap;

use super::desired::{DesiredPackage, DesiredSet};
use super::lockfile::{LockFile, Pin, Signer, LOCK_VERSION};
use crate::installer::{Error, InstallRequest, Installer, Result};
use crate::source::{self, reference::LAYOUT_SCHEME, SourceError, SourceRef};

/// One pin that moved (or appeared, or went away) in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockChange {
    pub name: String,
    /// The reference as the desired-state file writes it (or the lock did,
    /// for an entry the file no longer lists).
    pub reference: String,
    /// The digest pinned before; `None` for a new entry.
    pub old_digest: Option<String>,
    /// The digest pinned now; `None` for an entry dropped from the lock.
    pub new_digest: Option<String>,
}

impl LockChange {
    /// `NAME REF sha256:old -> sha256:new`; `(new)` / `(removed)` for an
    /// entry that appears or goes away.
    pub fn line(&self) -> String {
        let old = self.old_digest.as_deref().unwrap_or("(new)");
        let new = self.new_digest.as_deref().unwrap_or("(removed)");
        format!("{} {} {old} -> {new}", self.name, self.reference)
    }
}

/// One package of the set, resolved (manifest only) to the digest it is pinned to.
pub struct Resolved {
    /// The package's request with its source pinned by digest, so a later
    /// fetch gets exactly the manifest resolved here.
    pub request: InstallRequest,
    pub source_ref: SourceRef,
    pub artifact: source::ResolvedArtifact,
    pub blobs: Box<dyn source::BlobSource>,
}

/// The set resolved: each package (in the set's order), the lock that pins
/// them, and the pins that moved.
pub struct Pinned {
    pub packages: Vec<Resolved>,
    pub lock: LockFile,
    pub changes: Vec<LockChange>,
}

/// `ref` pinned to `digest`: the same layout or repository, by digest.
pub fn pinned(source: &str, digest: &str) -> Result<String> {
    Ok(match source::reference::parse(source)? {
        SourceRef::Layout { path, .. } => format!("{LAYOUT_SCHEME}{}@{digest}", path.display()),
        SourceRef::Registry { registry, repository, .. } => format!("{registry}/{repository}@{digest}"),
    })
}

/// `OS/ARCH` a request resolves for.
pub fn platform_of(req: &InstallRequest) -> String {
    let p = req.registry.platform.clone().unwrap_or_else(source::layout::host_platform);
    format!("{}/{}", p.os, p.architecture)
}

/// Whose signature resolving `artifact` verified: its key's fingerprint,
/// or the keyless certificate's identity and issuer (for a regexp policy,
/// the identity that matched, so `--locked` tells a new signer apart even
/// when the pattern accepts both). `None`: no signature was asked for, so
/// none was checked.
pub fn signer_of(artifact: &source::ResolvedArtifact) -> Option<Signer> {
    let s = artifact.signer.as_deref()?;
    Some(match source::keyless::parse_recorded(s) {
        None => Signer::Key { key: s.to_string() },
        Some((identity, issuer)) => Signer::Identity { identity: identity.to_string(), issuer: issuer.to_string() },
    })
}

/// The lock's pin for `p`, if its entry is unchanged (same reference, same platform).
fn usable_pin<'a>(p: &DesiredPackage, lock: Option<&'a LockFile>) -> Option<&'a Pin> {
    lock?.package.get(&p.name).filter(|pin| pin.reference == p.reference && pin.platform == platform_of(&p.request))
}

/// `FILE:LINE: package "NAME": ERROR` for a package whose reference
/// cannot be resolved, so the error says which file and entry; an
/// interruption or a malformed reference (a usage error) passes as it is.
fn in_file(set: &DesiredSet, p: &DesiredPackage, e: Error) -> Error {
    match e {
        Error::Source(s) if !matches!(s, SourceError::Interrupted | SourceError::BadReference { .. }) => {
            Error::Refused(format!("{}:{}: package {:?}: {s}", set.path.display(), p.line, p.name))
        }
        e => e,
    }
}

impl Installer {
    /// Resolves every package of `set` (see the module doc). `reresolve`
    /// names the packages whose pins are ignored (`update`).
    pub(crate) fn pin_set(
        &self,
        set: &DesiredSet,
        old: Option<&LockFile>,
        reresolve: &dyn Fn(&str) -> bool,
    ) -> Result<Pinned> {
        let mut packages = Vec::new();
        let mut pins = BTreeMap::new();
        let mut changes = Vec::new();
        for p in &set.packages {
            let mut req = p.request.clone();
            let kept = usable_pin(p, old).filter(|_| !reresolve(&p.name));
            if let Some(pin) = kept {
                req.source = pinned(&p.request.source, pin.install_digest())?;
            }
            let (source_ref, artifact, blobs) = match (self.resolve_only(&req), kept) {
                (Err(Error::Source(e)), Some(pin)) if !matches!(e, SourceError::Interrupted) => {
                    return Err(Error::Refused(format!(
                        "{}:{}: package {:?}: the lock pins {} to {}, which cannot be resolved: {e}. Nothing was \
                         changed; `stagehand update {}` resolves its reference again",
                        set.path.display(),
                        p.line,
                        p.name,
                        p.reference,
                        pin.digest,
                        p.name
                    )))
                }
                (r, _) => r.map_err(|e| in_file(set, p, e))?,
            };
            if let Some(pin) = kept.filter(|pin| pin.digest != artifact.manifest_digest) {
                return Err(Error::Refused(format!(
                    "{}: the lock pins {} to {} in index {}, but that index now gives {} for {}. Nothing was \
                     changed; `stagehand update {}` resolves its reference again",
                    p.name,
                    p.reference,
                    pin.digest,
                    pin.install_digest(),
                    artifact.manifest_digest,
                    pin.platform,
                    p.name
                )));
            }
            let pin = Pin {
                reference: p.reference.clone(),
                digest: artifact.manifest_digest.clone(),
                platform: platform_of(&p.request),
                index: artifact.index_digest.clone(),
                signer: signer_of(&artifact),
            };
            let before = old.and_then(|l| l.package.get(&p.name));
            if before != Some(&pin) {
                changes.push(LockChange {
                    name: p.name.clone(),
                    reference: p.reference.clone(),
                    old_digest: before.map(|b| b.digest.clone()),
                    new_digest: Some(pin.digest.clone()),
                });
            }
            req.source = pinned(&p.request.source, pin.install_digest())?;
            pins.insert(p.name.clone(), pin);
            packages.push(Resolved { request: req, source_ref, artifact, blobs });
        }
        for (name, pin) in old.map(|l| &l.package).into_iter().flatten() {
            if !pins.contains_key(name) {
                changes.push(LockChange {
                    name: name.clone(),
                    reference: pin.reference.clone(),
                    old_digest: Some(pin.digest.clone()),
                    new_digest: None,
                });
            }
        }
        Ok(Pinned { packages, lock: LockFile { version: LOCK_VERSION, package: pins }, changes })
    }
}

/// Refuses, naming every difference, when the lock does not pin exactly
/// the file's packages and references (`apply --locked`).
pub fn check_agreement(set: &DesiredSet, lock: &LockFile, lock_path: &std::path::Path) -> Result<()> {
    let mut diffs = Vec::new();
    for p in &set.packages {
        match lock.package.get(&p.name) {
            None => diffs.push(format!("{} is not in the lock", p.name)),
            Some(pin) if pin.reference != p.reference => {
                diffs.push(format!("{}: the file says {:?}, the lock {:?}", p.name, p.reference, pin.reference))
            }
            Some(pin) if pin.platform != platform_of(&p.request) => diffs.push(format!(
                "{}: platform {} here, {} in the lock",
                p.name,
                platform_of(&p.request),
                pin.platform
            )),
            Some(_) => {}
        }
    }
    for name in lock.package.keys() {
        if !set.packages.iter().any(|p| &p.name == name) {
            diffs.push(format!("{name} is in the lock but not in the file"));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "--locked: {} and {} disagree ({}); nothing was changed. Run `stagehand lock --file {}` to pin the file's \
         references again, or apply without --locked",
        set.path.display(),
        lock_path.display(),
        diffs.join("; "),
        set.path.display()
    )))
}

/// Refuses, naming both, when a package's signer verified now differs from
/// the one the lock recorded (`apply --locked`, after every reference was
/// resolved and its signature verified again).
pub fn check_signers(set: &DesiredSet, lock: &LockFile, now: &LockFile, lock_path: &std::path::Path) -> Result<()> {
    let shown =
        |s: Option<&Signer>| s.map_or_else(|| "no signer (no signature was checked)".to_string(), |s| s.to_string());
    let mut diffs = Vec::new();
    for (name, pin) in &lock.package {
        let verified = now.package.get(name).and_then(|p| p.signer.as_ref());
        if pin.signer.as_ref() != verified {
            diffs.push(format!(
                "{name}: the lock records {}, this apply verified {}",
                shown(pin.signer.as_ref()),
                shown(verified)
            ));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "--locked: the signer changed ({}); nothing was changed. If the new signer is the right one, \
         `stagehand lock --file {}` records it in {}",
        diffs.join("; "),
        set.path.display(),
        lock_path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(signer: Option<Signer>) -> LockFile {
        let pin = Pin {
            reference: "r:v1".into(),
            digest: "sha256:d".into(),
            platform: "linux/amd64".into(),
            index: None,
            signer,
        };
        LockFile { version: LOCK_VERSION, package: [("demo".to_string(), pin)].into() }
    }

    #[test]
    fn a_changed_signer_is_refused_naming_both() {
        let set = DesiredSet {
            path: "/d/stagehand.toml".into(),
            canonical: "/d/stagehand.toml".into(),
            packages: Vec::new(),
        };
        let key = |k: &str| Some(Signer::Key { key: k.into() });
        let p = std::path::Path::new("/d/stagehand.lock");
        assert!(check_signers(&set, &lock(key("sha256:a")), &lock(key("sha256:a")), p).is_ok());
        assert!(check_signers(&set, &lock(None), &lock(None), p).is_ok());
        let e = check_signers(&set, &lock(key("sha256:a")), &lock(key("sha256:b")), p).unwrap_err().to_string();
        assert!(e.contains("key sha256:a") && e.contains("key sha256:b") && e.contains("stagehand lock"), "{e}");
        // Dropping the check is a change of signer too, and so is adding one.
        let e = check_signers(&set, &lock(key("sha256:a")), &lock(None), p).unwrap_err().to_string();
        assert!(e.contains("key sha256:a") && e.contains("no signer"), "{e}");
        let keyless = Some(Signer::Identity { identity: "me@example.org".into(), issuer: "https://i".into() });
        let e = check_signers(&set, &lock(None), &lock(keyless), p).unwrap_err().to_string();
        assert!(e.contains("identity me@example.org (issuer https://i)"), "{e}");
    }

    #[test]
    fn lock_change_lines() {
        let c = |old: Option<&str>, new: Option<&str>| LockChange {
            name: "demo".into(),
            reference: "r:v1".into(),
            old_digest: old.map(String::from),
            new_digest: new.map(String::from),
        };
        assert_eq!(c(Some("sha256:a"), Some("sha256:b")).line(), "demo r:v1 sha256:a -> sha256:b");
        assert_eq!(c(None, Some("sha256:b")).line(), "demo r:v1 (new) -> sha256:b");
        assert_eq!(c(Some("sha256:a"), None).line(), "demo r:v1 sha256:a -> (removed)");
    }
}
