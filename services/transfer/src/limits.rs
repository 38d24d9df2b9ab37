//! The transfer limits: how many layer downloads and uploads run at once
//! across all pulls and pushes, and how often a layer download is tried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitArgs;

/// Docker's default for `max-concurrent-downloads`.
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: u32 = 3;
/// Docker's default for `max-concurrent-uploads`.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: u32 = 5;
/// Docker's default for `max-download-attempts`.
pub const DEFAULT_MAX_DOWNLOAD_ATTEMPTS: u32 = 5;

/// The limits in force. The two concurrency limits can change at runtime;
/// the attempt count is fixed for the life of the process, as in Docker.
#[derive(Debug)]
pub struct Limits {
    /// Admits layer downloads.
    pub downloads: Gate,
    /// Admits blob uploads.
    pub uploads: Gate,
    max_download_attempts: u32,
}

impl Limits {
    pub fn new(args: &LimitArgs) -> Self {
        // 0 reads as the default, as Docker reads its daemon.json.
        let or_default = |n: u32, default: u32| if n == 0 { default } else { n };
        Limits {
            downloads: Gate::new(or_default(
                args.max_concurrent_downloads,
                DEFAULT_MAX_CONCURRENT_DOWNLOADS,
            )),
            uploads: Gate::new(or_default(
                args.max_concurrent_uploads,
                DEFAULT_MAX_CONCURRENT_UPLOADS,
            )),
            max_download_attempts: args.max_download_attempts,
        }
    }

    pub fn max_concurrent_downloads(&self) -> u32 {
        self.downloads.limit()
    }

    pub fn max_concurrent_uploads(&self) -> u32 {
        self.uploads.limit()
    }

    pub fn max_download_attempts(&self) -> u32 {
        self.max_download_attempts
    }

    /// Applies an UpdateConfig: `None` or 0 keeps a limit, as Docker's
    /// UpdateConfig ignores zero values.
    pub fn update(&self, downloads: Option<u32>, uploads: Option<u32>) {
        if let Some(n) = downloads.filter(|n| *n > 0) {
            self.downloads.set_limit(n);
        }
        if let Some(n) = uploads.filter(|n| *n > 0) {
            self.uploads.set_limit(n);
        }
    }
}

/// A semaphore whose size can change while permits are out: growing adds
/// permits at once; shrinking takes the surplus back as running transfers
/// return theirs, so nothing in flight is interrupted.
#[derive(Debug)]
pub struct Gate {
    semaphore: Arc<Semaphore>,
    limit: AtomicU32,
    in_flight: Arc<AtomicUsize>,
    waiting: AtomicUsize,
}

/// One admitted transfer; dropping it lets the next one in.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    fn new(limit: u32) -> Self {
        Gate {
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            limit: AtomicU32::new(limit),
            in_flight: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Waits for a free slot.
    #[cfg(test)]
    pub async fn admit(&self) -> Admitted {
        self.admit_or(|| {}).await
    }

    /// Waits for a free slot, calling `held_back` first when there is none
    /// now (a pull then says "Waiting" for the layer, as Docker does).
    pub async fn admit_or(&self, held_back: impl FnOnce()) -> Admitted {
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return Admitted {
                _permit: permit,
                in_flight: Arc::clone(&self.in_flight),
            };
        }
        held_back();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted as waiting until admitted, or until the caller gives up.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let waiting = Waiting(&self.waiting);
        let permit = Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        drop(waiting);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Admitted {
            _permit: permit,
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// Transfers waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Transfers admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn set_limit(&self, limit: u32) {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if limit > old {
            self.semaphore.add_permits((limit - old) as usize);
        } else if limit < old {
            let semaphore = Arc::clone(&self.semaphore);
            let surplus = old - limit;
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn gate_grows_at_once_and_shrinks_as_work_finishes() {
        let gate = Gate::new(2);
        let a = gate.admit().await;
        let b = gate.admit().await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(
            blocked.is_err(),
            "a third transfer got in under a limit of 2"
        );

        gate.set_limit(3);
        let c = tokio::time::timeout(Duration::from_secs(1), gate.admit())
            .await
            .expect("growing the limit admits at once");
        assert_eq!(gate.in_flight(), 3);

        gate.set_limit(1);
        drop((a, b)); // in-flight work finished normally
        tokio::task::yield_now().await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(blocked.is_err(), "c still runs under a limit of 1");
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), gate.admit())
            .await
            .expect("one slot once c finished");
    }

    #[test]
    fn zero_reads_as_the_default_at_start_and_is_ignored_at_runtime() {
        let limits = Limits::new(&LimitArgs {
            max_concurrent_downloads: 0,
            max_concurrent_uploads: 0,
            max_download_attempts: DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
        });
        assert_eq!(
            (
                limits.max_concurrent_downloads(),
                limits.max_concurrent_uploads()
            ),
            (
                DEFAULT_MAX_CONCURRENT_DOWNLOADS,
                DEFAULT_MAX_CONCURRENT_UPLOADS
            )
        );
        limits.update(Some(7), Some(0));
        limits.update(Some(0), None);
        assert_eq!(
            (
                limits.max_concurrent_downloads(),
                limits.max_concurrent_uploads()
            ),
            (7, DEFAULT_MAX_CONCURRENT_UPLOADS)
        );
    }
}
