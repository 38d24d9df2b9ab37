//! The media types imaged reads and writes, named once: OCI's and
//! Docker's manifests, indexes, configs and layers (the OCI image spec and
//! Docker's image manifest v2 schema 2).

/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// A Docker image manifest (v2 schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker image config, as a schema 2 manifest names it.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// A gzip-compressed layer, as a schema 2 manifest names it.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// A Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The prefix of Docker's schema 1 manifests, which Docker v28 refuses.
pub const DOCKER_SCHEMA1_PREFIX: &str = "application/vnd.docker.distribution.manifest.v1";
/// The prefix of Docker's AI model artifacts, which the Engine refuses.
pub const DOCKER_AI_PREFIX: &str = "application/vnd.docker.ai.";

/// The manifest and index types a pull asks for and reads.
pub const PULLABLE: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// The OCI layer type for a blob that starts with `magic`: gzip, zstd, or
/// an uncompressed tar.
pub fn oci_layer_for(magic: &[u8]) -> &'static str {
    if magic.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER
    }
}
