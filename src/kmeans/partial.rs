//! One partition's share of a distributed k-means, over any backend.
//!
//! A driver that holds the centroids sends them to every partition; each
//! answers with values that add up across partitions ([`ClusterSums`],
//! costs, candidate weights), so the driver's reduction is a sum and the
//! result does not depend on how the rows were split. Sampling is seeded
//! per row, so a retried task samples the same rows.

use ndarray::{Array2, ArrayView1, ArrayView2};

use super::init::unit_hash;
use crate::backend::{Assignment, Backend, BackendError, ClusterSums};
use crate::error::ParamsError;

/// One Lloyd step's sums over `x`: per cluster Σw·x and Σw of the rows
/// nearest to its centroid, and Σw·d².
pub fn partial_step(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    weights: Option<ArrayView1<f32>>,
    centroids: ArrayView2<f32>,
) -> Result<ClusterSums, BackendError> {
    backend.upload(x, weights)?.lloyd_step(centroids)
}

/// A Lloyd step over rows that arrive in chunks and are never resident
/// together (batches of a stream, a partition read piece by piece): each
/// chunk is uploaded, stepped and dropped, and the sums are added in f64.
/// The total is the step over all the rows, up to the order of additions.
///
/// ```
/// use ndarray::array;
/// use segmenta::backend::cpu::CpuBackend;
/// use segmenta::kmeans::partial::StreamedStep;
///
/// let (backend, centroids) = (CpuBackend::new(), array![[0.0f32], [10.0]]);
/// let mut step = StreamedStep::new(&backend, centroids.view());
/// step.push(array![[1.0f32], [9.0]].view(), None)?;
/// step.push(array![[11.0f32]].view(), None)?;
/// let sums = step.finish();
/// assert_eq!(sums.weights, vec![1.0, 2.0]);
/// assert_eq!(sums.sums[[1, 0]], 20.0);
/// # Ok::<(), segmenta::Error>(())
/// ```
pub struct StreamedStep<'b> {
    backend: &'b dyn Backend,
    centroids: Array2<f32>,
    total: ClusterSums,
    rows: usize,
}

impl<'b> StreamedStep<'b> {
    pub fn new(backend: &'b dyn Backend, centroids: ArrayView2<f32>) -> Self {
        let (k, d) = centroids.dim();
        Self {
            backend,
            centroids: centroids.to_owned(),
            total: ClusterSums::zeros(k, d),
            rows: 0,
        }
    }

    /// Adds the step over `x` (and its weights) to the total.
    pub fn push(
        &mut self,
        x: ArrayView2<f32>,
        weights: Option<ArrayView1<f32>>,
    ) -> Result<(), crate::Error> {
        let d = self.centroids.ncols();
        if x.ncols() != d {
            return Err(ParamsError::WidthMismatch {
                expected: d,
                got: x.ncols(),
            }
            .into());
        }
        if let Some(w) = weights.filter(|w| w.len() != x.nrows()) {
            return Err(ParamsError::WeightsLength {
                expected: x.nrows(),
                got: w.len(),
            }
            .into());
        }
        if x.nrows() == 0 {
            return Ok(());
        }
        let sums = partial_step(self.backend, x, weights, self.centroids.view())?;
        self.total += &sums;
        self.rows += x.nrows();
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(self) -> ClusterSums {
        self.total
    }
}

fn nearest(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    centres: ArrayView2<f32>,
) -> Result<Assignment, BackendError> {
    backend.upload(x, None)?.assign(centres)
}

fn weight(weights: Option<ArrayView1<f32>>, i: usize) -> f64 {
    weights.map_or(1.0, |w| w[i] as f64)
}

/// Σ w·d² of every row to its nearest centre, reduced in f64.
pub fn cost(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    weights: Option<ArrayView1<f32>>,
    centres: ArrayView2<f32>,
) -> Result<f64, BackendError> {
    let a = nearest(backend, x, centres)?;
    Ok(a.distances
        .iter()
        .enumerate()
        .map(|(i, &d)| weight(weights, i) * d.max(0.0) as f64)
        .sum())
}

/// k-means||'s sampling step: the rows kept, each independently with
/// probability `min(1, oversampling · w · d² / total_cost)`. The same seed
/// and rows give the same sample, whatever the threads or the backend's
/// rounding far below the probability.
pub fn sample_by_cost(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    weights: Option<ArrayView1<f32>>,
    centres: ArrayView2<f32>,
    oversampling: f64,
    total_cost: f64,
    seed: u64,
) -> Result<Vec<usize>, BackendError> {
    let a = nearest(backend, x, centres)?;
    Ok(a.distances
        .iter()
        .enumerate()
        .filter(|&(i, &d)| {
            let p = oversampling * weight(weights, i) * d.max(0.0) as f64 / total_cost;
            unit_hash(seed, 0, i as u64) < p
        })
        .map(|(i, _)| i)
        .collect())
}

/// Per candidate, the weight of the rows nearest to it (ties to the lower index).
pub fn candidate_weights(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    weights: Option<ArrayView1<f32>>,
    candidates: ArrayView2<f32>,
) -> Result<Vec<f64>, BackendError> {
    let a = nearest(backend, x, candidates)?;
    let mut out = vec![0.0; candidates.nrows()];
    for (i, &label) in a.labels.iter().enumerate() {
        out[label as usize] += weight(weights, i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use ndarray::{array, Array1, Array2, Axis};

    fn data() -> (Array2<f32>, Array1<f32>) {
        let x = Array2::from_shape_fn((300, 3), |(i, j)| {
            ((i * 7 + j * 13) % 17) as f32 + 10.0 * (i % 3) as f32
        });
        let w = Array1::from_shape_fn(300, |i| 0.5 + (i % 4) as f32);
        (x, w)
    }

    /// The partitions' shares add up to the whole: the reduction a driver does.
    #[test]
    fn shares_of_any_split_add_up_to_the_whole() {
        let cpu = CpuBackend::new();
        let (x, w) = data();
        let c = array![[0.0f32, 0.0, 0.0], [10.0, 10.0, 10.0], [20.0, 20.0, 20.0]];
        let whole = partial_step(&cpu, x.view(), Some(w.view()), c.view()).unwrap();
        let whole_cost = cost(&cpu, x.view(), Some(w.view()), c.view()).unwrap();
        let whole_weights = candidate_weights(&cpu, x.view(), Some(w.view()), c.view()).unwrap();
        let mut sums = ClusterSums::zeros(3, 3);
        let (mut total_cost, mut cand) = (0.0, vec![0.0; 3]);
        for (lo, hi) in [(0, 1), (1, 120), (120, 300)] {
            let (xp, wp) = (
                x.slice(ndarray::s![lo..hi, ..]),
                w.slice(ndarray::s![lo..hi]),
            );
            sums.merge(&partial_step(&cpu, xp, Some(wp), c.view()).unwrap())
                .unwrap();
            total_cost += cost(&cpu, xp, Some(wp), c.view()).unwrap();
            for (t, v) in cand
                .iter_mut()
                .zip(candidate_weights(&cpu, xp, Some(wp), c.view()).unwrap())
            {
                *t += v;
            }
        }
        assert!((sums.inertia - whole.inertia).abs() <= 1e-9 * whole.inertia);
        assert!((total_cost - whole_cost).abs() <= 1e-9 * whole_cost);
        assert!((total_cost - whole.inertia).abs() <= 1e-6 * whole_cost);
        for c in 0..3 {
            assert!((sums.weights[c] - whole.weights[c]).abs() < 1e-9);
            assert!((cand[c] - whole_weights[c]).abs() < 1e-9);
            assert!((cand[c] - whole.weights[c]).abs() < 1e-9);
        }
        for (a, b) in sums.sums.iter().zip(whole.sums.iter()) {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(
            whole.weights.iter().sum::<f64>(),
            w.iter().map(|&v| v as f64).sum::<f64>()
        );
    }

    #[test]
    fn sampling_is_seeded_and_proportional_to_cost() {
        let cpu = CpuBackend::new();
        let (x, _) = data();
        let c = x.select(Axis(0), &[0]);
        let total = cost(&cpu, x.view(), None, c.view()).unwrap();
        let a = sample_by_cost(&cpu, x.view(), None, c.view(), 20.0, total, 7).unwrap();
        let b = sample_by_cost(&cpu, x.view(), None, c.view(), 20.0, total, 7).unwrap();
        let other = sample_by_cost(&cpu, x.view(), None, c.view(), 20.0, total, 8).unwrap();
        assert_eq!(a, b, "same seed, same sample");
        assert_ne!(a, other, "another seed, another sample");
        assert!(
            (5..=40).contains(&a.len()),
            "about l = 20 rows: {}",
            a.len()
        );
        assert!(!a.contains(&0), "a row at distance 0 is never sampled");
        // Everything is kept when l · d² ≥ total for every row.
        let all = sample_by_cost(&cpu, x.view(), None, c.view(), 1e9, total, 1).unwrap();
        assert_eq!(
            all.len(),
            (0..300).filter(|&i| x.row(i) != x.row(0)).count()
        );
    }
}
