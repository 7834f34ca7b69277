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
    /// `size` bytes of an extension header (bounded by the checks above).
    Data { remaining: u64, size: u64, keep: Option<(u8, Vec<u8>)> },
}

/// Follows one tar stream's headers and enforces [`Limits`] on it.
pub struct TarBounds {
    limits: Limits,
    state: State,
    entries: u64,
    expanded: u64,
    /// `size` from the last PAX header, for the next real entry.
    pax_size: Option<u64>,
}

fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian, high bit of the first byte is the marker.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field.iter().copied().filter(|b| *b != 0 && *b != b' ').collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `key=value` records of a PAX extended header.
fn pax_records(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|b| *b == b' ') else { break };
        let Some(len) = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse::<usize>().ok()) else { break };
        if len <= sp || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            out.push((&record[..eq], &record[eq + 1..]));
        }
        rest = &rest[len..];
    }
    out
}

impl TarBounds {
    pub fn new(limits: Limits) -> TarBounds {
        TarBounds {
            limits,
            state: State::Header { buf: Box::new([0; 512]), filled: 0 },
            entries: 0,
            expanded: 0,
            pax_size: None,
        }
    }

    /// Entries seen so far (extension headers not counted).
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
                    if let Some((_, v)) = keep {
                        let want = (*size as usize).saturating_sub(v.len()).min(n);
                        v.extend_from_slice(&bytes[..want]);
                    }
                    *remaining -= n as u64;
                    bytes = &bytes[n..];
                    if *remaining == 0 {
                        let done =
                            std::mem::replace(&mut self.state, State::Header { buf: Box::new([0; 512]), filled: 0 });
                        if let State::Data { keep: Some((kind, data)), .. } = done {
                            self.extension(kind, &data)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8; 512]) -> Result<(), Exceeded> {
        if h.iter().all(|b| *b == 0) {
            return Ok(()); // end-of-archive marker (the tar reader stops there)
        }
        let kind = h[156];
        let Some(mut size) = parse_numeric(&h[124..136]) else {
            return Err(Exceeded("a tar header has an unreadable size field".into()));
        };
        let path_cap = self.limits.max_path_bytes;
        let keep = match kind {
            b'L' | b'K' => {
                let what = if kind == b'L' { "path" } else { "link name" };
                // The long name ends with a NUL.
                if size > path_cap.saturating_add(1) {
                    return Err(Exceeded(format!(
                        "an entry's GNU long {what} is {size} bytes, over the --max-path-bytes cap of {path_cap}"
                    )));
                }
                Some((kind, Vec::with_capacity(size as usize)))
            }
            b'x' | b'g' => {
                if size > MAX_PAX_HEADER_BYTES {
                    return Err(Exceeded(format!(
                        "a PAX extended header is {size} bytes, over the cap of {MAX_PAX_HEADER_BYTES}"
                    )));
                }
                (kind == b'x').then(|| (kind, Vec::with_capacity(size as usize)))
            }
            b'S' => return Err(Exceeded("the layer holds a GNU sparse file, which stagehand does not install".into())),
            _ => {
                if let Some(s) = self.pax_size.take() {
                    size = s;
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
                None
            }
        };
        let padded = size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1));
        let Some(remaining) = padded else {
            return Err(Exceeded(format!("a tar entry claims {size} bytes")));
        };
        if remaining > 0 {
            self.state = State::Data { remaining, size, keep };
        } else if let Some((kind, data)) = keep {
            self.extension(kind, &data)?;
        }
        Ok(())
    }

    fn extension(&mut self, kind: u8, data: &[u8]) -> Result<(), Exceeded> {
        if kind != b'x' {
            return Ok(());
        }
        let cap = self.limits.max_path_bytes;
        for (key, value) in pax_records(data) {
            match key {
                b"path" | b"linkpath" if value.len() as u64 > cap => {
                    let what = if key == b"path" { "path" } else { "link name" };
                    return Err(Exceeded(format!(
                        "an entry's PAX {what} is {} bytes, over the --max-path-bytes cap of {cap}",
                        value.len()
                    )));
                }
                b"size" => {
                    self.pax_size = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
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
        h[..4].copy_from_slice(b"name");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h
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
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut n = body.len() + 1;
            while n != body.len() + n.to_string().len() {
                n = body.len() + n.to_string().len();
            }
            format!("{n}{body}")
        };
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
