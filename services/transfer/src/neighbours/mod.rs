//! The neighbours the engines call, as traits: imaged-metadata (the
//! [`recorder::Recorder`]) and a registry (the [`fetcher::Fetcher`]). The
//! real ones are the gRPC and HTTP clients; unit tests hand the engines
//! the fakes in `fakes`, as containerd's testsuite packages do.

pub mod recorder;

pub use recorder::Recorder;
