//! Byte sizes on the command line: `68719476736`, `64GiB` or `64 GiB`
//! (binary units B, KiB, MiB, GiB, TiB, case-insensitive), so help can show
//! defaults in units people read.

/// Parses a byte size; the error says what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        "tib" => 40,
        _ => return Err(format!("{s:?} is not a size: give bytes, or a number with B, KiB, MiB, GiB or TiB")),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size: it must start with a whole number"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_bytes_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64 GiB"), Ok(crate::plan::limits::DEFAULT_MAX_LAYER_BYTES));
        assert_eq!(parse_size("64gib"), Ok(64 << 30));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("3 B"), Ok(3));
        for bad in ["", "GiB", "1.5GiB", "64 GB", "-1", "99999999999 TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
