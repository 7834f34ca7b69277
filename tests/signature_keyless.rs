//! Keyless signatures, verified offline: `install` with
//! `--certificate-identity[-regexp]`, `--certificate-oidc-issuer` and
//! `--trusted-root`, against a private Sigstore trust root generated in the
//! test (`tests/common/keyless_fixture.py`, python3 `cryptography`): a CA in
//! Fulcio's role (leaf certificates with the SAN, Fulcio's issuer extensions
//! and an embedded SCT by a CT log of the root), a log key in Rekor's role
//! (a `dsse` entry with an inclusion proof, a signed checkpoint and a signed
//! entry timestamp) and a timestamp authority (RFC 3161 tokens). The v0.3 bundles are pushed as cosign 3 pushes them, as
//! referrers (the referrers tag schema) of the demo's manifest in a real
//! `docker-registry` on loopback.
//!
//! Every bundle is also checked by an independent verifier, Python
//! `sigstore` 4.x, offline with the same trusted root; the test asserts that
//! it agrees with stagehand on every case and prints the table. Cases: valid,
//! tampered payload, wrong subject, wrong identity, wrong issuer, expired
//! certificate without a timestamp, expired but timestamped (the signed
//! entry timestamp falls within its validity), a certificate from another
//! CA, an identity regexp, and an expired certificate with no log promise
//! whose signing time an RFC 3161 timestamp proves (by the root's timestamp
//! authority, accepted; by another, refused).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cosign::*;
use common::registry::*;
use serde_json::{json, Value};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "python3"];
const IDENTITY: &str = "signer@example.com";
const ISSUER: &str = "https://issuer.example";
const WORKFLOW_REGEXP: &str = r"https://ci\.example/org/repo/\.github/workflows/.*@refs/tags/v.*";
/// The identity of the fixture's regexp-signed bundles, and another one the
/// regexp accepts too (`keyless_fixture.py`).
const WORKFLOW: &str = "https://ci.example/org/repo/.github/workflows/release.yml@refs/tags/v1";
const OTHER_WORKFLOW: &str = "https://ci.example/org/repo/.github/workflows/hotfix.yml@refs/tags/v1";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/keyless_fixture.py")
}

/// python3 with `cryptography` and `sigstore` (scripts/test.sh installs them).
fn python_ready(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography, rfc8785, sigstore.verify"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip_unless_ci(
            test,
            "python3 with cryptography and sigstore 4.x is not installed (scripts/test.sh installs it)",
        );
    }
    ok
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3").arg(fixture()).args(args).output().expect("run python3");
    assert!(
        out.status.success(),
        "keyless_fixture.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One case: its bundle, the policy it is checked with, what both must say.
struct Case {
    name: &'static str,
    regexp: bool,
    accept: bool,
    /// Words stagehand's refusal must hold.
    needles: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case { name: "valid", regexp: false, accept: true, needles: &[] },
    Case { name: "tampered-payload", regexp: false, accept: false, needles: &["signature"] },
    Case { name: "wrong-subject", regexp: false, accept: false, needles: &["another artifact"] },
    Case {
        name: "wrong-identity",
        regexp: false,
        accept: false,
        needles: &["identity is \"mallory@example.com\", not \"signer@example.com\""],
    },
    Case {
        name: "wrong-issuer",
        regexp: false,
        accept: false,
        needles: &["OIDC issuer is \"https://other-issuer.example\", not \"https://issuer.example\""],
    },
    Case { name: "expired-no-timestamp", regexp: false, accept: false, needles: &["signing time"] },
    Case { name: "expired-timestamped", regexp: false, accept: true, needles: &[] },
    Case {
        name: "other-ca",
        regexp: false,
        accept: false,
        needles: &["certificate does not verify against the trusted root"],
    },
    Case { name: "identity-regexp", regexp: true, accept: true, needles: &[] },
    // An expired certificate, no log promise: an RFC 3161 timestamp of the
    // root's timestamp authority proves the signing time, one of another
    // authority does not.
    Case { name: "expired-tsa-timestamp", regexp: false, accept: true, needles: &[] },
    Case { name: "tsa-not-in-root", regexp: false, accept: false, needles: &["signing time"] },
];

fn keyless_args(root: &Path, regexp: bool) -> Vec<String> {
    let (flag, identity) =
        if regexp { ("--certificate-identity-regexp", WORKFLOW_REGEXP) } else { ("--certificate-identity", IDENTITY) };
    vec![
        flag.into(),
        identity.into(),
        "--certificate-oidc-issuer".into(),
        ISSUER.into(),
        "--trusted-root".into(),
        root.display().to_string(),
    ]
}

/// Makes `bundle` the one referrer of `subject` in the registry, under the
/// referrers tag schema's `sha256-<hex>` tag, as cosign 3 pushes it.
/// A registry holding demo v1 and v2, an empty layout for signatures and
/// the Python fixture's private trust root and bundles for v1 and v2.
struct Fixture {
    tmp: tempfile::TempDir,
    _reg: Registry,
    host: String,
    sigs: PathBuf,
    out: PathBuf,
    d1: String,
    d2: String,
    /// What `keyless_fixture.py make` printed (its cases, as JSON).
    made: String,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let tmp = tempdir(prefix);
        let reg = demo_registry(tmp.path());
        let host = reg.host();
        let sigs = tmp.path().join("signatures");
        empty_layout(&sigs);
        let (d1, d2) = (layout_tag_digest(&demo_layout(), "v1"), layout_tag_digest(&demo_layout(), "v2"));
        let out = tmp.path().join("fixture");
        let made = python(&["make", &out.display().to_string(), &d1, &d2]);
        Fixture { tmp, _reg: reg, host, sigs, out, d1, d2, made }
    }

    /// Publishes the fixture's bundle `name` as a referrer of `subject`.
    fn publish(&self, subject: &str, name: &str) {
        let bundle = std::fs::read(self.out.join(format!("{name}.json"))).expect("bundle");
        publish(&self.sigs, &self.host, subject, &bundle);
    }
}

fn publish(sigs: &Path, host: &str, subject: &str, bundle: &[u8]) {
    publish_referrers(sigs, host, subject, &[bundle_referrer(sigs, MT_BUNDLE_V03, bundle, subject)]);
}

/// Makes `referrers` (manifests in `sigs`) the referrers of `subject` in the
/// registry, under the referrers tag schema's `sha256-<hex>` tag.
fn publish_referrers(sigs: &Path, host: &str, subject: &str, referrers: &[Value]) {
    let tag = referrers_tag(subject);
    set_tag(sigs, &tag, &referrers_index(sigs, referrers));
    skopeo_push(sigs, &tag, &format!("{host}/demo:{tag}"), None, true);
}

#[test]
fn keyless_bundles_agree_with_python_sigstore() {
    let test = "keyless_bundles_agree_with_python_sigstore";
    if !require(test, TOOLS) || !python_ready(test) {
        return;
    }
    let started = std::time::Instant::now();
    let fx = Fixture::new("keyless");
    let (tmp, host, sigs, out, d1) = (&fx.tmp, &fx.host, &fx.sigs, &fx.out, &fx.d1);
    let made: Value = serde_json::from_str(&fx.made).expect("json");
    let names: Vec<&str> = made["cases"].as_array().expect("cases").iter().filter_map(Value::as_str).collect();
    assert_eq!(names, CASES.iter().map(|c| c.name).collect::<Vec<_>>(), "the fixture makes every case");
    let root = out.join("trusted_root.json");

    let mut table = vec![format!("{:<22} | {:<9} | python-sigstore", "case", "stagehand")];
    for case in CASES {
        let bundle_path = out.join(format!("{}.json", case.name));
        publish(sigs, host, d1, &std::fs::read(&bundle_path).expect("bundle"));

        let sb = Sandbox::at(&tmp.path().join(format!("sb-{}", case.name)));
        let before = (sb.world(), sb.run(&["list", "--json"]).ok().json());
        let r = sb.run(&sb.demo_args(
            &format!("{host}/demo:v1"),
            &keyless_args(&root, case.regexp).iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let stagehand = if r.success() {
            assert_eq!(sb.world(), demo_world("v1"), "{}: the world is v1's", case.name);
            let list = sb.run(&["list", "--json"]).ok().json();
            // The certificate's own identity, also where a regexp matched it.
            let expected = format!("identity {} (issuer {ISSUER})", if case.regexp { WORKFLOW } else { IDENTITY });
            assert_eq!(list[0]["signed_by"], json!(expected), "{}: list --json names the keyless signer", case.name);
            // The keyless signer in every report is what docs/schemas/ admits.
            if common::schema::validator_or_skip(test) {
                let mut s = common::schema::Schemas::new();
                for (name, args) in
                    [("list", ["list", "--json"]), ("history", ["history", "--json"]), ("verify", ["verify", "--json"])]
                {
                    s.check_run(name, sb.run(&args).ok());
                }
                s.check_run("journal", sb.run(&["journal", "--json"]).ok());
                s.finish();
            }
            "accept".to_string()
        } else {
            r.fails_with(case.needles);
            assert!(r.stderr.contains("Nothing was changed"), "{}: {}", case.name, r.describe());
            assert_eq!(
                (sb.world(), sb.run(&["list", "--json"]).ok().json()),
                before,
                "{}: a refusal changed something",
                case.name
            );
            "refuse".to_string()
        };

        let identity = if case.regexp { WORKFLOW_REGEXP } else { IDENTITY };
        let root_s = root.display().to_string();
        let bundle_s = bundle_path.display().to_string();
        let regexp = if case.regexp { "1" } else { "0" };
        let py = python(&["verify", &root_s, d1, identity, ISSUER, regexp, &bundle_s]);
        let py = py.trim();
        let python_says = py.split_whitespace().next().unwrap_or_default().to_string();

        let why = if r.success() { String::new() } else { r.stderr.lines().last().unwrap_or_default().to_string() };
        table.push(format!("{:<22} | {stagehand:<9} | {py}", case.name));
        eprintln!("{}: stagehand {stagehand} {why}", case.name);
        let expected = if case.accept { "accept" } else { "refuse" };
        assert_eq!(stagehand, expected, "{}: stagehand says {stagehand}: {}", case.name, r.describe());
        assert_eq!(python_says, stagehand, "{}: python-sigstore disagrees: {py}", case.name);
    }
    println!("{}", table.join("\n"));
    println!("({} cases in {:.1} s)", CASES.len(), started.elapsed().as_secs_f64());
}

/// Rollback under a keyless policy: v1 and v2 installed with the same
/// keyless policy (v2's signature is the fixture's bundle over v2's digest,
/// "wrong-subject" for v1), then `rollback` reads the cache, where no
/// signature can be checked again, and goes by what the history shows:
/// refused under another identity and, with `STATE/require-signature`,
/// without a policy; allowed under the policy that verified v1. Each
/// refusal changes nothing.
#[test]
fn rollback_under_a_keyless_policy_goes_by_the_verified_history() {
    let test = "rollback_under_a_keyless_policy_goes_by_the_verified_history";
    if !require(test, TOOLS) || !python_ready(test) {
        return;
    }
    let fx = Fixture::new("keyless-rb");
    let (tmp, host) = (&fx.tmp, &fx.host);
    let root = fx.out.join("trusted_root.json");
    fx.publish(&fx.d1, "valid");
    // A valid signature of v2 by the same signer under the same root.
    fx.publish(&fx.d2, "wrong-subject");

    let sb = Sandbox::at(&tmp.path().join("sb"));
    let policy = keyless_args(&root, false);
    let policy: Vec<&str> = policy.iter().map(String::as_str).collect();
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &policy)).ok();
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &policy)).ok();
    assert_eq!(sb.world(), demo_world("v2"));
    let history = sb.run(&["history", "--json"]).ok().json();
    let signer = format!("identity {IDENTITY} (issuer {ISSUER})");
    for row in history.as_array().expect("rows") {
        assert_eq!(row["signed_by"], json!(signer), "history names the keyless signer: {row}");
    }

    let unchanged = |what: &str, r: &common::Run| {
        assert!(!r.success(), "{what}: a rollback was allowed:\n{}", r.describe());
        assert!(r.stderr.contains("Nothing was changed"), "{what}: {}", r.describe());
        assert_eq!(sb.world(), demo_world("v2"), "{what}: a refused rollback changed DEST");
    };
    let root_s = root.display().to_string();
    let other = [
        "rollback",
        "demo",
        "--certificate-identity",
        "mallory@example.com",
        "--certificate-oidc-issuer",
        ISSUER,
        "--trusted-root",
        &root_s,
    ];
    let r = sb.run(&other);
    unchanged("another identity", &r);
    r.fails_with(&["the keyless policy (trusted root", "verified by keyless identity signer@example.com"]);
    std::fs::write(sb.state.join("require-signature"), "").expect("require-signature");
    let r = sb.run(&["rollback", "demo"]);
    unchanged("require-signature without a policy", &r);
    r.fails_with(&[
        "require-signature",
        "pass --certificate-identity ID --certificate-oidc-issuer URL --trusted-root FILE",
    ]);

    let mut same = vec!["rollback", "demo"];
    same.extend(&policy);
    sb.run(&same).ok();
    assert_eq!(sb.world(), demo_world("v1"), "the rollback under the verifying policy");
    let list = sb.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["signed_by"], json!(signer), "the rolled-back version keeps its keyless signer");
}

/// A keyless policy in the desired-state file: `apply` verifies it as
/// `install` does, the lock records the signer's identity and issuer,
/// `apply --locked` checks the pin again, and the same file naming another
/// identity is refused, naming the file, and changes nothing.
#[test]
fn apply_with_a_keyless_policy_in_the_file_pins_the_signer() {
    let test = "apply_with_a_keyless_policy_in_the_file_pins_the_signer";
    if !require(test, TOOLS) || !python_ready(test) {
        return;
    }
    let fx = Fixture::new("keyless-apply");
    let (tmp, host, d1) = (&fx.tmp, &fx.host, &fx.d1);
    fx.publish(d1, "valid");

    let sb = Sandbox::at(&tmp.path().join("sb"));
    let d = sb.dest.display();
    let file = tmp.path().join("web.toml");
    let write = |identity: &str| {
        std::fs::write(
            &file,
            format!(
                "[package.demo]\nref = \"{host}/demo:v1\"\nto = \"{d}/app\"\n\
                 map = [\"*.so={d}/lib\", \"*.control={d}/ext\", \"*.sql={d}/ext\"]\nplain-http = true\n\
                 certificate-identity = \"{identity}\"\ncertificate-oidc-issuer = \"{ISSUER}\"\n\
                 trusted-root = \"fixture/trusted_root.json\"\n"
            ),
        )
        .expect("write web.toml");
    };
    write(IDENTITY);
    let file_s = file.display().to_string();
    sb.run(&["apply", "--file", &file_s, "--yes"]).ok();
    assert_eq!(sb.world(), demo_world("v1"));
    let list = sb.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["signed_by"], json!(format!("identity {IDENTITY} (issuer {ISSUER})")));
    let lock = std::fs::read_to_string(tmp.path().join("web.lock")).expect("web.lock");
    assert!(lock.contains(d1.as_str()), "the lock pins v1:\n{lock}");
    assert!(
        lock.contains(&format!("identity = \"{IDENTITY}\"")) && lock.contains(&format!("issuer = \"{ISSUER}\"")),
        "the lock records the keyless signer:\n{lock}"
    );
    // The pin is checked again, signature included.
    let r = sb.run(&["apply", "--file", &file_s, "--locked", "--yes", "--json"]).ok().json();
    assert_eq!(r["result"]["changes"], json!([]), "nothing to do: {r}");

    // Another identity: refused before anything changes, naming the file.
    write("mallory@example.com");
    sb.run(&["uninstall", "demo"]).ok();
    let before = (sb.world(), sb.run(&["list", "--json"]).ok().json());
    let r = sb.run(&["apply", "--file", &file_s, "--yes"]);
    r.fails_with(&["web.toml", "not \"mallory@example.com\"", "Nothing was changed"]);
    assert_eq!((sb.world(), sb.run(&["list", "--json"]).ok().json()), before, "a refused apply changed something");
    assert_eq!(std::fs::read_to_string(tmp.path().join("web.lock")).expect("web.lock"), lock, "the lock moved");
}

/// `--certificate-identity-regexp` records the identity that matched, not
/// the pattern: `rollback` under the same regexp finds it in the history
/// and one that does not match it refuses; the lock pins it, and
/// `apply --locked` refuses a new signer even though the regexp accepts it.
#[test]
fn a_regexp_policy_records_the_identity_that_matched() {
    let test = "a_regexp_policy_records_the_identity_that_matched";
    if !require(test, TOOLS) || !python_ready(test) {
        return;
    }
    let fx = Fixture::new("keyless-regexp");
    let (tmp, host) = (&fx.tmp, &fx.host);
    let root = fx.out.join("trusted_root.json");
    let root_s = root.display().to_string();
    fx.publish(&fx.d1, "identity-regexp");
    fx.publish(&fx.d2, "regexp-v2");
    let signer = |id: &str| json!(format!("identity {id} (issuer {ISSUER})"));

    let sb = Sandbox::at(&tmp.path().join("sb"));
    let policy = keyless_args(&root, true);
    let policy: Vec<&str> = policy.iter().map(String::as_str).collect();
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &policy)).ok();
    sb.run(&sb.demo_args(&format!("{host}/demo:v2"), &policy)).ok();
    let history = sb.run(&["history", "--json"]).ok().json();
    for row in history.as_array().expect("rows") {
        assert_eq!(row["signed_by"], signer(WORKFLOW), "history names the identity that matched: {row}");
    }
    let elsewhere = r"https://ci\.example/org/other/.*";
    let r = sb.run(&[
        "rollback",
        "demo",
        "--certificate-identity-regexp",
        elsewhere,
        "--certificate-oidc-issuer",
        ISSUER,
        "--trusted-root",
        &root_s,
    ]);
    assert!(!r.success(), "a regexp that does not match the recorded signer rolled back:\n{}", r.describe());
    r.fails_with(&[WORKFLOW, "Nothing was changed"]);
    assert_eq!(sb.world(), demo_world("v2"), "a refused rollback changed DEST");
    let mut same = vec!["rollback", "demo"];
    same.extend(&policy);
    sb.run(&same).ok();
    assert_eq!(sb.world(), demo_world("v1"), "the rollback under the regexp that matched");
    assert_eq!(sb.run(&["list", "--json"]).ok().json()[0]["signed_by"], signer(WORKFLOW));

    let sb2 = Sandbox::at(&tmp.path().join("sb2"));
    let d = sb2.dest.display();
    let file = tmp.path().join("ci.toml");
    std::fs::write(
        &file,
        format!(
            "[package.demo]\nref = \"{host}/demo:v1\"\nto = \"{d}/app\"\n\
             map = [\"*.so={d}/lib\", \"*.control={d}/ext\", \"*.sql={d}/ext\"]\nplain-http = true\n\
             certificate-identity-regexp = '{WORKFLOW_REGEXP}'\ncertificate-oidc-issuer = \"{ISSUER}\"\n\
             trusted-root = \"fixture/trusted_root.json\"\n"
        ),
    )
    .expect("write ci.toml");
    let file_s = file.display().to_string();
    sb2.run(&["apply", "--file", &file_s, "--yes"]).ok();
    let lock_path = tmp.path().join("ci.lock");
    let lock = std::fs::read_to_string(&lock_path).expect("ci.lock");
    assert!(lock.contains(&format!("identity = \"{WORKFLOW}\"")), "the lock pins the identity that matched:\n{lock}");

    // Another workflow signs v1 now; the regexp accepts it, the lock does not.
    fx.publish(&fx.d1, "regexp-other-workflow");
    let before = (sb2.world(), sb2.run(&["list", "--json"]).ok().json());
    let r = sb2.run(&["apply", "--file", &file_s, "--locked", "--yes"]);
    r.fails_with(&["the signer changed", WORKFLOW, OTHER_WORKFLOW, "nothing was changed"]);
    assert_eq!((sb2.world(), sb2.run(&["list", "--json"]).ok().json()), before, "a refused apply changed something");
    assert_eq!(std::fs::read_to_string(&lock_path).expect("ci.lock"), lock, "the lock moved");
}

/// A bundle real Sigstore tooling made on the public-good instance (a DSSE
/// SLSA provenance statement signed by the sigstore-conformance beacon
/// workflow, Rekor SET), with the public-good trusted root: both from the
/// sigstore-rust crates' published fixtures (`tests/fixtures/sigstore-real/`).
/// stagehand's keyless check, offline, goes through the real Fulcio chain,
/// SCT, Rekor entry and identity, and refuses only at the statement, which
/// is an attestation, not cosign's image signature; Python sigstore, with
/// the same root, gets as far and says the same. Another identity or issuer
/// is refused by both before that.
#[test]
fn a_public_good_bundle_verifies_up_to_its_statement() {
    let test = "a_public_good_bundle_verifies_up_to_its_statement";
    if !python_ready(test) {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigstore-real");
    let (root, bundle) = (dir.join("trusted_root.json"), dir.join("happy-path.json"));
    let bytes = std::fs::read(&bundle).expect("bundle");
    let subject = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf";
    let beacon = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
    let actions = "https://token.actions.githubusercontent.com";
    let check = |identity: &str, issuer: &str| {
        let policy = stagehand::source::keyless::policy_for(
            stagehand::source::keyless::Identity::Exact(identity.into()),
            issuer,
            &root,
        )
        .expect("the public-good trusted root loads");
        let stagehand = policy.check(subject, &bytes).expect_err("an attestation is not an image signature");
        let py = python(&[
            "verify",
            &root.display().to_string(),
            subject,
            identity,
            issuer,
            "0",
            &bundle.display().to_string(),
        ]);
        (stagehand, py.trim().to_string())
    };
    let (stagehand, py) = check(beacon, actions);
    assert!(
        stagehand.contains("\"https://slsa.dev/provenance/v1\"")
            && stagehand.contains("an attestation is not a signature"),
        "stagehand refused before the statement: {stagehand}"
    );
    assert_eq!(py, "refuse ValueError: not a cosign signature", "python-sigstore refused before the statement");
    let (stagehand, py) = check("mallory@example.com", actions);
    assert!(stagehand.contains(&format!("identity is {beacon:?}")), "{stagehand}");
    assert!(py.starts_with("refuse VerificationError: Certificate's SANs do not match"), "{py}");
    let (stagehand, py) = check(beacon, "https://issuer.example");
    assert!(stagehand.contains("OIDC issuer is \"https://token.actions.githubusercontent.com\""), "{stagehand}");
    assert!(py.starts_with("refuse VerificationError: Certificate's OIDCIssuer does not match"), "{py}");
    eprintln!("public-good bundle: stagehand and python-sigstore verify it up to its statement: {stagehand}");
}

/// The two cases of the issue's list that need more than one bundle or
/// another subject, each judged by stagehand and by Python sigstore with
/// the same root: a multi-arch tag signed keyless on its index (the
/// linux/amd64 manifest it pins installs; the bundle names the index), and
/// a valid bundle behind 64 whose signatures do not verify (the flood
/// refused alone, the valid one found behind it; Python refuses each junk
/// bundle and accepts the valid one).
#[test]
fn keyless_index_and_junk_flood_agree_with_python_sigstore() {
    let test = "keyless_index_and_junk_flood_agree_with_python_sigstore";
    if !require(test, TOOLS) || !python_ready(test) {
        return;
    }
    let tmp = tempdir("keyless-index");
    let layout = tmp.path().join("demo");
    copy_tree(&demo_layout(), &layout);
    set_tag(&layout, "multi", &multi_arch_index(&layout));
    let reg = demo_registry(tmp.path());
    let host = reg.host();
    skopeo_push(&layout, "multi", &format!("{host}/demo:multi"), None, true);
    let index = registry_digest(&format!("{host}/demo:multi"));
    let sigs = tmp.path().join("signatures");
    empty_layout(&sigs);
    let (d1, d2) = (layout_tag_digest(&demo_layout(), "v1"), layout_tag_digest(&demo_layout(), "v2"));
    let out = tmp.path().join("fixture");
    python(&["make", &out.display().to_string(), &d1, &d2, &index]);
    let root = out.join("trusted_root.json");
    let bundle = |name: &str| std::fs::read(out.join(format!("{name}.json"))).expect("bundle");
    let py = |subject: &str, names: &[String]| {
        let paths: Vec<String> = names.iter().map(|n| out.join(format!("{n}.json")).display().to_string()).collect();
        let mut args = vec!["verify", root.to_str().expect("utf-8"), subject, IDENTITY, ISSUER, "0"];
        args.extend(paths.iter().map(String::as_str));
        python(&args).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let keyless = keyless_args(&root, false);
    let keyless: Vec<&str> = keyless.iter().map(String::as_str).collect();
    let mut table = vec![format!("{:<22} | {:<9} | python-sigstore", "case", "stagehand")];

    // Signed on the index: the platform manifest it pins installs.
    publish(&sigs, &host, &index, &bundle("index-signed"));
    let sb = Sandbox::at(&tmp.path().join("sb-index"));
    let mut args = vec!["--platform", "linux/amd64"];
    args.extend(&keyless);
    sb.run(&sb.demo_args(&format!("{host}/demo:multi"), &args)).ok();
    assert_eq!(sb.world(), demo_world("v1"), "the index's linux/amd64 manifest");
    let verdict = py(&index, &["index-signed".to_string()]);
    assert!(verdict[0].starts_with("accept"), "python-sigstore on the index-signed bundle: {verdict:?}");
    table.push(format!("{:<22} | {:<9} | {}", "index-signed", "accept", verdict[0]));

    // 64 junk bundles alone: refused, counted; then the valid one appended
    // after them (the newest): installs.
    let junk: Vec<String> = (0..64).map(|n| format!("junk-{n:02}")).collect();
    let referrer = |name: &str| bundle_referrer(&sigs, MT_BUNDLE_V03, &bundle(name), &d1);
    let mut referrers: Vec<Value> = junk.iter().map(|n| referrer(n)).collect();
    publish_referrers(&sigs, &host, &d1, &referrers);
    let sb = Sandbox::at(&tmp.path().join("sb-junk"));
    let r = sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &keyless));
    r.fails_with(&["no signature verifies with the keyless policy", "more", "Nothing was changed"]);
    assert_eq!(sb.world(), Tree::new(), "junk alone changed nothing");
    eprintln!("junk alone: {}", r.stderr.trim());
    referrers.push(referrer("valid"));
    publish_referrers(&sigs, &host, &d1, &referrers);
    sb.run(&sb.demo_args(&format!("{host}/demo:v1"), &keyless)).ok();
    assert_eq!(sb.world(), demo_world("v1"), "the valid bundle behind the junk");
    let mut names = junk.clone();
    names.push("valid".to_string());
    let verdicts = py(&d1, &names);
    let refused = verdicts.iter().filter(|v| v.starts_with("refuse")).count();
    assert_eq!((refused, verdicts.last().map(|v| v.starts_with("accept"))), (64, Some(true)), "{verdicts:?}");
    table.push(format!(
        "{:<22} | {:<9} | 64 refuse ({}), then {}",
        "junk-flood (64+valid)",
        "accept",
        verdicts[0].trim_start_matches("refuse "),
        verdicts[64]
    ));
    println!("{}", table.join("\n"));
}
