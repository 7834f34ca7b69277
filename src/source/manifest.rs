//! OCI image manifests and image indexes: their JSON shape and validation.
//!
//! This module owns turning untrusted manifest/index bytes into typed values
//! and refusing anything we cannot trust (oversized documents, unknown schema
//! versions, digests that are not `sha256:<64 lowercase hex>`, foreign media
//! types). It is pure: it never reads files or the network, and it never
//! panics on any input (it is fuzzed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Descriptor, SourceError, MAX_MANIFEST_BYTES, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

/// Docker's schema-2 manifest media type; same shape as an OCI manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list media type; same shape as an OCI image index.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The only digest algorithm we accept.
const SHA256_PREFIX: &str = "sha256:";
/// Length of a sha256 digest in hex.
const SHA256_HEX_LEN: usize = 64;

/// An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (`application/vnd.oci.image.index.v1+json`), also the
/// shape of an OCI layout's `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// True if `media_type` names an image manifest we can read.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// True if `media_type` names an image index (or Docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// Checks that `digest` is `sha256:` followed by exactly 64 lowercase hex
/// digits. Anything else (other algorithms, upper case, `../`) is refused, so
/// a validated digest is always safe to use as a file name.
pub fn validate_digest(digest: &str) -> Result<(), SourceError> {
    let ok = digest
        .strip_prefix(SHA256_PREFIX)
        .is_some_and(|hex| hex.len() == SHA256_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if ok {
        Ok(())
    } else {
        Err(SourceError::BadDigest { digest: digest.to_string() })
    }
}

/// The hex part of a `sha256:<hex>` digest; a string without the prefix is
/// returned unchanged. Validate with [`validate_digest`] before trusting it.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix(SHA256_PREFIX).unwrap_or(digest)
}

/// Parses and validates an image manifest. `what` names the document in
/// error messages (e.g. `manifest sha256:… in examples/demo`).
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<ImageManifest, SourceError> {
    check_size(bytes, what)?;
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| malformed(what, e))?;
    check_schema_version(manifest.schema_version, what)?;
    if let Some(mt) = &manifest.media_type {
        if !is_manifest_media_type(mt) {
            return Err(malformed(
                what,
                format!(
                    "mediaType {mt:?} is not an image manifest \
                     (expected {MEDIA_TYPE_MANIFEST} or {MEDIA_TYPE_DOCKER_MANIFEST})"
                ),
            ));
        }
    }
    validate_descriptor(&manifest.config, what, "config")?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        validate_descriptor(layer, what, &format!("layers[{i}]"))?;
    }
    Ok(manifest)
}

/// Parses and validates an image index (or a layout's `index.json`).
pub fn parse_index(bytes: &[u8], what: &str) -> Result<ImageIndex, SourceError> {
    check_size(bytes, what)?;
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| malformed(what, e))?;
    check_schema_version(index.schema_version, what)?;
    if let Some(mt) = &index.media_type {
        if !is_index_media_type(mt) {
            return Err(malformed(
                what,
                format!(
                    "mediaType {mt:?} is not an image index \
                     (expected {MEDIA_TYPE_INDEX} or {MEDIA_TYPE_DOCKER_MANIFEST_LIST})"
                ),
            ));
        }
    }
    for (i, entry) in index.manifests.iter().enumerate() {
        validate_descriptor(entry, what, &format!("manifests[{i}]"))?;
    }
    Ok(index)
}

fn check_size(bytes: &[u8], what: &str) -> Result<(), SourceError> {
    // usize -> u64 never loses information on the platforms we build for.
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_MANIFEST_BYTES {
        return Err(malformed(
            what,
            format!("document is {len} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit"),
        ));
    }
    Ok(())
}

fn check_schema_version(version: u32, what: &str) -> Result<(), SourceError> {
    if version != 2 {
        return Err(malformed(what, format!("schemaVersion is {version}, expected 2")));
    }
    Ok(())
}

/// A descriptor's digest must be valid; the error keeps the `BadDigest`
/// variant so callers can tell "unsupported digest" from "bad JSON".
fn validate_descriptor(desc: &Descriptor, what: &str, field: &str) -> Result<(), SourceError> {
    validate_digest(&desc.digest)
        .map_err(|_| SourceError::BadDigest { digest: format!("{} (in {what} {field})", desc.digest) })?;
    if desc.media_type.is_empty() {
        return Err(malformed(what, format!("{field} has an empty mediaType")));
    }
    Ok(())
}

fn malformed(what: &str, reason: impl ToString) -> SourceError {
    SourceError::Malformed { what: what.to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const D2: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn manifest_json(media_type: &str, layer_digest: &str) -> String {
        format!(
            r#"{{
              "schemaVersion": 2,
              "mediaType": "{media_type}",
              "artifactType": "application/vnd.stagehand.demo.v1",
              "config": {{"mediaType": "application/vnd.oci.empty.v1+json", "digest": "{D1}", "size": 2}},
              "layers": [
                {{"mediaType": "application/octet-stream", "digest": "{layer_digest}", "size": 5,
                  "annotations": {{"org.opencontainers.image.title": "a.so"}}}}
              ],
              "annotations": {{"k": "v"}}
            }}"#
        )
    }

    #[test]
    fn validate_digest_accepts_only_lowercase_sha256() {
        assert!(validate_digest(D1).is_ok());
        let upper = D1.to_uppercase().replace("SHA256", "sha256");
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &upper,
            &D1.replace("sha256", "sha512"),
            &format!("{D1}0"),
            &D1[..D1.len() - 1],
            "sha256:../../../../../../../../../../../../../../../../etc/passwd0000",
            "sha256:ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
            &format!(" {D1}"),
        ] {
            assert!(matches!(validate_digest(bad), Err(SourceError::BadDigest { .. })), "accepted {bad:?}");
        }
    }

    #[test]
    fn digest_hex_strips_prefix_only() {
        assert_eq!(digest_hex(D1), &D1[7..]);
        assert_eq!(digest_hex(D1).len(), 64);
        assert_eq!(digest_hex("abc"), "abc");
        assert_eq!(digest_hex("sha512:abc"), "sha512:abc");
    }

    #[test]
    fn parses_a_valid_manifest() {
        let m = parse_manifest(manifest_json(MEDIA_TYPE_MANIFEST, D2).as_bytes(), "m").unwrap();
        assert_eq!(m.schema_version, 2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.stagehand.demo.v1"));
        assert_eq!(m.config.size, 2);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].title(), Some("a.so"));
        assert_eq!(m.annotations.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn accepts_docker_manifest_and_missing_media_type() {
        assert!(parse_manifest(manifest_json(MEDIA_TYPE_DOCKER_MANIFEST, D2).as_bytes(), "m").is_ok());
        let no_mt =
            format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":2}},"layers":[]}}"#);
        let m = parse_manifest(no_mt.as_bytes(), "m").unwrap();
        assert!(m.media_type.is_none());
        assert!(m.layers.is_empty());
        assert!(m.annotations.is_empty());
    }

    #[test]
    fn rejects_foreign_manifest_media_type() {
        let err = parse_manifest(manifest_json(MEDIA_TYPE_INDEX, D2).as_bytes(), "the manifest").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::Malformed { .. }), "{msg}");
        assert!(msg.starts_with("the manifest: malformed JSON:"), "{msg}");
        assert!(msg.contains("is not an image manifest"), "{msg}");
    }

    #[test]
    fn rejects_bad_layer_digest_with_bad_digest_error() {
        let err = parse_manifest(manifest_json(MEDIA_TYPE_MANIFEST, "sha256:../x").as_bytes(), "m").unwrap_err();
        match err {
            SourceError::BadDigest { digest } => {
                assert!(digest.contains("sha256:../x") && digest.contains("layers[0]"), "{digest}")
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn rejects_wrong_schema_version() {
        let json = manifest_json(MEDIA_TYPE_MANIFEST, D2).replace("\"schemaVersion\": 2", "\"schemaVersion\": 1");
        let err = parse_manifest(json.as_bytes(), "m").unwrap_err();
        assert!(err.to_string().contains("schemaVersion is 1, expected 2"), "{err}");
        let json = manifest_json(MEDIA_TYPE_MANIFEST, D2).replace("\"schemaVersion\": 2,", "");
        assert!(matches!(parse_manifest(json.as_bytes(), "m"), Err(SourceError::Malformed { .. })));
    }

    #[test]
    fn rejects_oversized_documents() {
        let mut big = manifest_json(MEDIA_TYPE_MANIFEST, D2).into_bytes();
        big.resize(usize::try_from(MAX_MANIFEST_BYTES).unwrap() + 1, b' ');
        let err = parse_manifest(&big, "m").unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        assert!(matches!(parse_index(&big, "i"), Err(SourceError::Malformed { .. })));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let deep = "[".repeat(100_000);
        for input in [
            &b""[..],
            b"null",
            b"{}",
            b"\xff\xfe",
            b"{\"schemaVersion\": -1}",
            b"{\"schemaVersion\": 99999999999999999999}",
            deep.as_bytes(),
        ] {
            assert!(parse_manifest(input, "m").is_err());
            assert!(parse_index(input, "i").is_err());
        }
    }

    #[test]
    fn parses_index_and_checks_it() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_INDEX}","manifests":[
                {{"mediaType":"{MEDIA_TYPE_MANIFEST}","digest":"{D1}","size":10,
                  "annotations":{{"org.opencontainers.image.ref.name":"v1"}},
                  "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let idx = parse_index(json.as_bytes(), "index.json").unwrap();
        assert_eq!(idx.manifests.len(), 1);
        assert_eq!(idx.manifests[0].annotations.get(crate::source::ANNOTATION_REF_NAME).unwrap(), "v1");
        assert_eq!(idx.manifests[0].platform.as_ref().unwrap().architecture, "amd64");

        let wrong_mt = json.replace(MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST);
        let err = parse_index(wrong_mt.as_bytes(), "index.json").unwrap_err();
        assert!(err.to_string().contains("is not an image index"), "{err}");

        let bad_digest = json.replace(D1, "sha256:ABC");
        assert!(matches!(parse_index(bad_digest.as_bytes(), "i"), Err(SourceError::BadDigest { .. })));

        let v3 = json.replace("\"schemaVersion\":2", "\"schemaVersion\":3");
        assert!(matches!(parse_index(v3.as_bytes(), "i"), Err(SourceError::Malformed { .. })));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_manifest(&bytes, "m");
            let _ = parse_index(&bytes, "i");
        }

        #[test]
        fn never_panics_on_mutated_manifests(pos in 0usize..2000, byte in proptest::num::u8::ANY) {
            let mut bytes = manifest_json(MEDIA_TYPE_MANIFEST, D2).into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(m) = parse_manifest(&bytes, "m") {
                proptest::prop_assert!(validate_digest(&m.config.digest).is_ok());
                for l in &m.layers {
                    proptest::prop_assert!(validate_digest(&l.digest).is_ok());
                }
            }
        }

        #[test]
        fn validated_digests_are_safe_file_names(s in "\\PC{0,80}") {
            if validate_digest(&s).is_ok() {
                let hex = digest_hex(&s);
                proptest::prop_assert_eq!(hex.len(), 64);
                proptest::prop_assert!(!hex.contains('/') && !hex.contains('.'));
            }
        }
    }

    #[test]
    fn media_type_predicates() {
        assert!(is_manifest_media_type(MEDIA_TYPE_MANIFEST));
        assert!(is_manifest_media_type(MEDIA_TYPE_DOCKER_MANIFEST));
        assert!(!is_manifest_media_type(MEDIA_TYPE_INDEX));
        assert!(is_index_media_type(MEDIA_TYPE_INDEX));
        assert!(is_index_media_type(MEDIA_TYPE_DOCKER_MANIFEST_LIST));
        assert!(!is_index_media_type(MEDIA_TYPE_MANIFEST));
    }
}
