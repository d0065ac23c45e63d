use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-column count, mean and population variance, accumulated in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    pub n: usize,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

impl ColumnStats {
    /// Rows are split into fixed blocks whose (count, mean, M2) are merged in
    /// block order with Chan's formula: stable for large offsets, and the same
    /// bits on every run regardless of thread scheduling.
    pub fn of(x: ArrayView2<f32>) -> Self {
        const BLOCK: usize = 8192;
        let d = x.ncols();
        let parts: Vec<(usize, Vec<f64>, Vec<f64>)> = x
            .axis_chunks_iter(Axis(0), BLOCK)
            .into_par_iter()
            .map(|block| {
                let n = block.nrows();
                let mut mean = vec![0.0; d];
                for row in block.rows() {
                    for (m, &v) in mean.iter_mut().zip(row) {
                        *m += v as f64;
                    }
                }
                mean.iter_mut().for_each(|m| *m /= n as f64);
                let mut m2 = vec![0.0; d];
                for row in block.rows() {
                    for ((s, &v), m) in m2.iter_mut().zip(row).zip(&mean) {
                        let dv = v as f64 - m;
                        *s += dv * dv;
                    }
                }
                (n, mean, m2)
            })
            .collect();
        let (mut n, mut mean, mut m2) = (0usize, vec![0.0; d], vec![0.0; d]);
        for (nb, mb, m2b) in parts {
            let total = (n + nb) as f64;
            for j in 0..d {
                let delta = mb[j] - mean[j];
                mean[j] += delta * nb as f64 / total;
                m2[j] += m2b[j] + delta * delta * (n as f64) * (nb as f64) / total;
            }
            n += nb;
        }
        let var = m2.iter().map(|s| s / n.max(1) as f64).collect();
        Self { n, mean, var }
    }
}

/// Centres (and optionally scales) features: `(x - mean) / scale`.
///
/// K-means always centres its working copy — like scikit-learn — because the
/// fast distance expansion `‖x‖² − 2x·c + ‖c‖²` loses precision far from the
/// origin. With `standardize`, `scale` is the standard deviation (1 for
/// constant columns); otherwise it is 1 and distances stay in original units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub standardize: bool,
}

impl Scaler {
    pub fn fit(x: ArrayView2<f32>, standardize: bool) -> Self {
        let stats = ColumnStats::of(x);
        let scale = stats
            .var
            .iter()
            .map(|&v| {
                let s = v.sqrt() as f32;
                if standardize && s > 0.0 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Self {
            mean: stats.mean.iter().map(|&m| m as f32).collect(),
            scale,
            standardize,
        }
    }

    /// Returns a row-major (standard layout) copy, whatever `x`'s layout:
    /// the kernels read rows as contiguous slices.
    pub fn transform(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = x.as_standard_layout().into_owned();
        let mean = Array1::from(self.mean.clone());
        let scale = Array1::from(self.scale.clone());
        Zip::from(out.rows_mut()).par_for_each(|mut row| {
            Zip::from(&mut row)
                .and(&mean)
                .and(&scale)
                .for_each(|v, &m, &s| *v = (*v - m) / s);
        });
        out
    }

    pub fn inverse_transform(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = x.as_standard_layout().into_owned();
        for mut row in out.rows_mut() {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = *v * s + m;
            }
        }
        out
    }
}
