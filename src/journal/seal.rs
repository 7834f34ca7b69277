//! The seal: a few bytes outside sled that say how far the journal got.
//!
//! sled 0.34 can open damaged files (a truncated or overwritten main file)
//! without an error, on an older — even empty — state, and then stagehand
//! would silently forget what it installed. After every finished
//! transaction the journal writes `STATE/journal.seal` (atomically: temp
//! file, fsync, rename, parent fsync) holding the id of that transaction,
//! and [`check`] refuses a journal whose `meta/next_txn` is behind it.
//!
//! Format, one line: `stagehand-seal 1 <last finished txn id> <crc32>` where
//! the CRC-32 (IEEE, 8 lowercase hex digits) covers the text before it.

use std::path::{Path, PathBuf};

use crate::fsops;
use crate::txn::TxnId;

/// The seal file beside a journal directory.
pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.with_file_name("journal.seal")
}

fn render(last: TxnId) -> String {
    let body = format!("stagehand-seal 1 {last}");
    format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()))
}

/// Parses a seal; `Err` says what is wrong with it.
pub fn parse(text: &str) -> Result<TxnId, String> {
    let line = text.trim_end_matches('\n');
    let (body, crc) = line.rsplit_once(' ').ok_or("no checksum")?;
    if format!("{:08x}", crc32fast::hash(body.as_bytes())) != crc {
        return Err("checksum mismatch".into());
    }
    match body.split(' ').collect::<Vec<_>>().as_slice() {
        ["stagehand-seal", "1", n] => n.parse().map_err(|_| format!("bad transaction id {n:?}")),
        _ => Err("not a stagehand seal of format 1".into()),
    }
}

/// Writes the seal durably.
pub fn write(journal_dir: &Path, last: TxnId) -> std::io::Result<()> {
    let seal = path(journal_dir);
    let tmp = journal_dir.with_file_name(".journal.seal.stagehand-tmp");
    fsops::remove_tree(&tmp, "seal")?;
    fsops::write_file(&tmp, &mut render(last).as_bytes(), 0o644, "seal")?;
    fsops::fsync_file(&tmp, "seal")?;
    fsops::rename(&tmp, &seal, "seal")
}

/// Reads the seal: `Ok(None)` if there is none (a new state dir).
pub fn read(journal_dir: &Path) -> Result<Option<TxnId>, String> {
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
        assert_eq!(parse(&render(42)), Ok(42));
        let good = render(7);
        assert!(parse(&good.replace(" 7 ", " 8 ")).is_err(), "a changed id fails the checksum");
        assert!(parse("").is_err());
        assert!(parse("stagehand-seal 2 1 00000000").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("journal");
        assert_eq!(read(&j), Ok(None));
        write(&j, 9).expect("write");
        write(&j, 10).expect("overwrite");
        assert_eq!(read(&j), Ok(Some(10)));
    }
}
