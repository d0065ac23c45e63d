//! The Lloyd loop. Each iteration is one step of its [`Stepper`]
//! (assignment and per-cluster sums on the device, pruned or exhaustive);
//! only centroids and `k × d` sums cross between host and device.

use ndarray::{Array2, ArrayView2};

use super::hamerly::{Pruning, Stepper};
use super::params::{FitControl, Progress};
use crate::backend::{ClusterSums, Resident};
use crate::Error;

/// The outcome of one run from one set of initial centroids.
pub(super) struct Run {
    pub centroids: Array2<f32>,
    pub n_iter: usize,
    /// The centroid shift fell within tolerance (not stopped at max_iter).
    pub converged: bool,
    pub inertia_history: Vec<f64>,
}

pub(super) struct RunSpec<'a> {
    pub run: usize,
    pub n_init: usize,
    pub max_iter: usize,
    /// Absolute tolerance on the summed squared centroid shift.
    pub tol: f64,
    pub pruning: Pruning,
    pub control: &'a FitControl,
}

pub(super) fn lloyd(
    resident: &mut dyn Resident,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    mut centroids: Array2<f32>,
    spec: &RunSpec,
) -> Result<Run, Error> {
    let mut history = Vec::new();
    let mut stepper = Stepper::new(spec.pruning);
    for iteration in 1..=spec.max_iter {
        if spec.control.cancelled() {
            return Err(Error::Cancelled);
        }
        let step = stepper.step(resident, centroids.view())?;
        history.push(step.inertia);
        let mut next = new_centroids(&step, &centroids);
        let empty: Vec<usize> = (0..step.weights.len())
            .filter(|&c| step.weights[c] <= 0.0)
            .collect();
        if !empty.is_empty() {
            relocate_empty(
                resident,
                x,
                weights,
                centroids.view(),
                &step,
                &empty,
                &mut next,
            )?;
        }
        let shift: f64 = next
            .iter()
            .zip(centroids.iter())
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        centroids = next;
        spec.control.report(&Progress {
            run: spec.run,
            n_init: spec.n_init,
            iteration,
            max_iter: spec.max_iter,
            inertia: step.inertia,
            shift,
        });
        if shift <= spec.tol {
            return Ok(Run {
                centroids,
                n_iter: iteration,
                converged: true,
                inertia_history: history,
            });
        }
    }
    Ok(Run {
        centroids,
        n_iter: spec.max_iter,
        converged: false,
        inertia_history: history,
    })
}

/// Σwx / Σw per cluster; an empty cluster keeps its previous centroid until
/// it is relocated.
fn new_centroids(step: &ClusterSums, previous: &Array2<f32>) -> Array2<f32> {
    let mut next = previous.clone();
    for (c, mut row) in next.rows_mut().into_iter().enumerate() {
        let w = step.weights[c];
        if w > 0.0 {
            for (v, &s) in row.iter_mut().zip(step.sums.row(c)) {
                *v = (s / w) as f32;
            }
        }
    }
    next
}

/// Moves each empty cluster onto one of the rows farthest from their
/// centroid (as scikit-learn does), taking that row out of its old cluster's
/// mean. A row is only taken from a cluster that keeps other rows, so no new
/// empty cluster appears. Downloads the assignment: `O(n)`, but only in the
/// rare iterations that have an empty cluster.
fn relocate_empty(
    resident: &mut dyn Resident,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    centroids: ArrayView2<f32>,
    step: &ClusterSums,
    empty: &[usize],
    next: &mut Array2<f32>,
) -> Result<(), Error> {
    // The step's assignment, again: an explicit kernel call, not state
    // left behind by the step.
    let assignment = resident.assign(centroids)?;
    let mut order: Vec<usize> = (0..x.nrows()).collect();
    order.sort_by(|&a, &b| {
        assignment.distances[b]
            .total_cmp(&assignment.distances[a])
            .then(a.cmp(&b))
    });
    let mut counts = vec![0usize; step.weights.len()];
    for &l in &assignment.labels {
        counts[l as usize] += 1;
    }
    let mut sums = step.sums.clone();
    let mut cluster_weight = step.weights.clone();
    let mut candidates = order.into_iter().filter(|&i| assignment.distances[i] > 0.0);
    for &e in empty {
        let Some(i) = candidates
            .by_ref()
            .find(|&i| counts[assignment.labels[i] as usize] > 1)
        else {
            // Said once, when the fit ends (not every iteration).
            tracing::debug!("cluster {e} is empty and no row can be moved into it");
            continue;
        };
        let old = assignment.labels[i] as usize;
        let w = weights.map_or(1.0, |w| w[i] as f64);
        counts[old] -= 1;
        for (s, &v) in sums.row_mut(old).iter_mut().zip(x.row(i)) {
            *s -= w * v as f64;
        }
        cluster_weight[old] -= w;
        if cluster_weight[old] > 0.0 {
            for (c, &s) in next.row_mut(old).iter_mut().zip(sums.row(old)) {
                *c = (s / cluster_weight[old]) as f32;
            }
        }
        next.row_mut(e).assign(&x.row(i));
    }
    Ok(())
}
