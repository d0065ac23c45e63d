//! The tower layer in front of every service: authenticates the caller,
//! checks the role the method needs, sheds load past the server-wide
//! concurrency cap, bounds unary calls by the request timeout, and writes one
//! audit line and one metrics sample per call.
//!
//! It is a layer around the whole router (not a tonic interceptor) because it
//! must see the method path, and the status code that ends the response.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::auth::{self, Access, Caller, Keys, Role};
use super::metrics::Metrics;

/// Object ids a handler touched, for the audit line. Only ids of our own
/// syntax are kept: client input that is not one is logged as `<invalid>`.
#[derive(Debug, Clone, Default)]
pub struct AuditIds(Arc<Mutex<Vec<String>>>);

impl AuditIds {
    pub fn push(&self, id: &str) {
        let id = if is_id(id) {
            id.to_owned()
        } else {
            "<invalid>".to_owned()
        };
        let mut ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() < 16 && !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn joined(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).join(",")
    }
}

/// `prefix-<32 hex>`, the shape of every id the server makes.
fn is_id(s: &str) -> bool {
    let Some((prefix, rest)) = s.split_once('-') else {
        return false;
    };
    (1..=8).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase())
        && rest.len() == 32
        && rest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Records ids a call touched (request ids and the ids it created).
pub fn note<T>(request: &tonic::Request<T>, ids: &[&str]) {
    if let Some(audit) = request.extensions().get::<AuditIds>() {
        for id in ids.iter().filter(|id| !id.is_empty()) {
            audit.push(id);
        }
    }
}

/// The caller, as authenticated by the gate (`None` outside a server).
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

pub struct GateConfig {
    /// `None`: authentication off, every caller an anonymous admin.
    pub keys: Option<Arc<Keys>>,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    /// A unary call's message must arrive whole within this long.
    pub body_timeout: Duration,
    pub max_message_bytes: usize,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct GateLayer {
    state: Arc<GateState>,
}

struct GateState {
    keys: Option<Arc<Keys>>,
    in_flight: Arc<Semaphore>,
    max_concurrent_requests: usize,
    request_timeout: Duration,
    body_timeout: Duration,
    max_message_bytes: usize,
    metrics: Arc<Metrics>,
}

impl GateLayer {
    pub fn new(config: GateConfig) -> Self {
        Self {
            state: Arc::new(GateState {
                keys: config.keys,
                in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
                max_concurrent_requests: config.max_concurrent_requests.max(1),
                request_timeout: config.request_timeout,
                body_timeout: config.body_timeout,
                max_message_bytes: config.max_message_bytes,
                metrics: config.metrics,
            }),
        }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    state: Arc<GateState>,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl GateState {
    /// The caller presenting the request's key, if it may call a method
    /// needing `needs`.
    fn authorise(
        &self,
        headers: &http::HeaderMap,
        path: &str,
        needs: Role,
    ) -> Result<Caller, (Option<String>, Status)> {
        let Some(keys) = &self.keys else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        };
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 512);
        let token = header.and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            // A header that was sent but not understood is told apart
            // from none at all; its value is never echoed.
            let message = match (header.map(str::trim), token) {
                (Some(_), Some(_)) => "the API key after `Bearer ` is empty",
                (Some(v), None) if !v.is_empty() => {
                    "the authorization header is not `Bearer KEY`: put `Bearer ` before the API key"
                }
                _ => "an API key is needed: send the header `authorization: Bearer KEY`",
            };
            return Err((None, Status::unauthenticated(message)));
        };
        let Some(caller) = keys.current().find(token) else {
            return Err((None, Status::unauthenticated("unknown API key")));
        };
        if caller.role < needs {
            // The key is known: the audit line names who was refused.
            let status = Status::permission_denied(format!(
                "{} needs the {needs} role; key {:?} has the {} role",
                method_label(path),
                caller.name,
                caller.role
            ));
            return Err((Some(caller.name), status));
        }
        Ok(caller)
    }
}

impl GateState {
    /// Reads a unary call's body whole (at most one message and its frame
    /// header), within the body timeout.
    async fn buffer_body(&self, request: Request) -> Result<Request, Status> {
        use http_body_util::BodyExt;
        let (parts, body) = request.into_parts();
        let limit = self.max_message_bytes + 5 + 1024;
        let limited = http_body_util::Limited::new(body, limit);
        let bytes = match tokio::time::timeout(self.body_timeout, limited.collect()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the request's message did not arrive within {} s",
                    self.body_timeout.as_secs_f64()
                )))
            }
            Ok(Err(_)) => {
                return Err(Status::out_of_range(format!(
                    "the request is larger than the message limit ({} bytes)",
                    self.max_message_bytes
                )))
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(bytes)),
        ))
    }
}

/// A known method's path, or `unknown` (bounded label sets and log lines).
fn method_label(path: &str) -> &str {
    if auth::method(path).is_some() {
        path
    } else {
        "unknown"
    }
}

fn peer(request: &Request) -> Option<SocketAddr> {
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

impl<S> tower::Service<Request> for Gate<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let method = auth::method(&path);
            let needs = match method.map(|m| m.access) {
                Some(Access::Open) => return inner.call(request).await,
                Some(Access::Needs(role)) => role,
                None => Role::Read,
            };
            let mut record = CallRecord {
                method: method_label(&path).to_owned(),
                caller: String::from("-"),
                peer: peer(&request),
                started: Instant::now(),
                ids: AuditIds::default(),
                code: None,
                metrics: state.metrics.clone(),
            };
            let caller = match state.authorise(request.headers(), &path, needs) {
                Ok(c) => c,
                Err((known, status)) => {
                    if let Some(name) = known {
                        record.caller = name;
                    }
                    record.code = Some(status.code());
                    return Ok(status.into_http());
                }
            };
            record.caller = caller.name.clone();
            let unary = method.is_none_or(|m| m.unary);
            if unary {
                // The whole message first, within the body timeout, and only
                // then a slot: a client that sends half a message holds no
                // slot while it stalls.
                match state.buffer_body(request).await {
                    Ok(r) => request = r,
                    Err(status) => {
                        record.code = Some(status.code());
                        return Ok(status.into_http());
                    }
                }
            }
            let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
                state.metrics.shed();
                let status = Status::resource_exhausted(format!(
                    "server busy: {} calls in progress (limit max_concurrent_requests); retry with backoff",
                    state.max_concurrent_requests
                ));
                record.code = Some(status.code());
                return Ok(status.into_http());
            };
            request.extensions_mut().insert(record.ids.clone());
            request.extensions_mut().insert(caller);
            let call = inner.call(request);
            let response = if unary {
                match tokio::time::timeout(state.request_timeout, call).await {
                    Ok(r) => r?,
                    Err(_) => {
                        let status = Status::deadline_exceeded(format!(
                            "the call ran past the server's request timeout ({} s)",
                            state.request_timeout.as_secs_f64()
                        ));
                        record.code = Some(status.code());
                        return Ok(status.into_http());
                    }
                }
            } else {
                call.await?
            };
            drop(permit);
            // A trailers-only response (every error) carries its status here.
            record.code = Status::from_header_map(response.headers()).map(|s| s.code());
            Ok(response.map(|body| {
                Body::new(Observed {
                    inner: body,
                    record,
                })
            }))
        })
    }
}

/// One call's audit line and metrics sample, written when it ends.
struct CallRecord {
    method: String,
    caller: String,
    peer: Option<SocketAddr>,
    started: Instant,
    ids: AuditIds,
    code: Option<Code>,
    metrics: Arc<Metrics>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // No status by the end: the client went away (or the stream broke).
        let code = self.code.unwrap_or(Code::Cancelled);
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.call(&self.method, code, seconds);
        let peer = self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
        tracing::info!(
            target: "segmenta::audit",
            key = %self.caller,
            method = %self.method,
            ids = %self.ids.joined(),
            code = ?code,
            ms = format_args!("{:.1}", seconds * 1e3),
            peer = %peer,
            "audit"
        );
    }
}

/// The response body, passed through; its trailers give the status code.
struct Observed {
    inner: Body,
    record: CallRecord,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(status) = Status::from_header_map(trailers) {
                    this.record.code = Some(status.code());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_ids_are_logged() {
        let ids = AuditIds::default();
        ids.push("ds-0195f0c2b7a37c3e9a0b1c2d3e4f5a6b");
        ids.push("alice@example.com");
        ids.push("../../etc/passwd");
        assert_eq!(
            ids.joined(),
            "ds-0195f0c2b7a37c3e9a0b1c2d3e4f5a6b,<invalid>"
        );
    }
}
