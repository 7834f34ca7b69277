//! Keyless signatures: a Sigstore bundle whose short-lived certificate,
//! issued by a Fulcio CA of the user's trusted root, names the signer's
//! identity and OIDC issuer; verified offline.
//!
//! This module owns the keyless policy (`--certificate-identity` or
//! `--certificate-identity-regexp`, `--certificate-oidc-issuer`,
//! `--trusted-root`) and the check of one bundle against it:
//! - the leaf certificate chains to a Fulcio CA of the trusted root, valid
//!   at signing time, with its embedded SCT from a CT log of the root;
//! - the signing time is proven by the bundle's Rekor entry (its inclusion
//!   proof and signed checkpoint, and its signed entry timestamp) or an
//!   RFC 3161 timestamp, against the root's log and TSA keys, and falls
//!   within the certificate's validity;
//! - the certificate's SAN matches the identity (exactly, or the regexp in
//!   full) and its Fulcio issuer extension the issuer;
//! - the DSSE signature verifies with the certificate's key and its in-toto
//!   statement is cosign's image signature of the digest installed
//!   (`bundle::check_statement`, as for key-signed bundles).
//!
//! The cryptography and the Sigstore formats are `sigstore-verify`'s
//! (README: dependency notes); finding bundles is the finders' job, as for
//! keys. Nothing here calls the network.

use std::path::Path;

use sigstore_verify::types::{Bundle as SigstoreBundle, Sha256Hash};
use sigstore_verify::{Error as VerifyError, IdentityMatcher, VerificationPolicy};

use super::bundle::{self, Signed};
use super::trust::TrustRoot;

/// The identity a keyless policy pins.
#[derive(Debug, Clone)]
pub enum Identity {
    /// `--certificate-identity`: the SAN equals it.
    Exact(String),
    /// `--certificate-identity-regexp`: the SAN matches it in full.
    Regexp { pattern: String, anchored: regex::Regex },
}

/// A keyless policy: who must have signed, by which OIDC issuer, under which
/// trusted root.
#[derive(Debug, Clone)]
pub struct KeylessPolicy {
    identity: Identity,
    issuer: String,
    root: TrustRoot,
}

/// The keyless options as given (on the command line or in stagehand.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeylessOptions {
    pub identity: Option<String>,
    pub identity_regexp: Option<String>,
    pub issuer: Option<String>,
    pub trusted_root: Option<std::path::PathBuf>,
}

impl KeylessOptions {
    pub fn is_empty(&self) -> bool {
        self == &KeylessOptions::default()
    }
}

impl KeylessPolicy {
    /// The policy the options ask for, or `None` if they ask for none. Every
    /// part is required: an identity (exact or regexp, not both), the issuer
    /// and the trusted root.
    pub fn from_options(o: &KeylessOptions) -> Result<Option<KeylessPolicy>, String> {
        if o.is_empty() {
            return Ok(None);
        }
        let identity = match (&o.identity, &o.identity_regexp) {
            (Some(_), Some(_)) => {
                return Err("give --certificate-identity or --certificate-identity-regexp, not both".into())
            }
            (Some(i), None) => Identity::Exact(i.clone()),
            (None, Some(r)) => Identity::Regexp {
                pattern: r.clone(),
                anchored: regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("--certificate-identity-regexp {r:?} is not a regular expression: {e}"))?,
            },
            (None, None) => {
                return Err("a keyless policy needs --certificate-identity or --certificate-identity-regexp (the signer's email or workflow URL)".into())
            }
        };
        let issuer = o.issuer.clone().ok_or(
            "a keyless policy needs --certificate-oidc-issuer (e.g. https://token.actions.githubusercontent.com)",
        )?;
        let root_path = o.trusted_root.as_deref().ok_or(
            "a keyless policy needs --trusted-root FILE (Sigstore's trusted_root.json, carried offline: see the README)",
        )?;
        Ok(Some(KeylessPolicy { identity, issuer, root: TrustRoot::load(root_path)? }))
    }

    /// A policy over an already loaded root (tests, and callers that share one).
    pub fn new(identity: Identity, issuer: String, root: TrustRoot) -> KeylessPolicy {
        KeylessPolicy { identity, issuer, root }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn root_path(&self) -> &str {
        self.root.path()
    }

    /// How the policy is named in messages and in history:
    /// `identity me@example.org (issuer https://…)`, or
    /// `identity matching ^…$ (issuer https://…)`.
    pub fn describe(&self) -> String {
        match &self.identity {
            Identity::Exact(i) => format!("identity {i} (issuer {})", self.issuer),
            Identity::Regexp { pattern, .. } => format!("identity matching {pattern} (issuer {})", self.issuer),
        }
    }

    /// How history and the lock record a signature this policy verified,
    /// whose certificate names `san`: `identity SAN (issuer URL)`. For an
    /// exact identity that is [`describe`](Self::describe); for a regexp,
    /// the identity that matched, so a later signer who also matches is
    /// told apart.
    pub fn signer(&self, san: &str) -> String {
        format!("identity {san} (issuer {})", self.issuer)
    }

    /// Whether a signer recorded by [`signer`](Self::signer) (in history)
    /// is one this policy accepts: its issuer, and its identity equal to or
    /// matching the policy's in full.
    pub fn accepts_recorded(&self, recorded: &str) -> bool {
        recorded_matches(&self.identity, &self.issuer, recorded)
    }

    /// Checks a bundle's bytes against the policy as a signature of `digest`;
    /// returns the certificate's identity (its SAN).
    pub fn check(&self, digest: &str, bytes: &[u8]) -> Result<String, String> {
        let parsed = bundle::parse(bytes)?;
        if !parsed.has_certificate {
            return Err(
                "it is signed with a key, not keylessly (it holds no certificate): verify it with --verify-key".into(),
            );
        }
        let Signed::Dsse { payload_type, payload, .. } = &parsed.signed else {
            return Err(
                "it is a messageSignature bundle (cosign sign-blob), not an image signature (a DSSE in-toto statement)"
                    .into(),
            );
        };
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("{digest} is not a sha256 digest"))?;
        let artifact = Sha256Hash::from_hex(hex).map_err(|e| format!("{digest} is not a sha256 digest: {e}"))?;
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 JSON".to_string())?;
        let sb = SigstoreBundle::from_json(text).map_err(|e| format!("it is not a Sigstore bundle ({e})"))?;
        let mut policy = VerificationPolicy::any_identity().require_issuer(self.issuer.clone());
        if let Identity::Exact(i) = &self.identity {
            policy = policy.require_identity(IdentityMatcher::Exact(i.clone()));
        }
        let result = match self.root.verifier().verify(artifact, &sb, &policy) {
            Ok(r) => r,
            Err(e) => {
                // A statement over another artifact is the clearer reason,
                // whatever else failed (the verifier also refuses it, in
                // its own words).
                bundle::check_subject(payload, digest)?;
                return Err(self.explain(e));
            }
        };
        let actual = result.identity().map(|s| s.as_str().to_string()).unwrap_or_default();
        if let Identity::Regexp { pattern, anchored } = &self.identity {
            if !anchored.is_match(&actual) {
                return Err(format!(
                    "its certificate's identity is {actual:?}, which --certificate-identity-regexp {pattern:?} does not match in full"
                ));
            }
        }
        if payload_type != bundle::PAYLOAD_TYPE_IN_TOTO {
            return Err(format!("its DSSE payloadType is {payload_type:?}, not {:?}", bundle::PAYLOAD_TYPE_IN_TOTO));
        }
        bundle::check_statement(payload, digest)?;
        Ok(actual)
    }

    /// A verification failure in words that name the policy's side.
    fn explain(&self, e: VerifyError) -> String {
        let root = self.root.path();
        match e {
            VerifyError::IdentityMismatch { actual, .. } => format!(
                "its certificate's identity is {}, not {}",
                actual.map_or_else(|| "missing".to_string(), |a| format!("{:?}", a.as_str())),
                match &self.identity {
                    Identity::Exact(i) => format!("{i:?}"),
                    Identity::Regexp { pattern, .. } => format!("one matching {pattern:?}"),
                }
            ),
            VerifyError::IssuerMismatch { expected, actual } => format!(
                "its certificate's OIDC issuer is {}, not {expected:?}",
                actual.map_or_else(|| "missing".to_string(), |a| format!("{a:?}"))
            ),
            VerifyError::Certificate(c) => {
                format!("its certificate does not verify against the trusted root {root}: {c}")
            }
            VerifyError::Timestamp(t) => {
                format!("no signing time is proven by a log entry or timestamp of the trusted root {root}: {t}")
            }
            VerifyError::TransparencyLog(t) => {
                format!("its transparency-log entry does not verify against the trusted root {root}: {t}")
            }
            VerifyError::SignatureInvalid(s) => {
                format!("its DSSE signature does not verify with its certificate ({s})")
            }
            other => other.to_string(),
        }
    }
}

/// The SAN and issuer of a keyless signer as [`KeylessPolicy::signer`]
/// records it; `None` for a key's fingerprint.
pub fn parse_recorded(recorded: &str) -> Option<(&str, &str)> {
    recorded.strip_prefix("identity ")?.strip_suffix(')')?.rsplit_once(" (issuer ")
}

/// Whether `recorded`, `identity SAN (issuer URL)`, has `issuer` and a SAN
/// that `identity` accepts. A record written before the actual SAN was
/// kept (`identity matching REGEXP (issuer …)`) names no identity, so no
/// policy accepts it.
fn recorded_matches(identity: &Identity, issuer: &str, recorded: &str) -> bool {
    let Some((san, recorded_issuer)) = parse_recorded(recorded) else {
        return false;
    };
    recorded_issuer == issuer
        && match identity {
            Identity::Exact(i) => san == i,
            Identity::Regexp { anchored, .. } => !san.starts_with("matching ") && anchored.is_match(san),
        }
}

/// Loads a policy for tests and tools from a trusted root file.
pub fn policy_for(identity: Identity, issuer: &str, trusted_root: &Path) -> Result<KeylessPolicy, String> {
    Ok(KeylessPolicy::new(identity, issuer.to_string(), TrustRoot::load(trusted_root)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_need_every_part() {
        assert!(KeylessPolicy::from_options(&KeylessOptions::default()).expect("empty").is_none());
        let o = |i: Option<&str>, r: Option<&str>, iss: Option<&str>| KeylessOptions {
            identity: i.map(String::from),
            identity_regexp: r.map(String::from),
            issuer: iss.map(String::from),
            trusted_root: Some("/nonexistent/trusted_root.json".into()),
        };
        let e = KeylessPolicy::from_options(&o(Some("a"), Some("b"), Some("i"))).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = KeylessPolicy::from_options(&o(None, None, Some("i"))).unwrap_err();
        assert!(e.contains("needs --certificate-identity"), "{e}");
        let e = KeylessPolicy::from_options(&o(Some("a"), None, None)).unwrap_err();
        assert!(e.contains("--certificate-oidc-issuer"), "{e}");
        let e = KeylessPolicy::from_options(&o(None, Some("("), Some("i"))).unwrap_err();
        assert!(e.contains("not a regular expression"), "{e}");
        let e = KeylessPolicy::from_options(&o(Some("a"), None, Some("i"))).unwrap_err();
        assert!(e.contains("--trusted-root /nonexistent/trusted_root.json: cannot read it"), "{e}");
    }

    #[test]
    fn recorded_signers_match_by_identity_and_issuer() {
        let exact = Identity::Exact("me@example.org".into());
        let re = Identity::Regexp {
            pattern: "https://ci/org/.*".into(),
            anchored: regex::Regex::new("^(?:https://ci/org/.*)$").expect("regex"),
        };
        let i = "https://issuer";
        assert!(recorded_matches(&exact, i, "identity me@example.org (issuer https://issuer)"));
        assert!(!recorded_matches(&exact, i, "identity me@example.org (issuer https://other)"));
        assert!(!recorded_matches(&exact, i, "identity you@example.org (issuer https://issuer)"));
        assert!(!recorded_matches(&exact, i, "sha256:12ab"));
        assert!(recorded_matches(&re, i, "identity https://ci/org/release.yml@refs/tags/v1 (issuer https://issuer)"));
        assert!(!recorded_matches(&re, i, "identity https://ci/other/release.yml (issuer https://issuer)"));
        // The pattern as an older version recorded it names nobody.
        assert!(!recorded_matches(&re, i, "identity matching https://ci/org/.* (issuer https://issuer)"));
    }
}
