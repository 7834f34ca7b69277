//! Pulling an artifact from an OCI registry into the blob cache.
//!
//! This module owns talking to registries (through [`super::http`], whose
//! client carries the policy for untrusted servers, on a tokio runtime it
//! creates for the pull; the rest of stagehand is synchronous) and turning
//! registry failures into messages that say which registry refused what and
//! what to do about it. Each concern has its own file:
//! - `auth`: credentials the way Docker keeps them (config, helpers);
//! - `manifests`: a tag or digest resolved to a manifest (following an
//!   image index to one platform), and the blobs it still needs;
//! - `blobs`: one blob streamed into the [`BlobCache`], hashed while it
//!   streams, resumed with an HTTP range request after an interruption;
//! - `downloads`: the running downloads of a pull, which staging follows;
//! - `sig`: finding cosign signatures on the registry;
//! - `hosts`: a registry's mirrors and TLS settings (containerd's `hosts.toml`);
//! - `route`: each request tried on those hosts in order, as their
//!   capabilities allow.
//!
//! A pull finishes before the install transaction is planned, and staging
//! then reads only from the cache, so nothing here ever touches a
//! destination or the journal, and recovery never needs the network. It
//! never sends credentials over plain HTTP to anything but a loopback
//! registry, and it never follows a descriptor's foreign `urls`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::cache::BlobCache;
use super::http::{self, HttpFailure};
use super::manifest::{validate_digest, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST};
use super::{printable, Platform, ResolvedArtifact, Selector, SourceError, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

mod auth;
mod blobs;
pub mod downloads;
pub mod hosts;
pub mod inflight;
mod manifests;
mod route;
mod sig;

pub use auth::Secret;
use auth::{resolve_auth, CredSource};
use blobs::{check_download_space, fetch_blob, Bars, Job};
use manifests::resolve_async;

/// Layers downloaded at once unless [`RegistryOptions::max_concurrent_downloads`] says otherwise.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;
/// Environment variable overriding the Docker config directory (as Docker does).
pub const ENV_DOCKER_CONFIG: &str = "DOCKER_CONFIG";
/// Default overall deadline of one registry request, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;
/// The slowest transfer a blob download is given time for (bytes/second):
/// its deadline is the request timeout plus its size at this rate.
pub const MIN_BLOB_RATE: u64 = 64 * 1024;
/// Resume attempts within one pull after a transfer breaks off having made progress.
const RESUME_RETRIES: u32 = 2;
/// Media types we ask a registry for when fetching a manifest.
const ACCEPT: &[&str] =
    &[MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST];

/// How to pull from a registry (the install command's registry flags).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Talk plain HTTP; allowed only for loopback registries (`--plain-http`).
    pub plain_http: bool,
    /// The platform to pick from an image index (`--platform`); default the host's.
    pub platform: Option<Platform>,
    /// `--username`; with `password`, overrides every other credential source.
    pub username: Option<String>,
    /// The password or token read by `--password-stdin`.
    pub password: Option<Secret>,
    /// Draw progress bars on stderr (the CLI sets this only on a terminal).
    pub progress: bool,
    /// Layers downloaded at once; 0 means [`DEFAULT_CONCURRENT_DOWNLOADS`].
    pub max_concurrent_downloads: usize,
    /// `--verify-key`: accept the manifest only with a cosign signature by this key.
    pub verify_key: Option<super::signature::VerifyKey>,
    /// Overall deadline of one request (`--request-timeout`); zero means
    /// [`DEFAULT_REQUEST_TIMEOUT_SECS`]. A blob download gets more time in
    /// proportion to its size (see [`MIN_BLOB_RATE`]).
    pub request_timeout: Duration,
}

/// Parses `OS/ARCH` or `OS/ARCH/VARIANT` (e.g. `linux/arm64/v8`).
pub fn parse_platform(s: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match parts.as_slice() {
        [os, arch] if ok(os) && ok(arch) => {
            Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
        }
        [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
            Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(variant.to_string()) })
        }
        _ => Err(format!("--platform {s:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64")),
    }
}

/// True for `localhost`, `127.0.0.0/8` and `[::1]` (with or without a port).
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Everything one pull needs, shared by its tasks.
struct Ctx {
    /// The registry's hosts (mirrors, then itself), tried in order.
    session: route::Route,
    cred_source: CredSource,
    registry: String,
    repository: String,
    plain_http: bool,
    request_timeout: Duration,
    interrupted: fn() -> bool,
    /// Every manifest and blob fetched over the network, and its host.
    served: Arc<std::sync::Mutex<Vec<crate::source::Served>>>,
}

/// Why a request failed, before it is turned into a message.
enum Failure {
    /// The registry says the manifest or blob is not there.
    NotFound,
    Other(SourceError),
}

impl Ctx {
    /// Notes that `host` served `digest` (verified).
    fn note_served(&self, digest: &str, host: &str) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.push(crate::source::Served { digest: digest.to_string(), host: host.to_string() });
    }

    fn name(&self) -> String {
        printable(&format!("{}/{}", self.registry, self.repository))
    }

    fn login_hint(&self) -> String {
        let how = format!(
            "log in with `docker login {}` (stagehand reads $DOCKER_CONFIG/config.json, else ~/.docker/config.json, and its credential helpers) or pass --username USER --password-stdin",
            self.registry
        );
        match &self.cred_source {
            CredSource::Anonymous => format!("it needs credentials: {how}"),
            other => format!("{other} were refused: check them, or {how}"),
        }
    }

    fn unauthorized(&self, status: &str) -> SourceError {
        SourceError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            status: status.to_string(),
            hint: self.login_hint(),
        }
    }

    /// What a failed request means, as a message naming the registry.
    fn classify(&self, e: HttpFailure) -> Failure {
        let registry = printable(&self.registry);
        match e {
            HttpFailure::Status { status, message } => match status {
                StatusCode::UNAUTHORIZED => Failure::Other(self.unauthorized("401 Unauthorized")),
                StatusCode::FORBIDDEN => Failure::Other(self.unauthorized("403 Forbidden")),
                StatusCode::NOT_FOUND if message.starts_with("NAME_UNKNOWN") => {
                    Failure::Other(SourceError::RepositoryNotFound {
                        registry,
                        repository: printable(&self.repository),
                    })
                }
                StatusCode::NOT_FOUND => Failure::NotFound,
                StatusCode::TOO_MANY_REQUESTS => Failure::Other(SourceError::Registry {
                    registry,
                    reason: "too many requests (rate limited); try again later".into(),
                }),
                _ => Failure::Other(SourceError::Registry { registry, reason: format!("HTTP {status}: {message}") }),
            },
            HttpFailure::Transport { mut reason, timeout } => {
                if timeout {
                    reason = format!(
                        "timed out (the deadline is --request-timeout, {} s, plus time for a blob's size): {reason}",
                        self.request_timeout.as_secs()
                    );
                }
                if let Some(hint) = hosts::tls_hint(&reason) {
                    reason.push_str(hint);
                } else if !self.plain_http && is_loopback(&self.registry) {
                    reason.push_str("; if this registry serves plain HTTP, pass --plain-http");
                }
                Failure::Other(SourceError::Unreachable { registry, reason })
            }
            HttpFailure::TooLarge { what, cap } => Failure::Other(SourceError::Registry {
                registry,
                reason: format!("its {what} is larger than the {cap}-byte limit; refusing to read it"),
            }),
            HttpFailure::Refused(reason) => Failure::Other(SourceError::Registry { registry, reason }),
        }
    }
}

/// Pulls `registry/repository` at `selector` into the blob cache of
/// `state_dir`: the manifest (and index, if any) and every blob it names.
/// Returns the artifact and the cache to stage from. `interrupted` is polled
/// between chunks; when it says so the pull stops with
/// [`SourceError::Interrupted`], keeping partials for a resume.
pub fn pull(
    state_dir: &Path,
    registry: &str,
    repository: &str,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    interrupted: fn() -> bool,
) -> Result<(ResolvedArtifact, BlobCache), SourceError> {
    let resolved = resolve(state_dir, registry, repository, selector, display, opts, interrupted)?;
    let artifact = resolved.artifact().clone();
    let cache = resolved.cache.clone();
    let downloads = resolved.start();
    crate::source::BlobSource::complete(&downloads)?;
    Ok((artifact, cache))
}

/// An artifact resolved on a registry (manifest fetched, signature checked,
/// free space for its blobs checked) whose blobs are not fetched yet.
pub struct Resolved {
    runtime: tokio::runtime::Runtime,
    ctx: Arc<Ctx>,
    cache: BlobCache,
    artifact: ResolvedArtifact,
    jobs: Vec<Job>,
    bars: Bars,
    limit: usize,
}

impl Resolved {
    /// The manifest to plan the install from.
    pub fn artifact(&self) -> &ResolvedArtifact {
        &self.artifact
    }

    /// Starts every blob's download (a few at a time, in manifest order)
    /// and returns them as a blob source that staging reads while they
    /// download (see [`downloads::Downloads`]).
    pub fn start(self) -> downloads::Downloads {
        let Resolved { runtime, ctx, cache, jobs, bars, limit, .. } = self;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(limit));
        let slots = inflight::slots();
        let mut set = tokio::task::JoinSet::new();
        let mut feeds = BTreeMap::new();
        let mut shared = Vec::new();
        for job in jobs {
            let feed = match inflight::claim(cache.root(), &job.desc.digest) {
                inflight::Claim::Own(feed) => feed,
                inflight::Claim::Shared(feed) => {
                    // Another package of this command downloads it: follow that.
                    tracing::debug!(blob = %job.desc.digest, "shared with another pull of this command");
                    feeds.insert(job.desc.digest.clone(), feed.clone());
                    shared.push((job.desc.clone(), feed));
                    continue;
                }
            };
            feeds.insert(job.desc.digest.clone(), feed.clone());
            let (ctx, cache, bars, sem, slots) =
                (ctx.clone(), cache.clone(), bars.clone(), semaphore.clone(), slots.clone());
            set.spawn_on(
                async move {
                    let (Ok(_permit), Ok(_slot)) = (sem.acquire_owned().await, slots.acquire_owned().await) else {
                        feed.failed("interrupted".into());
                        return Err(SourceError::Interrupted);
                    };
                    fetch_blob(ctx, cache, job, bars, feed).await
                },
                runtime.handle(),
            );
        }
        downloads::Downloads::new(
            runtime,
            set,
            feeds,
            shared,
            cache,
            bars.overall,
            ctx.registry.clone(),
            ctx.interrupted,
            ctx.served.clone(),
        )
    }
}

/// Resolves `registry/repository` at `selector` to a manifest (following an
/// index to one platform, checking the signature when a key is given) and
/// checks that its missing blobs fit in the blob cache. Nothing but the
/// manifest (and index) enters the cache yet; [`Resolved::start`] fetches
/// the blobs.
pub fn resolve(
    state_dir: &Path,
    registry: &str,
    repository: &str,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    interrupted: fn() -> bool,
) -> Result<Resolved, SourceError> {
    resolve_keeping(state_dir, registry, repository, selector, display, opts, interrupted, true)
}

/// Resolves `registry/repository` at `selector` to its manifest as
/// [`resolve`] does (index followed, signature checked, free space for the
/// missing blobs checked when the cache exists), changing nothing: the blob
/// cache is read (a manifest already there is not fetched again) but
/// nothing enters it, and no blob is fetched. For `apply --dry-run` and
/// `lock`.
pub fn resolve_manifest(
    state_dir: &Path,
    registry: &str,
    repository: &str,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    interrupted: fn() -> bool,
) -> Result<ResolvedArtifact, SourceError> {
    let r = resolve_keeping(state_dir, registry, repository, selector, display, opts, interrupted, false)?;
    Ok(r.artifact)
}

/// [`resolve`]; with `keep` false, nothing is written to the cache.
#[allow(clippy::too_many_arguments)]
fn resolve_keeping(
    state_dir: &Path,
    registry: &str,
    repository: &str,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    interrupted: fn() -> bool,
    keep: bool,
) -> Result<Resolved, SourceError> {
    if opts.plain_http && !is_loopback(registry) {
        return Err(SourceError::Registry {
            registry: registry.to_string(),
            reason: "--plain-http is allowed only for a loopback registry (localhost, 127.0.0.0/8, [::1]); \
                     this one must be reached over HTTPS"
                .into(),
        });
    }
    if let Selector::Digest(d) = selector {
        validate_digest(d)?;
    }
    let cache = BlobCache::new(state_dir);
    if keep {
        cache.ensure_dirs()?;
    }
    let (auth, cred_source) = resolve_auth(registry, opts)?;
    tracing::debug!(registry, credentials = %cred_source, "pulling");
    let config_err = |e: String| SourceError::Registry {
        registry: registry.to_string(),
        reason: format!("host configuration: {e}"),
    };
    let request_timeout = match opts.request_timeout {
        t if t.is_zero() => Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
        t => t,
    };
    let hosts = hosts::hosts_for(registry, opts.plain_http).map_err(config_err)?;
    // A mirror gets only what Docker's config holds for its own name.
    let stored = RegistryOptions { username: None, password: None, ..opts.clone() };
    let own = |host: &str| resolve_auth(host, &stored).ok().and_then(|(c, _)| c);
    let session = route::Route::new(hosts, registry, repository, request_timeout, auth, &own).map_err(config_err)?;
    let ctx = Arc::new(Ctx {
        session,
        cred_source,
        registry: registry.to_string(),
        repository: repository.to_string(),
        plain_http: opts.plain_http,
        request_timeout,
        interrupted,
        served: Arc::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SourceError::Io { what: "starting the async runtime".into(), source: e })?;
    let (artifact, jobs) = runtime.block_on(resolve_async(&ctx, &cache, selector, display, opts, keep))?;
    let total: u64 = jobs.iter().map(|j| j.desc.size).sum();
    if keep || cache.root().is_dir() {
        check_download_space(&cache, total)?;
    }
    let progress = keep && opts.progress && std::io::stderr().is_terminal();
    let bars = Bars::new(progress && !jobs.is_empty(), total, repository.rsplit('/').next().unwrap_or(repository));
    let limit = match opts.max_concurrent_downloads {
        0 => DEFAULT_CONCURRENT_DOWNLOADS,
        n => n,
    };
    Ok(Resolved { runtime, ctx, cache, artifact, jobs, bars, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for yes in ["localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "127.1.2.3:80", "[::1]:5000", "[::1]"]
        {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in ["ghcr.io", "10.0.0.1:5000", "localhost.example.com", "[::2]:5000", "128.0.0.1"] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn platform_parsing() {
        let p = parse_platform("linux/arm64/v8").expect("parses");
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm64", Some("v8")));
        assert!(parse_platform("linux/amd64").expect("parses").variant.is_none());
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(parse_platform(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RegistryOptions { plain_http: true, ..Default::default() };
        let err = pull(dir.path(), "ghcr.io", "x", &Selector::Tag("v1".into()), "ghcr.io/x:v1", &opts, || false)
            .expect_err("refused");
        assert!(err.to_string().contains("--plain-http is allowed only for a loopback registry"), "{err}");
        assert!(!dir.path().join("blobs").exists(), "nothing created");
    }

    #[test]
    fn secret_is_redacted() {
        let o = RegistryOptions { password: Some(Secret("hunter2".into())), ..Default::default() };
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
