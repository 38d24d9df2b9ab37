//! imaged-transfer at its gRPC edge, the only place its own API types
//! appear: the `imaged.internal.v1.Transfer` service (the adapter from
//! protobuf to the engines, [`convert`] in and [`progress`] and
//! [`layers`] out) and the client of imaged-metadata it calls.

pub(crate) mod convert;
pub(crate) mod layers;
pub(crate) mod metadata;
pub(crate) mod progress;
pub(crate) mod service;
