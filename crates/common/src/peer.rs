//! Clients to the other imaged services.
//!
//! A [`Peer`] connects lazily, so the four processes can start in any
//! order, and [`Peer::call`] retries a call that could not reach the peer
//! with backoff, then answers `UNAVAILABLE` naming the peer instead of
//! hanging.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::config::{PeerTls, Service};
use crate::endpoint::Endpoint;
use crate::rpc_trace::RpcTrace;

/// The channel type every generated client is built on: a lazy channel
/// whose calls each run in a client span that the callee continues.
pub type PeerChannel = RpcTrace<Channel>;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Delays between attempts to reach a peer that refused the connection.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
    Duration::from_millis(1000),
];

/// A lazily connected client channel to one imaged service.
#[derive(Clone, Debug)]
pub struct Peer {
    service: Service,
    endpoint: Endpoint,
    channel: Channel,
}

impl Peer {
    /// A channel to `service` at `endpoint`; nothing is dialled until the
    /// first call.
    pub fn new(service: Service, endpoint: Endpoint) -> anyhow::Result<Self> {
        Peer::with_tls(service, endpoint, None)
    }

    /// [`Peer::new`]; a peer at a `tcp://` address is dialled over TLS
    /// when `tls` is given (its server certificate must name the
    /// address's IP).
    pub fn with_tls(
        service: Service,
        endpoint: Endpoint,
        tls: Option<&PeerTls>,
    ) -> anyhow::Result<Self> {
        let channel = match (&endpoint, tls) {
            (Endpoint::Unix(path), _) => {
                tonic::transport::Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector_lazy(crate::endpoint::unix_connector(path.clone()))
            }
            (Endpoint::Tcp(addr), None) => {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_lazy()
            }
            (Endpoint::Tcp(addr), Some(tls)) => {
                let mut config = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
                    .domain_name(addr.ip().to_string());
                if let Some((cert, key)) = &tls.identity {
                    config = config.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                    .tls_config(config)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_lazy()
            }
        };
        Ok(Peer {
            service,
            endpoint,
            channel,
        })
    }

    /// Dials the peer now, in the background, so that the first real call
    /// does not wait for the connection nor pay for it: both ends of a new
    /// HTTP/2 connection spend about half a millisecond of CPU setting it
    /// up, a good part of what the first pull after start-up cost more
    /// than later ones. It makes one health check, retried as every call
    /// is while the peer may still be starting; if the peer never answers,
    /// nothing is reported and calls dial as they would have. The check
    /// goes on the bare channel: it is no request of anyone's to trace.
    pub fn dial_ahead(&self) {
        let peer = self.clone();
        tokio::spawn(async move {
            let _ = peer
                .retrying(|| {
                    let mut health = HealthClient::new(peer.channel.clone());
                    async move { health.check(HealthCheckRequest::default()).await }
                })
                .await;
        });
    }

    /// Which service this peer is.
    pub fn service(&self) -> Service {
        self.service
    }

    /// A channel for a generated client; every request made on it carries
    /// the current trace context.
    pub fn channel(&self) -> PeerChannel {
        RpcTrace::client(self.channel.clone())
    }

    /// Runs `call` (one RPC on a fresh client built from [`Peer::channel`]),
    /// retrying with backoff while the peer cannot be reached. A peer that
    /// stays down yields `UNAVAILABLE` with the peer's name and address.
    /// Errors the peer itself answered with are returned as they are.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(PeerChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.retrying(|| call(self.channel())).await
    }

    /// Runs `attempt` until it reaches the peer, waiting [`BACKOFF`]
    /// between tries; then `UNAVAILABLE` naming the peer.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut delays = BACKOFF.iter();
        loop {
            match attempt().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if is_unreachable(&status) => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(
                            peer = self.service.process(),
                            "peer unreachable, retrying"
                        );
                        tokio::time::sleep(*delay).await;
                    }
                    None => {
                        return Err(Status::unavailable(format!(
                            "{} is unavailable at {}: {}",
                            self.service.process(),
                            self.endpoint,
                            status.message()
                        )));
                    }
                },
                // Not the peer's answer: the connection failed under the
                // call (a TLS peer that refuses this process's certificate
                // closes it so).
                Err(status) if std::error::Error::source(&status).is_some() => {
                    return Err(Status::unavailable(format!(
                        "{} at {} closed the connection: {}",
                        self.service.process(),
                        self.endpoint,
                        status.message()
                    )));
                }
                Err(status) => return Err(status),
            }
        }
    }
}

impl Peer {
    /// Names a stream that broke: a status the peer did not send (its
    /// connection went away mid-stream, as when the process dies) becomes
    /// `UNAVAILABLE` naming the peer, instead of h2's `UNKNOWN`. Statuses
    /// the peer sent pass as they are.
    pub fn stream_status(&self, status: Status) -> Status {
        if std::error::Error::source(&status).is_none() {
            return status;
        }
        Status::unavailable(format!(
            "{} went away during the call: {}",
            self.service.process(),
            status.message()
        ))
    }
}

/// Whether a status means the call never reached the peer: tonic reports
/// connection failures as `UNAVAILABLE` with the transport error attached
/// as its source, while a status the peer sent has no source.
fn is_unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable && std::error::Error::source(status).is_some()
}
