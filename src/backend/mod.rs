//! The kernel-level backend trait. K-means and PCA are written once against
//! [`Backend`] / [`Resident`]; [`cpu::CpuBackend`] and [`gpu::GpuBackend`]
//! implement the kernels.
//!
//! A fit uploads its matrix once ([`Backend::upload`]) and then calls kernels
//! on the resident copy. Every kernel takes what it needs and returns what
//! it computed; none depends on an earlier call. A Lloyd step moves only
//! `O(k·d)` values between host and device: centroids in, per-cluster sums
//! out, added up in f64 on the host ([`ClusterSums`]), so steps over row
//! ranges, chunks streamed in, devices and remote partitions all combine
//! the same way. Pruning is the Lloyd loop's strategy (`kmeans::hamerly`),
//! over the [`Resident::bounded_step`] kernel where a backend has one.

pub mod bounds;
pub mod cpu;
mod error;
pub mod gpu;
mod select;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ndarray::{Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

pub use bounds::{BoundShifts, RowBounds};
pub use error::{BackendError, GpuError};
pub use select::{may_fall_back, select, with_cpu_fallback, BackendChoice};

/// Which implementation ran a computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Gpu,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        })
    }
}

/// The backend and the device it runs on, as reported in outputs and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub backend: BackendKind,
    /// GPU adapter name, or a CPU description (`"cpu (2 threads)"`).
    pub adapter: String,
}

/// A cancellation flag that long kernels check between blocks of rows, so a
/// cancelled fit stops within a block's time rather than a whole step's
/// (a step with k = 100,000 on a million rows takes seconds). A kernel that
/// sees it set returns [`BackendError::Cancelled`] and its partial output
/// is never used.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Option<Arc<AtomicBool>>);

impl Cancel {
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        Self(Some(flag))
    }

    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn check(&self) -> Result<(), BackendError> {
        if self.is_set() {
            Err(BackendError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Per-cluster sums from one assignment, held and added in f64 on the host.
/// The CPU accumulates blocks of rows in f64. The GPU sums segments of a
/// few hundred rows in f32 on the device, adds segments into at most
/// [`gpu`]'s reduction groups with compensation (still f32), and the host
/// adds the groups in f64: the f32 error is that of one group's sum
/// (relative about 1e-6 for similar terms), whatever the number of rows.
///
/// Sums over disjoint sets of rows add up (`+=`, [`ClusterSums::merge`]):
/// chunks, partitions of a distributed fit and several devices reduce to
/// the sums of all their rows, in f64 on the host, against the same
/// centroids.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSums {
    /// `k × d`: Σ wᵢ·xᵢ over the rows assigned to each cluster.
    pub sums: Array2<f64>,
    /// Σ wᵢ per cluster (the count when unweighted).
    pub weights: Vec<f64>,
    /// Σ wᵢ·‖xᵢ − c‖² over all rows, against the centroids used to assign.
    pub inertia: f64,
}

/// Sums of different shapes cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster sums of shape {left:?} and {right:?} cannot be added")]
pub struct SumsShapeError {
    pub left: (usize, usize),
    pub right: (usize, usize),
}

impl std::ops::AddAssign<&ClusterSums> for ClusterSums {
    /// [`ClusterSums::merge`] for sums known to have the same shape.
    ///
    /// # Panics
    /// On sums of different shapes; use `merge` where shapes come from
    /// outside.
    fn add_assign(&mut self, other: &ClusterSums) {
        if let Err(e) = self.merge(other) {
            panic!("{e}");
        }
    }
}

impl std::ops::Add for ClusterSums {
    type Output = ClusterSums;

    /// See [`AddAssign`](std::ops::AddAssign): panics on different shapes.
    fn add(mut self, other: ClusterSums) -> ClusterSums {
        self += &other;
        self
    }
}

impl ClusterSums {
    /// The sums of no rows: the identity of [`Self::merge`].
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            sums: Array2::zeros((k, d)),
            weights: vec![0.0; k],
            inertia: 0.0,
        }
    }

    /// `(k, d)`.
    pub fn dim(&self) -> (usize, usize) {
        self.sums.dim()
    }

    /// Adds the sums of other rows (against the same centroids).
    pub fn merge(&mut self, other: &ClusterSums) -> Result<(), SumsShapeError> {
        if self.dim() != other.dim() || self.weights.len() != other.weights.len() {
            return Err(SumsShapeError {
                left: self.dim(),
                right: other.dim(),
            });
        }
        self.sums += &other.sums;
        for (w, o) in self.weights.iter_mut().zip(&other.weights) {
            *w += o;
        }
        self.inertia += other.inertia;
        Ok(())
    }

    /// Adds up any number of partial sums of shape `k × d`.
    pub fn total<'a>(
        k: usize,
        d: usize,
        parts: impl IntoIterator<Item = &'a ClusterSums>,
    ) -> Result<Self, SumsShapeError> {
        parts.into_iter().try_fold(Self::zeros(k, d), |mut acc, p| {
            acc.merge(p)?;
            Ok(acc)
        })
    }
}

/// Every row's nearest centroid, as every backend reports it: all three
/// fields always filled, in the same units.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub labels: Vec<u32>,
    /// Squared Euclidean distance to the assigned centroid.
    pub distances: Vec<f32>,
    /// Squared distance to the second-nearest centroid (`+∞` when k = 1).
    pub second_distances: Vec<f32>,
}

/// Column sums of `x − pivot` and `(x − pivot)²`. The pivot is a point near
/// the data (the first row, or the mean of the leading rows), which keeps
/// the subtraction exact enough in f32 for data far from the origin.
#[derive(Debug, Clone)]
pub struct ColumnSums {
    pub n: usize,
    pub pivot: Vec<f32>,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl ColumnSums {
    pub fn mean(&self) -> Vec<f64> {
        self.pivot
            .iter()
            .zip(&self.sum)
            .map(|(&p, &s)| p as f64 + s / self.n as f64)
            .collect()
    }
}

/// Every row's weighted seeding potential `w·D²` (`D²`: the squared
/// distance to the nearest centre chosen so far), summed over blocks of
/// consecutive rows: all that k-means++ and k-means|| need on the host to
/// draw rows. The per-row `D²` stays on the backend
/// ([`Resident::seed_start`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Potential {
    /// First row of each block, increasing from 0.
    pub starts: Vec<usize>,
    /// Σ w·D² of each block (f64 on the host; the device sums a block of a
    /// few hundred rows in f32).
    pub sums: Vec<f64>,
}

impl Potential {
    /// Σ w·D² over all rows, blocks added in order.
    pub fn total(&self) -> f64 {
        self.sums.iter().sum()
    }

    /// The block in which the running sum of the blocks passes `target`,
    /// and how far into that block's sum `target` lies. Where rounding
    /// leaves `target` at or past the total, the last block with a positive
    /// sum, and an offset past its end ([`Resident::seed_pick`] then gives
    /// its last row with a positive potential). `None` when every block's
    /// sum is zero.
    pub fn find(&self, target: f64) -> Option<(usize, f64)> {
        let mut before = 0.0;
        for (b, &s) in self.sums.iter().enumerate() {
            if s > 0.0 && target < before + s {
                return Some((b, target - before));
            }
            before += s;
        }
        let last = self.sums.iter().rposition(|&s| s > 0.0)?;
        Some((last, f64::INFINITY))
    }
}

/// The most trials k-means++ scores at once (`2 + ln k` stays below it for
/// any k that fits in memory).
pub const MAX_SEED_CANDIDATES: usize = 32;

/// A uniform number in [0, 1) from `(salt, i)`, the same on every backend:
/// a 32-bit integer hash (two rounds of multiply–xorshift), so WGSL, which
/// has no 64-bit integers, computes the same bits. 24 bits of it, so the
/// f32 is exact.
pub fn seed_unit(salt: u32, i: u32) -> f32 {
    let mix = |mut x: u32| {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^= x >> 16;
        x
    };
    (mix(i ^ mix(salt)) >> 8) as f32 / (1u32 << 24) as f32
}

/// Checks that seeding centres have the rows' width `d` (every backend
/// refuses the same way).
pub(crate) fn check_seed_width(d: usize, got: usize) -> Result<(), BackendError> {
    if got != d {
        return Err(BackendError::Shape {
            what: "seeding centres",
            expected: d,
            got,
        });
    }
    Ok(())
}

/// Checks a number of k-means++ trials: 1 to [`MAX_SEED_CANDIDATES`].
pub(crate) fn check_seed_trials(t: usize) -> Result<(), BackendError> {
    if t > MAX_SEED_CANDIDATES || t == 0 {
        return Err(BackendError::Shape {
            what: "seeding trials (1 to 32)",
            expected: MAX_SEED_CANDIDATES,
            got: t,
        });
    }
    Ok(())
}

/// Checks that `rows` lies within `n` resident rows.
pub(crate) fn check_rows(rows: &Range<usize>, n: usize) -> Result<(), BackendError> {
    if rows.start > rows.end || rows.end > n {
        return Err(BackendError::RowRange {
            start: rows.start,
            end: rows.end,
            n,
        });
    }
    Ok(())
}

/// A compute backend: knows how to upload a matrix and which device it is.
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;

    /// Whether any NaN or infinity in a resident matrix is sure to make
    /// [`Resident::centred_gram`]'s column sums non-finite (IEEE arithmetic,
    /// as on the host). Fits on such a backend look for bad values only when
    /// the sums say there are some, instead of in a pass of their own; GPU
    /// drivers make no such promise.
    fn propagates_non_finite(&self) -> bool {
        false
    }

    /// Makes `x` (`n × d`, row-major) resident. `weights` (length `n`) weight
    /// the centroid sums and inertia; `None` means all ones.
    fn upload<'a>(
        &'a self,
        x: ArrayView2<'a, f32>,
        weights: Option<ArrayView1<'a, f32>>,
    ) -> Result<Box<dyn Resident + 'a>, BackendError>;
}

/// A matrix resident on a backend, and the kernels that run on it. `Send`:
/// a resident can move to the thread (or task) that runs its partition.
pub trait Resident: Send {
    fn n_rows(&self) -> usize;
    fn n_cols(&self) -> usize;

    /// Every row's nearest centroid (`k × d`): labels, squared distances
    /// and second-nearest squared distances, downloaded (`O(n)`). Nothing a
    /// later call depends on is left behind.
    fn assign(&mut self, centroids: ArrayView2<f32>) -> Result<Assignment, BackendError>;

    /// One Lloyd step over the resident rows `rows` against `centroids`
    /// (`k × d`): per cluster Σw·x and Σw of the rows nearest to it, and
    /// Σw·d² over the rows, read back as `O(k·d)` values. The result
    /// depends only on those rows and the centroids; steps over disjoint
    /// ranges add up to the step over their union (in f64, so up to the
    /// order of the additions). [`BackendError::RowRange`] for rows the
    /// resident does not hold.
    fn step_rows(
        &mut self,
        rows: Range<usize>,
        centroids: ArrayView2<f32>,
    ) -> Result<ClusterSums, BackendError>;

    /// [`step_rows`](Self::step_rows) over every resident row.
    fn lloyd_step(&mut self, centroids: ArrayView2<f32>) -> Result<ClusterSums, BackendError> {
        self.step_rows(0..self.n_rows(), centroids)
    }

    /// A whole Lloyd step and the assignment it made, for a strategy that
    /// needs both (the start of a pruned run). Two passes unless a backend
    /// fuses them.
    fn step_with_assignment(
        &mut self,
        centroids: ArrayView2<f32>,
    ) -> Result<(ClusterSums, Assignment), BackendError> {
        let sums = self.lloyd_step(centroids)?;
        Ok((sums, self.assign(centroids)?))
    }

    /// Whether [`bounded_step`](Self::bounded_step) is implemented.
    fn has_bounded_step(&self) -> bool {
        false
    }

    /// The per-row half of a Hamerly step against `centroids`: moves every
    /// row's bounds by `shifts`, rescans the rows whose bounds no longer
    /// prove their cluster, and updates `bounds` (labels included) in
    /// place. Returns the change to the cluster sums made by the rows that
    /// changed cluster: sums and weights, with an inertia of 0 (the
    /// strategy derives it). Leaves `bounds` unusable when it fails.
    fn bounded_step(
        &mut self,
        centroids: ArrayView2<f32>,
        shifts: &BoundShifts,
        bounds: &mut RowBounds,
    ) -> Result<ClusterSums, BackendError> {
        let _ = (centroids, shifts, bounds);
        Err(BackendError::Unsupported("bounded Lloyd step"))
    }

    /// Device time of the last [`lloyd_step`](Self::lloyd_step) in ms, from
    /// GPU timestamp queries where the adapter supports them (`None` on the
    /// CPU and elsewhere). Reading it waits for the device: call it after
    /// wall-clock timing, not inside it.
    fn last_step_device_ms(&mut self) -> Option<f64> {
        None
    }

    /// Seeding (k-means++, k-means||) starts: every row's `D²` becomes its
    /// squared distance to `centre` (`d` values, computed exactly as
    /// `Σ (x − c)²`). Returns the potential.
    fn seed_start(&mut self, centre: &[f32]) -> Result<Potential, BackendError>;

    /// Lowers every row's `D²` to its squared distance to the nearest of
    /// `centres` (`m × d`) where that is smaller: k-means||'s new
    /// candidates. Returns the potential.
    fn seed_lower(&mut self, centres: ArrayView2<f32>) -> Result<Potential, BackendError>;

    /// The potential each of `candidates` (`t × d`, t ≤ [`MAX_SEED_CANDIDATES`])
    /// would leave if it were chosen, `Σ w·min(D², ‖x − c‖²)`, without
    /// changing `D²`: k-means++'s scoring of its trials.
    fn seed_score(&mut self, candidates: ArrayView2<f32>) -> Result<Vec<f64>, BackendError>;

    /// Lowers `D²` by candidate `j` of the last [`seed_score`](Self::seed_score)
    /// (the trial k-means++ kept). Returns the potential.
    fn seed_keep(&mut self, j: usize) -> Result<Potential, BackendError>;

    /// For each `(block, offset)` from [`Potential::find`]: the row of that
    /// block at which the running sum of `w·D²` (from the block's start)
    /// first exceeds `offset`; past the block's sum, its last row with a
    /// positive potential.
    fn seed_pick(&mut self, draws: &[(usize, f64)]) -> Result<Vec<usize>, BackendError>;

    /// k-means|| sampling: the rows `i` with `seed_unit(salt, i) <
    /// factor · wᵢ·D²ᵢ` (both sides in f32), in increasing order.
    fn seed_oversample(&mut self, factor: f64, salt: u32) -> Result<Vec<usize>, BackendError>;

    /// Frees the seeding state (`D²`, stored trials) once the centres are
    /// chosen: the Lloyd steps never read it.
    fn seed_finish(&mut self) {}

    /// Column sums about the first row.
    fn column_sums(&mut self) -> Result<ColumnSums, BackendError>;

    /// `Σ (x − mean)(x − mean)ᵀ`, `d × d`, unnormalised.
    fn gram(&mut self, mean: &[f32]) -> Result<Array2<f64>, BackendError>;

    /// PCA's statistics: the column sums and the Gram about the mean. Two
    /// passes ([`column_sums`](Self::column_sums), then [`gram`](Self::gram))
    /// unless a backend fuses them.
    fn centred_gram(&mut self) -> Result<(ColumnSums, Array2<f64>), BackendError> {
        let sums = self.column_sums()?;
        let mean: Vec<f32> = sums.mean().iter().map(|&m| m as f32).collect();
        let gram = self.gram(&mean)?;
        Ok((sums, gram))
    }

    /// `(x − mean) · componentsᵀ`, `n × c` for `components` of shape `c × d`.
    fn project(
        &mut self,
        mean: &[f32],
        components: ArrayView2<f32>,
    ) -> Result<Array2<f32>, BackendError>;
}
