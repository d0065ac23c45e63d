use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendInfo};
use crate::data::check_finite;
use crate::error::{ParamsError, Result};

/// A fitted PCA: `components` is `c × d`, rows orthonormal, sorted by
/// explained variance (descending).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PcaModel {
    pub(super) mean: Array1<f32>,
    pub(super) components: Array2<f32>,
    pub(super) explained_variance: Vec<f64>,
    pub(super) explained_variance_ratio: Vec<f64>,
    pub(super) singular_values: Vec<f64>,
    pub(super) whiten: bool,
    pub(super) n_samples: usize,
    pub(super) backend: BackendInfo,
}

impl PcaModel {
    /// A deserialised model is checked before use: shapes that disagree
    /// are an error, never a panic in `transform`.
    pub fn check_consistent(&self) -> std::result::Result<(), String> {
        let (c, d) = self.components.dim();
        if c == 0 || d == 0 || c > d {
            return Err(format!("{c} components of width {d}"));
        }
        if self.mean.len() != d {
            return Err(format!(
                "a mean of {} values for {d} features",
                self.mean.len()
            ));
        }
        for (name, len) in [
            ("explained_variance", self.explained_variance.len()),
            (
                "explained_variance_ratio",
                self.explained_variance_ratio.len(),
            ),
            ("singular_values", self.singular_values.len()),
        ] {
            if len != c {
                return Err(format!("{len} {name} values for {c} components"));
            }
        }
        let finite = self
            .components
            .iter()
            .chain(self.mean.iter())
            .all(|v| v.is_finite())
            && self
                .explained_variance
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0);
        if !finite {
            return Err("non-finite or negative values".into());
        }
        Ok(())
    }

    pub fn mean(&self) -> &Array1<f32> {
        &self.mean
    }
    pub fn components(&self) -> &Array2<f32> {
        &self.components
    }
    /// Variance along each component (eigenvalues of the covariance, `n − 1` denominator).
    pub fn explained_variance(&self) -> &[f64] {
        &self.explained_variance
    }
    pub fn explained_variance_ratio(&self) -> &[f64] {
        &self.explained_variance_ratio
    }
    pub fn singular_values(&self) -> &[f64] {
        &self.singular_values
    }
    pub fn whiten(&self) -> bool {
        self.whiten
    }
    pub fn n_components(&self) -> usize {
        self.components.nrows()
    }
    pub fn n_features(&self) -> usize {
        self.components.ncols()
    }
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }
    pub fn backend(&self) -> &BackendInfo {
        &self.backend
    }

    fn check_width(&self, got: usize, expected: usize) -> Result<()> {
        if got != expected {
            return Err(ParamsError::WidthMismatch { expected, got }.into());
        }
        Ok(())
    }

    /// Projects rows onto the components, on the backend: `n × c`.
    pub fn transform(&self, backend: &dyn Backend, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check_width(x.ncols(), self.n_features())?;
        check_finite(x, &[])?;
        let mut resident = backend.upload(x, None)?;
        let mut y = resident.project(
            self.mean.as_slice().expect("contiguous"),
            self.components.view(),
        )?;
        if self.whiten {
            for (mut col, &v) in y.axis_iter_mut(Axis(1)).zip(&self.explained_variance) {
                let s = v.sqrt() as f32;
                if s > 0.0 {
                    col.mapv_inplace(|y| y / s);
                }
            }
        }
        Ok(y)
    }

    /// Maps projected rows (`n × c`) back to feature space (`n × d`).
    pub fn inverse_transform(&self, y: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check_width(y.ncols(), self.n_components())?;
        let mut y = y.to_owned();
        if self.whiten {
            for (mut col, &v) in y.axis_iter_mut(Axis(1)).zip(&self.explained_variance) {
                let s = v.sqrt() as f32;
                col.mapv_inplace(|y| y * s);
            }
        }
        Ok(y.dot(&self.components) + &self.mean)
    }
}
