//! Digests as people type them: `sha256:a46b5619`, `a46b5619`, or the whole
//! digest. Like git and docker, a unique prefix of at least
//! [`MIN_PREFIX_HEX`] hex digits names one of a package's versions; an
//! ambiguous or unknown one is refused with the candidates. Pure: no I/O.

/// The fewest hex digits a prefix may have (git's short ids have 7, as here).
pub const MIN_PREFIX_HEX: usize = 7;

/// Why a typed digest names no single candidate.
#[derive(Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// Not `[ALGO:]HEX` with at least [`MIN_PREFIX_HEX`] hex digits.
    Malformed,
    /// No candidate starts with it.
    Unknown,
    /// More than one candidate starts with it (listed).
    Ambiguous(Vec<String>),
}

/// The one candidate (full `algo:hex` digests) that `given` names.
pub fn pick<'a>(given: &str, candidates: &[&'a str]) -> Result<&'a str, PrefixError> {
    let (algo, hex) = match given.split_once(':') {
        Some((a, h)) => (Some(a), h),
        None => (None, given),
    };
    if hex.len() < MIN_PREFIX_HEX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PrefixError::Malformed);
    }
    let hex = hex.to_ascii_lowercase();
    let mut found: Vec<&'a str> = Vec::new();
    for c in candidates {
        let Some((c_algo, c_hex)) = c.split_once(':') else { continue };
        if algo.is_none_or(|a| a == c_algo) && c_hex.starts_with(&hex) && !found.contains(c) {
            found.push(c);
        }
    }
    match found.as_slice() {
        [] => Err(PrefixError::Unknown),
        [one] => Ok(one),
        many => Err(PrefixError::Ambiguous(many.iter().map(|s| s.to_string()).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:a46b56199b99aaaa";
    const B: &str = "sha256:a46b5619ffffbbbb";
    const C: &str = "sha256:5cdbcdf1cccccccc";

    #[test]
    fn a_unique_prefix_names_its_digest() {
        assert_eq!(pick("sha256:5cdbcdf1", &[A, C]), Ok(C));
        assert_eq!(pick("5CDBCDF1", &[A, C]), Ok(C));
        assert_eq!(pick(A, &[A, B, C]), Ok(A));
        assert_eq!(pick("a46b56199", &[A, B, C]), Ok(A));
    }

    #[test]
    fn ambiguous_unknown_and_short_prefixes_are_refused() {
        assert_eq!(pick("a46b5619", &[A, B, C]), Err(PrefixError::Ambiguous(vec![A.into(), B.into()])));
        assert_eq!(pick("deadbeef", &[A, B, C]), Err(PrefixError::Unknown));
        assert_eq!(pick("sha512:5cdbcdf1", &[A, C]), Err(PrefixError::Unknown));
        assert_eq!(pick("5cdbcdf", &[C]), Ok(C));
        assert_eq!(pick("5cdbcd", &[C]), Err(PrefixError::Malformed));
        assert_eq!(pick("sha256:xyzxyzxy", &[C]), Err(PrefixError::Malformed));
        assert_eq!(pick("", &[C]), Err(PrefixError::Malformed));
    }
}
