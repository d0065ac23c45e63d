//! Native multi-threaded CPU kernels: the production fallback.
//!
//! Work is split into fixed-size blocks of rows processed in parallel by
//! rayon; per-block f64 partials are then added in block order, so a fit gives
//! the same bits on every run whatever the thread scheduling.

mod bounds;
mod gram;
mod kernel;
mod simd;

pub use kernel::squared_distance;

use ndarray::{s, Array2, ArrayView1, ArrayView2, Axis, CowArray, Ix2};
use rayon::prelude::*;

use super::{
    Assignment, Backend, BackendError, BackendInfo, BackendKind, Cancel, ClusterSums, ColumnSums,
    Resident,
};
use bounds::{Bounds, Rows};
use kernel::{assign_block, BlockOut, PackedCentroids, Partial};

/// The CPU backend. Uses rayon's global pool.
///
/// Lloyd steps are pruned with Hamerly's bounds (see [`bounds`]): the same
/// assignment as an exhaustive step, up to ties within f32 rounding, with
/// most distance computations skipped once centroids settle.
/// [`CpuBackend::exhaustive`] scores every row against every centroid on
/// every step, as the GPU does (benchmarks use it to measure the kernels).
#[derive(Debug, Clone)]
pub struct CpuBackend {
    prune: bool,
    cancel: Cancel,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self {
            prune: true,
            cancel: Cancel::default(),
        }
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose Lloyd steps score every row against every centroid.
    pub fn exhaustive() -> Self {
        Self {
            prune: false,
            ..Self::default()
        }
    }

    /// Kernels on this backend's residents stop between blocks of rows once
    /// `flag` is set, and return [`BackendError::Cancelled`].
    pub fn cancel_on(self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.with_cancel(Cancel::new(flag))
    }

    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BackendKind::Cpu,
            adapter: format!("cpu ({} threads)", rayon::current_num_threads()),
        }
    }

    /// f32 and f64 arithmetic on the host: `v − pivot` is NaN or infinite
    /// for a NaN or infinite `v`, and so is any f64 sum it enters.
    fn propagates_non_finite(&self) -> bool {
        true
    }

    fn upload<'a>(
        &'a self,
        x: ArrayView2<'a, f32>,
        weights: Option<ArrayView1<'a, f32>>,
    ) -> Result<Box<dyn Resident + 'a>, BackendError> {
        Ok(Box::new(self.upload_cpu(x, weights)))
    }
}

impl CpuBackend {
    /// [`Backend::upload`] as the concrete CPU resident, whose
    /// [`CpuResident::labels`] show what a pruned step decided.
    pub fn upload_cpu<'a>(
        &'a self,
        x: ArrayView2<'a, f32>,
        weights: Option<ArrayView1<'a, f32>>,
    ) -> CpuResident<'a> {
        let n = x.nrows();
        CpuResident {
            x: if x.is_standard_layout() {
                CowArray::from(x)
            } else {
                CowArray::from(x.as_standard_layout().into_owned())
            },
            weights: weights.map(|w| w.to_vec()),
            // Zeroed, so that a fit that never assigns (PCA) never touches
            // these pages; `second` is only read once a step has written it.
            labels: vec![0; n],
            distances: vec![0.0; n],
            second: vec![0.0; n],
            prune: self.prune,
            bounds: None,
            cancel: self.cancel.clone(),
        }
    }
}

/// Rows per parallel block: at least 4096, and at most 256 blocks so that the
/// per-block `k × d` partials stay small. Depends only on `n`: deterministic.
fn block_rows(n: usize) -> usize {
    n.div_ceil(256).max(4096)
}

/// Rows resident on the CPU (borrowed when already row-major).
pub struct CpuResident<'a> {
    x: CowArray<'a, f32, Ix2>,
    weights: Option<Vec<f32>>,
    labels: Vec<u32>,
    distances: Vec<f32>,
    second: Vec<f32>,
    prune: bool,
    /// A cache carried between pruned Lloyd steps (their results do not
    /// depend on it); dropped by [`Resident::assign`], which reuses the
    /// label and distance buffers.
    bounds: Option<Bounds>,
    cancel: Cancel,
}

impl CpuResident<'_> {
    /// The labels of the last kernel (a step or an assignment): for tests
    /// and diagnostics of the pruned steps. The [`Resident`] protocol
    /// itself returns everything a caller needs from each call.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Runs the kernel over every block; returns the per-block partials in
    /// block order when `accumulate` is set.
    fn run(&mut self, centroids: ArrayView2<f32>, accumulate: bool, second: bool) -> Vec<Partial> {
        let (n, d, k) = (self.x.nrows(), self.x.ncols(), centroids.nrows());
        let centroids = centroids.as_standard_layout();
        let pc = PackedCentroids::new(centroids.view());
        let rows = block_rows(n);
        let x = self.x.as_slice().expect("standard layout");
        let weights = self.weights.as_deref();
        let cancel = &self.cancel;
        let second_chunks: Vec<Option<&mut [f32]>> = if second {
            self.second.chunks_mut(rows).map(Some).collect()
        } else {
            (0..n.div_ceil(rows)).map(|_| None).collect()
        };
        self.labels
            .par_chunks_mut(rows)
            .zip(self.distances.par_chunks_mut(rows))
            .zip(second_chunks)
            .enumerate()
            .map(|(b, ((labels, distances), second))| {
                let start = b * rows;
                let m = labels.len();
                let mut partial = accumulate.then(|| Partial::zeros(k, d));
                if cancel.is_set() {
                    return partial;
                }
                assign_block(
                    &x[start * d..(start + m) * d],
                    weights.map(|w| &w[start..start + m]),
                    &pc,
                    BlockOut {
                        labels,
                        distances,
                        second,
                        partial: partial.as_mut(),
                    },
                );
                partial
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flatten()
            .collect()
    }

    /// [`run`](Self::run) with the sums, its blocks added in order.
    fn run_summed(&mut self, centroids: ArrayView2<f32>, second: bool) -> Partial {
        let (k, d) = centroids.dim();
        let mut total = Partial::zeros(k, d);
        for part in self.run(centroids, true, second) {
            total.add(&part);
        }
        total
    }

    fn rows(&mut self) -> Rows<'_> {
        Rows {
            x: self.x.as_slice().expect("standard layout"),
            d: self.x.ncols(),
            weights: self.weights.as_deref(),
            labels: &mut self.labels,
            block: block_rows(self.x.nrows()),
        }
    }

    /// An exhaustive step that also records second distances, and the
    /// bounds built from it.
    fn first_pruned_step(&mut self, centroids: ArrayView2<f32>) -> Partial {
        let total = self.run_summed(centroids, true);
        let centroids = centroids.as_standard_layout();
        self.bounds = Some(Bounds::new(
            centroids.as_slice().expect("standard layout"),
            &total,
            &self.distances,
            &self.second,
        ));
        total
    }

    fn pruned_step(&mut self, mut bounds: Bounds, centroids: ArrayView2<f32>) -> Partial {
        let centroids = centroids.as_standard_layout();
        let pc = PackedCentroids::new(centroids.view());
        let cancel = self.cancel.clone();
        let total = bounds.step(&mut self.rows(), &pc, &cancel);
        self.bounds = Some(bounds);
        total
    }
}

impl Resident for CpuResident<'_> {
    fn n_rows(&self) -> usize {
        self.x.nrows()
    }

    fn n_cols(&self) -> usize {
        self.x.ncols()
    }

    fn assign(&mut self, centroids: ArrayView2<f32>) -> Result<Assignment, BackendError> {
        // The buffers are overwritten: the pruning cache is no longer valid.
        self.bounds = None;
        self.run(centroids, false, true);
        self.cancel.check()?;
        Ok(Assignment {
            labels: self.labels.clone(),
            distances: self.distances.clone(),
            second_distances: self.second.clone(),
        })
    }

    /// Fused: the rows are summed while still in cache from the distance pass.
    /// Pruned (see [`bounds`]) unless the backend is exhaustive.
    fn lloyd_step(&mut self, centroids: ArrayView2<f32>) -> Result<ClusterSums, BackendError> {
        let (k, d) = centroids.dim();
        if self.prune {
            let total = match self.bounds.take() {
                Some(b) if b.fits(k) => self.pruned_step(b, centroids),
                _ => self.first_pruned_step(centroids),
            };
            if self.cancel.is_set() {
                // Bounds half-updated: never reused, the fit is over.
                self.bounds = None;
                return Err(BackendError::Cancelled);
            }
            return Ok(into_sums(total, k, d));
        }
        let total = self.run_summed(centroids, false);
        self.cancel.check()?;
        Ok(into_sums(total, k, d))
    }

    fn column_sums(&mut self) -> Result<ColumnSums, BackendError> {
        let d = self.x.ncols();
        let pivot: Vec<f32> = self.x.row(0).to_vec();
        let parts: Vec<(Vec<f64>, Vec<f64>)> = self
            .x
            .axis_chunks_iter(Axis(0), block_rows(self.x.nrows()))
            .into_par_iter()
            .map(|block| {
                let (mut s, mut q) = (vec![0.0; d], vec![0.0; d]);
                for row in block.rows() {
                    for j in 0..d {
                        let v = (row[j] - pivot[j]) as f64;
                        s[j] += v;
                        q[j] += v * v;
                    }
                }
                (s, q)
            })
            .collect();
        let (mut sum, mut sum_sq) = (vec![0.0; d], vec![0.0; d]);
        for (s, q) in parts {
            (0..d).for_each(|j| {
                sum[j] += s[j];
                sum_sq[j] += q[j];
            });
        }
        Ok(ColumnSums {
            n: self.x.nrows(),
            pivot,
            sum,
            sum_sq,
        })
    }

    /// One pass, upper triangle only (see [`gram`]).
    fn centred_gram(&mut self) -> Result<(ColumnSums, Array2<f64>), BackendError> {
        let (n, d) = self.x.dim();
        let out = gram::centred_gram(
            self.x.as_slice().expect("standard layout"),
            n,
            d,
            &self.cancel,
        );
        self.cancel.check()?;
        Ok(out)
    }

    fn gram(&mut self, mean: &[f32]) -> Result<Array2<f64>, BackendError> {
        let (n, d) = self.x.dim();
        let x = self.x.as_slice().expect("standard layout");
        let gram = gram::gram_about(x, n, d, mean, &self.cancel).1;
        self.cancel.check()?;
        Ok(gram)
    }

    fn project(
        &mut self,
        mean: &[f32],
        components: ArrayView2<f32>,
    ) -> Result<Array2<f32>, BackendError> {
        let n = self.x.nrows();
        let mean = ArrayView1::from(mean);
        let mut out = Array2::<f32>::zeros((n, components.nrows()));
        out.axis_chunks_iter_mut(Axis(0), 4096)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut out_block)| {
                let start = b * 4096;
                let block = self.x.slice(s![start..start + out_block.nrows(), ..]);
                out_block.assign(&(&block - &mean).dot(&components.t()));
            });
        Ok(out)
    }
}

fn into_sums(total: Partial, k: usize, d: usize) -> ClusterSums {
    ClusterSums {
        sums: Array2::from_shape_vec((k, d), total.sums).expect("k × d partials"),
        weights: total.weights,
        inertia: total.inertia,
    }
}
