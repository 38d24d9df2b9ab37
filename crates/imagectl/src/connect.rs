//! Reaching the gateway: a Unix socket, plain TCP, or TLS (with an
//! optional client certificate).

use std::path::Path;

use anyhow::{Context, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

pub use tonic::transport::Channel;

/// Connects to `host`: `unix:///path`, `tcp://IP:PORT` or `https://HOST:PORT`.
pub async fn channel(
    host: &str,
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<Channel> {
    if let Some(path) = host.strip_prefix("unix://") {
        let channel = Endpoint::try_from("http://localhost")?
            .connect_with_connector(imaged_client::endpoint::unix_connector(path.into()))
            .await
            .with_context(|| format!("cannot connect to the gateway at {host}"))?;
        return Ok(channel);
    }
    if let Some(addr) = host.strip_prefix("tcp://") {
        return Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gateway at {host}"));
    }
    if host.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = client {
            let cert =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        return Endpoint::from_shared(host.to_string())?
            .tls_config(tls)?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gateway at {host}"));
    }
    bail!("unsupported host {host:?}: use unix:///path, tcp://IP:PORT or https://HOST:PORT")
}
