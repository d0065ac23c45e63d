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

pub mod proto {
    //! Generated from `proto/segmenta/v1/segmenta.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmenta.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("segmenta_descriptor");
}
