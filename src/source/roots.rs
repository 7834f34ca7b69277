//! Extra TLS roots: `SSL_CERT_FILE` adds to the system's roots.
//!
//! rustls' platform verifier reads only the file `SSL_CERT_FILE` names when
//! the variable is set, so trusting one private CA would break every public
//! registry and CDN. This module takes the variable out of the process's
//! environment at startup and hands its certificates to the HTTP client as
//! roots added to the system's. It never reads anything but that file.

/// `SSL_CERT_FILE`, taken out of the environment by [`take_ssl_cert_file`].
static SSL_CERT_FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Takes `SSL_CERT_FILE` out of this process's environment and remembers
/// it, so its certificates are added to the system roots instead of
/// replacing them (the platform verifier reads only that file when the
/// variable is set, so trusting one private CA would break every public
/// registry and CDN). Call once at startup, before any thread exists.
pub fn take_ssl_cert_file() {
    let file = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()).map(std::path::PathBuf::from);
    if file.is_some() {
        // Edition 2021: safe; called from main before any thread is started.
        std::env::remove_var("SSL_CERT_FILE");
    }
    let _ = SSL_CERT_FILE.set(file);
}

/// The `SSL_CERT_FILE` taken out of the environment, if any (credential
/// helpers get it back in theirs).
pub fn extra_roots_file() -> Option<std::path::PathBuf> {
    SSL_CERT_FILE.get().cloned().flatten()
}

/// The certificates of the remembered `SSL_CERT_FILE` (none if unset).
pub fn extra_roots() -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = extra_roots_file() else { return Ok(Vec::new()) };
    let pem = std::fs::read(&path)
        .map_err(|e| format!("reading SSL_CERT_FILE {}: {e}; fix the file or unset SSL_CERT_FILE", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("SSL_CERT_FILE {} holds no readable PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("SSL_CERT_FILE {} holds no PEM certificates", path.display()));
    }
    Ok(certs)
}
