//! The public keys cosign signs with, and checking one signature with one.
//!
//! This module owns parsing a DER SubjectPublicKeyInfo (what a PEM `PUBLIC
//! KEY` block holds) into one of the algorithms cosign and the Sigstore
//! clients sign with: ECDSA P-256 and P-384, Ed25519, and RSA (PKCS#1 v1.5
//! or PSS, 2048 to 4096 bits); and verifying a signature over a payload with
//! it. It does not read files, know about manifests or decide which
//! signature counts: that is `signature`'s job. It never panics on any input.
//!
//! Hashes, as cosign and the Sigstore clients use them: ECDSA P-256 and RSA
//! sign SHA-256 of the payload; ECDSA P-384 signs SHA-384 (the Sigstore
//! algorithm registry) or, as cosign 2 did with every key, SHA-256, and both
//! are accepted; Ed25519 signs the payload itself.

use p256::pkcs8::der::asn1::ObjectIdentifier;
use p256::pkcs8::der::Decode as _;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use sha2::{Digest as _, Sha256, Sha384};

/// `id-ecPublicKey` (RFC 5480): an elliptic-curve key; the curve is its parameter.
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
/// `id-RSASSA-PSS` (RFC 4055): an RSA key restricted to PSS signatures.
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
/// The smallest RSA modulus accepted (the Sigstore clients refuse smaller).
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted (the `rsa` crate's limit, and cosign's).
pub const MAX_RSA_BITS: usize = 4096;

/// Names of algorithm and curve OIDs a user may meet, for messages.
fn oid_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        OID_EC_PUBLIC_KEY => "elliptic-curve public key",
        OID_P256 => "P-256",
        OID_P384 => "P-384",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        OID_ED25519 => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        OID_RSA => "RSA",
        OID_RSA_PSS => "RSASSA-PSS",
        "1.2.840.10040.4.1" => "DSA",
        "1.2.156.10197.1.301" => "SM2",
        _ => return None,
    })
}

/// `OID (name)`, or the OID alone where it has no name here.
fn describe_oid(oid: &str) -> String {
    match oid_name(oid) {
        Some(name) => format!("{oid} ({name})"),
        None => oid.to_string(),
    }
}

/// A parsed public key of one of the supported algorithms.
#[derive(Clone)]
pub enum PublicKey {
    EcdsaP256(p256::ecdsa::VerifyingKey),
    EcdsaP384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    /// `pss_only`: the key's own OID is `id-RSASSA-PSS`.
    Rsa {
        key: rsa::RsaPublicKey,
        pss_only: bool,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.algorithm())
    }
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo. An algorithm that is not
    /// supported is refused naming the key's own algorithm OID (and its
    /// curve, for an elliptic-curve key).
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a DER SubjectPublicKeyInfo (a \"PUBLIC KEY\") ({e})"))?;
        let oid = spki.algorithm.oid.to_string();
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| "its public key bit string has unused bits".to_string())?;
        match oid.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .map(|c| c.to_string())
                    .ok_or_else(|| "an elliptic-curve key that names no curve".to_string())?;
                match curve.as_str() {
                    OID_P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                        .map(PublicKey::EcdsaP256)
                        .map_err(|_| "an ECDSA P-256 key whose point is not on the curve".to_string()),
                    OID_P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                        .map(PublicKey::EcdsaP384)
                        .map_err(|_| "an ECDSA P-384 key whose point is not on the curve".to_string()),
                    _ => Err(format!(
                        "an elliptic-curve key on the unsupported curve OID {} (supported: P-256, P-384)",
                        describe_oid(&curve)
                    )),
                }
            }
            OID_ED25519 => {
                let raw: &[u8; 32] =
                    bits.try_into().map_err(|_| format!("an Ed25519 key of {} bytes, not 32", bits.len()))?;
                ed25519_dalek::VerifyingKey::from_bytes(raw)
                    .map(PublicKey::Ed25519)
                    .map_err(|_| "an Ed25519 key that is not a curve point".to_string())
            }
            OID_RSA | OID_RSA_PSS => {
                use rsa::pkcs1::DecodeRsaPublicKey as _;
                use rsa::traits::PublicKeyParts as _;
                let key = rsa::RsaPublicKey::from_pkcs1_der(bits)
                    .map_err(|e| format!("an RSA key that does not parse, or is over {MAX_RSA_BITS} bits ({e})"))?;
                let n = key.n().bits();
                if n < MIN_RSA_BITS {
                    return Err(format!("an RSA key of {n} bits, under the {MIN_RSA_BITS}-bit minimum"));
                }
                Ok(PublicKey::Rsa { key, pss_only: oid == OID_RSA_PSS })
            }
            other => Err(format!(
                "unsupported key algorithm OID {} (supported: ECDSA P-256 and P-384, Ed25519, RSA)",
                describe_oid(other)
            )),
        }
    }

    /// The algorithm, for messages: `ECDSA P-256`, `RSA-3072`, ….
    pub fn algorithm(&self) -> String {
        match self {
            PublicKey::EcdsaP256(_) => "ECDSA P-256".into(),
            PublicKey::EcdsaP384(_) => "ECDSA P-384".into(),
            PublicKey::Ed25519(_) => "Ed25519".into(),
            PublicKey::Rsa { key, .. } => {
                use rsa::traits::PublicKeyParts as _;
                format!("RSA-{}", key.n().bits())
            }
        }
    }

    /// Checks `sig` (raw bytes: DER for ECDSA, 64 bytes for Ed25519, the
    /// modulus' length for RSA) over `payload`.
    pub fn verify(&self, payload: &[u8], sig: &[u8]) -> Result<(), String> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        use p256::ecdsa::signature::Verifier as _;
        let fails = || "its signature does not verify with the key".to_string();
        match self {
            PublicKey::EcdsaP256(k) => {
                let sig = p256::ecdsa::DerSignature::from_bytes(sig)
                    .map_err(|_| "its signature is not a DER ECDSA signature".to_string())?;
                k.verify(payload, &sig).map_err(|_| fails())
            }
            PublicKey::EcdsaP384(k) => {
                let sig = p384::ecdsa::Signature::from_der(sig)
                    .map_err(|_| "its signature is not a DER ECDSA signature".to_string())?;
                let sha384 = Sha384::digest(payload);
                let sha256 = Sha256::digest(payload);
                k.verify_prehash(&sha384, &sig).or_else(|_| k.verify_prehash(&sha256, &sig)).map_err(|_| fails())
            }
            PublicKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|_| format!("its signature is {} bytes, not a 64-byte Ed25519 signature", sig.len()))?;
                k.verify_strict(payload, &sig).map_err(|_| fails())
            }
            PublicKey::Rsa { key, pss_only } => {
                use rsa::traits::PublicKeyParts as _;
                let hashed = Sha256::digest(payload);
                if sig.len() != key.size() {
                    return Err(format!(
                        "its signature is {} bytes, not the {} of an RSA-{} signature",
                        sig.len(),
                        key.size(),
                        key.n().bits()
                    ));
                }
                let pkcs1 = || key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &hashed, sig);
                // PSS with a salt as long as the hash (Go's and openssl's
                // "digest"), else the longest salt (their "auto"/"max").
                let max_salt = key.size().saturating_sub(Sha256::output_size() + 2);
                let pss = |salt: usize| key.verify(rsa::Pss::new_with_salt::<Sha256>(salt), &hashed, sig);
                let ok = (!pss_only && pkcs1().is_ok()) || pss(Sha256::output_size()).is_ok() || pss(max_salt).is_ok();
                if ok {
                    Ok(())
                } else {
                    Err(fails())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).expect("pem").1
    }

    /// `openssl genpkey -algorithm ed448` + `openssl pkey -pubout`.
    const ED448: &str = "-----BEGIN PUBLIC KEY-----
MEMwBQYDK2VxAzoA/tcxCZvHZ+I1SzS/RO7tyO6urZOTqhc0aj/4V0k6hDJsw3MD
DzieFfOjyB722/6Nbz3aKzZb5WOA
-----END PUBLIC KEY-----
";
    /// `openssl ecparam -genkey -name secp256k1` + `openssl ec -pubout`.
    const K256: &str = "-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEwi24KE8wgolRv7lhANtZG19MpN3nWnKv
gPwkUWx2wyzjzWCS0oCQeOnywPRdkE6V6j5NaBL4QCIXuNOud+tW3A==
-----END PUBLIC KEY-----
";

    #[test]
    fn unsupported_keys_are_named_by_their_own_oid() {
        let err = PublicKey::from_spki_der(&der_of(ED448)).unwrap_err();
        assert!(err.contains("1.3.101.113 (Ed448)") && !err.contains(OID_EC_PUBLIC_KEY), "{err}");
        let err = PublicKey::from_spki_der(&der_of(K256)).unwrap_err();
        assert!(err.contains("curve OID 1.3.132.0.10 (secp256k1)"), "{err}");
        assert!(PublicKey::from_spki_der(b"\x30\x03\x02\x01\x00").unwrap_err().contains("not a DER"));
        assert!(PublicKey::from_spki_der(&[]).is_err());
    }

    #[test]
    fn garbage_signatures_are_refused_not_panicked_on() {
        const P256: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEphW02OWj7mUG6MC+0zb5KJTJJPaC
7ksq6sXiN8tHNe4tvD0iu54DFT7cSn0MGxEoeZWUvvEQSjhIXchqZUleHA==
-----END PUBLIC KEY-----
";
        let k = PublicKey::from_spki_der(&der_of(P256)).expect("parses");
        assert_eq!(k.algorithm(), "ECDSA P-256");
        for sig in [&b""[..], b"\x30\x00", &[0u8; 64], &[0xff; 300]] {
            assert!(k.verify(b"x", sig).is_err());
        }
    }
}
