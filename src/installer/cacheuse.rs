//! The blob cache as the installer sees it: which blobs installed
//! packages, kept versions and pending transactions use, and pruning the
//! rest.

use std::collections::BTreeSet;

use super::{CacheEntry, CacheListing, Installer, Result};
use crate::source;

impl Installer {
    /// The blob cache's contents, each blob with the installed packages and
    /// pending transactions that reference it.
    pub fn cache_list(&self) -> Result<CacheListing> {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let contents = cache.list()?;
        let users = self.cache_users(&cache)?;
        let blobs = contents
            .blobs
            .into_iter()
            .map(|b| CacheEntry { used_by: users.get(&b.digest).cloned().unwrap_or_default(), blob: b })
            .collect::<Vec<_>>();
        let total_bytes =
            blobs.iter().map(|b| b.blob.size).sum::<u64>() + contents.partials.iter().map(|p| p.size).sum::<u64>();
        Ok(CacheListing { dir: cache.root().display().to_string(), blobs, partials: contents.partials, total_bytes })
    }

    /// Removes every cached blob that no installed package and no pending
    /// transaction references, and every partial download.
    pub fn cache_prune(&self, dry_run: bool) -> Result<source::cache::PruneReport> {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        let mut keep: BTreeSet<String> = self.cache_users(&cache)?.into_keys().collect();
        if let Some(aside) = self.set_aside_journal() {
            tracing::warn!(
                journal = %aside.display(),
                "a set-aside journal may name versions kept in the cache (what --adopt replaced, what rollback \
                 restores) that stagehand can no longer read: no complete blob is removed while it is there; \
                 delete it once nothing in it is needed, then prune again"
            );
            keep.extend(cache.list()?.blobs.into_iter().map(|b| b.digest));
        }
        Ok(cache.prune(&keep, dry_run)?)
    }

    /// A journal `repair --set-aside-journal` moved aside (`journal.damaged-*`),
    /// if any is in the state dir. Its kept versions may be the only copy of
    /// what a package replaced, and nothing here can read them any more.
    fn set_aside_journal(&self) -> Option<std::path::PathBuf> {
        std::fs::read_dir(&self.state_dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("journal.damaged-"))
            .map(|e| e.path())
    }

    /// After a successful transaction: drop cached blobs no installed or kept
    /// version needs. A failure here is only worth a warning: the
    /// transaction is done, and the next prune tries again.
    pub(super) fn prune_quietly(&self) {
        let cache = source::cache::BlobCache::new(&self.state_dir);
        if !cache.root().exists() || self.set_aside_journal().is_some() {
            return;
        }
        let keep = match self.cache_users(&cache) {
            Ok(users) => users.into_keys().collect::<BTreeSet<String>>(),
            Err(e) => {
                tracing::warn!(error = %e, "not pruning the blob cache");
                return;
            }
        };
        if let Err(e) = cache.prune_blobs(&keep) {
            tracing::warn!(error = %e, "pruning the blob cache failed");
        }
    }

    /// Digest → who needs it ("package NAME", "txn ID"): each installed
    /// package's manifest and, read from the cached manifest, its config and
    /// layers; the same for the old and new versions of pending transactions.
    fn cache_users(&self, cache: &source::cache::BlobCache) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let mut roots: Vec<(String, String)> = Vec::new();
        for p in self.journal.packages()? {
            roots.push((p.manifest_digest.clone(), format!("package {}", p.name)));
            for v in &p.previous {
                roots.push((v.manifest_digest.clone(), format!("package {} (kept for rollback)", p.name)));
            }
        }
        for r in self.journal.pending()? {
            for c in &r.changes {
                let who = format!("txn {} ({})", r.id, c.name);
                if let Some(v) = &c.old {
                    roots.push((v.manifest_digest.clone(), who.clone()));
                }
                if let Some(p) = &c.new_package {
                    roots.push((p.manifest_digest.clone(), who.clone()));
                    // Kept versions it will record, a capture of what --adopt replaced among them.
                    for v in &p.previous {
                        roots.push((v.manifest_digest.clone(), who.clone()));
                    }
                }
            }
        }
        // The versions the last apply replaced or pruned: `rollback --apply`
        // restores them from the cache.
        let history = self.journal.history()?;
        if let Some(last) = history.iter().rev().find(|e| e.op == crate::txn::Op::Apply) {
            for c in &last.changes {
                if let Some(v) = &c.old {
                    roots.push((
                        v.manifest_digest.clone(),
                        format!("txn {} (for rollback --apply of {})", last.id, c.package),
                    ));
                }
            }
        }
        let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (digest, who) in roots {
            for d in cache.closure_of([digest.as_str()])? {
                let list = users.entry(d).or_default();
                if !list.contains(&who) {
                    list.push(who.clone());
                }
            }
        }
        Ok(users)
    }
}
