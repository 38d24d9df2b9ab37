//! One span per gRPC call, on the server side of every process and the
//! client side of every internal call, open for as long as the call lasts:
//! a streaming call's span ends with its last message, not when the stream
//! is handed back. Spans carry OpenTelemetry's RPC conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) and
//! an error status when the call fails. The client side writes its span's
//! W3C trace context into the request, so the callee's server span is its
//! child: one request is one trace across the four processes. The server
//! side also records each call's duration (`rpc.server.duration`, by
//! service, method and status).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::{Extractor, Injector};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Which end of a call a span describes.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Server,
    Client,
}

/// The layer that wraps a server's routes or a client's channel.
#[derive(Clone, Debug)]
pub struct RpcTraceLayer(Side, Option<Histogram<f64>>);

impl RpcTraceLayer {
    /// Spans for the calls a process serves, children of the caller's
    /// trace context when the request carries one.
    pub fn server() -> Self {
        let duration = opentelemetry::global::meter("imaged")
            .f64_histogram("rpc.server.duration")
            .with_unit("s")
            .with_description(
                "gRPC calls served, by service, method and status (CRI calls included)",
            )
            .with_boundaries(crate::metrics::SECONDS.to_vec())
            .build();
        RpcTraceLayer(Side::Server, Some(duration))
    }

    /// Spans for the calls a process makes, children of the current span.
    pub fn client() -> Self {
        RpcTraceLayer(Side::Client, None)
    }
}

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace {
            inner,
            side: self.0,
            duration: self.1.clone(),
        }
    }
}

/// A service whose calls each run in an RPC span; see the module comment.
#[derive(Clone, Debug)]
pub struct RpcTrace<S> {
    inner: S,
    side: Side,
    /// Where served calls' durations go (server side only).
    duration: Option<Histogram<f64>>,
}

impl<S> RpcTrace<S> {
    /// Wraps `inner` for the client side, as [`RpcTraceLayer::client`].
    pub fn client(inner: S) -> Self {
        RpcTrace {
            inner,
            side: Side::Client,
            duration: None,
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcTrace<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let span = rpc_span(request.uri().path(), self.side);
        match self.side {
            Side::Server => {
                let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.extract(&HeaderExtractor(request.headers()))
                });
                // Fails only when no OpenTelemetry layer is installed.
                let _ = span.set_parent(parent);
            }
            Side::Client => {
                let context = span.context();
                opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
                });
            }
        }
        let timing = self.duration.clone().map(|histogram| Timing {
            histogram,
            path: request.uri().path().to_string(),
            started: std::time::Instant::now(),
            code: None,
        });
        let response = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    let mut timing = timing;
                    // A trailers-only answer (most errors) has its status
                    // in the headers.
                    if let Some(code) = grpc_status(response.headers()) {
                        record_status(&span, code, response.headers());
                        if let Some(timing) = &mut timing {
                            timing.code = Some(code);
                        }
                    }
                    let (parts, body) = response.into_parts();
                    Ok(http::Response::from_parts(
                        parts,
                        TracedBody {
                            inner: body,
                            span: Some(span),
                            timing,
                        },
                    ))
                }
                Err(err) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", err.to_string());
                    drop(timing); // recorded, without a status
                    Err(err)
                }
            }
        })
    }
}

/// A response body that keeps its call's span open until the last frame,
/// and records the status the trailers carry.
pub struct TracedBody<B> {
    inner: B,
    span: Option<tracing::Span>,
    timing: Option<Timing>,
}

/// A served call's duration, recorded when the call is over (its body
/// ended or was dropped).
struct Timing {
    histogram: Histogram<f64>,
    path: String,
    started: std::time::Instant,
    code: Option<i64>,
}

impl Drop for Timing {
    fn drop(&mut self) {
        let name = self.path.trim_start_matches('/');
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let code = self
            .code
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        self.histogram.record(
            self.started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("rpc.service", service.to_string()),
                KeyValue::new("rpc.method", method.to_string()),
                KeyValue::new("rpc.grpc.status_code", code),
            ],
        );
    }
}

impl<B: Body + Unpin> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // tracing-opentelemetry ends a span at its last exit: polling the
        // body inside the span makes the call's span end with its last
        // frame. The span is entered by reference, not cloned: a streamed
        // answer polls once per message.
        let this = &mut *self;
        let frame = {
            let _entered = this.span.as_ref().map(tracing::Span::enter);
            ready!(Pin::new(&mut this.inner).poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_status(trailers)
                {
                    if let Some(span) = &self.span {
                        record_status(span, code, trailers);
                    }
                    if let Some(timing) = &mut self.timing {
                        timing.code = Some(code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(span) = self.span.take() {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", "the call's stream broke");
                }
            }
            None => {
                self.span = None; // the call is over: its span ends
                self.timing = None; // and its duration is recorded
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The span of one call to `path` (`/package.Service/Method`).
fn rpc_span(path: &str, side: Side) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    tracing::info_span!(
        "grpc",
        otel.name = %name,
        otel.kind = kind,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn record_status(span: &tracing::Span, code: i64, headers: &http::HeaderMap) {
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        span.record("otel.status_description", message);
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
