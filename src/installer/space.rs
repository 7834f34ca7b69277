//! Free space, checked before anything is written: what an install needs on
//! each filesystem involved (the blob cache's, for a layout's blobs copied
//! into it; each target's, for the extracted content) against what is free
//! there. A full disk is refused early, with both numbers and the path,
//! instead of being filled by a half-written copy.
//!
//! Extracted sizes are estimates: a plain tar's own size (headers and
//! padding included), a gzip member's ISIZE trailer, a zstd frame's content
//! size when the frame header has one (else four times the blob).
//!
//! The estimate is then enforced while staging ([`Budget`]): every byte of
//! file content staging writes is counted against the filesystem it lands
//! on, and staging stops (before the commit point, so the install rolls
//! back) once that filesystem's count passes what the check allowed there:
//! the larger of the estimate and what is free when staging starts less
//! [`MARGIN_BYTES`]. An estimate can be low for an honest artifact (ISIZE is
//! the size modulo 4 GiB and only of the last gzip member; a streamed zstd
//! frame records no size), so an artifact that still fits is not refused;
//! one that expands past its estimate and past what is free stops with
//! both numbers and the path, instead of filling the disk.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::{Error, Result};
use crate::fsops;
use crate::plan::{Compression, LayerUse, PlannedContent, PlannedTarget};
use crate::source::Descriptor;

/// Slack kept free on every filesystem beyond the estimate (metadata, the
/// journal's own growth, block rounding).
pub const MARGIN_BYTES: u64 = 1 << 20;

/// Bytes needed on one filesystem, and for what.
#[derive(Debug, Default)]
struct Need {
    /// A path on that filesystem, to name it.
    at: PathBuf,
    bytes: u64,
    what: Vec<String>,
}

/// What must fit, gathered per filesystem.
#[derive(Debug, Default)]
pub struct SpaceCheck {
    by_dev: BTreeMap<u64, Need>,
    /// The extracted-content part of each filesystem's need: (a path on it, bytes).
    extracted: BTreeMap<u64, (PathBuf, u64)>,
}

impl SpaceCheck {
    /// Adds `bytes` needed at `at` (which may not exist yet).
    pub fn add(&mut self, at: &Path, bytes: u64, what: String) -> Result<()> {
        let (dev, _) = stat_fs(at)?;
        let n = self.by_dev.entry(dev).or_insert_with(|| Need { at: at.to_path_buf(), ..Need::default() });
        n.bytes = n.bytes.saturating_add(bytes);
        n.what.push(what);
        Ok(())
    }

    /// Refuses if any filesystem has less free than it needs (plus the margin).
    pub fn check(&self) -> Result<()> {
        for need in self.by_dev.values() {
            let (_, free) = stat_fs(&need.at)?;
            // A filesystem of no size at all (/proc, /sys) holds no files.
            if free == 0 && fsops::total_space(&need.at).is_ok_and(|t| t == 0) {
                return Err(Error::Refused(format!(
                    "{} is not a place to install: its filesystem reports a total size of 0 bytes (a pseudo \
                     filesystem such as /proc or /sys). Nothing was changed; choose a destination on a real \
                     filesystem",
                    need.at.display()
                )));
            }
            if need.bytes.saturating_add(MARGIN_BYTES) > free {
                return Err(Error::Refused(format!(
                    "not enough free space on the filesystem of {}: this install needs about {} bytes ({}) \
                     plus {} to spare, and {} bytes are free; nothing was changed: free some space there \
                     (`stagehand cache prune` frees unused cached blobs when the state dir is on it), \
                     or install somewhere else",
                    need.at.display(),
                    need.bytes,
                    need.what.join(", "),
                    MARGIN_BYTES,
                    free
                )));
            }
        }
        Ok(())
    }
}

/// Estimated extracted bytes of every planned target, added at its path.
/// `blob_file` finds a blob's bytes on disk (layout or cache), to read a
/// compressed layer's recorded size; `None` means the blob size is used.
pub fn add_targets(
    check: &mut SpaceCheck,
    planned: &[PlannedTarget],
    blob_file: &dyn Fn(&Descriptor) -> Option<PathBuf>,
) -> Result<()> {
    for t in planned {
        let bytes: u64 = match &t.content {
            PlannedContent::File(desc, bytes) => {
                let c = if bytes.gunzip { Compression::Gzip } else { Compression::None };
                estimate(desc, c, blob_file(desc).as_deref())
            }
            PlannedContent::Dir(layers) => layers
                .iter()
                .map(|(desc, usage)| {
                    let c = match usage {
                        LayerUse::Tar { compression, .. } => *compression,
                        LayerUse::File { bytes, .. } if bytes.gunzip => Compression::Gzip,
                        LayerUse::File { .. } => Compression::None,
                    };
                    estimate(desc, c, blob_file(desc).as_deref())
                })
                .fold(0u64, u64::saturating_add),
        };
        check.add(&t.path, bytes, format!("{} extracted", t.path.display()))?;
        let (dev, _) = stat_fs(&t.path)?;
        let e = check.extracted.entry(dev).or_insert_with(|| (t.path.clone(), 0));
        e.1 = e.1.saturating_add(bytes);
    }
    Ok(())
}

/// (device, free bytes) of the filesystem `at` is on (or would be on).
fn stat_fs(at: &Path) -> Result<(u64, u64)> {
    fsops::free_space(at)
        .map_err(|source| Error::Io { context: format!("checking free space for {}", at.display()), source })
}

impl SpaceCheck {
    /// What staging may write on each filesystem that holds a target:
    /// the larger of the estimate and what is free now less the margin.
    /// Call it just before staging (after the blob cache took its share).
    pub fn budget(&self) -> Result<Budget> {
        let mut by_dev = BTreeMap::new();
        for (dev, (at, estimate)) in &self.extracted {
            let (_, free) = stat_fs(at)?;
            let allowed = (*estimate).max(free.saturating_sub(MARGIN_BYTES));
            let meter = Meter { at: at.clone(), estimate: *estimate, allowed, written: Rc::new(Cell::new(0)) };
            by_dev.insert(*dev, meter);
        }
        Ok(Budget { by_dev })
    }
}

/// What staging may write per filesystem (see the module doc).
#[derive(Debug, Default)]
pub struct Budget {
    by_dev: BTreeMap<u64, Meter>,
}

impl Budget {
    /// The meter of the filesystem `target` is on, naming `target` in its
    /// error (unmetered if the check did not see that filesystem).
    pub fn meter(&self, target: &Path) -> Result<Meter> {
        let (dev, _) = stat_fs(target)?;
        let shared = self.by_dev.get(&dev).cloned().unwrap_or_else(Meter::unlimited);
        Ok(Meter { at: target.to_path_buf(), ..shared })
    }
}

/// Counts the bytes staged on one filesystem against what it may take.
/// Clones share the count.
#[derive(Debug, Clone)]
pub struct Meter {
    at: PathBuf,
    estimate: u64,
    allowed: u64,
    written: Rc<Cell<u64>>,
}

impl Meter {
    pub fn unlimited() -> Meter {
        Meter { at: PathBuf::new(), estimate: u64::MAX, allowed: u64::MAX, written: Rc::new(Cell::new(0)) }
    }

    /// Bytes counted so far.
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// `src`, with every byte read from it counted; a read that takes the
    /// count past what is allowed fails (`StorageFull`) naming the
    /// filesystem, the estimate, the allowance and the count.
    pub fn track<'a>(&'a self, src: &'a mut dyn Read) -> Metered<'a> {
        Metered { inner: src, meter: self }
    }
}

/// A reader counted by a [`Meter`].
pub struct Metered<'a> {
    inner: &'a mut dyn Read,
    meter: &'a Meter,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = self.meter;
        let written = m.written.get().saturating_add(n as u64);
        m.written.set(written);
        if written > m.allowed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "the artifact expands to more than the free-space check allowed on the filesystem of {}: \
                     estimated {} bytes of content there, allowed {} (the estimate, or what was free less {} \
                     to spare), and {written} bytes were written; it was stopped before the disk filled. \
                     Free space there, or install somewhere else",
                    m.at.display(),
                    m.estimate,
                    m.allowed,
                    MARGIN_BYTES
                ),
            ));
        }
        Ok(n)
    }
}

/// Estimated bytes a layer becomes once decompressed.
fn estimate(desc: &Descriptor, c: Compression, file: Option<&Path>) -> u64 {
    let recorded = file.and_then(|f| match c {
        Compression::None => None,
        Compression::Gzip => gzip_isize(f),
        Compression::Zstd => zstd_content_size(f),
    });
    match (c, recorded) {
        (Compression::None, _) => desc.size,
        // ISIZE is the size modulo 4 GiB: never estimate below the blob.
        (Compression::Gzip, Some(n)) => n.max(desc.size),
        (Compression::Zstd, Some(n)) => n,
        (_, None) => desc.size.saturating_mul(4),
    }
}

/// A gzip member's ISIZE trailer: the last four bytes, little-endian.
fn gzip_isize(f: &Path) -> Option<u64> {
    let mut file = File::open(f).ok()?;
    file.seek(SeekFrom::End(-4)).ok()?;
    let mut b = [0u8; 4];
    file.read_exact(&mut b).ok()?;
    Some(u64::from(u32::from_le_bytes(b)))
}

/// A zstd frame's content size, when its header records one.
fn zstd_content_size(f: &Path) -> Option<u64> {
    let mut head = [0u8; 18];
    let mut file = File::open(f).ok()?;
    let n = file.read(&mut head).ok()?;
    zstd::zstd_safe::get_frame_content_size(&head[..n]).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn desc(size: u64) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: String::new(),
            size,
            annotations: Default::default(),
            platform: None,
        }
    }

    #[test]
    fn estimates_read_the_recorded_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = vec![7u8; 300_000];
        let gz = dir.path().join("gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).expect("gzip");
        let gzb = enc.finish().expect("gzip");
        std::fs::write(&gz, &gzb).expect("write");
        assert_eq!(estimate(&desc(gzb.len() as u64), Compression::Gzip, Some(&gz)), 300_000);
        let zs = dir.path().join("zs");
        // One-shot compression records the content size in the frame header.
        let zb = zstd::bulk::compress(&data, 3).expect("zstd");
        std::fs::write(&zs, &zb).expect("write");
        assert_eq!(estimate(&desc(zb.len() as u64), Compression::Zstd, Some(&zs)), 300_000);
        // A streamed frame does not: four times the blob.
        let streamed = zstd::encode_all(&data[..], 3).expect("zstd");
        std::fs::write(&zs, &streamed).expect("write");
        let n = streamed.len() as u64;
        assert_eq!(estimate(&desc(n), Compression::Zstd, Some(&zs)), 4 * n);
        assert_eq!(estimate(&desc(10), Compression::None, None), 10);
        assert_eq!(estimate(&desc(10), Compression::Zstd, None), 40);
    }

    #[test]
    fn a_meter_stops_past_its_allowance_and_clones_share_the_count() {
        let m = Meter { at: PathBuf::from("/d/app"), estimate: 10, allowed: 100, written: Rc::new(Cell::new(0)) };
        let other = m.clone();
        let mut sixty = &[1u8; 60][..];
        std::io::copy(&mut m.track(&mut sixty), &mut std::io::sink()).expect("60 of 100");
        let mut more = &[1u8; 60][..];
        let e = std::io::copy(&mut other.track(&mut more), &mut std::io::sink()).expect_err("120 of 100");
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(msg.contains("/d/app") && msg.contains("estimated 10 bytes") && msg.contains("allowed 100"), "{msg}");
        assert_eq!(m.written(), 120);
    }

    #[test]
    fn refuses_with_both_numbers_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = SpaceCheck::default();
        c.add(&dir.path().join("not/yet/there"), u64::MAX / 2, "a huge layer".into()).expect("add");
        let e = c.check().expect_err("cannot fit");
        let msg = e.to_string();
        assert!(msg.contains(&(u64::MAX / 2).to_string()) && msg.contains("bytes are free"), "{msg}");
        assert!(msg.contains(&*dir.path().to_string_lossy()), "{msg}");
        let mut ok = SpaceCheck::default();
        ok.add(dir.path(), 1, "one byte".into()).expect("add");
        ok.check().expect("one byte fits");
    }
}
