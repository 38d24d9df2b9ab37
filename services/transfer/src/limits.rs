//! The transfer limits: how many layer downloads and uploads run at once
//! across all pulls and pushes, and how often a layer download is tried.

use std::sync::atomic::{AtomicU32, Ordering};

/// Docker's default for `max-concurrent-downloads`.
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: u32 = 3;
/// Docker's default for `max-concurrent-uploads`.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: u32 = 5;
/// Docker's default for `max-download-attempts`.
pub const DEFAULT_MAX_DOWNLOAD_ATTEMPTS: u32 = 5;

/// The limits as given on the command line, environment or config file.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Layer downloads that run at once across all pulls (0 = unlimited).
    #[arg(long, env = "IMAGED_MAX_CONCURRENT_DOWNLOADS", default_value_t = DEFAULT_MAX_CONCURRENT_DOWNLOADS)]
    pub max_concurrent_downloads: u32,
    /// Layer uploads that run at once across all pushes (0 = unlimited).
    #[arg(long, env = "IMAGED_MAX_CONCURRENT_UPLOADS", default_value_t = DEFAULT_MAX_CONCURRENT_UPLOADS)]
    pub max_concurrent_uploads: u32,
    /// Attempts per layer blob before a pull fails (1 = no retry).
    #[arg(long, env = "IMAGED_MAX_DOWNLOAD_ATTEMPTS", default_value_t = DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_download_attempts: u32,
}

/// The limits in force. The two concurrency limits can change at runtime;
/// the attempt count is fixed for the life of the process, as in Docker.
#[derive(Debug)]
pub struct Limits {
    max_concurrent_downloads: AtomicU32,
    max_concurrent_uploads: AtomicU32,
    max_download_attempts: u32,
}

impl Limits {
    pub fn new(args: &LimitArgs) -> Self {
        Limits {
            max_concurrent_downloads: AtomicU32::new(args.max_concurrent_downloads),
            max_concurrent_uploads: AtomicU32::new(args.max_concurrent_uploads),
            max_download_attempts: args.max_download_attempts,
        }
    }

    pub fn max_concurrent_downloads(&self) -> u32 {
        self.max_concurrent_downloads.load(Ordering::Relaxed)
    }

    pub fn max_concurrent_uploads(&self) -> u32 {
        self.max_concurrent_uploads.load(Ordering::Relaxed)
    }

    pub fn max_download_attempts(&self) -> u32 {
        self.max_download_attempts
    }
}
