//! Digest- and size-checking of blob streams while they are read.
//!
//! This module owns [`VerifyingReader`], which hashes every byte it passes on
//! and turns a wrong size or sha256 into an `io::Error` (kind `InvalidData`)
//! that wraps a [`SourceError`]. It never buffers a whole blob, never decides
//! what to do with the bytes, and never reports success before EOF: a blob is
//! verified only once the reader has returned `Ok(0)`.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::{Descriptor, SourceError};

/// How a blob failed verification; kept so that every later read fails too.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mismatch {
    Size { actual: u64 },
    Digest { actual: String },
}

/// Wraps a reader of one blob and checks its size and sha256.
///
/// `read` returns at most the expected number of bytes and hashes them. If
/// the inner reader has more, or ends early, or the bytes hash to another
/// digest, `read` fails with `io::ErrorKind::InvalidData`; the error's inner
/// value is the [`SourceError`] (`SizeMismatch` or `DigestMismatch`), so
/// `err.into_inner()` can be downcast to it. After a mismatch every further
/// read fails the same way.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected_digest: String,
    expected_size: u64,
    what: String,
    read_so_far: u64,
    mismatch: Option<Mismatch>,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// `expected_digest` is `sha256:<hex>`; `what` names the blob in errors.
    pub fn new(inner: R, expected_digest: &str, expected_size: u64, what: impl Into<String>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected_digest: expected_digest.to_string(),
            expected_size,
            what: what.into(),
            read_so_far: 0,
            mismatch: None,
            verified: false,
        }
    }

    /// A reader checked against `desc`, labelled by [`blob_label`].
    pub fn for_descriptor(inner: R, desc: &Descriptor) -> Self {
        Self::new(inner, &desc.digest, desc.size, blob_label(desc))
    }

    /// True once EOF was reached with the right size and digest.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// Bytes passed on so far.
    pub fn bytes_read(&self) -> u64 {
        self.read_so_far
    }

    /// The error for a mismatch, as a `SourceError`.
    fn source_error(&self, mismatch: &Mismatch) -> SourceError {
        match mismatch {
            Mismatch::Size { actual } => {
                SourceError::SizeMismatch { what: self.what.clone(), expected: self.expected_size, actual: *actual }
            }
            Mismatch::Digest { actual } => SourceError::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected_digest.clone(),
                actual: actual.clone(),
            },
        }
    }

    fn fail(&mut self, mismatch: Mismatch) -> io::Error {
        let err = io::Error::new(io::ErrorKind::InvalidData, self.source_error(&mismatch));
        self.mismatch = Some(mismatch);
        err
    }

    /// Called when the inner reader reports EOF.
    fn finish(&mut self) -> io::Result<usize> {
        if self.read_so_far != self.expected_size {
            return Err(self.fail(Mismatch::Size { actual: self.read_so_far }));
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.expected_digest {
            return Err(self.fail(Mismatch::Digest { actual }));
        }
        self.verified = true;
        Ok(0)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.mismatch {
            return Err(io::Error::new(io::ErrorKind::InvalidData, self.source_error(m)));
        }
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        let remaining = self.expected_size.saturating_sub(self.read_so_far);
        if remaining == 0 {
            // Every expected byte has been passed on: the inner reader must
            // now be at EOF. Probe it with the caller's buffer.
            let n = self.inner.read(buf)?;
            if n == 0 {
                return self.finish();
            }
            // `actual` is a lower bound: we do not read an overlong blob to its end.
            let actual = self.expected_size.saturating_add(n as u64);
            return Err(self.fail(Mismatch::Size { actual }));
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        // `min` guards against an inner reader that claims more than it was given.
        let n = self.inner.read(&mut buf[..want])?.min(want);
        if n == 0 {
            return self.finish();
        }
        self.hasher.update(&buf[..n]);
        self.read_so_far += n as u64;
        Ok(n)
    }
}

/// How a blob is named in messages: `layer "TITLE" (sha256:…)` if it has a
/// title annotation, else `blob sha256:…`.
pub fn blob_label(desc: &Descriptor) -> String {
    match desc.title() {
        Some(title) => format!("layer {title:?} ({})", desc.digest),
        None => format!("blob {}", desc.digest),
    }
}

/// Reads `r` to EOF and returns how many bytes that took. Use it after a
/// consumer (a tar reader, say) stops early, to force the final size and
/// digest check of a [`VerifyingReader`].
pub fn drain(r: &mut dyn Read) -> io::Result<u64> {
    io::copy(r, &mut io::sink())
}

/// If `err` wraps a [`SourceError`] (as [`VerifyingReader`] errors do), takes
/// it out; otherwise wraps `err` as `SourceError::Io` labelled `what`.
pub fn into_source_error(err: io::Error, what: &str) -> SourceError {
    let wraps_source_error = err.get_ref().is_some_and(|inner| inner.is::<SourceError>());
    if !wraps_source_error {
        return SourceError::Io { what: what.to_string(), source: err };
    }
    let kind = err.kind();
    let source = match err.into_inner().map(|inner| inner.downcast::<SourceError>()) {
        Some(Ok(source_error)) => return *source_error,
        Some(Err(other)) => io::Error::new(kind, other),
        None => io::Error::from(kind),
    };
    SourceError::Io { what: what.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn read_all(data: &[u8], expected: &[u8]) -> (Vec<u8>, io::Result<usize>) {
        let mut r = VerifyingReader::new(Cursor::new(data.to_vec()), &digest_of(expected), expected.len() as u64, "t");
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out);
        (out, res)
    }

    fn source_error_of(err: io::Error) -> SourceError {
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        into_source_error(err, "x")
    }

    const BLOB: &[u8] = b"hello, stagehand blob\n";

    #[test]
    fn good_blob_passes() {
        let mut r = VerifyingReader::new(Cursor::new(BLOB), &digest_of(BLOB), BLOB.len() as u64, "t");
        let mut out = Vec::new();
        assert_eq!(r.read_to_end(&mut out).unwrap(), BLOB.len());
        assert_eq!(out, BLOB);
        assert!(r.is_verified());
        assert_eq!(r.bytes_read(), BLOB.len() as u64);
        // Reads after verification keep returning EOF.
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn empty_blob_passes() {
        let (out, res) = read_all(b"", b"");
        assert_eq!(res.unwrap(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn one_flipped_byte_fails_with_digest_mismatch() {
        let mut bad = BLOB.to_vec();
        bad[3] ^= 0x01;
        let (_, res) = read_all(&bad, BLOB);
        let err = res.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("t: digest mismatch: expected {}, got {}", digest_of(BLOB), digest_of(&bad))
        );
        assert!(matches!(source_error_of(err), SourceError::DigestMismatch { .. }));
    }

    #[test]
    fn truncated_fails_with_size_mismatch() {
        let (_, res) = read_all(&BLOB[..BLOB.len() - 1], BLOB);
        let err = res.unwrap_err();
        assert_eq!(err.to_string(), format!("t: size mismatch: expected {} bytes, got {}", BLOB.len(), BLOB.len() - 1));
        assert!(matches!(source_error_of(err), SourceError::SizeMismatch { .. }));
    }

    #[test]
    fn longer_fails_and_never_passes_extra_bytes() {
        let mut long = BLOB.to_vec();
        long.extend_from_slice(b"EXTRA");
        let mut r = VerifyingReader::new(Cursor::new(long), &digest_of(BLOB), BLOB.len() as u64, "t");
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, BLOB, "only the expected bytes are passed on");
        assert!(!r.is_verified());
        match source_error_of(err) {
            SourceError::SizeMismatch { expected, actual, .. } => {
                assert_eq!(expected, BLOB.len() as u64);
                assert!(actual > expected);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn longer_with_right_prefix_is_caught_even_by_exact_reads() {
        // A consumer that reads exactly `size` bytes and stops sees no error;
        // `drain` then forces the check.
        let mut long = BLOB.to_vec();
        long.push(b'!');
        let mut r = VerifyingReader::new(Cursor::new(long), &digest_of(BLOB), BLOB.len() as u64, "t");
        let mut exact = vec![0u8; BLOB.len()];
        r.read_exact(&mut exact).unwrap();
        assert_eq!(exact, BLOB);
        assert!(drain(&mut r).is_err());
    }

    #[test]
    fn errors_are_sticky() {
        let mut bad = BLOB.to_vec();
        bad[0] ^= 0xff;
        let mut r = VerifyingReader::new(Cursor::new(bad), &digest_of(BLOB), BLOB.len() as u64, "t");
        let first = drain(&mut r).unwrap_err().to_string();
        for _ in 0..3 {
            let again = r.read(&mut [0u8; 16]).unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::InvalidData);
            assert_eq!(again.to_string(), first);
        }
    }

    #[test]
    fn drain_counts_bytes_and_verifies() {
        let mut r = VerifyingReader::new(Cursor::new(BLOB), &digest_of(BLOB), BLOB.len() as u64, "t");
        let mut head = [0u8; 5];
        r.read_exact(&mut head).unwrap();
        assert_eq!(drain(&mut r).unwrap(), (BLOB.len() - 5) as u64);
        assert!(r.is_verified());
        assert_eq!(drain(&mut Cursor::new(vec![7u8; 10_000])).unwrap(), 10_000);
    }

    #[test]
    fn zero_length_reads_are_not_eof() {
        let mut r = VerifyingReader::new(Cursor::new(BLOB), &digest_of(BLOB), BLOB.len() as u64, "t");
        assert_eq!(r.read(&mut []).unwrap(), 0);
        assert!(!r.is_verified());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, BLOB);
    }

    #[test]
    fn labels_name_title_and_digest() {
        let mut desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: digest_of(BLOB),
            size: BLOB.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        assert_eq!(blob_label(&desc), format!("blob {}", desc.digest));
        desc.annotations.insert(crate::source::ANNOTATION_TITLE.into(), "a.so".into());
        assert_eq!(blob_label(&desc), format!("layer \"a.so\" ({})", desc.digest));
        let mut bad = BLOB.to_vec();
        bad[1] ^= 1;
        let mut r = VerifyingReader::for_descriptor(Cursor::new(bad), &desc);
        let msg = drain(&mut r).unwrap_err().to_string();
        assert!(msg.starts_with("layer \"a.so\" (sha256:") && msg.contains("digest mismatch"), "{msg}");
    }

    #[test]
    fn into_source_error_keeps_plain_io_errors() {
        let e = into_source_error(io::Error::new(io::ErrorKind::NotFound, "gone"), "blob x");
        match e {
            SourceError::Io { what, source } => {
                assert_eq!(what, "blob x");
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other}"),
        }
    }
}
