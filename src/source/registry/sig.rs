//! Finding an artifact's cosign signatures in a registry: the tag
//! `sha256-<hex>.sig`, and OCI 1.1 referrers (the API, or the referrers tag
//! `sha256-<hex>` where the registry has none). Every manifest and payload
//! read here is checked against its digest and capped in size before it is
//! read; checking the signatures is [`signature::decide`]'s job.

use sha2::{Digest as _, Sha256};

use super::{http, Ctx, Failure, HttpFailure, ACCEPT};
use crate::source::manifest::{is_manifest_media_type, parse_index, validate_digest};
use crate::source::signature::{self, Candidate, Found};
use crate::source::sigsearch::{self, SearchBudget};
use crate::source::{SourceError, MAX_MANIFEST_BYTES};

/// The media type of an OCI 1.1 referrers response (an image index).
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

impl Ctx {
    /// Collects the signatures of `digest` in this repository: the `.sig`
    /// tag's, then the referrers' newest first, while the budget lasts.
    pub(super) async fn find_signatures(&self, digest: &str) -> Result<Found, SourceError> {
        validate_digest(digest)?;
        let sig_tag = signature::sig_tag(digest);
        let mut found = Found {
            looked: vec![format!("tag {sig_tag}"), "OCI referrers (API, else the referrers tag)".into()],
            ..Found::default()
        };
        let mut budget = SearchBudget::default();
        // (tag or digest, expected digest, where it was found)
        let mut manifests: Vec<(String, Option<String>, String)> =
            vec![(sig_tag.clone(), None, format!("tag {sig_tag}"))];
        match self.referrers(digest).await {
            Ok(Some(index)) => {
                let listed = index
                    .manifests
                    .into_iter()
                    .filter(|d| is_manifest_media_type(&d.media_type) && validate_digest(&d.digest).is_ok());
                for d in sigsearch::newest_first(listed.collect(), |d| d) {
                    manifests.push((d.digest.clone(), Some(d.digest.clone()), format!("referrer {}", d.digest)));
                }
            }
            Ok(None) => {}
            Err(e) => found.problems.push(format!("listing referrers: {e}")),
        }
        let mut seen = std::collections::BTreeSet::new();
        'manifests: for (target, expected, origin) in manifests {
            if !budget.take_manifest(0) {
                break;
            }
            let bytes = match self
                .get_capped(&format!("manifests/{target}"), Some(&ACCEPT.join(", ")), MAX_MANIFEST_BYTES, "manifest")
                .await
            {
                Ok(Some(body)) => body,
                Ok(None) => continue,
                Err(e) => {
                    found.problems.push(format!("{origin}: {e}"));
                    continue;
                }
            };
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if expected.as_ref().is_some_and(|e| e != &actual) {
                found.problems.push(format!("{origin}: the registry sent a manifest with digest {actual}"));
                continue;
            }
            if !seen.insert(actual) || !budget.take_manifest(bytes.len() as u64) {
                continue;
            }
            for (origin, layer) in signature::signature_layers(&mut found, &origin, &bytes) {
                if signature::check_payload_size(&layer.payload).is_ok() && !budget.take_payload(layer.payload.size) {
                    break 'manifests;
                }
                let payload = self.fetch_payload(&layer.payload).await;
                found.candidates.push(Candidate { origin, payload, signature: layer.signature });
            }
        }
        found.problems.extend(budget.stopped().map(str::to_string));
        Ok(found)
    }

    /// The referrers of `digest`: the OCI 1.1 API, else the referrers tag
    /// `sha256-<hex>`; `None` where the registry has neither.
    async fn referrers(&self, digest: &str) -> Result<Option<crate::source::manifest::ImageIndex>, SourceError> {
        let what = format!("referrers of {digest}");
        // A registry without the API answers 404 (or 400/405): use the tag.
        let api = self
            .get_capped(&format!("referrers/{digest}"), Some(INDEX_MEDIA_TYPE), MAX_MANIFEST_BYTES, "referrers index")
            .await;
        let body = match api {
            Ok(Some(b)) => Some(b),
            Ok(None) | Err(_) => {
                let tag = signature::referrers_tag(digest);
                self.get_capped(
                    &format!("manifests/{tag}"),
                    Some(INDEX_MEDIA_TYPE),
                    MAX_MANIFEST_BYTES,
                    "referrers tag",
                )
                .await?
            }
        };
        body.map(|b| parse_index(&b, &what)).transpose()
    }

    /// GETs `path` and reads its body, refusing one over `cap` bytes before
    /// reading it; `None` when the registry says it is not there.
    async fn get_capped(
        &self,
        path: &str,
        accept: Option<&str>,
        cap: u64,
        what: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let fetched = match self.session.get(path, accept, 0, None).await {
            Ok(mut resp) => http::read_capped(&mut resp, cap, what).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(b) => Ok(Some(b)),
            Err(HttpFailure::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => Ok(None),
            Err(e) => match self.classify(e) {
                Failure::NotFound => Ok(None),
                Failure::Other(e) => Err(e),
            },
        }
    }

    /// Reads a small payload blob whole, capped and checked against its descriptor.
    async fn fetch_payload(&self, desc: &crate::source::Descriptor) -> Result<Vec<u8>, String> {
        signature::check_payload_size(desc)?;
        validate_digest(&desc.digest).map_err(|e| e.to_string())?;
        let bytes = match self.get_capped(&format!("blobs/{}", desc.digest), None, desc.size, "signature payload").await
        {
            Ok(Some(b)) => b,
            Ok(None) => return Err(format!("its payload {} is missing from the registry", desc.digest)),
            Err(e) => return Err(e.to_string()),
        };
        signature::check_payload_blob(desc, &bytes)?;
        Ok(bytes)
    }
}
