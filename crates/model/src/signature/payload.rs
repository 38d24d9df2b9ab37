//! The JSON a signature signs (containers-signature(5)): which manifest,
//! under which identity. Read only after the cryptographic check passed,
//! and strictly: the critical part must hold exactly what the format
//! says, or the signature is refused.

use serde::Deserialize;

use crate::Digest;

/// The type a simple-signing (GPG) signature's payload names.
pub const SIMPLE_SIGNING: &str = "atomic container signature";

/// The type a sigstore signature's payload names.
pub const SIGSTORE: &str = "cosign container image signature";

/// The payload of type `kind` ([`SIMPLE_SIGNING`] or [`SIGSTORE`]) skopeo
/// writes for `identity` (`host/repo:tag`) and `digest`, members in its
/// order.
pub fn build(
    kind: &str,
    identity: &str,
    digest: &Digest,
    creator: &str,
    timestamp: u64,
) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": kind,
        },
        "optional": {"creator": creator, "timestamp": timestamp},
    })
    .to_string()
    .into_bytes()
}

/// What a signature claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The identity, as written (`host/repo:tag`).
    pub docker_reference: String,
    /// The manifest signed.
    pub manifest_digest: Digest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    // Present (containers/image requires it, `null` allowed), and
    // anything is accepted in it, as the format asks.
    #[allow(dead_code)]
    optional: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    r#type: String,
    image: Image,
    identity: Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// Reads a payload of type `kind` ([`SIMPLE_SIGNING`] or [`SIGSTORE`]).
pub fn parse(bytes: &[u8], kind: &str) -> Result<Claim, String> {
    let payload: Payload =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid signature payload: {e}"))?;
    if payload.critical.r#type != kind {
        return Err(format!(
            "unrecognized signature type {:?}",
            payload.critical.r#type
        ));
    }
    let manifest_digest = payload
        .critical
        .image
        .docker_manifest_digest
        .parse()
        .map_err(|e| format!("invalid docker-manifest-digest: {e}"))?;
    Ok(Claim {
        docker_reference: payload.critical.identity.docker_reference,
        manifest_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:65855d7eaf01d6d664dfafe2cd651fd2cae08a09f7b9e259d960e7b5a4cdd925";

    fn payload(critical_extra: &str, kind: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5999/app/signed:1"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"{kind}"{critical_extra}}},"optional":{{"creator":"atomic 5.23.1","timestamp":1796668351}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn reads_what_skopeo_signs_and_refuses_anything_unexpected() {
        let claim = parse(&payload("", SIMPLE_SIGNING), SIMPLE_SIGNING).unwrap();
        assert_eq!(claim.docker_reference, "127.0.0.1:5999/app/signed:1");
        assert_eq!(claim.manifest_digest.to_string(), DIGEST);
        // An unknown critical member, another type, a repeated member.
        assert!(parse(&payload(r#","extra":1"#, SIMPLE_SIGNING), SIMPLE_SIGNING).is_err());
        assert!(
            parse(
                &payload("", "cosign container image signature"),
                SIMPLE_SIGNING
            )
            .is_err()
        );
        assert!(parse(&payload(r#","type":"x""#, SIMPLE_SIGNING), SIMPLE_SIGNING).is_err());
        assert!(parse(b"{\"critical\":{}}", SIMPLE_SIGNING).is_err());
        // `optional` must be there, as containers/image asks; cosign
        // writes it `null`.
        let without = String::from_utf8(payload("", SIGSTORE)).unwrap();
        let at = without.find(",\"optional\"").unwrap();
        let without = format!("{}}}", &without[..at]);
        assert!(parse(without.as_bytes(), SIGSTORE).is_err());
        let null = format!("{},\"optional\":null}}", &without[..without.len() - 1]);
        assert!(parse(null.as_bytes(), SIGSTORE).is_ok());
        // What imagectl signs reads back, of either kind.
        let digest: Digest = DIGEST.parse().unwrap();
        for kind in [SIMPLE_SIGNING, SIGSTORE] {
            let built = build(kind, "a.io/x:1", &digest, "imagectl", 1);
            let claim = parse(&built, kind).unwrap();
            assert_eq!(claim.docker_reference, "a.io/x:1");
            assert_eq!(claim.manifest_digest, digest);
        }
    }
}
