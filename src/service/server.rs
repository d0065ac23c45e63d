//! Server assembly: every service behind the gate (keys, roles, load
//! shedding, deadlines, audit), TLS, health, reflection, metrics, key
//! reloading on SIGHUP, and a shutdown that stops jobs before the server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::auth::{KeyFileError, Keys};
use super::config::{ServerConfig, TlsFiles};
use super::engine::{Engine, EngineError};
use super::gate::{GateConfig, GateLayer};
use super::handlers::*;
use super::metrics::{serve_metrics, Metrics};
use super::proto::{self as pb, FILE_DESCRIPTOR_SET};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] EngineError),
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error("the keys file lists no keys: every call would be refused")]
    NoKeys,
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("metrics address: {0}")]
    Metrics(std::io::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("TLS: the certificate {cert} and key {key} cannot serve: {source}")]
    TlsIdentity {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: tonic::transport::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// HTTP/2 flow-control window for each stream (the connection gets twice this).
pub const WINDOW_BYTES: u32 = 8 << 20;

/// How long shutdown waits for running jobs to reach a cancellation check.
/// Their records stay unfinished, so the next start runs them again.
const JOB_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every service by its gRPC name, for health.
const SERVICES: [&str; 8] = [
    "segmenta.v1.Datasets",
    "segmenta.v1.Jobs",
    "segmenta.v1.Clustering",
    "segmenta.v1.Decomposition",
    "segmenta.v1.Models",
    "segmenta.v1.Segmentations",
    "segmenta.v1.Server",
    "segmenta.v1.Privacy",
];

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES.iter().chain(&[""]) {
        reporter.set_service_status(name, status).await;
    }
}

/// The TLS settings; the whole handshake must finish within `handshake`
/// (a ClientHello and then silence would otherwise hold a connection slot).
fn tls_config(files: &TlsFiles, handshake: Duration) -> Result<ServerTlsConfig, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .timeout(handshake);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

/// Serves on `listener` until `shutdown` completes; then turns health to
/// NOT_SERVING, stops running jobs (nothing is left half-written: stores
/// are atomic, and interrupted jobs run again at the next start), and lets
/// in-flight calls finish.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(config, listener, shutdown, || {}).await
}

/// [`serve`], calling `on_ready` once the data directory is open (locked,
/// crash leftovers cleared) and calls are about to be accepted.
pub async fn serve_with(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let max = config.limits.max_message_bytes;
    let keys = match &config.auth_keys {
        Some(path) => {
            let keys = Keys::open(path)?;
            if keys.current().is_empty() {
                return Err(ServeError::NoKeys);
            }
            Some(Arc::new(keys))
        }
        None => None,
    };
    let tls = config
        .tls
        .as_ref()
        .map(|files| {
            let tls = tls_config(files, config.limits.handshake_timeout)?;
            Ok::<_, ServeError>((tls, files.clone()))
        })
        .transpose()?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(ServeError::Metrics)?),
        None => None,
    };
    let limits = config.limits;
    let (engine, unfinished) = Engine::open(config)?;
    let metrics = Arc::new(Metrics::default());
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    {
        let (engine, reporter, mut stopping) =
            (engine.clone(), reporter.clone(), stopping_rx.clone());
        tokio::spawn(async move {
            let backends = engine.backends().await;
            if let Ok((default, _)) = backends.resolve(None) {
                tracing::info!(backend = %default.info().backend, adapter = %default.info().adapter, "compute backend ready");
            }
            resume_jobs(&engine, unfinished).await;
            // SERVING while jobs can be admitted; NOT_SERVING while the
            // queue is full (a balancer sends work elsewhere) or stopping.
            let mut serving = None;
            loop {
                let now = !*stopping.borrow() && !engine.jobs.is_full();
                if serving != Some(now) {
                    let status = if now {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    set_health(&reporter, status).await;
                    serving = Some(now);
                }
                if *stopping.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopping.changed() => {}
                }
            }
        });
    }
    if let Some(keys) = &keys {
        spawn_key_reloader(keys.clone());
    }
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr().map_err(ServeError::Metrics)?, "metrics served");
        tokio::spawn(serve_metrics(
            listener,
            engine.clone(),
            metrics.clone(),
            stopping_rx.clone(),
        ));
    }
    {
        let engine = engine.clone();
        let mut stopping = stopping_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => engine.jobs.prune(),
                    _ = stopping.changed() => return,
                }
            }
        });
    }
    // Both versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    macro_rules! limited {
        ($server:ty, $svc:expr) => {
            <$server>::new($svc)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
        };
    }
    let e = || engine.clone();
    let gate = GateLayer::new(GateConfig {
        keys,
        max_concurrent_requests: limits.max_concurrent_requests,
        request_timeout: limits.request_timeout,
        body_timeout: limits.idle_timeout,
        max_message_bytes: limits.max_message_bytes,
        metrics: metrics.clone(),
    });
    let mut builder = Server::builder();
    if let Some((tls, files)) = tls {
        // A key that is not the certificate's is found here.
        builder = builder
            .tls_config(tls)
            .map_err(|source| ServeError::TlsIdentity {
                cert: files.cert,
                key: files.key,
                source,
            })?;
    }
    let router = builder
        // HTTP/2's default 64 KiB windows throttle megabyte messages even on
        // loopback; row blocks and Assign batches are that size.
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(gate)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(
            pb::datasets_server::DatasetsServer<_>,
            DatasetsService { engine: e() }
        ))
        .add_service(limited!(
            pb::jobs_server::JobsServer<_>,
            JobsService { engine: e() }
        ))
        .add_service(limited!(
            pb::clustering_server::ClusteringServer<_>,
            ClusteringService { engine: e() }
        ))
        .add_service(limited!(
            pb::decomposition_server::DecompositionServer<_>,
            DecompositionService { engine: e() }
        ))
        .add_service(limited!(
            pb::models_server::ModelsServer<_>,
            ModelsService { engine: e() }
        ))
        .add_service(limited!(
            pb::segmentations_server::SegmentationsServer<_>,
            SegmentationsService { engine: e() }
        ))
        .add_service(limited!(
            pb::server_server::ServerServer<_>,
            ServerService { engine: e() }
        ))
        .add_service(limited!(
            pb::privacy_server::PrivacyServer<_>,
            PrivacyService { engine: e() }
        ));
    let stopping = engine.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: stopping running jobs");
        let _ = stopping_tx.send(true);
        set_health(&reporter, ServingStatus::NotServing).await;
        stopping.jobs.shutdown(JOB_STOP_TIMEOUT).await;
    };
    on_ready();
    // Each connection takes a slot and must speak within a deadline (see
    // `conn`). The builder's tcp_nodelay only reaches sockets it accepts
    // itself: `admit` sets it, or Nagle's algorithm meets delayed ACKs and
    // adds ~40 ms per call.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let peers = super::conn::Peers::new(limits.max_connections_per_peer);
    let incoming = TcpListenerStream::new(listener).map(move |conn| {
        conn.and_then(|socket| super::conn::admit(socket, &slots, &peers, limits.handshake_timeout))
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Re-reads the keys file on SIGHUP; connections stay up.
fn spawn_key_reloader(keys: Arc<Keys>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: keys are not reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match keys.reload() {
                Ok(n) => tracing::info!(target: "segmenta::keys", keys = n, "keys file reloaded"),
                Err(e) => tracing::error!("keys file not reloaded, the old keys stay: {e}"),
            }
        }
    });
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
