//! The `signedIdentity` rules of containers-policy.json(5): whether the
//! identity a signature claims may stand for the image the user asked
//! for.

use imaged_model::Reference;
use imaged_model::signature::identity;

/// What a signature's claimed identity must be, for the image asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The claim names the image exactly (a tag pull needs that tag, a
    /// digest pull that digest).
    MatchExact,
    /// A tag pull needs the exact tag; a digest pull any claim in the
    /// same repository. The default.
    MatchRepoDigestOrExact,
    /// Any claim in the same repository.
    MatchRepository,
    /// The claim is exactly this reference (tagged or digested).
    ExactReference(Reference),
    /// The claim is in this repository.
    ExactRepository(String),
    /// An image under `prefix` is taken as if it were under
    /// `signed_prefix`, then matched as [`SignedIdentity::MatchRepoDigestOrExact`].
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

impl SignedIdentity {
    /// Whether a signature claiming `signed` may stand for `image`.
    pub fn matches(&self, image: &Reference, signed: &Reference) -> bool {
        match self {
            SignedIdentity::MatchExact => {
                identity(image).is_some() && identity(image) == identity(signed)
            }
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(
                &image.name(),
                image.digest().is_some(),
                identity(image),
                signed,
            ),
            SignedIdentity::MatchRepository => image.name() == signed.name(),
            SignedIdentity::ExactReference(wanted) => {
                identity(wanted).is_some() && identity(wanted) == identity(signed)
            }
            SignedIdentity::ExactRepository(name) => *name == signed.name(),
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let name = image.name();
                let Some(rest) = strip_prefix(&name, prefix) else {
                    return SignedIdentity::MatchRepoDigestOrExact.matches(image, signed);
                };
                let remapped_name = format!("{signed_prefix}{rest}");
                let remapped =
                    identity(image).map(|i| format!("{signed_prefix}{}", &i[prefix.len()..]));
                repo_digest_or_exact(&remapped_name, image.digest().is_some(), remapped, signed)
            }
        }
    }
}

/// `name` without `prefix`, when `prefix` is all of it or a whole
/// leading part of it (ending at a `/`).
fn strip_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn repo_digest_or_exact(
    name: &str,
    by_digest: bool,
    identity_of_image: Option<String>,
    signed: &Reference,
) -> bool {
    if by_digest {
        return name == signed.name();
    }
    identity_of_image.is_some() && identity_of_image == identity(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> Reference {
        Reference::parse(text).unwrap()
    }

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn each_rule_matches_as_containers_image_does() {
        let tag = r("example.com/ns/app:1");
        let by_digest = r(&format!("example.com/ns/app@{D}"));
        let same = r("example.com/ns/app:1");
        let other_tag = r("example.com/ns/app:2");
        let other_repo = r("example.com/ns/other:1");

        use SignedIdentity::*;
        assert!(MatchExact.matches(&tag, &same));
        assert!(!MatchExact.matches(&tag, &other_tag));
        assert!(!MatchExact.matches(&by_digest, &same));

        assert!(MatchRepoDigestOrExact.matches(&tag, &same));
        assert!(!MatchRepoDigestOrExact.matches(&tag, &other_tag));
        assert!(MatchRepoDigestOrExact.matches(&by_digest, &other_tag));
        assert!(!MatchRepoDigestOrExact.matches(&by_digest, &other_repo));

        assert!(MatchRepository.matches(&tag, &other_tag));
        assert!(!MatchRepository.matches(&tag, &other_repo));

        assert!(ExactReference(r("example.com/ns/other:1")).matches(&tag, &other_repo));
        assert!(!ExactReference(r("example.com/ns/other:1")).matches(&tag, &same));
        assert!(ExactRepository("example.com/ns/other".into()).matches(&tag, &other_repo));

        let remap = RemapIdentity {
            prefix: "mirror.local/vendor".into(),
            signed_prefix: "vendor.example.com".into(),
        };
        let mirrored = r("mirror.local/vendor/product/app:1");
        assert!(remap.matches(&mirrored, &r("vendor.example.com/product/app:1")));
        assert!(!remap.matches(&mirrored, &r("vendor.example.com/product/app:2")));
        assert!(!remap.matches(&mirrored, &r("mirror.local/vendor/product/app:1")));
        // Not under the prefix (a longer name is not a prefix match).
        let beside = r("mirror.local/vendorx/app:1");
        assert!(remap.matches(&beside, &r("mirror.local/vendorx/app:1")));
    }
}
