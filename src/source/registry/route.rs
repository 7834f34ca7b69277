//! One registry repository's requests, tried on its hosts in order.
//!
//! This module owns choosing which host answers a request: the mirrors of
//! `hosts.toml` (see [`super::hosts`]) first, each only for what its
//! `capabilities` allow (`resolve`: a manifest by tag, a tag list;
//! `pull`: a blob, a manifest by digest), then the registry's `server`.
//! A host that fails (unreachable, an error status, a refused redirect)
//! hands the request to the next; the last one's failure is the answer.
//! A mirror's requests carry `ns=REGISTRY` in their query, as containerd's
//! do. Only the registry itself gets the registry's credentials (a mirror gets
//! those stored for its own name, if any). It trusts no
//! host: callers check every byte against the original reference's digests
//! whoever served it.

use std::time::Duration;

use reqwest::Response;

use super::hosts::Hosts;
use crate::source::http::{self, Credentials, HttpFailure, Session};
use crate::source::printable;

/// A host with its session.
struct Routed {
    host: String,
    upstream: bool,
    pull: bool,
    resolve: bool,
    session: Session,
}

/// The hosts one pull's requests go to (see the module doc).
pub struct Route {
    hosts: Vec<Routed>,
    /// The registry's name, for messages.
    registry: String,
    /// The `hosts.toml` that made this a mirror-only route, if it is one.
    mirror_only: Option<String>,
}

impl Route {
    /// A session per host of `hosts`. `credentials` (the registry's) go to
    /// the registry only; another host gets what `own_credentials` finds
    /// stored for its own name (Docker's config), if anything.
    pub fn new(
        hosts: Hosts,
        registry: &str,
        repository: &str,
        timeout: Duration,
        credentials: Option<Credentials>,
        own_credentials: &dyn Fn(&str) -> Option<Credentials>,
    ) -> Result<Route, String> {
        let mirror_only = hosts.mirror_only().then(|| {
            hosts.file.as_ref().map_or_else(|| "hosts.toml".to_string(), |f| printable(&f.display().to_string()))
        });
        let mut routed = Vec::new();
        for e in hosts.endpoints {
            let clients = (
                http::client(e.plain_http, &e.client).map_err(|m| format!("{}: {m}", e.host))?,
                http::client_without_redirects(e.plain_http, &e.client).map_err(|m| format!("{}: {m}", e.host))?,
            );
            let creds = if e.upstream { credentials.clone() } else { own_credentials(&e.host) };
            let session = Session::new(clients, e.plain_http, &e.api_root, repository, timeout, creds);
            routed.push(Routed { host: e.host, upstream: e.upstream, pull: e.pull, resolve: e.resolve, session });
        }
        Ok(Route { hosts: routed, registry: registry.to_string(), mirror_only })
    }

    /// The URL `path` is first tried at (for logs).
    pub fn url(&self, path: &str) -> String {
        let wants_resolve = needs_resolve(path);
        self.eligible(wants_resolve).next().map_or_else(String::new, |h| h.session.url(path))
    }

    fn eligible(&self, wants_resolve: bool) -> impl Iterator<Item = &Routed> {
        self.hosts.iter().filter(move |h| if wants_resolve { h.resolve } else { h.pull })
    }

    /// GETs `path` as [`Session::get`] does, from the first host that may
    /// answer it and does; returns the response and the host that served it.
    pub async fn get_from(
        &self,
        path: &str,
        accept: Option<&str>,
        offset: u64,
        timeout: Option<Duration>,
    ) -> Result<(Response, String), HttpFailure> {
        let hosts: Vec<&Routed> = self.eligible(needs_resolve(path)).collect();
        let mut last = None;
        for (i, h) in hosts.iter().enumerate() {
            let for_host = if h.upstream { path.to_string() } else { with_namespace(path, &self.registry) };
            match h.session.get(&for_host, accept, offset, timeout).await {
                Ok(resp) => return Ok((resp, h.host.clone())),
                Err(e) => {
                    if i + 1 < hosts.len() {
                        tracing::warn!(
                            host = %printable(&h.host),
                            error = %describe(&e),
                            "{} failed for {}; trying the next host",
                            if h.upstream { "the registry" } else { "a mirror" },
                            printable(&self.registry)
                        );
                    }
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| HttpFailure::Refused(format!("no host of {} may serve {path}", self.registry)));
        Err(match (&self.mirror_only, e) {
            (Some(file), HttpFailure::Transport { reason, timeout }) => HttpFailure::Transport {
                reason: format!(
                    "{reason}; {file} names only mirrors for {} (its `server` is not {0}), so the registry itself was \
                     not tried",
                    printable(&self.registry)
                ),
                timeout,
            },
            (_, e) => e,
        })
    }

    /// [`Route::get_from`] without the host.
    pub async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        offset: u64,
        timeout: Option<Duration>,
    ) -> Result<Response, HttpFailure> {
        self.get_from(path, accept, offset, timeout).await.map(|(r, _)| r)
    }
}

/// True if answering `path` turns a name into a digest: a manifest by tag
/// (a cosign signature's tag too), the tag list or the referrers list
/// (blobs and manifests by digest are `pull`).
fn needs_resolve(path: &str) -> bool {
    match path.strip_prefix("manifests/") {
        Some(reference) => !reference.contains(':'),
        None => path.starts_with("tags/") || path.starts_with("referrers/"),
    }
}

/// `path` as a mirror gets it: with `ns=REGISTRY` in its query, as
/// containerd sends it, so a cache serving several registries knows which
/// one the request is for (distribution ignores it).
fn with_namespace(path: &str, registry: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let ns: String = registry
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{path}{sep}ns={ns}")
}

/// A failure, short, for a log line.
fn describe(e: &HttpFailure) -> String {
    match e {
        HttpFailure::Status { status, message } => format!("HTTP {status}: {message}"),
        HttpFailure::Transport { reason, .. } => reason.clone(),
        HttpFailure::TooLarge { what, cap } => format!("its {what} is over {cap} bytes"),
        HttpFailure::Refused(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_resolve() {
        assert!(needs_resolve("manifests/v1"));
        assert!(needs_resolve("tags/list"));
        assert!(!needs_resolve("manifests/sha256:abcd"));
        assert!(!needs_resolve("blobs/sha256:abcd"));
    }

    #[test]
    fn a_mirror_is_told_the_registry() {
        assert_eq!(with_namespace("blobs/sha256:ab", "127.0.0.1:5000"), "blobs/sha256:ab?ns=127.0.0.1%3A5000");
        assert_eq!(with_namespace("tags/list?n=10", "r.example"), "tags/list?n=10&ns=r.example");
    }
}
