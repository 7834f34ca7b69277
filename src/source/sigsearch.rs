//! How the signature finders walk what they find: newest first, bounded by
//! bytes read and time spent, never by how many signatures come before a
//! valid one.
//!
//! This module owns the order ([`newest_first`] for referrers, layer order
//! reversed for a `.sig` manifest, where cosign appends) and the
//! [`SearchBudget`] one search spends. It reads nothing itself; the layout
//! and registry finders ask it before each read. Deciding which signature
//! verifies is `signature::decide`'s job: it tries every candidate read, so
//! an invalid one never hides a valid one.

use std::time::{Duration, Instant};

use super::Descriptor;

/// Signature payload bytes one search reads at most, all candidates together.
pub const MAX_PAYLOAD_TOTAL: u64 = 4 << 20;
/// Signature manifest (and referrers index) bytes one search reads at most.
pub const MAX_MANIFEST_TOTAL: u64 = 16 << 20;
/// How long one search may take (each request also has its own timeout).
pub const SEARCH_DEADLINE: Duration = Duration::from_secs(120);
/// The annotation a referrer's descriptor may carry with its creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// What one search may still spend.
#[derive(Debug)]
pub struct SearchBudget {
    payload_left: u64,
    manifest_left: u64,
    deadline: Instant,
    /// Why the search stopped early, once it has.
    stopped: Option<String>,
}

impl Default for SearchBudget {
    fn default() -> Self {
        SearchBudget::new(MAX_PAYLOAD_TOTAL, MAX_MANIFEST_TOTAL, SEARCH_DEADLINE)
    }
}

impl SearchBudget {
    pub fn new(payload: u64, manifest: u64, time: Duration) -> SearchBudget {
        SearchBudget { payload_left: payload, manifest_left: manifest, deadline: Instant::now() + time, stopped: None }
    }

    /// Takes `size` payload bytes before they are read; false (and the
    /// search is over) when they do not fit or the time is up.
    pub fn take_payload(&mut self, size: u64) -> bool {
        self.take(size, true)
    }

    /// Takes `size` manifest bytes (a descriptor's size, or the cap of an
    /// unsized read) before they are read; false when the search is over.
    pub fn take_manifest(&mut self, size: u64) -> bool {
        self.take(size, false)
    }

    fn take(&mut self, size: u64, payload: bool) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        if Instant::now() >= self.deadline {
            self.stopped = Some(format!("the search stopped after {} s", SEARCH_DEADLINE.as_secs()));
            return false;
        }
        let (left, cap, what) = if payload {
            (&mut self.payload_left, MAX_PAYLOAD_TOTAL, "signature payloads")
        } else {
            (&mut self.manifest_left, MAX_MANIFEST_TOTAL, "signature manifests")
        };
        if size > *left {
            self.stopped = Some(format!("the search stopped after reading {} MiB of {what}", cap >> 20));
            return false;
        }
        *left -= size;
        true
    }

    /// Why the search stopped before it had read everything, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }
}

/// Referrers in the order to check them: those with a creation time newest
/// first, then the rest in reverse listing order (registries list in push
/// order, and the newest signature is the likeliest to be by today's key).
pub fn newest_first<T>(mut items: Vec<T>, desc: impl Fn(&T) -> &Descriptor) -> Vec<T> {
    items.reverse();
    // RFC 3339 times in UTC ("…Z", as the OCI spec asks) sort as strings.
    let created = |t: &T| desc(t).annotations.get(ANNOTATION_CREATED).cloned();
    items.sort_by_key(|t| std::cmp::Reverse(created(t)));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u8, created: Option<&str>) -> Descriptor {
        let mut d: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "m", "digest": format!("sha256:{}", n.to_string().repeat(64)), "size": 1
        }))
        .expect("descriptor");
        if let Some(c) = created {
            d.annotations.insert(ANNOTATION_CREATED.into(), c.into());
        }
        d
    }

    #[test]
    fn created_times_first_newest_first_then_reverse_listing() {
        let listed = vec![
            desc(1, None),
            desc(2, Some("2026-01-01T00:00:00Z")),
            desc(3, None),
            desc(4, Some("2026-03-01T00:00:00Z")),
            desc(5, Some("2025-12-31T23:59:59Z")),
        ];
        let order: Vec<String> = newest_first(listed, |d| d).into_iter().map(|d| d.digest[7..8].to_string()).collect();
        assert_eq!(order, ["4", "2", "5", "3", "1"]);
    }

    #[test]
    fn budgets_stop_on_bytes_and_time() {
        let mut b = SearchBudget::new(10, 5, SEARCH_DEADLINE);
        assert!(b.take_payload(6) && b.take_payload(4) && b.stopped().is_none());
        assert!(!b.take_payload(1));
        assert!(b.stopped().is_some_and(|s| s.contains("MiB of signature payloads")));
        assert!(!b.take_manifest(1), "a stopped search stays stopped");
        let mut late = SearchBudget::new(10, 10, Duration::ZERO);
        assert!(!late.take_manifest(1));
        assert!(late.stopped().is_some_and(|s| s.contains("stopped after 120 s")));
    }
}
