//! Latency of two calls measured side by side, for the benches that
//! print one as a ratio of the other.
//!
//! The calls alternate one by one (`a` then `b`, then `b` then `a`), so a
//! change in the machine's speed while they run, which on a shared VM
//! comes and goes within seconds, weighs on both sides alike. Measured one
//! side after the other, the gateway's InspectImage, answered the same way
//! in two rows of one run, came out at 0.49× the direct call in one row and
//! 1.45× in the next.

use std::future::Future;
use std::time::{Duration, Instant};

/// One side's figures.
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    /// Calls per second of the time spent in this side's calls.
    pub ops: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let busy: Duration = samples.iter().sum();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        Latency {
            p50: at(50),
            p99: at(99),
            ops: samples.len() as f64 / busy.as_secs_f64().max(f64::MIN_POSITIVE),
        }
    }
}

/// `a(i)` and `b(i)` for `i` in `0..calls`, alternated, after `warmup`
/// unmeasured calls of each: each side's latency.
pub async fn paired<A, FA, B, FB>(
    warmup: usize,
    calls: usize,
    mut a: A,
    mut b: B,
) -> (Latency, Latency)
where
    A: FnMut(usize) -> FA,
    FA: Future<Output = ()>,
    B: FnMut(usize) -> FB,
    FB: Future<Output = ()>,
{
    assert!(calls > 0, "a measurement needs at least one call");
    for i in 0..warmup {
        a(i).await;
        b(i).await;
    }
    let mut sides = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls {
        // Each side goes first half of the time: the call after the other
        // side's may find the caches the other left.
        if i % 2 == 0 {
            sides.0.push(timed(a(i)).await);
            sides.1.push(timed(b(i)).await);
        } else {
            sides.1.push(timed(b(i)).await);
            sides.0.push(timed(a(i)).await);
        }
    }
    (Latency::of(sides.0), Latency::of(sides.1))
}

async fn timed(call: impl Future<Output = ()>) -> Duration {
    let start = Instant::now();
    call.await;
    start.elapsed()
}
