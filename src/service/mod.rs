//! The gRPC service. Tonic/prost types stay inside this module.
//!
//! `handlers/` has one file per gRPC service; [`engine`] holds the state and
//! domain operations; [`storage`] the crash-safe data directory; [`jobs`]
//! the job queue; [`error`] the one mapping to gRPC status codes.

pub mod config;
mod convert;
pub mod engine;
pub mod error;
mod handlers;
pub mod jobs;
mod server;
pub mod storage;

pub use config::{Limits, ServerConfig};
pub use server::{serve, shutdown_signal, ServeError};

/// A client channel to `url` with the flow-control windows the server uses,
/// so large messages are not throttled.
pub async fn connect(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(server::WINDOW_BYTES)
        .initial_connection_window_size(2 * server::WINDOW_BYTES)
        .tcp_nodelay(true)
        .connect()
        .await
}

pub mod proto {
    //! Generated from `proto/segmenta/v1/segmenta.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmenta.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("segmenta_descriptor");
}
