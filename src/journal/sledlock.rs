//! sled's own lock on `journal/db`, told apart from damage.
//!
//! sled 0.34.7 (`config.rs`, `Config::try_lock`) takes `flock(LOCK_EX |
//! LOCK_NB)` on `db` as it opens it and fails with "could not acquire lock
//! on ...: WouldBlock" when another open file description holds it. The
//! lock goes only when the last descriptor of that file closes: a stagehand
//! process that is exiting (the kernel closes its files one by one, so the
//! state-dir lock may already be free), or a child forked while the file was
//! open and not yet exec'd, can still hold it after the state-dir lock is
//! free. That is not damage. [`wait_free`] (called under the state-dir lock,
//! before any open) waits a bounded time for such a holder to go, then names
//! it from `/proc/locks`.
//!
//! Must never: change the file, or hold the lock past its return (sled takes
//! it next).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a straggler may hold sled's lock before we give up.
pub const WAIT: Duration = Duration::from_secs(3);

/// Waits up to `timeout` until no other open file description holds a
/// `flock` on `db` (absent: free). `Err(pids)` names the holders found in
/// `/proc/locks` (empty if none could be read).
pub fn wait_free(db: &Path, timeout: Duration) -> io::Result<Result<(), Vec<u32>>> {
    let f = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(())),
        Err(e) => return Err(e),
    };
    let start = Instant::now();
    loop {
        // SAFETY: flock(2) on a descriptor we own; released (LOCK_UN) at once.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return Ok(Ok(()));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if start.elapsed() >= timeout {
            let m = f.metadata()?;
            let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            return Ok(Err(holders(&text, m.dev(), m.ino())));
        }
        // sled's threads let go within about a millisecond of the last
        // handle's drop; a straggler process takes longer.
        std::thread::sleep(Duration::from_millis(if start.elapsed() < Duration::from_millis(20) { 1 } else { 10 }));
    }
}

/// The holders, for a message.
pub fn describe(pids: &[u32]) -> String {
    match pids {
        [] => "another process (not named in /proc/locks)".to_string(),
        [p] => format!("process {p}"),
        _ => format!("processes {}", pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// The pids `/proc/locks` shows holding a lock on (`dev`, `ino`); waiters
/// (`->` lines) are not holders. Lines look like
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF` (device as hex
/// major:minor, inode in decimal).
pub fn holders(proc_locks: &str, dev: u64, ino: u64) -> Vec<u32> {
    let want = (libc::major(dev) as u64, libc::minor(dev) as u64, ino);
    let mut out = Vec::new();
    for line in proc_locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) == Some(&"->") || f.len() < 6 {
            continue;
        }
        let (Ok(pid), Some(id)) = (f[4].parse::<u32>(), parse_id(f[5])) else { continue };
        if id == want && !out.contains(&pid) {
            out.push(pid);
        }
    }
    out
}

fn parse_id(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split(':');
    let major = u64::from_str_radix(it.next()?, 16).ok()?;
    let minor = u64::from_str_radix(it.next()?, 16).ok()?;
    let ino = it.next()?.parse().ok()?;
    Some((major, minor, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let dev = libc::makedev(0xfd, 0x01);
        let text = "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 999 fd:01:5678 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 fd:01:9 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 4321 08:01:5678 0 EOF\n";
        assert_eq!(holders(text, dev, 5678), vec![1234]);
        assert!(holders(text, dev, 1).is_empty());
    }

    #[test]
    fn a_held_lock_is_waited_for_then_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        std::fs::write(&db, b"x").expect("write");
        assert_eq!(wait_free(&db, Duration::ZERO).expect("io"), Ok(()));
        let holder = File::open(&db).expect("open");
        // SAFETY: flock(2) on a descriptor we own.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let t0 = Instant::now();
        let r = wait_free(&db, Duration::from_millis(100)).expect("io");
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert_eq!(r, Err(vec![std::process::id()]));
        drop(holder);
        assert_eq!(wait_free(&db, Duration::ZERO).expect("io"), Ok(()));
    }
}
