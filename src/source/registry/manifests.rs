//! Resolving a reference on a registry to its manifest.
//!
//! This module owns fetching a manifest or image index (digest-checked,
//! size-capped, from the blob cache when a digest is already there),
//! following an index to one platform, telling an unknown tag from an
//! unknown repository, and listing the blobs a manifest still needs. It
//! never downloads a blob; `blobs` does.

use std::collections::BTreeSet;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{Ctx, Failure, Job, RegistryOptions, ACCEPT};
use crate::source::cache::BlobCache;
use crate::source::http::{self, HttpFailure};
use crate::source::layout::{host_platform, platform_name};
use crate::source::manifest::{is_index_media_type, is_manifest_media_type, parse_index, parse_manifest};
use crate::source::verify::blob_label;
use crate::source::{printable, Descriptor, Platform, ResolvedArtifact, Selector, SourceError, MAX_MANIFEST_BYTES};

impl Ctx {
    /// Fetches a manifest or index, verifying its bytes against `expected`
    /// (a digest reference's digest, or the descriptor it came from) and,
    /// for a digest, trying the cache first.
    async fn fetch_manifest(
        &self,
        cache: &BlobCache,
        sel: &Selector,
        expected_size: Option<u64>,
    ) -> Result<(Vec<u8>, String), SourceError> {
        if let Selector::Digest(d) = sel {
            if let Some(bytes) = cache.read_small(d)? {
                tracing::debug!(digest = %d, "manifest found in the blob cache; not fetching it");
                return Ok((bytes, d.clone()));
            }
        }
        if (self.interrupted)() {
            return Err(SourceError::Interrupted);
        }
        let target = match sel {
            Selector::Digest(d) => d.clone(),
            Selector::Tag(t) => t.clone(),
            Selector::Only => "latest".into(),
        };
        let path = format!("manifests/{target}");
        tracing::debug!(url = %self.session.url(&path), "GET manifest");
        let what = format!("manifest {target} of {}", self.name());
        let mut host = String::new();
        let fetched = match self.session.get_from(&path, Some(&ACCEPT.join(", ")), 0, None).await {
            Ok((mut resp, from)) => {
                host = from;
                http::read_capped(&mut resp, MAX_MANIFEST_BYTES, "manifest").await
            }
            Err(e) => Err(e),
        };
        let body = match fetched {
            Ok(b) => b,
            Err(HttpFailure::TooLarge { cap, .. }) => {
                return Err(SourceError::Malformed {
                    what,
                    reason: format!("larger than the {cap}-byte limit; refusing to read it"),
                });
            }
            Err(e) => {
                return Err(match self.classify(e) {
                    Failure::Other(e) => e,
                    Failure::NotFound => self.not_found(sel).await,
                })
            }
        };
        tracing::debug!(bytes = body.len(), "manifest received");
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Selector::Digest(d) = sel {
            if &actual != d {
                return Err(SourceError::DigestMismatch { what, expected: d.clone(), actual });
            }
        }
        if let Some(size) = expected_size {
            if size != body.len() as u64 {
                return Err(SourceError::SizeMismatch { what, expected: size, actual: body.len() as u64 });
            }
        }
        self.note_served(&actual, &host);
        Ok((body, actual))
    }

    /// The message for a manifest the registry does not have: tells an
    /// unknown repository from an unknown tag, listing the tags there are.
    async fn not_found(&self, sel: &Selector) -> SourceError {
        tracing::debug!(url = %self.session.url("tags/list"), "GET tags");
        let listed = match self.session.get("tags/list", None, 0, None).await {
            Ok(mut resp) => http::read_capped(&mut resp, http::MAX_TAG_LIST_BYTES, "tag list").await,
            Err(e) => Err(e),
        };
        let available = match listed {
            Ok(body) => shown_tags(&body),
            Err(e) => match self.classify(e) {
                Failure::Other(e @ SourceError::RepositoryNotFound { .. }) => return e,
                Failure::NotFound => {
                    return SourceError::RepositoryNotFound {
                        registry: self.registry.clone(),
                        repository: self.repository.clone(),
                    }
                }
                Failure::Other(_) => "unknown".to_string(),
            },
        };
        match sel {
            Selector::Digest(d) => SourceError::DigestNotFound { digest: d.clone(), layout: self.name() },
            Selector::Tag(t) => SourceError::TagNotFound { tag: printable(t), layout: self.name(), available },
            Selector::Only => SourceError::TagNotFound { tag: "latest".into(), layout: self.name(), available },
        }
    }
}

/// Tags shown when a tag is not found.
const SHOWN_TAGS: usize = 50;

/// A tag list (`{"tags": [...]}`) as shown in a message: sorted, escaped,
/// at most [`SHOWN_TAGS`] of them.
fn shown_tags(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct TagList {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let Ok(list) = serde_json::from_slice::<TagList>(body) else {
        return "unknown (the registry's tag list is not JSON)".to_string();
    };
    let mut tags = list.tags.unwrap_or_default();
    if tags.is_empty() {
        return "none".to_string();
    }
    tags.sort();
    let more = tags.len().saturating_sub(SHOWN_TAGS);
    let mut shown: Vec<String> = tags.iter().take(SHOWN_TAGS).map(|t| printable(t)).collect();
    if more > 0 {
        shown.push(format!("and {more} more"));
    }
    shown.join(", ")
}

/// The entry of an image index for `platform`: os and architecture match,
/// and the variant matches if both name one.
fn pick_platform(entries: &[Descriptor], platform: &Platform, what: &str) -> Result<Descriptor, SourceError> {
    let found = entries.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant.is_none() || p.variant == platform.variant)
        })
    });
    if let Some(d) = found {
        return Ok(d.clone());
    }
    let available: Vec<String> =
        entries.iter().map(|d| d.platform.as_ref().map_or_else(|| "unspecified".to_string(), platform_name)).collect();
    Err(SourceError::PlatformNotFound {
        index: what.to_string(),
        wanted: platform_name(platform),
        available: if available.is_empty() { "none".into() } else { available.join(", ") },
    })
}

/// True if the JSON document is an image index (by `mediaType`, or by
/// having `manifests` and no `layers` when it names none).
fn looks_like_index(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(p) => match p.media_type {
            Some(mt) => is_index_media_type(&mt),
            None => p.manifests.is_some() && p.layers.is_none(),
        },
        Err(_) => false,
    }
}

pub(super) async fn resolve_async(
    ctx: &Ctx,
    cache: &BlobCache,
    selector: &Selector,
    display: &str,
    opts: &RegistryOptions,
    keep: bool,
) -> Result<(ResolvedArtifact, Vec<Job>), SourceError> {
    let (mut bytes, mut digest) = ctx.fetch_manifest(cache, selector, None).await?;
    // The index the manifest was picked from, if any: cached only once the
    // signature check (which may rest on it) has passed.
    let mut index_doc: Option<(String, Vec<u8>)> = None;
    if looks_like_index(&bytes) {
        let what = format!("index {digest} of {display}");
        let index = parse_index(&bytes, &what)?;
        let platform = opts.platform.clone().unwrap_or_else(host_platform);
        let entry = pick_platform(&index.manifests, &platform, &what)?;
        if !is_manifest_media_type(&entry.media_type) {
            return Err(SourceError::Malformed {
                what,
                reason: format!(
                    "its entry for {} has mediaType {:?}, not an image manifest",
                    platform_name(&platform),
                    entry.media_type
                ),
            });
        }
        tracing::debug!(platform = %platform_name(&platform), manifest = %entry.digest, "picked from the image index");
        let (m_bytes, m_digest) =
            ctx.fetch_manifest(cache, &Selector::Digest(entry.digest.clone()), Some(entry.size)).await?;
        index_doc = Some((digest, std::mem::replace(&mut bytes, m_bytes)));
        digest = m_digest;
    }
    let what = format!("manifest {digest} of {display}");
    let manifest = parse_manifest(&bytes, &what)?;
    let index_digest = index_doc.as_ref().map(|(d, _)| d.clone());
    let mut signer = None;
    if let Some(key) = &opts.verify_key {
        // Before a single layer is downloaded: over the manifest's digest,
        // or the index it was picked from.
        let mut subjects = Vec::new();
        for d in std::iter::once(&digest).chain(index_digest.as_ref()) {
            subjects.push((d.clone(), ctx.find_signatures(d).await?));
        }
        let (s, i, who) = crate::source::signature::decide_subjects(key, display, &subjects)?;
        let (signed, found) = &subjects[s];
        tracing::info!(origin = %found.candidates[i].origin, signed = %signed, signer = %who, "cosign signature verified");
        signer = Some(who);
    }
    if keep {
        if let Some((d, b)) = &index_doc {
            cache.put_small(d, b)?;
        }
        cache.put_small(&digest, &bytes)?;
    }

    // Every blob the manifest names, once each, in manifest order (the
    // config first): the order staging reads them in, so it follows the
    // downloads instead of waiting behind them.
    let mut seen = BTreeSet::new();
    let mut jobs: Vec<Job> = Vec::new();
    for desc in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        if !seen.insert(desc.digest.clone()) {
            continue;
        }
        if cache.contains(desc)? {
            tracing::debug!(blob = %desc.digest, "already in the blob cache");
            continue;
        }
        let label = if std::ptr::eq(desc, &manifest.config) {
            format!("config blob {}", desc.digest)
        } else {
            match desc.title() {
                Some(_) => blob_label(desc),
                None => format!("layer {}", desc.digest),
            }
        };
        jobs.push(Job { desc: desc.clone(), what: label });
    }
    Ok((
        ResolvedArtifact { display: display.to_string(), manifest_digest: digest, manifest, index_digest, signer },
        jobs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_detection() {
        assert!(looks_like_index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        ));
        assert!(looks_like_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!looks_like_index(br#"{"schemaVersion":2,"config":{},"layers":[]}"#));
        assert!(!looks_like_index(b"garbage"));
    }
}
