//! containers-policy.json(5): which requirements an image must meet,
//! chosen by where it comes from. The file is read strictly and whole:
//! an unknown or repeated field, an empty requirement list, a scope that
//! is not one, or a key that cannot be read refuses all of it, naming the
//! file, the line and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use imaged_model::Reference;
use imaged_model::signature::{identity, scopes_of};

use super::identity::SignedIdentity;
use super::keys::{GpgKeys, SigstoreKey};

/// A policy, parsed.
#[derive(Debug)]
pub struct Policy {
    /// Where it was read from, for messages and the verification cache.
    pub origin: String,
    default: Vec<Requirement>,
    /// The `docker` transport's scopes; `""` is the transport's default.
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// One requirement an image must meet.
#[derive(Debug)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    /// A simple-signing signature by one of `keys`, claiming an identity
    /// `identity` accepts.
    SignedBy {
        keys: Arc<GpgKeys>,
        identity: SignedIdentity,
    },
    /// A sigstore signature by `key` (an attachment in the registry),
    /// claiming an identity `identity` accepts. Fulcio and Rekor are not
    /// read: a policy naming them does not parse.
    SigstoreSigned {
        key: Arc<SigstoreKey>,
        identity: SignedIdentity,
    },
}

/// A policy that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct PolicyError {
    pub origin: String,
    pub reason: String,
}

impl Policy {
    /// Reads the policy at `path`.
    pub fn read(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        Policy::parse(&text, origin)
    }

    /// Parses `text`, read from `origin`.
    pub fn parse(text: &str, origin: String) -> Result<Policy, PolicyError> {
        // serde_json names the line and column where it stopped; the
        // requirements check their keys and scopes as they are read, so
        // their refusals name a line too.
        let raw: RawPolicy = serde_json::from_str(text).map_err(|e| PolicyError {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        let mut docker = BTreeMap::new();
        for (transport, scopes) in raw.transports.0 {
            for (scope, requirements) in scopes.0 {
                if transport == "docker" {
                    check_docker_scope(&scope).map_err(|reason| PolicyError {
                        origin: origin.clone(),
                        reason: format!("transports.docker: scope {scope:?}: {reason}"),
                    })?;
                    docker.insert(scope, requirements.0);
                }
                // Other transports (dir, oci, atomic, …) never reach
                // imaged: checked as requirements, otherwise unused.
            }
        }
        Ok(Policy {
            origin,
            default: raw.default.0,
            docker,
        })
    }

    /// The requirements for `reference` (a registry image), and the scope
    /// they were chosen by: its most specific scope, else the docker
    /// transport's default, else the global default.
    pub fn requirements_for(&self, reference: &Reference) -> (&str, &[Requirement]) {
        for scope in scopes_of(reference) {
            if let Some((key, found)) = self.docker.get_key_value(scope.as_str()) {
                return (key, found);
            }
        }
        match self.docker.get_key_value("") {
            Some((key, found)) => (key, found),
            None => ("default", &self.default),
        }
    }
}

/// A docker scope as containers/image accepts it: `*.domain`, or a fully
/// expanded reference, repository, namespace or host.
fn check_docker_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        let valid = !domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        return if valid {
            Ok(())
        } else {
            Err("a wildcard must be *.domain".into())
        };
    }
    if scope.contains("://") {
        return Err("a scope is a reference without a transport".into());
    }
    let parsed = Reference::parse(scope).map_err(|e| e.to_string())?;
    let expanded = match identity(&parsed) {
        Some(identity) => identity,
        None => parsed.name(),
    };
    // A host alone (`host[:port]`) parses as a repository of Docker Hub;
    // it is a scope as it is written.
    let host_only = !scope.contains(['/', '@'])
        && scope
            .split_once(':')
            .is_none_or(|(_, port)| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
    if expanded != scope && !host_only {
        return Err(format!("not in the fully expanded form: use {expanded:?}"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Requirements,
    #[serde(default)]
    transports: Unique<Unique<Requirements>>,
}

/// A non-empty list of requirements.
struct Requirements(Vec<Requirement>);

impl<'de> Deserialize<'de> for Requirements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Requirement>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom("no policy requirements specified"));
        }
        Ok(Requirements(list))
    }
}

/// A JSON object whose keys may appear once each.
struct Unique<T>(BTreeMap<String, T>);

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Unique(BTreeMap::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Unique<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Keys<T> {
            type Value = Unique<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(Unique(out))
            }
        }
        d.deserialize_map(Keys(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawRequirement {
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        key_path: Option<String>,
        key_paths: Option<Vec<String>>,
        key_data: Option<String>,
        signed_identity: Option<RawIdentity>,
    },
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        key_path: Option<String>,
        key_data: Option<String>,
        signed_identity: Option<RawIdentity>,
    },
}

impl<'de> Deserialize<'de> for Requirement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawRequirement::deserialize(d)?
            .into_requirement()
            .map_err(de::Error::custom)
    }
}

impl RawRequirement {
    fn into_requirement(self) -> Result<Requirement, String> {
        Ok(match self {
            RawRequirement::InsecureAcceptAnything {} => Requirement::InsecureAcceptAnything,
            RawRequirement::Reject {} => Requirement::Reject,
            RawRequirement::SignedBy {
                key_type,
                key_path,
                key_paths,
                key_data,
                signed_identity,
            } => {
                if key_type != "GPGKeys" {
                    return Err(format!("signedBy: unknown keyType {key_type:?}"));
                }
                let keyrings = match (key_path, key_paths, key_data) {
                    (Some(path), None, None) => vec![read_key(&path)?],
                    (None, Some(paths), None) => {
                        if paths.is_empty() {
                            return Err("signedBy: keyPaths is empty".into());
                        }
                        paths
                            .iter()
                            .map(|p| read_key(p))
                            .collect::<Result<_, _>>()?
                    }
                    (None, None, Some(data)) => vec![decode_key_data(&data)?],
                    _ => {
                        return Err(
                            "signedBy: exactly one of keyPath, keyPaths and keyData must be present"
                                .into(),
                        );
                    }
                };
                let keys = GpgKeys::parse(&keyrings).map_err(|e| format!("signedBy: {e}"))?;
                Requirement::SignedBy {
                    keys: Arc::new(keys),
                    identity: identity_or_default(signed_identity)?,
                }
            }
            RawRequirement::SigstoreSigned {
                key_path,
                key_data,
                signed_identity,
            } => {
                let key = match (key_path, key_data) {
                    (Some(path), None) => read_key(&path)?,
                    (None, Some(data)) => decode_key_data(&data)?,
                    _ => {
                        return Err(
                            "sigstoreSigned: exactly one of keyPath and keyData must be present"
                                .into(),
                        );
                    }
                };
                let key = SigstoreKey::parse(&key).map_err(|e| format!("sigstoreSigned: {e}"))?;
                Requirement::SigstoreSigned {
                    key: Arc::new(key),
                    identity: identity_or_default(signed_identity)?,
                }
            }
        })
    }
}

fn read_key(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read key {path}: {e}"))
}

fn decode_key_data(data: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("keyData is not base64: {e}"))
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawIdentity {
    #[serde(rename = "matchExact")]
    MatchExact {},
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact {},
    #[serde(rename = "matchRepository")]
    MatchRepository {},
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename = "remapIdentity", rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

fn identity_or_default(raw: Option<RawIdentity>) -> Result<SignedIdentity, String> {
    Ok(match raw {
        None | Some(RawIdentity::MatchRepoDigestOrExact {}) => {
            SignedIdentity::MatchRepoDigestOrExact
        }
        Some(RawIdentity::MatchExact {}) => SignedIdentity::MatchExact,
        Some(RawIdentity::MatchRepository {}) => SignedIdentity::MatchRepository,
        Some(RawIdentity::ExactReference { docker_reference }) => {
            let parsed = Reference::parse(&docker_reference)
                .map_err(|e| format!("exactReference {docker_reference:?}: {e}"))?;
            if parsed.tag().is_none() && parsed.digest().is_none() {
                return Err(format!(
                    "exactReference {docker_reference:?}: needs a tag or a digest"
                ));
            }
            SignedIdentity::ExactReference(parsed)
        }
        Some(RawIdentity::ExactRepository { docker_repository }) => {
            let parsed = Reference::parse(&docker_repository)
                .map_err(|e| format!("exactRepository {docker_repository:?}: {e}"))?;
            if parsed.tag().is_some() || parsed.digest().is_some() {
                return Err(format!(
                    "exactRepository {docker_repository:?}: a repository has no tag or digest"
                ));
            }
            SignedIdentity::ExactRepository(parsed.name())
        }
        Some(RawIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        }) => {
            for (what, value) in [("prefix", &prefix), ("signedPrefix", &signed_prefix)] {
                check_prefix(value).map_err(|e| format!("remapIdentity {what} {value:?}: {e}"))?;
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            }
        }
    })
}

/// A remap prefix: `host[:port]`, a namespace or a repository, in the
/// fully expanded form, without a tag or digest.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.contains('@') || prefix.ends_with('/') {
        return Err("must be host[:port], a namespace or a repository".into());
    }
    let path = prefix.split_once('/').map(|(_, p)| p).unwrap_or("");
    if path.contains(':') {
        return Err("must not carry a tag".into());
    }
    Ok(())
}
