//! Source references as the user types them: `oci-layout:PATH[:TAG|@sha256:HEX]`
//! for an OCI image layout on disk, and `[REGISTRY/]REPO:TAG` or
//! `[REGISTRY/]REPO@sha256:HEX` for an OCI registry (the forms ORAS and
//! skopeo's `docker://` take).
//!
//! This module owns the reference grammar and the default package name derived
//! from a reference. It is pure: it never opens the path it parses (except
//! that [`SourceRef::default_name`] asks the OS for the current directory's
//! name when the path is `.` or ends in `..`), it reads no environment except
//! [`ENV_DEFAULT_REGISTRY`] in [`parse`], and it never contacts a registry.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::manifest::validate_digest;
use super::SourceError;

/// Scheme prefix of a reference to an OCI image layout directory.
pub const LAYOUT_SCHEME: &str = "oci-layout:";
/// The accepted syntax, quoted in every `BadReference` error.
pub const REFERENCE_SYNTAX: &str = "expected [REGISTRY/]REPO:TAG, [REGISTRY/]REPO@sha256:<64 lowercase hex>, \
     oci-layout:PATH, oci-layout:PATH:TAG or oci-layout:PATH@sha256:<64 lowercase hex>";
/// Environment variable naming the registry of a reference without one.
pub const ENV_DEFAULT_REGISTRY: &str = "STAGEHAND_DEFAULT_REGISTRY";
/// The registry of a reference without one, when [`ENV_DEFAULT_REGISTRY`] is unset.
pub const DEFAULT_REGISTRY: &str = "ghcr.io";
/// Longest repository name we accept (the distribution spec's practical limit).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag the OCI distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;
/// Longest default package name we derive from a path.
pub const MAX_DEFAULT_NAME_LEN: usize = 128;
/// Default package name when the path gives nothing usable.
pub const FALLBACK_NAME: &str = "artifact";

/// Which manifest of a source to pick.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The manifest whose `org.opencontainers.image.ref.name` is this tag.
    Tag(String),
    /// The manifest with this `sha256:<hex>` digest.
    Digest(String),
    /// The only manifest there is (an error if there are several).
    Only,
}

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceRef {
    /// An OCI image layout directory on the local disk.
    Layout { path: PathBuf, selector: Selector },
    /// A repository in an OCI registry; `selector` is a tag or a digest,
    /// never [`Selector::Only`].
    Registry { registry: String, repository: String, selector: Selector },
}

/// The registry a reference without one goes to: `$STAGEHAND_DEFAULT_REGISTRY`
/// if set and non-empty, else [`DEFAULT_REGISTRY`].
pub fn default_registry() -> String {
    match std::env::var(ENV_DEFAULT_REGISTRY) {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => DEFAULT_REGISTRY.to_string(),
    }
}

/// Parses a reference with the default registry from [`default_registry`].
/// See [`parse_with_default`].
pub fn parse(s: &str) -> Result<SourceRef, SourceError> {
    parse_with_default(s, &default_registry())
}

/// Parses `oci-layout:PATH`, `oci-layout:PATH:TAG` or `oci-layout:PATH@sha256:HEX`
/// (an OCI layout), or `[REGISTRY/]REPO:TAG` / `[REGISTRY/]REPO@sha256:HEX`
/// (a registry; see [`parse_registry`]).
///
/// Only the last path component is searched for a separator, so PATH may hold
/// `:` or `@` in its directories. In the last component, the last `@`
/// introduces a digest; otherwise the last `:` introduces a tag. A tag and a
/// digest together are refused. To name a directory whose own name holds `:`,
/// end the path with `/.` (`oci-layout:a:b/.`).
pub fn parse_with_default(s: &str, default_registry: &str) -> Result<SourceRef, SourceError> {
    let bad = |reason: String| SourceError::BadReference {
        reference: s.to_string(),
        reason: format!("{reason}; {REFERENCE_SYNTAX}"),
    };
    let Some(rest) = s.strip_prefix(LAYOUT_SCHEME) else {
        if s.contains("://") || s.starts_with("oci:") || s.starts_with("docker:") {
            return Err(bad("unknown scheme".to_string()));
        }
        return parse_registry(s, default_registry);
    };
    let last_component_start = rest.rfind('/').map_or(0, |i| i + 1);
    let last_component = &rest[last_component_start..];

    let (path, selector) = if let Some(at) = last_component.rfind('@') {
        let split = last_component_start + at;
        let (path, digest) = (&rest[..split], &rest[split + 1..]);
        if validate_digest(digest).is_err() {
            return Err(bad(format!("{digest:?} is not a sha256 digest")));
        }
        if path[last_component_start..].contains(':') {
            return Err(bad("give either :TAG or @DIGEST, not both".to_string()));
        }
        (path, Selector::Digest(digest.to_string()))
    } else if let Some(colon) = last_component.rfind(':') {
        let split = last_component_start + colon;
        let (path, tag) = (&rest[..split], &rest[split + 1..]);
        validate_tag(tag).map_err(bad)?;
        (path, Selector::Tag(tag.to_string()))
    } else {
        (rest, Selector::Only)
    };
    if path.is_empty() {
        return Err(bad("the layout path is empty".to_string()));
    }
    Ok(SourceRef::Layout { path: PathBuf::from(path), selector })
}

/// Parses a registry reference: `REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:HEX`,
/// or the same without `REGISTRY/`, which then means `default_registry`.
///
/// The first path component is a registry if and only if there is more than
/// one component and it contains `.` or `:` or is `localhost` (Docker's
/// rule), so `ghcr.io/org/app:v1` names registry `ghcr.io` and
/// `org/app:v1` names repository `org/app` on the default registry. A tag
/// or a digest is required: there is no implicit `latest`.
pub fn parse_registry(s: &str, default_registry: &str) -> Result<SourceRef, SourceError> {
    let bad = |reason: String| SourceError::BadReference {
        reference: s.to_string(),
        reason: format!("{reason}; {REFERENCE_SYNTAX}"),
    };
    let (name, selector) = if let Some((name, digest)) = s.split_once('@') {
        if validate_digest(digest).is_err() {
            return Err(bad(format!("{digest:?} is not a sha256 digest")));
        }
        let last = name.rsplit('/').next().unwrap_or(name);
        if last.contains(':') {
            return Err(bad("give either :TAG or @DIGEST, not both".to_string()));
        }
        (name, Selector::Digest(digest.to_string()))
    } else {
        let last_start = s.rfind('/').map_or(0, |i| i + 1);
        match s[last_start..].rfind(':') {
            Some(colon) => {
                let split = last_start + colon;
                let tag = &s[split + 1..];
                validate_tag(tag).map_err(bad)?;
                (&s[..split], Selector::Tag(tag.to_string()))
            }
            None => return Err(bad("name a tag (REPO:TAG) or a digest (REPO@sha256:...)".to_string())),
        }
    };
    if name.is_empty() {
        return Err(bad("the repository is empty".to_string()));
    }
    if name.starts_with(['.', '/', '~']) {
        return Err(bad("this looks like a path; for an OCI image layout directory write oci-layout:PATH".to_string()));
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if is_registry_component(first) => (first.to_string(), rest.to_string()),
        _ => {
            validate_registry(default_registry).map_err(|reason| {
                bad(format!("${ENV_DEFAULT_REGISTRY} {default_registry:?} is not a registry host: {reason}"))
            })?;
            (default_registry.to_string(), name.to_string())
        }
    };
    validate_registry(&registry).map_err(bad)?;
    validate_repository(&repository).map_err(bad)?;
    Ok(SourceRef::Registry { registry, repository, selector })
}

/// Docker's rule for "is this first path component a registry host".
fn is_registry_component(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost"
}

/// Checks `HOST[:PORT]` (HOST a DNS name or IPv4 address, or `[IPv6]`).
/// The error is a reason phrase for a `BadReference`.
pub fn validate_registry(r: &str) -> Result<(), String> {
    let bad = || format!("registry {r:?} is not HOST or HOST:PORT");
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => return Ok(()),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// Checks a repository name against the distribution spec's grammar:
/// `/`-separated components of lowercase letters and digits, separated
/// inside a component by `.`, `_`, `__` or runs of `-`.
pub fn validate_repository(repo: &str) -> Result<(), String> {
    let bad = |why: &str| format!("repository {repo:?} {why}");
    if repo.len() > MAX_REPOSITORY_LEN {
        return Err(bad(&format!("is longer than {MAX_REPOSITORY_LEN} characters")));
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
            return Err(bad("has an empty path component"));
        };
        if !alnum(first) || !alnum(last) {
            return Err(bad("must start and end each component with a lowercase letter or digit"));
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(bad("may hold only lowercase letters, digits, and the separators '.', '_', '__', '-'"));
            }
        }
    }
    Ok(())
}

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
/// The error is a reason phrase for a `BadReference`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    let Some(first) = bytes.next() else {
        return Err("the tag is empty".to_string());
    };
    let first_ok = first.is_ascii_alphanumeric() || first == b'_';
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok || tag.len() > MAX_TAG_LEN {
        return Err(format!("tag {tag:?} does not match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"));
    }
    Ok(())
}

impl SourceRef {
    /// The package name to use when the user gives none: the layout
    /// directory's last path component, with every character outside
    /// `[A-Za-z0-9._-]` replaced by `_`, never empty, `.` or `..`, and never
    /// starting with `-` or `.`.
    pub fn default_name(&self) -> String {
        match self {
            SourceRef::Layout { path, .. } => {
                let raw = lexical_file_name(path)
                    .or_else(|| {
                        std::fs::canonicalize(path)
                            .ok()
                            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    })
                    .unwrap_or_default();
                sanitize_name(&raw)
            }
            SourceRef::Registry { repository, .. } => {
                sanitize_name(repository.rsplit('/').next().unwrap_or(repository))
            }
        }
    }

    /// The selector part of the reference.
    pub fn selector(&self) -> &Selector {
        match self {
            SourceRef::Layout { selector, .. } | SourceRef::Registry { selector, .. } => selector,
        }
    }
}

impl FromStr for SourceRef {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for SourceRef {
    /// The canonical text form; `parse(x.to_string()) == x` for UTF-8 paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceRef::Layout { path, selector } => {
                write!(f, "{LAYOUT_SCHEME}{}", path.display())?;
                match selector {
                    Selector::Tag(t) => write!(f, ":{t}"),
                    Selector::Digest(d) => write!(f, "@{d}"),
                    Selector::Only => Ok(()),
                }
            }
            SourceRef::Registry { registry, repository, selector } => {
                write!(f, "{registry}/{repository}")?;
                match selector {
                    Selector::Tag(t) => write!(f, ":{t}"),
                    Selector::Digest(d) => write!(f, "@{d}"),
                    Selector::Only => Ok(()),
                }
            }
        }
    }
}

/// The last normal component of `path` after resolving `.` and `..`
/// lexically, or `None` if none is left (`.`, `..`, `/`, `a/..`).
fn lexical_file_name(path: &Path) -> Option<String> {
    let mut names: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(n) => names.push(n),
            Component::ParentDir => {
                // `a/../..` walks above where we can see lexically.
                names.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    names.last().map(|n| n.to_string_lossy().into_owned())
}

fn sanitize_name(raw: &str) -> String {
    let replaced: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let trimmed: String = replaced.trim_start_matches(['.', '-']).chars().take(MAX_DEFAULT_NAME_LEN).collect();
    if trimmed.is_empty() {
        FALLBACK_NAME.to_string()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn layout(path: &str, selector: Selector) -> SourceRef {
        SourceRef::Layout { path: PathBuf::from(path), selector }
    }

    fn reason(s: &str) -> String {
        match parse(s) {
            Err(SourceError::BadReference { reference, reason }) => {
                assert_eq!(reference, s);
                assert!(reason.contains(REFERENCE_SYNTAX), "{reason}");
                reason
            }
            other => panic!("{s:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse("oci-layout:examples/demo").unwrap(), layout("examples/demo", Selector::Only));
        assert_eq!(parse("oci-layout:examples/demo:v1").unwrap(), layout("examples/demo", Selector::Tag("v1".into())));
        let d = format!("sha256:{HEX}");
        assert_eq!(parse(&format!("oci-layout:/abs/demo@{d}")).unwrap(), layout("/abs/demo", Selector::Digest(d)));
    }

    #[test]
    fn colons_and_ats_in_directories_are_path() {
        assert_eq!(
            parse("oci-layout:/mnt/c:x/demo:1.0").unwrap(),
            layout("/mnt/c:x/demo", Selector::Tag("1.0".into()))
        );
        assert_eq!(parse("oci-layout:/a@b/demo").unwrap(), layout("/a@b/demo", Selector::Only));
        assert_eq!(parse("oci-layout:a:b/.").unwrap(), layout("a:b/.", Selector::Only));
        // Last ':' wins: PATH "a:b", tag "c".
        assert_eq!(parse("oci-layout:a:b:c").unwrap(), layout("a:b", Selector::Tag("c".into())));
    }

    #[test]
    fn rejects_bad_references_with_syntax_hint() {
        assert!(reason("examples/demo").contains("name a tag"));
        assert!(reason("oci:examples/demo").contains("unknown scheme"));
        assert!(reason("docker://x").contains("unknown scheme"));
        assert!(reason("oci-layout:").contains("path is empty"));
        assert!(reason("oci-layout::v1").contains("path is empty"));
        assert!(reason(&format!("oci-layout:@sha256:{HEX}")).contains("path is empty"));
        assert!(reason("oci-layout:demo:").contains("tag is empty"));
        assert!(reason("oci-layout:demo:-v1").contains("does not match"));
        assert!(reason("oci-layout:demo:.v1").contains("does not match"));
        assert!(reason("oci-layout:demo:v 1").contains("does not match"));
        assert!(reason(&format!("oci-layout:demo:{}", "a".repeat(129))).contains("does not match"));
        assert!(reason("oci-layout:demo@sha256:abc").contains("not a sha256 digest"));
        assert!(reason("oci-layout:demo@latest").contains("not a sha256 digest"));
        assert!(reason(&format!("oci-layout:demo@sha256:{}", HEX.to_uppercase())).contains("not a sha256"));
        assert!(reason(&format!("oci-layout:demo:v1@sha256:{HEX}")).contains("not both"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "oci-layout:[a-z:@/.]{0,20}(@sha256:[0-9a-f]{64})?") {
            if let Ok(r) = parse(&s) {
                proptest::prop_assert_eq!(parse(&r.to_string()).ok(), Some(r.clone()));
                let name = r.default_name();
                proptest::prop_assert!(!name.is_empty() && !name.starts_with('.') && !name.starts_with('-'));
            }
        }

        #[test]
        fn parse_never_panics_on_anything(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }

    fn reg(registry: &str, repository: &str, selector: Selector) -> SourceRef {
        SourceRef::Registry { registry: registry.into(), repository: repository.into(), selector }
    }

    fn reg_reason(s: &str) -> String {
        match parse_with_default(s, "ghcr.io") {
            Err(SourceError::BadReference { reason, .. }) => {
                assert!(reason.contains(REFERENCE_SYNTAX), "{reason}");
                reason
            }
            other => panic!("{s:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_registry_references() {
        let p = |s: &str| parse_with_default(s, "ghcr.io").unwrap();
        let d = format!("sha256:{HEX}");
        assert_eq!(p("127.0.0.1:5000/demo:v1"), reg("127.0.0.1:5000", "demo", Selector::Tag("v1".into())));
        assert_eq!(p("ghcr.io/org/app:1.2"), reg("ghcr.io", "org/app", Selector::Tag("1.2".into())));
        assert_eq!(p("localhost/a/b/c:x"), reg("localhost", "a/b/c", Selector::Tag("x".into())));
        assert_eq!(
            p(&format!("registry.example/app@{d}")),
            reg("registry.example", "app", Selector::Digest(d.clone()))
        );
        // No registry component: the default registry.
        assert_eq!(p("org/app:v1"), reg("ghcr.io", "org/app", Selector::Tag("v1".into())));
        assert_eq!(p("demo:v1"), reg("ghcr.io", "demo", Selector::Tag("v1".into())));
        assert_eq!(p(&format!("demo@{d}")), reg("ghcr.io", "demo", Selector::Digest(d)));
        assert_eq!(
            parse_with_default("demo:v1", "127.0.0.1:5000").unwrap(),
            reg("127.0.0.1:5000", "demo", Selector::Tag("v1".into()))
        );
        assert_eq!(p("[::1]:5000/demo:v1"), reg("[::1]:5000", "demo", Selector::Tag("v1".into())));
        assert_eq!(p("a__b/c-d/e.f_g:v"), reg("ghcr.io", "a__b/c-d/e.f_g", Selector::Tag("v".into())));
    }

    #[test]
    fn rejects_bad_registry_references() {
        assert!(reg_reason("demo").contains("name a tag"));
        assert!(reg_reason("127.0.0.1:5000/demo").contains("name a tag"));
        assert!(reg_reason("ghcr.io/Org/app:v1").contains("lowercase"));
        assert!(reg_reason("ghcr.io/org//app:v1").contains("empty path component"));
        assert!(reg_reason("ghcr.io/org/app-:v1").contains("start and end"));
        assert!(reg_reason("ghcr.io/a..b:v1").contains("separators"));
        assert!(reg_reason("bad_host.io/app:v1").contains("not HOST"));
        assert!(reg_reason("host.io:99999/app:v1").contains("not HOST"));
        assert!(reg_reason("host.io:/app:v1").contains("not HOST"));
        assert!(reg_reason(&format!("ghcr.io/app:v1@sha256:{HEX}")).contains("not both"));
        assert!(reg_reason("ghcr.io/app@sha256:abc").contains("not a sha256"));
        assert!(reg_reason("ghcr.io/app:").contains("tag is empty"));
        assert!(reg_reason(":v1").contains("repository is empty"));
        assert!(reg_reason("/abs/path:v1").contains("looks like a path"));
        assert!(reg_reason("./demo:v1").contains("looks like a path"));
        assert!(reg_reason("docker://ghcr.io/app:v1").contains("unknown scheme"));
        match parse_with_default("demo:v1", "no_host!") {
            Err(SourceError::BadReference { reason, .. }) => assert!(reason.contains(ENV_DEFAULT_REGISTRY), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_display_round_trips_and_names() {
        for s in ["127.0.0.1:5000/demo:v1", "ghcr.io/org/app:v2", &format!("localhost/x@sha256:{HEX}")] {
            let r = parse_with_default(s, "ghcr.io").unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(parse_with_default(&r.to_string(), "other.io").unwrap(), r);
        }
        assert_eq!(parse_with_default("demo:v1", "ghcr.io").unwrap().to_string(), "ghcr.io/demo:v1");
        assert_eq!(parse_with_default("ghcr.io/org/my.app:v1", "x.io").unwrap().default_name(), "my.app");
        assert_eq!(parse_with_default("127.0.0.1:5000/demo:v1", "x.io").unwrap().default_name(), "demo");
    }

    proptest::proptest! {
        #[test]
        fn registry_parse_never_panics_and_round_trips(s in "[a-z0-9.:/@_-]{0,30}(:[a-z0-9]{1,5}|@sha256:[0-9a-f]{64})?") {
            if let Ok(r) = parse_with_default(&s, "ghcr.io") {
                proptest::prop_assert_eq!(parse_with_default(&r.to_string(), "ghcr.io").ok(), Some(r.clone()));
                let name = r.default_name();
                proptest::prop_assert!(!name.is_empty() && !name.starts_with('.') && !name.starts_with('-'));
            }
        }
    }

    #[test]
    fn tag_grammar() {
        for ok in ["v1", "_", "A.b-c_d", "1", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a:b", "é", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "oci-layout:examples/demo".to_string(),
            "oci-layout:examples/demo:v2".to_string(),
            format!("oci-layout:x@sha256:{HEX}"),
        ] {
            let r: SourceRef = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(parse("oci-layout:d:v9").unwrap().selector(), &Selector::Tag("v9".into()));
    }

    #[test]
    fn default_name_is_sanitized_last_component() {
        assert_eq!(layout("examples/demo", Selector::Only).default_name(), "demo");
        assert_eq!(layout("examples/demo/", Selector::Only).default_name(), "demo");
        assert_eq!(layout("/x/my layout!", Selector::Only).default_name(), "my_layout_");
        assert_eq!(layout("/x/c:d", Selector::Only).default_name(), "c_d");
        assert_eq!(layout("/x/demo/.", Selector::Only).default_name(), "demo");
        assert_eq!(layout("/x/demo/sub/..", Selector::Only).default_name(), "demo");
        assert_eq!(layout("/x/..hidden", Selector::Only).default_name(), "hidden");
        assert_eq!(layout("/x/-rf", Selector::Only).default_name(), "rf");
        assert_eq!(layout("/x/___", Selector::Only).default_name(), "___");
        assert_eq!(layout("/x/...", Selector::Only).default_name(), FALLBACK_NAME);
        assert_eq!(layout("/", Selector::Only).default_name(), FALLBACK_NAME);
        assert_eq!(layout("/x/日本", Selector::Only).default_name(), "__");
        let long = format!("/x/{}", "n".repeat(300));
        assert_eq!(layout(&long, Selector::Only).default_name().len(), MAX_DEFAULT_NAME_LEN);
    }

    #[test]
    fn default_name_of_dot_uses_the_real_directory() {
        let dir = tempfile::Builder::new().prefix("layoutname").tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let up = inner.join("..").join("..").join(dir.path().file_name().unwrap());
        // Lexically: `.../<tmp>/inner/../../<tmp>` resolves to `<tmp>`.
        let name = layout(up.to_str().unwrap(), Selector::Only).default_name();
        assert!(name.starts_with("layoutname"), "{name}");
        let dotdot = inner.join("..");
        let name = layout(dotdot.to_str().unwrap(), Selector::Only).default_name();
        assert!(name.starts_with("layoutname"), "{name}");
        // A relative `..` beyond what we can see lexically asks the OS.
        let cwd_parent = std::env::current_dir().unwrap().parent().map(|p| p.to_path_buf());
        if let Some(parent) = cwd_parent.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())) {
            assert_eq!(layout("..", Selector::Only).default_name(), sanitize_name(&parent));
        }
    }
}
