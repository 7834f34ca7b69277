//! The Sigstore trusted root a keyless policy verifies against
//! (`--trusted-root FILE`, `trusted_root.json` in Sigstore's format), read
//! from a file the user carries: nothing here calls the network.
//!
//! This module owns reading and checking the file: its size, its JSON, and
//! that it names what keyless verification needs (a certificate authority
//! in Fulcio's role and a transparency log in Rekor's). What a bundle must
//! prove against it is `keyless`'s job; the parsing and the checks are
//! `sigstore-verify`'s (README: dependency notes).

use std::path::Path;
use std::sync::Arc;

use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::Verifier;

/// Largest trusted root read (the public-good instance's is about 10 KiB).
const MAX_TRUSTED_ROOT_BYTES: u64 = 1 << 20;

/// A loaded trusted root, ready to verify bundles with.
#[derive(Clone)]
pub struct TrustRoot {
    verifier: Arc<Verifier>,
    path: String,
}

impl std::fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoot").field("path", &self.path).finish()
    }
}

impl TrustRoot {
    /// Reads and checks `--trusted-root FILE`.
    pub fn load(path: &Path) -> Result<TrustRoot, String> {
        let shown = path.display().to_string();
        let bad = |reason: String| format!("--trusted-root {shown}: {reason}");
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() > MAX_TRUSTED_ROOT_BYTES {
            return Err(bad(format!("{} bytes, larger than any trusted root", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        TrustRoot::from_json(&text, &shown).map_err(bad)
    }

    /// Parses a `trusted_root.json`; `path` names it in messages.
    pub fn from_json(text: &str, path: &str) -> Result<TrustRoot, String> {
        let root = TrustedRoot::from_json(text)
            .map_err(|e| format!("it is not a Sigstore trusted root (trusted_root.json): {e}"))?;
        if root.certificate_authorities.is_empty() {
            return Err("it names no certificate authority (Fulcio), so no keyless certificate can chain to it".into());
        }
        if root.tlogs.is_empty() {
            return Err("it names no transparency log (Rekor), so no log entry can be checked".into());
        }
        let verifier = Verifier::new(&root).map_err(|e| format!("its contents are not usable: {e}"))?;
        Ok(TrustRoot { verifier: Arc::new(verifier), path: path.to_string() })
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The file it was read from, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_usable_root() {
        let e = TrustRoot::from_json("{}", "r.json").unwrap_err();
        assert!(e.contains("not a Sigstore trusted root") || e.contains("no certificate authority"), "{e}");
        assert!(TrustRoot::from_json("[1]", "r.json").unwrap_err().contains("not a Sigstore trusted root"));
        let empty = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[],"certificateAuthorities":[],"ctlogs":[],"timestampAuthorities":[]}"#;
        assert!(TrustRoot::from_json(empty, "r.json").unwrap_err().contains("no certificate authority"));
        let dir = std::env::temp_dir();
        assert!(TrustRoot::load(&dir).unwrap_err().contains("not a regular file"));
    }
}
