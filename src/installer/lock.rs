//! The state-dir lock: one process at a time runs transactions on a state dir.
//!
//! An advisory `flock` (through fs4) on `STATE/lock`, held for the life of
//! the [`StateLock`]. The holder writes its pid into the file so a loser can
//! say who holds it. Taken before the journal is opened, because sled's own
//! exclusive lock would otherwise fail with an obscure error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid if it wrote one.
    Held {
        pid: Option<u32>,
    },
    Io(io::Error),
}

/// Takes the lock at `path`, waiting up to `timeout` for a holder to finish.
/// `on_wait` is told (once) when the lock is busy and a wait begins.
pub fn acquire(path: &Path, timeout: Duration, on_wait: Option<&dyn Fn(Option<u32>)>) -> Result<StateLock, LockError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(LockError::Io)?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => break,
            Err(fs4::TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(LockError::Held { pid: read_pid(&mut file) });
                }
                if !told {
                    if let Some(f) = on_wait {
                        f(read_pid(&mut file));
                    }
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
    }
    file.set_len(0).map_err(LockError::Io)?;
    file.seek(SeekFrom::Start(0)).map_err(LockError::Io)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(LockError::Io)?;
    Ok(StateLock { _file: file })
}

fn read_pid(file: &mut File) -> Option<u32> {
    // The holder writes its pid just after taking the lock: give it a moment.
    for _ in 0..40 {
        let mut s = String::new();
        file.seek(SeekFrom::Start(0)).ok()?;
        file.read_to_string(&mut s).ok()?;
        if let Ok(pid) = s.trim().parse() {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}
