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

/// Optionally takes `ln(1 + x)` of chosen columns, then centres (and
/// optionally scales) features: `(f(x) - mean) / scale`.
///
/// K-means always centres its working copy — like scikit-learn — because the
/// fast distance expansion `‖x‖² − 2x·c + ‖c‖²` loses precision far from the
/// origin. It centres on `centre`, the median of a sample of rows, not on the
/// mean: one wild value (an amount of 10¹² among tens) drags the mean so far
/// from the other rows that, subtracted in f32, it wipes out their
/// differences; the median stays among them. Distances do not depend on the
/// centre, only their precision does. With `standardize`, `scale` is the standard deviation (1 for
/// constant columns); otherwise it is 1 and distances stay in original units.
/// `log1p` tames right-skewed features such as spend, whose long tail would
/// otherwise own a cluster of its own; it is stored so that new rows get the
/// same treatment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f32>,
    /// What the working copy is centred on; absent in models written before
    /// it existed, which were centred on `mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<Vec<f32>>,
    pub scale: Vec<f32>,
    pub standardize: bool,
    /// Per column: take `ln(1 + x)` first. Empty means no column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log1p: Vec<bool>,
}

impl Scaler {
    pub fn fit(x: ArrayView2<f32>, standardize: bool) -> Self {
        Self::fit_log1p(x, standardize, Vec::new())
    }

    /// [`fit`](Self::fit) after `ln(1 + x)` on the columns flagged in
    /// `log1p` (empty: none). Call [`check_domain`](Self::check_domain) first.
    pub fn fit_log1p(x: ArrayView2<f32>, standardize: bool, log1p: Vec<bool>) -> Self {
        let logged;
        let x = if log1p.iter().any(|&l| l) {
            logged = apply_log1p(x, &log1p);
            logged.view()
        } else {
            x
        };
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
            centre: Some(sample_median(x)),
            scale,
            standardize,
            log1p,
        }
    }

    /// The scaler that leaves rows as they are.
    pub fn identity(d: usize) -> Self {
        Self {
            mean: vec![0.0; d],
            centre: None,
            scale: vec![1.0; d],
            standardize: false,
            log1p: Vec::new(),
        }
    }

    /// Whether `other` scales rows as this one does. The centre is left out:
    /// distances do not depend on it, and models written before it was kept
    /// have none.
    pub fn scales_alike(&self, other: &Scaler) -> bool {
        self.mean == other.mean
            && self.scale == other.scale
            && self.standardize == other.standardize
            && self.log1p == other.log1p
    }

    /// What each column is centred on (see [`Scaler`]).
    pub fn centre(&self) -> &[f32] {
        self.centre.as_deref().unwrap_or(&self.mean)
    }

    /// The first value that `ln(1 + x)` cannot take (≤ −1), as 0-based
    /// (row, column, value).
    pub fn check_domain(x: ArrayView2<f32>, log1p: &[bool]) -> Option<(usize, usize, f32)> {
        x.indexed_iter()
            .find(|&((_, j), &v)| log1p.get(j).copied().unwrap_or(false) && v <= -1.0)
            .map(|((i, j), &v)| (i, j, v))
    }

    fn logs(&self, j: usize) -> bool {
        self.log1p.get(j).copied().unwrap_or(false)
    }

    /// Returns a row-major (standard layout) copy, whatever `x`'s layout:
    /// the kernels read rows as contiguous slices. It is what a fit reads,
    /// so a large one is in huge pages ([`super::pages`]).
    pub fn transform(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.transform_owned(super::pages::standard_copy(x))
    }

    /// [`transform`](Self::transform) in `x`'s own buffer when it is
    /// row-major (else into a copy): the same values, without a second
    /// copy of the data.
    pub fn transform_owned(&self, x: Array2<f32>) -> Array2<f32> {
        let mut out = if x.is_standard_layout() {
            x
        } else {
            super::pages::standard_copy(x.view())
        };
        let centre = Array1::from(self.centre().to_vec());
        let scale = Array1::from(self.scale.clone());
        let log = Array1::from_shape_fn(self.mean.len(), |j| self.logs(j));
        Zip::from(out.rows_mut()).par_for_each(|mut row| {
            Zip::from(&mut row)
                .and(&centre)
                .and(&scale)
                .and(&log)
                .for_each(|v, &m, &s, &l| {
                    let x = if l { v.ln_1p() } else { *v };
                    *v = (x - m) / s
                });
        });
        out
    }

    pub fn inverse_transform(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = x.as_standard_layout().into_owned();
        for mut row in out.rows_mut() {
            for (j, ((v, &m), &s)) in row
                .iter_mut()
                .zip(self.centre())
                .zip(&self.scale)
                .enumerate()
            {
                let x = *v * s + m;
                *v = if self.logs(j) { x.exp_m1() } else { x };
            }
        }
        out
    }
}

/// Rows the centre is the median of: enough to land among the bulk of any
/// column, few enough to cost nothing beside a fit.
const CENTRE_SAMPLE: usize = 4096;

/// Per column, the median of up to [`CENTRE_SAMPLE`] evenly spaced rows
/// (every row of a smaller table): the same on every run.
fn sample_median(x: ArrayView2<f32>) -> Vec<f32> {
    let (n, d) = x.dim();
    let m = n.min(CENTRE_SAMPLE);
    (0..d)
        .map(|j| {
            let mut column: Vec<f32> = (0..m).map(|i| x[(i * n / m.max(1), j)]).collect();
            if column.is_empty() {
                return 0.0;
            }
            let mid = column.len() / 2;
            *column.select_nth_unstable_by(mid, f32::total_cmp).1
        })
        .collect()
}

fn apply_log1p(x: ArrayView2<f32>, log1p: &[bool]) -> Array2<f32> {
    let mut out = x.as_standard_layout().into_owned();
    for mut row in out.rows_mut() {
        for (v, &l) in row.iter_mut().zip(log1p) {
            if l {
                *v = v.ln_1p();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn a_wild_value_moves_the_mean_but_not_the_centre() {
        let x = array![[1.0f32], [2.0], [3.0], [4.0], [1e12]];
        let s = Scaler::fit(x.view(), false);
        assert!(s.mean[0] > 1e11);
        assert_eq!(s.centre(), &[3.0]);
        // Ordinary rows keep their differences in the working copy.
        let w = s.transform(x.view());
        assert_eq!(w.column(0).to_vec()[..4], [-2.0, -1.0, 0.0, 1.0]);
        assert_eq!(s.inverse_transform(w.view()), x);
    }

    #[test]
    fn a_model_written_before_the_centre_is_centred_on_its_mean() {
        let old: Scaler =
            serde_json::from_str(r#"{"mean":[5.0,1.0],"scale":[2.0,1.0],"standardize":true}"#)
                .unwrap();
        assert_eq!(old.centre(), &[5.0, 1.0]);
        let w = old.transform(array![[7.0f32, 1.0]].view());
        assert_eq!(w, array![[1.0f32, 0.0]]);
    }
}
