//! The state-dir lock: one process at a time runs transactions on a state dir.
//!
//! An advisory `flock` (through fs4) on `STATE/lock`, held for the life of
//! the [`StateLock`]. The holder writes its pid into the file so a loser can
//! say who holds it. Taken before the journal is opened, because sled's own
//! exclusive lock would otherwise fail with an obscure error.
//!
//! A command that leaves its cleanup (removing what its transaction
//! replaced) to a process of its own hands that process the lock itself:
//! the descriptor is inherited, so the lock is never free in between
//! ([`adopt`]). That process writes `PID cleanup`, and a writer waits for it
//! whatever its timeout: the wait is short and bounded by the removal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// The descriptor that holds the lock, for a process to inherit ([`adopt`]).
    pub fn raw_fd(&self) -> RawFd {
        self._file.as_raw_fd()
    }

    /// Says in the lock file that the holder is now `pid`, finishing a
    /// cleanup: from here on a writer waits for it instead of giving up.
    pub fn mark_cleanup(&mut self, pid: u32) -> io::Result<()> {
        write_holder_pid(&mut self._file, pid, " cleanup")
    }
}

/// Who holds the lock, as the holder wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// A process left behind by a command to remove what its transaction replaced.
    pub cleanup: bool,
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

/// Takes the lock at `path`, waiting up to `timeout` for a holder to finish,
/// and, with `wait_for_cleanup`, as long as the holder is a cleanup.
/// `on_wait` is told (once) when the lock is busy and a wait begins.
pub fn acquire(
    path: &Path,
    timeout: Duration,
    wait_for_cleanup: bool,
    on_wait: Option<&dyn Fn(Holder)>,
) -> Result<StateLock, LockError> {
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
                let holder = read_holder(&mut file);
                if start.elapsed() >= timeout && !(wait_for_cleanup && holder.cleanup) {
                    return Err(LockError::Held { pid: holder.pid });
                }
                if !told {
                    if let Some(f) = on_wait {
                        f(holder);
                    }
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
    }
    write_holder(&mut file, "").map_err(LockError::Io)?;
    Ok(StateLock { _file: file })
}

fn write_holder(file: &mut File, what: &str) -> io::Result<()> {
    write_holder_pid(file, std::process::id(), what)
}

fn write_holder_pid(file: &mut File, pid: u32, what: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{pid}{what}\n").as_bytes())
}

/// Takes over the lock that descriptor `fd` (inherited from the command
/// that started this process) holds on `path`, and marks the holder a
/// cleanup. Refused unless `fd` is that file and holds its lock.
pub fn adopt(fd: RawFd, path: &Path) -> Result<StateLock, LockError> {
    let not_it = || LockError::Io(io::Error::other(format!("descriptor {fd} is not the lock on {}", path.display())));
    // SAFETY: F_GETFD only reads the descriptor table.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(not_it());
    }
    // SAFETY: `fd` is open (checked above) and nothing else in this
    // process owns it: it was inherited for this purpose alone.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let (held, named) = (file.metadata().map_err(LockError::Io)?, std::fs::metadata(path).map_err(LockError::Io)?);
    if (held.dev(), held.ino()) != (named.dev(), named.ino()) {
        std::mem::forget(file);
        return Err(not_it());
    }
    // The same open file description holds it: taking it again succeeds at once.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => return Err(LockError::Held { pid: read_holder(&mut file).pid }),
        Err(fs4::TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    // SAFETY: sets a flag of a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    write_holder(&mut file, " cleanup").map_err(LockError::Io)?;
    Ok(StateLock { _file: file })
}

/// Who holds the lock at `path`, as the last holder wrote it: for a
/// command that was refused the lock (this takes no lock itself).
pub fn holder(path: &Path) -> Holder {
    match File::open(path) {
        Ok(mut file) => read_holder(&mut file),
        Err(_) => Holder { pid: None, cleanup: false },
    }
}

fn read_holder(file: &mut File) -> Holder {
    // The holder writes its pid just after taking the lock: give it a moment.
    for _ in 0..40 {
        let mut s = String::new();
        if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_string(&mut s).is_err() {
            break;
        }
        let mut words = s.split_whitespace();
        if let Some(Ok(pid)) = words.next().map(str::parse) {
            return Holder { pid: Some(pid), cleanup: words.next() == Some("cleanup") };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Holder { pid: None, cleanup: false }
}
