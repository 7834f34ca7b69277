//! Per-registry host configuration: containerd's `hosts.toml`, under a
//! `certs.d`-style directory (`--hosts-dir`, default
//! [`DEFAULT_HOSTS_DIR`]; `/etc/containerd/certs.d` works as it is).
//!
//! This module owns reading that directory into the ordered list of hosts
//! one registry's requests are tried on (its mirrors first, then its
//! `server`), each with what it may be asked (`pull`, `resolve`), where its
//! API root is, and how to reach it (extra CA roots, client certificate,
//! headers, connect timeout, proxy). For `REGISTRY` it reads the first of
//! `DIR/HOST_PORT_/`, `DIR/HOST:PORT/` (or `DIR/HOST/`) and `DIR/_default/`
//! that exists: its `hosts.toml` if there is one, else Docker's certificate
//! files in it (`*.crt` CAs, `*.cert`/`*.key` client pairs). A CA is always
//! added to the system roots, never put in their place; `skip_verify =
//! true` is refused, as is a directory or file others may write. It sends
//! nothing and trusts no host: `route` tries the hosts, and every byte is
//! still checked against the original reference's digests.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde::Deserialize;

use crate::source::http::HostClient;
use crate::source::printable;

/// Where host configuration is read from unless `--hosts-dir` says otherwise.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/stagehand/certs.d";
/// Largest `hosts.toml`, certificate or key file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The process's `--hosts-dir` and `--ca-file`, set once by the CLI.
static SETTINGS: OnceLock<Settings> = OnceLock::new();

#[derive(Debug, Clone, Default)]
struct Settings {
    dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// Sets `--hosts-dir` (None: [`DEFAULT_HOSTS_DIR`]) and `--ca-file` (a CA
/// bundle added to every registry's roots) for every pull of this process.
/// The first call wins.
pub fn configure(dir: Option<PathBuf>, ca_file: Option<PathBuf>) {
    let _ = SETTINGS.set(Settings { dir, ca_file });
}

/// What to do about a TLS failure `reason` names, if it is one the host
/// configuration fixes: an unknown CA, or a client certificate wanted.
pub fn tls_hint(reason: &str) -> Option<&'static str> {
    if reason.contains("UnknownIssuer") {
        Some(
            "; the registry's certificate is signed by a CA this machine does not trust: add it with --ca-file, or \
             as `ca` in HOSTS_DIR/REGISTRY/hosts.toml (or HOSTS_DIR/REGISTRY/ca.crt)",
        )
    } else if reason.contains("BadCertificate") || reason.contains("CertificateRequired") {
        Some(
            "; the registry refused our TLS client certificate (or wants one): give it as `client` in \
             HOSTS_DIR/REGISTRY/hosts.toml (or client.cert and client.key there)",
        )
    } else {
        None
    }
}

/// One host a registry's requests may go to.
pub struct Endpoint {
    /// `https://host[:port]/v2` (or the path given with `override_path`).
    pub api_root: String,
    /// `host[:port]`, to name it in messages and records.
    pub host: String,
    /// The registry itself (it alone gets the registry's credentials).
    pub upstream: bool,
    /// May serve blobs and manifests by digest.
    pub pull: bool,
    /// May turn a tag into a digest.
    pub resolve: bool,
    /// Reached over plain HTTP (loopback only).
    pub plain_http: bool,
    /// How to reach it.
    pub client: HostClient,
}

/// Where a registry's requests go.
pub struct Hosts {
    /// In the order they are tried.
    pub endpoints: Vec<Endpoint>,
    /// The `hosts.toml` read, if any (for messages).
    pub file: Option<PathBuf>,
}

impl Hosts {
    /// True if no endpoint is the registry itself: a mirror-only setup.
    pub fn mirror_only(&self) -> bool {
        !self.endpoints.iter().any(|e| e.upstream)
    }
}

/// A string or a list of strings, as `ca` and header values may be.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// One `client` entry: a PEM holding both, or `[cert, key]`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ClientEntry {
    Path(String),
    Pair(Vec<String>),
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Clients {
    One(String),
    Many(Vec<ClientEntry>),
}

/// The fields a host (or the file's top level, for `server`) may have.
#[derive(Deserialize, Clone, Default)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<Clients>,
    skip_verify: Option<bool>,
    override_path: Option<bool>,
    header: Option<toml::Table>,
    dial_timeout: Option<String>,
    proxy: Option<String>,
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    top: HostFields,
    /// `[host."https://mirror"]` tables, in the file's order.
    host: Option<toml::Table>,
}

/// The hosts `registry`'s requests go to, as the hosts directory says
/// (just the registry itself when it says nothing). `plain_http` is
/// `--plain-http`: the registry's own scheme.
pub fn hosts_for(registry: &str, plain_http: bool) -> Result<Hosts, String> {
    let settings = SETTINGS.get().cloned().unwrap_or_default();
    let dir = settings.dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
    let mut global_roots = Vec::new();
    if let Some(f) = &settings.ca_file {
        global_roots = read_certs(f, "--ca-file")?;
    }
    hosts_in(&dir, &global_roots, registry, plain_http)
}

/// [`hosts_for`] with the hosts directory `dir` and `global_roots` (`--ca-file`'s).
fn hosts_in(
    dir: &Path,
    global_roots: &[reqwest::Certificate],
    registry: &str,
    plain_http: bool,
) -> Result<Hosts, String> {
    let upstream_root = format!("{}://{registry}/v2", if plain_http { "http" } else { "https" });
    let upstream = |client: HostClient| Endpoint {
        api_root: upstream_root.clone(),
        host: registry.to_string(),
        upstream: true,
        pull: true,
        resolve: true,
        plain_http,
        client,
    };
    let base_client = HostClient { roots: global_roots.to_vec(), ..Default::default() };
    let Some(ns_dir) = namespace_dir(dir, registry)? else {
        return Ok(Hosts { endpoints: vec![upstream(base_client)], file: None });
    };
    let file = ns_dir.join("hosts.toml");
    if !file.exists() {
        // Docker's pattern: CAs and client pairs for the registry itself.
        let client = docker_certs(&ns_dir, base_client)?;
        return Ok(Hosts { endpoints: vec![upstream(client)], file: None });
    }
    let text = read_checked(&file)?;
    let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8", file.display()))?;
    let parsed: HostsFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut endpoints = Vec::new();
    for (url, fields) in parsed.host.unwrap_or_default() {
        let fields: HostFields = fields.try_into().map_err(|e| format!("{} [host.{url:?}]: {e}", file.display()))?;
        endpoints.push(endpoint(&url, &fields, registry, &ns_dir, &file, global_roots, false)?);
    }
    match &parsed.server {
        Some(server) => endpoints.push(endpoint(server, &parsed.top, registry, &ns_dir, &file, global_roots, true)?),
        None => {
            let mut client = host_client(&parsed.top, &ns_dir, &file, global_roots, "the top level")?;
            if parsed.top.ca.is_none() && parsed.top.client.is_none() {
                client = docker_certs(&ns_dir, client)?;
            }
            endpoints.push(upstream(client));
        }
    }
    Ok(Hosts { endpoints, file: Some(file) })
}

/// The first namespace directory for `registry` that exists, checked.
fn namespace_dir(dir: &Path, registry: &str) -> Result<Option<PathBuf>, String> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("hosts dir {}: {e}", dir.display())),
    };
    check_owner(dir, &meta)?;
    let mut names = Vec::new();
    if let Some((host, port)) = registry.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())) {
        names.push(format!("{host}_{port}_"));
    }
    names.push(registry.to_string());
    names.push("_default".to_string());
    for name in names {
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let p = dir.join(&name);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_dir() {
                check_owner(&p, &m)?;
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// Refuses a file or directory others may write, or owned by anyone but
/// root or us: whoever can write it chooses where our pulls go.
fn check_owner(p: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.mode() & 0o002 != 0 {
        return Err(format!(
            "{} is writable by every user, so anyone could choose where registry pulls go; refusing it \
             (chmod o-w it)",
            p.display()
        ));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, neither root nor us; refusing host configuration another user controls",
            p.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Reads a small configuration file after checking who may write it.
fn read_checked(p: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let meta = f.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
    check_owner(p, &meta)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| format!("{}: {e}", p.display()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_FILE_BYTES} bytes", p.display()));
    }
    Ok(buf)
}

fn read_certs(p: &Path, what: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = read_checked(p)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{what} {} holds no readable PEM certificates: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no PEM certificates", p.display()));
    }
    Ok(certs)
}

/// A client certificate and its key (`key` None: both in `cert`).
fn read_identity(cert: &Path, key: Option<&Path>) -> Result<reqwest::Identity, String> {
    let mut pem = read_checked(cert)?;
    if let Some(k) = key {
        pem.push(b'\n');
        pem.extend(read_checked(k)?);
    }
    let shown = match key {
        Some(k) => format!("{} and {}", cert.display(), k.display()),
        None => cert.display().to_string(),
    };
    reqwest::Identity::from_pem(&pem)
        .map_err(|e| format!("client certificate {shown}: {}; expected a PEM certificate and its key", e))
}

/// Docker's `certs.d` files in `dir`: every `*.crt` a CA, every `*.cert`
/// with its `*.key` a client certificate (the first one is used).
fn docker_certs(dir: &Path, mut client: HostClient) -> Result<HostClient, String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => client.roots.extend(read_certs(p, "CA file")?),
            Some("cert") if client.identity.is_none() => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(format!("client certificate {} has no {} beside it", p.display(), key.display()));
                }
                client.identity = Some(read_identity(p, Some(&key))?);
            }
            _ => {}
        }
    }
    Ok(client)
}

/// A path in `hosts.toml`: absolute, or relative to the file's directory.
fn config_path(ns_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        ns_dir.join(p)
    }
}

/// The client settings of one host's fields.
fn host_client(
    fields: &HostFields,
    ns_dir: &Path,
    file: &Path,
    global_roots: &[reqwest::Certificate],
    which: &str,
) -> Result<HostClient, String> {
    if fields.skip_verify == Some(true) {
        return Err(format!(
            "{} sets skip_verify = true for {which}: stagehand never disables certificate verification. Give the \
             registry's CA instead (`ca = \"ca.crt\"` in hosts.toml, or --ca-file)",
            file.display()
        ));
    }
    let mut client = HostClient { roots: global_roots.to_vec(), ..Default::default() };
    for ca in fields.ca.clone().map(OneOrMany::into_vec).unwrap_or_default() {
        client.roots.extend(read_certs(&config_path(ns_dir, &ca), "CA file")?);
    }
    let entries = match fields.client.clone() {
        None => Vec::new(),
        Some(Clients::One(p)) => vec![ClientEntry::Path(p)],
        Some(Clients::Many(v)) => v,
    };
    if let Some(first) = entries.into_iter().next() {
        let (cert, key) = match first {
            ClientEntry::Path(p) => (p, None),
            ClientEntry::Pair(v) => match v.as_slice() {
                [c] => (c.clone(), None),
                [c, k] if k.is_empty() => (c.clone(), None),
                [c, k] => (c.clone(), Some(k.clone())),
                _ => return Err(format!("{}: a client entry of {which} is not [cert, key]", file.display())),
            },
        };
        let key = key.map(|k| config_path(ns_dir, &k));
        client.identity = Some(read_identity(&config_path(ns_dir, &cert), key.as_deref())?);
    }
    for (name, value) in fields.header.clone().unwrap_or_default() {
        let values: OneOrMany = value.try_into().map_err(|e| format!("{} header {name}: {e}", file.display()))?;
        let hn = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{}: {name:?} is not a header name", file.display()))?;
        for v in values.into_vec() {
            let hv = HeaderValue::from_str(&v)
                .map_err(|_| format!("{}: header {name} has a value that is not a header value", file.display()))?;
            client.headers.append(hn.clone(), hv);
        }
    }
    if let Some(t) = &fields.dial_timeout {
        client.connect_timeout =
            Some(parse_duration(t).ok_or_else(|| format!("{}: dial_timeout {t:?} is not a duration", file.display()))?);
    }
    if let Some(p) = &fields.proxy {
        client.proxy = Some(reqwest::Proxy::all(p).map_err(|e| format!("{}: proxy {p:?}: {e}", file.display()))?);
    }
    Ok(client)
}

/// A Go duration as `dial_timeout` holds it: `500ms`, `1s`, `2m`, `1m30s`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(secs).ok()?;
        rest = &rest[u_end..];
    }
    Some(total)
}

/// One `[host."URL"]` table, or `server` (with the file's top-level fields).
fn endpoint(
    url: &str,
    fields: &HostFields,
    registry: &str,
    ns_dir: &Path,
    file: &Path,
    global_roots: &[reqwest::Certificate],
    server: bool,
) -> Result<Endpoint, String> {
    let shown = printable(url);
    let with_scheme = if url.contains("://") { url.to_string() } else { format!("https://{url}") };
    let parsed = Url::parse(&with_scheme).map_err(|e| format!("{}: host {shown}: {e}", file.display()))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(format!("{}: host {shown} names no host", file.display())),
    };
    let plain_http = match parsed.scheme() {
        "https" => false,
        "http" if super::is_loopback(&host) => true,
        "http" => {
            return Err(format!(
                "{}: host {shown} is plain HTTP off this machine; stagehand reaches only loopback hosts without \
                 TLS. Serve it over https (with `ca = ...` for a private CA)",
                file.display()
            ))
        }
        other => return Err(format!("{}: host {shown} has scheme {other:?}, not https", file.display())),
    };
    if parsed.query().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{}: host {shown} may not carry a query or user info", file.display()));
    }
    let path = parsed.path().trim_end_matches('/');
    let api_root = if fields.override_path == Some(true) {
        format!("{}://{host}{path}", parsed.scheme())
    } else {
        format!("{}://{host}{path}/v2", parsed.scheme())
    };
    let caps = match &fields.capabilities {
        None => vec!["pull".to_string(), "resolve".to_string()],
        Some(c) if server => {
            tracing::debug!(?c, "capabilities of server are ignored: it is trusted for everything");
            vec!["pull".to_string(), "resolve".to_string()]
        }
        Some(c) => c.clone(),
    };
    for c in &caps {
        if !matches!(c.as_str(), "pull" | "resolve" | "push") {
            return Err(format!("{}: host {shown}: unknown capability {:?}", file.display(), printable(c)));
        }
    }
    let which = if server { "server".to_string() } else { format!("host {shown}") };
    if plain_http && fields.proxy.is_some() {
        return Err(format!(
            "{}: {which} is plain HTTP and sets `proxy`: stagehand never sends plain HTTP through a proxy, which \
             could carry it off this machine in clear text. Remove `proxy` for it, or serve it over https",
            file.display()
        ));
    }
    let client = host_client(fields, ns_dir, file, global_roots, &which)?;
    Ok(Endpoint {
        api_root,
        upstream: host.eq_ignore_ascii_case(registry),
        host,
        pull: caps.iter().any(|c| c == "pull"),
        resolve: caps.iter().any(|c| c == "resolve"),
        plain_http,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
        }
        d
    }

    fn read(dir: &Path, registry: &str) -> Result<Hosts, String> {
        hosts_in(dir, &[], registry, false)
    }

    #[test]
    fn hosts_keep_their_order_and_capabilities() {
        let d = dir_with(&[(
            "reg.example:5000/hosts.toml",
            "server = \"https://reg.example:5000\"\n\
             [host.\"https://zz.example\"]\ncapabilities = [\"pull\"]\n\
             [host.\"http://127.0.0.1:7000/cache\"]\n\
             [host.\"https://aa.example/v2/up\"]\noverride_path = true\n",
        )]);
        let h = read(d.path(), "reg.example:5000").expect("reads");
        let got: Vec<_> = h.endpoints.iter().map(|e| (e.api_root.as_str(), e.pull, e.resolve, e.upstream)).collect();
        assert_eq!(
            got,
            [
                ("https://zz.example/v2", true, false, false),
                ("http://127.0.0.1:7000/cache/v2", true, true, false),
                ("https://aa.example/v2/up", true, true, false),
                ("https://reg.example:5000/v2", true, true, true),
            ]
        );
        assert!(h.endpoints[1].plain_http);
    }

    #[test]
    fn namespace_lookup_order() {
        let d = dir_with(&[
            ("_default/hosts.toml", "server = \"https://d.example\"\n"),
            ("r.example_5000_/hosts.toml", "server = \"https://u.example\"\n"),
            ("r.example:5000/hosts.toml", "server = \"https://c.example\"\n"),
        ]);
        let first = |r: &str| read(d.path(), r).expect("reads").endpoints[0].host.clone();
        assert_eq!(first("r.example:5000"), "u.example");
        assert_eq!(first("other.example"), "d.example");
    }

    #[test]
    fn refusals() {
        for (text, want) in [
            ("[host.\"https://m.example\"]\nskip_verify = true\n", "never disables certificate verification"),
            ("skip_verify = true\n", "never disables certificate verification"),
            ("[host.\"http://m.example\"]\n", "plain HTTP off this machine"),
            (
                "[host.\"http://127.0.0.1:5001\"]\nproxy = \"http://127.0.0.1:3128\"\n",
                "never sends plain HTTP through a proxy",
            ),
            ("[host.\"https://m.example\"]\ncapabilities = [\"fly\"]\n", "unknown capability"),
            ("[host.\"https://m.example\"]\nca = \"missing.crt\"\n", "missing.crt"),
        ] {
            let d = dir_with(&[("r.example/hosts.toml", text)]);
            let err = read(d.path(), "r.example").err().unwrap_or_default();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn a_dir_others_may_write_is_refused() {
        let d = dir_with(&[("r.example/hosts.toml", "server = \"https://m.example\"\n")]);
        let ns = d.path().join("r.example");
        std::fs::set_permissions(&ns, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = read(d.path(), "r.example").err().unwrap_or_default();
        assert!(err.contains("writable by every user"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
    }
}
