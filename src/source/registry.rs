//! Pulling an artifact from an OCI registry into the blob cache.
//!
//! This module owns talking to registries (through [`super::http`], whose
//! client carries the policy for untrusted servers, on a tokio runtime it
//! creates for the pull; the rest of stagehand is synchronous):
//! resolving a tag or digest to a manifest (following an image index to one
//! platform), finding credentials the way Docker keeps them, streaming every
//! blob the manifest names into the [`BlobCache`] — hashed while it streams,
//! resumed with an HTTP range request after an interruption, a few at a time
//! — and turning registry failures into messages that say which registry
//! refused what and what to do about it.
//!
//! A pull finishes before the install transaction is planned, and staging
//! then reads only from the cache, so nothing here ever touches a
//! destination or the journal, and recovery never needs the network. It
//! never sends credentials over plain HTTP to anything but a loopback
//! registry, and it never follows a descriptor's foreign `urls`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::cache::{BlobCache, BlobWriter};
use super::feed::Feed;
use super::http::{self, Basic, HttpFailure, Session};
use super::layout::{host_platform, platform_name};
use super::manifest::{
    is_index_media_type, is_manifest_media_type, parse_index, parse_manifest, validate_digest,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
};
use super::verify::blob_label;
use super::{
    printable, Descriptor, Platform, ResolvedArtifact, Selector, SourceError, MAX_MANIFEST_BYTES, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};

pub mod downloads;
mod sig;

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

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// Where credentials came from, for messages.
#[derive(Debug, Clone)]
enum CredSource {
    Anonymous,
    Flags,
    Helper(String),
    ConfigFile(PathBuf),
}

impl fmt::Display for CredSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredSource::Anonymous => f.write_str("no credentials (anonymous)"),
            CredSource::Flags => f.write_str("the credentials given with --username/--password-stdin"),
            CredSource::Helper(h) => write!(f, "the credentials from docker-credential-{h}"),
            CredSource::ConfigFile(p) => write!(f, "the credentials in {}", p.display()),
        }
    }
}

/// The parts of Docker's `config.json` we read. Each `auths` entry is
/// parsed only when its registry is pulled from, so a malformed entry
/// affects only its own registry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What a `docker-credential-*` helper prints for `get`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// The Docker config directory: `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(ENV_DOCKER_CONFIG).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The keys a registry may be filed under in `auths` and `credHelpers`.
fn config_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        keys.extend(["https://index.docker.io/v1/".to_string(), "index.docker.io".into(), "docker.io".into()]);
    }
    keys
}

/// Normalizes an `auths` key (`https://host/v1/` → `host`).
fn normalize_key(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Runs `docker-credential-<helper> get`. `Ok(None)` if the helper is not
/// installed or has nothing for this registry.
fn run_helper(helper: &str, registry: &str) -> Result<Option<(String, String)>, SourceError> {
    let bin = format!("docker-credential-{helper}");
    let cred_err = |reason: String| SourceError::Credentials { registry: registry.to_string(), reason };
    tracing::debug!(helper = %bin, registry, "asking the credential helper");
    let mut child =
        match Command::new(&bin).arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(helper = %bin, "credential helper not installed; skipping it");
                return Ok(None);
            }
            Err(e) => return Err(cred_err(format!("running {bin}: {e}"))),
        };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is handled below.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| cred_err(format!("running {bin}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.to_ascii_lowercase().contains("not found") || out.stdout.is_empty() {
            tracing::debug!(helper = %bin, "the credential helper has nothing for this registry");
            return Ok(None);
        }
        return Err(cred_err(format!("{bin} get failed: {msg}")));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| cred_err(format!("{bin} printed something that is not credentials JSON: {e}")))?;
    if reply.username == "<token>" {
        tracing::warn!(helper = %bin, "the credential helper holds an identity token, which stagehand cannot use; pulling anonymously");
        return Ok(None);
    }
    Ok(Some((reply.username, reply.secret)))
}

/// Finds credentials for `registry`: the flags, else Docker's config
/// (`credHelpers[registry]`, then `credsStore`, then `auths`), else anonymous.
fn resolve_auth(registry: &str, opts: &RegistryOptions) -> Result<(Option<Basic>, CredSource), SourceError> {
    let basic = |user: String, password: String| Some(Basic { user, password });
    if let (Some(user), Some(pass)) = (&opts.username, &opts.password) {
        return Ok((basic(user.clone(), pass.0.clone()), CredSource::Flags));
    }
    let Some(path) = docker_config_path() else {
        return Ok((None, CredSource::Anonymous));
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, CredSource::Anonymous));
        }
        Err(e) => {
            return Err(SourceError::Credentials {
                registry: registry.to_string(),
                reason: format!("reading {}: {e}", path.display()),
            })
        }
    };
    let config: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| SourceError::Credentials {
        registry: registry.to_string(),
        reason: format!("{} is not valid JSON: {e}", path.display()),
    })?;
    let keys = config_keys(registry);
    let helper = keys.iter().find_map(|k| config.cred_helpers.get(k)).or(config.creds_store.as_ref());
    if let Some(h) = helper.filter(|h| !h.is_empty()) {
        for key in [registry.to_string(), format!("https://{registry}")] {
            if let Some((user, secret)) = run_helper(h, &key)? {
                return Ok((basic(user, secret), CredSource::Helper(h.clone())));
            }
        }
    }
    let entry = keys
        .iter()
        .find_map(|k| config.auths.get(k))
        .or_else(|| config.auths.iter().find(|(k, _)| normalize_key(k) == registry).map(|(_, v)| v));
    let Some(entry) = entry else {
        return Ok((None, CredSource::Anonymous));
    };
    // Reported without the entry's value: it holds a password.
    let bad = |why: &str| SourceError::Credentials {
        registry: registry.to_string(),
        reason: format!(
            "the auths entry for {} in {} {why}; fix or remove it (other registries are not affected)",
            printable(registry),
            path.display()
        ),
    };
    let entry: DockerAuth = serde_json::from_value(entry.clone())
        .map_err(|_| bad("is malformed (expected an object with string \"auth\", or \"username\" and \"password\")"))?;
    if let Some(b64) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad("has an \"auth\" value that is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("has an \"auth\" value that is not UTF-8"))?;
        let (user, pass) =
            text.split_once(':').ok_or_else(|| bad("has an \"auth\" value that is not USER:PASSWORD"))?;
        return Ok((basic(user.to_string(), pass.to_string()), CredSource::ConfigFile(path)));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok((basic(u.clone(), p.clone()), CredSource::ConfigFile(path)));
    }
    if entry.identitytoken.is_some() {
        tracing::warn!(
            registry,
            "the Docker config holds only an identity token, which stagehand cannot use; pulling anonymously"
        );
    }
    Ok((None, CredSource::Anonymous))
}

/// Everything one pull needs, shared by its tasks.
struct Ctx {
    session: Session,
    cred_source: CredSource,
    registry: String,
    repository: String,
    plain_http: bool,
    request_timeout: Duration,
    interrupted: fn() -> bool,
}

/// Why a request failed, before it is turned into a message.
enum Failure {
    /// The registry says the manifest or blob is not there.
    NotFound,
    Other(SourceError),
}

impl Ctx {
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
                if !self.plain_http && is_loopback(&self.registry) {
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

    /// Fetches a manifest or index, verifying its bytes against `expected`
    /// (a digest reference's digest, or the descriptor it came from) and,
    /// for a digest, trying the cache first.
    async fn fetch_manifest(
        &self,
        cache: &BlobCache,
        sel: &Selector,
        expected_size: Option<u64>,
    ) -> Result<(Vec<u8>, String), SourceError> {
        if let Selector::Digest(d) = sel {
            if let Some(bytes) = cache.read_small(d)? {
                tracing::debug!(digest = %d, "manifest found in the blob cache; not fetching it");
                return Ok((bytes, d.clone()));
            }
        }
        if (self.interrupted)() {
            return Err(SourceError::Interrupted);
        }
        let target = match sel {
            Selector::Digest(d) => d.clone(),
            Selector::Tag(t) => t.clone(),
            Selector::Only => "latest".into(),
        };
        let path = format!("manifests/{target}");
        tracing::debug!(url = %self.session.url(&path), "GET manifest");
        let what = format!("manifest {target} of {}", self.name());
        let fetched = match self.session.get(&path, Some(&ACCEPT.join(", ")), 0, None).await {
            Ok(mut resp) => http::read_capped(&mut resp, MAX_MANIFEST_BYTES, "manifest").await,
            Err(e) => Err(e),
        };
        let body = match fetched {
            Ok(b) => b,
            Err(HttpFailure::TooLarge { cap, .. }) => {
                return Err(SourceError::Malformed {
                    what,
                    reason: format!("larger than the {cap}-byte limit; refusing to read it"),
                });
            }
            Err(e) => {
                return Err(match self.classify(e) {
                    Failure::Other(e) => e,
                    Failure::NotFound => self.not_found(sel).await,
                })
            }
        };
        tracing::debug!(bytes = body.len(), "manifest received");
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Selector::Digest(d) = sel {
            if &actual != d {
                return Err(SourceError::DigestMismatch { what, expected: d.clone(), actual });
            }
        }
        if let Some(size) = expected_size {
            if size != body.len() as u64 {
                return Err(SourceError::SizeMismatch { what, expected: size, actual: body.len() as u64 });
            }
        }
        Ok((body, actual))
    }

    /// The message for a manifest the registry does not have: tells an
    /// unknown repository from an unknown tag, listing the tags there are.
    async fn not_found(&self, sel: &Selector) -> SourceError {
        tracing::debug!(url = %self.session.url("tags/list"), "GET tags");
        let listed = match self.session.get("tags/list", None, 0, None).await {
            Ok(mut resp) => http::read_capped(&mut resp, http::MAX_TAG_LIST_BYTES, "tag list").await,
            Err(e) => Err(e),
        };
        let available = match listed {
            Ok(body) => shown_tags(&body),
            Err(e) => match self.classify(e) {
                Failure::Other(e @ SourceError::RepositoryNotFound { .. }) => return e,
                Failure::NotFound => {
                    return SourceError::RepositoryNotFound {
                        registry: self.registry.clone(),
                        repository: self.repository.clone(),
                    }
                }
                Failure::Other(_) => "unknown".to_string(),
            },
        };
        match sel {
            Selector::Digest(d) => SourceError::DigestNotFound { digest: d.clone(), layout: self.name() },
            Selector::Tag(t) => SourceError::TagNotFound { tag: printable(t), layout: self.name(), available },
            Selector::Only => SourceError::TagNotFound { tag: "latest".into(), layout: self.name(), available },
        }
    }
}

/// Tags shown when a tag is not found.
const SHOWN_TAGS: usize = 50;

/// A tag list (`{"tags": [...]}`) as shown in a message: sorted, escaped,
/// at most [`SHOWN_TAGS`] of them.
fn shown_tags(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct TagList {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let Ok(list) = serde_json::from_slice::<TagList>(body) else {
        return "unknown (the registry's tag list is not JSON)".to_string();
    };
    let mut tags = list.tags.unwrap_or_default();
    if tags.is_empty() {
        return "none".to_string();
    }
    tags.sort();
    let more = tags.len().saturating_sub(SHOWN_TAGS);
    let mut shown: Vec<String> = tags.iter().take(SHOWN_TAGS).map(|t| printable(t)).collect();
    if more > 0 {
        shown.push(format!("and {more} more"));
    }
    shown.join(", ")
}

/// The entry of an image index for `platform`: os and architecture match,
/// and the variant matches if both name one.
fn pick_platform(entries: &[Descriptor], platform: &Platform, what: &str) -> Result<Descriptor, SourceError> {
    let found = entries.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant.is_none() || p.variant == platform.variant)
        })
    });
    if let Some(d) = found {
        return Ok(d.clone());
    }
    let available: Vec<String> =
        entries.iter().map(|d| d.platform.as_ref().map_or_else(|| "unspecified".to_string(), platform_name)).collect();
    Err(SourceError::PlatformNotFound {
        index: what.to_string(),
        wanted: platform_name(platform),
        available: if available.is_empty() { "none".into() } else { available.join(", ") },
    })
}

/// True if the JSON document is an image index (by `mediaType`, or by
/// having `manifests` and no `layers` when it names none).
fn looks_like_index(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(p) => match p.media_type {
            Some(mt) => is_index_media_type(&mt),
            None => p.manifests.is_some() && p.layers.is_none(),
        },
        Err(_) => false,
    }
}

/// Progress bars: one overall, one per layer while it downloads.
#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    enabled: bool,
}

impl Bars {
    fn new(enabled: bool, total: u64) -> Bars {
        let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total));
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            overall.set_style(style.progress_chars("=> "));
        }
        overall.set_prefix("pulling");
        Bars { multi, overall, enabled }
    }

    fn layer(&self, label: &str, size: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = self.multi.add(ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("layer");
        bar.set_message(label.to_string());
        bar
    }
}

/// One blob to fetch, with its label for messages.
#[derive(Clone)]
struct Job {
    desc: Descriptor,
    what: String,
}

/// Downloads one blob into the cache, resuming a partial from an earlier
/// attempt, and retrying a broken transfer that had made progress. `feed`
/// tells the blob's followers (staging) how far the partial file is
/// written and how the download ended.
async fn fetch_blob(ctx: Arc<Ctx>, cache: BlobCache, job: Job, bars: Bars, feed: Arc<Feed>) -> Result<(), SourceError> {
    /// Ends the feed if the task is cancelled or panics, so no follower waits forever.
    struct EndOnDrop(Arc<Feed>);
    impl Drop for EndOnDrop {
        fn drop(&mut self) {
            self.0.failed("the download stopped (cancelled); run the same command again to resume it".into());
        }
    }
    let _end = EndOnDrop(feed.clone());
    let size = job.desc.size;
    let result = fetch_blob_into(ctx, cache, job, bars, &feed).await;
    match &result {
        Ok(()) => {
            tracing::debug!(size, "blob complete: verified, fsynced, in the cache");
            feed.complete(size)
        }
        Err(e) => feed.failed(e.to_string()),
    }
    result
}

async fn fetch_blob_into(
    ctx: Arc<Ctx>,
    cache: BlobCache,
    job: Job,
    bars: Bars,
    feed: &Feed,
) -> Result<(), SourceError> {
    let Job { desc, what } = job;
    let Some(mut w) = cache.begin(&desc, &what)? else {
        bars.overall.inc(desc.size);
        return Ok(());
    };
    feed.started(w.open_for_reading()?, w.flushed());
    let short = desc.digest.get(..19).unwrap_or(&desc.digest);
    let bar = bars.layer(desc.title().unwrap_or(short), desc.size);
    let digest = desc.digest.as_str();
    let deadline = ctx.request_timeout + Duration::from_secs(desc.size / MIN_BLOB_RATE);
    let mut retries = 0;
    bar.set_position(w.offset());
    bars.overall.inc(w.offset());
    loop {
        if (ctx.interrupted)() {
            w.suspend()?;
            return Err(SourceError::Interrupted);
        }
        let offset = w.offset();
        let path = format!("blobs/{digest}");
        tracing::debug!(url = %ctx.session.url(&path), range = %format!("bytes={offset}-"), "GET blob");
        let broken = |reason: String, got: u64| SourceError::DownloadInterrupted {
            what: what.clone(),
            registry: ctx.registry.clone(),
            got,
            size: desc.size,
            reason,
        };
        let response = match ctx.session.get(&path, None, offset, Some(deadline)).await {
            Ok(r) => r,
            Err(e) => {
                let err = match ctx.classify(e) {
                    Failure::NotFound => SourceError::BlobMissing { digest: desc.digest.clone(), layout: ctx.name() },
                    Failure::Other(SourceError::Unreachable { reason, .. }) => broken(reason, offset),
                    Failure::Other(e) => e,
                };
                let _ = w.suspend();
                return Err(err);
            }
        };
        let mut stream = response;
        tracing::debug!(status = %stream.status(), content_length = ?stream.content_length(), "blob response");
        // Bytes at the start of the body that the partial file already holds.
        let mut skip = 0u64;
        if offset > 0 && stream.status() != StatusCode::PARTIAL_CONTENT {
            // The partial's bytes may already be staged, so they are kept and
            // the body's copy of them is skipped: the final digest covers the
            // partial plus the rest of the body, exactly what staging read.
            tracing::debug!(blob = %desc.digest, "the registry ignored the range request; skipping the bytes already downloaded");
            skip = offset;
        }
        if let Some(len) = stream.content_length() {
            let total = w.offset().saturating_add(len.saturating_sub(skip));
            if total > desc.size {
                // Too much on offer: write() refuses it, discarding the partial.
                tracing::debug!(blob = %desc.digest, total, expected = desc.size, "the registry offers more bytes than the descriptor says");
            }
        }
        let at = http::shown_url(stream.url());
        let mut failure: Option<String> = None;
        loop {
            let item = stream.chunk().await;
            if (ctx.interrupted)() {
                w.suspend()?;
                return Err(SourceError::Interrupted);
            }
            match item {
                Ok(None) => break,
                Ok(Some(bytes)) => {
                    let dropped = usize::try_from(skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                    skip -= dropped as u64;
                    let bytes = &bytes[dropped..];
                    if bytes.is_empty() {
                        continue;
                    }
                    if let Err(e) = w.write(bytes) {
                        return Err(kept_on_full_disk(e, w));
                    }
                    feed.publish(w.flushed());
                    let n = bytes.len() as u64;
                    bar.inc(n);
                    bars.overall.inc(n);
                }
                Err(e) => {
                    let (mut reason, timeout) = http::body_error(e, &at);
                    if timeout {
                        reason = format!(
                            "timed out (the deadline is --request-timeout, {} s, plus {} s for its size): {reason}",
                            ctx.request_timeout.as_secs(),
                            desc.size / MIN_BLOB_RATE
                        );
                    }
                    failure = Some(reason);
                    break;
                }
            }
        }
        match failure {
            None => {
                bar.finish_and_clear();
                return w.finish();
            }
            Some(reason) => {
                let got = w.offset();
                let progressed = got > offset;
                tracing::debug!(blob = %desc.digest, got, error = %reason, "blob transfer broke off");
                if progressed && retries < RESUME_RETRIES {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let got = w.suspend()?;
                bar.abandon();
                return Err(broken(reason, got));
            }
        }
    }
}

/// A download that hit a full disk keeps its partial file (a registry
/// download resumes where it stopped) and says where it is and how to free it.
fn kept_on_full_disk(e: SourceError, w: BlobWriter) -> SourceError {
    match e {
        SourceError::Io { what, source } if source.kind() == std::io::ErrorKind::StorageFull => {
            let (path, got) = (w.path().display().to_string(), w.offset());
            let _ = w.suspend();
            SourceError::Io {
                what,
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{source}; the partial download {path} ({got} bytes) was kept: the same command resumes \
                         it once space is freed, and `stagehand cache prune` removes it instead"
                    ),
                ),
            }
        }
        other => other,
    }
}

/// Refuses a download that cannot fit in the blob cache's filesystem.
fn check_download_space(cache: &BlobCache, total: u64) -> Result<(), SourceError> {
    const SPARE: u64 = 1 << 20;
    let root = cache.root();
    let (_, free) = crate::fsops::free_space(root)
        .map_err(|source| SourceError::Io { what: format!("checking free space for {}", root.display()), source })?;
    if total.saturating_add(SPARE) > free {
        return Err(SourceError::Io {
            what: format!("not enough free space for the blob cache {}", root.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "the download needs {total} bytes plus {SPARE} to spare, and {free} bytes are free; \
                     nothing was downloaded: free space there (`stagehand cache prune` removes unused blobs \
                     and partial downloads) and run the command again"
                ),
            ),
        });
    }
    Ok(())
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
        let mut set = tokio::task::JoinSet::new();
        let mut feeds = BTreeMap::new();
        for job in jobs {
            let feed = Feed::new();
            feeds.insert(job.desc.digest.clone(), feed.clone());
            let (ctx, cache, bars, sem) = (ctx.clone(), cache.clone(), bars.clone(), semaphore.clone());
            set.spawn_on(
                async move {
                    let Ok(_permit) = sem.acquire_owned().await else {
                        feed.failed("interrupted".into());
                        return Err(SourceError::Interrupted);
                    };
                    fetch_blob(ctx, cache, job, bars, feed).await
                },
                runtime.handle(),
            );
        }
        downloads::Downloads::new(runtime, set, feeds, cache, bars.overall, ctx.registry.clone(), ctx.interrupted)
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
    let client = http::client(opts.plain_http)
        .map_err(|e| SourceError::Registry { registry: registry.to_string(), reason: format!("HTTP client: {e}") })?;
    let request_timeout = match opts.request_timeout {
        t if t.is_zero() => Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
        t => t,
    };
    let session = Session::new(client, opts.plain_http, registry, repository, request_timeout, auth);
    let ctx = Arc::new(Ctx {
        session,
        cred_source,
        registry: registry.to_string(),
        repository: repository.to_string(),
        plain_http: opts.plain_http,
        request_timeout,
        interrupted,
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
    let bars = Bars::new(progress && !jobs.is_empty(), total);
    let limit = match opts.max_concurrent_downloads {
        0 => DEFAULT_CONCURRENT_DOWNLOADS,
        n => n,
    };
    Ok(Resolved { runtime, ctx, cache, artifact, jobs, bars, limit })
}

async fn resolve_async(
    ctx: &Ctx,
    cache: &BlobCache,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    keep: bool,
) -> Result<(ResolvedArtifact, Vec<Job>), SourceError> {
    let (mut bytes, mut digest) = ctx.fetch_manifest(cache, selector, None).await?;
    if looks_like_index(&bytes) {
        let what = format!("index {digest} of {display}");
        let index = parse_index(&bytes, &what)?;
        if keep {
            cache.put_small(&digest, &bytes)?;
        }
        let platform = opts.platform.clone().unwrap_or_else(host_platform);
        let entry = pick_platform(&index.manifests, &platform, &what)?;
        if !is_manifest_media_type(&entry.media_type) {
            return Err(SourceError::Malformed {
                what,
                reason: format!(
                    "its entry for {} has mediaType {:?}, not an image manifest",
                    platform_name(&platform),
                    entry.media_type
                ),
            });
        }
        tracing::debug!(platform = %platform_name(&platform), manifest = %entry.digest, "picked from the image index");
        (bytes, digest) = ctx.fetch_manifest(cache, &Selector::Digest(entry.digest.clone()), Some(entry.size)).await?;
    }
    let what = format!("manifest {digest} of {display}");
    let manifest = parse_manifest(&bytes, &what)?;
    if let Some(key) = &opts.verify_key {
        // Before a single layer is downloaded.
        let found = ctx.find_signatures(&digest).await?;
        let i = super::signature::decide(key, &digest, display, &found)?;
        tracing::info!(origin = %found.candidates[i].origin, key = %key.fingerprint(), "cosign signature verified");
    }
    if keep {
        cache.put_small(&digest, &bytes)?;
    }

    // Every blob the manifest names, once each, in manifest order (the
    // config first): the order staging reads them in, so it follows the
    // downloads instead of waiting behind them.
    let mut seen = BTreeSet::new();
    let mut jobs: Vec<Job> = Vec::new();
    for desc in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        if !seen.insert(desc.digest.clone()) {
            continue;
        }
        if cache.contains(desc)? {
            tracing::debug!(blob = %desc.digest, "already in the blob cache");
            continue;
        }
        let label = if std::ptr::eq(desc, &manifest.config) {
            format!("config blob {}", desc.digest)
        } else {
            match desc.title() {
                Some(_) => blob_label(desc),
                None => format!("layer {}", desc.digest),
            }
        };
        jobs.push(Job { desc: desc.clone(), what: label });
    }
    Ok((ResolvedArtifact { display: display.to_string(), manifest_digest: digest, manifest }, jobs))
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
    fn docker_config_keys_normalize() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(normalize_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_key("http://reg.example:443/x"), "reg.example:443");
        assert!(config_keys("docker.io").contains(&"https://index.docker.io/v1/".to_string()));
    }

    #[test]
    fn index_detection() {
        assert!(looks_like_index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        ));
        assert!(looks_like_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!looks_like_index(br#"{"schemaVersion":2,"config":{},"layers":[]}"#));
        assert!(!looks_like_index(b"garbage"));
    }

    #[test]
    fn secret_is_redacted() {
        let o = RegistryOptions { password: Some(Secret("hunter2".into())), ..Default::default() };
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
