//! The gRPC service. Tonic/prost types stay inside this module.
//!
//! `handlers/` has one file per gRPC service; [`engine`] holds the state and
//! domain operations (and the cost of every request); [`storage`] the
//! crash-safe data directory; [`jobs`] the durable job queue; [`error`] the
//! one mapping to gRPC status codes. In front of them all, [`gate`]
//! authenticates ([`auth`]: keys and roles), sheds load, bounds calls in
//! time and writes the audit line; [`paths`] guards server-side files;
//! [`metrics`] serves Prometheus text.

pub mod auth;
pub mod config;
mod conn;
mod convert;
pub mod engine;
pub mod error;
pub mod gate;
mod handlers;
pub mod jobs;
pub mod metrics;
pub mod paths;
mod server;
pub mod storage;

pub use config::{Limits, ServerConfig, TlsFiles};
pub use server::{serve, serve_with, shutdown_signal, ServeError};

/// A client endpoint for `url` with the flow-control windows the server
/// uses, so large messages are not throttled. Add TLS with
/// [`Endpoint::tls_config`](tonic::transport::Endpoint::tls_config).
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(server::WINDOW_BYTES)
        .initial_connection_window_size(2 * server::WINDOW_BYTES)
        .tcp_nodelay(true))
}

/// A plaintext client channel to `url` (see [`endpoint`]).
pub async fn connect(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    endpoint(url)?.connect().await
}

pub mod proto {
    //! Generated from `proto/segmenta/v1/segmenta.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmenta.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("segmenta_descriptor");
}
