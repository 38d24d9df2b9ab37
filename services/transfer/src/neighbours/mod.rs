//! The neighbours the engines call, as traits: imaged-metadata (the
//! [`recorder::Recorder`]), a registry read (the [`fetcher::Fetcher`])
//! and written (the [`destination::Destination`]), and containerd (the
//! [`registrar::Registrar`]). The
//! real ones are the gRPC and HTTP clients; unit tests hand the engines
//! the fakes in `fakes`, as containerd's testsuite packages do.

pub mod destination;
pub mod fetcher;
pub mod recorder;
pub mod registrar;

#[cfg(test)]
pub mod fakes;

pub use fetcher::Fetcher;
pub use recorder::Recorder;
pub use registrar::Registrar;
