//! Image references, parsed and normalized as Docker (distribution's
//! `reference` package) does, and shown in Docker's familiar form.

use std::fmt;
use std::sync::LazyLock;

use crate::Error;
use regex::Regex;

use crate::digest::Digest;

/// Docker Hub's canonical domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// The server Docker Hub's credentials are kept under and logins name.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The registry host a login server names, as Docker's
/// `ConvertToHostname` reads it: the scheme and any path dropped.
pub fn server_hostname(server: &str) -> &str {
    let bare = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    bare.split('/').next().unwrap_or(bare)
}

/// The registry domain a host stands for: Docker Hub's index and
/// registry hosts are `docker.io`.
pub fn registry_domain(host: &str) -> &str {
    match host {
        LEGACY_DEFAULT_DOMAIN | "registry-1.docker.io" => DEFAULT_DOMAIN,
        other => other,
    }
}
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// The grammar of distribution's reference package.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let alnum = "[a-z0-9]+";
    let separator = "(?:[._]|__|[-]+)";
    let path_component = format!("{alnum}(?:{separator}{alnum})*");
    let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain_name = format!(r"{domain_component}(?:\.{domain_component})*");
    let host = format!(r"(?:{domain_name}|\[[a-fA-F0-9:]+\])");
    let domain = format!(r"{host}(?::[0-9]+)?");
    let name = format!("(?:{domain}/)?{path_component}(?:/{path_component})*");
    // Go's `\w` is ASCII: Unicode word characters are no tag's (and a
    // Unicode class repeated 128 times is a regex that takes tens of
    // milliseconds to build).
    let tag = TAG_GRAMMAR;
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$")).expect("reference grammar")
});

/// distribution's tag grammar, `[\w][\w.-]{0,127}` with Go's ASCII `\w`.
const TAG_GRAMMAR: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{TAG_GRAMMAR}$")).expect("tag grammar"));

static IDENTIFIER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-f0-9]{64}$").expect("identifier grammar"));

/// Builds the grammars now. Each is a regex compilation, a fraction of a
/// millisecond that the first request to parse a reference would pay
/// otherwise; processes call this at start-up.
pub fn prepare() {
    LazyLock::force(&REFERENCE);
    LazyLock::force(&TAG);
    LazyLock::force(&IDENTIFIER);
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// A named image reference: `domain/path[:tag][@digest]`, normalized
/// (`busybox` is `docker.io/library/busybox`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference as the Docker CLI and API take it, with Docker's
    /// normalization and error messages (`ParseNormalizedNamed`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        if IDENTIFIER.is_match(s) {
            return Err(invalid(format!(
                "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
            )));
        }
        let (domain, remainder) = split_domain(s);
        let remote = match remainder.find(':') {
            Some(i) => &remainder[..i],
            None => &remainder,
        };
        if remote.to_lowercase() != remote {
            return Err(invalid(format!(
                "invalid reference format: repository name ({remote}) must be lowercase"
            )));
        }
        Self::parse_full(&format!("{domain}/{remainder}"), domain.len())
    }

    /// Parses an already fully qualified reference whose domain is the
    /// first `domain_len` bytes.
    fn parse_full(s: &str, domain_len: usize) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(invalid("repository name must have at least one component"));
        }
        let Some(captures) = REFERENCE.captures(s) else {
            if s.to_lowercase() != s && REFERENCE.is_match(&s.to_lowercase()) {
                return Err(invalid(
                    "invalid reference format: repository name must be lowercase",
                ));
            }
            return Err(invalid("invalid reference format"));
        };
        let name = &captures[1];
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(format!(
                "invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            )));
        }
        let digest = captures
            .get(3)
            .map(|d| d.as_str().parse::<Digest>())
            .transpose()?;
        Ok(Reference {
            domain: name[..domain_len].to_string(),
            path: name[domain_len + 1..].to_string(),
            tag: captures.get(2).map(|t| t.as_str().to_string()),
            digest,
        })
    }

    /// `name` with `tag` (validated), replacing any tag and dropping any digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, Error> {
        if !TAG.is_match(tag) {
            return Err(invalid(format!("invalid tag format: {tag:?}")));
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// The reference of this repository with `digest` and no tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Docker's `TagNameOnly`: adds `:latest` when there is neither tag
    /// nor digest.
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The form the reference store keys on: digest wins over tag, and a
    /// bare name gets `:latest`.
    pub fn store_key(&self) -> Reference {
        match &self.digest {
            Some(digest) => self.with_digest(digest.clone()),
            None => self.clone().with_default_tag(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The fully qualified repository name (`docker.io/library/busybox`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository name as Docker shows it (`busybox`, `user/app`,
    /// `myreg:5000/app`).
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.name();
        }
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    /// The whole reference as Docker shows it (`busybox:latest`).
    pub fn familiar(&self) -> String {
        self.familiar_from(self.familiar_name())
    }

    /// [`Reference::familiar`] from the [`Reference::familiar_name`] the
    /// caller already has.
    pub fn familiar_from(&self, mut familiar_name: String) -> String {
        self.append_tag_and_digest(&mut familiar_name);
        familiar_name
    }

    fn append_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form (`docker.io/library/busybox:latest`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.append_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

/// Splits off the domain the way Docker does: the first component is a
/// domain if it contains `.` or `:`, is `localhost`, or has uppercase.
fn split_domain(s: &str) -> (String, String) {
    let (mut domain, mut remainder) = match s.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), s.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

/// What a "reference or ID" argument (`docker inspect X`) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A full image ID: 64 hex, or any valid `algo:hex` digest.
    Id(Digest),
    /// A name, possibly with tag and digest.
    Named(Reference),
}

impl ImageRef {
    /// Classifies `s` as Docker's `ParseAnyReference` does. A short hex
    /// string parses as a name (`4e5f` is `docker.io/library/4e5f:latest`);
    /// callers fall back to an ID-prefix search on the raw input.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if IDENTIFIER.is_match(s) {
            return Ok(ImageRef::Id(Digest::sha256_from_hex(s)?));
        }
        if let Ok(digest) = s.parse::<Digest>() {
            return Ok(ImageRef::Id(digest));
        }
        Reference::parse(s).map(ImageRef::Named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> (String, String) {
        let r = Reference::parse(s).unwrap();
        (r.to_string(), r.familiar())
    }

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox", "busybox"),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            ("user/app", "docker.io/user/app", "user/app"),
            ("index.docker.io/user/app", "docker.io/user/app", "user/app"),
            (
                "docker.io/library/a/b",
                "docker.io/library/a/b",
                "library/a/b",
            ),
            ("localhost/app", "localhost/app", "localhost/app"),
            ("myreg:5000/app", "myreg:5000/app", "myreg:5000/app"),
            ("my.reg/app:v1", "my.reg/app:v1", "my.reg/app:v1"),
            ("[::1]:5000/app", "[::1]:5000/app", "[::1]:5000/app"),
        ];
        for (input, full, familiar) in cases {
            assert_eq!(
                norm(input),
                (full.to_string(), familiar.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn default_tag_and_digest_precedence() {
        let r = Reference::parse("busybox").unwrap().with_default_tag();
        assert_eq!(r.familiar(), "busybox:latest");
        let hex = "a".repeat(64);
        let both = Reference::parse(&format!("busybox:1@sha256:{hex}")).unwrap();
        assert_eq!(both.tag(), Some("1"));
        assert_eq!(both.store_key().familiar(), format!("busybox@sha256:{hex}"));
        assert_eq!(both.familiar_name(), "busybox");
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let msg = |s: &str| Reference::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("Busybox"),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert_eq!(
            msg(&"a".repeat(64)),
            format!(
                "invalid repository name ({}), cannot specify 64-byte hexadecimal strings",
                "a".repeat(64)
            )
        );
        assert_eq!(msg("busybox:"), "invalid reference format");
        assert_eq!(msg("-busybox"), "invalid reference format");
        assert_eq!(msg("busybox@sha256:abc"), "invalid reference format");
        assert_eq!(
            msg(&format!("busybox:{}", "t".repeat(129))),
            "invalid reference format"
        );
        // Go's \w is ASCII: a tag with another letter is refused.
        assert_eq!(msg("busybox:caf\u{e9}"), "invalid reference format");
        assert!(Reference::parse("busybox:Caf_e.1-x").is_ok());
        assert!(msg(&format!("{}/x", "a".repeat(300))).contains("must not be more than 255"));
        // A domain may have uppercase, the path may not.
        assert!(Reference::parse("MyReg.io/app").is_ok());
        assert!(Reference::parse("myreg.io/App").is_err());
    }

    #[test]
    fn tags_are_validated() {
        let r = Reference::parse("app").unwrap();
        assert_eq!(r.with_tag("v1.0-rc_1").unwrap().familiar(), "app:v1.0-rc_1");
        assert!(r.with_tag(".bad").is_err());
        assert!(r.with_tag("").is_err());
    }

    #[test]
    fn classifies_ids_and_names() {
        let hex = "0123456789abcdef".repeat(4);
        let id = Digest::sha256_from_hex(&hex).unwrap();
        assert_eq!(ImageRef::parse(&hex).unwrap(), ImageRef::Id(id.clone()));
        assert_eq!(
            ImageRef::parse(&format!("sha256:{hex}")).unwrap(),
            ImageRef::Id(id)
        );
        match ImageRef::parse("sha256:4e5f").unwrap() {
            ImageRef::Named(r) => {
                assert_eq!(r.familiar_name(), "sha256");
                assert_eq!(r.tag(), Some("4e5f"));
            }
            other => panic!("{other:?}"),
        }
        match ImageRef::parse("4e5f").unwrap() {
            ImageRef::Named(r) => assert_eq!(r.to_string(), "docker.io/library/4e5f"),
            other => panic!("{other:?}"),
        }
        assert!(ImageRef::parse("UPPER").is_err());
    }
}
