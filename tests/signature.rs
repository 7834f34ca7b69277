//! `install --verify-key`: cosign signatures checked before anything is
//! staged, against signers that are not stagehand. Keys are made and payloads
//! signed by `openssl` (`ecparam -genkey -name prime256v1`, `ec -pubout`,
//! `dgst -sha256 -sign`); signature manifests are laid out as cosign lays
//! them out (a simple-signing layer per signature, the base64 DER signature in
//! the `dev.cosignproject.cosign/signature` annotation) under the tag
//! `sha256-<hex>.sig` or in an OCI 1.1 referrers index under the tag
//! `sha256-<hex>`, both in an OCI layout on disk and pushed with `skopeo` to a
//! real `docker-registry` (which has no referrers API, so the referrers tag is
//! the path taken there).
//!
//! Cases, for each source: valid (by referrers, then by the `.sig` tag), the
//! wrong key, a payload naming another digest, a flipped bit in the
//! signature, an unsigned artifact, two signatures where only the second is
//! valid, a key file that is not a key (and a private key), and
//! `--require-signature` / the state-dir default / the "verification dropped"
//! warning. Every refusal is checked to change nothing: the destination's
//! independent hashes, `list`, `history` and the blob cache.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cosign::{
    empty_layout, fingerprint, keypair, layout_blob, multi_arch_index, openssl, referrers_tag, set_tag,
};
use common::registry::*;
use serde_json::{json, Value};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "openssl"];
const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const MT_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A cosign simple-signing payload naming `digest`.
fn payload(digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": "127.0.0.1/demo"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .expect("json")
}

/// `openssl dgst -sha256 -sign KEY payload | base64`, with one bit flipped
/// in the DER signature's last byte if `flip`.
fn sign(private: &Path, payload: &[u8], flip: bool) -> String {
    let tmp = tempdir("sig-sign");
    let (p, s) = (tmp.path().join("payload"), tmp.path().join("sig"));
    fs::write(&p, payload).expect("write payload");
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        private.to_str().expect("utf-8"),
        "-out",
        s.to_str().expect("utf-8"),
        p.to_str().expect("utf-8"),
    ]);
    if flip {
        let mut der = fs::read(&s).expect("read sig");
        let last = der.len() - 1;
        der[last] ^= 0x01;
        fs::write(&s, der).expect("write sig");
    }
    let b64 = openssl(&["base64", "-A", "-in", s.to_str().expect("utf-8")]);
    String::from_utf8(b64).expect("base64 is ASCII").trim().to_string()
}

/// A signature manifest as cosign writes it: one simple-signing layer per
/// `(payload, base64 signature)`, a config naming the layers' diff ids.
fn sig_manifest(layout: &Path, sigs: &[(Vec<u8>, String)], subject: Option<&str>) -> Value {
    let layers: Vec<Value> = sigs
        .iter()
        .map(|(p, s)| {
            let mut d = layout_blob(layout, MT_SIMPLE_SIGNING, p);
            d["annotations"] = json!({ SIG_ANNOTATION: s });
            d
        })
        .collect();
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = json!({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let config =
        layout_blob(layout, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).expect("json"));
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(d) = subject {
        m["subject"] = json!({"mediaType": MT_MANIFEST, "digest": d, "size": 1});
        m["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
    }
    layout_blob(layout, MT_MANIFEST, &serde_json::to_vec(&m).expect("json"))
}

/// An OCI 1.1 referrers index listing `manifests`.
fn referrers_index(layout: &Path, manifests: &[Value]) -> Value {
    let mut entries = manifests.to_vec();
    for e in &mut entries {
        e["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries});
    layout_blob(layout, MT_INDEX, &serde_json::to_vec(&index).expect("json"))
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// Where signatures are published: the artifact's own layout, or a scratch
/// layout whose tags are pushed with skopeo to the registry.
struct Publisher {
    layout: PathBuf,
    registry: Option<String>,
}

impl Publisher {
    fn publish(&self, tag: &str, desc: &Value) {
        set_tag(&self.layout, tag, desc);
        if let Some(host) = &self.registry {
            let all = desc["mediaType"] == MT_INDEX;
            skopeo_push(&self.layout, tag, &format!("{host}/demo:{tag}"), None, all);
        }
    }
}

/// What a refused install must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    world: Tree,
    list: Value,
    history: Value,
    cache: Tree,
}

fn snapshot(sb: &Sandbox) -> Snapshot {
    Snapshot {
        world: sb.world(),
        list: sb.run(&["list", "--json"]).ok().json(),
        history: sb.run(&["history", "--json"]).ok().json(),
        cache: hash_tree(&sb.state.join("blobs")),
    }
}

/// Runs every case against one source. `source(tag)` names the demo's
/// artifact at tag; `publisher` puts signature manifests where that source
/// finds them.
fn run_cases(what: &str, sb: &Sandbox, source: &dyn Fn(&str) -> String, publisher: &Publisher, keys: &Path) {
    let (a_key, a_pub) = keypair(keys, "trusted");
    let (b_key, _b_pub) = keypair(keys, "other");
    let a_fp = fingerprint(&a_pub);
    let not_a_key = keys.join("not-a-key.pub");
    fs::write(&not_a_key, "this is not a key\n").expect("write");
    let (d1, d2) = (layout_tag_digest(&demo_layout(), "v1"), layout_tag_digest(&demo_layout(), "v2"));
    let sig_layout = &publisher.layout;
    let install = |tag: &str, extra: &[&str]| sb.run(&sb.demo_args(&source(tag), extra));
    let with_key = |k: &Path| vec!["--verify-key".to_string(), k.display().to_string()];

    // Valid, found through the OCI 1.1 referrers index (the tag sha256-<hex>).
    let v1_sig = (payload(&d1), sign(&a_key, &payload(&d1), false));
    let m = sig_manifest(sig_layout, std::slice::from_ref(&v1_sig), Some(&d1));
    publisher.publish(&referrers_tag(&d1), &referrers_index(sig_layout, &[m]));
    let k = with_key(&a_pub);
    let r = install("v1", &[k[0].as_str(), k[1].as_str()]);
    r.ok();
    assert_eq!(sb.world(), demo_world("v1"), "{what}: valid signature (referrers)");
    let list = sb.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["signed_by"], a_fp, "{what}: list --json shows the key's fingerprint");
    let hist = sb.run(&["history", "--json"]).ok().json();
    assert_eq!(hist.as_array().and_then(|h| h.last()).map(|e| e["signed_by"].clone()), Some(json!(a_fp)));
    let v = sb.run(&["verify"]).ok().stdout.clone();
    assert!(v.contains(&format!("cosign signature checked at install, key {a_fp}")), "{what}: verify says: {v}");

    let unchanged = |case: &str, r: &Run, needles: &[&str], before: &Snapshot| {
        r.fails_with(needles);
        assert!(r.stderr.contains("Nothing was changed"), "{what}/{case}: {}", r.describe());
        assert_eq!(&snapshot(sb), before, "{what}/{case}: a refused install changed something");
        println!("{what}/{case}: refused: {}", r.stderr.lines().last().unwrap_or_default());
    };
    let before = snapshot(sb);
    assert_eq!(before.world, demo_world("v1"));

    // Unsigned: nothing published for v2.
    let r = install("v2", &[k[0].as_str(), k[1].as_str()]);
    unchanged("unsigned", &r, &["has no cosign signature", &sig_tag(&d2)], &before);

    // A key file that is not a key, and a private key.
    let nk = with_key(&not_a_key);
    unchanged(
        "not-a-key",
        &install("v2", &[nk[0].as_str(), nk[1].as_str()]),
        &["not a PEM file", "Nothing was changed"],
        &before,
    );
    let pk = with_key(&a_key);
    unchanged(
        "private-key",
        &install("v2", &[pk[0].as_str(), pk[1].as_str()]),
        &["holds a private key", "Pass the public key"],
        &before,
    );

    // The wrong key.
    let m = sig_manifest(sig_layout, &[(payload(&d2), sign(&b_key, &payload(&d2), false))], None);
    publisher.publish(&sig_tag(&d2), &m);
    unchanged("wrong-key", &install("v2", &[k[0].as_str(), k[1].as_str()]), &["does not verify with the key"], &before);

    // A payload naming another digest: v1's valid signature replayed onto v2.
    let m = sig_manifest(sig_layout, std::slice::from_ref(&v1_sig), None);
    publisher.publish(&sig_tag(&d2), &m);
    let r = install("v2", &[k[0].as_str(), k[1].as_str()]);
    unchanged("replayed", &r, &[&format!("signs {d1}, another artifact")], &before);

    // A flipped bit in the signature.
    let m = sig_manifest(sig_layout, &[(payload(&d2), sign(&a_key, &payload(&d2), true))], None);
    publisher.publish(&sig_tag(&d2), &m);
    unchanged(
        "flipped-bit",
        &install("v2", &[k[0].as_str(), k[1].as_str()]),
        &["does not verify with the key"],
        &before,
    );

    // --require-signature without a key, and the state-dir default.
    unchanged("require-signature", &install("v2", &["--require-signature"]), &["--require-signature is set"], &before);
    fs::write(sb.state.join("require-signature"), "").expect("touch");
    let r = install("v2", &[]);
    unchanged("state-default", &r, &["so every install must be signature-checked"], &before);
    fs::remove_file(sb.state.join("require-signature")).expect("rm");

    // Two signatures where only the second is valid: accepted.
    let bad = (payload(&d2), sign(&b_key, &payload(&d2), false));
    let good = (payload(&d2), sign(&a_key, &payload(&d2), false));
    let m = sig_manifest(sig_layout, &[bad, good], None);
    publisher.publish(&sig_tag(&d2), &m);
    install("v2", &[k[0].as_str(), k[1].as_str()]).ok();
    assert_eq!(sb.world(), demo_world("v2"), "{what}: two signatures, the second valid");
    assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], a_fp);

    // Installing without --verify-key over a signature-checked package warns.
    let r = install("v1", &[]);
    r.ok();
    assert!(r.stderr.contains("signature verification is being dropped"), "{what}: {}", r.describe());
    assert_eq!(sb.world(), demo_world("v1"));
    assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], Value::Null);
    let v = sb.run(&["verify"]).ok().stdout.clone();
    assert!(v.contains("no signature checked at install"), "{what}: verify says: {v}");
}

#[test]
fn signatures_in_an_oci_layout() {
    if !require("signatures_in_an_oci_layout", &["openssl"]) {
        return;
    }
    let tmp = tempdir("sig-layout");
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let l = layout.display().to_string();
    let publisher = Publisher { layout: layout.clone(), registry: None };
    run_cases("layout", &sb, &|tag| format!("oci-layout:{l}:{tag}"), &publisher, &keys);
}

#[test]
fn signatures_in_a_registry() {
    if !require("signatures_in_a_registry", TOOLS) {
        return;
    }
    let tmp = tempdir("sig-registry");
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    let sig_layout = tmp.path().join("signatures");
    empty_layout(&sig_layout);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let publisher = Publisher { layout: sig_layout, registry: Some(host.clone()) };
    run_cases("registry", &sb, &|tag| format!("{host}/demo:{tag}"), &publisher, &keys);
}

/// How an algorithm's key is made and a payload signed with it by openssl.
struct Algorithm {
    name: &'static str,
    genpkey: &'static [&'static str],
    /// `openssl` arguments before `-out SIG PAYLOAD` (`{key}` is the private key).
    sign: &'static [&'static str],
}

/// Every algorithm cosign signs with, as openssl makes and signs with it.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm {
        name: "ECDSA P-384 (SHA-384)",
        genpkey: &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        sign: &["dgst", "-sha384", "-sign", "{key}"],
    },
    Algorithm {
        name: "ECDSA P-384 (SHA-256, as cosign 2 signs)",
        genpkey: &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        sign: &["dgst", "-sha256", "-sign", "{key}"],
    },
    Algorithm {
        name: "Ed25519",
        genpkey: &["-algorithm", "ed25519"],
        sign: &["pkeyutl", "-sign", "-rawin", "-inkey", "{key}"],
    },
    Algorithm {
        name: "RSA-2048 PKCS#1 v1.5",
        genpkey: &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        sign: &["dgst", "-sha256", "-sign", "{key}"],
    },
    Algorithm {
        name: "RSA-3072 PSS (salt as long as the hash)",
        genpkey: &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        sign: &[
            "dgst",
            "-sha256",
            "-sign",
            "{key}",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ],
    },
    Algorithm {
        name: "RSA-2048 PSS (longest salt)",
        genpkey: &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        sign: &[
            "dgst",
            "-sha256",
            "-sign",
            "{key}",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:max",
        ],
    },
];

/// Makes a key pair with `openssl genpkey ARGS`: (private PEM, public PEM).
fn genpkey(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let (private, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    let (p, q) = (private.to_str().expect("utf-8"), public.to_str().expect("utf-8"));
    let mut a = vec!["genpkey"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-out", p]);
    openssl(&a);
    openssl(&["pkey", "-in", p, "-pubout", "-out", q]);
    (private, public)
}

/// Signs `payload` as `alg` says, with one bit flipped in the signature's
/// last byte if `flip`; returns it base64-encoded.
fn sign_as(alg: &Algorithm, private: &Path, payload: &[u8], flip: bool) -> String {
    let tmp = tempdir("sig-sign-as");
    let (p, s) = (tmp.path().join("payload"), tmp.path().join("sig"));
    fs::write(&p, payload).expect("write payload");
    let key = private.to_str().expect("utf-8");
    let mut args: Vec<&str> = alg.sign.iter().map(|a| if *a == "{key}" { key } else { a }).collect();
    let (s_str, p_str) = (s.to_str().expect("utf-8"), p.to_str().expect("utf-8"));
    if alg.sign[0] == "pkeyutl" {
        args.extend_from_slice(&["-in", p_str, "-out", s_str]);
    } else {
        args.extend_from_slice(&["-out", s_str, p_str]);
    }
    openssl(&args);
    let mut raw = fs::read(&s).expect("read sig");
    if flip {
        let last = raw.len() - 1;
        raw[last] ^= 0x01;
    }
    base64(&raw)
}

fn base64(bytes: &[u8]) -> String {
    let tmp = tempdir("sig-b64");
    let f = tmp.path().join("raw");
    fs::write(&f, bytes).expect("write");
    let b64 = openssl(&["base64", "-A", "-in", f.to_str().expect("utf-8")]);
    String::from_utf8(b64).expect("base64 is ASCII").trim().to_string()
}

/// Every algorithm cosign signs with verifies (and a flipped bit in each is
/// refused); a key of another algorithm is refused naming its own OID.
#[test]
fn every_cosign_key_algorithm() {
    if !require("every_cosign_key_algorithm", &["openssl"]) {
        return;
    }
    let tmp = tempdir("sig-algorithms");
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let l = layout.display().to_string();
    let tags = ["v1", "v2"];
    let digests = tags.map(|t| layout_tag_digest(&demo_layout(), t));
    for (i, alg) in ALGORITHMS.iter().enumerate() {
        let (private, public) = genpkey(&keys, &format!("k{i}"), alg.genpkey);
        let (tag, digest) = (tags[i % 2], &digests[i % 2]);
        let args =
            |k: &Path| sb.demo_args(&format!("oci-layout:{l}:{tag}"), &["--verify-key", k.to_str().expect("utf-8")]);
        let publish = |flip: bool| {
            let m = sig_manifest(&layout, &[(payload(digest), sign_as(alg, &private, &payload(digest), flip))], None);
            set_tag(&layout, &sig_tag(digest), &m);
        };
        publish(true);
        let r = sb.run(&args(&public));
        r.fails_with(&["does not verify with the key"]);
        publish(false);
        let r = sb.run(&args(&public));
        r.ok();
        assert_eq!(sb.world(), demo_world(tag), "{}: installed {tag}", alg.name);
        assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], fingerprint(&public), "{}", alg.name);
    }
    // Ed448 (which cosign does not sign with) is named by its own OID, not
    // by the P-256 one that was expected.
    let (_, ed448) = genpkey(&keys, "ed448", &["-algorithm", "ed448"]);
    let r = sb.run(&sb.demo_args(&format!("oci-layout:{l}:v1"), &["--verify-key", ed448.to_str().expect("utf-8")]));
    r.fails_with(&["1.3.101.113 (Ed448)", "Nothing was changed"]);
    assert!(!r.stderr.contains("1.2.840.10045.2.1"), "{}", r.describe());
}

/// The descriptor `tag` has in a layout's index.json (without annotations).
/// `cosign sign repo:tag` on a multi-arch tag signs the index digest: that
/// signature covers the platform manifest the index pins. A refused check
/// leaves nothing behind, not even the index in the blob cache.
fn multi_arch_cases(what: &str, sb: &Sandbox, source: &str, index_digest: &str, publisher: &Publisher, keys: &Path) {
    let (a_key, a_pub) = keypair(keys, "trusted");
    let (b_key, _) = keypair(keys, "other");
    let layout = &publisher.layout;
    let index_digest = index_digest.to_string();
    let other_index = format!("sha256:{}", "1".repeat(64));
    let args = sb.demo_args(source, &["--platform", "linux/amd64", "--verify-key", a_pub.to_str().expect("utf-8")]);
    // What a refused install must leave as it was: the cache's files (an
    // empty cache directory made on the way is not content).
    let files_only = |mut s: Snapshot| {
        s.cache.retain(|_, n| !matches!(n, Node::Dir));
        s
    };
    let before = files_only(snapshot(sb));
    // Signed over the index, by another key; then a valid signature of
    // another index replayed onto this one: refused, nothing changed.
    for (case, sig, needle) in [
        ("wrong-key", (payload(&index_digest), sign(&b_key, &payload(&index_digest), false)), "does not verify"),
        ("replayed", (payload(&other_index), sign(&a_key, &payload(&other_index), false)), "another artifact"),
    ] {
        let m = sig_manifest(layout, &[sig], None);
        publisher.publish(&sig_tag(&index_digest), &m);
        let r = sb.run(&args);
        r.fails_with(&[needle, &index_digest, "Nothing was changed"]);
        assert_eq!(files_only(snapshot(sb)), before, "{what}/{case}: a refused install changed something");
    }
    // Valid over the index: the linux/amd64 manifest (v1) installs.
    let m = sig_manifest(layout, &[(payload(&index_digest), sign(&a_key, &payload(&index_digest), false))], None);
    publisher.publish(&sig_tag(&index_digest), &m);
    sb.run(&args).ok();
    assert_eq!(sb.world(), demo_world("v1"), "{what}: signed index");
    assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], fingerprint(&a_pub), "{what}");
}

#[test]
fn multi_arch_tag_signed_on_its_index() {
    if !require("multi_arch_tag_signed_on_its_index", TOOLS) {
        return;
    }
    let tmp = tempdir("sig-multi");
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    // An OCI layout holding the index under the tag `multi`.
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    let index = multi_arch_index(&layout);
    set_tag(&layout, "multi", &index);
    let sb = Sandbox::at(&tmp.path().join("sb-layout"));
    let l = layout.display().to_string();
    let publisher = Publisher { layout: layout.clone(), registry: None };
    let index_digest = index["digest"].as_str().expect("digest").to_string();
    multi_arch_cases("layout", &sb, &format!("oci-layout:{l}:multi"), &index_digest, &publisher, &keys);

    // The same, pushed (index and both manifests) to a registry.
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let host = reg.host();
    skopeo_push(&layout, "multi", &format!("{host}/demo:multi"), None, true);
    // skopeo writes the index anew: its digest there is not the layout's.
    let index_digest = registry_digest(&format!("{host}/demo:multi"));
    let sig_layout = tmp.path().join("signatures");
    empty_layout(&sig_layout);
    let sb = Sandbox::at(&tmp.path().join("sb-registry"));
    let publisher = Publisher { layout: sig_layout, registry: Some(host.clone()) };
    let keys = tmp.path().join("keys2");
    fs::create_dir_all(&keys).expect("keys dir");
    multi_arch_cases("registry", &sb, &format!("{host}/demo:multi"), &index_digest, &publisher, &keys);
}

/// 64 signatures that do not verify (by another key, as after a key
/// rotation) never hide a valid one, whether cosign appended the valid one
/// last (newest) or it came first; junk alone is refused, counted, clearly.
#[test]
fn junk_signatures_never_hide_a_valid_one() {
    if !require("junk_signatures_never_hide_a_valid_one", TOOLS) {
        return;
    }
    let tmp = tempdir("sig-junk");
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    let sig_layout = tmp.path().join("signatures");
    empty_layout(&sig_layout);
    let publisher = Publisher { layout: sig_layout.clone(), registry: Some(host.clone()) };
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let (a_key, a_pub) = keypair(&keys, "trusted");
    let (b_key, _) = keypair(&keys, "rotated-out");
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let key_args = ["--verify-key", a_pub.to_str().expect("utf-8")];
    // One junk signature signed once, repeated: distinct payload bytes (an
    // extra field) so each layer is its own blob, as cosign's would be.
    let junk_for = |digest: &str| -> Vec<(Vec<u8>, String)> {
        (0..64)
            .map(|n| {
                let mut p: Value = serde_json::from_slice(&payload(digest)).expect("json");
                p["optional"] = json!({ "n": n });
                let p = serde_json::to_vec(&p).expect("json");
                let s = sign(&b_key, &p, false);
                (p, s)
            })
            .collect()
    };
    let (d1, d2) = (layout_tag_digest(&demo_layout(), "v1"), layout_tag_digest(&demo_layout(), "v2"));

    // Junk only: refused, with the first few reasons and a count of the rest.
    let junk1 = junk_for(&d1);
    publisher.publish(&sig_tag(&d1), &sig_manifest(&sig_layout, &junk1, None));
    let r = sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &key_args));
    r.fails_with(&["no signature verifies with the key", "and 56 more signatures that do not verify either"]);
    assert!(r.stderr.len() < 4096, "the refusal stays readable: {} bytes", r.stderr.len());
    assert_eq!(sb.world(), Tree::new());

    // 64 junk signatures, then the valid one cosign appended last: installs.
    let mut sigs = junk1;
    sigs.push((payload(&d1), sign(&a_key, &payload(&d1), false)));
    publisher.publish(&sig_tag(&d1), &sig_manifest(&sig_layout, &sigs, None));
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &key_args)).ok();
    assert_eq!(sb.world(), demo_world("v1"));

    // The valid one first, 64 junk signatures appended after it: installs.
    let mut sigs = vec![(payload(&d2), sign(&a_key, &payload(&d2), false))];
    sigs.extend(junk_for(&d2));
    publisher.publish(&sig_tag(&d2), &sig_manifest(&sig_layout, &sigs, None));
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &key_args)).ok();
    assert_eq!(sb.world(), demo_world("v2"));
}

/// With signatures required (`STATE/require-signature`), `rollback` and
/// `rollback --apply` reinstall only a version whose history shows a
/// signature verified by the key given now; otherwise they refuse, saying
/// what to do, and change nothing.
#[test]
fn rollback_under_signature_policy() {
    if !require("rollback_under_signature_policy", &["openssl"]) {
        return;
    }
    let tmp = tempdir("sig-rollback");
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    let keys = tmp.path().join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let (a_key, a_pub) = keypair(&keys, "trusted");
    let (_, b_pub) = keypair(&keys, "other");
    let (a, b) = (a_pub.to_str().expect("utf-8"), b_pub.to_str().expect("utf-8"));
    let a_fp = fingerprint(&a_pub);
    let (d1, d2) = (layout_tag_digest(&layout, "v1"), layout_tag_digest(&layout, "v2"));
    for d in [&d1, &d2] {
        let m = sig_manifest(&layout, &[(payload(d), sign(&a_key, &payload(d), false))], None);
        set_tag(&layout, &sig_tag(d), &m);
    }
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let l = layout.display().to_string();
    let src = |tag: &str| format!("oci-layout:{l}:{tag}");
    // v1 signature-checked, then v2 installed without a check.
    sb.run(&sb.demo_args(&src("v1"), &["--verify-key", a])).ok();
    sb.run(&sb.demo_args(&src("v2"), &[])).ok();
    fs::write(sb.state.join("require-signature"), "").expect("touch");
    let refused = |args: &[&str], needles: &[&str]| {
        let before = snapshot(&sb);
        let r = sb.run(args);
        r.fails_with(needles);
        assert_eq!(snapshot(&sb), before, "refused {args:?} changed something");
    };
    // No key: refused, naming the key that would do.
    refused(&["rollback", "demo"], &["require-signature exists", "pass --verify-key", &a_fp, "Nothing was changed"]);
    // Another key: refused.
    refused(&["rollback", "demo", "--verify-key", b], &["cannot roll demo back", &a_fp, "Nothing was changed"]);
    // The key that verified v1: rolled back, and recorded as signed by it.
    sb.run(&["rollback", "demo", "--verify-key", a]).ok();
    assert_eq!(sb.world(), demo_world("v1"));
    assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], a_fp);
    // Back to v2, which was never signature-checked: refused, with the fix.
    refused(
        &["rollback", "demo", "--verify-key", a],
        &["no verified signature", &format!("stagehand install {} --verify-key", src("v2")), "Nothing was changed"],
    );

    // rollback --apply: an apply that upgraded to v2 with a key, undone.
    let d = sb.dest.display();
    let file = tmp.path().join("stagehand.toml");
    fs::write(
        &file,
        format!(
            "[package.demo]\nref = {:?}\nto = \"{d}/app\"\nmap = [\"*.so={d}/lib\", \"*.control={d}/ext\", \"*.sql={d}/ext\"]\nverify-key = {a:?}\n",
            src("v2")
        ),
    )
    .expect("write stagehand.toml");
    sb.run(&["apply", "--yes", "--file", file.to_str().expect("utf-8")]).ok();
    assert_eq!(sb.world(), demo_world("v2"));
    refused(&["rollback", "--apply"], &["pass --verify-key", "Nothing was changed"]);
    refused(&["rollback", "--apply", "--verify-key", b], &["cannot roll demo back", "Nothing was changed"]);
    sb.run(&["rollback", "--apply", "--verify-key", a]).ok();
    assert_eq!(sb.world(), demo_world("v1"));
}
