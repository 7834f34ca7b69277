//! Where an artifact's bytes come from.
//!
//! This module owns reading OCI manifests and blobs from a source (an OCI
//! image layout on disk, or a registry whose blobs are first pulled into the
//! state dir's blob cache) and verifying every blob's sha256 and size while
//! it is read. It never writes
//! to a destination and never touches the journal: the installer hands the
//! verified byte streams to `fsops`.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

pub mod bundle;
pub mod cache;
pub mod feed;
pub mod http;
pub mod keyless;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod roots;
pub mod sigkeys;
pub mod signature;
pub mod sigsearch;
pub mod trust;
pub mod verify;

pub use layout::OciLayout;
pub use reference::{Selector, SourceRef};
pub use verify::VerifyingReader;

/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Annotation holding a layer's file name (ORAS convention).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Annotation holding a manifest's tag inside an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest manifest or index we parse (they are small JSON documents).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// `text` with every control character (terminal escapes, newlines)
/// escaped, for printing anything a registry or an artifact supplied.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// An OCI content descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<64 lowercase hex>`; other algorithms are refused.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The `org.opencontainers.image.title` annotation, if any.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(ANNOTATION_TITLE).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest chosen from a source, with the digest it was addressed by.
#[derive(Debug, Clone)]
pub struct ResolvedArtifact {
    /// How the user named it, for messages (e.g. `oci-layout:examples/demo:v1`).
    pub display: String,
    /// `sha256:…` of the manifest's bytes.
    pub manifest_digest: String,
    pub manifest: manifest::ImageManifest,
    /// `sha256:…` of the image index the manifest was picked from (a
    /// multi-arch tag), if any: a signature over it covers the manifest.
    pub index_digest: Option<String>,
    /// Who signed it, when a signature was verified while resolving it: a
    /// key's fingerprint (`sha256:…`), or a keyless certificate's actual
    /// identity and issuer, `identity SAN (issuer URL)` (for a regexp
    /// policy, the SAN that matched, not the pattern). `None`: no
    /// signature was asked for.
    pub signer: Option<String>,
}

/// A manifest or blob a registry pull fetched, and the host that served it
/// (a mirror of `hosts.toml`, or the registry itself). Bytes are checked
/// against the original reference's digests whoever served them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Served {
    pub digest: String,
    pub host: String,
}

/// Something that can hand out blob streams, verified against their descriptor.
pub trait BlobSource {
    /// Opens the blob for `desc`. The returned reader yields exactly the blob's
    /// bytes and returns an `io::Error` (kind `InvalidData`, message naming the
    /// digest and the layer title if any) at EOF if the size or sha256 differ.
    /// Callers must read to EOF (see [`verify::drain`]).
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, SourceError>;

    /// Waits until every blob this source is still fetching is complete in
    /// the blob cache (size and sha256 checked, fsynced, renamed into
    /// place) and returns the first failure. The installer calls it before
    /// the transaction's staged record, so the commit point never comes
    /// before every blob is durable. A source that fetches nothing (a
    /// layout, the cache) returns at once.
    fn complete(&self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Stops every fetch still running (partial downloads are kept for a
    /// resume) and returns the first download failure, if there was one:
    /// the cause to report when staging failed while reading a blob.
    fn abort(&self) -> Option<SourceError> {
        None
    }

    /// What this source fetched from the network so far, and which host
    /// served each (the manifest too); empty for a layout or the cache.
    fn served(&self) -> Vec<Served> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{path}: not an OCI image layout: {reason}")]
    NotALayout { path: String, reason: String },
    #[error("{what}: malformed JSON: {reason}")]
    Malformed { what: String, reason: String },
    #[error("no manifest tagged {tag:?} in {layout} (tags there: {available})")]
    TagNotFound { tag: String, layout: String, available: String },
    #[error("no manifest with digest {digest} in {layout}")]
    DigestNotFound { digest: String, layout: String },
    #[error("{layout} holds {count} manifests; name one with :TAG or @sha256:DIGEST")]
    Ambiguous { layout: String, count: usize },
    #[error("{index}: no manifest for platform {wanted} (platforms there: {available})")]
    PlatformNotFound { index: String, wanted: String, available: String },
    #[error("unsupported digest {digest:?}: only sha256:<64 hex> is accepted")]
    BadDigest { digest: String },
    #[error("blob {digest} is missing from {layout}")]
    BlobMissing { digest: String, layout: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {registry} refused access to {repository} ({status}); {hint}")]
    Unauthorized { registry: String, repository: String, status: String, hint: String },
    #[error("repository {repository:?} not found on registry {registry}")]
    RepositoryNotFound { registry: String, repository: String },
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("credentials for {registry}: {reason}")]
    Credentials { registry: String, reason: String },
    #[error("{what}: the download from {registry} stopped after {got} of {size} bytes: {reason}. Nothing was installed; run the same command again to resume the download")]
    DownloadInterrupted { what: String, registry: String, got: u64, size: u64, reason: String },
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    #[error("interrupted")]
    Interrupted,
}
