//! K-means clustering, written once on top of the [`Backend`](crate::backend::Backend) kernels.
//!
//! ```
//! use ndarray::array;
//! use segmenta::backend::cpu::CpuBackend;
//! use segmenta::kmeans::KMeansParams;
//!
//! let x = array![[0.0f32, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]];
//! let model = KMeansParams::new(2).seed(7).fit(&CpuBackend::new(), x.view(), None)?;
//! assert_eq!(model.cluster_sizes(), &[2, 2]);
//! assert_ne!(model.labels()[0], model.labels()[2]);
//! # Ok::<(), segmenta::Error>(())
//! ```

mod fit;
pub mod hamerly;
mod init;
mod lloyd;
mod metrics;
mod model;
mod params;
pub mod partial;

pub use hamerly::{Pruning, Stepper};
pub use metrics::{adjusted_rand_index, evaluate, evaluate_with, Evaluation};
pub use model::{FitSummary, KMeansModel, Prediction};
pub use params::{FitControl, Init, InitSample, KMeansParams, Progress};
