//! A front for the real test registry that answers chosen requests the way
//! a hostile or broken registry would (a body that never ends, wrong
//! bytes, headers and then silence, a manifest of any content) and
//! forwards every other request unchanged. One request per connection
//! (`Connection: close`), which every registry client accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the front answers a request a rule matched.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status, these headers and this body.
    Body {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A 200 that declares `length` bytes, sends `body` (fewer) and hangs
    /// up: an interrupted download.
    Cut { length: usize, body: Vec<u8> },
    /// A 200 whose body never ends: these bytes, again and again.
    Endless(Vec<u8>),
    /// This status, these headers and a body that never ends: `chunk`,
    /// again and again.
    Flood {
        status: u16,
        headers: Vec<(String, String)>,
        chunk: Vec<u8>,
    },
    /// A 200 with headers and then nothing, until the client gives up.
    Silent,
    /// Nothing at all, not even a status line, until the client gives up.
    Unanswered,
}

/// A rule: requests whose path contains `path_part` (and whose method is
/// `method`) get `answer`, the first `times` times (`usize::MAX`: always).
struct Rule {
    method: String,
    path_part: String,
    answer: Answer,
    times: usize,
}

/// The front; stops listening when dropped.
pub struct Front {
    /// `127.0.0.1:<port>` to use instead of the registry's host.
    pub host: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    hits: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Front {
    /// Forwards to `upstream` (`host:port`) what no rule matches.
    pub async fn start(upstream: &str) -> anyhow::Result<Front> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_string();
        let (task_rules, task_hits, task_connections) = (
            Arc::clone(&rules),
            Arc::clone(&hits),
            Arc::clone(&connections),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                task_connections.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                let rules = Arc::clone(&task_rules);
                let hits = Arc::clone(&task_hits);
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &rules, &hits).await;
                });
            }
        });
        Ok(Front {
            host,
            rules,
            hits,
            connections,
            task,
        })
    }

    /// Answers `method` requests whose path contains `path_part` with
    /// `answer`, the first `times` times.
    pub fn rule(&self, method: &str, path_part: &str, answer: Answer, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            method: method.into(),
            path_part: path_part.into(),
            answer,
            times,
        });
    }

    /// Every request line seen (`GET /v2/...`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    hits: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let head = read_head(&mut client).await?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    hits.lock().unwrap().push(format!("{method} {path}"));
    let answer = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path_part))
            .map(|rule| {
                rule.times = rule.times.saturating_sub(1);
                rule.answer.clone()
            })
    };
    match answer {
        None => forward(client, upstream, &text).await,
        Some(Answer::Body {
            status,
            headers,
            body,
        }) => {
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            client.write_all(out.as_bytes()).await?;
            if method != "HEAD" {
                client.write_all(&body).await?;
            }
            client.shutdown().await
        }
        Some(Answer::Cut { length, body }) => {
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            client.write_all(out.as_bytes()).await?;
            client.write_all(&body).await?;
            client.shutdown().await
        }
        Some(Answer::Endless(chunk)) => flood(&mut client, 200, Vec::new(), &chunk).await,
        Some(Answer::Flood {
            status,
            headers,
            chunk,
        }) => flood(&mut client, status, headers, &chunk).await,
        Some(Answer::Silent) => {
            client
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
                )
                .await?;
            wait_for_hang_up(&mut client).await;
            Ok(())
        }
        Some(Answer::Unanswered) => {
            wait_for_hang_up(&mut client).await;
            Ok(())
        }
    }
}

/// Answers `status` and `headers`, then `chunk` again and again until the
/// client hangs up (bounded: a test's imaged stops reading long before).
async fn flood(
    client: &mut TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    chunk: &[u8],
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes()).await?;
    for _ in 0..1_000_000 {
        client.write_all(chunk).await?;
    }
    Ok(())
}

/// Waits for the client to give up; never longer than a test.
async fn wait_for_hang_up(client: &mut TcpStream) {
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(120), client.read(&mut buf)).await;
}

/// Reads a request's head; a body, if any, is left to [`forward`].
async fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// Sends the request on to the registry on a new connection, asking it to
/// close after answering, relays the request's body (a push's uploads
/// have one) and the answer.
async fn forward(client: TcpStream, upstream: &str, head: &str) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    let mut request = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    server.write_all(request.as_bytes()).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let body = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let answered = tokio::io::copy(&mut server_read, &mut client_write).await;
    body.abort();
    answered?;
    client_write.shutdown().await
}
