//! imaged-transfer at its gRPC edge: the `imaged.internal.v1.Transfer`
//! service (the adapter from protobuf to the engines) and the client of
//! imaged-metadata it calls.

pub(crate) mod convert;
pub(crate) mod metadata;
pub(crate) mod progress;
pub(crate) mod service;
