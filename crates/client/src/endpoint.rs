//! Addresses: a Unix socket path or a TCP socket address.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a server listens or where a peer is reached.
///
/// Written as a plain path or `unix:///path` for a Unix socket, and as
/// `tcp://host:port` for TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP socket address.
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            return addr.parse().map(Endpoint::Tcp).map_err(|e| {
                format!("invalid TCP address {addr:?}: {e} (expected tcp://IP:PORT)")
            });
        }
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if path.is_empty() {
            return Err("empty socket path".to_string());
        }
        if s.contains("://") && !s.starts_with("unix://") {
            return Err(format!(
                "unsupported address {s:?}: use a socket path, unix:///path or tcp://IP:PORT"
            ));
        }
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }
}

/// A connector for tonic's `Endpoint::connect_with_connector`: every
/// connection goes to the Unix socket at `path` (tonic needs a URI, which
/// it ignores). The one place a client dials a socket: peers and imagectl.
pub fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl std::future::Future<
        Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::UnixStream>>,
    > + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "/run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "unix:///run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:7000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert!("tcp://localhost".parse::<Endpoint>().is_err());
        assert!("http://x:1".parse::<Endpoint>().is_err());
        assert!("".parse::<Endpoint>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:///a/b.sock", "tcp://127.0.0.1:9"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }
}
