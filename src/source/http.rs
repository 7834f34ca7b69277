//! HTTP to one registry repository, under stagehand's policy for servers it
//! does not trust.
//!
//! This module owns the HTTP client (reqwest) and what it may do: every
//! redirect hop checked before it is connected to (no https to http, plain
//! HTTP only to loopback, whoever redirects), no `Referer`, no proxy for a
//! plain-http loopback registry, an overall deadline on every request, a
//! cap on every body read into memory (manifest, tag list, token, error),
//! and the registry token flow (`WWW-Authenticate: Bearer` or `Basic`, with
//! a user and password or an identity token). Credentials and challenges
//! are answered only for the registry's own origin: a redirect target that
//! asks for credentials gets none. A token realm must be https unless the
//! registry itself is the loopback plain-http one and so is the realm. It
//! does not interpret manifests or write files; `registry` does.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;

use super::printable;

/// Largest token response we read.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Largest error body we read (the rest is not read at all).
pub const MAX_ERROR_BYTES: u64 = 64 << 10;
/// Largest tag list we read.
pub const MAX_TAG_LIST_BYTES: u64 = 1 << 20;
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 10;
/// Give up connecting after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Give up on a response that sends nothing for this long.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug)]
pub enum HttpFailure {
    /// The registry answered with this status (after authenticating, if it asked).
    Status { status: StatusCode, message: String },
    /// The request did not complete: connection, TLS, deadline, redirect policy.
    Transport { reason: String, timeout: bool },
    /// A body was larger than its cap.
    TooLarge { what: String, cap: u64 },
    /// Our policy refused to do what the server asked.
    Refused(String),
}

/// A URL as it may be shown: without its query (signed URLs carry
/// credentials there) or fragment, control characters escaped.
pub fn shown_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    printable(u.as_str())
}

/// `e` and its sources joined by `: `, without any URL's query string.
pub fn error_chain(e: reqwest::Error) -> String {
    let url = e.url().map(shown_url);
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    let joined = printable(&strip_queries(&parts.join(": ")));
    match url {
        Some(u) => format!("{u}: {joined}"),
        None => joined,
    }
}

/// Removes the query string from every `http(s)://` URL in `text`.
pub fn strip_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("http") {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        if !(from.starts_with("http://") || from.starts_with("https://")) {
            out.push_str("http");
            rest = &from[4..];
            continue;
        }
        let end = from.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ')').unwrap_or(from.len());
        let url = &from[..end];
        out.push_str(url.split(['?', '#']).next().unwrap_or(url));
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

/// The refusal of one redirect hop, if our policy refuses it: more than
/// [`MAX_REDIRECTS`], a scheme other than http(s), https to http, or plain
/// HTTP to anything but a loopback address. Decided before the hop is
/// connected to, so a refused hop never sees a byte.
pub fn refuse_redirect(next: &Url, previous: &[Url]) -> Option<String> {
    let to = shown_url(next);
    if previous.len() >= MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if next.scheme() != "https" && next.scheme() != "http" {
        return Some(format!("refused a redirect to {to}, which is neither https nor http"));
    }
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https" {
        return Some(format!("refused a redirect from https to {to}, which is not https"));
    }
    if next.scheme() == "http" && !url_is_loopback(next) {
        return Some(format!(
            "refused a redirect to {to}: plain HTTP never leaves this machine (only loopback addresses may be \
             reached without TLS); nothing was sent there"
        ));
    }
    None
}

/// How to reach one registry host beyond the policy every client has: the
/// TLS roots added to the system's (a host's `ca`, `--ca-file`,
/// `SSL_CERT_FILE`), a client certificate, headers, a connect timeout and a
/// proxy (from `hosts.toml`, see `registry::hosts`). Never a way to turn
/// certificate verification off.
#[derive(Clone, Default)]
pub struct HostClient {
    /// Certificates added to the system roots for this host.
    pub roots: Vec<reqwest::Certificate>,
    /// The client certificate and key this host asks for, if any.
    pub identity: Option<reqwest::Identity>,
    /// Headers sent with every request to this host.
    pub headers: HeaderMap,
    /// Give up connecting after this long (default 30 s).
    pub connect_timeout: Option<Duration>,
    /// Reach this host through this proxy (else the environment's).
    pub proxy: Option<reqwest::Proxy>,
}

/// The client every request of a pull goes through, with the policy: every
/// redirect hop passes [`refuse_redirect`], no `Referer` is sent, and
/// reqwest drops `Authorization` on a hop to another origin. A file named
/// by `SSL_CERT_FILE`, and `host`'s roots, add their certificates to the
/// system roots (see [`super::roots`]).
pub fn client(plain_http: bool, host: &HostClient) -> Result<reqwest::Client, String> {
    build_client(plain_http, true, host)
}

/// The same client, following no redirect at all: for the refresh-token
/// POST, whose body (the refresh token) a 307 would carry to wherever it
/// points.
pub fn client_without_redirects(plain_http: bool, host: &HostClient) -> Result<reqwest::Client, String> {
    build_client(plain_http, false, host)
}

fn build_client(plain_http: bool, follow: bool, host: &HostClient) -> Result<reqwest::Client, String> {
    let redirects = if follow {
        reqwest::redirect::Policy::custom(|attempt| match refuse_redirect(attempt.url(), attempt.previous()) {
            Some(why) => attempt.error(why),
            None => attempt.follow(),
        })
    } else {
        reqwest::redirect::Policy::none()
    };
    let mut b = reqwest::Client::builder()
        .redirect(redirects)
        .referer(false)
        .connect_timeout(host.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
        .read_timeout(READ_TIMEOUT)
        .default_headers(host.headers.clone())
        .user_agent(concat!("stagehand/", env!("CARGO_PKG_VERSION")));
    if plain_http {
        // Plain HTTP is only for a loopback registry: what we send must not
        // leave the machine through a proxy, in clear text.
        b = b.no_proxy();
    } else if let Some(p) = &host.proxy {
        b = b.proxy(p.clone());
    }
    for c in super::roots::extra_roots()?.into_iter().chain(host.roots.iter().cloned()) {
        b = b.add_root_certificate(c);
    }
    if let Some(id) = &host.identity {
        b = b.identity(id.clone());
    }
    b.build().map_err(error_chain)
}

/// `scheme://host:port` of a URL, ports made explicit.
pub fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (u.scheme().to_string(), u.host_str().map(str::to_ascii_lowercase), u.port_or_known_default())
}

/// True if the URL's host is loopback.
fn url_is_loopback(u: &Url) -> bool {
    let Some(host) = u.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a token may be fetched from `realm` with credentials: only over
/// https, except from a loopback realm for a plain-http loopback registry.
pub fn realm_allowed(realm: &Url, plain_http_loopback: bool) -> bool {
    realm.scheme() == "https" || (plain_http_loopback && realm.scheme() == "http" && url_is_loopback(realm))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses `Basic ...` or `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service, mut scope) = (None, None, None);
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            "scope" => scope = Some(val),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer { realm: realm?, service, scope })
}

/// Reads at most `cap` bytes of `resp`'s body; more is an error, refused
/// before it is read (by its Content-Length) or as soon as it arrives.
pub async fn read_capped(resp: &mut Response, cap: u64, what: &str) -> Result<Vec<u8>, HttpFailure> {
    let too_large = || HttpFailure::TooLarge { what: what.to_string(), cap };
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let at = shown_url(resp.url());
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_at(e, &at))? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport(e: reqwest::Error) -> HttpFailure {
    let timeout = e.is_timeout();
    HttpFailure::Transport { reason: error_chain(e), timeout }
}

/// A failure while reading the body of the response from `at` (a shown
/// URL: the last one, after redirects), which the error itself does not name.
fn transport_at(e: reqwest::Error, at: &str) -> HttpFailure {
    let (reason, timeout) = body_error(e, at);
    HttpFailure::Transport { reason, timeout }
}

/// The message for a failure while reading the body of the response from
/// `at` (a shown URL), and whether it was the deadline.
pub fn body_error(e: reqwest::Error, at: &str) -> (String, bool) {
    let timeout = e.is_timeout();
    let reason = if e.url().is_some() { error_chain(e) } else { format!("{at}: {}", error_chain(e)) };
    (reason, timeout)
}

/// The message in an OCI error body (`{"errors":[{"code","message"}]}`),
/// else the body's first line; escaped, at most a few hundred characters.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Envelope>(body) {
        Ok(env) if !env.errors.is_empty() => {
            env.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect::<Vec<_>>().join("; ")
        }
        _ => String::from_utf8_lossy(body).lines().next().unwrap_or("").to_string(),
    };
    let text: String = strip_queries(&text).chars().take(300).collect();
    printable(text.trim())
}

/// A token endpoint's answer.
#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A user name and password for the registry.
#[derive(Clone)]
pub struct Basic {
    pub user: String,
    pub password: String,
}

/// Credentials for the registry: a user and password, or an identity
/// token (a refresh token, as Docker's `identitytoken` and a credential
/// helper's `<token>` user hold), which is traded for an access token at
/// the registry's token realm (OAuth2 `grant_type=refresh_token`).
#[derive(Clone)]
pub enum Credentials {
    Basic(Basic),
    IdentityToken(String),
}

/// Requests to one repository of one registry, authenticated as it asks.
pub struct Session {
    client: reqwest::Client,
    /// [`client_without_redirects`], for the refresh-token POST.
    token_client: reqwest::Client,
    base: String,
    repository: String,
    plain_http_loopback: bool,
    timeout: Duration,
    credentials: Option<Credentials>,
    /// The `Authorization` value to send, once the registry asked for one.
    authorization: Mutex<Option<HeaderValue>>,
}

impl Session {
    /// A session with the repository under `api_root` (a registry's or a
    /// mirror's `.../v2`, without a trailing slash).
    pub fn new(
        (client, token_client): (reqwest::Client, reqwest::Client),
        plain_http: bool,
        api_root: &str,
        repository: &str,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Session {
        Session {
            client,
            token_client,
            base: format!("{api_root}/{repository}"),
            repository: repository.to_string(),
            plain_http_loopback: plain_http,
            timeout,
            credentials,
            authorization: Mutex::new(None),
        }
    }

    /// The URL of `path` under the repository (e.g. `manifests/v1`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// True if `u` has the registry's own scheme, host and port.
    fn is_own_origin(&self, u: &Url) -> bool {
        Url::parse(&self.base).is_ok_and(|b| origin(&b) == origin(u))
    }

    fn current_auth(&self) -> Option<HeaderValue> {
        self.authorization.lock().map(|a| a.clone()).unwrap_or(None)
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let Some(Credentials::Basic(b)) = self.credentials.as_ref() else { return None };
        let raw = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", b.user, b.password));
        let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// GETs `path` with `accept` (and a range from `offset` if non-zero),
    /// authenticating once if the registry asks, within `timeout` (the
    /// session's when `None`). Returns a success response (body unread);
    /// any other status is read (capped) into [`HttpFailure::Status`].
    pub async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        offset: u64,
        timeout: Option<Duration>,
    ) -> Result<Response, HttpFailure> {
        let url = self.url(path);
        let timeout = timeout.unwrap_or(self.timeout);
        let send = |auth: Option<HeaderValue>| {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept.and_then(|a| HeaderValue::from_str(a).ok()) {
                headers.insert(ACCEPT, a);
            }
            if offset > 0 {
                if let Ok(r) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    headers.insert(RANGE, r);
                }
            }
            if let Some(a) = auth {
                headers.insert(AUTHORIZATION, a);
            }
            self.client.get(&url).headers(headers).timeout(timeout).send()
        };
        let mut resp = send(self.current_auth()).await.map_err(transport)?;
        if resp.status() == StatusCode::UNAUTHORIZED && !self.is_own_origin(resp.url()) {
            // A redirect target (a CDN) asks for credentials: they are the
            // registry's, and are never offered to another origin.
            return Err(HttpFailure::Refused(format!(
                "the registry redirected {path} to {}, which answered 401 Unauthorized; stagehand answers only the \
                 registry's own challenges, so no credentials were sent there. The registry's storage redirect is \
                 misconfigured (or hostile): tell its operator",
                shown_url(resp.url())
            )));
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge =
                resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(parse_challenge);
            if let Some(c) = challenge {
                if let Some(auth) = self.authenticate(c).await? {
                    if let Ok(mut slot) = self.authorization.lock() {
                        *slot = Some(auth.clone());
                    }
                    resp = send(Some(auth)).await.map_err(transport)?;
                }
            }
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let message = match read_capped(&mut resp, MAX_ERROR_BYTES, "error body").await {
            Ok(body) => error_message(&body),
            Err(HttpFailure::TooLarge { .. }) => format!("(an error body over {MAX_ERROR_BYTES} bytes, not read)"),
            Err(_) => String::new(),
        };
        Err(HttpFailure::Status { status, message })
    }

    /// The `Authorization` value a challenge asks for, if we can give one.
    async fn authenticate(&self, challenge: Challenge) -> Result<Option<HeaderValue>, HttpFailure> {
        let (realm, service, scope) = match challenge {
            Challenge::Basic => return Ok(self.basic_header()),
            Challenge::Bearer { realm, service, scope } => (realm, service, scope),
        };
        let realm_url = Url::parse(&realm).map_err(|_| {
            HttpFailure::Refused(format!("the registry named a token realm that is not a URL: {}", printable(&realm)))
        })?;
        if !realm_allowed(&realm_url, self.plain_http_loopback) {
            return Err(HttpFailure::Refused(format!(
                "the registry sends us for a token to {}, which is not https; stagehand will not send credentials \
                 or requests there (plain HTTP is only for a loopback registry and its loopback realm)",
                shown_url(&realm_url)
            )));
        }
        if realm_url.scheme() != "https" && realm_url.scheme() != "http" {
            return Err(HttpFailure::Refused(format!("unsupported token realm {}", shown_url(&realm_url))));
        }
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let req = if let Some(Credentials::IdentityToken(refresh)) = &self.credentials {
            // The distribution token spec's OAuth2 flow: POST a form.
            let mut form = Url::parse("http://form.invalid/").map_err(|e| HttpFailure::Refused(e.to_string()))?;
            {
                let mut q = form.query_pairs_mut();
                q.append_pair("grant_type", "refresh_token");
                if let Some(s) = &service {
                    q.append_pair("service", s);
                }
                q.append_pair("scope", &scope);
                q.append_pair("client_id", "stagehand");
                q.append_pair("refresh_token", refresh);
            }
            let body = form.query().unwrap_or("").to_string();
            self.token_client
                .post(realm_url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .timeout(self.timeout)
        } else {
            let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
            if let Some(s) = &service {
                query.push(("service", s));
            }
            let mut req = self.client.get(realm_url.clone()).query(&query).timeout(self.timeout);
            if let Some(b) = self.basic_header() {
                req = req.header(AUTHORIZATION, b);
            }
            req
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(HttpFailure::Refused(format!(
                "the token realm {} answered the refresh-token request with a redirect ({status}); stagehand does \
                 not follow it, so the token was sent nowhere else. Ask the registry's operator for a realm that \
                 answers directly",
                shown_url(&realm_url)
            )));
        }
        let body = read_capped(&mut resp, MAX_TOKEN_BYTES, "token response").await?;
        if !status.is_success() {
            return Err(HttpFailure::Status { status, message: error_message(&body) });
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| HttpFailure::Status {
            status: StatusCode::UNAUTHORIZED,
            message: format!("the token realm {} answered with something that is not a token", shown_url(&realm_url)),
        })?;
        let Some(token) = reply.token.or(reply.access_token).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| HttpFailure::Status {
            status: StatusCode::UNAUTHORIZED,
            message: "the token realm answered with a token that is not a header value".into(),
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull".into())
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn realms_need_https_unless_all_loopback_plain_http() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(realm_allowed(&u("https://auth.example/token"), false));
        assert!(realm_allowed(&u("https://auth.example/token"), true));
        assert!(!realm_allowed(&u("http://auth.example/token"), false));
        assert!(!realm_allowed(&u("http://auth.example/token"), true));
        assert!(!realm_allowed(&u("http://127.0.0.1:5000/token"), false));
        assert!(realm_allowed(&u("http://127.0.0.1:5000/token"), true));
        assert!(realm_allowed(&u("http://localhost:5000/token"), true));
    }

    #[test]
    fn redirects_never_take_plain_http_off_loopback() {
        let u = |s: &str| Url::parse(s).expect("url");
        let from_plain = [u("http://127.0.0.1:5000/v2/x/blobs/sha256:ab")];
        let from_tls = [u("https://reg.example/v2/x/blobs/sha256:ab")];
        for off in ["http://192.0.2.1/blob?sig=x", "http://10.0.0.1:80/b", "http://cdn.example/b", "http://0.0.0.0:9/b"]
        {
            let why = refuse_redirect(&u(off), &from_plain).expect("refused");
            assert!(why.contains("plain HTTP never leaves this machine") && !why.contains("sig="), "{why}");
        }
        for ok in ["http://127.0.0.2:8080/b", "http://localhost/b", "http://[::1]:9/b", "https://cdn.example/b"] {
            assert_eq!(refuse_redirect(&u(ok), &from_plain), None, "{ok}");
        }
        assert!(refuse_redirect(&u("http://127.0.0.1/b"), &from_tls).expect("refused").contains("from https"));
        assert!(refuse_redirect(&u("ftp://127.0.0.1/b"), &from_plain).is_some());
        assert!(refuse_redirect(&u("https://cdn.example/b"), &vec![u("https://a.example/"); MAX_REDIRECTS]).is_some());
    }

    #[test]
    fn query_strings_are_stripped() {
        assert_eq!(
            strip_queries("error sending request for url (https://s3.example/blob?sig=SECRET&x=1): boom"),
            "error sending request for url (https://s3.example/blob): boom"
        );
        assert_eq!(strip_queries("no url here, http is a word"), "no url here, http is a word");
        let u = Url::parse("https://cdn.example/a/b?X-Amz-Signature=abc#frag").expect("url");
        assert_eq!(shown_url(&u), "https://cdn.example/a/b");
    }

    #[test]
    fn error_bodies_are_escaped_and_short() {
        let m = error_message(br#"{"errors":[{"code":"DENIED","message":"no \u001b[31mway"}]}"#);
        assert!(!m.contains('\u{1b}'), "{m:?}");
        assert!(m.starts_with("DENIED: no "), "{m:?}");
        assert!(error_message(&[b'a'; 10_000]).len() <= 300);
    }
}
