//! The small part of imaged a client links: `imagectl` and `imaged-run`
//! reach the processes with it, without the server, telemetry and
//! OpenTelemetry stack of `imaged-common` (which re-exports these).
//!
//! - [`endpoint`]: where a process listens or a peer is reached, and the
//!   one Unix socket connector;
//! - [`durable`]: crash-safe file writes (temporary file, fsync, rename).

pub mod durable;
pub mod endpoint;
