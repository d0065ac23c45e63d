use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView2};

use super::{PcaModel, PcaParams};
use crate::backend::Backend;
use crate::data::check_finite;
use crate::error::{ParamsError, Result};

impl PcaParams {
    /// Fits on `x` (`n × d`).
    pub fn fit(&self, backend: &dyn Backend, x: ArrayView2<f32>) -> Result<PcaModel> {
        // Where the backend propagates NaN and infinity into the column
        // sums, the check waits for them: one pass over the data instead of
        // two (a matrix without rows is still rejected here).
        let check_after = backend.propagates_non_finite() && x.nrows() > 0;
        if !check_after {
            check_finite(x, &[])?;
        }
        let (n, d) = x.dim();
        let c = self.n_components;
        if c == 0 {
            return Err(ParamsError::ZeroComponents.into());
        }
        if c > d {
            return Err(ParamsError::ComponentsExceedFeatures {
                n_components: c,
                n_features: d,
            }
            .into());
        }
        if n < 2 || c > n {
            return Err(ParamsError::TooFewRows {
                n_components: c,
                n_rows: n,
            }
            .into());
        }
        let info = backend.info();
        tracing::info!(backend = %info.backend, adapter = %info.adapter, n, d, c, "PCA fit");
        let mut resident = backend.upload(x, None)?;
        let (sums, gram) = resident.centred_gram()?;
        if check_after && !sums.sum.iter().all(|v| v.is_finite()) {
            // Names the first bad value. It passes only if finite values
            // overflowed f32, as an upfront check would have let them.
            check_finite(x, &[])?;
        }
        let mean: Vec<f32> = sums.mean().iter().map(|&m| m as f32).collect();
        let cov = gram.mapv(|g| g / (n - 1) as f64);
        let (values, vectors) = sorted_eigen(&cov);
        // Total variance as the sum of all eigenvalues (clamped at 0, as the
        // kept ones are), not the trace: the same rounding on both sides keeps
        // every ratio ≤ 1.
        let total: f64 = values.iter().map(|&v| v.max(0.0)).sum();
        let explained_variance: Vec<f64> = values.iter().take(c).map(|&v| v.max(0.0)).collect();
        let mut components = Array2::<f32>::zeros((c, d));
        for (i, mut row) in components.rows_mut().into_iter().enumerate() {
            let v = vectors.column(i);
            // Sign convention: the largest-magnitude entry is positive, so
            // every backend (and every run) reports the same signs.
            let pivot = (0..d).fold(
                0,
                |best, j| if v[j].abs() > v[best].abs() { j } else { best },
            );
            let sign = if v[pivot] < 0.0 { -1.0 } else { 1.0 };
            for (j, out) in row.iter_mut().enumerate() {
                *out = (sign * v[j]) as f32;
            }
        }
        Ok(PcaModel {
            mean: Array1::from(mean),
            components,
            explained_variance_ratio: explained_variance
                .iter()
                .map(|&v| if total > 0.0 { v / total } else { 0.0 })
                .collect(),
            singular_values: explained_variance
                .iter()
                .map(|&v| (v * (n - 1) as f64).sqrt())
                .collect(),
            explained_variance,
            whiten: self.whiten,
            n_samples: n,
            backend: info,
        })
    }
}

/// Eigenvalues in descending order and the matching eigenvectors (columns).
fn sorted_eigen(cov: &Array2<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let d = cov.nrows();
    let m = DMatrix::from_fn(d, d, |i, j| cov[[i, j]]);
    let eig = m.symmetric_eigen();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let values = order.iter().map(|&i| eig.eigenvalues[i]).collect();
    let vectors = DMatrix::from_fn(d, d, |r, c| eig.eigenvectors[(r, order[c])]);
    (values, vectors)
}
