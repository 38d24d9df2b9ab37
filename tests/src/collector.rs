//! A minimal OTLP/gRPC trace receiver, built on the upstream OTLP protos:
//! records every span the imaged processes export, with what the tests
//! look at (its place in the tree, kind, times, status and attributes).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;

/// One exported span, reduced to what the tests look at.
#[derive(Clone, Debug)]
pub struct SeenSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's SpanKind: 2 server, 3 client, 1 internal.
    pub kind: i32,
    pub start_nanos: u64,
    pub end_nanos: u64,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// Attributes as text.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl SeenSpan {
    /// The attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/gRPC collector on a free 127.0.0.1 port.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Sink {
            spans: spans.clone(),
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Collector { addr, spans, task })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SeenSpan> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Sink {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect();
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            let text = match kv.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(s) => s.clone(),
                                Value::IntValue(i) => i.to_string(),
                                Value::BoolValue(b) => b.to_string(),
                                Value::DoubleValue(d) => d.to_string(),
                                _ => return None,
                            };
                            Some((kv.key.clone(), text))
                        })
                        .collect();
                    seen.push(SeenSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        start_nanos: span.start_time_unix_nano,
                        end_nanos: span.end_time_unix_nano,
                        status: span.status.as_ref().map_or(0, |s| s.code),
                        attributes,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(seen);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
