//! What a kill can leave in sled 0.34.7's directory that sled itself then
//! mishandles, dealt with before `sled::open` (under the state-dir lock).
//!
//! Read in sled-0.34.7's source (`pagecache/snapshot.rs`, `config.rs`):
//!
//! - `snap.<LSN>.generating`: `write_snapshot` writes it, fsyncs it, then
//!   renames it to `snap.<LSN>`. A kill before the rename leaves it, possibly
//!   cut short; `get_snapshot_files` skips only `.in___motion` names and
//!   `read_snapshot` takes the greatest name, which is the `.generating`
//!   file, and the open fails ("empty/corrupt snapshot file found", sled
//!   issues #1509, #1527). It is incomplete by construction (the rename
//!   comes after the fsync), so it is removed.
//! - `conf`: written once, at the first open, with a plain create + write and
//!   no fsync. A kill during that write leaves a prefix such as
//!   `segment_size: 52`, which sled parses (it only warns on the bad CRC)
//!   and then refuses ("cannot change the io buffer size"), or fails to parse.
//!   stagehand pins every parameter the file holds, so it writes the exact
//!   bytes sled would write itself, atomically and durably, whenever the file
//!   is missing, empty or a strict prefix of those bytes. Any other content
//!   is left alone for sled to judge (and refuse).
//! - A kill between the snapshot rename and the removal of older snapshots
//!   leaves two `snap.<LSN>` files: sled picks the greatest, which is the
//!   complete, fsynced one, and removes the others itself. Nothing to do.
//! - Blob files (`blobs/<LSN>`) cut short by a kill have an LSN above the
//!   stable log, and sled's `gc_blobs` removes them at open. Nothing to do.
//!
//! Every mutation goes through `fsops` with the role `journal_leftover`.

use std::io;
use std::path::Path;

use crate::fsops;

/// sled's segment size, pinned (sled's default): records above a quarter of
/// it would go to sled's blob files.
pub const SEGMENT_SIZE: usize = 512 * 1024;

/// The `conf` file sled 0.34 writes for our configuration: its text, then the
/// CRC-32 of the text, little-endian.
pub fn conf_bytes() -> Vec<u8> {
    let mut out = format!("segment_size: {SEGMENT_SIZE}\nuse_compression: false\nversion: 0.34\n").into_bytes();
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Makes `dir` (sled's directory) safe to open, creating it and its `conf`
/// durably if they are missing; returns what was fixed, for the log.
pub fn prepare(dir: &Path) -> io::Result<Vec<String>> {
    let mut fixed = Vec::new();
    fsops::create_dir_all_durable(dir, 0o700, "journal_leftover")?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            fsops::remove_tree(&entry.path(), "journal_leftover")?;
            fixed.push(format!("removed sled's unfinished snapshot {name}"));
        }
    }
    let conf = dir.join("conf");
    let want = conf_bytes();
    let have = match std::fs::read(&conf) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io::Error::new(e.kind(), format!("read {}: {e}", conf.display()))),
    };
    let rewrite = match &have {
        None => true,
        Some(b) => b.len() < want.len() && want.starts_with(b),
    };
    if rewrite {
        let tmp = dir.join("conf.stagehand-tmp");
        fsops::remove_tree(&tmp, "journal_leftover")?;
        fsops::write_file(&tmp, &mut want.as_slice(), 0o644, "journal_leftover")?;
        fsops::fsync_file(&tmp, "journal_leftover")?;
        fsops::rename(&tmp, &conf, "journal_leftover")?;
        if let Some(b) = have {
            fixed.push(format!("rewrote sled's unfinished conf ({} of {} bytes)", b.len(), want.len()));
        }
    }
    Ok(fixed)
}
