//! Native multi-threaded CPU kernels: the production fallback.
//!
//! Work is split into fixed-size blocks of rows processed in parallel by
//! rayon; per-block f64 partials are then added in block order, so a fit gives
//! the same bits on every run whatever the thread scheduling.

mod bounded;
mod gram;
mod kernel;
mod peak;
mod seed;
mod simd;

pub use kernel::squared_distance;
pub use peak::fma_peak_gflops;
pub use simd::{level as simd_level, Level as SimdLevel};

use ndarray::{s, Array2, ArrayView1, ArrayView2, Axis, CowArray, Ix2};
use rayon::prelude::*;

use std::ops::Range;

use super::{
    check_rows, check_seed_trials, check_seed_width, Assignment, Backend, BackendError,
    BackendInfo, BackendKind, BoundShifts, Cancel, ClusterSums, ColumnSums, Potential, Resident,
    RowBounds,
};
use kernel::{assign_block, BlockOut, PackedCentroids, Partial};

/// The CPU backend. Uses rayon's global pool.
///
/// It has the bounded kernel of Hamerly's pruning
/// ([`Resident::bounded_step`]), which the Lloyd loop uses by default: the
/// same assignment as an exhaustive step, up to ties within f32 rounding,
/// with most distance computations skipped once centroids settle.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    cancel: Cancel,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
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
            adapter: match rayon::current_num_threads() {
                1 => "cpu (1 thread)".to_owned(),
                n => format!("cpu ({n} threads)"),
            },
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
    /// [`Backend::upload`] as the concrete CPU resident.
    pub fn upload_cpu<'a>(
        &'a self,
        x: ArrayView2<'a, f32>,
        weights: Option<ArrayView1<'a, f32>>,
    ) -> CpuResident<'a> {
        CpuResident {
            x: if x.is_standard_layout() {
                CowArray::from(x)
            } else {
                CowArray::from(x.as_standard_layout().into_owned())
            },
            weights: weights.map(|w| w.to_vec()),
            // Allocated by the first kernel that writes them (a PCA never
            // does).
            labels: Vec::new(),
            distances: Vec::new(),
            second: Vec::new(),
            seed: seed::Seed::default(),
            cancel: self.cancel.clone(),
        }
    }
}

/// Rows per parallel block: at least 4096, and at most 256 blocks so that the
/// per-block `k × d` partials stay small. Depends only on `n`: deterministic.
fn block_rows(n: usize) -> usize {
    n.div_ceil(256).max(4096)
}

/// Rows resident on the CPU (borrowed when already row-major), and scratch
/// space for the per-row outputs of the kernels (never read across calls).
pub struct CpuResident<'a> {
    x: CowArray<'a, f32, Ix2>,
    weights: Option<Vec<f32>>,
    labels: Vec<u32>,
    distances: Vec<f32>,
    second: Vec<f32>,
    /// Seeding's per-row state, allocated by [`Resident::seed_start`].
    seed: seed::Seed,
    cancel: Cancel,
}

/// The rows as the seeding kernels take them: a function of the fields, not
/// of the resident, so that the seeding state can be borrowed beside it.
fn seed_rows<'a>(x: &'a CowArray<f32, Ix2>, weights: Option<&'a [f32]>) -> seed::Rows<'a> {
    seed::Rows {
        x: x.as_slice().expect("standard layout"),
        d: x.ncols(),
        weights,
    }
}

impl CpuResident<'_> {
    fn seed_rows(&self) -> seed::Rows<'_> {
        seed_rows(&self.x, self.weights.as_deref())
    }

    /// Checks that seeding has started and `centres` has the rows' width.
    fn seed_check(&self, centres: &ArrayView2<f32>) -> Result<(), BackendError> {
        if self.seed.closest.len() != self.x.nrows() {
            return Err(BackendError::SeedNotStarted);
        }
        check_seed_width(self.x.ncols(), centres.ncols())
    }

    /// Runs the kernel over the blocks of `range`; returns the per-block
    /// partials in block order when `accumulate` is set. Blocks start at
    /// `range.start` and have the whole matrix's block length, so a full
    /// range splits exactly as always (the same bits on every run).
    fn run(
        &mut self,
        range: Range<usize>,
        centroids: ArrayView2<f32>,
        accumulate: bool,
        second: bool,
    ) -> Vec<Partial> {
        let (n, d, k) = (self.x.nrows(), self.x.ncols(), centroids.nrows());
        self.scratch();
        let centroids = centroids.as_standard_layout();
        let pc = PackedCentroids::new(centroids.view());
        let rows = block_rows(n);
        let x = self.x.as_slice().expect("standard layout");
        let weights = self.weights.as_deref();
        let cancel = &self.cancel;
        let first = range.start;
        let second_chunks: Vec<Option<&mut [f32]>> = if second {
            self.second[range.clone()]
                .chunks_mut(rows)
                .map(Some)
                .collect()
        } else {
            (0..range.len().div_ceil(rows)).map(|_| None).collect()
        };
        self.labels[range.clone()]
            .par_chunks_mut(rows)
            .zip(self.distances[range].par_chunks_mut(rows))
            .zip(second_chunks)
            .enumerate()
            .map(|(b, ((labels, distances), second))| {
                let start = first + b * rows;
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
    fn run_summed(
        &mut self,
        range: Range<usize>,
        centroids: ArrayView2<f32>,
        second: bool,
    ) -> ClusterSums {
        let (k, d) = centroids.dim();
        let mut total = Partial::zeros(k, d);
        for part in self.run(range, centroids, true, second) {
            total.add(&part);
        }
        into_sums(total, k, d)
    }

    /// (Re)allocates the per-row buffers that [`take_assignment`]
    /// handed out. Zeroed: pages are only touched when written.
    ///
    /// [`take_assignment`]: Self::take_assignment
    fn scratch(&mut self) {
        let n = self.x.nrows();
        if self.labels.len() != n {
            self.labels = vec![0; n];
            self.distances = vec![0.0; n];
            self.second = vec![0.0; n];
        }
    }

    /// The last kernel's per-row outputs, moved out (not copied): the next
    /// kernel that needs them allocates new ones.
    fn take_assignment(&mut self) -> Assignment {
        Assignment {
            labels: std::mem::take(&mut self.labels),
            distances: std::mem::take(&mut self.distances),
            second_distances: std::mem::take(&mut self.second),
        }
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
        self.run(0..self.x.nrows(), centroids, false, true);
        self.cancel.check()?;
        Ok(self.take_assignment())
    }

    /// Fused: the rows are summed while still in cache from the distance pass.
    fn step_rows(
        &mut self,
        rows: Range<usize>,
        centroids: ArrayView2<f32>,
    ) -> Result<ClusterSums, BackendError> {
        check_rows(&rows, self.x.nrows())?;
        let sums = self.run_summed(rows, centroids, false);
        self.cancel.check()?;
        Ok(sums)
    }

    /// One fused pass that also records second distances.
    fn step_with_assignment(
        &mut self,
        centroids: ArrayView2<f32>,
    ) -> Result<(ClusterSums, Assignment), BackendError> {
        let sums = self.run_summed(0..self.x.nrows(), centroids, true);
        self.cancel.check()?;
        Ok((sums, self.take_assignment()))
    }

    fn has_bounded_step(&self) -> bool {
        true
    }

    fn bounded_step(
        &mut self,
        centroids: ArrayView2<f32>,
        shifts: &BoundShifts,
        bounds: &mut RowBounds,
    ) -> Result<ClusterSums, BackendError> {
        let (n, k) = (self.x.nrows(), centroids.nrows());
        check_rows(&(0..bounds.len()), n)?;
        if bounds.len() != n
            || [&shifts.moved, &shifts.shrink, &shifts.half_gap]
                .iter()
                .any(|s| s.len() != k)
        {
            return Err(BackendError::RowRange {
                start: 0,
                end: bounds.len(),
                n,
            });
        }
        let centroids = centroids.as_standard_layout();
        let pc = PackedCentroids::new(centroids.view());
        let delta = bounded::step(
            bounded::Rows {
                x: self.x.as_slice().expect("standard layout"),
                weights: self.weights.as_deref(),
                block: block_rows(n),
            },
            &pc,
            shifts,
            bounds,
            &self.cancel,
        );
        self.cancel.check()?;
        Ok(into_sums(delta, k, self.x.ncols()))
    }

    fn seed_start(&mut self, centre: &[f32]) -> Result<Potential, BackendError> {
        check_seed_width(self.x.ncols(), centre.len())?;
        self.cancel.check()?;
        let rows = seed_rows(&self.x, self.weights.as_deref());
        Ok(self.seed.start(&rows, centre))
    }

    /// The exhaustive kernel's nearest distances (exact for the winner),
    /// then a minimum with `D²`.
    fn seed_lower(&mut self, centres: ArrayView2<f32>) -> Result<Potential, BackendError> {
        self.seed_check(&centres)?;
        if centres.nrows() > 0 {
            self.run(0..self.x.nrows(), centres, false, false);
            self.cancel.check()?;
            let distances = std::mem::take(&mut self.distances);
            self.seed
                .closest
                .par_iter_mut()
                .zip(&distances)
                .for_each(|(c, &d)| *c = c.min(d));
            self.distances = distances;
        }
        self.seed.lowered();
        Ok(seed::potential(&self.seed_rows(), &self.seed.closest))
    }

    fn seed_score(&mut self, candidates: ArrayView2<f32>) -> Result<Vec<f64>, BackendError> {
        self.seed_check(&candidates)?;
        check_seed_trials(candidates.nrows())?;
        self.cancel.check()?;
        let candidates = candidates.as_standard_layout();
        let rows = seed_rows(&self.x, self.weights.as_deref());
        Ok(self.seed.score(
            &rows,
            candidates.as_slice().expect("standard layout"),
            candidates.nrows(),
        ))
    }

    fn seed_keep(&mut self, j: usize) -> Result<Potential, BackendError> {
        if j >= self.seed.trials() || self.seed.closest.len() != self.x.nrows() {
            return Err(BackendError::SeedNotStarted);
        }
        let rows = seed_rows(&self.x, self.weights.as_deref());
        Ok(self.seed.keep(&rows, j))
    }

    fn seed_pick(&mut self, draws: &[(usize, f64)]) -> Result<Vec<usize>, BackendError> {
        let n = self.x.nrows();
        if self.seed.closest.len() != n {
            return Err(BackendError::SeedNotStarted);
        }
        let starts: Vec<usize> = (0..n).step_by(seed::BLOCK).collect();
        let rows = self.seed_rows();
        draws
            .iter()
            .map(|&(block, offset)| {
                if block >= starts.len() {
                    return Err(BackendError::RowRange {
                        start: block * seed::BLOCK,
                        end: block * seed::BLOCK + 1,
                        n,
                    });
                }
                Ok(seed::pick(
                    &rows,
                    &self.seed.closest,
                    &starts,
                    block,
                    offset,
                ))
            })
            .collect()
    }

    fn seed_finish(&mut self) {
        self.seed = seed::Seed::default();
    }

    fn seed_oversample(&mut self, factor: f64, salt: u32) -> Result<Vec<usize>, BackendError> {
        if self.seed.closest.len() != self.x.nrows() {
            return Err(BackendError::SeedNotStarted);
        }
        Ok(seed::oversample(
            &self.seed_rows(),
            &self.seed.closest,
            factor,
            salt,
        ))
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
