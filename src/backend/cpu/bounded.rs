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

use super::kernel::{assign_block, squared_distance, BlockOut, PackedCentroids, Partial, LANES};
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
        let centroids = self.pc.centroids.as_slice().expect("standard layout");
        let row = |i: usize| &x[i * d..(i + 1) * d];
        // First the bounds alone, streaming through the block; the rows that
        // fail are then read in a second loop whose loads do not wait on
        // branches, and are prefetched ahead: they are scattered, and each
        // is a cache miss.
        let m = labels.len();
        let tighten = simd::dispatch(BoundsPass {
            labels,
            upper: &mut *upper,
            lower: &mut *lower,
            context: self,
        });
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
            let moves = moves_of((0..m).zip(new_labels), labels, weights);
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
        let moves = moves_of(rescan.iter().copied().zip(new_labels), labels, weights);
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
fn moves_of(
    rescanned: impl Iterator<Item = (usize, u32)>,
    labels: &mut [u32],
    weights: Option<&[f32]>,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for (i, new) in rescanned {
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

/// The streaming half of a bounded step over one block: every row's
/// bounds moved by its centroid's shifts; returns the rows that fail the
/// test, in order.
struct BoundsPass<'b, 'a, 'c> {
    labels: &'b [u32],
    upper: &'b mut [f32],
    lower: &'b mut [f32],
    context: &'b StepContext<'a, 'c>,
}

impl SimdKernel for BoundsPass<'_, '_, '_> {
    type Output = Vec<usize>;
    /// Sixteen rows at a time: the per-cluster shifts are gathered by
    /// label, and only the indices of failing lanes are pushed, so the
    /// only branch per sixteen rows is whether any failed. Row by row, the
    /// branch on a row's test mispredicted for about half the rows while
    /// centroids moved: it was the largest part of an early pruned step.
    /// `a + b` is computed as `fma(1, a, b)` and `a · b` as `fma(a, b, 0)`:
    /// one rounding each, so the bounds are the scalar loop's bits.
    #[inline(always)]
    fn run<S: F32x16>(self) -> Vec<usize> {
        let c = self.context;
        let m = self.labels.len();
        assert!(self.upper.len() == m && self.lower.len() == m && !c.moved.is_empty());
        let mut tighten = Vec::new();
        let full = m - m % LANES;
        // SAFETY: dispatched with S's CPU features; every load and store is
        // of the sixteen rows from `r0`, below `full <= m`, of slices of m.
        unsafe {
            let (one, zero) = (S::splat(1.0), S::splat(0.0));
            // `up(1)` and `down(1)`: the factors the rounding functions apply.
            let (grow, shrink) = (S::splat(up(1.0)), S::splat(down(1.0)));
            for r0 in (0..full).step_by(LANES) {
                let labels: &[u32; LANES] = self.labels[r0..r0 + LANES].try_into().unwrap();
                let (pu, pl) = (
                    self.upper.as_mut_ptr().add(r0),
                    self.lower.as_mut_ptr().add(r0),
                );
                let u = S::fma(one, S::load(pu), S::gather(c.moved, labels));
                let u = S::fma(u, grow, zero);
                let l = S::sub(S::load(pl), S::gather(c.shrink, labels));
                let l = S::fma(l, shrink, zero);
                let l = S::select(S::lt(l, zero), zero, l);
                u.store(pu);
                l.store(pl);
                let gap = S::gather(c.half_gap, labels);
                let limit = S::select(S::lt(l, gap), gap, l);
                let mut fail = S::bits(S::lt(limit, u));
                while fail != 0 {
                    tighten.push(r0 + fail.trailing_zeros() as usize);
                    fail &= fail - 1;
                }
            }
        }
        for i in full..m {
            let a = self.labels[i] as usize;
            let (u, l) = (&mut self.upper[i], &mut self.lower[i]);
            *u = up(*u + c.moved[a]);
            *l = down(*l - c.shrink[a]);
            if *u > l.max(c.half_gap[a]) {
                tighten.push(i);
            }
        }
        tighten
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::{dispatch_at, Level};

    /// The vector pass gives the scalar loop's bounds, bit for bit, and the
    /// same failing rows at every level, on a block that ends inside a
    /// vector; and an out-of-range label cannot read outside the shifts.
    #[test]
    fn every_level_moves_bounds_as_the_scalar_loop() {
        let (k, m) = (5, 16 * 9 + 7);
        let centroids = ndarray::Array2::<f32>::zeros((k, 2));
        let pc = PackedCentroids::new(centroids.view());
        let moved: Vec<f32> = (0..k).map(|c| 0.05 * c as f32).collect();
        let shrink: Vec<f32> = (0..k).map(|c| 0.3 - 0.05 * c as f32).collect();
        let half_gap: Vec<f32> = (0..k).map(|c| 0.4 + 0.1 * c as f32).collect();
        let context = StepContext {
            pc: &pc,
            moved: &moved,
            shrink: &shrink,
            half_gap: &half_gap,
        };
        let labels: Vec<u32> = (0..m).map(|i| (i * 7 % k) as u32).collect();
        let upper0: Vec<f32> = (0..m).map(|i| (i * 13 % 17) as f32 * 0.1).collect();
        // Some lower bounds shrink below zero and are clamped.
        let lower0: Vec<f32> = (0..m).map(|i| (i * 5 % 11) as f32 * 0.07).collect();
        let (mut want_u, mut want_l, mut want) = (upper0.clone(), lower0.clone(), Vec::new());
        for i in 0..m {
            let a = labels[i] as usize;
            want_u[i] = up(want_u[i] + moved[a]);
            want_l[i] = down(want_l[i] - shrink[a]);
            if want_u[i] > want_l[i].max(half_gap[a]) {
                want.push(i);
            }
        }
        assert!(
            want.len() > m / 10 && want.len() < m - m / 10,
            "a mix of rows"
        );
        let pass = |level, labels: &[u32]| {
            let (mut upper, mut lower) = (upper0.clone(), lower0.clone());
            let failing = dispatch_at(
                level,
                BoundsPass {
                    labels,
                    upper: &mut upper,
                    lower: &mut lower,
                    context: &context,
                },
            );
            (failing, upper, lower)
        };
        for level in Level::available() {
            let (got, upper, lower) = pass(level, &labels);
            assert_eq!(got, want, "{level}");
            let bits = |v: &[f32]| {
                v.iter()
                    .map(|x| x.to_bits() & !(1 << 31))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&upper), bits(&want_u), "{level} upper");
            assert_eq!(bits(&lower), bits(&want_l), "{level} lower");
        }
        let mut bad = labels.clone();
        bad[3] = u32::MAX;
        for level in Level::available() {
            let (got, upper, _) = pass(level, &bad);
            let clamped = up(upper0[3] + moved[k - 1]);
            assert_eq!(upper[3].to_bits(), clamped.to_bits(), "{level}: {got:?}");
        }
    }
}
