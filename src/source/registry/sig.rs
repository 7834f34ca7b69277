//! Finding an artifact's cosign signatures in a registry: the tag
//! `sha256-<hex>.sig`, and OCI 1.1 referrers (the API, or the referrers tag
//! `sha256-<hex>` where the registry has none; oci-client falls back by
//! itself). Every manifest and payload read here is checked against its
//! digest and capped in size; checking the signatures is
//! [`signature::decide`]'s job.

use futures_util::StreamExt as _;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use super::{Ctx, Failure, ACCEPT};
use crate::source::manifest::{is_manifest_media_type, validate_digest};
use crate::source::signature::{
    self, parse_signature_manifest, Candidate, Found, MAX_PAYLOAD_BYTES, MAX_SIGNATURES, MAX_SIGNATURE_MANIFESTS,
};
use crate::source::{SourceError, MAX_MANIFEST_BYTES};

impl Ctx {
    /// Collects the signatures of `digest` in this repository.
    pub(super) async fn find_signatures(&self, digest: &str) -> Result<Found, SourceError> {
        validate_digest(digest)?;
        let sig_tag = signature::sig_tag(digest);
        let mut found = Found {
            looked: vec![format!("tag {sig_tag}"), "OCI referrers (API, else the referrers tag)".into()],
            ..Found::default()
        };
        // (reference, expected digest, where it was found)
        let mut manifests: Vec<(Reference, Option<String>, String)> = vec![(
            Reference::with_tag(self.registry.clone(), self.repository.clone(), sig_tag.clone()),
            None,
            format!("tag {sig_tag}"),
        )];
        let subject = Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_string());
        match self.client.pull_referrers(&subject, None).await {
            Ok(index) => {
                for d in index.manifests {
                    if !is_manifest_media_type(&d.media_type) || validate_digest(&d.digest).is_err() {
                        continue;
                    }
                    let r = Reference::with_digest(self.registry.clone(), self.repository.clone(), d.digest.clone());
                    manifests.push((r, Some(d.digest.clone()), format!("referrer {}", d.digest)));
                }
            }
            Err(e) => match self.classify(e) {
                Failure::NotFound => {}
                Failure::Other(e) => found.problems.push(format!("listing referrers: {e}")),
            },
        }
        manifests.truncate(MAX_SIGNATURE_MANIFESTS);
        let mut seen = std::collections::BTreeSet::new();
        for (reference, expected, origin) in manifests {
            let bytes = match self.client.pull_manifest_raw(&reference, &self.auth, ACCEPT).await {
                Ok((body, _)) => body,
                Err(e) => {
                    match self.classify(e) {
                        Failure::NotFound => {}
                        Failure::Other(e) => found.problems.push(format!("{origin}: {e}")),
                    }
                    continue;
                }
            };
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                found.problems.push(format!("{origin}: over the {MAX_MANIFEST_BYTES}-byte manifest limit"));
                continue;
            }
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if expected.as_ref().is_some_and(|e| e != &actual) {
                found.problems.push(format!("{origin}: the registry sent a manifest with digest {actual}"));
                continue;
            }
            if !seen.insert(actual) {
                continue;
            }
            let layers = match parse_signature_manifest(&bytes) {
                Ok(l) => l,
                Err(e) => {
                    found.problems.push(format!("{origin}: {e}"));
                    continue;
                }
            };
            for (i, layer) in layers.into_iter().enumerate() {
                if found.candidates.len() >= MAX_SIGNATURES {
                    break;
                }
                let origin = format!("{origin}, layer {}", i + 1);
                let payload = self.fetch_payload(&layer.payload).await;
                found.candidates.push(Candidate { origin, payload, signature: layer.signature });
            }
        }
        Ok(found)
    }

    /// Reads a small payload blob whole, capped and checked against its descriptor.
    async fn fetch_payload(&self, desc: &crate::source::Descriptor) -> Result<Vec<u8>, String> {
        if desc.size > MAX_PAYLOAD_BYTES {
            return Err(format!("its payload is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit", desc.size));
        }
        validate_digest(&desc.digest).map_err(|e| e.to_string())?;
        let reference = Reference::with_digest(self.registry.clone(), self.repository.clone(), desc.digest.clone());
        let sized = self.client.pull_blob_stream(&reference, desc.digest.as_str()).await.map_err(|e| {
            match self.classify(e) {
                Failure::NotFound => format!("its payload {} is missing from the registry", desc.digest),
                Failure::Other(e) => e.to_string(),
            }
        })?;
        let mut stream = sized.stream;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("reading its payload: {e}"))?;
            if (bytes.len() + chunk.len()) as u64 > desc.size {
                return Err(format!("its payload is longer than the {} bytes the manifest says", desc.size));
            }
            bytes.extend_from_slice(&chunk);
        }
        signature::check_payload_blob(desc, &bytes)?;
        Ok(bytes)
    }
}
