//! Cluster-quality metrics, as scikit-learn defines them (Euclidean distances,
//! in the space the model clusters in).

use crate::backend::{BackendError, Cancel};
use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

/// Quality of a labelling of `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Σ ‖x − mean of its cluster‖².
    pub inertia: f64,
    /// Mean silhouette over a sample of rows; in [−1, 1], higher is better.
    pub silhouette: f64,
    pub silhouette_sample_size: usize,
    /// Lower is better; 0 is best.
    pub davies_bouldin: f64,
    /// Between- over within-cluster dispersion; higher is better.
    pub calinski_harabasz: f64,
}

fn dist(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &c)| (x as f64 - c).powi(2))
        .sum::<f64>()
}

fn row(x: &ArrayView2<f32>, i: usize) -> Vec<f32> {
    x.row(i).to_vec()
}

/// Evaluates labels `0..k` of the rows of `x`. The silhouette uses at most
/// `sample_size` rows drawn with `seed` (all rows when `n ≤ sample_size`):
/// it costs `O(s² d)`.
pub fn evaluate(
    x: ArrayView2<f32>,
    labels: &[u32],
    k: usize,
    sample_size: usize,
    seed: u64,
) -> Evaluation {
    evaluate_with(x, labels, k, sample_size, seed, &Cancel::default())
        .expect("only cancellation can stop an evaluation")
}

/// [`evaluate`], stopping with [`BackendError::Cancelled`] soon after
/// `cancel` is set (its `O(s²d)` silhouette and `O(k²d)` Davies–Bouldin
/// loops check it per row and per cluster).
pub fn evaluate_with(
    x: ArrayView2<f32>,
    labels: &[u32],
    k: usize,
    sample_size: usize,
    seed: u64,
    cancel: &Cancel,
) -> Result<Evaluation, BackendError> {
    let (n, d) = x.dim();
    let mut means = Array2::<f64>::zeros((k, d));
    let mut counts = vec![0usize; k];
    for (i, &l) in labels.iter().enumerate() {
        counts[l as usize] += 1;
        for (m, &v) in means.row_mut(l as usize).iter_mut().zip(x.row(i)) {
            *m += v as f64;
        }
    }
    for (c, mut m) in means.rows_mut().into_iter().enumerate() {
        m.mapv_inplace(|v| v / counts[c].max(1) as f64);
    }
    let within: Vec<f64> = (0..n)
        .map(|i| {
            dist(
                &row(&x, i),
                means
                    .row(labels[i] as usize)
                    .as_slice()
                    .expect("contiguous"),
            )
        })
        .collect();
    let inertia: f64 = within.iter().sum();

    let overall: Vec<f64> = (0..d)
        .map(|j| x.column(j).iter().map(|&v| v as f64).sum::<f64>() / n as f64)
        .collect();
    let between: f64 = (0..k)
        .map(|c| {
            counts[c] as f64
                * means
                    .row(c)
                    .iter()
                    .zip(&overall)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
        })
        .sum();
    let occupied = counts.iter().filter(|&&c| c > 0).count();
    let calinski_harabasz = if occupied > 1 && n > occupied && inertia > 0.0 {
        (between / (occupied - 1) as f64) / (inertia / (n - occupied) as f64)
    } else {
        0.0
    };

    // Davies–Bouldin: mean over clusters of the worst (sᵢ + sⱼ) / ‖cᵢ − cⱼ‖.
    let mut spread = vec![0.0f64; k];
    for i in 0..n {
        spread[labels[i] as usize] += within[i].sqrt();
    }
    for c in 0..k {
        spread[c] /= counts[c].max(1) as f64;
    }
    let live: Vec<usize> = (0..k).filter(|&c| counts[c] > 0).collect();
    let davies_bouldin = if live.len() > 1 {
        live.iter()
            .map(|&a| {
                if cancel.is_set() {
                    return 0.0;
                }
                live.iter()
                    .filter(|&&b| b != a)
                    .map(|&b| {
                        let gap = means
                            .row(a)
                            .iter()
                            .zip(means.row(b))
                            .map(|(p, q)| (p - q).powi(2))
                            .sum::<f64>()
                            .sqrt();
                        if gap > 0.0 {
                            (spread[a] + spread[b]) / gap
                        } else {
                            f64::INFINITY
                        }
                    })
                    .fold(0.0, f64::max)
            })
            .sum::<f64>()
            / live.len() as f64
    } else {
        0.0
    };

    cancel.check()?;
    let (silhouette, silhouette_sample_size) = silhouette(x, labels, k, sample_size, seed, cancel);
    cancel.check()?;
    Ok(Evaluation {
        inertia,
        silhouette,
        silhouette_sample_size,
        davies_bouldin,
        calinski_harabasz,
    })
}

/// Mean silhouette on a sample; rows alone in their (sampled) cluster score 0.
fn silhouette(
    x: ArrayView2<f32>,
    labels: &[u32],
    k: usize,
    sample_size: usize,
    seed: u64,
    cancel: &Cancel,
) -> (f64, usize) {
    let n = x.nrows();
    let picks: Vec<usize> = if n <= sample_size {
        (0..n).collect()
    } else {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut p = rand::seq::index::sample(&mut rng, n, sample_size).into_vec();
        p.sort_unstable();
        p
    };
    let s = picks.len();
    let mut sizes = vec![0usize; k];
    for &i in &picks {
        sizes[labels[i] as usize] += 1;
    }
    if sizes.iter().filter(|&&c| c > 0).count() < 2 {
        return (0.0, s);
    }
    let total: f64 = picks
        .par_iter()
        .map(|&i| {
            if cancel.is_set() {
                return 0.0;
            }
            let xi = x.row(i);
            let mut sums = vec![0.0f64; k];
            for &j in &picks {
                let dij = xi
                    .iter()
                    .zip(x.row(j))
                    .map(|(&a, &b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                sums[labels[j] as usize] += dij;
            }
            let own = labels[i] as usize;
            if sizes[own] <= 1 {
                return 0.0;
            }
            let a = sums[own] / (sizes[own] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != own && sizes[c] > 0)
                .map(|c| sums[c] / sizes[c] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 {
                (b - a) / m
            } else {
                0.0
            }
        })
        .sum();
    (total / s as f64, s)
}

/// Adjusted Rand index of two labellings of the same rows: 1 for the same
/// partition (whatever the label numbers), about 0 for unrelated ones.
pub fn adjusted_rand_index(a: &[u32], b: &[u32]) -> f64 {
    let size = |l: &[u32]| l.iter().max().map_or(0, |&m| m as usize + 1);
    let (ka, kb) = (size(a), size(b));
    let mut table = vec![0u64; ka * kb];
    for (&x, &y) in a.iter().zip(b) {
        table[x as usize * kb + y as usize] += 1;
    }
    let pairs = |v: u64| (v * v.saturating_sub(1)) as f64 / 2.0;
    let both: f64 = table.iter().map(|&v| pairs(v)).sum();
    let rows: f64 = table.chunks(kb.max(1)).map(|r| pairs(r.iter().sum())).sum();
    let cols: f64 = (0..kb)
        .map(|j| pairs((0..ka).map(|i| table[i * kb + j]).sum()))
        .sum();
    let expected = rows * cols / pairs(a.len() as u64).max(1.0);
    let max = (rows + cols) / 2.0;
    if max == expected {
        return 1.0;
    }
    (both - expected) / (max - expected)
}
