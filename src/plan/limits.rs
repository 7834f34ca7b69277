//! What an artifact may ask for: the permission bits it may give what it
//! installs, and the caps on what one layer may expand to.
//!
//! Both are pure rules. Staging applies them while it extracts, so an
//! artifact that exceeds a cap fails before the commit point, naming the cap,
//! and nothing an artifact installs is writable by anyone but its owner.

/// The permission bits an artifact may set: read/write/execute for the
/// owner, read/execute for group and others. Never group- or world-writable,
/// never setuid, setgid or sticky.
pub const ARTIFACT_MODE_MASK: u32 = 0o755;

/// The mode an entry the artifact asks for at `requested` is created with:
/// the artifact's bits within [`ARTIFACT_MODE_MASK`], then the umask.
pub fn installed_mode(requested: u32, umask: u32) -> u32 {
    requested & ARTIFACT_MODE_MASK & !umask
}

/// Default cap on the entries of one tar layer (a Postgres distribution
/// holds a few thousand; a large tree 20,000).
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default cap on the bytes one layer expands to (file contents).
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;
/// Default cap on an entry's path or link name, in bytes (Linux's PATH_MAX).
pub const DEFAULT_MAX_PATH_BYTES: u64 = 4096;
/// Cap on one PAX extended header (the records that carry long names and
/// other metadata); a real one holds a few hundred bytes.
pub const MAX_PAX_HEADER_BYTES: u64 = 1 << 20;

/// Caps on what one layer may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries in one tar layer (`--max-entries`).
    pub max_entries: u64,
    /// Bytes of file content one layer expands to (`--max-layer-bytes`).
    pub max_layer_bytes: u64,
    /// Bytes in an entry's path or link name, long names included (`--max-path-bytes`).
    pub max_path_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_path_bytes: DEFAULT_MAX_PATH_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_lose_write_for_others_and_special_bits() {
        assert_eq!(installed_mode(0o777, 0o022), 0o755);
        assert_eq!(installed_mode(0o777, 0), 0o755);
        assert_eq!(installed_mode(0o2777, 0o022), 0o755);
        assert_eq!(installed_mode(0o4755, 0o022), 0o755);
        assert_eq!(installed_mode(0o1777, 0o022), 0o755);
        assert_eq!(installed_mode(0o666, 0o022), 0o644);
        assert_eq!(installed_mode(0o644, 0o077), 0o600);
        assert_eq!(installed_mode(0o500, 0o022), 0o500);
    }
}
