//! Record encoding: the one place that knows how records become bytes.
//!
//! A record is `[format version: u8][record kind: u8][body][crc32: u32 LE]`.
//! The body is bincode 2 (serde) with fixed-width little-endian integers, so
//! `journal-format.md` can document it byte for byte. The CRC-32 (IEEE)
//! covers the version, kind and body bytes. Decoding checks, in order: the
//! length, the checksum, the version, the kind, then the body, which must be
//! consumed exactly. Changing the codec means changing only this file.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 5;
/// Largest sled record accepted (transaction, package, history). sled 0.34
/// writes a value over a quarter of its segment (128 KiB here) to a blob
/// file of its own; records stay far below that, since per-file lists live
/// in file lists (`journal::filelist`), not in records.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest file list accepted: about 300,000 entries of typical size.
pub const MAX_FILE_LIST_BYTES: usize = 64 * 1024 * 1024;

/// Which type a record holds; checked on decode so a record in the wrong
/// tree is caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Txn = 1,
    Package = 2,
    History = 3,
    /// A target's `Vec<FileEntry>`, stored as a file, not in sled.
    FileList = 4,
    /// A transaction's `ServedRecord` (tree `served`).
    Served = 5,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Txn),
            2 => Some(RecordKind::Package),
            3 => Some(RecordKind::History),
            4 => Some(RecordKind::FileList),
            5 => Some(RecordKind::Served),
            _ => None,
        }
    }

    /// The largest record of this kind.
    pub fn max_bytes(self) -> usize {
        match self {
            RecordKind::FileList => MAX_FILE_LIST_BYTES,
            _ => MAX_RECORD_BYTES,
        }
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than the 6-byte minimum")]
    TooShort(usize),
    #[error("record is {0} bytes, over the {1}-byte limit of its kind")]
    TooLong(usize, usize),
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("format version {0} is newer than this stagehand understands ({FORMAT_VERSION}); use a newer stagehand")]
    NewerVersion(u8),
    #[error("format version {0} is unknown (this stagehand reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("record kind {found} where {expected:?} was expected")]
    WrongKind { found: u8, expected: RecordKind },
    #[error("body does not decode: {0}")]
    Body(String),
    #[error("body has {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_little_endian().with_fixed_int_encoding().with_limit::<MAX_FILE_LIST_BYTES>()
}

/// Encodes `value` as a record of `kind`.
pub fn encode<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![FORMAT_VERSION, kind as u8];
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())?;
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    if out.len() > kind.max_bytes() {
        return Err(format!(
            "a {kind:?} record of {} bytes exceeds the {}-byte limit (too many targets or packages in one transaction?)",
            out.len(),
            kind.max_bytes()
        ));
    }
    Ok(out)
}

/// Decodes a record of `kind`. Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(kind: RecordKind, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < 6 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes.len() > kind.max_bytes() {
        return Err(DecodeError::TooLong(bytes.len(), kind.max_bytes()));
    }
    let (head, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(head);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    match head[0] {
        FORMAT_VERSION => {}
        v if v > FORMAT_VERSION => return Err(DecodeError::NewerVersion(v)),
        v => return Err(DecodeError::UnknownVersion(v)),
    }
    match RecordKind::from_u8(head[1]) {
        Some(k) if k == kind => {}
        _ => return Err(DecodeError::WrongKind { found: head[1], expected: kind }),
    }
    let body = &head[2..];
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|e| DecodeError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::{EntryKind, FileListRef, InstalledTarget, PackageRecord};

    fn sample() -> PackageRecord {
        PackageRecord {
            name: "demo".into(),
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            source: "oci-layout:examples/demo:v1".into(),
            installed_at: 1_700_000_000,
            txn: 7,
            targets: vec![InstalledTarget {
                path: "/opt/demo".into(),
                kind: EntryKind::Dir,
                file_list: FileListRef { sha256: [0xcd; 32], entries: 3 },
            }],
            placement: Default::default(),
            previous: vec![],
            signed_by: None,
            managed_by: Some("/srv/web.toml".into()),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(RecordKind::Package, &sample()).expect("encodes");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(bytes[1], RecordKind::Package as u8);
        let back: PackageRecord = decode(RecordKind::Package, &bytes).expect("decodes");
        assert_eq!(back, sample());
    }

    #[test]
    fn fixed_width_layout_is_as_documented() {
        // name: u64 LE length + bytes, as journal-format.md says.
        let bytes = encode(RecordKind::Package, &sample()).expect("encodes");
        assert_eq!(&bytes[2..10], &4u64.to_le_bytes());
        assert_eq!(&bytes[10..14], b"demo");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(RecordKind::Package, &sample()).expect("encodes");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode::<PackageRecord>(RecordKind::Package, &b).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn newer_version_and_wrong_kind_are_named() {
        let mut bytes = encode(RecordKind::Package, &sample()).expect("encodes");
        bytes[0] = 9;
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode::<PackageRecord>(RecordKind::Package, &bytes), Err(DecodeError::NewerVersion(9)));
        let good = encode(RecordKind::Package, &sample()).expect("encodes");
        assert!(matches!(
            decode::<PackageRecord>(RecordKind::Txn, &good),
            Err(DecodeError::WrongKind { found: 2, .. })
        ));
        assert_eq!(decode::<PackageRecord>(RecordKind::Package, &good[..3]), Err(DecodeError::TooShort(3)));
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use crate::txn::{
        BirthTime, EntryKind, FileEntry, FileListRef, Identity, InstalledTarget, Op, PackageChange, Step, TargetPlan,
        TargetProgress, TxnRecord,
    };

    fn string(want: &mut Vec<u8>, s: &str) {
        want.extend((s.len() as u64).to_le_bytes());
        want.extend(s.as_bytes());
    }

    /// Pins the byte layout that journal-format.md documents (since format
    /// 3: `changes` in place of format 2's package/old_digest/new_package,
    /// and `TargetPlan::change`; format 4: `Identity::btime`).
    #[test]
    fn txn_record_bytes_match_the_documentation() {
        let rec = TxnRecord {
            id: 7,
            op: Op::Apply,
            step: Step::RollingBack { after_commit: true },
            started_at: 9,
            recovered: true,
            changes: vec![PackageChange { name: "ab".into(), op: Op::Uninstall, old: None, new_package: None }],
            targets: vec![TargetPlan {
                path: "/t".into(),
                staging: "/s".into(),
                backup: "/b".into(),
                old: Some(Identity {
                    dev: 1,
                    ino: 2,
                    kind: EntryKind::Dir,
                    sha256: None,
                    btime: Some(BirthTime { secs: -1, nanos: 5 }),
                }),
                new: None,
                progress: TargetProgress::Swapped,
                change: 0,
            }],
            created_dirs: vec![],
        };
        let b = encode(RecordKind::Txn, &rec).expect("encodes");
        let mut want = vec![FORMAT_VERSION, 1];
        want.extend(7u64.to_le_bytes()); // id
        want.extend(3u32.to_le_bytes()); // op: Apply = variant 3
        want.extend(4u32.to_le_bytes()); // step: RollingBack = variant 4
        want.push(1); // after_commit = true
        want.extend(9u64.to_le_bytes()); // started_at
        want.push(1); // recovered
        want.extend(1u64.to_le_bytes()); // changes: 1
        string(&mut want, "ab"); //   name
        want.extend(1u32.to_le_bytes()); //   op: Uninstall
        want.push(0); //   old: None
        want.push(0); //   new_package: None
        want.extend(1u64.to_le_bytes()); // targets: 1
        string(&mut want, "/t"); //   path
        string(&mut want, "/s"); //   staging
        string(&mut want, "/b"); //   backup
        want.push(1); //   old: Some(Identity)
        want.extend(1u64.to_le_bytes()); //     dev
        want.extend(2u64.to_le_bytes()); //     ino
        want.extend(1u32.to_le_bytes()); //     kind: Dir
        want.push(0); //     sha256: None
        want.push(1); //     btime: Some
        want.extend((-1i64).to_le_bytes()); //       secs
        want.extend(5u32.to_le_bytes()); //       nanos
        want.push(0); //   new: None
        want.extend(2u32.to_le_bytes()); //   progress: Swapped
        want.extend(0u32.to_le_bytes()); //   change: 0
        want.extend(0u64.to_le_bytes()); // created_dirs: empty
        let crc = crc32fast::hash(&want);
        want.extend(crc.to_le_bytes());
        assert_eq!(b, want);
    }

    /// Pins `HistoryEntry`'s layout (format 3: one `ChangeSummary` per
    /// package; format 5: `PlacementRecord::adopted`, `ChangeSummary::moved`).
    #[test]
    fn history_entry_bytes_match_the_documentation() {
        use crate::txn::{ChangeSummary, HistoryEntry, Outcome, VersionRecord};
        let e = HistoryEntry {
            id: 3,
            op: Op::Install,
            started_at: 1,
            finished_at: 2,
            changes: vec![ChangeSummary {
                package: "p".into(),
                op: Op::Install,
                old: Some(VersionRecord {
                    manifest_digest: "o".into(),
                    source: "s".into(),
                    installed_at: 5,
                    placement: Default::default(),
                }),
                new_digest: Some("d".into()),
                signed_by: Some("k".into()),
                moved: true,
            }],
            outcome: Outcome::Done,
            error: None,
        };
        let b = encode(RecordKind::History, &e).expect("encodes");
        let mut want = vec![FORMAT_VERSION, 3];
        want.extend(3u64.to_le_bytes()); // id
        want.extend(0u32.to_le_bytes()); // op: Install
        want.extend(1u64.to_le_bytes()); // started_at
        want.extend(2u64.to_le_bytes()); // finished_at
        want.extend(1u64.to_le_bytes()); // changes: 1
        string(&mut want, "p"); //   package
        want.extend(0u32.to_le_bytes()); //   op: Install
        want.push(1); //   old: Some(VersionRecord)
        string(&mut want, "o"); //     manifest_digest
        string(&mut want, "s"); //     source
        want.extend(5u64.to_le_bytes()); //     installed_at
        want.push(0); //     placement.to: None
        want.extend(0u64.to_le_bytes()); //     placement.maps: empty
        want.extend([0u8; 4]); //     placement.profile, install_dir, db_version, platform: None
        want.extend(0u64.to_le_bytes()); //     placement.adopted: empty (format 5)
        want.push(1); //   new_digest: Some
        string(&mut want, "d");
        want.push(1); //   signed_by: Some
        string(&mut want, "k");
        want.push(1); //   moved: true (format 5)
        want.extend(0u32.to_le_bytes()); // outcome: Done
        want.push(0); // error: None
        let crc = crc32fast::hash(&want);
        want.extend(crc.to_le_bytes());
        assert_eq!(b, want);
    }

    /// Pins `PackageRecord`'s layout (format 5: `managed_by` at the end).
    #[test]
    fn package_record_bytes_match_the_documentation() {
        use crate::txn::PackageRecord;
        let p = PackageRecord {
            name: "d".into(),
            manifest_digest: "m".into(),
            source: "s".into(),
            installed_at: 5,
            txn: 7,
            targets: vec![],
            placement: Default::default(),
            previous: vec![],
            signed_by: None,
            managed_by: Some("/w.toml".into()),
        };
        let b = encode(RecordKind::Package, &p).expect("encodes");
        let mut want = vec![FORMAT_VERSION, 2];
        string(&mut want, "d"); // name
        string(&mut want, "m"); // manifest_digest
        string(&mut want, "s"); // source
        want.extend(5u64.to_le_bytes()); // installed_at
        want.extend(7u64.to_le_bytes()); // txn
        want.extend(0u64.to_le_bytes()); // targets: empty
        want.push(0); // placement.to: None
        want.extend(0u64.to_le_bytes()); // placement.maps: empty
        want.extend([0u8; 4]); // placement.profile, install_dir, db_version, platform: None
        want.extend(0u64.to_le_bytes()); // placement.adopted: empty (format 5)
        want.extend(0u64.to_le_bytes()); // previous: empty
        want.push(0); // signed_by: None
        want.push(1); // managed_by: Some
        string(&mut want, "/w.toml");
        let crc = crc32fast::hash(&want);
        want.extend(crc.to_le_bytes());
        assert_eq!(b, want);
    }

    /// Pins `ServedRecord`'s layout (kind 5, tree `served`).
    #[test]
    fn served_record_bytes_match_the_documentation() {
        use crate::txn::{ServedBlob, ServedRecord};
        let r = ServedRecord {
            blobs: vec![ServedBlob { package: "d".into(), digest: "sha256:a".into(), host: "m:5".into() }],
        };
        let b = encode(RecordKind::Served, &r).expect("encodes");
        let mut want = vec![FORMAT_VERSION, 5];
        want.extend(1u64.to_le_bytes()); // blobs: 1
        string(&mut want, "d"); // package
        string(&mut want, "sha256:a"); // digest
        string(&mut want, "m:5"); // host
        let crc = crc32fast::hash(&want);
        want.extend(crc.to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(decode::<ServedRecord>(RecordKind::Served, &b).expect("decodes"), r);
    }

    /// Pins the file list layout (format 4) and an `InstalledTarget`'s
    /// reference to one.
    #[test]
    fn file_list_and_its_reference_match_the_documentation() {
        let list = vec![FileEntry {
            rel: "a".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 2,
            sha256: "h".into(),
            link: String::new(),
        }];
        let b = encode(RecordKind::FileList, &list).expect("encodes");
        let mut want = vec![FORMAT_VERSION, 4];
        want.extend(1u64.to_le_bytes()); // entries: 1
        string(&mut want, "a"); //   rel
        want.extend(0u32.to_le_bytes()); //   kind: File
        want.extend(0o644u32.to_le_bytes()); //   mode
        want.extend(2u64.to_le_bytes()); //   size
        string(&mut want, "h"); //   sha256
        string(&mut want, ""); //   link
        let crc = crc32fast::hash(&want);
        want.extend(crc.to_le_bytes());
        assert_eq!(b, want);

        let t = InstalledTarget {
            path: "/p".into(),
            kind: EntryKind::Dir,
            file_list: FileListRef { sha256: [7; 32], entries: 9 },
        };
        let body = bincode::serde::encode_to_vec(&t, config()).expect("encodes");
        let mut want = Vec::new();
        string(&mut want, "/p");
        want.extend(1u32.to_le_bytes()); // kind: Dir
        want.extend([7u8; 32]); // file_list.sha256: 32 bytes, no length
        want.extend(9u64.to_le_bytes()); // file_list.entries
        assert_eq!(body, want);
    }

    #[test]
    fn records_over_their_kind_limit_are_refused() {
        let big = vec!["x".repeat(1000); 70];
        assert!(encode(RecordKind::Txn, &big).is_err(), "a 70 KB sled record must be refused");
        assert!(encode(RecordKind::FileList, &big).is_ok(), "a 70 KB file list is fine");
    }
}
