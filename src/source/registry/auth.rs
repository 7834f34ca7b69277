//! Credentials for a registry, found the way Docker keeps them.
//!
//! This module owns reading Docker's `config.json` (`auths`,
//! `credHelpers`, `credsStore`) and running `docker-credential-*`
//! helpers, and says where the credentials came from for messages. It
//! never sends anything over the network and never logs a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{RegistryOptions, ENV_DOCKER_CONFIG};
use crate::source::http::{Basic, Credentials};
use crate::source::{printable, SourceError};

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where credentials came from, for messages.
#[derive(Debug, Clone)]
pub(super) enum CredSource {
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

/// How long a `docker-credential-*` helper may take to answer `get`
/// before it is killed and the pull fails (a helper waiting on a prompt or
/// a hung keyring would otherwise hang every pull).
pub const CREDENTIAL_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `docker-credential-<helper> get`. `Ok(None)` if the helper is not
/// installed or has nothing for this registry.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, SourceError> {
    run_helper_program(&format!("docker-credential-{helper}"), registry, CREDENTIAL_HELPER_TIMEOUT)
}

/// Runs the helper program `bin` (a name looked up on PATH, or a path),
/// killing it after `timeout`.
fn run_helper_program(bin: &str, registry: &str, timeout: Duration) -> Result<Option<Credentials>, SourceError> {
    let cred_err = |reason: String| SourceError::Credentials { registry: registry.to_string(), reason };
    tracing::debug!(helper = %bin, registry, "asking the credential helper");
    let mut cmd = Command::new(bin);
    cmd.arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(file) = crate::source::roots::extra_roots_file() {
        // Taken out of our environment at startup; the helper may need it.
        cmd.env("SSL_CERT_FILE", file);
    }
    let mut child = match cmd.spawn() {
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
    // Read both pipes on their own threads so a chatty helper cannot block
    // on a full pipe while we wait for it to exit.
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = std::io::Read::take(&mut p, 1 << 20).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_thread = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err_thread = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cred_err(format!(
                    "{bin} get did not answer within {} s and was killed; nothing was pulled. Check that the \
                     helper works (`echo {} | {bin} get`), or log in with `docker login` or pass --username \
                     USER --password-stdin",
                    timeout.as_secs_f64(),
                    printable(registry)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                return Err(cred_err(format!("waiting for {bin}: {e}")));
            }
        }
    };
    let stdout = out_thread.join().unwrap_or_default();
    let _stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&stdout).trim().to_string();
        if msg.to_ascii_lowercase().contains("not found") || stdout.is_empty() {
            tracing::debug!(helper = %bin, "the credential helper has nothing for this registry");
            return Ok(None);
        }
        return Err(cred_err(format!("{bin} get failed: {}", printable(&msg))));
    }
    let reply: HelperReply = serde_json::from_slice(&stdout)
        .map_err(|e| cred_err(format!("{bin} printed something that is not credentials JSON: {e}")))?;
    if reply.username == "<token>" {
        tracing::debug!(helper = %bin, "the credential helper holds an identity token");
        return Ok(Some(Credentials::IdentityToken(reply.secret)));
    }
    Ok(Some(Credentials::Basic(Basic { user: reply.username, password: reply.secret })))
}

/// Finds credentials for `registry`: the flags, else Docker's config
/// (`credHelpers[registry]`, then `credsStore`, then `auths`), else anonymous.
pub(super) fn resolve_auth(
    registry: &str,
    opts: &RegistryOptions,
) -> Result<(Option<Credentials>, CredSource), SourceError> {
    let basic = |user: String, password: String| Some(Credentials::Basic(Basic { user, password }));
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
            if let Some(found) = run_helper(h, &key)? {
                return Ok((Some(found), CredSource::Helper(h.clone())));
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
    // Docker uses an identity token first when there is one (its `auth`
    // then holds a placeholder user).
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok((Some(Credentials::IdentityToken(token.to_string())), CredSource::ConfigFile(path)));
    }
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
    Ok((None, CredSource::Anonymous))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_credential_helper_is_killed_at_its_timeout() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = dir.path().join("docker-credential-hang");
        let pidfile = dir.path().join("pid");
        std::fs::write(&helper, format!("#!/bin/sh\necho $$ > {}\nexec sleep 600\n", pidfile.display()))
            .expect("write helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let started = Instant::now();
        let err = run_helper_program(&helper.display().to_string(), "reg.example", Duration::from_millis(500))
            .err()
            .expect("a timeout, not credentials");
        assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
        let text = err.to_string();
        assert!(text.contains("did not answer within 0.5 s and was killed"), "{text}");
        let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("a pid");
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the helper {pid} still runs");
    }

    #[test]
    fn a_helper_token_is_an_identity_token() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = dir.path().join("docker-credential-tok");
        std::fs::write(&helper, "#!/bin/sh\necho '{\"Username\":\"<token>\",\"Secret\":\"refresh-1\"}'\n")
            .expect("write helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let got =
            run_helper_program(&helper.display().to_string(), "reg.example", Duration::from_secs(20)).expect("runs");
        assert!(matches!(got, Some(Credentials::IdentityToken(t)) if t == "refresh-1"));
    }

    #[test]
    fn docker_config_keys_normalize() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(normalize_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_key("http://reg.example:443/x"), "reg.example:443");
        assert!(config_keys("docker.io").contains(&"https://index.docker.io/v1/".to_string()));
    }
}
