//! What all four imaged processes share.
//!
//! - [`config`]: flags, environment and an optional TOML file, and the root
//!   directory every process keeps its data under.
//! - [`endpoint`]: where a process listens or where a peer is reached
//!   (Unix socket or TCP); from `imaged-client`, re-exported.
//! - [`server`]: the one server bootstrap (health, reflection, tracing,
//!   graceful shutdown).
//! - [`telemetry`]: `tracing` logs, OpenTelemetry export, trace context
//!   propagation.
//! - [`peer`]: lazy, retrying clients to the other imaged services.
//! - [`rpc_trace`]: one span per call on both sides, for the whole call.
//! - [`metrics`]: OpenTelemetry metrics, OTLP export and a Prometheus page.
//! - [`events`]: publishing events to imaged-events, buffered while it is down.
//! - [`error`]: the one mapping from domain errors to gRPC status codes.
//! - [`version`]: the metadata store's version, published for readers in
//!   other processes.
//! - [`durable`]: crash-safe file writes (temporary file, fsync, rename);
//!   from `imaged-client`, re-exported.
//! - [`pass`]: a gRPC codec for answers held already encoded.
//! - [`resolve`]: Docker's order for which image a reference or ID names.

pub mod clients;
pub mod config;
pub use imaged_client::{durable, endpoint};
pub mod deadline;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod pass;
pub mod peer;
pub mod resolve;
pub mod rpc_trace;
pub mod server;
pub mod telemetry;
pub mod version;
pub mod warm;

pub use error::Error;
