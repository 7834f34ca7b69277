//! Writer threads for staging: the thread that reads a layer (gunzip, tar,
//! the blob's digest) hands each small file's bytes to a few threads that
//! create, write and hash it, so that creating thousands of files (ext4's
//! inode allocation, the copy into the page cache, sha256) runs beside the
//! decompression instead of after it.
//!
//! What it must keep: every file is written through `fsops::write_file`
//! (its kill point, its record), under a staging path only; a file's
//! result is known before anything depends on it (a hard link to it, the
//! sha256 a carried file is checked against, a directory's final mode):
//! the caller calls [`Writers::drain`] first; and no thread writes after
//! staging returns, success or error: [`Writers`] joins its threads when
//! dropped, so a rollback never races a late write. Memory stays bounded:
//! only files of at most [`MAX_FILE_BYTES`] are handed over, through a
//! queue of [`QUEUE`] jobs. With kill points armed (`fsops::killpoint`),
//! the caller waits for each file before the next, so that a run replayed
//! to its N-th kill point leaves the same disk each time; the concurrent
//! path is what the SIGKILL soaks and the power-loss checker run.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::fsops::{self, WrittenFile};

/// Files up to this size are written by a writer thread; larger ones by
/// the reading thread itself, streamed, as before.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// Jobs waiting for a writer: with [`MAX_FILE_BYTES`], at most 16 MiB of
/// file bytes in memory besides the ones being written.
pub const QUEUE: usize = 64;

/// Writer threads, at most (fewer on fewer cores).
pub const MAX_THREADS: usize = 4;

struct Job {
    /// The file's index in the caller's entry list.
    index: usize,
    path: PathBuf,
    data: Vec<u8>,
    mode: u32,
}

type Done = (usize, io::Result<WrittenFile>);

/// A pool of writer threads, started at the first file handed over.
pub struct Writers {
    role: &'static str,
    jobs: Option<SyncSender<Job>>,
    done: Option<Receiver<Done>>,
    threads: Vec<JoinHandle<()>>,
    /// The lowest index that failed (`usize::MAX`: none): the threads skip
    /// later files, never earlier ones, so the first error in archive
    /// order is always a real one, not a skip.
    stop: Arc<AtomicUsize>,
    outstanding: usize,
}

impl Writers {
    pub fn new(role: &'static str) -> Writers {
        Writers {
            role,
            jobs: None,
            done: None,
            threads: Vec::new(),
            stop: Arc::new(AtomicUsize::new(usize::MAX)),
            outstanding: 0,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS);
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let (report, done) = mpsc::channel::<Done>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..n {
            let (queue, report, stop, role) = (Arc::clone(&queue), report.clone(), Arc::clone(&self.stop), self.role);
            let spawned = std::thread::Builder::new().name(format!("stage-writer-{i}")).spawn(move || loop {
                let job = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let result = if job.index > stop.load(Ordering::Relaxed) {
                    Err(io::Error::other("skipped after an earlier failure"))
                } else {
                    // A panic must still report, or `drain` would wait for it forever.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        fsops::write_file(&job.path, &mut job.data.as_slice(), job.mode, role)
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("a stage writer thread panicked")))
                };
                if result.is_err() {
                    stop.fetch_min(job.index, Ordering::Relaxed);
                }
                if report.send((job.index, result)).is_err() {
                    return;
                }
            });
            match spawned {
                Ok(t) => self.threads.push(t),
                // Fewer threads than asked is fine; none at all is an error.
                Err(e) if self.threads.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        self.jobs = Some(jobs);
        self.done = Some(done);
        Ok(())
    }

    /// Hands a file to a writer thread. Results come back from
    /// [`Writers::finished`] and [`Writers::drain`].
    pub fn submit(&mut self, index: usize, path: PathBuf, data: Vec<u8>, mode: u32) -> io::Result<()> {
        debug_assert!(data.len() as u64 <= MAX_FILE_BYTES, "only small files are handed over");
        if self.jobs.is_none() {
            self.start()?;
        }
        let Some(jobs) = &self.jobs else { return Err(io::Error::other("stage writers are not running")) };
        jobs.send(Job { index, path, data, mode }).map_err(|_| io::Error::other("stage writer threads stopped"))?;
        self.outstanding += 1;
        Ok(())
    }

    /// The results that are in, without waiting.
    pub fn finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        if let Some(done) = &self.done {
            while let Ok(d) = done.try_recv() {
                out.push(d);
            }
        }
        self.outstanding -= out.len();
        out
    }

    /// Waits for every file handed over so far and returns their results.
    pub fn drain(&mut self) -> Vec<Done> {
        let mut out = Vec::with_capacity(self.outstanding);
        if let Some(done) = &self.done {
            while out.len() < self.outstanding {
                match done.recv() {
                    Ok(d) => out.push(d),
                    // Every thread is gone: what they did not report is lost.
                    Err(_) => break,
                }
            }
        }
        let lost = self.outstanding - out.len();
        self.outstanding = 0;
        if lost > 0 {
            out.push((
                usize::MAX,
                Err(io::Error::other(format!(
                    "{lost} staged {} not written: a writer thread died",
                    if lost == 1 { "file was" } else { "files were" }
                ))),
            ));
        }
        out
    }
}

impl Drop for Writers {
    /// Stops and joins every thread: nothing is written under the staging
    /// path once staging has returned.
    fn drop(&mut self) {
        self.stop.store(0, Ordering::Relaxed);
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
