//! Docker's image vocabulary, each concept in one module:
//!
//! - [`digest`]: `algo:hex` content digests and layer chain IDs.
//! - [`reference`]: image references (`busybox`, `myreg:5000/app:v1`,
//!   `name@sha256:…`), normalized and shown the way Docker does.
//! - [`platform`]: OS/architecture/variant, normalization and matching.
//! - [`timestamp`]: the timestamp forms `until`/`since` accept.
//! - [`filters`]: `key=value` filter lists and reference globs.
//! - [`image_config`]: image configs, parsed once and strictly.
//! - [`media_type`]: the manifest, index, config and layer media types.
//! - [`record`]: an image to record, and what recording did.
//! - [`signature`]: containers/image's signature vocabulary: identities,
//!   policy scopes, the signed payload, registries.d.
//!
//! The crate knows no transport: its [`Error`] says what input was wrong,
//! in Docker's wording, and `imaged-common` maps it to a gRPC status, so a
//! change to the server bootstrap or telemetry never rebuilds Docker's
//! vocabulary.

pub mod changes;
pub mod digest;
pub mod filters;
pub mod image_config;
pub mod media_type;
pub mod platform;
pub mod record;
pub mod reference;
pub mod signature;
pub mod timestamp;

/// Input that is not valid Docker vocabulary: a bad reference, digest,
/// platform, filter, timestamp or `--change` instruction. The message is
/// Docker's, and reaches the caller as INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
}

pub use digest::Digest;
pub use platform::Platform;
pub use reference::{ImageRef, Reference};
