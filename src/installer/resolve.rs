//! Where a request's bytes and paths come from: resolving a source to a
//! manifest and its blobs (a layout, or a registry pulled whole into the
//! blob cache), importing a layout's blobs into the cache, resolving
//! destinations, and placing an artifact by `--to`/`--map` or a profile.
//! Nothing here journals or touches a destination.

use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};

use super::planner::PutRequest;
use super::{
    interrupt, io, path_str, Error, InstallRequest, Installer, ProfileRequest, Result, REQUIRE_SIGNATURE_FILE,
};
use crate::fsops;
use crate::plan;
use crate::source::{self, SourceError, SourceRef};
use crate::txn::{Op, PlacementRecord};

/// How much of a source [`Installer::fetch_as`] brings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// The manifest and every blob (a registry's downloading into the cache).
    Blobs,
    /// The manifest only; nothing is written.
    ManifestOnly,
}

/// True if `path` is a regular file owned by the current user that group
/// and others cannot write, so a hard link to it in the cache shares its
/// inode with nobody else who could change it.
fn only_we_can_write(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// Puts a layout version's manifest and blobs into the blob cache, so
/// `rollback` can reinstall it offline later. Called after the commit
/// point: roll-forward needs only the staged tree, so nothing here is on
/// the transaction's durability path. The manifest is stored (small,
/// fsynced); a blob is hard-linked where the layout is on the same
/// filesystem and its blob is writable only by us (the cache never shares
/// an inode with a file someone else can write), else copied into its
/// partial file unsynced ([`source::cache::BlobCache::stash`]): a later
/// rollback promotes it (re-hashed, fsynced) or, if it was lost or
/// damaged, says so and changes nothing.
pub(super) fn import_layout_blobs(state_dir: &Path, layout: &Path, artifact: &source::ResolvedArtifact) -> Result<()> {
    let cache = source::cache::BlobCache::new(state_dir);
    cache.ensure_dirs()?;
    let layout = source::OciLayout::open(layout)?;
    let manifest_path = layout.blob_path(&artifact.manifest_digest)?;
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io(format!("reading {}", manifest_path.display())))?;
    cache.put_small(&artifact.manifest_digest, &manifest_bytes)?;
    let m = &artifact.manifest;
    let mut linked = false;
    for desc in std::iter::once(&m.config).chain(&m.layers) {
        if cache.contains(desc)? {
            continue;
        }
        let dst = cache.blob_path(&desc.digest)?;
        let src = layout.blob_path(&desc.digest)?;
        if only_we_can_write(&src) && fsops::hard_link(&src, &dst, "cache").is_ok() {
            linked = true;
            continue;
        }
        cache.stash(desc, &src)?;
    }
    if linked {
        fsops::fsync_dir(cache.root().join("sha256").as_path(), "cache").map_err(io("syncing the blob cache"))?;
    }
    Ok(())
}

/// Makes a destination path absolute, resolving symlinks in its parent's
/// existing ancestors but not in its final component (so a symlinked target
/// is seen, and refused, rather than followed). Refuses `..` where it
/// cannot be resolved.
pub fn resolve_destination(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(io(format!("resolving {}", p.display())))?;
    let (Some(name), Some(parent)) = (abs.file_name(), abs.parent()) else {
        return Err(Error::Refused(format!("{} cannot be a destination", p.display())));
    };
    let mut existing = parent.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(pp)) => {
                rest.push(n.to_os_string());
                existing = pp.to_path_buf();
            }
            _ => return Err(Error::Refused(format!("{} climbs out with `..`", p.display()))),
        }
    }
    let mut out = existing.canonicalize().map_err(io(format!("resolving {}", existing.display())))?;
    for n in rest.iter().rev() {
        out.push(n);
    }
    out.push(name);
    if out.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::Refused(format!("{} climbs out with `..`", p.display())));
    }
    Ok(out)
}

/// True if the request names a placement itself (`--to`, `--map` or
/// `--profile`); if not, an installed package's recorded one is used.
fn names_placement(req: &InstallRequest) -> bool {
    req.placement.to.is_some() || !req.placement.maps.is_empty() || req.profile.is_some()
}

/// Makes `req` place its artifact as `p` records: `to` and `maps`, or the
/// profile with its install dir and db version; and the recorded platform
/// unless the request names one.
pub(super) fn use_placement(req: &mut InstallRequest, p: &PlacementRecord) -> Result<()> {
    if req.registry.platform.is_none() {
        if let Some((os, arch)) = p.platform.as_deref().and_then(|s| s.split_once('/')) {
            req.registry.platform = Some(source::Platform { os: os.into(), architecture: arch.into(), variant: None });
        }
    }
    req.placement = plan::Placement {
        to: p.to.as_ref().map(PathBuf::from),
        maps: p.maps.iter().map(|m| plan::MapRule::parse(m)).collect::<std::result::Result<_, _>>()?,
    };
    req.profile = match &p.profile {
        None => None,
        Some(prof) => Some(ProfileRequest {
            profile: plan::profile::Profile::parse(prof)?,
            install_dir: PathBuf::from(p.install_dir.clone().unwrap_or_default()),
            db_version: p.db_version.clone(),
            platform: req.registry.platform.as_ref().map(|pl| (pl.os.clone(), pl.architecture.clone())),
        }),
    };
    Ok(())
}

/// Where a request's artifact goes: its planned targets, and the placement
/// as recorded (destinations resolved to absolute paths).
pub(super) fn place(
    source_ref: &SourceRef,
    artifact: &source::ResolvedArtifact,
    req: &InstallRequest,
) -> Result<(Vec<plan::PlannedTarget>, PlacementRecord)> {
    let mut placement_record = PlacementRecord::default();
    let planned = match &req.profile {
        Some(p) => {
            placement_record.profile = Some(p.profile.name().to_string());
            placement_record.install_dir = Some(path_str(&resolve_destination(&p.install_dir)?)?);
            placement_record.db_version = p.db_version.clone();
            plan_profile(p, &artifact.manifest, source_ref)?
        }
        None => {
            let mut placement = req.placement.clone();
            if let Some(to) = &placement.to {
                let to = resolve_destination(to)?;
                placement_record.to = Some(path_str(&to)?);
                placement.to = Some(to);
            }
            for m in placement.maps.iter_mut() {
                m.dir = resolve_destination(&m.dir)?;
                placement_record.maps.push(format!("{}={}", m.glob, path_str(&m.dir)?));
            }
            plan::place(&artifact.manifest, &placement)?
        }
    };
    placement_record.platform = req.registry.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture));
    Ok((planned, placement_record))
}

/// Plans a Steampipe profile install.
pub(super) fn plan_profile(
    p: &ProfileRequest,
    manifest: &source::manifest::ImageManifest,
    source_ref: &SourceRef,
) -> Result<Vec<plan::PlannedTarget>> {
    use plan::profile::{place_profile, Profile, ProfileContext};
    let install_dir = resolve_destination(&p.install_dir)?;
    let (os, arch) = p.platform.clone().unwrap_or_else(|| {
        let h = source::layout::host_platform();
        (h.os, h.architecture)
    });
    let mut db_version = p.db_version.clone();
    if db_version.is_none() && p.profile == Profile::SteampipeFdw {
        // The FDW goes into the one installed database, if there is exactly one.
        let versions: Vec<String> = std::fs::read_dir(install_dir.join("db"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("postgres").is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match versions.as_slice() {
            [one] => db_version = Some(one.clone()),
            [] => {
                return Err(Error::Refused(format!(
                    "no database is installed under {}/db; install one with --profile steampipe-db first, or pass --db-version",
                    install_dir.display()
                )))
            }
            many => {
                return Err(Error::Refused(format!(
                    "several databases are installed ({}); pass --db-version",
                    many.join(", ")
                )))
            }
        }
    }
    let ctx = ProfileContext { install_dir, plugin_path: plugin_path(source_ref), db_version, os, arch };
    Ok(place_profile(manifest, p.profile, &ctx)?)
}

/// Where a plugin lives under `plugins/`: `<registry>/<repository>@<tag>`
/// (Steampipe's layout); an OCI layout counts as registry `local`.
pub(super) fn plugin_path(source_ref: &SourceRef) -> String {
    match source_ref {
        SourceRef::Layout { selector, .. } => {
            let tag = match selector {
                source::Selector::Tag(t) => t.clone(),
                _ => "latest".to_string(),
            };
            format!("local/{}@{tag}", source_ref.default_name())
        }
        SourceRef::Registry { registry, repository, selector } => {
            let tag = match selector {
                source::Selector::Tag(t) => t.clone(),
                _ => "latest".to_string(),
            };
            format!("{registry}/{repository}@{tag}")
        }
    }
}

impl Installer {
    /// The request as it is if it names a placement; else, for an installed
    /// package, the request with the package's recorded placement (an
    /// upgrade in place); else a usage error, since nothing says where the
    /// files go.
    pub(super) fn with_recorded_placement<'r>(&self, req: &'r InstallRequest) -> Result<Cow<'r, InstallRequest>> {
        if names_placement(req) {
            return Ok(Cow::Borrowed(req));
        }
        let name = match &req.name {
            Some(n) => n.clone(),
            None => source::reference::parse(&req.source)?.default_name(),
        };
        let Some(pkg) = self.journal.package(&name)? else {
            return Err(Error::Usage(format!(
                "install needs --to DIR and/or --map GLOB=DIR (or --profile NAME) to know where files go: no package \
                 named {name:?} is installed, so there is no recorded placement to upgrade in. Nothing was changed"
            )));
        };
        if pkg.placement.is_adopted() {
            return Err(Error::Usage(format!(
                "{name:?} holds the content --adopt kept ({}), which records no --to or --map: give the placement \
                 flags to install over it (for its kept artifact version, `stagehand rollback {name}`). Nothing \
                 was changed",
                pkg.source
            )));
        }
        let mut req = req.clone();
        use_placement(&mut req, &pkg.placement)?;
        tracing::debug!(package = %name, placement = %pkg.placement.describe(), "upgrading in place");
        Ok(Cow::Owned(req))
    }

    /// Resolves `req.source` to a manifest (checking its signature first,
    /// when asked) and its blobs: a layout's as they are, a registry's
    /// starting to download into the blob cache here, before anything is
    /// planned.
    pub(super) fn fetch(
        &self,
        req: &InstallRequest,
    ) -> Result<(SourceRef, source::ResolvedArtifact, Box<dyn source::BlobSource>)> {
        self.fetch_as(req, Fetch::Blobs)
    }

    /// Resolves `req.source` to its manifest only, changing nothing: a
    /// registry's manifest is fetched (or read from the cache) but neither it
    /// nor any blob enters the cache. The blob source returned is the cache
    /// as it is, enough to plan from (the planner reads no blob) but not to
    /// stage: for `apply --dry-run` and `lock`.
    pub(super) fn resolve_only(
        &self,
        req: &InstallRequest,
    ) -> Result<(SourceRef, source::ResolvedArtifact, Box<dyn source::BlobSource>)> {
        self.fetch_as(req, Fetch::ManifestOnly)
    }

    fn fetch_as(
        &self,
        req: &InstallRequest,
        fetch: Fetch,
    ) -> Result<(SourceRef, source::ResolvedArtifact, Box<dyn source::BlobSource>)> {
        let source_ref = source::reference::parse(&req.source)?;
        self.check_signature_policy(&source_ref, req)?;
        let (artifact, blobs): (source::ResolvedArtifact, Box<dyn source::BlobSource>) = match &source_ref {
            SourceRef::Layout { path, selector } => {
                let layout = source::OciLayout::open(path)?;
                let platform = req.registry.platform.clone().unwrap_or_else(source::layout::host_platform);
                let mut artifact = layout.resolve_for_platform(selector, &req.source, &platform)?;
                if let Some(key) = &req.verify_key {
                    source::signature::verify_layout(&layout, &mut artifact, &req.source, key)?;
                }
                (artifact, Box::new(layout))
            }
            // The manifest is resolved here and the blobs start downloading
            // into the cache; staging (after the planned record) reads each
            // blob while it downloads, and the staged record waits for every
            // blob to be complete and durable in the cache.
            SourceRef::Registry { registry, repository, selector } => {
                let opts =
                    source::registry::RegistryOptions { verify_key: req.verify_key.clone(), ..req.registry.clone() };
                if fetch == Fetch::ManifestOnly {
                    let resolved = source::registry::resolve_manifest(
                        &self.state_dir,
                        registry,
                        repository,
                        selector,
                        &req.source,
                        &opts,
                        interrupt::requested,
                    );
                    return match resolved {
                        Ok(artifact) => {
                            let cache = source::cache::BlobCache::new(&self.state_dir);
                            Ok((source_ref.clone(), artifact, Box::new(cache)))
                        }
                        Err(SourceError::Interrupted) => Err(Error::Interrupted),
                        Err(e) => Err(e.into()),
                    };
                }
                let resolved = source::registry::resolve(
                    &self.state_dir,
                    registry,
                    repository,
                    selector,
                    &req.source,
                    &opts,
                    interrupt::requested,
                );
                match resolved {
                    Ok(r) => (r.artifact().clone(), Box::new(r.start())),
                    Err(SourceError::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok((source_ref, artifact, blobs))
    }

    /// Turns a resolved install request into the planner's input: the name
    /// checked, the destinations resolved and placed.
    pub(super) fn put_request(
        &self,
        source_ref: &SourceRef,
        artifact: source::ResolvedArtifact,
        blobs: Box<dyn source::BlobSource>,
        req: &InstallRequest,
    ) -> Result<PutRequest> {
        let name = req.name.clone().unwrap_or_else(|| source_ref.default_name());
        if !plan::is_plain_file_name(&name) || name.starts_with('.') {
            return Err(Error::Refused(format!(
                "{name:?} is not a valid package name (use letters, digits, '.', '_', '-')"
            )));
        }
        let (planned, placement) = place(source_ref, &artifact, req)?;
        // Whoever resolved it verified the signature a key or keyless
        // policy asks for, and said by whom.
        debug_assert!(
            req.verify_key.is_none() || artifact.signer.is_some(),
            "a signature was asked for but not checked"
        );
        let signed_by = artifact.signer.clone();
        let layout = match source_ref {
            SourceRef::Layout { path, .. } if !req.rollback => Some(path.clone()),
            _ => None,
        };
        Ok(PutRequest {
            name,
            op: if req.rollback { Op::Rollback } else { Op::Install },
            source: super::abspath::normal_source(&req.source),
            artifact,
            blobs,
            planned,
            placement,
            adopt: req.adopt,
            allow_move: req.move_placement,
            keep_versions: req.keep_versions,
            signed_by,
            managed_by: None,
            layout,
            limits: req.limits,
            exact: false,
        })
    }

    /// `--require-signature` (or the state dir's default) without a key is
    /// an error; an install without a key over a package whose installed
    /// version was signature-checked warns that the check is being dropped.
    /// Runs before anything is fetched.
    fn check_signature_policy(&self, source_ref: &SourceRef, req: &InstallRequest) -> Result<()> {
        if req.verify_key.is_some() {
            return Ok(());
        }
        let name = req.name.clone().unwrap_or_else(|| source_ref.default_name());
        let signed_by = self.journal.package(&name)?.and_then(|p| p.signed_by);
        let default_file = self.state_dir.join(REQUIRE_SIGNATURE_FILE);
        let required = req.require_signature || default_file.exists();
        if required {
            let why = if req.require_signature {
                "--require-signature is set".to_string()
            } else {
                format!("{} exists, so every install must be signature-checked", default_file.display())
            };
            let was =
                signed_by.map(|fp| format!(" (its installed version was signed by key {fp})")).unwrap_or_default();
            return Err(Error::Refused(format!(
                "{why}: pass --verify-key PATH (the signer's cosign.pub) to install {name:?}{was}. Nothing was changed"
            )));
        }
        if let Some(fp) = signed_by {
            tracing::warn!(
                "{name:?} was installed with a cosign signature verified by key {fp}; this install checks no signature, so signature verification is being dropped. Pass --verify-key PATH to keep it, or --require-signature to make this an error"
            );
        }
        Ok(())
    }
}
