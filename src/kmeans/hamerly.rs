//! How the Lloyd loop computes each step's sums: every row against every
//! centroid, or Hamerly's pruning (Hamerly, 2010, "Making k-means even
//! faster") over a backend's bounded kernel.
//!
//! Pruning keeps, per row, an upper bound on the distance to its centroid
//! and a lower bound on the distance to every other one ([`RowBounds`]).
//! Between steps this module works out how far the centroids moved
//! ([`BoundShifts`], `O(k²·d)` on the host); the backend's
//! [`Resident::bounded_step`] moves the bounds, rescans the rows they no
//! longer prove, and returns the change to the cluster sums. The running
//! sums are kept here, and the inertia comes from them (see
//! [`Hamerly::inertia`]), so rows that did not move cost nothing. The
//! labels are an exhaustive step's up to ties within f32 rounding: a row
//! whose two nearest centroids are equally far within rounding may keep a
//! label that an exhaustive step would flip.
//!
//! All state is in the [`Stepper`] a fit owns: a backend keeps nothing
//! between calls, and any kernel (an [`assign`](Resident::assign), a step
//! over other rows) may run in between.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, BoundShifts, ClusterSums, Resident, RowBounds};

/// Whether Lloyd steps are pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pruning {
    /// Hamerly's bounds where the backend has the bounded kernel (the
    /// CPU), every row against every centroid elsewhere.
    #[default]
    Auto,
    /// Every row against every centroid on every step (what the GPU
    /// computes; benchmarks use it to measure the kernels).
    Off,
}

/// Runs Lloyd steps on one resident with a [`Pruning`] strategy. Create one
/// per run of the loop; its steps must all be on the same resident.
#[derive(Debug)]
pub struct Stepper {
    pruning: Pruning,
    state: Option<Hamerly>,
}

impl Stepper {
    pub fn new(pruning: Pruning) -> Self {
        Self {
            pruning,
            state: None,
        }
    }

    /// The labels the last pruned step decided (`None` before one, or when
    /// steps are exhaustive): for tests and diagnostics.
    pub fn labels(&self) -> Option<&[u32]> {
        self.state.as_ref().map(|s| s.bounds.labels.as_slice())
    }

    /// One Lloyd step over every row of `resident` against `centroids`
    /// (`k × d`). A failed step (a cancelled kernel) drops the bounds: the
    /// next step starts over exhaustively.
    pub fn step(
        &mut self,
        resident: &mut dyn Resident,
        centroids: ArrayView2<f32>,
    ) -> Result<ClusterSums, BackendError> {
        if self.pruning == Pruning::Off || !resident.has_bounded_step() {
            return resident.lloyd_step(centroids);
        }
        let k = centroids.nrows();
        let state = self.state.take().filter(|s| s.k == k);
        let (state, sums) = match state {
            Some(mut s) => {
                let sums = s.step(resident, centroids)?;
                (s, sums)
            }
            None => Hamerly::start(resident, centroids)?,
        };
        self.state = Some(state);
        Ok(sums)
    }
}

/// Bounds and running sums carried from one pruned step to the next.
#[derive(Debug)]
struct Hamerly {
    k: usize,
    /// The centroids of the last step, `k × d` row-major.
    centroids: Vec<f32>,
    bounds: RowBounds,
    /// Σw·x and Σw per cluster for the current labels, and the last
    /// step's inertia.
    totals: ClusterSums,
    /// The weighted mean of the data, and Σ w·‖x − pivot‖²: see
    /// [`Hamerly::inertia`].
    pivot: Vec<f64>,
    spread: f64,
}

impl Hamerly {
    /// An exhaustive step that also gives the bounds.
    fn start(
        resident: &mut dyn Resident,
        centroids: ArrayView2<f32>,
    ) -> Result<(Self, ClusterSums), BackendError> {
        let (sums, assignment) = resident.step_with_assignment(centroids)?;
        let (k, d) = sums.dim();
        let weight: f64 = sums.weights.iter().sum();
        let pivot: Vec<f64> = (0..d)
            .map(|j| {
                let s: f64 = sums.sums.column(j).sum();
                if weight > 0.0 {
                    s / weight
                } else {
                    0.0
                }
            })
            .collect();
        let mut state = Self {
            k,
            centroids: centroids.as_standard_layout().iter().copied().collect(),
            bounds: RowBounds::from_assignment(assignment),
            totals: sums.clone(),
            pivot,
            spread: 0.0,
        };
        // The step's inertia was summed row by row; the spread is whatever
        // makes the identity reproduce it, so no pass over the rows is needed.
        state.spread = sums.inertia - state.inertia_about_pivot();
        Ok((state, sums))
    }

    fn step(
        &mut self,
        resident: &mut dyn Resident,
        centroids: ArrayView2<f32>,
    ) -> Result<ClusterSums, BackendError> {
        let next: Vec<f32> = centroids.as_standard_layout().iter().copied().collect();
        let shifts = BoundShifts::between(&self.centroids, &next, self.k);
        let delta = resident.bounded_step(centroids, &shifts, &mut self.bounds)?;
        self.totals.sums += &delta.sums;
        for (w, dw) in self.totals.weights.iter_mut().zip(&delta.weights) {
            *w += dw;
        }
        self.centroids = next;
        self.totals.inertia = self.inertia();
        Ok(self.totals.clone())
    }

    /// Σ w·‖x − c‖² from the running sums, without touching the rows:
    /// `spread − 2 Σ (c − p)·(S − W·p) + Σ W·‖c − p‖²` per cluster, about the
    /// data's mean `p`, so the f64 cancellation stays at the scale of the
    /// data's spread rather than of its distance from the origin.
    fn inertia(&self) -> f64 {
        (self.spread + self.inertia_about_pivot()).max(0.0)
    }

    /// `Σ (c − p)·(W·(c − p) − 2·(S − W·p))` over clusters.
    fn inertia_about_pivot(&self) -> f64 {
        let d = self.pivot.len();
        let mut total = 0.0;
        for c in 0..self.k {
            let w = self.totals.weights[c];
            for (j, &p) in self.pivot.iter().enumerate() {
                let offset = self.centroids[c * d + j] as f64 - p;
                let centred_sum = self.totals.sums[(c, j)] - w * p;
                total += offset * (w * offset - 2.0 * centred_sum);
            }
        }
        total
    }
}
