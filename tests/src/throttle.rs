//! A TCP proxy in front of the test registry that slows every connection
//! down to a fixed rate, and can freeze: long downloads that overlap, and
//! stalls, on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; stops listening when dropped.
pub struct Throttle {
    /// `127.0.0.1:<port>` to use instead of the registry's host.
    pub host: String,
    frozen: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// One link every connection shares: bytes pass at `rate` in all.
struct Link {
    rate: u64,
    /// When the link is free again.
    free_at: std::sync::Mutex<tokio::time::Instant>,
}

impl Link {
    /// Waits for `n` bytes' turn on the link.
    async fn pass(&self, n: usize) {
        let until = {
            let mut free_at = self.free_at.lock().unwrap();
            let start = (*free_at).max(tokio::time::Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            *free_at
        };
        tokio::time::sleep_until(until).await;
    }
}

impl Throttle {
    /// Forwards to `upstream`, registry-to-client bytes at most
    /// `bytes_per_second` per connection.
    pub async fn start(upstream: &str, bytes_per_second: u64) -> anyhow::Result<Self> {
        Self::start_with(upstream, bytes_per_second, None).await
    }

    /// Forwards to `upstream` over one link of `bytes_per_second` that
    /// every connection shares, as a node's uplink or a registry's.
    pub async fn start_shared(upstream: &str, bytes_per_second: u64) -> anyhow::Result<Self> {
        let link = Arc::new(Link {
            rate: bytes_per_second.max(1),
            free_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        });
        Self::start_with(upstream, bytes_per_second, Some(link)).await
    }

    async fn start_with(
        upstream: &str,
        bytes_per_second: u64,
        link: Option<Arc<Link>>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (frozen_task, bytes_task) = (Arc::clone(&frozen), Arc::clone(&bytes));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let frozen = Arc::clone(&frozen_task);
                let bytes = Arc::clone(&bytes_task);
                let link = link.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = relay(client, server, bytes_per_second, frozen, bytes, link).await;
                    }
                });
            }
        });
        Ok(Throttle {
            host,
            frozen,
            bytes,
            task,
        })
    }

    /// Stops (true) or resumes (false) every byte from the registry.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Bytes sent from the registry to clients so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    rate: u64,
    frozen: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    link: Option<Arc<Link>>,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    // 20 slices a second of rate/20 bytes each.
    let slice = (rate / 20).max(1) as usize;
    let mut buf = vec![0u8; slice];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = server_read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(link) = &link {
            link.pass(n).await;
        }
        client_write.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::SeqCst);
        if link.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    upstream.abort();
    Ok(())
}
