//! The tar reader (`tar` 0.4, as staging runs it) and the cap checker
//! (`plan::tar_bounds`) must read every header the same way, or the caps
//! stop working (issue 25). This runs the differential harness of the
//! `tar_differential` fuzz target (`fuzz/harness.rs`) on generated
//! archives built from the headers where readers are known to differ:
//! numeric fields with NULs and spaces inside or base-256, PAX headers with
//! repeated or malformed records, `x` before `g`, extension headers with and
//! without ustar magic, sizes that disagree with the data.

#[path = "../fuzz/harness.rs"]
mod harness;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

#[derive(Debug, Clone)]
enum SizeField {
    Canonical,
    /// The size, a NUL, then more octal digits (read up to the NUL by tar).
    NulInside(u8),
    /// Leading and trailing spaces.
    Spaces,
    /// Base-256 with junk in the bytes tar ignores.
    Base256(u8),
}

#[derive(Debug, Clone)]
struct Spec {
    kind: u8,
    magic: bool,
    field: SizeField,
    /// Size written in the header.
    declared: u64,
    /// Bytes of data actually written after it (before padding).
    data: Vec<u8>,
}

fn size_field(f: &SizeField, n: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    match f {
        SizeField::Canonical => out.copy_from_slice(format!("{n:011o}\0").as_bytes()),
        SizeField::NulInside(d) => {
            let text = format!("{n:o}");
            let text = &text[..text.len().min(5)];
            out[..text.len()].copy_from_slice(text.as_bytes());
            for b in out.iter_mut().skip(text.len() + 1) {
                *b = b'0' + (d % 8);
            }
        }
        SizeField::Spaces => {
            let text = format!(" {n:o} ");
            let text = &text[..text.len().min(12)];
            out[..text.len()].copy_from_slice(text.as_bytes());
        }
        SizeField::Base256(junk) => {
            out[0] = 0x80;
            out[1..4].fill(*junk);
            out[4..].copy_from_slice(&n.to_be_bytes());
        }
    }
    out
}

fn header(s: &Spec, i: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = format!("f{i}");
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(&size_field(&s.field, s.declared));
    h[156] = s.kind;
    if s.kind == b'2' || s.kind == b'1' {
        h[157..160].copy_from_slice(b"tgt");
    }
    if s.magic {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn record(k: &str, v: &str) -> String {
    let body = format!(" {k}={v}\n");
    let mut n = body.len() + 1;
    while n != body.len() + n.to_string().len() {
        n = body.len() + n.to_string().len();
    }
    format!("{n}{body}")
}

fn pax_data() -> impl Strategy<Value = Vec<u8>> {
    let rec = prop_oneof![
        (0u64..3000).prop_map(|n| record("size", &n.to_string())),
        (1usize..100).prop_map(|n| record("path", &"p".repeat(n))),
        (1usize..100).prop_map(|n| record("linkpath", &"l".repeat(n))),
        Just(record("mtime", "1.5")),
        Just("5 a=b\n".to_string()),
        Just("\n".to_string()),
        Just(record("size", "x")),
    ];
    prop::collection::vec(rec, 0..4).prop_map(|v| v.concat().into_bytes())
}

fn spec() -> impl Strategy<Value = Spec> {
    let field = prop_oneof![
        4 => Just(SizeField::Canonical),
        1 => any::<u8>().prop_map(SizeField::NulInside),
        1 => Just(SizeField::Spaces),
        1 => any::<u8>().prop_map(SizeField::Base256),
    ];
    let kind =
        prop::sample::select(vec![b'0', b'0', b'0', b'\0', b'5', b'2', b'1', b'L', b'K', b'x', b'x', b'g', b'7']);
    (kind, prop::bool::weighted(0.85), field, pax_data(), 0u64..2000, prop::bool::weighted(0.8)).prop_map(
        |(kind, magic, field, pax, len, honest)| {
            let data = match kind {
                b'x' | b'g' => pax,
                b'L' | b'K' => {
                    let mut v = vec![b'n'; (len % 120) as usize];
                    v.push(0);
                    v
                }
                b'5' | b'2' | b'1' => Vec::new(),
                _ => vec![b'd'; len as usize],
            };
            let declared = if honest { data.len() as u64 } else { len };
            Spec { kind, magic, field, declared, data }
        },
    )
}

fn archive(specs: &[Spec], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        out.extend_from_slice(&header(s, i));
        out.extend_from_slice(&s.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if end {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn tar_and_the_bounds_read_generated_archives_alike(specs in prop::collection::vec(spec(), 1..12), end in any::<bool>()) {
        harness::tar_differential(&archive(&specs, end));
    }
}

/// The cases issue 25 names, each alone.
#[test]
fn the_known_disagreements_are_read_alike() {
    let file = |n: u64| Spec {
        kind: b'0',
        magic: true,
        field: SizeField::Canonical,
        declared: n,
        data: vec![b'd'; n as usize],
    };
    let pax = |recs: &str| Spec {
        kind: b'x',
        magic: true,
        field: SizeField::Canonical,
        declared: recs.len() as u64,
        data: recs.as_bytes().to_vec(),
    };
    let cases: Vec<Vec<Spec>> = vec![
        // Size with a NUL inside: tar reads up to the NUL.
        vec![Spec { field: SizeField::NulInside(7), ..file(1) }, file(3)],
        // Two PAX size records: tar takes the first.
        vec![pax(&(record("size", "0") + &record("size", "4000"))), file(0), file(2)],
        // x then g.
        vec![pax(&record("size", "600")), Spec { kind: b'g', data: Vec::new(), declared: 0, ..file(0) }, file(600)],
        // Extension headers without ustar magic are plain entries to tar.
        vec![Spec { magic: false, ..pax(&record("size", "3000")) }, file(10)],
        vec![Spec { kind: b'L', magic: false, field: SizeField::Canonical, declared: 2000, data: vec![b'n'; 2000] }],
        // Many small entries hidden in what one reader thinks is data.
        (0..20).map(|_| file(1)).collect(),
    ];
    for specs in cases {
        harness::tar_differential(&archive(&specs, true));
    }
}

/// Writes the known disagreements as seeds of the fuzz corpus: run with
/// `cargo test --test tar_differential -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tar_differential");
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for i in 0..24 {
        let specs = prop::collection::vec(spec(), 1..8).new_tree(&mut runner).unwrap().current();
        std::fs::write(dir.join(format!("generated-{i:02}")), archive(&specs, i % 2 == 0)).unwrap();
    }
}
