//! This node's part in the fleet (issue 31): peers found through a
//! directory the fleet already runs (NATS JetStream's key-value store),
//! and one fetch per blob across the fleet. Before a layer is fetched,
//! the pull asks [`Fleet::plan`]:
//!
//! - a peer holds the blob whole: read it from the peers, then upstream;
//! - another node is fetching it now (its claim): read it from that node
//!   as it arrives (serve-content streams the growing ingest), then
//!   upstream;
//! - nobody: claim it (one node of the fleet wins), fetch it upstream,
//!   and serve it to the others while it arrives.
//!
//! Whoever reads checks the digest at the end, and a peer that fails or
//! stalls is dropped for the next source, so a peer can cost time, never
//! integrity. Without a directory, or while it cannot be reached, the
//! pull goes on alone, as before.

pub mod directory;
pub mod in_flight;
pub mod nats;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imaged_model::Digest;

use directory::{Claimed, Directory, Peer};
use in_flight::{Flight, InFlight};

/// How the node finds its peers: `--peer-directory nats`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Where the fleet's content directory is: `nats` (JetStream's
    /// key-value store at --nats-url); default none (peers only from
    /// hosts.toml, as before).
    #[arg(long, env = "IMAGED_PEER_DIRECTORY")]
    pub peer_directory: Option<String>,
    /// The NATS server the directory is in (the one the fleet's events
    /// use), and this node's name there.
    #[command(flatten)]
    pub nats: imaged_common::nats::NatsArgs,
    /// The key-value bucket.
    #[arg(long, env = "IMAGED_PEER_BUCKET", default_value = "imaged-peers")]
    pub peer_bucket: String,
    /// The URL peers reach this node's --serve-content at (default:
    /// `http://` and its address, which must then not be unspecified).
    #[arg(long, env = "IMAGED_PEER_URL")]
    pub peer_url: Option<String>,
    /// Seconds a record is believed without being refreshed: a node that
    /// dies leaves the directory, and its claims pass on, within it.
    #[arg(long, env = "IMAGED_PEER_TTL", default_value_t = 10)]
    pub peer_ttl: u64,
    /// Layers of at least this many MiB that several peers hold whole are
    /// read from up to four of them at once, by byte ranges; 0: always
    /// from one.
    #[arg(long, env = "IMAGED_PEER_SPLIT_MIB", default_value_t = 32)]
    pub peer_split_mib: u64,
    /// The fleet's CA (PEM): peers' `https://` serve-content certificates
    /// are checked against it.
    #[arg(long, env = "IMAGED_FLEET_TLS_CA")]
    pub fleet_tls_ca: Option<std::path::PathBuf>,
    /// This node's client certificate (PEM), presented to peers: a peer
    /// whose serve-content trusts the fleet's CA gives it every blob.
    #[arg(long, env = "IMAGED_FLEET_TLS_CERT", requires = "fleet_tls_key")]
    pub fleet_tls_cert: Option<std::path::PathBuf>,
    /// The key of --fleet-tls-cert (PEM).
    #[arg(long, env = "IMAGED_FLEET_TLS_KEY", requires = "fleet_tls_cert")]
    pub fleet_tls_key: Option<std::path::PathBuf>,
}

/// How this node reaches its peers over TLS.
#[derive(Clone, Debug, Default)]
pub struct PeerTls {
    /// CA certificates (PEM) peers' certificates chain to.
    pub ca: Vec<Vec<u8>>,
    /// The client certificate and its key (PEM, one after the other).
    pub client: Option<Vec<u8>>,
}

impl PeerTls {
    /// Reads the files `args` name; one that cannot be read stops the
    /// start.
    fn read(args: &FleetArgs) -> anyhow::Result<PeerTls> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        };
        let ca = match &args.fleet_tls_ca {
            Some(path) => vec![read(path)?],
            None => Vec::new(),
        };
        let client = match (&args.fleet_tls_cert, &args.fleet_tls_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(pem)
            }
            _ => None,
        };
        Ok(PeerTls { ca, client })
    }
}

/// Blobs whose holding is refreshed by the heartbeat, at most.
const HELD_REFRESHED: usize = 1024;

/// What a pull does about one blob.
pub enum Plan {
    /// No directory (or none reachable): the pull's own sources.
    Alone,
    /// Read from these peers first, then the pull's own sources: they
    /// hold the blob whole, so a big one may be read from several at once.
    Holders(Vec<Peer>),
    /// Read from this peer first, then the pull's own sources: it is
    /// fetching the blob for the fleet, and serves it as it arrives.
    Claimer(Peer),
    /// This node fetches it for the fleet; the claim lasts as long as the
    /// guard.
    Fetch(ClaimGuard),
    /// Only a peer that failed this pull holds the claim: until it passes
    /// on (within the TTL), nobody else is to fetch it.
    Waiting,
}

/// This node in the fleet.
pub struct Fleet {
    me: Peer,
    directory: Arc<dyn Directory>,
    ttl: Duration,
    in_flight: InFlight,
    /// Claims this node holds, renewed by the heartbeat.
    claims: Mutex<HashSet<Digest>>,
    /// Blobs this node announced holding, newest last.
    held: Mutex<VecDeque<Digest>>,
    /// Whether serve-content gives fleet peers with a client certificate
    /// every blob (TLS with a client CA); else only public blobs are
    /// served, so only those are announced or claimed.
    serves_private: bool,
    /// How peers are reached over TLS.
    tls: PeerTls,
    /// Blobs at least this big are read from several holders at once.
    split_min: Option<u64>,
}

impl Fleet {
    /// The fleet `args` describe, if any; `serve_content` is where this
    /// node serves (required with a directory), `serves_private` whether
    /// it serves fleet peers with a client certificate every blob.
    pub fn new(
        args: &FleetArgs,
        serve_content: Option<std::net::SocketAddr>,
        serves_private: bool,
    ) -> anyhow::Result<Option<Arc<Fleet>>> {
        let Some(kind) = args.peer_directory.as_deref() else {
            return Ok(None);
        };
        if kind != "nats" {
            anyhow::bail!("--peer-directory {kind:?}: only `nats` is known");
        }
        let url = args
            .nats
            .nats_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--peer-directory nats needs --nats-url"))?;
        let node = args.nats.node()?;
        // serve-content speaks TLS exactly when it serves private blobs.
        let scheme = if serves_private { "https" } else { "http" };
        let peer_url = match (&args.peer_url, serve_content) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(addr)) if !addr.ip().is_unspecified() => format!("{scheme}://{addr}"),
            (None, Some(_)) => anyhow::bail!(
                "--serve-content listens on every address: say which one peers use with --peer-url"
            ),
            (None, None) => anyhow::bail!("--peer-directory needs --serve-content"),
        };
        let creds = args.nats.credentials()?;
        let ttl = Duration::from_secs(args.peer_ttl.max(1));
        let directory = Arc::new(nats::NatsDirectory::new(
            url.clone(),
            creds,
            args.peer_bucket.clone(),
            ttl,
        ));
        tracing::info!(
            url = %imaged_common::nats::redacted(&url),
            node = %node,
            peer_url = %peer_url,
            "peers found through the NATS directory"
        );
        Ok(Some(Fleet::with_directory(
            Peer {
                node,
                url: peer_url,
            },
            directory,
            ttl,
            serves_private,
            PeerTls::read(args)?,
            (args.peer_split_mib > 0).then_some(args.peer_split_mib << 20),
        )))
    }

    /// This node as `me`, over `directory`; starts the heartbeat. Blobs
    /// of at least `split_min` bytes are read from several holders at
    /// once (`None`: never).
    pub fn with_directory(
        me: Peer,
        directory: Arc<dyn Directory>,
        ttl: Duration,
        serves_private: bool,
        tls: PeerTls,
        split_min: Option<u64>,
    ) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            me,
            directory,
            ttl,
            in_flight: InFlight::default(),
            claims: Mutex::new(HashSet::new()),
            held: Mutex::new(VecDeque::new()),
            serves_private,
            tls,
            split_min,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&fleet)));
        fleet
    }

    /// Blobs at least this big are read from several holders at once.
    pub fn split_min(&self) -> Option<u64> {
        self.split_min
    }

    /// How peers are reached over TLS.
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// How long a record is believed unrefreshed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The blobs in flight here, for serve-content.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// What to do about `blob` (of `size` bytes, written to the ingest
    /// file `ingest` and stored at `stored`; fetched without credentials
    /// from `public_in`, if so) before fetching it. Peers whose URL is in
    /// `tried` failed this pull already: they are not named again, and a
    /// claim only they hold is waited out ([`Plan::Waiting`]).
    pub async fn plan(
        self: &Arc<Self>,
        blob: &Digest,
        size: u64,
        (ingest, stored): (std::path::PathBuf, std::path::PathBuf),
        public_in: Option<String>,
        tried: &[String],
    ) -> Plan {
        let holders = match self.directory.holders(blob).await {
            Ok(holders) => holders,
            Err(err) => {
                tracing::warn!(%blob, "peer directory: {err}; fetching alone");
                return Plan::Alone;
            }
        };
        let mut others: Vec<Peer> = holders
            .into_iter()
            .filter(|p| p.node != self.me.node && p.url != self.me.url)
            .filter(|p| !tried.contains(&p.url) && directory::dialable(&p.url))
            .take(directory::MAX_HOLDERS)
            .collect();
        // In no fixed order: the nodes that ask at once spread over the
        // holders instead of all reading from the first.
        rand::seq::SliceRandom::shuffle(&mut others[..], &mut rand::rng());
        if !others.is_empty() {
            crate::metrics::fleet_peers(others.len());
            return Plan::Holders(others);
        }
        // A blob this node would serve nobody: not claimed for the fleet.
        if public_in.is_none() && !self.serves_private {
            return Plan::Alone;
        }
        match self.directory.claim(blob, &self.me).await {
            Ok(Claimed::Mine) => {
                self.in_flight.start(
                    blob,
                    Flight {
                        size,
                        path: ingest,
                        stored,
                        public_in,
                    },
                );
                self.lock_claims().insert(blob.clone());
                crate::metrics::fleet_claim("taken");
                Plan::Fetch(ClaimGuard {
                    fleet: Arc::clone(self),
                    blob: blob.clone(),
                })
            }
            Ok(Claimed::By(peer)) if !directory::dialable(&peer.url) => {
                tracing::warn!(%blob, url = %peer.url, "peer directory: a claim names a URL this node does not dial; fetching alone");
                Plan::Alone
            }
            Ok(Claimed::By(peer)) if tried.contains(&peer.url) => Plan::Waiting,
            Ok(Claimed::By(peer)) => Plan::Claimer(peer),
            Err(err) => {
                tracing::warn!(%blob, "peer directory: {err}; fetching alone");
                Plan::Alone
            }
        }
    }

    /// Announces that this node holds `blob` whole, if it would serve it
    /// to a peer: `public` (fetched without credentials), or to fleet
    /// peers with a client certificate. A node advertises only what it
    /// serves.
    pub fn holding(self: &Arc<Self>, blob: &Digest, public: bool) {
        if !public && !self.serves_private {
            return;
        }
        {
            let mut held = self.lock_held();
            held.retain(|b| b != blob);
            held.push_back(blob.clone());
            while held.len() > HELD_REFRESHED {
                held.pop_front();
            }
        }
        let (fleet, blob) = (Arc::clone(self), blob.clone());
        tokio::spawn(async move {
            if let Err(err) = fleet.directory.hold(&blob, &fleet.me).await {
                tracing::debug!(%blob, "peer directory: {err}");
            }
        });
    }

    fn lock_claims(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, VecDeque<Digest>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// This node's claim on one blob: released (and the blob no longer in
/// flight) when dropped, whether the fetch was done or failed.
pub struct ClaimGuard {
    fleet: Arc<Fleet>,
    blob: Digest,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.fleet.in_flight.end(&self.blob);
        self.fleet.lock_claims().remove(&self.blob);
        let (fleet, blob) = (Arc::clone(&self.fleet), self.blob.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = fleet.directory.release(&blob, &fleet.me).await;
            });
        }
    }
}

/// Refreshes this node's records, three times a TTL, while the fleet
/// lives: its claims (so that they are not taken over while it fetches)
/// and what it holds.
async fn heartbeat(fleet: std::sync::Weak<Fleet>) {
    loop {
        let Some(ttl) = fleet.upgrade().map(|f| f.ttl) else {
            return;
        };
        tokio::time::sleep(ttl / 3).await;
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        let claims: Vec<Digest> = fleet.lock_claims().iter().cloned().collect();
        for blob in claims {
            if let Err(err) = fleet.directory.renew(&blob, &fleet.me).await {
                tracing::warn!(%blob, "peer directory: the claim could not be renewed: {err}");
            }
        }
        let held: Vec<Digest> = fleet.lock_held().iter().cloned().collect();
        for blob in held {
            if let Err(err) = fleet.directory.hold(&blob, &fleet.me).await {
                tracing::debug!(%blob, "peer directory: {err}");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
