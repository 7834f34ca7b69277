//! Caps on what one tar layer may expand to, checked on the raw tar stream
//! before the tar reader sees an entry.
//!
//! `tar` 0.4 reads a GNU long name (`L`/`K`) or a PAX header (`x`) whole
//! into memory, whatever size its header claims, so a small gzip layer can
//! expand into gigabytes of "name". [`TarBounds`] follows the 512-byte
//! blocks as they stream past (fed every byte the tar reader reads) and
//! fails on the header that exceeds a cap, before its data is buffered:
//! long names and PAX headers, path and link-name length, entry count, and
//! bytes of file content. Pure: it is fed bytes and never reads any.
//!
//! The caps hold only if this reading and the tar reader's agree on every
//! header, so this module reads headers exactly as `tar` 0.4 does (its
//! `archive.rs`, `header.rs` and `pax.rs`): the checksum, numeric fields
//! (octal up to the first NUL, trimmed; base-256 from a 12-byte field's last
//! 8 bytes), which extension headers count (only with ustar or GNU magic),
//! the first PAX `size` applying to the next entry that is not itself an
//! extension header, and the end at the first all-zero block. What readers
//! disagree on is refused instead: an extension header without ustar magic,
//! a malformed PAX record or a duplicate PAX key, records after an empty
//! line, two long names or two PAX headers for one entry, and a global PAX
//! header (`g`) after extension headers meant for the next entry. The
//! differential fuzz target `tar_differential` (and its proptest in
//! `tests/tar_differential.rs`) checks that the two readings agree.

use super::limits::{Limits, MAX_PAX_HEADER_BYTES};

const BLOCK: u64 = 512;

/// A cap the layer exceeded, as a message naming the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Exceeded(pub String);

enum State {
    /// Collecting a header block.
    Header { buf: Box<[u8; 512]>, filled: usize },
    /// Passing an entry's data and padding; `keep` collects the first
    /// `size` bytes of a PAX header (bounded by the checks above).
    Data { remaining: u64, size: u64, keep: Option<Vec<u8>> },
    /// After the end-of-archive block: the tar reader reads no further.
    Done,
}

/// Extension headers seen for the next entry.
#[derive(Default)]
struct Pending {
    long_name: bool,
    long_link: bool,
    /// A PAX header (`x`) was seen, with this `size` record if it had one.
    pax: Option<Option<u64>>,
}

impl Pending {
    fn any(&self) -> bool {
        self.long_name || self.long_link || self.pax.is_some()
    }
}

/// Follows one tar stream's headers and enforces [`Limits`] on it.
pub struct TarBounds {
    limits: Limits,
    state: State,
    entries: u64,
    expanded: u64,
    pending: Pending,
}

fn refused(why: &str) -> Exceeded {
    Exceeded(format!("{why}; tar readers disagree on such a layer, so stagehand refuses it"))
}

/// A numeric header field read as `tar` 0.4 reads it: base-256 when the
/// first byte's high bit is set (of a 12-byte field only its last 8 bytes
/// count), else octal text up to the first NUL, whitespace trimmed.
fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let (mut v, skip) = if field.len() == 8 { (u64::from(field[0] ^ 0x80), 1) } else { (0, field.len() - 8) };
        for &b in &field[skip..] {
            v = (v << 8) | u64::from(b);
        }
        return Some(v);
    }
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

/// True if the header has ustar or GNU magic (what `tar` calls recognized).
fn recognized(h: &[u8; 512]) -> bool {
    let (magic, version) = (&h[257..263], &h[263..265]);
    (magic == b"ustar\0" && version == b"00") || (magic == b"ustar " && version == b" \0")
}

/// One PAX record: key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The `key=value` records of a PAX extended header, split as `tar` 0.4
/// splits them (one per line, ending at the first empty line); `Err` if
/// any record is malformed or anything follows that empty line.
fn pax_records(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, ()> {
    let mut out = Vec::new();
    let mut lines = data.split(|b| *b == b'\n');
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let sp = line.iter().position(|b| *b == b' ').ok_or(())?;
        let len = std::str::from_utf8(&line[..sp]).ok().and_then(|s| s.parse::<usize>().ok()).ok_or(())?;
        if line.len() + 1 != len {
            return Err(());
        }
        let kv = &line[sp + 1..];
        let eq = kv.iter().position(|b| *b == b'=').ok_or(())?;
        out.push((&kv[..eq], &kv[eq + 1..]));
    }
    if lines.any(|l| !l.is_empty()) {
        return Err(());
    }
    Ok(out)
}

impl TarBounds {
    pub fn new(limits: Limits) -> TarBounds {
        TarBounds {
            limits,
            state: State::Header { buf: Box::new([0; 512]), filled: 0 },
            entries: 0,
            expanded: 0,
            pending: Pending::default(),
        }
    }

    /// Entries seen so far: every header the tar reader yields as an entry
    /// (`L`, `K` and `x` extension headers not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes of file content seen so far.
    pub fn expanded(&self) -> u64 {
        self.expanded
    }

    /// Feeds the next bytes of the tar stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Exceeded> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { buf, filled } => {
                    let n = (512 - *filled).min(bytes.len());
                    buf[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled == 512 {
                        let header = std::mem::replace(buf, Box::new([0; 512]));
                        *filled = 0;
                        self.header(&header)?;
                    }
                }
                State::Data { remaining, size, keep } => {
                    let n = (*remaining).min(bytes.len() as u64) as usize;
                    if let Some(v) = keep {
                        let want = (*size as usize).saturating_sub(v.len()).min(n);
                        v.extend_from_slice(&bytes[..want]);
                    }
                    *remaining -= n as u64;
                    bytes = &bytes[n..];
                    if *remaining == 0 {
                        let done =
                            std::mem::replace(&mut self.state, State::Header { buf: Box::new([0; 512]), filled: 0 });
                        if let State::Data { keep: Some(data), .. } = done {
                            self.pax(&data)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8; 512]) -> Result<(), Exceeded> {
        if h.iter().all(|b| *b == 0) {
            // End of archive: the tar reader stops here.
            self.state = State::Done;
            return Ok(());
        }
        let sum: u32 = h[..148].iter().chain(&h[156..]).map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
        if parse_numeric(&h[148..156]).map(|c| c as u32) != Some(sum) {
            return Err(Exceeded("a tar header's checksum does not match".into()));
        }
        let kind = h[156];
        let Some(header_size) = parse_numeric(&h[124..136]) else {
            return Err(Exceeded("a tar header has an unreadable size field".into()));
        };
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if extension && !recognized(h) {
            return Err(refused(&format!("a tar extension header (type {:?}) has no ustar magic", char::from(kind))));
        }
        let path_cap = self.limits.max_path_bytes;
        let mut size = header_size;
        let mut keep = None;
        match kind {
            b'L' | b'K' => {
                let what = if kind == b'L' { "path" } else { "link name" };
                let seen = if kind == b'L' { &mut self.pending.long_name } else { &mut self.pending.long_link };
                if std::mem::replace(seen, true) {
                    return Err(refused(&format!("two GNU long {what} headers describe one entry")));
                }
                // The long name ends with a NUL.
                if size > path_cap.saturating_add(1) {
                    return Err(Exceeded(format!(
                        "an entry's GNU long {what} is {size} bytes, over the --max-path-bytes cap of {path_cap}"
                    )));
                }
            }
            b'x' => {
                if self.pending.pax.is_some() {
                    return Err(refused("two PAX headers describe one entry"));
                }
                if size > MAX_PAX_HEADER_BYTES {
                    return Err(Exceeded(format!(
                        "a PAX extended header is {size} bytes, over the cap of {MAX_PAX_HEADER_BYTES}"
                    )));
                }
                self.pending.pax = Some(None);
                keep = Some(Vec::with_capacity(size as usize));
            }
            b'S' => return Err(Exceeded("the layer holds a GNU sparse file, which stagehand does not install".into())),
            _ => {
                if kind == b'g' {
                    // tar yields a global header as an entry, and would
                    // hand it the extensions meant for the next entry.
                    if self.pending.any() {
                        return Err(refused("a global PAX header follows extension headers meant for an entry"));
                    }
                    if size > MAX_PAX_HEADER_BYTES {
                        return Err(Exceeded(format!(
                            "a PAX global header is {size} bytes, over the cap of {MAX_PAX_HEADER_BYTES}"
                        )));
                    }
                }
                let pending = std::mem::take(&mut self.pending);
                if let Some(Some(pax_size)) = pending.pax {
                    size = pax_size;
                }
                self.entries += 1;
                if self.entries > self.limits.max_entries {
                    return Err(Exceeded(format!(
                        "the layer holds more than {} entries, the --max-entries cap",
                        self.limits.max_entries
                    )));
                }
                if matches!(kind, b'0' | b'\0' | b'7') {
                    self.expanded = self.expanded.saturating_add(size);
                    if self.expanded > self.limits.max_layer_bytes {
                        return Err(Exceeded(format!(
                            "the layer expands to more than {} bytes, the --max-layer-bytes cap",
                            self.limits.max_layer_bytes
                        )));
                    }
                }
            }
        }
        let padded = size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1));
        let Some(remaining) = padded else {
            return Err(Exceeded(format!("a tar entry claims {size} bytes")));
        };
        if remaining > 0 {
            self.state = State::Data { remaining, size, keep };
        } else if let Some(data) = keep {
            self.pax(&data)?;
        }
        Ok(())
    }

    /// A PAX header's records: caps on `path` and `linkpath`, and `size`
    /// for the next entry.
    fn pax(&mut self, data: &[u8]) -> Result<(), Exceeded> {
        let records = pax_records(data).map_err(|()| refused("a PAX header has a malformed record"))?;
        let cap = self.limits.max_path_bytes;
        let mut seen: Vec<&[u8]> = Vec::with_capacity(records.len());
        for (key, value) in records {
            if seen.contains(&key) {
                return Err(refused(&format!("a PAX header repeats the key {:?}", String::from_utf8_lossy(key))));
            }
            seen.push(key);
            match key {
                b"path" | b"linkpath" if value.len() as u64 > cap => {
                    let what = if key == b"path" { "path" } else { "link name" };
                    return Err(Exceeded(format!(
                        "an entry's PAX {what} is {} bytes, over the --max-path-bytes cap of {cap}",
                        value.len()
                    )));
                }
                b"size" => {
                    let size = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
                    let Some(size) = size else {
                        return Err(refused("a PAX size record is not a number"));
                    };
                    self.pending.pax = Some(Some(size));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        with_checksum(h, kind, true)
    }

    /// `h` with name, type, magic (or none) and a correct checksum.
    fn with_checksum(mut h: [u8; 512], kind: u8, magic: bool) -> [u8; 512] {
        h[..4].copy_from_slice(b"name");
        h[156] = kind;
        if magic {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn pax_record(k: &str, v: &str) -> String {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        format!("{n}{body}")
    }

    fn pax_header(records: &str) -> Vec<u8> {
        let mut tar = header(b'x', records.len() as u64).to_vec();
        tar.extend_from_slice(records.as_bytes());
        tar.resize(512 + records.len().div_ceil(512) * 512, 0);
        tar
    }

    #[test]
    fn numbers_are_read_as_the_tar_crate_reads_them() {
        // Up to the first NUL (before: every NUL and space dropped, 0o17777777777).
        assert_eq!(parse_numeric(b"1\x007777777777"), Some(1));
        assert_eq!(parse_numeric(b" 17 \0\0\0\0\0\0\0\0"), Some(0o17));
        assert_eq!(parse_numeric(b"1 7\0\0\0\0\0\0\0\0\0"), None);
        // Base-256 in 12 bytes: only the last 8 count.
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[1] = 0x7f;
        f[11] = 1;
        assert_eq!(parse_numeric(&f), Some(1));
    }

    #[test]
    fn ambiguous_headers_are_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("duplicate PAX size", pax_header(&(pax_record("size", "1") + &pax_record("size", "99999")))),
            ("malformed PAX record", pax_header("7 a=b\n")),
            ("records after an empty line", pax_header(&(pax_record("a", "b") + "\n" + &pax_record("size", "9")))),
            ("x then g", [pax_header(&pax_record("size", "1")), header(b'g', 0).to_vec()].concat()),
            ("x without magic", with_checksum([0; 512], b'x', false).to_vec()),
            ("L without magic", with_checksum([0; 512], b'L', false).to_vec()),
            ("two long names", [header(b'L', 0), header(b'L', 0)].concat()),
            ("bad checksum", {
                let mut h = header(b'0', 0);
                h[0] = b'X';
                h.to_vec()
            }),
        ];
        for (case, tar) in cases {
            let mut b = TarBounds::new(Limits::default());
            assert!(b.feed(&tar).is_err(), "{case} was accepted");
        }
    }

    #[test]
    fn nothing_after_the_end_marker_counts() {
        let mut tar = header(b'0', 0).to_vec();
        tar.extend_from_slice(&[0u8; 512]);
        tar.extend_from_slice(&header(b'0', 1 << 30));
        let mut b = TarBounds::new(Limits { max_layer_bytes: 10, ..Limits::default() });
        feed_all(&mut b, &tar, 100).expect("the tar reader stops at the zero block");
        assert_eq!(b.entries(), 1);
    }

    fn feed_all(b: &mut TarBounds, bytes: &[u8], step: usize) -> Result<(), Exceeded> {
        bytes.chunks(step).try_for_each(|c| b.feed(c))
    }

    #[test]
    fn huge_long_name_fails_at_its_header() {
        let mut b = TarBounds::new(Limits::default());
        let err = b.feed(&header(b'L', 512 << 20)).expect_err("refused");
        assert!(err.0.contains("--max-path-bytes"), "{err}");
    }

    #[test]
    fn counts_entries_and_bytes_whatever_the_chunking() {
        let mut tar = Vec::new();
        for _ in 0..3 {
            tar.extend_from_slice(&header(b'0', 700));
            tar.extend_from_slice(&[7u8; 1024]);
        }
        tar.extend_from_slice(&[0u8; 1024]);
        for step in [1, 7, 512, 4096] {
            let mut b = TarBounds::new(Limits::default());
            feed_all(&mut b, &tar, step).expect("fits");
            assert_eq!((b.entries(), b.expanded()), (3, 2100), "step {step}");
            let mut small = TarBounds::new(Limits { max_entries: 2, ..Limits::default() });
            assert!(feed_all(&mut small, &tar, step).expect_err("3 > 2").0.contains("--max-entries"));
            let mut bytes = TarBounds::new(Limits { max_layer_bytes: 1400, ..Limits::default() });
            assert!(feed_all(&mut bytes, &tar, step).expect_err("2100 > 1400").0.contains("--max-layer-bytes"));
        }
    }

    #[test]
    fn pax_size_and_path_are_followed() {
        let record = pax_record;
        let pax = record("size", "1000");
        let mut tar = header(b'x', pax.len() as u64).to_vec();
        tar.extend_from_slice(pax.as_bytes());
        tar.resize(1024, 0);
        // The ustar size field says 0; PAX says 1000 bytes follow.
        tar.extend_from_slice(&header(b'0', 0));
        tar.extend_from_slice(&[1u8; 1024]);
        tar.extend_from_slice(&header(b'0', 10));
        tar.extend_from_slice(&[2u8; 512]);
        let mut b = TarBounds::new(Limits::default());
        feed_all(&mut b, &tar, 100).expect("fits");
        assert_eq!((b.entries(), b.expanded()), (2, 1010));

        let long = record("path", &"a".repeat(5000));
        let mut tar = header(b'x', long.len() as u64).to_vec();
        tar.extend_from_slice(long.as_bytes());
        tar.resize(512 + long.len().div_ceil(512) * 512, 0);
        let mut b = TarBounds::new(Limits::default());
        assert!(feed_all(&mut b, &tar, 333).expect_err("long").0.contains("PAX path is 5000 bytes"));
    }

    #[test]
    fn base256_sizes_parse() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        f[10] = 1;
        assert_eq!(parse_numeric(&f), Some(261));
        assert_eq!(parse_numeric(b"00000001000\0"), Some(512));
    }
}
