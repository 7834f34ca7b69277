//! Benchmark helper: appends N finished (rolled back, empty) transactions to
//! a state dir's journal, so `scripts/bench.sh` can time `status` against a
//! long history without running N real installs.
//!
//! Usage: cargo run --release --example fill_history -- STATE_DIR N

use std::path::PathBuf;
use std::time::Duration;

use stagehand::installer::lock;
use stagehand::journal::Journal;
use stagehand::txn::{Op, Outcome, PackageChange, Step, TxnRecord};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(state), Some(n)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: fill_history STATE_DIR N");
    };
    let state = PathBuf::from(state);
    let n: u64 = n.parse()?;
    std::fs::create_dir_all(&state)?;
    let _lock = lock::acquire(&state.join("lock"), Duration::from_secs(10), true, None)
        .map_err(|e| anyhow::anyhow!("cannot lock {}: {e:?}", state.display()))?;
    let journal = Journal::open(&state.join("journal"))?;
    for _ in 0..n {
        let rec = TxnRecord {
            id: journal.new_txn_id()?,
            op: Op::Install,
            step: Step::Planned,
            started_at: 0,
            recovered: false,
            changes: vec![PackageChange {
                name: "bench-history".into(),
                op: Op::Install,
                old: None,
                new_package: None,
            }],
            targets: vec![],
            created_dirs: vec![],
        };
        journal.finish_txn(&rec, Outcome::RolledBack, Some("benchmark filler".into()), 0)?;
    }
    println!("appended {n} finished transactions to {}", state.display());
    Ok(())
}
