//! Segmenta: customer segmentation with k-means and PCA on wgpu compute
//! shaders, and a native CPU path that gives the same answers.
//!
//! Layout: [`data`] loads and scales tables; [`backend`] holds the kernel
//! trait and its CPU and GPU implementations; [`kmeans`] and [`pca`] are the
//! algorithms, written once on top of the trait; [`segmentation`] is the
//! customer workflow built on them (RFM, choosing k, profiles, refresh,
//! report); [`value`] predicts what customers will buy and are worth
//! (BG/NBD, Gamma-Gamma, CLV); [`experiment`] draws campaign groups and
//! measures uplift; [`service`] serves it all over gRPC.

pub mod backend;
pub mod data;
mod error;
pub mod experiment;
pub mod kmeans;
pub mod model_file;
pub mod pca;
pub mod segmentation;
pub mod value;

pub use error::{Error, ParamsError, Result};
pub mod service;
