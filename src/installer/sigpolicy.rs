//! The signature policy applied to a version that is reinstalled from the
//! blob cache (`rollback`, `rollback --apply`), where no signature can be
//! checked again: the decision rests on what the history recorded when the
//! version was installed.
//!
//! This module owns that decision, as one pure function from the policy in
//! force now and the recorded evidence to [`RollbackSignature`] or a
//! refusal that says what to do. It reads nothing and changes nothing; the
//! caller gathers the evidence from the journal's history.

use crate::txn::{HistoryEntry, Outcome};

/// Why a signature is required now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Required {
    /// `--require-signature` was given.
    Flag,
    /// The state dir's `require-signature` file exists (its path).
    StateFile(String),
}

impl Required {
    fn why(&self) -> String {
        match self {
            Required::Flag => "--require-signature is set".to_string(),
            Required::StateFile(path) => format!("{path} exists, so every install must be signature-checked"),
        }
    }
}

/// The policy in force for one command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Set where a signature is required.
    pub required: Option<Required>,
    /// The key or keyless policy the user named: how (`--verify-key PATH`,
    /// or the keyless policy and its trusted root), and its fingerprint or
    /// keyless signer, as the history records it.
    pub key: Option<(String, String)>,
}

/// What the rollback records as the version's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackSignature {
    /// No policy asks for one: the version is recorded as unsigned (its
    /// signature is not checked again).
    Unchecked,
    /// The history shows the version's signature verified by this key
    /// (its fingerprint), the one the policy accepts: recorded as signed by it.
    VerifiedBy(String),
}

/// The fingerprints of the keys whose signatures the history shows were
/// verified for `digest` of package `name` when a completed transaction
/// installed it (`signed_by` of a change whose new version is `digest`).
pub fn verified_signers(history: &[HistoryEntry], name: &str, digest: &str) -> Vec<String> {
    let mut fps: Vec<String> = history
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Done | Outcome::RolledForwardByRecovery))
        .flat_map(|e| &e.changes)
        .filter(|c| c.package == name && c.new_digest.as_deref() == Some(digest))
        .filter_map(|c| c.signed_by.clone())
        .collect();
    fps.sort();
    fps.dedup();
    fps
}

/// Decides whether `name` may go back to the kept version `digest`
/// (installed from `source`) under `policy`, given the keys `signers` the
/// history shows verified its signature. A key named is always enforced;
/// without one, a required signature refuses.
pub fn decide_rollback(
    policy: &Policy,
    name: &str,
    digest: &str,
    source: &str,
    signers: &[String],
) -> Result<RollbackSignature, String> {
    // A keyless signer is recorded as `identity ID (issuer URL)`, a key by
    // its fingerprint; the words and the flags to name follow the record.
    let keyless = signers.iter().any(|s| s.starts_with("identity "));
    let evidence = if signers.is_empty() {
        "its history shows no verified signature (it was installed without --verify-key or a keyless policy, or adopted)"
            .to_string()
    } else {
        let named: Vec<String> = signers
            .iter()
            .map(|s| if s.starts_with("identity ") { format!("keyless {s}") } else { format!("key {s}") })
            .collect();
        format!("its history shows a signature verified by {}", named.join(", "))
    };
    let flags = if keyless {
        "--certificate-identity ID --certificate-oidc-issuer URL --trusted-root FILE (the policy that verified it)"
    } else {
        "--verify-key PATH (the signer's cosign.pub)"
    };
    let reinstall =
        format!("reinstall it from its source, which checks its signature now: stagehand install {source} {flags}");
    match &policy.key {
        Some((_, fp)) if signers.iter().any(|s| s == fp) => Ok(RollbackSignature::VerifiedBy(fp.clone())),
        Some((named, fp)) => Err(format!(
            "cannot roll {name} back to {digest} with {named} ({fp}): {evidence}, and a rollback reads \
             the blob cache, where no signature can be checked again; {reinstall}. Nothing was changed"
        )),
        None => match &policy.required {
            None => Ok(RollbackSignature::Unchecked),
            Some(req) if signers.is_empty() => Err(format!(
                "{}: cannot roll {name} back to {digest}: {evidence}; {reinstall}. Nothing was changed",
                req.why()
            )),
            Some(req) => Err(format!(
                "{}: pass {flags} to roll {name} back to {digest}; {evidence}. Nothing was changed",
                req.why()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aa";

    fn policy(required: bool, key: Option<&str>) -> Policy {
        Policy {
            required: required.then(|| Required::StateFile("/s/require-signature".into())),
            key: key.map(|fp| ("--verify-key k.pub".to_string(), fp.to_string())),
        }
    }

    #[test]
    fn every_case() {
        let fa = vec!["sha256:fa".to_string()];
        let none: Vec<String> = Vec::new();
        // No policy, no key: unchanged behaviour, recorded unsigned.
        assert_eq!(decide_rollback(&policy(false, None), "p", D, "s", &fa), Ok(RollbackSignature::Unchecked));
        assert_eq!(decide_rollback(&policy(false, None), "p", D, "s", &none), Ok(RollbackSignature::Unchecked));
        // A key named: accepted only if the history shows it, required or not.
        for required in [false, true] {
            assert_eq!(
                decide_rollback(&policy(required, Some("sha256:fa")), "p", D, "s", &fa),
                Ok(RollbackSignature::VerifiedBy("sha256:fa".into()))
            );
            let e = decide_rollback(&policy(required, Some("sha256:fb")), "p", D, "s", &fa).unwrap_err();
            assert!(e.contains("verified by key sha256:fa") && e.contains("install s --verify-key"), "{e}");
            let e = decide_rollback(&policy(required, Some("sha256:fa")), "p", D, "s", &none).unwrap_err();
            assert!(e.contains("no verified signature"), "{e}");
        }
        // Required without a key: say which key would do, or how to reinstall.
        let e = decide_rollback(&policy(true, None), "p", D, "s", &fa).unwrap_err();
        assert!(e.contains("require-signature exists") && e.contains("pass --verify-key"), "{e}");
        let e = decide_rollback(&policy(true, None), "p", D, "s", &none).unwrap_err();
        assert!(e.contains("no verified signature") && e.contains("Nothing was changed"), "{e}");
    }

    #[test]
    fn a_keyless_record_names_the_keyless_flags() {
        let signer = "identity a@example.com (issuer https://i.example)";
        let keyless = vec![signer.to_string()];
        assert_eq!(
            decide_rollback(&policy(true, Some(signer)), "p", D, "s", &keyless),
            Ok(RollbackSignature::VerifiedBy(signer.into()))
        );
        let e = decide_rollback(
            &policy(false, Some("identity b@example.com (issuer https://i.example)")),
            "p",
            D,
            "s",
            &keyless,
        )
        .unwrap_err();
        assert!(
            e.contains("verified by keyless identity a@example.com") && e.contains("--certificate-identity"),
            "{e}"
        );
        assert!(!e.contains("--verify-key PATH"), "{e}");
        let e = decide_rollback(&policy(true, None), "p", D, "s", &keyless).unwrap_err();
        assert!(e.contains("pass --certificate-identity ID --certificate-oidc-issuer URL --trusted-root FILE"), "{e}");
    }
}
