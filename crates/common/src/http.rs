//! The one HTTP/1 server of the side listeners (`--serve-content`, the
//! metrics page, the Docker Engine API's `docker.sock`): listeners that a
//! crowd of idle or slow connections cannot turn against the process.
//!
//! - **A connection cap.** At most [`Limits::connections`] connections are
//!   served at once. When all are taken, the one that has waited longest
//!   without sending a byte is closed to make room; if every connection is
//!   busy with a request, the next waits in the kernel's backlog. A crowd
//!   of idle connections costs a bounded number of descriptors and bytes,
//!   and never keeps a real client out.
//! - **A header and idle timeout.** A request's head must arrive within
//!   [`Limits::header_timeout`], and so must the next one on a kept-alive
//!   connection (hyper's header timer runs whenever a connection waits for
//!   a head).
//! - **Accept errors back off** (out of descriptors, mostly) instead of
//!   spinning.
//! - **TLS, optionally with client certificates** ([`tls_acceptor`]): a
//!   client that presents a certificate the listener's client CA signed is
//!   [`Verified`] in each request's extensions; one that presents none is
//!   served too, unverified. The handshake is bounded by the header
//!   timeout.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

pub use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, oneshot};

/// How much a listener takes on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// How long a request's head (and, on a kept-alive connection, the
    /// wait for the next one) may take.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 512,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound TCP or Unix listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    /// TCP, each connection a TLS handshake first.
    Tls(tokio::net::TcpListener, tokio_rustls::TlsAcceptor),
}

/// Whether a request's client proved who it is: a TLS client certificate
/// signed by the listener's client CA. In every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified(pub bool);

/// A TLS server for `cert`/`key` (PEM) that verifies the client
/// certificates `client_ca` (PEM) signed, and serves clients without one
/// as unverified.
pub fn tls_acceptor(
    cert: &[u8],
    key: &[u8],
    client_ca: &[u8],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key).context("the key is not PEM")?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca) {
        roots
            .add(ca.context("the client CA is not PEM")?)
            .context("the client CA is not a certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("the client CA")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A byte stream of either kind.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Listener {
    async fn accept(&self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            Listener::Tcp(listener) | Listener::Tls(listener, _) => {
                Box::new(listener.accept().await?.0)
            }
            Listener::Unix(listener) => Box::new(listener.accept().await?.0),
        })
    }

    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match self {
            Listener::Tls(_, acceptor) => Some(acceptor.clone()),
            _ => None,
        }
    }
}

/// What [`serve`] serves: a service of HTTP requests that never fails
/// (its errors are responses), cloned for each connection.
pub trait Handler<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Handler<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body [`serve`] can send.
pub trait Body:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> Body for B where
    B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// The longest pause after failed accepts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `service` on `listener` within `limits`, until the task is
/// dropped.
pub async fn serve<S, B>(listener: Listener, service: S, limits: Limits)
where
    S: Handler<B>,
    B: Body,
{
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let waiting = Arc::new(Waiting::default());
    let mut backoff = Duration::ZERO;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: make room by closing the longest-silent connection.
                waiting.evict_oldest();
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return, // the semaphore is never closed
                }
            }
        };
        let stream = match listener.accept().await {
            Ok(stream) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(err) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!("accepting a connection failed: {err}; pausing {backoff:?}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (evicted, evict) = oneshot::channel();
        let id = waiting.add(evicted);
        let service = service.clone();
        let waiting = Arc::clone(&waiting);
        let tls = listener.tls();
        tokio::spawn(async move {
            let io = Heard {
                inner: stream,
                heard: false,
                waiting: Arc::clone(&waiting),
                id,
            };
            // Leaving the queue drops the sender: only a sent `()` evicts.
            tokio::select! {
                _ = connection(io, tls, service, limits) => {}
                Ok(()) = evict => {}
            }
            waiting.remove(id);
            drop(slot);
        });
    }
}

/// Serves one connection: its TLS handshake first, if any, then its
/// requests, each told whether the client is [`Verified`].
async fn connection<S: Handler<B>, B: Body>(
    io: Heard,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limits: Limits,
) {
    let (io, verified): (Box<dyn Io>, bool) = match tls {
        None => (Box::new(io), false),
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => {
                    let verified = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|certs| !certs.is_empty());
                    (Box::new(stream), verified)
                }
                _ => return, // a failed or slow handshake
            }
        }
    };
    let service = tower::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(Verified(verified));
        tower::ServiceExt::oneshot(service.clone(), request)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        )
        .await;
}

/// The connections that have not sent a byte yet, oldest first, each with
/// the sender that closes it.
#[derive(Default)]
struct Waiting {
    queue: Mutex<Queue>,
}

/// The last number given to a connection, and the silent ones in order.
#[derive(Default)]
struct Queue {
    last: u64,
    silent: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Waiting {
    fn add(&self, close: oneshot::Sender<()>) -> u64 {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.last += 1;
        let id = queue.last;
        queue.silent.push_back((id, close));
        id
    }

    fn remove(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.silent.retain(|(waiting, _)| *waiting != id);
    }

    fn evict_oldest(&self) {
        let oldest = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .silent
            .pop_front();
        if let Some((_, close)) = oldest {
            let _ = close.send(());
        }
    }
}

/// A connection's stream that leaves [`Waiting`] at its first byte.
struct Heard {
    inner: Box<dyn Io>,
    /// Whether a byte came (and the connection left the queue).
    heard: bool,
    waiting: Arc<Waiting>,
    id: u64,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !self.heard {
            self.heard = true;
            self.waiting.remove(self.id);
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn hello(
        _: http::Request<Incoming>,
    ) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
        // Slow enough that a connection dropped once it was heard shows.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"hello"),
        )))
    }

    async fn get(address: std::net::SocketAddr) -> io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn silent_connections_make_room_and_time_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 8,
            header_timeout: Duration::from_millis(500),
        };
        let service = tower::service_fn(hello);
        let server = tokio::spawn(serve(Listener::Tcp(listener), service, limits));
        // Twenty connections that never say a word: more than the cap.
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), get(address))
            .await
            .expect("a real request waited behind silent connections")
            .unwrap();
        assert!(answer.ends_with("hello"), "{answer}");
        // Each silent one is closed: made room for, or timed out.
        for mut stream in silent {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("a silent connection was kept open");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        server.abort();
    }
}
