//! Replays every checked-in fuzz corpus file (`fuzz/corpus/<target>/*`)
//! through the same harness the cargo-fuzz targets run (`fuzz/harness.rs`),
//! as an ordinary test on the stable toolchain: whatever a fuzzing campaign
//! found interesting stays covered in CI without nightly features.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut bytes = 0;
    for p in &files {
        let data = fs::read(p).unwrap();
        bytes += data.len();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "corpus file {} of {target} fails its harness", p.display());
    }
    println!("fuzz corpus [{target}]: {} files ({bytes} bytes) replayed", files.len());
    assert!(!files.is_empty(), "no corpus for {target} in {}", dir.display());
    // Kept small on purpose: minimize with `cargo fuzz cmin` before checking in.
    assert!(files.len() < 200 && bytes < 1 << 20, "the {target} corpus is too big: {} files", files.len());
}

#[test]
fn corpus_journal_decode() {
    replay("journal_decode", harness::journal_decode);
}

#[test]
fn corpus_manifest_parse() {
    replay("manifest_parse", harness::manifest_parse);
}

#[test]
fn corpus_signature_parse() {
    replay("signature_parse", harness::signature_parse);
}

#[test]
fn corpus_bundle_parse() {
    replay("bundle_parse", harness::bundle_parse);
}

#[test]
fn corpus_tar_guard() {
    replay("tar_guard", harness::tar_guard);
}

#[test]
fn corpus_recovery_decide() {
    replay("recovery_decide", harness::recovery_decide);
}

/// Regenerates the journal seeds from real records: run with
/// `cargo test --test fuzz_corpus -- --ignored write_journal_seeds`.
#[test]
#[ignore]
fn write_journal_seeds() {
    use stagehand::journal::codec::{encode, RecordKind};
    use stagehand::txn::*;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/journal_decode");
    fs::create_dir_all(&dir).unwrap();
    let id = Identity {
        dev: 2049,
        ino: 1234,
        kind: EntryKind::Dir,
        sha256: None,
        btime: Some(BirthTime { secs: 1_700_000_000, nanos: 5 }),
    };
    let entry = FileEntry {
        rel: "bin/demo".into(),
        kind: EntryKind::File,
        mode: 0o755,
        size: 3,
        sha256: "ab".repeat(32),
        link: String::new(),
    };
    let pkg = PackageRecord {
        name: "demo".into(),
        manifest_digest: format!("sha256:{}", "cd".repeat(32)),
        source: "oci-layout:examples/demo:v1".into(),
        installed_at: 1_700_000_000,
        txn: 3,
        targets: vec![InstalledTarget {
            path: "/opt/demo/app".into(),
            kind: EntryKind::Dir,
            file_list: FileListRef { sha256: [0x1f; 32], entries: 1 },
        }],
        placement: Default::default(),
        previous: vec![],
        signed_by: Some(format!("sha256:{}", "5e".repeat(32))),
        managed_by: Some("/etc/stagehand/web.toml".into()),
    };
    let txn = TxnRecord {
        id: 3,
        op: Op::Install,
        step: Step::Committed,
        started_at: 1_700_000_000,
        recovered: false,
        changes: vec![PackageChange {
            name: "demo".into(),
            op: Op::Install,
            old: Some(VersionRecord {
                manifest_digest: format!("sha256:{}", "ef".repeat(32)),
                source: "oci-layout:examples/demo:v1".into(),
                installed_at: 1,
                placement: Default::default(),
            }),
            new_package: Some(pkg.clone()),
        }],
        targets: vec![TargetPlan {
            path: "/opt/demo/app".into(),
            staging: "/opt/demo/.app.stagehand-3.staging".into(),
            backup: "/opt/demo/.app.stagehand-3.backup".into(),
            old: Some(id),
            new: Some(NewContent { kind: EntryKind::Dir, identity: Some(Identity { ino: 99, ..id }) }),
            progress: TargetProgress::Swapping,
            change: 0,
        }],
        created_dirs: vec!["/opt/demo".into()],
    };
    let hist = HistoryEntry {
        id: 3,
        op: Op::Uninstall,
        started_at: 1,
        finished_at: 2,
        changes: vec![ChangeSummary {
            package: "demo".into(),
            op: Op::Uninstall,
            old: None,
            new_digest: None,
            signed_by: None,
            moved: false,
        }],
        outcome: Outcome::RolledBackByRecovery,
        error: Some("interrupted".into()),
    };
    fs::write(dir.join("seed-txn"), encode(RecordKind::Txn, &txn).unwrap()).unwrap();
    fs::write(dir.join("seed-package"), encode(RecordKind::Package, &pkg).unwrap()).unwrap();
    fs::write(dir.join("seed-history"), encode(RecordKind::History, &hist).unwrap()).unwrap();
    fs::write(dir.join("seed-filelist"), encode(RecordKind::FileList, &vec![entry]).unwrap()).unwrap();
}

/// A bounded, seeded sweep of pseudo-random inputs through the decision and
/// tar-guard harnesses, so their properties are exercised beyond the
/// checked-in corpus on every run (a cargo-fuzz campaign goes much further).
#[test]
fn seeded_random_inputs() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (name, f, n) in [
        ("recovery_decide", harness::recovery_decide as fn(&[u8]), 40_000),
        ("tar_guard", harness::tar_guard as fn(&[u8]), 40_000),
    ] {
        for i in 0..n {
            let len = (next() % 160) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{name}: seeded input #{i} fails its harness: {}", hex::encode(&data));
        }
        println!("{name}: {n} seeded inputs");
    }
}

#[test]
fn corpus_registry_http() {
    replay("registry_http", harness::registry_http);
}

#[test]
fn corpus_tar_differential() {
    replay("tar_differential", |d| {
        harness::tar_differential(d);
    });
}

#[test]
fn corpus_tar_bounds() {
    replay("tar_bounds", harness::tar_bounds);
}
