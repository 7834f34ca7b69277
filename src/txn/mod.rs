//! The transaction state machine: pure decisions, no I/O.
//!
//! A transaction moves through [`Step`]s — planned, staged, committed (the
//! single commit point), per target swapping, cleaning — each journaled before
//! it runs. [`decide`] is the whole of recovery's judgement: given a
//! [`TxnRecord`] and what was observed at each target's three paths, it
//! returns a [`RecoveryDecision`]: roll forward, roll back, or refuse. The
//! live install path uses the same function after its commit point, so the
//! code that finishes a normal install is the code that finishes a crashed one.
//!
//! This module never touches the filesystem, the journal or the clock.

mod decide;
mod record;

#[cfg(test)]
mod model_tests;

pub use decide::{decide, place, Action, Observed, Place, RecoveryDecision, TargetSwap};
pub use record::*;

/// Most targets one transaction may have: bounds record size and recovery time.
pub const MAX_TARGETS: usize = 4096;

/// Staging path for a target: a hidden sibling in the same directory (same
/// filesystem), named so it cannot collide with a user's file.
pub fn staging_path(target: &std::path::Path, id: TxnId) -> Option<std::path::PathBuf> {
    sibling(target, id, "staging")
}

/// Backup path for a target: a hidden sibling in the same directory.
pub fn backup_path(target: &std::path::Path, id: TxnId) -> Option<std::path::PathBuf> {
    sibling(target, id, "backup")
}

fn sibling(target: &std::path::Path, id: TxnId, what: &str) -> Option<std::path::PathBuf> {
    let name = target.file_name()?.to_str()?;
    Some(target.with_file_name(format!(".{name}.stagehand-{id}.{what}")))
}

/// True if a file name is one stagehand uses for staging, backups or temps.
pub fn is_stagehand_name(name: &str) -> bool {
    name.contains(".stagehand-")
}
