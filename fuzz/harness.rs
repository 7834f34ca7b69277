//! The fuzz harnesses, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`)
//! and by `tests/fuzz_corpus.rs`, which replays every checked-in corpus file
//! through the same functions as an ordinary `cargo test` (no nightly).
//!
//! Each harness takes raw bytes, must never panic on any input except to
//! report a broken property, and checks properties beyond "no panic":
//!
//! - `journal_decode`: `codec::decode` of every record kind, on the bytes as
//!   given and with a valid CRC-32 appended (so the fuzzer reaches the body
//!   decoder); whatever decodes re-encodes to exactly the same bytes.
//! - `manifest_parse`: `parse_manifest` / `parse_index`; whatever parses
//!   survives a JSON round trip unchanged.
//! - `signature_parse`: cosign signature manifests, simple-signing payloads,
//!   PEM keys and signatures; every signature layer returned carries its
//!   annotation; a payload is accepted only if it names the expected digest
//!   (checked by reading the JSON independently); no fuzzed signature
//!   verifies with a fixed key.
//! - `bundle_parse`: Sigstore bundles, in-toto statements and the manifests
//!   that carry bundles; whatever parses names a bundle media type; a
//!   statement is accepted only if it is cosign's signature of the expected
//!   digest (read again independently); no fuzzed bundle verifies with a
//!   fixed key; the DSSE PAE says both lengths and ends with the body.
//! - `tar_guard`: a sequence of arbitrary tar entries through one
//!   `TarGuard`; every admitted path is relative, normalized, free of `..`
//!   and of stagehand's reserved names, never listed twice, never beneath an
//!   admitted symlink or file; symlinks stay inside; hard links point to an
//!   earlier admitted file.
//! - `registry_http`: what a registry sends that stagehand parses itself
//!   (`source::http`): a `WWW-Authenticate` challenge, an error body, a URL
//!   in an error; what is printed never holds a control character or a
//!   query string, and a Bearer challenge always has a realm.
//! - `tar_bounds`: the raw tar stream follower (`plan::tar_bounds`) fed the
//!   same bytes in two different chunkings reaches the same verdict and the
//!   same counts; with caps of zero nothing with an entry passes.
//! - `tar_differential`: the tar crate (as staging runs it, every byte
//!   it reads fed to `plan::tar_bounds` first) and `TarBounds` read the same
//!   bytes the same way: after each entry the tar reader yields, the bounds
//!   have counted exactly as many entries and file bytes, and no entry the
//!   reader yields lies past a cap the bounds let through.
//! - `recovery_decide`: `txn::decide` over an arbitrary transaction record
//!   and observations; never panics; every `Remove` names a staging or backup
//!   path of the record, every `RemoveEmptyDir` a directory it created;
//!   moves only touch a target's own three paths; and, where the observed
//!   world is physically possible, carrying out the decision leaves every
//!   target all-new (roll forward) or with its old content back (roll back),
//!   never touches foreign content at a target, and leaves no staging/backup.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use stagehand::journal::codec::{self, RecordKind};
use stagehand::plan::tar_guard::{Admitted, TarGuard, TarKind};
use stagehand::source::bundle;
use stagehand::source::manifest::{parse_index, parse_manifest};
use stagehand::source::signature::{
    check_payload, parse_signature_manifest, subject_of, VerifyKey, ANNOTATION_SIGNATURE,
};
use stagehand::txn::{
    decide, Action, BirthTime, EntryKind, FileEntry, HistoryEntry, Identity, NewContent, Observed, Op, PackageChange,
    PackageRecord, RecoveryDecision, Step, TargetPlan, TargetProgress, TxnRecord,
};

/// A byte reader that never fails: past the end it yields zeros.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.u8() as usize % items.len()]
    }
}

// ---------------------------------------------------------------------------
// journal record decoding
// ---------------------------------------------------------------------------

fn round_trip<T>(kind: RecordKind, bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = codec::decode::<T>(kind, bytes) {
        let again = codec::encode(kind, &v).expect("a decoded record re-encodes");
        assert_eq!(again, bytes, "decode then encode does not give back the same bytes for {kind:?}");
        let v2: T = codec::decode(kind, &again).expect("a re-encoded record decodes");
        assert_eq!(v2, v);
    }
}

fn decode_all(bytes: &[u8]) {
    round_trip::<TxnRecord>(RecordKind::Txn, bytes);
    round_trip::<PackageRecord>(RecordKind::Package, bytes);
    round_trip::<HistoryEntry>(RecordKind::History, bytes);
    round_trip::<Vec<FileEntry>>(RecordKind::FileList, bytes);
}

pub fn journal_decode(data: &[u8]) {
    decode_all(data);
    // The same bytes with a valid checksum appended: reaches the body decoder.
    if data.len() <= 1 << 20 {
        let mut with_crc = data.to_vec();
        with_crc.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        decode_all(&with_crc);
    }
}

// ---------------------------------------------------------------------------
// OCI manifest / index parsing
// ---------------------------------------------------------------------------

pub fn manifest_parse(data: &[u8]) {
    if let Ok(m) = parse_manifest(data, "fuzz input") {
        let bytes = serde_json::to_vec(&m).expect("a parsed manifest serializes");
        let again = parse_manifest(&bytes, "round trip").expect("a re-serialized manifest parses");
        assert_eq!(again, m, "manifest JSON round trip changed it");
    }
    if let Ok(i) = parse_index(data, "fuzz input") {
        let bytes = serde_json::to_vec(&i).expect("a parsed index serializes");
        let again = parse_index(&bytes, "round trip").expect("a re-serialized index parses");
        assert_eq!(again, i, "index JSON round trip changed it");
    }
}

// ---------------------------------------------------------------------------
// cosign signature manifests, payloads and keys
// ---------------------------------------------------------------------------

/// The digest `signature_parse` checks payloads against.
pub const FUZZ_DIGEST: &str = "sha256:5a3ad1a6bbe0cbbb1ed8c1ffa20e5fba0de0a85fde62c0ba4d0a8e43c6a6dc44";

/// A P-256 public key made by `openssl ecparam -genkey -name prime256v1` +
/// `openssl ec -pubout`, to check fuzzed signatures against.
pub const FUZZ_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEphW02OWj7mUG6MC+0zb5KJTJJPaC
7ksq6sXiN8tHNe4tvD0iu54DFT7cSn0MGxEoeZWUvvEQSjhIXchqZUleHA==
-----END PUBLIC KEY-----
";

pub fn signature_parse(data: &[u8]) {
    // As a signature manifest: each layer returned carries the annotation it
    // was found by, and the manifest parses as a manifest too.
    if let Ok(layers) = parse_signature_manifest(data) {
        let m = parse_manifest(data, "fuzz input").expect("a signature manifest is a manifest");
        assert!(layers.len() <= m.layers.len());
        for l in &layers {
            assert_eq!(l.payload.annotations.get(ANNOTATION_SIGNATURE), Some(&l.signature));
        }
    }
    // As a payload: accepted only if it names FUZZ_DIGEST, read independently.
    if check_payload(data, FUZZ_DIGEST).is_ok() {
        let v: serde_json::Value = serde_json::from_slice(data).expect("an accepted payload is JSON");
        assert_eq!(v["critical"]["image"]["docker-manifest-digest"], FUZZ_DIGEST);
        assert_eq!(v["critical"]["type"], "cosign container image signature");
    }
    let _ = subject_of(data);
    let _ = VerifyKey::from_pem(data, "fuzz input");
    // As a signature (the first half) over a payload (the rest): no fuzzed
    // input is a valid signature by a key whose private half nobody kept.
    let key = VerifyKey::from_pem(FUZZ_KEY_PEM.as_bytes(), "fuzz key").expect("the fuzz key parses");
    let (sig, payload) = data.split_at(data.len() / 2);
    let sig = String::from_utf8_lossy(sig);
    assert!(key.check_signature(payload, &sig).is_err(), "a fuzzed signature verified");
}

// ---------------------------------------------------------------------------
// Sigstore bundles (cosign 3)
// ---------------------------------------------------------------------------

pub fn bundle_parse(data: &[u8]) {
    // As a bundle: whatever parses names a bundle media type, and no fuzzed
    // bundle verifies with a key whose private half nobody kept.
    if let Ok(b) = bundle::parse(data) {
        assert!(bundle::is_bundle_media_type(&b.media_type), "accepted mediaType {:?}", b.media_type);
    }
    let key = VerifyKey::from_pem(FUZZ_KEY_PEM.as_bytes(), "fuzz key").expect("the fuzz key parses");
    assert!(bundle::check(&key, FUZZ_DIGEST, data).is_err(), "a fuzzed bundle verified");
    // As an in-toto statement: accepted only if it is cosign's signature of
    // FUZZ_DIGEST, read again independently.
    if bundle::check_statement(data, FUZZ_DIGEST).is_ok() {
        let v: serde_json::Value = serde_json::from_slice(data).expect("an accepted statement is JSON");
        assert_eq!(v["predicateType"], bundle::PREDICATE_COSIGN_SIGN);
        let hex = &FUZZ_DIGEST["sha256:".len()..];
        let subjects = v["subject"].as_array().expect("an accepted statement has subjects");
        assert!(subjects.iter().any(|s| s["digest"]["sha256"].as_str().is_some_and(|h| h.eq_ignore_ascii_case(hex))));
    }
    // As a manifest: every bundle layer found has a bundle media type and is marked.
    for l in bundle::bundle_layers(data) {
        assert!(bundle::is_bundle_media_type(&l.payload.media_type));
        assert_eq!(l.signature, bundle::IN_BUNDLE);
    }
    // The DSSE PAE of (first half as the type, rest as the body) ends with
    // the body and says both lengths.
    let (t, body) = data.split_at(data.len() / 2);
    let t = String::from_utf8_lossy(t);
    let pae = bundle::pae(&t, body);
    let head = format!("DSSEv1 {} {t} {} ", t.len(), body.len());
    assert_eq!(pae.len(), head.len() + body.len());
    assert!(pae.starts_with(head.as_bytes()) && pae.ends_with(body));
}

// ---------------------------------------------------------------------------
// tar path validation
// ---------------------------------------------------------------------------

const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "bin",
    "lib",
    "..",
    ".",
    "",
    "x.so",
    ".hidden",
    "a b",
    "é",
    ".x.stagehand-1.staging",
    "stagehand-",
    "\\",
    "C:",
    "a\0b",
    "...",
    "./a",
    "~",
];

fn gen_path(b: &mut Bytes) -> Vec<u8> {
    if b.bool() {
        // Raw bytes.
        let n = (b.u8() % 48) as usize;
        b.take(n).to_vec()
    } else {
        // Built from interesting components.
        let n = 1 + (b.u8() % 5) as usize;
        let mut p = Vec::new();
        if b.u8() % 8 == 0 {
            p.push(b'/');
        }
        for i in 0..n {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(b.pick(COMPONENTS).as_bytes());
        }
        if b.u8() % 8 == 0 {
            p.push(b'/');
        }
        p
    }
}

fn check_rel(rel: &str, what: &str) {
    assert!(!rel.is_empty(), "{what}: empty path admitted");
    assert!(!rel.starts_with('/'), "{what}: absolute path {rel:?} admitted");
    assert!(!rel.contains('\0'), "{what}: NUL in {rel:?}");
    for c in rel.split('/') {
        assert!(!c.is_empty() && c != "." && c != "..", "{what}: {rel:?} is not normalized or climbs out");
        assert!(!c.contains(".stagehand-"), "{what}: {rel:?} uses the reserved marker");
    }
}

/// Resolves a symlink at `rel` to `target` the way the kernel's path walk
/// does, through every admitted symlink (`links`: path -> target), with a
/// queue of components still to walk. Err if it leaves the root or loops.
fn resolve_on_disk(links: &BTreeMap<String, String>, rel: &str, target: &str) -> Result<Vec<String>, &'static str> {
    let mut at: Vec<String> = rel.split('/').map(str::to_string).collect();
    at.pop();
    let mut todo: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let push_front = |todo: &mut std::collections::VecDeque<String>, t: &str| -> Result<(), &'static str> {
        if t.starts_with('/') || t.is_empty() {
            return Err("absolute or empty target");
        }
        for c in t.split('/').rev() {
            todo.push_front(c.to_string());
        }
        Ok(())
    };
    push_front(&mut todo, target)?;
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                at.pop().ok_or("climbs above the root")?;
            }
            _ => {
                at.push(c);
                if let Some(t) = links.get(&at.join("/")) {
                    hops += 1;
                    if hops > 40 {
                        return Err("loops");
                    }
                    at.pop();
                    push_front(&mut todo, t)?;
                }
            }
        }
    }
    Ok(at)
}

pub fn tar_guard(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut g = TarGuard::new();
    let mut admitted: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut steps = 0;
    while !b.is_empty() && steps < 64 {
        steps += 1;
        let kind = *b.pick(&[
            TarKind::File,
            TarKind::Dir,
            TarKind::Symlink,
            TarKind::HardLink,
            TarKind::Special,
            TarKind::Metadata,
        ]);
        if b.u8() % 16 == 0 {
            let name = String::from_utf8_lossy(&gen_path(&mut b)).into_owned();
            // A refusal aborts the whole install (the stager propagates it),
            // so the guard is never used after one: neither is it here.
            if g.admit_root_file(&name).is_err() {
                break;
            }
            check_rel(&name, "root file");
            assert!(!name.contains('/'), "root file {name:?} has a slash");
            assert!(admitted.insert(name.clone(), "file").is_none(), "root file {name:?} admitted twice");
            continue;
        }
        let path = gen_path(&mut b);
        let link = matches!(kind, TarKind::Symlink | TarKind::HardLink).then(|| gen_path(&mut b));
        let mode = b.u16() as u32 | ((b.u8() as u32) << 16);
        let Ok(a) = g.admit(&path, kind, link.as_deref(), mode) else { break };
        let what = format!("{:?} {:?}", kind, String::from_utf8_lossy(&path));
        let (rel, parents, new_kind) = match &a {
            Admitted::Skip => continue,
            Admitted::Dir { rel, mode: m, implicit_parents } => {
                assert_eq!(*m & !0o7777, 0, "{what}: mode {m:o} keeps file-type bits");
                (rel, implicit_parents, "dir")
            }
            Admitted::File { rel, mode: m, implicit_parents } => {
                assert_eq!(*m & !0o7777, 0, "{what}: mode {m:o} keeps file-type bits");
                (rel, implicit_parents, "file")
            }
            Admitted::Symlink { rel, target, implicit_parents } => {
                assert!(!target.is_empty() && !target.contains('\0'), "{what}: symlink {rel:?} -> {target:?}");
                links.insert(rel.clone(), target.clone());
                (rel, implicit_parents, "symlink")
            }
            Admitted::HardLink { rel, original, implicit_parents } => {
                check_rel(original, &what);
                assert_eq!(
                    admitted.get(original.as_str()),
                    Some(&"file"),
                    "{what}: hard link {rel:?} to {original:?}, which is not an earlier file"
                );
                (rel, implicit_parents, "file")
            }
        };
        check_rel(rel, &what);
        for p in parents {
            check_rel(p, &what);
            assert!(rel.starts_with(&format!("{p}/")), "{what}: implicit parent {p:?} is not a parent of {rel:?}");
            assert!(admitted.insert(p.clone(), "dir").is_none(), "{what}: implicit parent {p:?} admitted twice");
        }
        // Every ancestor is an admitted directory (not a file, not a symlink).
        let comps: Vec<&str> = rel.split('/').collect();
        for i in 1..comps.len() {
            let anc = comps[..i].join("/");
            assert_eq!(admitted.get(anc.as_str()), Some(&"dir"), "{what}: ancestor {anc:?} of {rel:?} is not a dir");
        }
        assert!(admitted.insert(rel.clone(), new_kind).is_none(), "{what}: {rel:?} admitted twice");
        // Every admitted link, resolved through every link admitted so far
        // (as the tree on disk will be), stays inside the destination.
        for (l, t) in &links {
            if let Err(why) = resolve_on_disk(&links, l, t) {
                panic!("{what}: admitted symlink {l:?} -> {t:?} {why} on disk; links: {links:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// recovery decisions
// ---------------------------------------------------------------------------

const KINDS: [EntryKind; 4] = [EntryKind::Dir, EntryKind::File, EntryKind::Symlink, EntryKind::Other];
const POOL: &[&str] = &["/d/t0", "/d/t1", "/d/x", "/d/.t0.stagehand-1.staging", "/d/.t0.stagehand-1.backup", "/", ""];

fn gen_ident(b: &mut Bytes, kind: EntryKind) -> Identity {
    let ino = 1 + (b.u8() % 12) as u64;
    let kind = if b.u8() % 8 == 0 { *b.pick(&KINDS) } else { kind };
    let sha256 = b.bool().then(|| [b.u8(); 32]);
    // Few distinct birth times, so equal and differing ones both occur.
    let btime = b.bool().then(|| BirthTime { secs: (b.u8() % 3) as i64, nanos: 0 });
    Identity { dev: b.u8() as u64, ino, kind, sha256, btime }
}

fn gen_step(b: &mut Bytes) -> Step {
    *b.pick(&[
        Step::Planned,
        Step::Staged,
        Step::Committed,
        Step::Cleaning,
        Step::RollingBack { after_commit: false },
        Step::RollingBack { after_commit: true },
    ])
}

/// An arbitrary record and observations. Mostly the shapes a real record
/// has (distinct paths, the right sibling names), sometimes anything.
pub fn gen_decide_input(data: &[u8]) -> (TxnRecord, Vec<Observed>) {
    let mut b = Bytes::new(data);
    let step = gen_step(&mut b);
    let n = 1 + (b.u8() % 4) as usize;
    let weird = b.u8() % 8 == 0;
    let mut targets = Vec::new();
    let mut observed = Vec::new();
    for i in 0..n {
        let kind = *b.pick(&KINDS[..2]);
        let (path, staging, backup) = if weird {
            (b.pick(POOL).to_string(), b.pick(POOL).to_string(), b.pick(POOL).to_string())
        } else {
            (format!("/d/t{i}"), format!("/d/.t{i}.stagehand-1.staging"), format!("/d/.t{i}.stagehand-1.backup"))
        };
        let old = b.bool().then(|| gen_ident(&mut b, kind));
        let new = b.bool().then(|| NewContent { kind, identity: b.bool().then(|| gen_ident(&mut b, kind)) });
        let progress = *b.pick(&[TargetProgress::Pending, TargetProgress::Swapping, TargetProgress::Swapped]);
        targets.push(TargetPlan { path, staging, backup, old, new, progress, change: 0 });
        let mut obs = || b.bool().then(|| gen_ident(&mut b, kind));
        observed.push(Observed { target: obs(), staging: obs(), backup: obs() });
    }
    let created_dirs = (0..b.u8() % 3).map(|_| b.pick(POOL).to_string()).collect();
    let rec = TxnRecord {
        id: 1,
        op: if b.bool() { Op::Install } else { Op::Uninstall },
        step,
        started_at: 0,
        recovered: b.bool(),
        changes: vec![PackageChange { name: "p".into(), op: Op::Install, old: None, new_package: None }],
        targets,
        created_dirs,
    };
    (rec, observed)
}

fn actions(d: &RecoveryDecision) -> Vec<&Action> {
    match d {
        RecoveryDecision::RollForward { swaps, cleanup } => {
            swaps.iter().flat_map(|s| &s.actions).chain(cleanup).collect()
        }
        RecoveryDecision::RollBack { moves, cleanup, .. } => moves.iter().chain(cleanup).collect(),
        RecoveryDecision::Refuse { .. } => Vec::new(),
    }
}

pub fn recovery_decide(data: &[u8]) {
    let (rec, observed) = gen_decide_input(data);
    let d = decide(&rec, &observed);
    if let RecoveryDecision::Refuse { reason } = &d {
        assert!(!reason.is_empty(), "a refusal without a reason");
        return;
    }
    let own = |p: &str| rec.targets.iter().any(|t| t.staging == p || t.backup == p);
    for a in actions(&d) {
        match a {
            Action::Remove { path } => assert!(own(path), "Remove of {path:?}, not a staging/backup path: {d:?}"),
            Action::RemoveEmptyDir { path } => {
                assert!(rec.created_dirs.contains(path), "RemoveEmptyDir of {path:?}, not created by the txn")
            }
            Action::Rename { from, to } => assert!(
                rec.targets.iter().any(|t| {
                    let mine = [&t.path, &t.staging, &t.backup];
                    mine.contains(&from) && mine.contains(&to)
                }),
                "Rename {from:?} -> {to:?} crosses targets"
            ),
            Action::Exchange { a, b, fallback_backup } => assert!(
                rec.targets.iter().any(|t| {
                    let mine = [&t.path, &t.staging, &t.backup];
                    mine.contains(&a) && mine.contains(&b) && mine.contains(&fallback_backup)
                }),
                "Exchange {a:?} <-> {b:?} crosses targets"
            ),
        }
    }
    simulate(&rec, &observed, &d);
}

/// Carries the decision out on a model (path → inode) when the observed
/// world is physically possible: distinct paths, each object in one place.
fn simulate(rec: &TxnRecord, observed: &[Observed], d: &RecoveryDecision) {
    let mut paths = BTreeSet::new();
    let mut fs: BTreeMap<String, Identity> = BTreeMap::new();
    for (t, o) in rec.targets.iter().zip(observed) {
        for (p, id) in [(&t.path, o.target), (&t.staging, o.staging), (&t.backup, o.backup)] {
            if !paths.insert(p.clone()) || p.is_empty() {
                return;
            }
            if let Some(id) = id {
                fs.insert(p.clone(), id);
            }
        }
    }
    // Each object in one place: no two observed paths hold the same content
    // (same inode, or files with the same digest).
    let seen: Vec<Identity> = fs.values().copied().collect();
    // Distinct objects on one filesystem also have distinct inode numbers
    // (the paths of a target are siblings), even where digests differ.
    let distinct = |ids: &[Identity]| {
        ids.iter()
            .enumerate()
            .all(|(i, a)| ids[i + 1..].iter().all(|b| !a.same_as(b) && !b.same_as(a) && a.ino != b.ino))
    };
    if !distinct(&seen) {
        return;
    }
    // Objects the record knows must be distinct, or "old" and "new" are the
    // same content and nothing can be said.
    let known: Vec<Identity> =
        rec.targets.iter().flat_map(|t| [t.old, t.new.as_ref().and_then(|n| n.identity)]).flatten().collect();
    if !distinct(&known) {
        return;
    }
    // An observed object matching two known ones is ambiguous too.
    if seen.iter().any(|o| known.iter().filter(|k| k.same_as(o)).count() > 1) {
        return;
    }
    // Actions only ever move an object among its own target's three paths,
    // so one target's old or new content at another target's paths is not
    // reachable either.
    for (i, o) in observed.iter().enumerate() {
        for (_, other) in rec.targets.iter().enumerate().filter(|(j, _)| *j != i) {
            let theirs: Vec<Identity> =
                [other.old, other.new.as_ref().and_then(|n| n.identity)].into_iter().flatten().collect();
            if [o.target, o.staging, o.backup].into_iter().flatten().any(|x| theirs.iter().any(|k| k.same_as(&x))) {
                return;
            }
        }
    }
    // Before the commit point nothing moves a target: the old object can only
    // be at its target and the new one never is. A disk that shows otherwise
    // is ahead of its record (a lost journal write): then `decide` must roll
    // forward (or refuse, which returned above), never clean up as a
    // pre-commit rollback would.
    let forward = matches!(d, RecoveryDecision::RollForward { .. });
    if !rec.step.is_committed() {
        let ahead = rec.targets.iter().zip(observed).any(|(t, o)| {
            let is = |x: Option<Identity>, y: Option<Identity>| matches!((x, y), (Some(x), Some(y)) if x.same_as(&y));
            let new = t.new.as_ref().and_then(|n| n.identity);
            is(o.target, new) || is(o.staging, t.old) || is(o.backup, t.old)
        });
        assert_eq!(forward, ahead, "before commit: forward exactly when the disk is ahead; {d:?}");
    }
    let start = fs.clone();
    let first = match d {
        RecoveryDecision::RollForward { swaps, .. } => swaps.iter().map(|s| s.actions.len()).sum(),
        RecoveryDecision::RollBack { moves, .. } => moves.len(),
        RecoveryDecision::Refuse { .. } => 0,
    };
    for (n, a) in actions(d).into_iter().enumerate() {
        match a {
            Action::Exchange { a, b, .. } => {
                let (Some(x), Some(y)) = (fs.get(a).copied(), fs.get(b).copied()) else {
                    panic!("Exchange {a} <-> {b} on a missing path; start {start:?}, decision {d:?}");
                };
                fs.insert(a.clone(), y);
                fs.insert(b.clone(), x);
            }
            Action::Rename { from, to } => {
                assert!(!fs.contains_key(to), "Rename onto existing {to}; start {start:?}, decision {d:?}");
                let x = fs.remove(from).unwrap_or_else(|| panic!("Rename of missing {from}; {start:?} {d:?}"));
                fs.insert(to.clone(), x);
            }
            Action::Remove { path } => {
                // Never the only copy of content the direction keeps: the new
                // content when rolling forward, the old when rolling back or
                // before every swap is done.
                if let (Some(x), Some(t)) =
                    (fs.get(path).copied(), rec.targets.iter().find(|t| &t.staging == path || &t.backup == path))
                {
                    let only = !fs.iter().any(|(p, y)| p != path && y.same_as(&x));
                    let is_old = t.old.is_some_and(|o| o.same_as(&x));
                    let is_new = t.new.as_ref().and_then(|n| n.identity).is_some_and(|n| n.same_as(&x));
                    let keeps = (forward && is_new) || (is_old && (!forward || n < first));
                    assert!(
                        !(only && keeps),
                        "Remove of {path}, the only copy; record {rec:?}, start {start:?}, decision {d:?}"
                    );
                }
                fs.remove(path);
            }
            Action::RemoveEmptyDir { .. } => {}
        }
    }
    for t in &rec.targets {
        assert!(!fs.contains_key(&t.staging), "staging {} left; start {start:?}, decision {d:?}", t.staging);
        assert!(!fs.contains_key(&t.backup), "backup {} left; start {start:?}, decision {d:?}", t.backup);
        let at = fs.get(&t.path).copied();
        let was = start.get(&t.path).copied();
        let is_old = |x: Option<Identity>| matches!((x, t.old), (Some(x), Some(o)) if x.same_as(&o));
        let is_new = |x: Option<Identity>| matches!((x, t.new.as_ref().and_then(|n| n.identity)), (Some(x), Some(n)) if x.same_as(&n));
        let foreign_at_start = was.is_some() && !is_old(was) && !is_new(was);
        if foreign_at_start {
            assert_eq!(at, was, "foreign content at {} was touched; decision {d:?}", t.path);
            continue;
        }
        if forward {
            match &t.new {
                Some(_) => assert!(is_new(at), "rolled forward but {} is not new; start {start:?} {d:?}", t.path),
                None => assert!(at.is_none(), "rolled forward but removed target {} is there; {d:?}", t.path),
            }
        } else {
            let old_seen = [&t.path, &t.staging, &t.backup].iter().any(|p| is_old(start.get(*p).copied()));
            if old_seen {
                assert!(is_old(at), "rolled back but {} is not old; start {start:?} {d:?}", t.path);
            } else if t.old.is_none() {
                assert!(at.is_none(), "rolled back but {} (absent before) exists; start {start:?} {d:?}", t.path);
            }
        }
    }
}

/// See the module doc: `registry_http`.
pub fn registry_http(data: &[u8]) {
    use stagehand::source::http::{error_message, parse_challenge, strip_queries, Challenge};
    let text = String::from_utf8_lossy(data);
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(&text) {
        let _ = realm; // a realm is required by the type; parse must not invent one
        assert!(text.to_ascii_lowercase().contains("realm"), "a Bearer challenge without a realm: {text:?}");
    }
    let msg = error_message(data);
    assert!(!msg.chars().any(char::is_control), "control characters printed: {msg:?}");
    let stripped = strip_queries(&text);
    assert!(stripped.len() <= text.len(), "stripping grew the text");
    for part in stripped.split("http://").chain(stripped.split("https://")).skip(1) {
        let url = part.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ')').next().unwrap_or("");
        assert!(!url.contains('?'), "a query string survived in {stripped:?}");
    }
}

/// See the module doc: `tar_bounds`.
pub fn tar_bounds(data: &[u8]) {
    use stagehand::plan::limits::Limits;
    use stagehand::plan::tar_bounds::TarBounds;
    let Some((&step, rest)) = data.split_first() else { return };
    let limits = Limits { max_entries: 4, max_layer_bytes: 4096, max_path_bytes: 64 };
    let mut whole = TarBounds::new(limits);
    let a = whole.feed(rest);
    let mut chunked = TarBounds::new(limits);
    let b = rest.chunks(usize::from(step).max(1)).try_for_each(|c| chunked.feed(c));
    assert_eq!(a, b, "the verdict depends on the chunking");
    if a.is_ok() {
        assert_eq!((whole.entries(), whole.expanded()), (chunked.entries(), chunked.expanded()));
        assert!(whole.entries() <= 4 && whole.expanded() <= 4096, "a cap was passed without an error");
    }
}

/// See the module doc: `tar_differential`. Returns how many entries the tar
/// reader yielded (for the proptest's own sanity checks).
pub fn tar_differential(data: &[u8]) -> u64 {
    use stagehand::plan::limits::Limits;
    use stagehand::plan::tar_bounds::TarBounds;
    use std::cell::RefCell;
    use std::io::Read;
    use std::rc::Rc;

    struct Bounded<'a> {
        inner: &'a [u8],
        bounds: Rc<RefCell<TarBounds>>,
    }
    impl Read for Bounded<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.bounds.borrow_mut().feed(&buf[..n]).map_err(|e| std::io::Error::other(e.0))?;
            Ok(n)
        }
    }

    let limits = Limits { max_entries: 6, max_layer_bytes: 8192, max_path_bytes: 64 };
    let bounds = Rc::new(RefCell::new(TarBounds::new(limits)));
    let mut archive = tar::Archive::new(Bounded { inner: data, bounds: bounds.clone() });
    let Ok(entries) = archive.entries() else { return 0 };
    let (mut n, mut bytes) = (0u64, 0u64);
    for entry in entries {
        let Ok(mut entry) = entry else { break };
        n += 1;
        let kind = entry.header().entry_type().as_byte();
        if matches!(kind, b'0' | b'\0' | b'7') {
            bytes += entry.size();
        }
        let b = bounds.borrow();
        assert_eq!(b.entries(), n, "tar yielded entry {n} ({:?}); the bounds counted {}", kind as char, b.entries());
        assert_eq!(b.expanded(), bytes, "tar's file bytes after entry {n}: {bytes}; the bounds': {}", b.expanded());
        assert!(n <= limits.max_entries && bytes <= limits.max_layer_bytes, "a cap was passed without an error");
        let long = entry.path_bytes().len().max(entry.link_name_bytes().map_or(0, |l| l.len()));
        // A ustar name and prefix hold 256 bytes; anything longer came from
        // an extension header, which the bounds capped.
        assert!(long as u64 <= limits.max_path_bytes.max(256) + 1, "a {long}-byte name passed the bounds");
        drop(b);
        if std::io::copy(&mut entry, &mut std::io::sink()).is_err() {
            break;
        }
    }
    n
}
