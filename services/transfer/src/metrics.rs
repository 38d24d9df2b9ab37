//! imaged-transfer's metrics: pulls and pushes (count by outcome, bytes,
//! duration), downloads and uploads in flight and queued, and the bytes of
//! the layer and content stores. Instruments come from the global meter
//! provider, which the server bootstrap installs before any call is served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use imaged_common::Error;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::limits::Limits;
use crate::pull::origin::{ByOrigin, Origin};
use crate::store::content::ContentStore;
use crate::store::layers::LayerStore;

/// What a pull or a push is counted as.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Pull,
    Push,
}

struct Instruments {
    count: Counter<u64>,
    bytes: Counter<u64>,
    duration: Histogram<f64>,
}

impl Instruments {
    /// `kind` is "pull" or "push", `plural` "pulls" or "pushes".
    fn new(kind: &str, plural: &str) -> Self {
        let meter = opentelemetry::global::meter("imaged-transfer");
        Instruments {
            count: meter
                .u64_counter(format!("imaged.{plural}"))
                .with_description(format!("{plural} finished, by outcome"))
                .build(),
            bytes: meter
                .u64_counter(format!("imaged.{kind}.bytes"))
                .with_unit("By")
                .with_description(format!("layer and config bytes of successful {plural}"))
                .build(),
            duration: meter
                .f64_histogram(format!("imaged.{kind}.duration"))
                .with_unit("s")
                .with_description(format!("{kind} duration, by outcome"))
                .with_boundaries(imaged_common::metrics::SECONDS.to_vec())
                .build(),
        }
    }
}

static PULLS: LazyLock<Instruments> = LazyLock::new(|| Instruments::new("pull", "pulls"));
static PUSHES: LazyLock<Instruments> = LazyLock::new(|| Instruments::new("push", "pushes"));

/// Counts one pull or push that started at `started` and ended with
/// `result`.
pub fn finished(kind: Kind, started: Instant, result: &Result<(), Error>) {
    let instruments = match kind {
        Kind::Pull => &*PULLS,
        Kind::Push => &*PUSHES,
    };
    let outcome = match result {
        Ok(()) => "ok".to_string(),
        Err(err) => format!("{:?}", tonic::Status::from(err.clone()).code()),
    };
    let attributes = [KeyValue::new("outcome", outcome)];
    instruments.count.add(1, &attributes);
    instruments
        .duration
        .record(started.elapsed().as_secs_f64(), &attributes);
}

/// Adds the bytes a successful pull or push moved.
pub fn moved(kind: Kind, bytes: u64) {
    match kind {
        Kind::Pull => PULLS.bytes.add(bytes, &[]),
        Kind::Push => PUSHES.bytes.add(bytes, &[]),
    }
}

/// Registers the gauges read at each collection: transfers in flight and
/// queued, and the bytes of the stores.
pub fn register_gauges(limits: Arc<Limits>, layers: Arc<LayerStore>, content: ContentStore) {
    let meter = opentelemetry::global::meter("imaged-transfer");
    for (name, description, direction) in [
        ("imaged.downloads", "layer downloads", Direction::Download),
        ("imaged.uploads", "blob uploads", Direction::Upload),
    ] {
        let gates = Arc::clone(&limits);
        meter
            .u64_observable_gauge(format!("{name}.in_flight"))
            .with_description(format!("{description} running"))
            .with_callback(move |observer| {
                observer.observe(direction.gate(&gates).in_flight() as u64, &[])
            })
            .build();
        let gates = Arc::clone(&limits);
        meter
            .u64_observable_gauge(format!("{name}.queued"))
            .with_description(format!("{description} waiting for a slot"))
            .with_callback(move |observer| {
                observer.observe(direction.gate(&gates).waiting() as u64, &[])
            })
            .build();
    }
    meter
        .u64_observable_gauge("imaged.layers.bytes")
        .with_unit("By")
        .with_description("bytes of the unpacked layers (their files)")
        .with_callback(move |observer| {
            observer.observe(layers.all().iter().map(|l| l.size).sum(), &[])
        })
        .build();
    meter
        .u64_observable_gauge("imaged.content.bytes")
        .with_unit("By")
        .with_description("bytes of the stored blobs")
        .with_callback(move |observer| {
            let bytes = content
                .list()
                .map(|blobs| blobs.iter().map(|(_, size)| size).sum())
                .unwrap_or(0);
            observer.observe(bytes, &[])
        })
        .build();
}

#[derive(Clone, Copy)]
enum Direction {
    Download,
    Upload,
}

impl Direction {
    fn gate(self, limits: &Limits) -> &crate::limits::Gate {
        match self {
            Direction::Download => &limits.downloads,
            Direction::Upload => &limits.uploads,
        }
    }
}

/// The fleet's instruments (issue 31).
struct Fleet {
    bytes: Counter<u64>,
    claims: Counter<u64>,
    peers: opentelemetry::metrics::Gauge<u64>,
}

static FLEET: LazyLock<Fleet> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("imaged-transfer");
    Fleet {
        bytes: meter
            .u64_counter("imaged.fleet.bytes")
            .with_unit("By")
            .with_description("layer bytes by where they came from or went: upstream, peer, served")
            .build(),
        claims: meter
            .u64_counter("imaged.fleet.claims")
            .with_description("claims of a blob's fetch: taken, handed_over (a peer's claim taken over), released")
            .build(),
        peers: meter
            .u64_gauge("imaged.fleet.peers")
            .with_description("peers the last plan found holding or fetching a blob")
            .build(),
    }
});

/// Layer bytes pulled since the process started, by origin, and blob
/// bytes served to other nodes: what `imagectl system df` shows (the
/// OpenTelemetry counters above cannot be read back).
static PULLED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Counts a layer's `bytes` pulled from `origin`.
pub fn pulled(origin: Origin, bytes: u64) {
    let (slot, way) = match origin {
        Origin::Registry => (0, "upstream"),
        Origin::Mirror => (1, "upstream"),
        Origin::Peer => (2, "peer"),
    };
    PULLED[slot].fetch_add(bytes, Ordering::Relaxed);
    FLEET.bytes.add(bytes, &[KeyValue::new("way", way)]);
}

/// Counts blob bytes serve-content sends another node.
pub fn served(bytes: u64) {
    SERVED.fetch_add(bytes, Ordering::Relaxed);
    FLEET.bytes.add(bytes, &[KeyValue::new("way", "served")]);
}

/// Layer bytes pulled since the process started, by origin, and blob
/// bytes served to other nodes.
pub fn since_start() -> (ByOrigin, u64) {
    let pulled = ByOrigin {
        registry: PULLED[0].load(Ordering::Relaxed),
        mirrors: PULLED[1].load(Ordering::Relaxed),
        peers: PULLED[2].load(Ordering::Relaxed),
    };
    (pulled, SERVED.load(Ordering::Relaxed))
}

/// Counts a claim `taken`, `handed_over` or `released`.
pub fn fleet_claim(what: &'static str) {
    FLEET.claims.add(1, &[KeyValue::new("what", what)]);
}

/// Records how many peers the last plan found.
pub fn fleet_peers(count: usize) {
    FLEET.peers.record(count as u64, &[]);
}
