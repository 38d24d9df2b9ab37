//! The neighbours the engines call, as traits: imaged-metadata (the
//! [`recorder::Recorder`]) and a registry (the [`fetcher::Fetcher`]). The
//! real ones are the gRPC and HTTP clients; unit tests hand the engines
//! the fakes in `fakes`, as containerd's testsuite packages do.

pub mod fetcher;
pub mod recorder;

#[cfg(test)]
pub mod fakes;

pub use fetcher::Fetcher;
pub use recorder::Recorder;
