//! The write-ahead journal and the installed-package registry, in sled.
//!
//! This module owns the sled database under `STATE/journal` and is the only
//! code that opens it. Trees: `meta` (format version), `txns` (transactions
//! in flight, key = txn id as u64 big-endian), `history` (finished
//! transactions, same keys), `cleanups` (finished transactions whose
//! replaced content is still to be removed, same keys) and `packages` (key =
//! package name). Every value
//! is a record encoded by [`codec`]. Every write is followed by sled's
//! `flush()` and then our own fsyncs of sled's files and directories (sled's
//! flush is no fsync on Linux), before the caller may run the step it
//! announces; each write passes the kill points `journal.<what>` (before the
//! insert) and `journal.<what>.flush` (before the flush). Before sled opens
//! its directory, [`leftovers`] clears what a kill leaves that sled
//! mishandles.
//!
//! A journal that cannot be opened is evidence and keeps every byte: sled
//! writes to its files at every open, also one it then refuses, so unless
//! they are exactly as the last clean close left them ([`clean`]), a copy
//! is opened and checked first ([`probe`]). sled's own lock on `db` is told
//! apart from damage ([`sledlock`]).
//!
//! Callers must hold the state-dir lock before [`Journal::open`]: sled takes
//! an exclusive lock of its own and a second opener would fail obscurely.

pub mod clean;
pub mod codec;
mod error;
pub mod filelist;
pub mod leftovers;
pub mod places;
pub mod probe;
pub mod readcopy;
pub mod salvage;
pub mod seal;
pub mod sledlock;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sled::Transactional;

use crate::fsops::{self, killpoint};
use crate::txn::{
    ChangeSummary, FileEntry, FileListRef, HistoryEntry, Outcome, PackageRecord, ServedRecord, Step, TxnId, TxnRecord,
};
use codec::{RecordKind, FORMAT_VERSION};

pub use codec::MAX_RECORD_BYTES;
pub use error::JournalError;

pub type Result<T> = std::result::Result<T, JournalError>;

/// The open journal. Dropping it closes sled, then writes the clean-close
/// mark ([`clean`]).
pub struct Journal {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    txns: sled::Tree,
    history: sled::Tree,
    /// Which host served what each transaction fetched (`ServedRecord`).
    served: sled::Tree,
    packages: sled::Tree,
    /// Finished transactions whose replaced content is still to be removed:
    /// the record at step `cleaning`, as in `txns` (see
    /// [`Journal::finish_txn_leaving_cleanup`]).
    cleanups: sled::Tree,
    /// sled's files (relative names, `blobs/<lsn>` for blobs) as of our last
    /// fsync of the directory: see [`Journal::sync_files`].
    synced: Mutex<Option<BTreeSet<String>>>,
    /// `STATE/filelists`: see [`filelist`].
    filelists: PathBuf,
    /// `STATE/places`: see [`places`].
    places: places::Places,
    /// The real journal or a scratch copy of it (no clean mark, no
    /// power-loss recorder snapshot; a reader's view is `temporary` to sled).
    opened: Opened,
    /// Declared last, so it drops after sled's handles above.
    close: clean::CloseMark,
    /// The seal as this process last read or wrote it (see [`seal`]).
    sealed: Mutex<seal::Seal>,
}

/// Which journal [`Journal::open_here`] opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// The state dir's own.
    Real,
    /// The probe's copy (`STATE/journal.probe`), to see whether sled opens it.
    Probe,
    /// A reader's private copy ([`readcopy`]).
    ReadView,
}

impl Drop for Journal {
    /// sled's close flushes and then `sync_all().unwrap()`s its file
    /// (`pagecache/logger.rs`), which panics when the disk fails that fsync.
    /// So a journal whose write failed, or whose file the disk no longer
    /// syncs, is not closed: a clone kept forever keeps sled's page cache
    /// from dropping. Nothing is lost: everything a record needs was made
    /// durable by our own fsyncs before, and the failure is reported by
    /// whoever met it. (A reader's view is `temporary` to sled: its close
    /// neither syncs nor keeps the copy.)
    fn drop(&mut self) {
        if self.opened == Opened::ReadView {
            return;
        }
        if self.close.spoiled() || fsops::sync_check(&self.dir.join("db")).is_err() {
            self.close.spoil();
            tracing::debug!(journal = %self.dir.display(), "the disk failed the journal: sled is left unclosed");
            std::mem::forget(self.db.clone());
        }
    }
}

fn txn_key(id: TxnId) -> [u8; 8] {
    id.to_be_bytes()
}

fn display_key(tree: &str, key: &[u8]) -> String {
    if tree == "packages" {
        format!("{tree}/{}", String::from_utf8_lossy(key))
    } else if let Ok(b) = <[u8; 8]>::try_from(key) {
        format!("{tree}/{}", u64::from_be_bytes(b))
    } else {
        format!("{tree}/0x{}", hex::encode(key))
    }
}

fn point(name: &str) -> Result<()> {
    killpoint::hit(name).map_err(|source| JournalError::Injected { point: name.to_string(), source })
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`: waits (bounded) for
    /// a straggler's hold on sled's lock; then, unless sled's files are
    /// exactly as the last clean close left them, opens and checks a copy
    /// first ([`probe`]), so a journal that is refused keeps every byte.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_unclassified(dir).map_err(|e| e.disk_error(dir))
    }

    fn open_unclassified(dir: &Path) -> Result<Self> {
        Self::wait_for_sled_lock(dir)?;
        let prep = |source| JournalError::Prepare { path: dir.to_path_buf(), source };
        // No `db` yet: nothing to keep, sled creates it; unless a seal
        // vouches for handed-out ids, and then the journal lost its files:
        // refused before sled writes a byte into its directory.
        if !dir.join("db").exists() {
            Self::refuse_if_sealed(dir, "its files are gone (no `db`)")?;
            return Self::open_here(dir, Opened::Real);
        }
        let before = clean::fingerprint(dir).map_err(prep)?;
        let probed = !before.as_deref().is_some_and(|fp| clean::matches(dir, fp));
        if probed {
            probe::check(dir)?;
        }
        match Self::open_here(dir, Opened::Real) {
            Ok(j) => Ok(j),
            Err(e) if e.is_locked() => Err(e),
            Err(e) => {
                // The copy passed, or the files were as a clean close left
                // them: say whether this open changed them, and suggest
                // setting aside only what a copy also fails to open.
                if before.is_none() || clean::fingerprint(dir).ok().flatten() != before {
                    return Err(JournalError::Rewritten { path: dir.to_path_buf(), source: Box::new(e) });
                }
                if !probed && e.is_unopenable() {
                    probe::check(dir)?;
                }
                Err(e)
            }
        }
    }

    /// Checks a copy of the journal in `dir` as [`Journal::open`] would and
    /// never opens the journal itself: `Ok` if it would open.
    pub fn probe(dir: &Path) -> Result<()> {
        Self::wait_for_sled_lock(dir)?;
        if !dir.join("db").exists() {
            return Self::refuse_if_sealed(dir, "its files are gone (no `db`)");
        }
        probe::check(dir)
    }

    /// Waits up to [`sledlock::WAIT`] for another process's hold on sled's
    /// lock to go; then refuses, naming it (not damage: exit 4).
    pub fn wait_for_sled_lock(dir: &Path) -> Result<()> {
        let t0 = std::time::Instant::now();
        match sledlock::wait_free(&dir.join("db"), sledlock::WAIT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(pids)) => Err(JournalError::SledLocked {
                path: dir.to_path_buf(),
                pids,
                waited_ms: t0.elapsed().as_millis() as u64,
            }),
            Err(source) => Err(JournalError::Prepare { path: dir.to_path_buf(), source }),
        }
    }

    /// A journal without records (`what`) beside a seal that vouches for
    /// handed-out ids lost its files (cut short, emptied): refused, so
    /// set-aside can still find what it named.
    fn refuse_if_sealed(dir: &Path, what: &str) -> Result<()> {
        match seal::read(dir) {
            Ok(Some(sealed)) if sealed.highest() > 0 => Err(JournalError::BehindSeal {
                path: dir.to_path_buf(),
                path_seal: seal::path(dir),
                detail: format!("{what}, but transaction ids up to {} were handed out", sealed.highest()),
            }),
            _ => Ok(()),
        }
    }

    /// Opens the journal in `dir` itself: leftovers, sled, format, seal.
    fn open_here(dir: &Path, which: Opened) -> Result<Self> {
        let scratch = which != Opened::Real;
        let fixed =
            leftovers::prepare(dir).map_err(|source| JournalError::Prepare { path: dir.to_path_buf(), source })?;
        for what in &fixed {
            tracing::warn!(journal = %dir.display(), "{what}");
        }
        // A reader's view is `temporary` to sled: no write of it is synced,
        // and sled deletes it when it closes (its directory is the view's
        // own, so that may come late; not for the probe's fixed path).
        let db = sled::Config::new()
            .path(dir)
            .segment_size(leftovers::SEGMENT_SIZE)
            .flush_every_ms(None)
            .temporary(which == Opened::ReadView)
            .open()
            .map_err(|source| JournalError::Open { path: dir.to_path_buf(), source })?;
        let open =
            |name: &str| db.open_tree(name).map_err(|source| JournalError::Open { path: dir.to_path_buf(), source });
        let j = Journal {
            dir: dir.to_path_buf(),
            meta: open("meta")?,
            txns: open("txns")?,
            history: open("history")?,
            packages: open("packages")?,
            served: open("served")?,
            cleanups: open("cleanups")?,
            db,
            synced: Mutex::new(None),
            filelists: filelist::root(dir),
            places: places::Places::new(dir),
            opened: which,
            close: clean::CloseMark::new(dir, !scratch),
            sealed: Mutex::new(seal::Seal::default()),
        };
        match j.meta.get("format")? {
            Some(v) if v.first() == Some(&FORMAT_VERSION) => {}
            Some(v) if v.first().is_some_and(|&f| f < FORMAT_VERSION) => {
                return Err(JournalError::OlderFormat { path: dir.to_path_buf(), found: v[0] })
            }
            Some(v) => return Err(JournalError::NewerFormat { found: v.first().copied().unwrap_or(0) }),
            None => {
                // No format: sled found no records at all. Beside a seal
                // that vouches for handed-out ids, that is a journal that
                // lost its files (cut short, emptied), not a new one:
                // refused, so set-aside can still find what it named.
                Self::refuse_if_sealed(dir, "it holds no records at all")?;
                // A new journal (the first, or one after a set-aside, even
                // one killed before it raised the counter) starts past every
                // staging or backup name on disk in the places, so it never
                // reuses one; the counter goes first, so a journal with its
                // format has it too.
                let max = if scratch { 0 } else { salvage::max_txn_in_places(dir) };
                if max > 0 {
                    j.meta.insert("next_txn", &max.to_be_bytes())?;
                }
                j.meta.insert("format", &[FORMAT_VERSION])?;
                j.flush("format")?;
            }
        }
        j.check_seal()?;
        Ok(j)
    }

    /// Refuses a journal that is behind its seal (see [`seal`]).
    fn check_seal(&self) -> Result<()> {
        let sealed =
            seal::read(&self.dir).map_err(|reason| JournalError::BadSeal { path: seal::path(&self.dir), reason })?;
        let Some(sealed) = sealed else { return Ok(()) };
        *self.sealed.lock().unwrap_or_else(|p| p.into_inner()) = sealed;
        let finished = sealed.finished;
        if finished == 0 {
            // Sealed only to reserve ids: no transaction had finished.
            return Ok(());
        }
        let found = self.counter()?;
        // The sealed txn's history entry was flushed before the seal was
        // written; the counter alone survives a fallback that lost it.
        let detail = if found < finished {
            format!("it knows transactions up to {found}, but transaction {finished} had finished")
        } else if !self.history.contains_key(txn_key(finished))? {
            format!("transaction {finished} had finished, but the journal has no record of it")
        } else {
            return Ok(());
        };
        Err(JournalError::BehindSeal { path: self.dir.clone(), path_seal: seal::path(&self.dir), detail })
    }

    /// `meta/next_txn`: the last transaction id handed out (0: none).
    fn counter(&self) -> Result<TxnId> {
        Ok(self
            .meta
            .get("next_txn")?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// A fresh transaction id: `meta/next_txn`, incremented. The increment
    /// is not flushed on its own: it becomes durable with the txn's
    /// `planned` record, which sled's log always orders after it; an id
    /// whose record never became durable was never used on disk either.
    /// Before an id above the seal's reserved block is returned, the seal
    /// reserves the next [`seal::RESERVE`] ids (durably), so the highest id
    /// ever used survives damage to sled's files; if that write fails, no
    /// id is returned and nothing is changed on disk.
    pub fn new_txn_id(&self) -> Result<TxnId> {
        let next = self.meta.update_and_fetch("next_txn", |old| {
            let n = old.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes).unwrap_or(0);
            Some(n.saturating_add(1).to_be_bytes().to_vec())
        })?;
        let bytes = next.as_deref().and_then(|b| <[u8; 8]>::try_from(b).ok()).unwrap_or([0; 8]);
        let id = u64::from_be_bytes(bytes);
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if id > sealed.highest() {
            let reserve = seal::Seal { finished: sealed.finished, reserved: id.saturating_add(seal::RESERVE - 1) };
            seal::write(&self.dir, reserve).map_err(|source| JournalError::Sync {
                point: format!("reserving ids in {}", seal::path(&self.dir).display()),
                source,
            })?;
            *sealed = reserve;
        }
        Ok(id)
    }

    /// Raises `meta/next_txn` to at least `min` (durably), so new
    /// transactions never reuse a staging or backup name a journal that was
    /// set aside may still have on disk. The seal then vouches for `min`
    /// too, so even this journal's loss cannot take the counter back.
    /// Never lowers the counter.
    pub fn raise_txn_counter(&self, min: TxnId) -> Result<()> {
        let cur = self.counter()?;
        if cur < min {
            point("journal.counter")?;
            self.meta.insert("next_txn", &min.to_be_bytes())?;
            point("journal.counter.flush")?;
            self.flush("counter")?;
        }
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if min > sealed.highest() {
            let next = seal::Seal { finished: sealed.finished, reserved: min };
            seal::write(&self.dir, next).map_err(|source| JournalError::Sync {
                point: format!("sealing the transaction counter in {}", seal::path(&self.dir).display()),
                source,
            })?;
            *sealed = next;
        }
        Ok(())
    }

    /// Writes a transaction record and flushes it. `what` names the step for
    /// the kill points (`journal.<what>`, `journal.<what>.flush`).
    pub fn write_txn(&self, rec: &TxnRecord, what: &str) -> Result<()> {
        let bytes = codec::encode(RecordKind::Txn, rec).map_err(JournalError::Encode)?;
        // Where its staging and backup paths go is on disk before they can be.
        let parents =
            rec.targets.iter().flat_map(|t| [&t.staging, &t.backup]).filter_map(|p| {
                Path::new(p).parent().and_then(Path::to_str).filter(|d| !d.is_empty()).map(str::to_string)
            });
        self.places.note(parents).map_err(|source| JournalError::Places { path: places::path(&self.dir), source })?;
        point(&format!("journal.{what}"))?;
        self.txns.insert(txn_key(rec.id), bytes)?;
        point(&format!("journal.{what}.flush"))?;
        self.flush(what)
    }

    /// Notes which host served what transaction `id` fetched. Not flushed
    /// here: the `staged` record's flush, which follows, makes it durable
    /// (and a record lost with a crash before that only loses the note).
    pub fn write_served(&self, id: TxnId, rec: &ServedRecord) -> Result<()> {
        let bytes = codec::encode(RecordKind::Served, rec).map_err(JournalError::Encode)?;
        self.served.insert(txn_key(id), bytes)?;
        Ok(())
    }

    /// What transaction `id` fetched and from which hosts, if it noted any.
    pub fn served(&self, id: TxnId) -> Result<Option<ServedRecord>> {
        match self.served.get(txn_key(id))? {
            None => Ok(None),
            Some(v) => codec::decode(RecordKind::Served, &v)
                .map(Some)
                .map_err(|reason| JournalError::Corrupt { key: display_key("served", &txn_key(id)), reason }),
        }
    }

    /// Writes the file lists of staged targets and makes them durable: before
    /// the record that names them (see [`filelist`]).
    pub fn write_file_lists(&self, lists: &[&[FileEntry]]) -> Result<Vec<FileListRef>> {
        filelist::write_all(&self.filelists, lists)
            .map_err(|source| JournalError::WriteFileList { path: self.filelists.clone(), source })
    }

    /// The entries of one installed target of `package`.
    pub fn file_list(&self, package: &str, r: &FileListRef) -> Result<Vec<FileEntry>> {
        filelist::read(&self.filelists, r).map_err(|source| JournalError::FileList { package: package.into(), source })
    }

    /// Every file list a record names: the installed packages' and those of
    /// the transactions in flight.
    pub fn referenced_file_lists(&self) -> Result<BTreeSet<[u8; 32]>> {
        let mut out = BTreeSet::new();
        let in_flight =
            self.pending()?.into_iter().chain(self.cleanups()?).flat_map(|r| r.changes).filter_map(|c| c.new_package);
        for p in self.packages()?.into_iter().chain(in_flight) {
            out.extend(p.targets.iter().map(|t| t.file_list.sha256));
        }
        Ok(out)
    }

    /// Every transaction in flight, oldest first. A record that does not
    /// decode is an error naming its key; nothing is skipped.
    pub fn pending(&self) -> Result<Vec<TxnRecord>> {
        self.scan(&self.txns, "txns", RecordKind::Txn)
    }

    /// Ends a transaction in one atomic sled transaction: removes it from
    /// `txns`, appends it to `history` (one entry naming every package
    /// change), and for a completed (not rolled back) txn writes or removes
    /// every changed package's entry. Then flushes.
    pub fn finish_txn(&self, rec: &TxnRecord, outcome: Outcome, error: Option<String>, now: u64) -> Result<()> {
        self.finish(rec, outcome, error, now, false)
    }

    /// Ends a completed transaction whose every target holds its new
    /// content, durably, but whose replaced content (backups, what staging
    /// left) is still on disk: as [`Journal::finish_txn`], and in the same
    /// sled transaction the record, at step `cleaning`, goes into
    /// `cleanups`. Recovery removes what it names ([`Journal::cleanups`],
    /// [`Journal::finish_cleanup`]), so a crash before that leaves nothing
    /// behind for good. Kill points `journal.done`, `journal.done.flush`.
    pub fn finish_txn_leaving_cleanup(&self, rec: &TxnRecord, now: u64) -> Result<()> {
        assert_eq!(rec.step, Step::Cleaning, "a cleanup is recorded at step cleaning");
        self.finish(rec, Outcome::Done, None, now, true)
    }

    /// Finished transactions whose cleanup is still to run, oldest first.
    pub fn cleanups(&self) -> Result<Vec<TxnRecord>> {
        self.scan(&self.cleanups, "cleanups", RecordKind::Txn)
    }

    /// Ends the cleanup of transaction `id`, once what it removed is
    /// durable: removes its `cleanups` entry and, with `note` (what it had
    /// to leave behind and why), adds that to its history entry. Kill
    /// points `journal.cleaned`, `journal.cleaned.flush`.
    pub fn finish_cleanup(&self, id: TxnId, note: Option<String>) -> Result<()> {
        let key = txn_key(id);
        let history = match (&note, self.history.get(key)?) {
            (Some(note), Some(v)) => {
                let mut entry: HistoryEntry = codec::decode(RecordKind::History, &v)
                    .map_err(|reason| JournalError::Corrupt { key: display_key("history", &key), reason })?;
                entry.error = Some(match entry.error.take() {
                    Some(e) => format!("{e}; {note}"),
                    None => note.clone(),
                });
                Some(codec::encode(RecordKind::History, &entry).map_err(JournalError::Encode)?)
            }
            _ => None,
        };
        point("journal.cleaned")?;
        (&self.cleanups, &self.history).transaction(|(c, h)| {
            c.remove(&key)?;
            if let Some(bytes) = &history {
                h.insert(&key, bytes.as_slice())?;
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })?;
        point("journal.cleaned.flush")?;
        self.flush("cleaned")
    }

    fn finish(
        &self,
        rec: &TxnRecord,
        outcome: Outcome,
        error: Option<String>,
        now: u64,
        leave_cleanup: bool,
    ) -> Result<()> {
        let completed = matches!(outcome, Outcome::Done | Outcome::RolledForwardByRecovery);
        let entry = HistoryEntry {
            id: rec.id,
            op: rec.op,
            started_at: rec.started_at,
            finished_at: now,
            changes: rec
                .changes
                .iter()
                .map(|c| ChangeSummary {
                    package: c.name.clone(),
                    op: c.op,
                    old: c.old.clone(),
                    new_digest: c.new_package.as_ref().map(|p| p.manifest_digest.clone()),
                    signed_by: c.new_package.as_ref().and_then(|p| p.signed_by.clone()),
                    moved: crate::txn::is_move(c),
                })
                .collect(),
            outcome,
            error,
        };
        let hist = codec::encode(RecordKind::History, &entry).map_err(JournalError::Encode)?;
        let mut pkgs: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if completed {
            for c in &rec.changes {
                let bytes = match &c.new_package {
                    Some(p) => Some(codec::encode(RecordKind::Package, p).map_err(JournalError::Encode)?),
                    None => None,
                };
                pkgs.push((c.name.as_bytes().to_vec(), bytes));
            }
        }
        let key = txn_key(rec.id);
        let cleanup = match leave_cleanup {
            true => Some(codec::encode(RecordKind::Txn, rec).map_err(JournalError::Encode)?),
            false => None,
        };
        point(if completed { "journal.done" } else { "journal.rolled_back" })?;
        (&self.txns, &self.history, &self.packages, &self.cleanups).transaction(|(t, h, p, c)| {
            t.remove(&key)?;
            h.insert(&key, hist.as_slice())?;
            if let Some(bytes) = &cleanup {
                c.insert(&key, bytes.as_slice())?;
            }
            for (name, bytes) in &pkgs {
                match bytes {
                    Some(bytes) => {
                        p.insert(name.as_slice(), bytes.as_slice())?;
                    }
                    None => {
                        p.remove(name.as_slice())?;
                    }
                }
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })?;
        point(if completed { "journal.done.flush" } else { "journal.rolled_back.flush" })?;
        self.flush(if completed { "done" } else { "rolled_back" })?;
        // Only after the flush: the seal must never be ahead of the journal.
        // Failing to advance it leaves it behind, which is safe: warn only.
        {
            let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
            let next = seal::Seal { finished: rec.id.max(sealed.finished), reserved: sealed.highest().max(rec.id) };
            match seal::write(&self.dir, next) {
                Ok(()) => *sealed = next,
                Err(e) => tracing::warn!(error = %e, "could not advance the journal seal"),
            }
        }
        // Only after the flush too: no durable record may name a removed list.
        // Failing here changes nothing the transaction did: warn only.
        let collected = self
            .referenced_file_lists()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|referenced| filelist::collect_garbage(&self.filelists, &referenced));
        match collected {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "file lists no record names"),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove unreferenced file lists; the next transaction retries")
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable: sled's `flush()` (on Linux a
    /// `sync_file_range`, no metadata and no device cache flush), then our own
    /// fsyncs of sled's files and directories ([`Journal::sync_files`]).
    /// Only then the test-only recorder snapshots the durable journal, and
    /// not at all if one of those fsyncs was skipped on purpose.
    fn flush(&self, what: &str) -> Result<()> {
        let r = self.flush_inner(what);
        if r.is_err() {
            self.close.spoil();
        }
        r
    }

    fn flush_inner(&self, what: &str) -> Result<()> {
        self.db.flush()?;
        let skipped = crate::fsops::record::skipped_fsyncs();
        self.sync_files()?;
        if self.opened == Opened::Real && crate::fsops::record::skipped_fsyncs() == skipped {
            crate::fsops::record::journal_flushed(&self.dir, what);
        }
        Ok(())
    }

    /// fsyncs `db` always, every other file of sled's (`conf`, snapshots,
    /// `blobs/<lsn>`) the first time it is seen, and the journal directory
    /// and `blobs/` whenever their entries changed since the last call.
    /// Kill points `fsops.fsync.journal` and `fsops.fsync_dir.journal`.
    fn sync_files(&self) -> Result<()> {
        let err = |point: &str| {
            let point = point.to_string();
            move |source| JournalError::Sync { point, source }
        };
        let blobs = self.dir.join("blobs");
        let mut now = BTreeSet::new();
        for (dir, prefix) in [(&self.dir, ""), (&blobs, "blobs/")] {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err("read_dir")(e)),
            };
            for e in entries {
                let e = e.map_err(err("read_dir"))?;
                if e.file_type().map_err(err("read_dir"))?.is_file() {
                    now.insert(format!("{prefix}{}", e.file_name().to_string_lossy()));
                }
            }
        }
        let mut guard = match self.synced.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let before = guard.take().unwrap_or_default();
        for name in &now {
            if name == "db" || !before.contains(name) {
                match fsops::fsync_file(&self.dir.join(name), "journal") {
                    // sled may remove an old snapshot or blob meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    r => r.map_err(err("fsops.fsync.journal"))?,
                }
            }
        }
        let top = |set: &BTreeSet<String>| set.iter().filter(|n| !n.starts_with("blobs/")).cloned().collect::<Vec<_>>();
        let low = |set: &BTreeSet<String>| set.iter().filter(|n| n.starts_with("blobs/")).cloned().collect::<Vec<_>>();
        if top(&now) != top(&before) || before.is_empty() {
            fsops::fsync_dir(&self.dir, "journal").map_err(err("fsops.fsync_dir.journal"))?;
        }
        if (low(&now) != low(&before) || before.is_empty()) && blobs.is_dir() {
            fsops::fsync_dir(&blobs, "journal").map_err(err("fsops.fsync_dir.journal"))?;
        }
        *guard = Some(now);
        Ok(())
    }

    /// The installed package called `name`, if any.
    pub fn package(&self, name: &str) -> Result<Option<PackageRecord>> {
        match self.packages.get(name.as_bytes())? {
            None => Ok(None),
            Some(v) => codec::decode(RecordKind::Package, &v)
                .map(Some)
                .map_err(|reason| JournalError::Corrupt { key: display_key("packages", name.as_bytes()), reason }),
        }
    }

    /// Every installed package, by name.
    pub fn packages(&self) -> Result<Vec<PackageRecord>> {
        self.scan(&self.packages, "packages", RecordKind::Package)
    }

    /// Every finished transaction, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.scan(&self.history, "history", RecordKind::History)
    }

    /// The id of the newest finished transaction: a single B-tree lookup,
    /// so `status` stays as fast with 10,000 past transactions as with 10.
    pub fn last_finished_txn(&self) -> Result<Option<TxnId>> {
        Ok(self.history.last()?.and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok()).map(u64::from_be_bytes))
    }

    /// Raw records for debugging: (key, bytes) per tree, undecoded.
    pub fn raw(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for (name, tree) in [
            ("txns", &self.txns),
            ("history", &self.history),
            ("packages", &self.packages),
            ("served", &self.served),
            ("cleanups", &self.cleanups),
        ] {
            for kv in tree.iter() {
                let (k, v) = kv?;
                out.push((display_key(name, &k), v.to_vec()));
            }
        }
        Ok(out)
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, tree: &sled::Tree, name: &str, kind: RecordKind) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let rec = codec::decode(kind, &v)
                .map_err(|reason| JournalError::Corrupt { key: display_key(name, &k), reason })?;
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::{Op, PackageChange};

    fn rec(id: TxnId) -> TxnRecord {
        TxnRecord {
            id,
            op: Op::Uninstall,
            step: Step::Planned,
            started_at: 1,
            recovered: false,
            changes: vec![PackageChange { name: "demo".into(), op: Op::Uninstall, old: None, new_package: None }],
            targets: vec![],
            created_dirs: vec![],
        }
    }

    #[test]
    fn write_finish_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let j = Journal::open(&dir.path().join("journal")).expect("open");
            let id = j.new_txn_id().expect("id");
            assert!(id > 0);
            j.write_txn(&rec(id), "planned").expect("write");
            assert_eq!(j.pending().expect("pending").len(), 1);
            j.finish_txn(&rec(id), Outcome::RolledBack, Some("test".into()), 2).expect("finish");
        }
        let j = Journal::open(&dir.path().join("journal")).expect("reopen");
        assert!(j.pending().expect("pending").is_empty());
        let h = j.history().expect("history");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].outcome, Outcome::RolledBack);
    }

    #[test]
    fn corrupt_record_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("journal")).expect("open");
        j.write_txn(&rec(42), "planned").expect("write");
        let mut bytes = j.txns.get(txn_key(42)).expect("get").expect("present").to_vec();
        bytes[5] ^= 0x40;
        j.txns.insert(txn_key(42), bytes).expect("insert");
        match j.pending() {
            Err(JournalError::Corrupt { key, .. }) => assert_eq!(key, "txns/42"),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn older_format_is_refused_with_what_to_do_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        {
            let j = Journal::open(&path).expect("open");
            j.meta.insert("format", &[FORMAT_VERSION - 1]).expect("insert");
            j.db.flush().expect("flush");
        }
        // As an older stagehand leaves it: no clean-close mark.
        std::fs::remove_file(clean::path(&path)).expect("remove the mark");
        let db = std::fs::read(path.join("db")).expect("read db");
        match Journal::open(&path) {
            Err(e @ JournalError::OlderFormat { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("older stagehand") && msg.contains("--adopt"), "{msg}");
            }
            other => panic!("expected OlderFormat, got {:?}", other.map(|_| ())),
        }
        // Still refused the second time: nothing was rewritten, not even by sled.
        assert!(matches!(Journal::open(&path), Err(JournalError::OlderFormat { .. })));
        assert!(std::fs::read(path.join("db")).expect("read db") == db, "a refused journal was changed");
    }
}
