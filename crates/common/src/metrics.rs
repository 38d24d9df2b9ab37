//! Metrics: OpenTelemetry instruments (`opentelemetry::global::meter`),
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and served
//! in Prometheus' text format at `GET /metrics` on `--metrics-listen`.
//! Every sample carries a `process` label, so the launcher can serve the
//! four processes' metrics from one address by joining their pages
//! ([`merge`]).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};

use crate::endpoint::Endpoint;
use crate::http;

/// Histogram bounds for durations in seconds: a millisecond call to a
/// five-minute pull.
pub const SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Keeps the meter provider; dropping it flushes OTLP export.
#[must_use = "dropping the guard stops metric export"]
pub struct MetricsGuard {
    provider: SdkMeterProvider,
}

impl Drop for MetricsGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global meter provider for `process`: OTLP export when
/// configured, and the Prometheus page on `listen` when given. Must be
/// called inside the tokio runtime.
pub fn init(process: &'static str, listen: Option<&Endpoint>) -> anyhow::Result<MetricsGuard> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(process)
        .build();
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    let mut readers = 0;
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|e| !e.is_empty()) {
        readers += 1;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_periodic_exporter(exporter);
    }
    if let Some(listen) = listen {
        readers += 1;
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        builder = builder.with_reader(reader.clone());
        serve_page(listen, move || {
            let reader = reader.clone();
            async move { page(&reader, process) }
        })?;
        tracing::info!(listen = %listen, "metrics served");
    }
    let provider = builder.build();
    // Without a reader the global no-op provider stays: instruments cost
    // nothing, and observable gauges log no "will not be invoked" errors.
    if readers > 0 {
        opentelemetry::global::set_meter_provider(provider.clone());
    }
    Ok(MetricsGuard { provider })
}

/// The manual reader, shared between the provider and the HTTP page.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Serves `page()` at `GET /metrics` on `listen` (anything else is 404),
/// until the process ends.
pub fn serve_page<F, Fut>(listen: &Endpoint, page: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let listener = match listen {
        Endpoint::Tcp(addr) => {
            let socket = std::net::TcpListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            http::Listener::Tcp(tokio::net::TcpListener::from_std(socket)?)
        }
        Endpoint::Unix(path) => http::Listener::Unix(crate::server::bind_unix(path, None)?),
    };
    let service = tower::service_fn(move |request: ::http::Request<_>| {
        let page = page.clone();
        async move {
            let response = if request.uri().path() == "/metrics" {
                ::http::Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(page().await)
            } else {
                ::http::Response::builder()
                    .status(404)
                    .body("not found: try /metrics\n".to_string())
            };
            Ok::<_, std::convert::Infallible>(response.unwrap_or_default())
        }
    });
    tokio::spawn(http::serve(listener, service, http::Limits::default()));
    Ok(())
}

/// Reads the page a process serves on the Unix socket `path` (what the
/// launcher joins).
pub async fn fetch_page(path: &std::path::Path) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.take(64 << 20).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other("not a metrics page")),
    }
}

/// The Prometheus text page of everything the reader collects now.
fn page(reader: &SharedReader, process: &str) -> String {
    let mut metrics = ResourceMetrics::default();
    if let Err(err) = reader.collect(&mut metrics) {
        return format!("# collection failed: {err}\n");
    }
    render(&metrics, process)
}

/// Renders collected metrics in the Prometheus text format (0.0.4): dots
/// become underscores, monotonic sums are counters named `…_total`,
/// histograms get `_bucket`, `_sum` and `_count`.
pub fn render(metrics: &ResourceMetrics, process: &str) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            let name = prometheus_name(metric.name());
            let help = metric.description().replace('\n', " ");
            match metric.data() {
                AggregatedMetrics::U64(data) => family(&mut out, &name, &help, data, process),
                AggregatedMetrics::I64(data) => family(&mut out, &name, &help, data, process),
                AggregatedMetrics::F64(data) => family(&mut out, &name, &help, data, process),
            }
        }
    }
    out
}

/// A metric value as Prometheus writes it.
trait Value: Copy {
    fn as_f64(self) -> f64;
}

impl Value for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Value for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Value for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

fn family<T: Value>(out: &mut String, name: &str, help: &str, data: &MetricData<T>, process: &str) {
    match data {
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{name}_total"), "counter")
            } else {
                (name.to_string(), "gauge")
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for point in sum.data_points() {
                sample(
                    out,
                    &name,
                    point.attributes(),
                    None,
                    point.value().as_f64(),
                    process,
                );
            }
        }
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for point in gauge.data_points() {
                sample(
                    out,
                    name,
                    point.attributes(),
                    None,
                    point.value().as_f64(),
                    process,
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = point.bounds().collect();
                for (i, count) in point.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds
                        .get(i)
                        .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                    sample(
                        out,
                        &format!("{name}_bucket"),
                        point.attributes(),
                        Some(&le),
                        cumulative as f64,
                        process,
                    );
                }
                let sum = point.sum().as_f64();
                sample(
                    out,
                    &format!("{name}_sum"),
                    point.attributes(),
                    None,
                    sum,
                    process,
                );
                let count = point.count() as f64;
                sample(
                    out,
                    &format!("{name}_count"),
                    point.attributes(),
                    None,
                    count,
                    process,
                );
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn sample<'a>(
    out: &mut String,
    name: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    le: Option<&str>,
    value: f64,
    process: &str,
) {
    let mut labels = vec![format!("process=\"{}\"", escape(process))];
    for kv in attributes {
        labels.push(format!(
            "{}=\"{}\"",
            prometheus_name(kv.key.as_str()),
            escape(&kv.value.to_string())
        ));
    }
    if let Some(le) = le {
        labels.push(format!("le=\"{le}\""));
    }
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// A Prometheus metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Joins Prometheus pages (one per process) into one: each metric family
/// once, with every process's samples under it.
pub fn merge(pages: &[String]) -> String {
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for page in pages {
        let mut current: Option<usize> = None;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let index = match families.iter().position(|(n, _, _)| *n == name) {
                    Some(index) => index,
                    None => {
                        families.push((name, Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if families[index].1.is_empty() {
                    families[index].1.push(line.to_string());
                }
                current = Some(index);
            } else if line.starts_with("# TYPE ") {
                if let Some(index) = current
                    && families[index].1.len() == 1
                {
                    families[index].1.push(line.to_string());
                }
            } else if !line.is_empty()
                && !line.starts_with('#')
                && let Some(index) = current
            {
                families[index].2.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (_, head, samples) in families {
        for line in head.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_one_family_header_and_every_process_sample() {
        let a = "# HELP x_total X\n# TYPE x_total counter\nx_total{process=\"a\"} 1\n".to_string();
        let b = "# HELP x_total X\n# TYPE x_total counter\nx_total{process=\"b\"} 2\n# HELP y Y\n# TYPE y gauge\ny{process=\"b\"} 3\n".to_string();
        assert_eq!(
            merge(&[a, b]),
            "# HELP x_total X\n# TYPE x_total counter\nx_total{process=\"a\"} 1\nx_total{process=\"b\"} 2\n# HELP y Y\n# TYPE y gauge\ny{process=\"b\"} 3\n"
        );
    }

    #[test]
    fn names_and_values_are_made_safe() {
        assert_eq!(
            prometheus_name("imaged.pull.duration"),
            "imaged_pull_duration"
        );
        assert_eq!(prometheus_name("9lives"), "_9lives");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
