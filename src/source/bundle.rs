//! Sigstore bundles (v0.1 to v0.3), as cosign 3 signs images: parsed and
//! checked against a key the user names.
//!
//! This module owns what a bundle is and when one is a valid signature of a
//! digest: a DSSE envelope whose signature over the DSSE pre-authentication
//! encoding (PAE) verifies with `--verify-key`, holding an in-toto statement
//! with the predicate type `https://sigstore.dev/cosign/sign/v1` whose
//! subject names the digest. It does not find bundles (the layout and
//! registry finders do, by the layer's media type, and hand them over as
//! [`Candidate`]s marked [`IN_BUNDLE`]), and keyless verification is
//! `keyless`'s (which reuses [`check_statement`]): for a key, a bundle's
//! certificate, transparency-log entries and timestamps are not read, so a
//! key-signed bundle is accepted as
//! `cosign verify --key K --insecure-ignore-tlog` would accept it. Parsing
//! and checking are pure and never panic on any input.

use base64::Engine as _;
use serde::Deserialize;

use super::signature::{Candidate, SignatureLayer, VerifyKey};

/// The media type of a v0.3 bundle, as a bundle names itself and as cosign
/// names the layer that holds it.
pub const MEDIA_TYPE_BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Every media type a bundle (or its layer) may carry: v0.1 and v0.2 use
/// the `version=` parameter; v0.3 has both spellings.
pub const MEDIA_TYPES_BUNDLE: &[&str] = &[
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    MEDIA_TYPE_BUNDLE_V03,
];
/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The predicate type of cosign's image signature statement.
pub const PREDICATE_COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
/// The in-toto statement types accepted.
const STATEMENT_TYPES: &[&str] = &["https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"];
/// What a [`Candidate`]'s `signature` holds when its payload is a whole
/// bundle (the signature is inside it). Never valid base64, so no valid
/// legacy annotation is mistaken for it; an annotation forged to equal it
/// only sends its layer to the bundle check, which it must then pass.
pub const IN_BUNDLE: &str = "<in the sigstore bundle>";
/// Most DSSE signatures read from one envelope.
const MAX_DSSE_SIGNATURES: usize = 16;

/// True if a layer (or a bundle) with this media type holds a Sigstore bundle.
pub fn is_bundle_media_type(media_type: &str) -> bool {
    let m = media_type.replace(' ', "");
    MEDIA_TYPES_BUNDLE.iter().any(|t| m.eq_ignore_ascii_case(t))
}

/// The layers of a manifest that hold a Sigstore bundle, each marked
/// [`IN_BUNDLE`] (their bytes are the whole bundle). A manifest that does
/// not parse has none: the legacy parse reports why.
pub fn bundle_layers(manifest: &[u8]) -> Vec<SignatureLayer> {
    let Ok(m) = super::manifest::parse_manifest(manifest, "signature manifest") else {
        return Vec::new();
    };
    m.layers
        .into_iter()
        .filter(|l| is_bundle_media_type(&l.media_type))
        .map(|payload| SignatureLayer { payload, signature: IN_BUNDLE.to_string() })
        .collect()
}

/// True if `c` is a bundle handed over by a finder.
pub fn is_bundle(c: &Candidate) -> bool {
    c.signature == IN_BUNDLE
}

/// A parsed bundle: what it signs, in the one form checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// A DSSE envelope: its payload type, payload bytes and signatures (raw DER).
    Dsse { payload_type: String, payload: Vec<u8>, signatures: Vec<Vec<u8>> },
    /// A message signature (`cosign sign-blob`): the artifact's SHA-256 and the signature.
    Message { sha256: Vec<u8>, signature: Vec<u8> },
}

/// A parsed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub media_type: String,
    pub signed: Signed,
    /// The bundle carries a certificate (a keyless signature), not a key hint.
    pub has_certificate: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: Option<String>,
    verification_material: Option<RawMaterial>,
    dsse_envelope: Option<RawEnvelope>,
    message_signature: Option<RawMessageSignature>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    certificate: Option<serde_json::Value>,
    x509_certificate_chain: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawDsseSignature>,
}

#[derive(Deserialize)]
struct RawDsseSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessageSignature {
    message_digest: Option<RawMessageDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct RawMessageDigest {
    algorithm: String,
    digest: String,
}

/// Decodes protobuf-JSON bytes: standard or URL-safe base64, padded or not.
fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .ok_or_else(|| format!("its {what} is not base64"))
}

/// Parses a Sigstore bundle (v0.1, v0.2 or v0.3).
pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
    let raw: RawBundle =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a Sigstore bundle (JSON: {e})"))?;
    let media_type = raw.media_type.unwrap_or_default();
    if !is_bundle_media_type(&media_type) {
        return Err(format!(
            "its bundle mediaType is {media_type:?}, not a Sigstore bundle v0.1 to v0.3 ({MEDIA_TYPE_BUNDLE_V03})"
        ));
    }
    let has_certificate = raw
        .verification_material
        .as_ref()
        .is_some_and(|m| m.certificate.is_some() || m.x509_certificate_chain.is_some());
    let signed = match (raw.dsse_envelope, raw.message_signature) {
        (Some(env), None) => {
            if env.signatures.is_empty() {
                return Err("its DSSE envelope has no signature".into());
            }
            if env.signatures.len() > MAX_DSSE_SIGNATURES {
                return Err(format!(
                    "its DSSE envelope has {} signatures, over the limit of {MAX_DSSE_SIGNATURES}",
                    env.signatures.len()
                ));
            }
            let signatures =
                env.signatures.iter().map(|s| b64(&s.sig, "DSSE signature")).collect::<Result<Vec<_>, _>>()?;
            Signed::Dsse { payload_type: env.payload_type, payload: b64(&env.payload, "DSSE payload")?, signatures }
        }
        (None, Some(m)) => {
            let d = m.message_digest.ok_or("its messageSignature has no messageDigest")?;
            if d.algorithm != "SHA2_256" {
                return Err(format!("its messageDigest algorithm is {:?}, not SHA2_256", d.algorithm));
            }
            Signed::Message { sha256: b64(&d.digest, "messageDigest")?, signature: b64(&m.signature, "signature")? }
        }
        (Some(_), Some(_)) => return Err("it holds both a DSSE envelope and a messageSignature".into()),
        (None, None) => return Err("it holds neither a DSSE envelope nor a messageSignature".into()),
    };
    Ok(Bundle { media_type, signed, has_certificate })
}

/// The DSSE pre-authentication encoding: what a DSSE signature signs.
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

fn parse_statement(statement: &[u8]) -> Result<Statement, String> {
    let s: Statement =
        serde_json::from_slice(statement).map_err(|e| format!("its DSSE payload is not an in-toto statement ({e})"))?;
    if !STATEMENT_TYPES.contains(&s.kind.as_str()) {
        return Err(format!("its statement's _type is {:?}, not an in-toto statement", s.kind));
    }
    Ok(s)
}

/// Checks that an in-toto statement is cosign's image signature of exactly `digest`.
pub fn check_statement(statement: &[u8], digest: &str) -> Result<(), String> {
    let s = parse_statement(statement)?;
    if s.predicate_type != PREDICATE_COSIGN_SIGN {
        return Err(format!(
            "its predicate type is {:?}, not cosign's image signature {PREDICATE_COSIGN_SIGN:?} (an attestation is not a signature)",
            s.predicate_type
        ));
    }
    subject_is(&s, digest)
}

/// Checks that an in-toto statement names `digest` among its subjects,
/// whatever its predicate.
pub fn check_subject(statement: &[u8], digest: &str) -> Result<(), String> {
    subject_is(&parse_statement(statement)?, digest)
}

fn subject_is(s: &Statement, digest: &str) -> Result<(), String> {
    let (algo, hex) = digest.split_once(':').ok_or_else(|| format!("{digest} is not a digest"))?;
    if s.subject.iter().any(|sub| sub.digest.get(algo).is_some_and(|h| h.eq_ignore_ascii_case(hex))) {
        return Ok(());
    }
    let named: Vec<String> =
        s.subject.iter().flat_map(|sub| sub.digest.iter().map(|(a, h)| format!("{a}:{h}"))).collect();
    if named.is_empty() {
        return Err("its statement names no subject digest".into());
    }
    Err(format!("its statement's subject is {}, another artifact", named.join(", ")))
}

/// Checks a bundle's bytes: a DSSE signature by `key` over an in-toto
/// statement that is cosign's image signature of `digest`. Returns the
/// signer as history records it (`ResolvedArtifact::signer`).
pub fn check(key: &VerifyKey, digest: &str, bytes: &[u8]) -> Result<String, String> {
    if let Some(policy) = key.keyless_policy() {
        return policy.check(digest, bytes).map(|san| policy.signer(&san));
    }
    let b = parse(bytes)?;
    match &b.signed {
        Signed::Dsse { payload_type, payload, signatures } => {
            let message = pae(payload_type, payload);
            let verified = signatures.iter().any(|sig| {
                let sig = base64::engine::general_purpose::STANDARD.encode(sig);
                key.check_signature(&message, &sig).is_ok()
            });
            if !verified {
                let keyless = if b.has_certificate {
                    " (it was signed keylessly, with a certificate: verify it with --certificate-identity, --certificate-oidc-issuer and --trusted-root)"
                } else {
                    ""
                };
                return Err(format!("its DSSE signature does not verify with the key{keyless}"));
            }
            if payload_type != PAYLOAD_TYPE_IN_TOTO {
                return Err(format!("its DSSE payloadType is {payload_type:?}, not {PAYLOAD_TYPE_IN_TOTO:?}"));
            }
            check_statement(payload, digest)?;
            Ok(key.fingerprint().to_string())
        }
        // An image signature names the image in a statement; a bare message
        // signature signs a blob's bytes, which are not at hand here.
        Signed::Message { sha256, .. } => Err(format!(
            "it is a messageSignature bundle (cosign sign-blob) over sha256:{}, not an image signature (a DSSE in-toto statement)",
            hex::encode(sha256)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn media_types_v01_to_v03() {
        for t in MEDIA_TYPES_BUNDLE {
            assert!(is_bundle_media_type(t));
        }
        assert!(is_bundle_media_type("application/vnd.dev.sigstore.bundle+json; version=0.2"));
        assert!(!is_bundle_media_type("application/vnd.dev.sigstore.bundle+json;version=0.4"));
        assert!(!is_bundle_media_type("application/vnd.dev.cosign.simplesigning.v1+json"));
        assert!(base64::engine::general_purpose::STANDARD.decode(IN_BUNDLE).is_err());
    }

    const D: &str = "sha256:5a3ad1a6bbe0cbbb1ed8c1ffa20e5fba0de0a85fde62c0ba4d0a8e43c6a6dc44";

    fn statement(kind: &str, predicate: &str, hex: &str) -> Vec<u8> {
        format!(
            r#"{{"_type":"{kind}","subject":[{{"name":"r/demo","digest":{{"sha256":"{hex}"}}}}],"predicateType":"{predicate}","predicate":{{}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn statement_must_be_cosigns_signature_of_the_digest() {
        let t = STATEMENT_TYPES[0];
        assert_eq!(check_statement(&statement(t, PREDICATE_COSIGN_SIGN, &D[7..]), D), Ok(()));
        let other = "0".repeat(64);
        let e = check_statement(&statement(t, PREDICATE_COSIGN_SIGN, &other), D).unwrap_err();
        assert!(e.contains("another artifact") && e.contains(&other), "{e}");
        let e = check_statement(&statement(t, "https://slsa.dev/provenance/v1", &D[7..]), D).unwrap_err();
        assert!(e.contains("predicate type"), "{e}");
        assert!(check_statement(&statement("x", PREDICATE_COSIGN_SIGN, &D[7..]), D).unwrap_err().contains("_type"));
        assert!(check_statement(b"[]", D).is_err());
    }

    /// A bundle signed with a fixed P-256 key (the test's own, not openssl's).
    fn signed_bundle(secret: u8, statement: &[u8], tamper: bool) -> (Vec<u8>, VerifyKey) {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[secret; 32]).expect("key");
        let pem = sk.verifying_key().to_public_key_pem(Default::default()).expect("pem");
        let key = VerifyKey::from_pem(pem.as_bytes(), "test.pub").expect("parses");
        let sig: p256::ecdsa::Signature = sk.sign(&pae(PAYLOAD_TYPE_IN_TOTO, statement));
        let mut payload = statement.to_vec();
        if tamper {
            payload[0] = b' ';
        }
        let e = &base64::engine::general_purpose::STANDARD;
        let b = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_BUNDLE_V03}","verificationMaterial":{{"publicKey":{{"hint":"x"}}}},"dsseEnvelope":{{"payload":"{}","payloadType":"{PAYLOAD_TYPE_IN_TOTO}","signatures":[{{"sig":"{}","keyid":""}}]}}}}"#,
            e.encode(&payload),
            e.encode(sig.to_der().as_bytes())
        );
        (b.into_bytes(), key)
    }

    #[test]
    fn check_accepts_only_the_keys_signature_of_the_digest() {
        let st = statement(STATEMENT_TYPES[0], PREDICATE_COSIGN_SIGN, &D[7..]);
        let (good, key) = signed_bundle(7, &st, false);
        assert_eq!(check(&key, D, &good), Ok(key.fingerprint().to_string()));
        let (tampered, key) = signed_bundle(7, &st, true);
        assert!(check(&key, D, &tampered).unwrap_err().contains("does not verify"));
        let (_, other_key) = signed_bundle(8, &st, false);
        assert!(check(&other_key, D, &good).unwrap_err().contains("does not verify"));
        let other = format!("sha256:{}", "1".repeat(64));
        assert!(check(&key, &other, &good).unwrap_err().contains("another artifact"));
    }

    /// A managed-key DSSE bundle made by Sigstore's conformance suite
    /// (sigstore-conformance, test/assets/bundle-verify/intoto-canonical-log-entry),
    /// verificationMaterial cut short: its signature is checked by the same
    /// PAE and key as ours, and its statement (predicate type
    /// `https://example.com/test`, subject `a.txt`) is not an image signature.
    #[test]
    fn a_conformance_suite_bundle_verifies_and_is_refused_for_its_predicate() {
        const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7pBlkILi/WN1X8FiQTlZBK2/GlQD
Ol9bn1iDaSE8B5Eu+uccNndQid2Nmgp8mrTWhT2XhZbshUGMDSDx/6jwvw==
-----END PUBLIC KEY-----
";
        const BUNDLE: &str = r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {"publicKey": {"hint": "rJuYlKqs5PMzdPzjkZBg4BveZRpD97PBnngUXPZSlr8="}},
  "dsseEnvelope": {
    "payload": "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJzdWJqZWN0IjpbeyJuYW1lIjoiYS50eHQiLCJkaWdlc3QiOnsic2hhMjU2IjoiYTBjZmM3MTI3MWQ2ZTI3OGU1N2NkMzMyZmY5NTdjM2Y3MDQzZmRkYTM1NGM0Y2JiMTkwYTMwZDU2ZWZhMDFiZiJ9fV0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL2V4YW1wbGUuY29tL3Rlc3QiLCJwcmVkaWNhdGUiOnt9fQ==",
    "payloadType": "application/vnd.in-toto+json",
    "signatures": [{"sig": "MEUCIBb8Pe4/Z0vKtXSvAHV6pcC1F3eTwCZnVejwWERFVwKeAiEAre6v18YSEs3mKaeMgE8Ti0l62CzT5yZvwfGiVd1eTIw=", "keyid": ""}]}}"#;
        const SUBJECT: &str = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf";
        let key = VerifyKey::from_pem(KEY.as_bytes(), "conformance.pub").expect("parses");
        let e = check(&key, SUBJECT, BUNDLE.as_bytes()).unwrap_err();
        assert!(e.contains("predicate type") && e.contains("example.com/test"), "{e}");
        let Signed::Dsse { payload, .. } = parse(BUNDLE.as_bytes()).expect("parses").signed else {
            panic!("a DSSE bundle");
        };
        let statement = String::from_utf8(payload).expect("utf-8");
        let cosign = statement.replace("https://example.com/test", PREDICATE_COSIGN_SIGN);
        assert_eq!(check_statement(cosign.as_bytes(), SUBJECT), Ok(()));
        // One bit of the payload changed: the signature no longer verifies.
        let tampered = BUNDLE.replace("eyJfdHlwZSI6", "eyJfdHlwZSI7");
        assert!(check(&key, SUBJECT, tampered.as_bytes()).unwrap_err().contains("does not verify"));
        let (_, other) = signed_bundle(9, b"{}", false);
        assert!(check(&other, SUBJECT, BUNDLE.as_bytes()).unwrap_err().contains("does not verify"));
    }

    /// The conformance suite's `dsse-statement-unknown-type_fail` (a
    /// managed P-256 key, verificationMaterial cut short): its signature
    /// verifies, and its statement's `_type` (Statement/v2) is refused, as
    /// the suite expects of every client.
    #[test]
    fn a_conformance_suite_statement_of_unknown_type_is_refused() {
        const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC5EkE5q94pBsk2vRdne6qEVUD/Mq
lDL7n3YoVZnDH+WBOuJxvZ3Gn5ZBaHlTpEEKvYddt0qeNHmxE73TIt6/0g==
-----END PUBLIC KEY-----
";
        const BUNDLE: &str = r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {"publicKey": {"hint": "kubfDTvN/gGHh/yeL7Ka/5ciqCZ3uPe1ZWVu5rhiA2o="}},
  "dsseEnvelope": {
    "payload": "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjIiLCJzdWJqZWN0IjpbeyJuYW1lIjoiYS50eHQiLCJkaWdlc3QiOnsic2hhMjU2IjoiYTBjZmM3MTI3MWQ2ZTI3OGU1N2NkMzMyZmY5NTdjM2Y3MDQzZmRkYTM1NGM0Y2JiMTkwYTMwZDU2ZWZhMDFiZiJ9fV0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL2V4YW1wbGUuY29tL3Rlc3QiLCJwcmVkaWNhdGUiOnt9fQ==",
    "payloadType": "application/vnd.in-toto+json",
    "signatures": [{"sig": "MEYCIQC8CK7TyeBcCepdArzLh+5oeiVpsDnrBt3tc+phrQqloQIhAIQU0AC306V0SGOM0gyriXgDHYJOoU/Ysp96s98lP1S6", "keyid": ""}]}}"#;
        const SUBJECT: &str = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf";
        let key = VerifyKey::from_pem(KEY.as_bytes(), "conformance.pub").expect("parses");
        let e = check(&key, SUBJECT, BUNDLE.as_bytes()).unwrap_err();
        assert!(e.contains("_type") && e.contains("Statement/v2"), "{e}");
    }

    #[test]
    fn parse_names_what_is_wrong() {
        assert!(parse(b"{").unwrap_err().contains("not a Sigstore bundle"));
        assert!(parse(br#"{"mediaType":"x"}"#).unwrap_err().contains("mediaType"));
        let none = format!(r#"{{"mediaType":"{MEDIA_TYPE_BUNDLE_V03}","verificationMaterial":{{}}}}"#);
        assert!(parse(none.as_bytes()).unwrap_err().contains("neither"));
        let nosig = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_BUNDLE_V03}","dsseEnvelope":{{"payload":"e30=","payloadType":"{PAYLOAD_TYPE_IN_TOTO}","signatures":[]}}}}"#
        );
        assert!(parse(nosig.as_bytes()).unwrap_err().contains("no signature"));
        let msg = r#"{"mediaType":"application/vnd.dev.sigstore.bundle+json;version=0.1","verificationMaterial":{"x509CertificateChain":{}},"messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"AAAA"},"signature":"AAAA"}}"#;
        let b = parse(msg.as_bytes()).expect("parses");
        assert!(b.has_certificate);
        assert_eq!(b.signed, Signed::Message { sha256: vec![0, 0, 0], signature: vec![0, 0, 0] });
    }
}
