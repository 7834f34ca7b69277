//! cosign 3's signatures built in the test: ECDSA P-256 keys made and data
//! signed by `openssl`, Sigstore bundles (v0.1 to v0.3) holding a DSSE
//! envelope with an in-toto statement, laid out as cosign 3 lays them out
//! (an OCI 1.1 referrer manifest whose one layer is the bundle, an empty
//! config, `subject` the signed manifest) in an OCI layout, and a referrers
//! index listing them as cosign does (artifactType
//! `application/vnd.oci.empty.v1+json`, cosign #4422).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use super::artifact::{MT_INDEX, MT_MANIFEST};
use super::tree::sha256_hex;

pub const MT_BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const MT_BUNDLE_V02: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";
pub const MT_BUNDLE_V01: &str = "application/vnd.dev.sigstore.bundle+json;version=0.1";
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const PREDICATE_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// An ECDSA P-256 key pair made by openssl: (private PEM, public PEM).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    let (p, q) = (private.to_str().expect("utf-8"), public.to_str().expect("utf-8"));
    openssl(&["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", p]);
    openssl(&["ec", "-in", p, "-pubout", "-out", q]);
    (private, public)
}

/// sha256 of the DER SubjectPublicKeyInfo, computed by openssl.
pub fn fingerprint(public: &Path) -> String {
    let der = openssl(&["pkey", "-pubin", "-in", public.to_str().expect("utf-8"), "-outform", "DER"]);
    format!("sha256:{}", sha256_hex(&der))
}

/// `openssl dgst -sha256 -sign KEY`: a DER ECDSA signature over `data`.
pub fn openssl_sign(private: &Path, data: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, s) = (tmp.path().join("data"), tmp.path().join("sig"));
    fs::write(&d, data).expect("write data");
    let (k, s_, d_) = (private.to_str().expect("utf-8"), s.to_str().expect("utf-8"), d.to_str().expect("utf-8"));
    openssl(&["dgst", "-sha256", "-sign", k, "-out", s_, d_]);
    fs::read(&s).expect("read sig")
}

/// An in-toto statement with one subject, `digest`, and `predicate_type`.
pub fn statement(digest: &str, predicate_type: &str) -> Vec<u8> {
    let (algo, hex) = digest.split_once(':').expect("a digest");
    serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "127.0.0.1/demo", "digest": {algo: hex}}],
        "predicateType": predicate_type,
        "predicate": {}
    }))
    .expect("json")
}

/// DSSE's pre-authentication encoding, written from the DSSE spec.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

/// A Sigstore bundle of `media_type` holding a DSSE envelope over
/// `statement`, signed by `private`; with `tamper` the payload is changed
/// after signing (one byte of the statement's JSON whitespace-equivalent).
pub fn dsse_bundle(media_type: &str, private: &Path, statement: &[u8], tamper: bool) -> Vec<u8> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let sig = openssl_sign(private, &pae(IN_TOTO, statement));
    let mut payload = statement.to_vec();
    if tamper {
        // Still JSON, same subject: `{"_type"` → `{ "_type"`'s neighbour.
        payload.insert(1, b' ');
    }
    serde_json::to_vec(&json!({
        "mediaType": media_type,
        "verificationMaterial": {"publicKey": {"hint": "test-key"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": b64.encode(&payload),
            "payloadType": IN_TOTO,
            "signatures": [{"sig": b64.encode(&sig), "keyid": ""}]
        }
    }))
    .expect("json")
}

/// A `cosign sign-blob`-style bundle: a messageSignature over `data`.
pub fn message_bundle(private: &Path, data: &[u8]) -> Vec<u8> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let sig = openssl_sign(private, data);
    let digest = hex::decode(sha256_hex(data)).expect("hex");
    serde_json::to_vec(&json!({
        "mediaType": MT_BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": "test-key"}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(digest)},
            "signature": b64.encode(sig)
        }
    }))
    .expect("json")
}

/// Stores a blob in an OCI layout; returns its descriptor.
pub fn layout_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = sha256_hex(bytes);
    fs::create_dir_all(layout.join("blobs/sha256")).expect("blobs dir");
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// cosign 3's referrer: a manifest whose one layer is the bundle (of
/// `layer_type`), with the empty config and `subject`; returns its descriptor.
pub fn bundle_referrer(layout: &Path, layer_type: &str, bundle: &[u8], subject: &str) -> Value {
    let config = layout_blob(layout, MT_EMPTY, b"{}");
    let layer = layout_blob(layout, layer_type, bundle);
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": layer_type,
        "config": config,
        "layers": [layer],
        "subject": {"mediaType": MT_MANIFEST, "digest": subject, "size": 1},
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": PREDICATE_SIGN
        }
    });
    layout_blob(layout, MT_MANIFEST, &serde_json::to_vec(&m).expect("json"))
}

/// The referrers index (the referrers tag schema's `sha256-<hex>`) listing
/// `manifests`, each with the empty artifactType as cosign writes it.
pub fn referrers_index(layout: &Path, manifests: &[Value]) -> Value {
    let entries: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let mut e = m.clone();
            e["artifactType"] = json!(MT_EMPTY);
            e
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries});
    layout_blob(layout, MT_INDEX, &serde_json::to_vec(&index).expect("json"))
}

/// Points `tag` at `desc` in the layout's index.json (replacing it).
pub fn set_tag(layout: &Path, tag: &str, desc: &Value) {
    let path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&path).expect("read index.json")).expect("parse");
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag));
    let mut d = desc.clone();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    manifests.push(d);
    fs::write(&path, serde_json::to_vec(&index).expect("json")).expect("write index.json");
}

/// An empty OCI layout.
pub fn empty_layout(dir: &Path) {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    fs::write(dir.join("index.json"), r#"{"schemaVersion":2,"manifests":[]}"#).expect("index.json");
}

/// cosign's referrers tag for `digest`: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// cosign's legacy signature tag for `digest`: `sha256-<hex>.sig`.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// `tests/common/referrers_proxy.py`: the OCI 1.1 referrers API in front of
/// a real registry on `upstream` (which has none), answering from
/// `dir/<algo>-<hex>` files [`ReferrersProxy::answer`] writes; killed on drop.
pub struct ReferrersProxy {
    child: std::process::Child,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl ReferrersProxy {
    pub fn start(upstream: u16, dir: &Path) -> ReferrersProxy {
        use std::io::BufRead as _;
        let answers = dir.join("referrers");
        fs::create_dir_all(&answers).expect("referrers dir");
        let log = dir.join("proxy.log");
        fs::write(&log, b"").expect("log");
        let script = super::demo::repo_root().join("tests/common/referrers_proxy.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(upstream.to_string())
            .arg(&answers)
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        let out = child.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out).read_line(&mut line).expect("read port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("referrers proxy printed {line:?}"));
        ReferrersProxy { child, port, dir: answers, log }
    }

    /// From now on, the referrers API lists `index` (an image index's bytes) for `subject`.
    pub fn answer(&self, subject: &str, index: &[u8]) {
        fs::write(self.dir.join(referrers_tag(subject)), index).expect("write answer");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request lines it received so far (each followed by its `X-`
    /// headers, as `  NAME: VALUE` lines).
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).expect("read log").lines().map(str::to_string).collect()
    }
}

impl Drop for ReferrersProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A legacy cosign signature manifest (the `.sig` tag): one simple-signing
/// layer naming `digest`, its base64 DER signature by `private` in the
/// `dev.cosignproject.cosign/signature` annotation.
pub fn legacy_sig_manifest(layout: &Path, private: &Path, digest: &str) -> Value {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": "127.0.0.1/demo"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .expect("json");
    let sig = base64::engine::general_purpose::STANDARD.encode(openssl_sign(private, &payload));
    let mut layer = layout_blob(layout, "application/vnd.dev.cosign.simplesigning.v1+json", &payload);
    layer["annotations"] = json!({"dev.cosignproject.cosign/signature": sig});
    let config = json!({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer["digest"].clone()]}
    });
    let config =
        layout_blob(layout, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).expect("json"));
    let m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": [layer]});
    layout_blob(layout, MT_MANIFEST, &serde_json::to_vec(&m).expect("json"))
}

/// The descriptor `tag` names in a layout's `index.json`, without its annotations.
pub fn tag_descriptor(layout: &Path, tag: &str) -> Value {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json")).expect("json");
    let mut d = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"))
        .clone();
    d.as_object_mut().expect("object").remove("annotations");
    d
}

/// A multi-arch image index: linux/amd64 is the demo's v1, linux/arm64 its v2.
pub fn multi_arch_index(layout: &Path) -> Value {
    let entry = |tag: &str, arch: &str| {
        let mut d = tag_descriptor(layout, tag);
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    };
    let index =
        json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [entry("v1", "amd64"), entry("v2", "arm64")]});
    layout_blob(layout, MT_INDEX, &serde_json::to_vec(&index).expect("json"))
}
