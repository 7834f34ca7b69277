//! `install --verify-key` with cosign 3's signatures: Sigstore bundles
//! (v0.1, v0.2, v0.3) holding a DSSE envelope over an in-toto statement
//! (predicate type `https://sigstore.dev/cosign/sign/v1`), attached as OCI
//! 1.1 referrers. Keys are made and the DSSE PAE signed by `openssl`; the
//! bundles and referrer manifests are laid out as cosign 3 lays them out
//! (`tests/common/cosign.rs`), in an OCI layout on disk, pushed with `skopeo`
//! to a real `docker-registry` (no referrers API: the referrers tag schema
//! `sha256-<hex>` is the path taken), and served through the referrers API
//! by a proxy in front of that registry (`tests/common/referrers_proxy.py`).
//!
//! Cases: valid v0.3, v0.2 (after an invalid bundle) and v0.1 install and
//! record the key's fingerprint; a tampered payload, the wrong key, another
//! subject, another predicate type (an attestation) and a messageSignature
//! bundle are refused, each named, changing nothing (the destination's
//! independent hashes and `list`); the legacy `.sig` tag still verifies
//! beside an invalid bundle. Every case here fails on a stagehand that does
//! not read bundles (it finds no signature).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cosign::*;
use common::registry::*;
use serde_json::{json, Value};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "openssl", "python3"];

/// The signer's key pair, another key pair, and the signer's fingerprint.
struct Keys {
    good: PathBuf,
    good_pub: PathBuf,
    other: PathBuf,
    fp: String,
}

fn keys(dir: &Path) -> Keys {
    fs::create_dir_all(dir).expect("keys dir");
    let (good, good_pub) = keypair(dir, "cosign");
    let (other, _) = keypair(dir, "other");
    let fp = fingerprint(&good_pub);
    Keys { good, good_pub, other, fp }
}

fn install(sb: &Sandbox, source: &str, k: &Keys) -> Run {
    let key = k.good_pub.display().to_string();
    sb.run(&sb.demo_args(source, &["--verify-key", &key]))
}

/// What a refused install must leave as it was: the destination and `list`.
fn snapshot(sb: &Sandbox) -> (Tree, Value) {
    (sb.world(), sb.run(&["list", "--json"]).ok().json())
}

fn refused(what: &str, sb: &Sandbox, r: &Run, needles: &[&str], before: &(Tree, Value)) {
    r.fails_with(needles);
    assert!(r.stderr.contains("Nothing was changed"), "{what}: {}", r.describe());
    assert_eq!(&snapshot(sb), before, "{what}: a refused install changed something");
    println!("{what}: refused: {}", r.stderr.lines().last().unwrap_or_default());
}

fn installed(what: &str, sb: &Sandbox, r: &Run, ver: &str, k: &Keys) {
    r.ok();
    assert_eq!(sb.world(), demo_world(ver), "{what}: the world is {ver}'s");
    let list = sb.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["signed_by"], json!(k.fp), "{what}: list --json names the key");
}

/// The bad bundles for `digest` (whose sibling version is `other_digest`),
/// each with the words its refusal must hold.
fn bad_bundles(
    k: &Keys,
    digest: &str,
    other_digest: &str,
    manifest: &[u8],
) -> Vec<(&'static str, Vec<u8>, Vec<String>)> {
    let good = statement(digest, PREDICATE_SIGN);
    vec![
        (
            "tampered-payload",
            dsse_bundle(MT_BUNDLE_V03, &k.good, &good, true),
            vec!["DSSE signature does not verify".into()],
        ),
        (
            "wrong-key",
            dsse_bundle(MT_BUNDLE_V03, &k.other, &good, false),
            vec!["DSSE signature does not verify".into()],
        ),
        (
            "wrong-subject",
            dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(other_digest, PREDICATE_SIGN), false),
            vec!["another artifact".into(), other_digest.to_string()],
        ),
        (
            "wrong-predicate",
            dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(digest, "https://slsa.dev/provenance/v1"), false),
            vec!["predicate type".into(), "slsa.dev/provenance".into()],
        ),
        ("message-signature", message_bundle(&k.good, manifest), vec!["messageSignature bundle".into()]),
    ]
}

fn manifest_bytes(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(&digest[7..])).expect("read manifest")
}

#[test]
fn bundles_in_an_oci_layout() {
    if !require("bundles_in_an_oci_layout", &["openssl"]) {
        return;
    }
    let tmp = tempdir("bundle-layout");
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let k = keys(&tmp.path().join("keys"));
    let (d1, d2) = (layout_tag_digest(&layout, "v1"), layout_tag_digest(&layout, "v2"));
    let l = layout.display().to_string();
    let src = |tag: &str| format!("oci-layout:{l}:{tag}");

    // Each bad bundle alone in v1's referrers tag: refused, nothing changes.
    let before = snapshot(&sb);
    for (what, bundle, needles) in bad_bundles(&k, &d1, &d2, &manifest_bytes(&layout, &d1)) {
        let m = bundle_referrer(&layout, MT_BUNDLE_V03, &bundle, &d1);
        set_tag(&layout, &referrers_tag(&d1), &referrers_index(&layout, &[m]));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        refused(&format!("layout/{what}"), &sb, &install(&sb, &src("v1"), &k), &needles, &before);
    }

    // v0.3, valid.
    let b = dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(&d1, PREDICATE_SIGN), false);
    let m = bundle_referrer(&layout, MT_BUNDLE_V03, &b, &d1);
    set_tag(&layout, &referrers_tag(&d1), &referrers_index(&layout, &[m]));
    installed("layout/v0.3", &sb, &install(&sb, &src("v1"), &k), "v1", &k);

    // v0.2, valid, listed after one by the wrong key.
    let bad = dsse_bundle(MT_BUNDLE_V02, &k.other, &statement(&d2, PREDICATE_SIGN), false);
    let good = dsse_bundle(MT_BUNDLE_V02, &k.good, &statement(&d2, PREDICATE_SIGN), false);
    let ms = [bundle_referrer(&layout, MT_BUNDLE_V02, &bad, &d2), bundle_referrer(&layout, MT_BUNDLE_V02, &good, &d2)];
    set_tag(&layout, &referrers_tag(&d2), &referrers_index(&layout, &ms));
    installed("layout/v0.2", &sb, &install(&sb, &src("v2"), &k), "v2", &k);

    // v0.1, valid, back to v1.
    let b = dsse_bundle(MT_BUNDLE_V01, &k.good, &statement(&d1, PREDICATE_SIGN), false);
    let m = bundle_referrer(&layout, MT_BUNDLE_V01, &b, &d1);
    set_tag(&layout, &referrers_tag(&d1), &referrers_index(&layout, &[m]));
    installed("layout/v0.1", &sb, &install(&sb, &src("v1"), &k), "v1", &k);
}

/// Pushes `tag` of the scratch layout to the registry (an index with --all).
fn push(sigs: &Path, host: &str, tag: &str, desc: &Value) {
    set_tag(sigs, tag, desc);
    skopeo_push(sigs, tag, &format!("{host}/demo:{tag}"), None, desc["mediaType"] == MT_INDEX);
}

#[test]
fn bundles_in_a_registry_by_the_referrers_tag() {
    if !require("bundles_in_a_registry_by_the_referrers_tag", TOOLS) {
        return;
    }
    let tmp = tempdir("bundle-registry");
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    let sigs = tmp.path().join("signatures");
    empty_layout(&sigs);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let k = keys(&tmp.path().join("keys"));
    let (d1, d2) = (layout_tag_digest(&demo_layout(), "v1"), layout_tag_digest(&demo_layout(), "v2"));
    let src = |tag: &str| format!("{host}/demo:{tag}");

    // Another subject: refused.
    let before = snapshot(&sb);
    let b = dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(&d2, PREDICATE_SIGN), false);
    let m = bundle_referrer(&sigs, MT_BUNDLE_V03, &b, &d1);
    push(&sigs, &host, &referrers_tag(&d1), &referrers_index(&sigs, &[m]));
    refused("registry/wrong-subject", &sb, &install(&sb, &src("v1"), &k), &["another artifact", &d2], &before);

    // Valid v0.3 in the referrers tag, as cosign 3 falls back to it.
    let b = dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(&d1, PREDICATE_SIGN), false);
    let m = bundle_referrer(&sigs, MT_BUNDLE_V03, &b, &d1);
    push(&sigs, &host, &referrers_tag(&d1), &referrers_index(&sigs, &[m]));
    installed("registry/v0.3", &sb, &install(&sb, &src("v1"), &k), "v1", &k);

    // The legacy `.sig` tag still verifies, beside a bundle by another key.
    let bad = dsse_bundle(MT_BUNDLE_V03, &k.other, &statement(&d2, PREDICATE_SIGN), false);
    let m = bundle_referrer(&sigs, MT_BUNDLE_V03, &bad, &d2);
    push(&sigs, &host, &referrers_tag(&d2), &referrers_index(&sigs, &[m]));
    push(&sigs, &host, &sig_tag(&d2), &legacy_sig_manifest(&sigs, &k.good, &d2));
    installed("registry/legacy-sig", &sb, &install(&sb, &src("v2"), &k), "v2", &k);
}

#[test]
fn bundles_in_a_registry_by_the_referrers_api() {
    if !require("bundles_in_a_registry_by_the_referrers_api", TOOLS) {
        return;
    }
    let tmp = tempdir("bundle-api");
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let host = reg.host();
    skopeo_push(&demo_layout(), "v1", &format!("{host}/demo:v1"), None, false);
    let proxy = ReferrersProxy::start(reg.port, &tmp.path().join("proxy"));
    let sigs = tmp.path().join("signatures");
    empty_layout(&sigs);
    let sb = Sandbox::at(&tmp.path().join("sb"));
    let k = keys(&tmp.path().join("keys"));
    let d1 = layout_tag_digest(&demo_layout(), "v1");
    let src = format!("{}/demo:v1", proxy.host());

    // The referrer is pushed under a tag of its own: only the API names it.
    let publish = |bundle: &[u8]| {
        let m = bundle_referrer(&sigs, MT_BUNDLE_V03, bundle, &d1);
        push(&sigs, &host, "bundle", &m);
        let index = referrers_index(&sigs, &[m]);
        proxy.answer(
            &d1,
            &fs::read(sigs.join("blobs/sha256").join(&index["digest"].as_str().expect("digest")[7..])).expect("index"),
        );
    };
    let before = snapshot(&sb);
    publish(&dsse_bundle(MT_BUNDLE_V03, &k.other, &statement(&d1, PREDICATE_SIGN), false));
    refused("api/wrong-key", &sb, &install(&sb, &src, &k), &["DSSE signature does not verify"], &before);

    publish(&dsse_bundle(MT_BUNDLE_V03, &k.good, &statement(&d1, PREDICATE_SIGN), false));
    installed("api/v0.3", &sb, &install(&sb, &src, &k), "v1", &k);
    let asked = proxy.requests();
    assert!(asked.iter().any(|l| l.starts_with(&format!("GET /v2/demo/referrers/{d1}"))), "{asked:?}");
    let tag = referrers_tag(&d1);
    assert!(!asked.iter().any(|l| l.ends_with(&format!("/manifests/{tag}"))), "the API answered, yet: {asked:?}");
}
