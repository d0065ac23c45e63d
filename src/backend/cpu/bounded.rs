//! The CPU's bounded kernel for Hamerly's pruned Lloyd step
//! ([`Resident::bounded_step`](crate::backend::Resident::bounded_step)):
//! the per-row half of the strategy in `kmeans::hamerly`.
//!
//! Each row's upper bound grows by its centroid's movement and its lower
//! bound shrinks by the largest movement of the others. A row whose upper
//! bound is at most `max(lower, half_gap)` cannot have changed cluster and
//! is not touched at all: once centroids settle, a step reads a few bytes
//! per row instead of the row. Only the rows that fail the test (after
//! tightening the upper bound to the exact distance) are scanned against
//! every centroid, by the same microkernels as the exhaustive step, and the
//! rows that changed cluster move their values between the cluster sums.

use rayon::prelude::*;

use super::kernel::{assign_block, squared_distance, BlockOut, PackedCentroids, Partial};
use super::simd::{self, F32x16, SimdKernel};
use crate::backend::bounds::{round_down as down, round_up as up};
use crate::backend::{BoundShifts, Cancel, RowBounds};

/// The resident rows a bounded step reads.
pub(super) struct Rows<'a> {
    pub x: &'a [f32],
    pub weights: Option<&'a [f32]>,
    /// Rows per parallel block (as in the exhaustive step).
    pub block: usize,
}

/// One bounded step: updates `bounds` in place and returns the change to
/// the cluster sums (sums and weights) made by the rows that moved, blocks
/// added in order. Blocks not yet started when `cancel` is set are skipped
/// (the result and the bounds are then unusable; the caller checks).
pub(super) fn step(
    rows: Rows,
    pc: &PackedCentroids,
    shifts: &BoundShifts,
    bounds: &mut RowBounds,
    cancel: &Cancel,
) -> Partial {
    let (k, d) = pc.centroids.dim();
    let context = StepContext {
        pc,
        moved: &shifts.moved,
        shrink: &shifts.shrink,
        half_gap: &shifts.half_gap,
    };
    let (x, weights, block) = (rows.x, rows.weights, rows.block);
    let deltas: Vec<Option<Partial>> = bounds
        .labels
        .par_chunks_mut(block)
        .zip(bounds.upper.par_chunks_mut(block))
        .zip(bounds.lower.par_chunks_mut(block))
        .enumerate()
        .map(|(b, ((labels, upper), lower))| {
            if cancel.is_set() {
                return None;
            }
            let start = b * block;
            let m = labels.len();
            context.block(
                &x[start * d..(start + m) * d],
                weights.map(|w| &w[start..start + m]),
                labels,
                upper,
                lower,
            )
        })
        .collect();
    let mut total = Partial::zeros(k, d);
    for delta in deltas.iter().flatten() {
        total.add(delta);
    }
    total
}

/// Per-step values shared by every block.
struct StepContext<'a, 'c> {
    pc: &'a PackedCentroids<'c>,
    /// Per cluster: how far its centroid moved (added to `u`), how far any
    /// other centroid moved at most (taken from `l`), and half the distance
    /// to the nearest other centroid.
    moved: &'a [f32],
    shrink: &'a [f32],
    half_gap: &'a [f32],
}

impl StepContext<'_, '_> {
    /// Updates one block's bounds, rescans the rows that fail the test, and
    /// returns the block's change to the cluster sums (`None` if no row
    /// moved).
    fn block(
        &self,
        x: &[f32],
        weights: Option<&[f32]>,
        labels: &mut [u32],
        upper: &mut [f32],
        lower: &mut [f32],
    ) -> Option<Partial> {
        let d = self.pc.centroids.ncols();
        if labels.is_empty() {
            return None;
        }
        let centroids = self.pc.centroids.as_slice().expect("standard layout");
        let row = |i: usize| &x[i * d..(i + 1) * d];
        // First the bounds alone, streaming through the block; the rows that
        // fail are then read in a second loop whose loads do not wait on
        // branches, and are prefetched ahead: they are scattered, and each
        // is a cache miss.
        let m = labels.len();
        let mut tighten: Vec<usize> = Vec::new();
        for (i, ((&a, u), l)) in labels
            .iter()
            .zip(upper.iter_mut())
            .zip(lower.iter_mut())
            .enumerate()
        {
            let a = a as usize;
            *u = up(*u + self.moved[a]);
            *l = down(*l - self.shrink[a]);
            if *u > l.max(self.half_gap[a]) {
                tighten.push(i);
            }
        }
        let count = tighten.len();
        // Where most rows fail (centroids still moving), one exhaustive
        // pass over the block costs less than tightening, then gathering;
        // its distances go straight into the bounds.
        if count * 2 > m {
            let mut new_labels = vec![0; m];
            assign_block(
                x,
                None,
                self.pc,
                BlockOut {
                    labels: &mut new_labels,
                    distances: upper,
                    second: Some(lower),
                    partial: None,
                },
            );
            for (u, l) in upper.iter_mut().zip(lower.iter_mut()) {
                *u = up(u.sqrt());
                *l = down(l.sqrt());
            }
            let moves = moves_of((0..m).zip(&new_labels), labels, weights);
            return self.apply(x, &moves);
        }
        let mut rescan = Vec::new();
        for (t, &i) in tighten.iter().enumerate() {
            if let Some(&ahead) = tighten.get(t + PREFETCH_ROWS) {
                prefetch(row(ahead));
            }
            let a = labels[i] as usize;
            let u = up(squared_distance(row(i), &centroids[a * d..(a + 1) * d]).sqrt());
            upper[i] = u;
            if u > lower[i].max(self.half_gap[a]) {
                rescan.push(i);
            }
        }
        if rescan.is_empty() {
            return None;
        }
        let n = rescan.len();
        let gathered: Vec<f32> = rescan.iter().flat_map(|&i| row(i)).copied().collect();
        let (mut new_labels, mut nearest, mut second) = (vec![0; n], vec![0.0; n], vec![0.0; n]);
        assign_block(
            &gathered,
            None,
            self.pc,
            BlockOut {
                labels: &mut new_labels,
                distances: &mut nearest,
                second: Some(&mut second),
                partial: None,
            },
        );
        for (r, &i) in rescan.iter().enumerate() {
            upper[i] = up(nearest[r].sqrt());
            lower[i] = down(second[r].sqrt());
        }
        let moves = moves_of(rescan.iter().copied().zip(&new_labels), labels, weights);
        self.apply(x, &moves)
    }

    /// The block's change to the cluster sums from `moves` (`None` if no
    /// row moved).
    fn apply(&self, x: &[f32], moves: &[Move]) -> Option<Partial> {
        let (k, d) = self.pc.centroids.dim();
        if moves.is_empty() {
            return None;
        }
        let mut delta = Partial::zeros(k, d);
        simd::dispatch(ApplyMoves {
            x,
            moves,
            delta: &mut delta,
        });
        Some(delta)
    }
}

/// The rows of `rescanned` (row, new label) whose cluster changed, with
/// `labels` updated to the new ones.
fn moves_of<'l>(
    rescanned: impl Iterator<Item = (usize, &'l u32)>,
    labels: &mut [u32],
    weights: Option<&[f32]>,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for (i, &new) in rescanned {
        if labels[i] != new {
            moves.push(Move {
                row: i,
                from: labels[i] as usize,
                to: new as usize,
                weight: weights.map_or(1.0, |w| w[i] as f64),
            });
            labels[i] = new;
        }
    }
    moves
}

/// A row that changed cluster.
struct Move {
    row: usize,
    from: usize,
    to: usize,
    weight: f64,
}

/// Moves rows' weighted values between clusters' sums, vectorised.
struct ApplyMoves<'a> {
    x: &'a [f32],
    moves: &'a [Move],
    delta: &'a mut Partial,
}

impl SimdKernel for ApplyMoves<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        let d = self.delta.sums.len() / self.delta.weights.len();
        for m in self.moves {
            let row = &self.x[m.row * d..(m.row + 1) * d];
            // SAFETY: dispatched with S's CPU features; every slice holds d values.
            unsafe {
                S::add_scaled_f64(&mut self.delta.sums[m.from * d..], row, -m.weight);
                S::add_scaled_f64(&mut self.delta.sums[m.to * d..], row, m.weight);
            }
            self.delta.weights[m.from] -= m.weight;
            self.delta.weights[m.to] += m.weight;
        }
    }
}

/// How far ahead of its use a row is prefetched: enough misses in flight to
/// cover memory latency.
const PREFETCH_ROWS: usize = 16;

/// Asks for `row` in cache ahead of its use (a hint: never faults).
#[inline(always)]
fn prefetch(row: &[f32]) {
    simd::prefetch(row.as_ptr());
    simd::prefetch(row.as_ptr().wrapping_add(row.len() - 1));
}
