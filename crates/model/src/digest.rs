//! Content digests (`sha256:<hex>`) and layer chain IDs.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use sha2::{Digest as _, Sha256};

/// A content digest: algorithm and lowercase hex. For `sha256` the hex is
/// exactly 64 characters; other algorithms need at least 32.
/// Bytes named by the digest `expected` that hash to `got`: refused,
/// never stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("digest mismatch: expected {expected}, got {got}")]
pub struct DigestMismatch {
    pub expected: Digest,
    pub got: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: String,
    hex: String,
}

/// Selects the SHA-256 implementation now, rather than when the first
/// layer is hashed: the choice checks the CPU's features, and on a VM each
/// check is a trip to the hypervisor (tens of µs of the first pull after
/// start-up, in `perf`). Processes call this at start-up.
pub fn prepare() {
    std::hint::black_box(Digest::sha256_of(b""));
}

impl Digest {
    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        Digest {
            algorithm: "sha256".to_string(),
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// A SHA-256 digest from 64 lowercase hex characters.
    pub fn sha256_from_hex(hex: &str) -> Result<Self, Error> {
        format!("sha256:{hex}").parse()
    }

    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters: the short ID Docker shows in messages.
    pub fn short(&self) -> &str {
        &self.hex[..12.min(self.hex.len())]
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Parses `algo:hex`, with Docker's (go-digest's) messages.
    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(Error::InvalidArgument(
                "invalid checksum digest format".into(),
            ));
        };
        if algorithm.is_empty() || hex.is_empty() {
            return Err(Error::InvalidArgument(
                "invalid checksum digest format".into(),
            ));
        }
        let expected_len = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => {
                return Err(Error::InvalidArgument(
                    "unsupported digest algorithm".into(),
                ));
            }
        };
        if hex.len() != expected_len {
            return Err(Error::InvalidArgument(
                "invalid checksum digest length".into(),
            ));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidArgument(
                "invalid checksum digest format".into(),
            ));
        }
        Ok(Digest {
            algorithm: algorithm.to_string(),
            hex: hex.to_string(),
        })
    }
}

impl serde::Serialize for Digest {
    /// As its text, `sha256:<hex>`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// The chain ID of a layer stack given by its diff IDs, bottom first
/// (Docker's formula): `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`. `None` for no layers.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let (first, rest) = diff_ids.split_first()?;
    let mut chain = first.clone();
    for diff in rest {
        chain = Digest::sha256_of(format!("{chain} {diff}").as_bytes());
    }
    Some(chain)
}

/// The chain ID of a layer `diff` put on `parent` (a base layer's chain
/// ID is its diffID).
pub fn child_chain(parent: Option<&Digest>, diff: &Digest) -> Digest {
    match parent {
        None => diff.clone(),
        Some(parent) => Digest::sha256_of(format!("{parent} {diff}").as_bytes()),
    }
}

/// The chain IDs of every prefix of `diff_ids`: element `i` is the chain ID
/// of layers `0..=i`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn parses_and_displays() {
        let d: Digest = EMPTY_TAR.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY_TAR);
        assert_eq!(d.short(), "5f70bf18a086");
        assert_eq!(Digest::sha256_of(&[0u8; 1024]), d);
    }

    #[test]
    fn refuses_bad_digests_with_go_digest_messages() {
        let msg = |s: &str| s.parse::<Digest>().unwrap_err().to_string();
        assert_eq!(msg("sha256"), "invalid checksum digest format");
        assert_eq!(msg("sha256:abc"), "invalid checksum digest length");
        assert_eq!(
            msg("md5:0123456789abcdef0123456789abcdef"),
            "unsupported digest algorithm"
        );
        assert_eq!(
            msg(&format!("sha256:{}", "A".repeat(64))),
            "invalid checksum digest format"
        );
    }

    #[test]
    fn chain_ids_follow_dockers_formula() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let ab = Digest::sha256_of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a.clone(), b.clone()]), Some(ab.clone()));
        assert_eq!(chain_ids(&[a.clone(), b]), vec![a, ab]);
    }
}
