//! Server assembly: every service, health, reflection, limits, and a
//! graceful shutdown that cancels running jobs before the server stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::config::ServerConfig;
use super::engine::Engine;
use super::handlers::*;
use super::proto::{self as pb, FILE_DESCRIPTOR_SET};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the data directory: {0}")]
    DataDir(#[from] std::io::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// HTTP/2 flow-control window for each stream (the connection gets twice this).
pub const WINDOW_BYTES: u32 = 8 << 20;

/// How long shutdown waits for cancelled jobs to stop.
const JOB_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves on `listener` until `shutdown` completes; then cancels running
/// jobs, waits for them (nothing is left half-written: stores are atomic),
/// and lets in-flight calls finish.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let max = config.limits.max_message_bytes;
    let engine = Arc::new(Engine::new(config)?);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    {
        let (engine, reporter) = (engine.clone(), reporter.clone());
        tokio::spawn(async move {
            let backends = engine.backends().await;
            let (default, _) = backends
                .resolve(None)
                .expect("the default backend resolves");
            tracing::info!(backend = %default.info().backend, adapter = %default.info().adapter, "compute backend ready");
            for name in SERVICES {
                reporter
                    .set_service_status(name, ServingStatus::Serving)
                    .await;
            }
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
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
    let router = Server::builder()
        // HTTP/2's default 64 KiB windows throttle megabyte messages even on
        // loopback; row blocks and Assign batches are that size.
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
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
        ));
    let stopping = engine.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: cancelling running jobs");
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stopping.jobs.shutdown(JOB_STOP_TIMEOUT).await;
    };
    // The builder's tcp_nodelay only reaches sockets it accepts itself: set it
    // here, or Nagle's algorithm meets delayed ACKs and adds ~40 ms per call.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(socket) = &conn {
            let _ = socket.set_nodelay(true);
        }
        conn
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

const SERVICES: [&str; 6] = [
    "segmenta.v1.Datasets",
    "segmenta.v1.Jobs",
    "segmenta.v1.Clustering",
    "segmenta.v1.Decomposition",
    "segmenta.v1.Models",
    "segmenta.v1.Server",
];

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
