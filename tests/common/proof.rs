//! The "prove it" tests' flavour (power loss, model-based ops, races, random
//! kills, sled faults): every shared helper, with the few that report
//! instead of panicking (`Result<_, String>`, so a model test can shrink a
//! failing case), the demo installed under a chosen package name, a
//! replayable PRNG, and sled's lock.
//!
//! `use common::proof::*` gives these and every shared helper.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

pub use super::artifact::*;
pub use super::demo::*;
pub use super::host::*;
pub use super::run::*;
pub use super::sandbox::{listed_package, scratch_base, tempdir, ListedPackage};
pub use super::tree::*;

/// A package as `list --json` shows it.
pub type Listed = ListedPackage;

/// The `install` arguments that put demo `source` under `dest` (see
/// [`super::demo::demo_install_args`]), as package `name` if given.
pub fn demo_install_args(dest: &Path, source: &str, name: Option<&str>) -> Vec<OsString> {
    let mut v = super::demo::demo_install_args(dest, source);
    if let Some(n) = name {
        v.push("--name".into());
        v.push(n.into());
    }
    v
}

/// The `pending` array of `status --json`, or what is wrong.
pub fn pending_of(status: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    super::sandbox::try_pending_of(status)
}

/// Parses `list --json` output: package name → entry.
pub fn parse_list(run: &Run) -> Result<BTreeMap<String, Listed>, String> {
    if !run.success() {
        return Err(format!("list failed:\n{}", run.describe()));
    }
    let v = run.try_json()?;
    let arr = v.as_array().ok_or_else(|| format!("list --json is not an array: {v}"))?;
    let mut out = BTreeMap::new();
    for p in arr {
        let listed = listed_package(p)?;
        let name = listed.name.clone();
        if out.insert(name.clone(), listed).is_some() {
            return Err(format!("package {name} listed twice"));
        }
    }
    Ok(out)
}

/// Checks that `listed` (the registry entry of a package, or None) agrees
/// with demo version `ver` installed under `dest`.
pub fn registry_matches(listed: Option<&Listed>, dest: &Path, ver: Option<&str>) -> Result<(), String> {
    match (ver, listed) {
        (None, None) => Ok(()),
        (None, Some(p)) => Err(format!("nothing installed on disk, but the registry lists {p:?}")),
        (Some(v), None) => Err(format!("demo {v} on disk, but the registry lists nothing")),
        (Some(v), Some(p)) => {
            if p.digest != demo_digest(v) {
                return Err(format!("demo {v} on disk, but the registry lists digest {}", p.digest));
            }
            if p.targets != demo_targets_abs(dest, v) {
                return Err(format!("demo {v} on disk, but the registry lists targets {:?}", p.targets));
            }
            Ok(())
        }
    }
}

/// A small deterministic PRNG (splitmix64) so runs can be replayed by seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn from_env(var: &str, default: u64) -> Rng {
        Rng(std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Reads an env var as a number, with a default.
pub fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Waits until no open file description of this process (or of a child
/// forked by another test thread and not yet exec'd) holds sled's lock on
/// `journal/db`: sled releases its lock when its last background reference
/// goes away, which can be a moment after the `Db` is dropped.
pub fn wait_sled_unlocked(journal: &Path) {
    use std::os::fd::AsRawFd;
    let db = journal.join("db");
    let t0 = std::time::Instant::now();
    loop {
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&db) else { return };
        // SAFETY: flock on a valid fd we own; released by closing it.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "sled's lock on {} never released", db.display());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
