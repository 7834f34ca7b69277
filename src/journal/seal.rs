//! The seal: a few bytes outside sled that say how far the journal got.
//!
//! sled 0.34 can open damaged files (a truncated or overwritten main file)
//! without an error, on an older — even empty — state, and then stagehand
//! would silently forget what it installed. After every finished
//! transaction the journal writes `STATE/journal.seal` (atomically: temp
//! file, fsync, rename, parent fsync) holding the id of that transaction,
//! and [`check`] refuses a journal whose `meta/next_txn` is behind it.
//!
//! The seal also carries the highest transaction id handed out (reserved in
//! blocks of [`RESERVE`], written before the first id of a block is used),
//! so that a journal set aside after damage never lets a fresh one reuse an
//! id, and with it a staging or backup name that may still hold content.
//!
//! Format, one line: `stagehand-seal 2 <last finished txn id> <highest id
//! reserved> <crc32>` where the CRC-32 (IEEE, 8 lowercase hex digits) covers
//! the text before it. Format 1 (`stagehand-seal 1 <last finished> <crc32>`)
//! is still read; its highest id is the last finished one.
//!
//! Must never: be written ahead of the journal for the last finished id
//! (only after the `done`/`rolled_back` flush), or lower either id.

use std::path::{Path, PathBuf};

use crate::fsops;
use crate::txn::TxnId;

/// Ids reserved at once: one seal write per this many transactions.
pub const RESERVE: TxnId = 64;

/// What a seal says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seal {
    /// The last finished transaction (0: none yet).
    pub finished: TxnId,
    /// No transaction id above this was handed out (at least `finished`).
    pub reserved: TxnId,
}

impl Seal {
    /// The highest id this seal vouches for: no id above it was ever used.
    pub fn highest(&self) -> TxnId {
        self.finished.max(self.reserved)
    }
}

/// The seal file beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("journal.seal")
}

fn render(s: Seal) -> String {
    let body = format!("stagehand-seal 2 {} {}", s.finished, s.highest());
    format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()))
}

/// Parses a seal (format 1 or 2); `Err` says what is wrong with it.
pub fn parse(text: &str) -> Result<Seal, String> {
    let line = text.trim_end_matches('\n');
    let (body, crc) = line.rsplit_once(' ').ok_or("no checksum")?;
    if format!("{:08x}", crc32fast::hash(body.as_bytes())) != crc {
        return Err("checksum mismatch".into());
    }
    let id = |n: &str| n.parse::<TxnId>().map_err(|_| format!("bad transaction id {n:?}"));
    match body.split(' ').collect::<Vec<_>>().as_slice() {
        ["stagehand-seal", "1", n] => id(n).map(|finished| Seal { finished, reserved: finished }),
        ["stagehand-seal", "2", n, r] => {
            let (finished, reserved) = (id(n)?, id(r)?);
            if reserved < finished {
                return Err(format!("highest id {reserved} is below the last finished {finished}"));
            }
            Ok(Seal { finished, reserved })
        }
        _ => Err("not a stagehand seal of format 1 or 2".into()),
    }
}

/// Writes the seal durably.
pub fn write(journal_dir: &Path, seal: Seal) -> std::io::Result<()> {
    let path = path(journal_dir);
    let tmp = journal_dir.with_file_name(".journal.seal.stagehand-tmp");
    fsops::remove_tree(&tmp, "seal")?;
    fsops::write_file(&tmp, &mut render(seal).as_bytes(), 0o644, "seal")?;
    fsops::fsync_file(&tmp, "seal")?;
    fsops::rename(&tmp, &path, "seal")
}

/// Reads the seal: `Ok(None)` if there is none (a new state dir).
pub fn read(journal_dir: &Path) -> Result<Option<Seal>, String> {
    match std::fs::read_to_string(path(journal_dir)) {
        Ok(text) => parse(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let s = |finished, reserved| Seal { finished, reserved };
        assert_eq!(parse(&render(s(42, 64))), Ok(s(42, 64)));
        assert_eq!(parse(&render(s(42, 0))), Ok(s(42, 42)), "the highest id is never below the last finished");
        let good = render(s(7, 64));
        assert!(parse(&good.replace(" 7 ", " 8 ")).is_err(), "a changed id fails the checksum");
        assert!(parse("").is_err());
        assert!(parse("stagehand-seal 3 1 00000000").is_err());
        // Format 1, as stagehand wrote it before: still read.
        let body = "stagehand-seal 1 9";
        let v1 = format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(parse(&v1), Ok(s(9, 9)));
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("journal");
        assert_eq!(read(&j), Ok(None));
        write(&j, s(9, 64)).expect("write");
        write(&j, s(10, 64)).expect("overwrite");
        assert_eq!(read(&j), Ok(Some(s(10, 64))));
    }
}
