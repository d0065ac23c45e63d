//! Principal component analysis: the covariance (Gram) matrix on the backend,
//! the symmetric eigendecomposition on the host in f64.
//!
//! ```
//! use ndarray::array;
//! use segmenta::backend::cpu::CpuBackend;
//! use segmenta::pca::PcaParams;
//!
//! let x = array![[1.0f32, 2.0], [2.0, 4.1], [3.0, 5.9], [4.0, 8.0]];
//! let pca = PcaParams::new(1).fit(&CpuBackend::new(), x.view())?;
//! assert!(pca.explained_variance_ratio()[0] > 0.99);
//! # Ok::<(), segmenta::Error>(())
//! ```

mod fit;
mod model;

pub use model::PcaModel;

/// PCA hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaParams {
    pub(crate) n_components: usize,
    pub(crate) whiten: bool,
}

impl PcaParams {
    pub fn new(n_components: usize) -> Self {
        Self {
            n_components,
            whiten: false,
        }
    }

    /// Scale projected components to unit variance.
    pub fn whiten(mut self, yes: bool) -> Self {
        self.whiten = yes;
        self
    }
}
