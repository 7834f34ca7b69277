//! Cosign signatures: who published a manifest, checked before anything is staged.
//!
//! This module owns loading the public key a user trusts (a PEM `PUBLIC KEY`
//! as `cosign generate-key-pair` writes `cosign.pub`, of any algorithm
//! `sigkeys` knows) and its fingerprint, parsing
//! cosign signature manifests and their simple-signing payloads, and deciding
//! whether one of the signatures found for a manifest digest verifies. It also
//! finds signatures in an OCI layout on disk; `registry::sig` finds them in a
//! registry. Parsing and deciding are pure and never panic on any input (they
//! are fuzzed). A keyless policy (`keyless::KeylessPolicy`) stands where a
//! key does, in a [`VerifyKey`]; it accepts only Sigstore bundles.
//!
//! A signature is accepted only if a layer of a signature manifest carries a
//! `dev.cosignproject.cosign/signature` annotation (base64 of the signature:
//! DER for ECDSA, raw for Ed25519 and RSA) that verifies with the key over
//! the layer's bytes, and those bytes are a simple-signing payload whose
//! `critical.image.docker-manifest-digest` is exactly the digest being
//! installed, or the image index it was picked from ([`signed_subjects`]).

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::bundle;
use super::keyless::KeylessPolicy;
use super::manifest::{self, is_index_media_type, is_manifest_media_type};
use super::sigkeys::PublicKey;
use super::sigsearch::{self, SearchBudget};
use super::{Descriptor, OciLayout, SourceError, ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES};

/// The layer annotation holding cosign's base64 DER ECDSA signature.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// The media type cosign gives a signature layer (its simple-signing payload).
pub const MEDIA_TYPE_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The `critical.type` of a cosign container image signature payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest simple-signing payload we read (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Largest key file we read.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The tag cosign pushes an artifact's signatures to: `sha256-<hex>.sig`.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// The OCI 1.1 referrers fallback tag: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// What signed: a key the user names, or a keyless identity.
#[derive(Clone)]
enum Trust {
    Key(PublicKey),
    Keyless(Box<KeylessPolicy>),
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Key(k) => k.fmt(f),
            Trust::Keyless(p) => f.write_str(&p.describe()),
        }
    }
}

/// Who must have signed: a trusted public key and its fingerprint, or a
/// keyless policy ([`KeylessPolicy`]) and its identity and issuer.
#[derive(Clone)]
pub struct VerifyKey {
    key: Trust,
    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo, or the keyless
    /// policy's `identity … (issuer …)`.
    fingerprint: String,
    /// The file it came from (the key, or the trusted root), for messages.
    path: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("path", &self.path)
            .field("algorithm", &self.key)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl VerifyKey {
    /// Reads a PEM public key file (`--verify-key PATH`).
    pub fn load(path: &Path) -> Result<VerifyKey, SignatureError> {
        let shown = path.display().to_string();
        let bad = |reason: String| SignatureError::BadKey { path: shown.clone(), reason };
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() > MAX_KEY_BYTES {
            return Err(bad(format!("{} bytes, larger than any public key file", meta.len())));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        VerifyKey::from_pem(&bytes, &shown)
    }

    /// Parses a PEM `PUBLIC KEY` of an algorithm cosign signs with
    /// ([`PublicKey`]).
    pub fn from_pem(pem: &[u8], path: &str) -> Result<VerifyKey, SignatureError> {
        let bad = |reason: String| SignatureError::BadKey { path: path.to_string(), reason };
        let (label, der) = p256::pkcs8::der::pem::decode_vec(pem)
            .map_err(|_| bad("not a PEM file (no \"-----BEGIN PUBLIC KEY-----\" block)".into()))?;
        if label.contains("PRIVATE") {
            return Err(bad(format!("it holds a private key ({label}), which stays with the signer")));
        }
        if label != "PUBLIC KEY" {
            return Err(bad(format!("it holds a PEM {label:?}, not a \"PUBLIC KEY\"")));
        }
        let key = PublicKey::from_spki_der(&der).map_err(|e| bad(format!("it holds {e}")))?;
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(&der)));
        Ok(VerifyKey { key: Trust::Key(key), fingerprint, path: path.to_string() })
    }

    /// A keyless policy in the place of a key: what it accepts are bundles
    /// whose certificate it verifies.
    pub fn keyless(policy: KeylessPolicy) -> VerifyKey {
        VerifyKey {
            fingerprint: policy.describe(),
            path: policy.root_path().to_string(),
            key: Trust::Keyless(Box::new(policy)),
        }
    }

    /// The keyless policy, if this is one.
    pub fn keyless_policy(&self) -> Option<&KeylessPolicy> {
        match &self.key {
            Trust::Keyless(p) => Some(p),
            Trust::Key(_) => None,
        }
    }

    /// How a refusal names it: `the key PATH`, or `the keyless policy (trusted root PATH)`.
    pub fn described(&self) -> String {
        match &self.key {
            Trust::Key(_) => format!("the key {}", self.path),
            Trust::Keyless(_) => format!("the keyless policy (trusted root {})", self.path),
        }
    }

    /// `sha256:<hex>` of the key's DER SubjectPublicKeyInfo (what
    /// `openssl pkey -pubin -outform DER | sha256sum` prints).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The key's algorithm, for messages (`ECDSA P-256`, `Ed25519`, …).
    pub fn algorithm(&self) -> String {
        match &self.key {
            Trust::Key(k) => k.algorithm(),
            Trust::Keyless(_) => "keyless (a Fulcio certificate)".to_string(),
        }
    }

    /// Checks `signature_b64` (base64 of the raw signature over `payload`,
    /// as [`PublicKey::verify`] takes it) with this key.
    pub fn check_signature(&self, payload: &[u8], signature_b64: &str) -> Result<(), String> {
        let Trust::Key(key) = &self.key else {
            return Err(
                "it is a legacy cosign signature; a keyless policy verifies Sigstore bundles (as cosign 3 signs)"
                    .into(),
            );
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| format!("its signature annotation is not base64 ({e})"))?;
        key.verify(payload, &raw)
    }
}

/// Why a signature check refused, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("--verify-key {path}: {reason}. Pass the public key cosign wrote (cosign.pub: a PEM \"PUBLIC KEY\", ECDSA P-256 or P-384, Ed25519 or RSA). Nothing was changed")]
    BadKey { path: String, reason: String },
    #[error("{display} ({digest}) has no cosign signature (looked for {looked}); sign it with `cosign sign --key cosign.key IMAGE@DIGEST` (a signature over a multi-arch index covers the manifests it pins), or install without --verify-key. Nothing was changed")]
    Unsigned { display: String, digest: String, looked: String },
    #[error("{display} ({digest}): no signature verifies with {key} ({fingerprint}): {reasons}. Nothing was changed")]
    Rejected { display: String, digest: String, key: String, fingerprint: String, reasons: String },
}

/// One signature layer named by a signature manifest; its payload not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The layer: its bytes are the simple-signing payload.
    pub payload: Descriptor,
    /// The `dev.cosignproject.cosign/signature` annotation, as found.
    pub signature: String,
}

/// Parses a signature manifest and returns its layers that carry a cosign
/// signature annotation (others, like an attestation, are ignored).
pub fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let m = manifest::parse_manifest(bytes, "signature manifest").map_err(|e| e.to_string())?;
    Ok(m.layers
        .into_iter()
        .filter_map(|l| {
            let signature = l.annotations.get(ANNOTATION_SIGNATURE)?.clone();
            Some(SignatureLayer { payload: l, signature })
        })
        .collect())
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks that a simple-signing payload is a cosign image signature naming
/// exactly `digest`.
pub fn check_payload(payload: &[u8], digest: &str) -> Result<(), String> {
    if payload.len() as u64 > MAX_PAYLOAD_BYTES {
        return Err(format!("its payload is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit", payload.len()));
    }
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("its payload is not a cosign simple-signing document ({e})"))?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(format!("its payload's critical.type is {:?}, not {PAYLOAD_TYPE:?}", p.critical.kind));
    }
    let named = p.critical.image.docker_manifest_digest;
    if named != digest {
        return Err(format!("its payload signs {named}, another artifact"));
    }
    Ok(())
}

/// A signature found for an artifact, with its payload read (or why not).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Where it was found, for messages (`tag sha256-….sig, layer 2`).
    pub origin: String,
    pub payload: Result<Vec<u8>, String>,
    pub signature: String,
}

/// What [`find_in_layout`] and the registry finder return.
#[derive(Debug, Default)]
pub struct Found {
    pub candidates: Vec<Candidate>,
    /// The places looked in, for the "unsigned" message.
    pub looked: Vec<String>,
    /// Problems met on the way that did not stop the search.
    pub problems: Vec<String>,
}

/// Reasons a refusal lists one by one before it counts the rest.
const MAX_REASONS_SHOWN: usize = 8;

/// Accepts if one candidate names `digest` and verifies with `key`;
/// returns the accepted candidate's index and its signer as history
/// records it (`ResolvedArtifact::signer`).
pub fn decide(key: &VerifyKey, digest: &str, display: &str, found: &Found) -> Result<(usize, String), SignatureError> {
    if found.candidates.is_empty() {
        let mut looked = found.looked.join(", ");
        if !found.problems.is_empty() {
            looked = format!("{looked}; {}", found.problems.join("; "));
        }
        return Err(SignatureError::Unsigned { display: display.to_string(), digest: digest.to_string(), looked });
    }
    let mut reasons = Vec::new();
    for (i, c) in found.candidates.iter().enumerate() {
        let outcome = c.payload.as_ref().map_err(Clone::clone).and_then(|p| {
            if bundle::is_bundle(c) {
                bundle::check(key, digest, p)
            } else {
                key.check_signature(p, &c.signature)
                    .and_then(|()| check_payload(p, digest))
                    .map(|()| key.fingerprint.clone())
            }
        });
        match outcome {
            Ok(signer) => return Ok((i, signer)),
            Err(why) => reasons.push(format!("{}: {why}", c.origin)),
        }
    }
    if reasons.len() > MAX_REASONS_SHOWN {
        let more = reasons.len() - MAX_REASONS_SHOWN;
        reasons.truncate(MAX_REASONS_SHOWN);
        reasons.push(format!("and {more} more signatures that do not verify either"));
    }
    reasons.extend(found.problems.iter().cloned());
    Err(SignatureError::Rejected {
        display: display.to_string(),
        digest: digest.to_string(),
        key: key.described(),
        fingerprint: key.fingerprint.clone(),
        reasons: reasons.join("; "),
    })
}

/// The digests a signature may name to cover `artifact`: its manifest's,
/// then the image index it was picked from (`cosign sign repo:tag` on a
/// multi-arch tag signs the index, which pins the manifest by digest).
pub fn signed_subjects(artifact: &super::ResolvedArtifact) -> Vec<String> {
    std::iter::once(artifact.manifest_digest.clone()).chain(artifact.index_digest.clone()).collect()
}

/// Accepts if a signature found for one of the subjects (each digest with
/// what was found for it, the manifest's first) names that digest and
/// verifies with `key`; returns which subject, which candidate and its signer.
pub fn decide_subjects(
    key: &VerifyKey,
    display: &str,
    subjects: &[(String, Found)],
) -> Result<(usize, usize, String), SignatureError> {
    let mut unsigned = Vec::new();
    let mut rejected = Vec::new();
    for (s, (digest, found)) in subjects.iter().enumerate() {
        match decide(key, digest, display, found) {
            Ok((i, signer)) => return Ok((s, i, signer)),
            Err(SignatureError::Unsigned { looked, .. }) => unsigned.push(format!("{digest}: {looked}")),
            Err(SignatureError::Rejected { reasons, .. }) => rejected.push(format!("{digest}: {reasons}")),
            Err(e) => return Err(e),
        }
    }
    let digest = match subjects {
        [] => String::new(),
        [(d, _)] => d.clone(),
        [(d, _), rest @ ..] => {
            let others: Vec<&str> = rest.iter().map(|(d, _)| d.as_str()).collect();
            format!("{d}, or its index {}", others.join(", "))
        }
    };
    let single = subjects.len() == 1;
    let strip = |v: Vec<String>| -> String {
        if single {
            v.into_iter().map(|r| r.split_once(": ").map_or(r.clone(), |(_, rest)| rest.to_string())).collect()
        } else {
            v.join("; ")
        }
    };
    if rejected.is_empty() {
        return Err(SignatureError::Unsigned { display: display.to_string(), digest, looked: strip(unsigned) });
    }
    rejected.extend(unsigned.into_iter().map(|u| u.replacen(": ", ": no signature (looked for ", 1) + ")"));
    let rejected = rejected.into_iter().map(|r| format!("for {r}")).collect();
    Err(SignatureError::Rejected {
        display: display.to_string(),
        digest,
        key: key.described(),
        fingerprint: key.fingerprint.clone(),
        reasons: strip(rejected),
    })
}

/// Reads a payload blob: refuses a descriptor over [`MAX_PAYLOAD_BYTES`]
/// and checks the bytes against its digest and size.
pub fn check_payload_blob(desc: &Descriptor, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != desc.size {
        return Err(format!("its payload is {} bytes, the manifest says {}", bytes.len(), desc.size));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual != desc.digest {
        return Err(format!("its payload's digest is {actual}, the manifest says {}", desc.digest));
    }
    Ok(())
}

/// Finds the signatures of `digest` in an OCI layout: the manifest tagged
/// `sha256-<hex>.sig`, the referrers index tagged `sha256-<hex>`, and any
/// manifest in `index.json` whose `subject` is `digest` (OCI 1.1 referrers).
pub fn find_in_layout(layout: &OciLayout, digest: &str) -> Result<Found, SourceError> {
    manifest::validate_digest(digest)?;
    let (sig_tag, ref_tag) = (sig_tag(digest), referrers_tag(digest));
    let mut found = Found {
        looked: vec![format!("tag {sig_tag}"), format!("tag {ref_tag}"), "manifests whose subject is it".into()],
        ..Found::default()
    };
    let index = layout.index()?;
    let mut sig_manifests: Vec<(Descriptor, String)> = Vec::new();
    let mut referrers: Vec<(Descriptor, String)> = Vec::new();
    for entry in &index.manifests {
        let tag = entry.annotations.get(ANNOTATION_REF_NAME).map(String::as_str);
        if entry.digest == digest || entry.size > MAX_MANIFEST_BYTES {
            continue;
        }
        if tag == Some(sig_tag.as_str()) && is_manifest_media_type(&entry.media_type) {
            sig_manifests.push((entry.clone(), format!("tag {sig_tag}")));
        } else if tag == Some(ref_tag.as_str()) && is_index_media_type(&entry.media_type) {
            match layout.read_small_blob(entry, &format!("referrers index tagged {ref_tag}")) {
                Ok(bytes) => match manifest::parse_index(&bytes, &format!("referrers index tagged {ref_tag}")) {
                    Ok(refs) => referrers.extend(
                        refs.manifests
                            .into_iter()
                            .filter(|d| is_manifest_media_type(&d.media_type))
                            .map(|d| (d, format!("referrer in tag {ref_tag}"))),
                    ),
                    Err(e) => found.problems.push(e.to_string()),
                },
                Err(e) => found.problems.push(e.to_string()),
            }
        } else if is_manifest_media_type(&entry.media_type) {
            // An untagged (or otherwise tagged) manifest may be a referrer.
            if let Ok(bytes) = layout.read_small_blob(entry, "manifest") {
                if subject_of(&bytes).as_deref() == Some(digest) {
                    referrers.push((entry.clone(), format!("referrer {}", entry.digest)));
                }
            }
        }
    }
    // The `.sig` tag, then the referrers newest first; each read newest
    // first within, as long as the budget lasts.
    sig_manifests.extend(sigsearch::newest_first(referrers, |(d, _)| d));
    let mut seen = BTreeSet::new();
    sig_manifests.retain(|(d, _)| seen.insert(d.digest.clone()));
    let mut budget = SearchBudget::default();
    'manifests: for (desc, origin) in sig_manifests {
        if !budget.take_manifest(desc.size) {
            break;
        }
        let bytes = match layout.read_small_blob(&desc, &format!("signature manifest ({origin})")) {
            Ok(b) => b,
            Err(e) => {
                found.problems.push(e.to_string());
                continue;
            }
        };
        for (origin, layer) in signature_layers(&mut found, &origin, &bytes) {
            if check_payload_size(&layer.payload).is_ok() && !budget.take_payload(layer.payload.size) {
                break 'manifests;
            }
            let payload = check_payload_size(&layer.payload).and_then(|()| {
                layout
                    .read_small_blob(&layer.payload, &format!("signature payload ({origin})"))
                    .map_err(|e| e.to_string())
            });
            found.candidates.push(Candidate { origin, payload, signature: layer.signature });
        }
    }
    found.problems.extend(budget.stopped().map(str::to_string));
    Ok(found)
}

/// The signature layers of one signature manifest found at `origin`, each
/// named `ORIGIN, layer N`, newest first: cosign appends a new signature as
/// the manifest's last layer. A manifest that does not parse becomes one of
/// `found`'s problems. Shared by the layout and the registry finders: each
/// reads the payloads its own way, within its [`SearchBudget`], and pushes
/// the candidates.
pub fn signature_layers(found: &mut Found, origin: &str, bytes: &[u8]) -> Vec<(String, SignatureLayer)> {
    match parse_signature_manifest(bytes) {
        Ok(mut layers) => {
            layers.extend(bundle::bundle_layers(bytes));
            layers.into_iter().enumerate().rev().map(|(i, l)| (format!("{origin}, layer {}", i + 1), l)).collect()
        }
        Err(e) => {
            found.problems.push(format!("{origin}: {e}"));
            Vec::new()
        }
    }
}

/// Refuses a payload descriptor over [`MAX_PAYLOAD_BYTES`], before it is read.
pub fn check_payload_size(desc: &Descriptor) -> Result<(), String> {
    if desc.size > MAX_PAYLOAD_BYTES {
        return Err(format!("its payload is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit", desc.size));
    }
    Ok(())
}

/// The `subject.digest` of a manifest, if it names one (OCI 1.1 referrers).
pub fn subject_of(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithSubject {
        subject: Option<Descriptor>,
    }
    serde_json::from_slice::<WithSubject>(bytes).ok()?.subject.map(|s| s.digest)
}

/// Finds and checks the signatures of an artifact in a layout: over its
/// manifest's digest, or the index it was picked from; sets its `signer`.
pub fn verify_layout(
    layout: &OciLayout,
    artifact: &mut super::ResolvedArtifact,
    display: &str,
    key: &VerifyKey,
) -> Result<(), SourceError> {
    let mut subjects = Vec::new();
    for digest in signed_subjects(artifact) {
        let found = find_in_layout(layout, &digest)?;
        subjects.push((digest, found));
    }
    let (s, i, signer) = decide_subjects(key, display, &subjects)?;
    let (digest, found) = &subjects[s];
    tracing::info!(origin = %found.candidates[i].origin, signed = %digest, signer = %signer, "cosign signature verified");
    artifact.signer = Some(signer);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:5a3ad1a6bbe0cbbb1ed8c1ffa20e5fba0de0a85fde62c0ba4d0a8e43c6a6dc44";
    /// Made by `openssl ecparam -genkey -name prime256v1` + `openssl ec -pubout`.
    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEphW02OWj7mUG6MC+0zb5KJTJJPaC
7ksq6sXiN8tHNe4tvD0iu54DFT7cSn0MGxEoeZWUvvEQSjhIXchqZUleHA==
-----END PUBLIC KEY-----
";

    fn payload(digest: &str, kind: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/demo"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{kind}"}},"optional":null}}"#
        )
        .into_bytes()
    }

    #[test]
    fn tags_are_cosigns() {
        assert_eq!(sig_tag(DIGEST), format!("sha256-{}.sig", &DIGEST[7..]));
        assert_eq!(referrers_tag(DIGEST), format!("sha256-{}", &DIGEST[7..]));
    }

    #[test]
    fn payload_must_name_exactly_the_digest() {
        assert_eq!(check_payload(&payload(DIGEST, PAYLOAD_TYPE), DIGEST), Ok(()));
        let other = format!("sha256:{}", "0".repeat(64));
        assert!(check_payload(&payload(&other, PAYLOAD_TYPE), DIGEST).unwrap_err().contains("another artifact"));
        assert!(check_payload(&payload(DIGEST, "something else"), DIGEST).unwrap_err().contains("critical.type"));
        assert!(check_payload(b"{}", DIGEST).is_err());
        assert!(check_payload(&[b' '; MAX_PAYLOAD_BYTES as usize + 1], DIGEST).unwrap_err().contains("limit"));
    }

    #[test]
    fn key_fingerprint_is_sha256_of_the_der() {
        let k = VerifyKey::from_pem(KEY.as_bytes(), "k.pub").expect("parses");
        let (_, der) = p256::pkcs8::der::pem::decode_vec(KEY.as_bytes()).expect("pem");
        assert_eq!(k.fingerprint(), format!("sha256:{}", hex::encode(Sha256::digest(&der))));
        let err = VerifyKey::from_pem(b"hello", "x").unwrap_err().to_string();
        assert!(err.contains("not a PEM file") && err.contains("Nothing was changed"), "{err}");
    }

    #[test]
    fn signatures_that_are_not_base64_or_der_are_named() {
        let k = VerifyKey::from_pem(KEY.as_bytes(), "k.pub").expect("parses");
        assert!(k.check_signature(b"x", "!!!").unwrap_err().contains("not base64"));
        assert!(k.check_signature(b"x", "AAAA").unwrap_err().contains("not a DER"));
    }

    #[test]
    fn only_annotated_layers_are_signatures() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"{DIGEST}","size":1}},"layers":[
            {{"mediaType":"{MEDIA_TYPE_SIMPLE_SIGNING}","digest":"{DIGEST}","size":1,"annotations":{{"{ANNOTATION_SIGNATURE}":"c2ln"}}}},
            {{"mediaType":"x","digest":"{DIGEST}","size":1}}]}}"#
        );
        let layers = parse_signature_manifest(m.as_bytes()).expect("parses");
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].signature, "c2ln");
        assert!(parse_signature_manifest(b"[]").is_err());
    }

    #[test]
    fn nothing_found_is_unsigned_and_bad_candidates_are_all_named() {
        let k = VerifyKey::from_pem(KEY.as_bytes(), "k.pub").expect("parses");
        let none = Found { looked: vec!["tag t".into()], ..Found::default() };
        assert!(matches!(decide(&k, DIGEST, "d", &none), Err(SignatureError::Unsigned { .. })));
        let found = Found {
            candidates: vec![
                Candidate { origin: "one".into(), payload: Err("missing".into()), signature: String::new() },
                Candidate {
                    origin: "two".into(),
                    payload: Ok(payload(DIGEST, PAYLOAD_TYPE)),
                    signature: "AAAA".into(),
                },
            ],
            ..Found::default()
        };
        let err = decide(&k, DIGEST, "d", &found).unwrap_err().to_string();
        assert!(err.contains("one: missing") && err.contains("two: its signature is not a DER"), "{err}");
    }
}
