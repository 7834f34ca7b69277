//! The keys of a desired-state file: every package table's, and the
//! `[defaults]` table's that fill in what a package leaves out. The keys are
//! the `install` flags' long names; each value is read through a typed
//! getter whose error names the file, the line, the package and the key.
//! A key not in [`KEYS`] is an error that suggests the closest known one.
//!
//! This module knows which keys exist and how their values are spelled; it
//! does not know what they mean (`desired` builds the install request).

use std::collections::BTreeMap;
use std::ops::Range;

use toml::{Spanned, Value};

use crate::installer::{Error, Result};

/// Every key a package table takes. All but [`PACKAGE_ONLY`] may also be
/// set in `[defaults]`. Adding an `install` flag to the file is one line
/// here, and the line in `desired` that puts its value into the request.
pub const KEYS: &[&str] = &[
    "ref",
    "name",
    "to",
    "map",
    "adopt",
    "profile",
    "install-dir",
    "db-version",
    "platform",
    "plain-http",
    "username",
    "password-env",
    "verify-key",
    "certificate-identity",
    "certificate-identity-regexp",
    "certificate-oidc-issuer",
    "trusted-root",
    "require-signature",
    "request-timeout",
    "max-entries",
    "max-layer-bytes",
    "max-path-bytes",
    "keep-versions",
];

/// Keys that name one package, so `[defaults]` cannot set them.
pub const PACKAGE_ONLY: &[&str] = &["ref", "name"];

/// A table as the file writes it: each key with its value and where it is.
pub type Table = BTreeMap<String, Spanned<Value>>;

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The edit distance between two short strings (Levenshtein).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The known key closest to `key`, if one is close enough to be a typo.
pub fn closest(key: &str) -> Option<&'static str> {
    KEYS.iter().map(|k| (distance(key, k), *k)).filter(|(d, k)| *d <= (k.len() / 3).max(2)).min().map(|(_, k)| k)
}

/// One package's keys: its own, over `[defaults]`.
pub struct Keys<'a> {
    /// The file as shown in errors.
    pub file: &'a str,
    pub text: &'a str,
    /// The package's table name.
    pub package: &'a str,
    /// Each key, and whether it came from `[defaults]`.
    entries: BTreeMap<&'a str, (&'a Spanned<Value>, bool)>,
}

impl<'a> Keys<'a> {
    /// Checks every key of `own` and `defaults` (unknown keys, `password`,
    /// package-only keys in `[defaults]`) and merges them: a key the package
    /// sets wins over the default, whole (a package's `map` replaces the
    /// default `map`).
    pub fn merge(
        file: &'a str,
        text: &'a str,
        package: &'a str,
        own: &'a Table,
        defaults: &'a Table,
    ) -> Result<Keys<'a>> {
        let mut keys = Keys { file, text, package, entries: BTreeMap::new() };
        for (key, v) in defaults {
            keys.check_known(key, v, true)?;
            keys.entries.insert(key.as_str(), (v, true));
        }
        for (key, v) in own {
            keys.check_known(key, v, false)?;
            keys.entries.insert(key.as_str(), (v, false));
        }
        Ok(keys)
    }

    fn check_known(&self, key: &str, v: &Spanned<Value>, in_defaults: bool) -> Result<()> {
        let why = if key == "password" || key == "password-stdin" {
            "a desired-state file never holds a password: name the environment variable that holds it, \
             e.g. `password-env = \"REG_TOKEN\"`, with `username`"
                .to_string()
        } else if in_defaults && PACKAGE_ONLY.contains(&key) {
            format!("`{key}` names one package, so it belongs in a [package.NAME] table, not [defaults]")
        } else if KEYS.contains(&key) {
            return Ok(());
        } else {
            let hint = closest(key).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
            format!("unknown key (the keys are the install flags' long names: {}){hint}", KEYS.join(", "))
        };
        Err(self.error_at(v.span(), key, in_defaults, &why))
    }

    fn error_at(&self, span: Range<usize>, key: &str, in_defaults: bool, why: &str) -> Error {
        let table = if in_defaults { "[defaults]".to_string() } else { format!("package {:?}", self.package) };
        Error::Refused(format!(
            "{}:{}: {table}, key `{key}`: {why}. Nothing was changed",
            self.file,
            line_of(self.text, span.start)
        ))
    }

    /// An error about `key`'s value, at its line (a key not set: at the package).
    pub fn error(&self, key: &str, why: &str) -> Error {
        match self.entries.get(key) {
            Some((v, d)) => self.error_at(v.span(), key, *d, why),
            None => Error::Refused(format!("{}: package {:?}: {why}. Nothing was changed", self.file, self.package)),
        }
    }

    /// True if `key` is set (by the package or `[defaults]`).
    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    fn value(&self, key: &str) -> Option<&'a Value> {
        debug_assert!(KEYS.contains(&key), "{key} is not in KEYS");
        self.entries.get(key).map(|(v, _)| v.get_ref())
    }

    fn wrong(&self, key: &str, expected: &str) -> Error {
        let got = self.value(key).map(Value::type_str).unwrap_or("nothing");
        self.error(key, &format!("expected {expected}, found {got}"))
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    /// A list of strings (`map`).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.value(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(|| self.wrong(key, "a list of strings")))
                .collect(),
            Some(_) => Err(self.wrong(key, "a list of strings, e.g. [\"*.so=/opt/lib\"]")),
        }
    }

    /// A boolean flag; unset is false.
    pub fn flag(&self, key: &str) -> Result<bool> {
        match self.value(key) {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(self.wrong(key, "true or false")),
        }
    }

    /// A whole number, zero or more.
    pub fn count(&self, key: &str) -> Result<Option<u64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => u64::try_from(*n).map(Some).map_err(|_| self.wrong(key, "a whole number")),
            Some(_) => Err(self.wrong(key, "a whole number")),
        }
    }

    /// A byte size as the flag takes it: a number of bytes, or a string
    /// such as "64 GiB".
    pub fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.value(key) {
            Some(Value::String(s)) => crate::cli::units::parse_size(s).map(Some).map_err(|e| self.error(key, &e)),
            _ => self.count(key).map_err(|_| self.wrong(key, "a size: bytes, or a string such as \"64 GiB\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_closest_key() {
        assert_eq!(closest("mpa"), Some("map"));
        assert_eq!(closest("max-entry"), Some("max-entries"));
        assert_eq!(closest("verify_key"), Some("verify-key"));
        assert_eq!(closest("installdir"), Some("install-dir"));
        assert_eq!(closest("completely-different"), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
