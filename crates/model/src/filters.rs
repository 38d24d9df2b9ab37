//! Filter lists as the Docker CLI takes them (`key=value`, repeatable),
//! and the shell globs of the `reference` filter.

use std::collections::BTreeMap;

use crate::{Error, Reference};

/// Parsed `key=value` filters: every value given for each key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    values: BTreeMap<String, Vec<String>>,
}

impl Filters {
    /// Parses `items` (`dangling=true`, `label=k=v`, `label!=k`), refusing
    /// keys not in `allowed` with Docker's `invalid filter '<key>'`.
    pub fn parse(items: &[String], allowed: &[&str]) -> Result<Self, Error> {
        let filters = Self::parse_any(items)?;
        match filters
            .values
            .keys()
            .find(|k| !allowed.contains(&k.as_str()))
        {
            Some(key) => Err(Error::InvalidArgument(format!("invalid filter '{key}'"))),
            None => Ok(filters),
        }
    }

    /// Parses `items` taking every key: Docker's events endpoint never
    /// checks its filter keys, so an unknown one filters nothing.
    pub fn parse_any(items: &[String]) -> Result<Self, Error> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in items {
            let Some((key, value)) = item.split_once('=') else {
                return Err(Error::InvalidArgument(format!(
                    "bad format of filter (expected name=value): {item:?}"
                )));
            };
            let key = key.trim().to_lowercase();
            values.entry(key).or_default().push(value.to_string());
        }
        Ok(Filters { values })
    }

    /// The values given for `key`, in order.
    pub fn get(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// A boolean filter (`dangling`): `true`/`1` or `false`/`0`; absent is
    /// `None`; anything else, or both true and false, is an error.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        let values = self.get(key);
        if values.is_empty() {
            return Ok(None);
        }
        let invalid =
            || Error::InvalidArgument(format!("invalid filter '{key}=[{}]'", values.join(" ")));
        let mut seen = None;
        for value in values {
            let b = match value.to_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(invalid()),
            };
            if seen.is_some_and(|s| s != b) {
                return Err(invalid());
            }
            seen = Some(b);
        }
        Ok(seen)
    }
}

/// A `reference=` pattern: a shell glob where `*` and `?` do not cross `/`.
#[derive(Clone, Debug)]
pub struct RefPattern(glob::Pattern);

impl RefPattern {
    pub fn new(pattern: &str) -> Result<Self, Error> {
        glob::Pattern::new(pattern).map(RefPattern).map_err(|e| {
            Error::InvalidArgument(format!("syntax error in pattern {pattern:?}: {e}"))
        })
    }

    /// Whether the pattern matches the familiar reference (`busybox:latest`)
    /// or its familiar name (`busybox`), as Docker's list filter does. The
    /// name is tried first: the reference is the name extended, so it costs
    /// one string more only when the name does not match.
    pub fn matches(&self, reference: &Reference) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let name = reference.familiar_name();
        if self.0.matches_with(&name, options) {
            return true;
        }
        let familiar = reference.familiar_from(name);
        self.0.matches_with(&familiar, options)
    }
}

/// A `label` filter value: `key` (presence) or `key=value` (exact).
pub fn label_matches(filter: &str, labels: &BTreeMap<String, String>) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_keys_and_values() {
        let f = Filters::parse(
            &items(&["label=a=b", "label=c", "dangling=true"]),
            &["label", "dangling"],
        )
        .unwrap();
        assert_eq!(f.get("label"), ["a=b", "c"]);
        assert_eq!(f.bool("dangling").unwrap(), Some(true));
        assert_eq!(f.bool("other").unwrap(), None);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        let err = Filters::parse(&items(&["colour=red"]), &["label"]).unwrap_err();
        assert_eq!(err.to_string(), "invalid filter 'colour'");
        assert!(Filters::parse(&items(&["dangling"]), &["dangling"]).is_err());
        let f = Filters::parse(&items(&["dangling=maybe"]), &["dangling"]).unwrap();
        assert_eq!(
            f.bool("dangling").unwrap_err().to_string(),
            "invalid filter 'dangling=[maybe]'"
        );
        let f = Filters::parse(&items(&["dangling=true", "dangling=0"]), &["dangling"]).unwrap();
        assert!(f.bool("dangling").is_err());
    }

    #[test]
    fn reference_globs_follow_docker() {
        let reference = |r: &str| Reference::parse(r).unwrap();
        let p = RefPattern::new("busybox").unwrap();
        assert!(p.matches(&reference("busybox:latest")));
        assert!(!p.matches(&reference("user/busybox:latest")));
        let star = RefPattern::new("*").unwrap();
        assert!(star.matches(&reference("busybox:latest")));
        assert!(!star.matches(&reference("user/app:1")));
        let tagged = RefPattern::new("user/*:1.?").unwrap();
        assert!(tagged.matches(&reference("user/app:1.2")));
        assert!(!tagged.matches(&reference("user/app:1.23")));
        // Matched in the familiar form, without docker.io.
        assert!(tagged.matches(&reference("docker.io/user/app:1.2")));
        let digested = RefPattern::new("busybox@sha256:*").unwrap();
        let digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert!(digested.matches(&reference(&digest)));
        assert!(!digested.matches(&reference("busybox:latest")));
        assert!(RefPattern::new("[").is_err());
    }

    #[test]
    fn labels_match_by_presence_or_value() {
        let labels: BTreeMap<String, String> = [("tier".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        assert!(label_matches("tier", &labels));
        assert!(label_matches("tier=web", &labels));
        assert!(!label_matches("tier=db", &labels));
        assert!(!label_matches("owner", &labels));
    }
}
