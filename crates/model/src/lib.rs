//! Docker's image vocabulary, each concept in one module:
//!
//! - [`digest`]: `algo:hex` content digests and layer chain IDs.
//! - [`reference`]: image references (`busybox`, `myreg:5000/app:v1`,
//!   `name@sha256:…`), normalized and shown the way Docker does.
//! - [`platform`]: OS/architecture/variant, normalization and matching.
//! - [`timestamp`]: the timestamp forms `until`/`since` accept.
//! - [`filters`]: `key=value` filter lists and reference globs.
//!
//! Errors are [`imaged_common::Error`] values carrying Docker's wording, so
//! they reach the caller as the right gRPC status unchanged.

pub mod changes;
pub mod digest;
pub mod filters;
pub mod platform;
pub mod reference;
pub mod timestamp;

pub use digest::Digest;
pub use platform::Platform;
pub use reference::{ImageRef, Reference};
