//! Prometheus metrics: calls by method and status code, their latency, jobs
//! by kind and state, the job queue, bytes stored and the backend in use.
//! Served as text on `--metrics-addr` (keep it on a private interface: it
//! needs no key, and it holds counts only, never ids or values).

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::engine::Engine;
use super::jobs::{JobKind, JobState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    adapter: String,
}

type Latency = Family<MethodLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Latency,
    shed: Counter,
    jobs: Family<JobLabels, Gauge>,
    queue: Gauge,
    stored: Gauge,
    backend: Family<BackendLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("segmenta");
        let calls = Family::<CallLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        let shed = Counter::default();
        let jobs = Family::<JobLabels, Gauge>::default();
        let queue = Gauge::default();
        let stored = Gauge::default();
        let backend = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "requests",
            "gRPC calls by method and status code",
            calls.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "gRPC call latency, to the end of the response",
            latency.clone(),
        );
        registry.register(
            "requests_shed",
            "Calls refused because max_concurrent_requests were in progress",
            shed.clone(),
        );
        registry.register("jobs", "Jobs known, by kind and state", jobs.clone());
        registry.register(
            "job_queue_depth",
            "Jobs waiting for a compute slot",
            queue.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes in the data directory",
            stored.clone(),
        );
        registry.register(
            "backend",
            "The default compute backend (value 1)",
            backend.clone(),
        );
        Self {
            registry,
            calls,
            latency,
            shed,
            jobs,
            queue,
            stored,
            backend,
        }
    }
}

impl Metrics {
    /// One finished call. `method` is a known method's path or `unknown`,
    /// so attackers cannot grow the label set.
    pub fn call(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    pub fn shed(&self) {
        self.shed.inc();
    }

    /// The text exposition, with the gauges read from the engine now.
    pub async fn render(&self, engine: &Engine) -> String {
        self.jobs.clear();
        for kind in [
            JobKind::Import,
            JobKind::FitKMeans,
            JobKind::FitPca,
            JobKind::Segment,
            JobKind::Clv,
        ] {
            for state in [
                JobState::Queued,
                JobState::Running,
                JobState::Succeeded,
                JobState::Failed,
                JobState::Cancelled,
            ] {
                self.jobs
                    .get_or_create(&JobLabels {
                        kind: kind.as_str().into(),
                        state: state.as_str().into(),
                    })
                    .set(0);
            }
        }
        for (kind, state) in engine.jobs.counts() {
            self.jobs
                .get_or_create(&JobLabels {
                    kind: kind.as_str().into(),
                    state: state.as_str().into(),
                })
                .inc();
        }
        self.queue.set(engine.jobs.queued() as i64);
        self.stored.set(engine.store.used_bytes() as i64);
        if let Some(backends) = engine.backends_if_ready() {
            if let Ok((b, _)) = backends.resolve(None) {
                let info = b.info();
                self.backend.clear();
                self.backend
                    .get_or_create(&BackendLabels {
                        backend: info.backend.to_string(),
                        adapter: info.adapter,
                    })
                    .set(1);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) over HTTP/1.1 until `stop`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (engine, metrics) = (engine.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                let (engine, metrics) = (engine.clone(), metrics.clone());
                async move {
                    let text = metrics.render(&engine).await;
                    hyper::Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(http_body_full(text))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

/// A whole-string response body.
fn http_body_full(text: String) -> Full {
    Full(Some(bytes::Bytes::from(text)))
}

/// The smallest body type hyper takes: one data frame, then the end.
struct Full(Option<bytes::Bytes>);

impl http_body::Body for Full {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Binds the metrics address (loopback or a private interface).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
