//! Sigstore signatures kept in the registry beside the image (cosign's
//! tag convention, as containers/image reads and writes them with
//! `use-sigstore-attachments`): an OCI manifest tagged
//! `sha256-<hex>.sig` in the image's repository, one layer per
//! signature, the payload the layer and the signature an annotation.

use crate::Digest;

/// The media type of a signature layer.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The annotation holding a layer's signature, base64.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The tag of the attachment manifest of `manifest`.
pub fn tag(manifest: &Digest) -> String {
    format!("{}-{}.sig", manifest.algorithm(), manifest.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_cosigns() {
        let digest: Digest =
            "sha256:65855d7eaf01d6d664dfafe2cd651fd2cae08a09f7b9e259d960e7b5a4cdd925"
                .parse()
                .unwrap();
        assert_eq!(
            tag(&digest),
            "sha256-65855d7eaf01d6d664dfafe2cd651fd2cae08a09f7b9e259d960e7b5a4cdd925.sig"
        );
    }
}
