//! Hamerly's bounds: Lloyd steps that give the exhaustive step's assignment
//! while skipping most distance computations.
//!
//! Each row keeps an upper bound `u` on the distance to its centroid and a
//! lower bound `l` on the distance to every other centroid. When centroids
//! move, `u` grows by its centroid's movement and `l` shrinks by the largest
//! movement of the others. A row whose `u` is at most `max(l, s)` — `s` being
//! half the distance from its centroid to the nearest other one — cannot have
//! changed cluster, and is not touched at all: once centroids settle, a step
//! reads a few bytes per row instead of the row. Only the rows that fail the
//! test (after tightening `u` to the exact distance) are scanned against every
//! centroid, by the same microkernels as the exhaustive step.
//!
//! The per-cluster sums are then updated by the rows that changed cluster,
//! and the inertia comes from those sums (see [`Bounds::inertia`]), so
//! unchanged rows cost nothing. Bounds are rounded outwards by [`SLACK`]: a
//! row whose two nearest centroids are equally far up to f32 rounding may
//! keep a label that an exhaustive step would flip — the same tie the
//! exhaustive kernels break by rounding.

use std::borrow::Cow;

use rayon::prelude::*;

use super::kernel::{assign_block, squared_distance, BlockOut, PackedCentroids, Partial};
use super::simd::{self, F32x16, SimdKernel};
use crate::backend::Cancel;

/// Relative widening of every bound: several times the rounding error of an
/// f32 distance over a few hundred features.
const SLACK: f32 = 4e-6;

/// What a pruned step needs from the resident: its rows and their outputs.
pub(super) struct Rows<'a> {
    pub x: &'a [f32],
    pub d: usize,
    pub weights: Option<&'a [f32]>,
    pub labels: &'a mut [u32],
    /// Rows per parallel block (as in the exhaustive step).
    pub block: usize,
}

/// Bounds and running sums carried from one Lloyd step to the next.
pub(super) struct Bounds {
    /// The centroids of the last step, `k × d`.
    centroids: Vec<f32>,
    k: usize,
    upper: Vec<f32>,
    lower: Vec<f32>,
    /// Σ w·x and Σ w per cluster for the current labels, and the inertia of
    /// the last step.
    totals: Partial,
    /// The weighted mean of the data, and Σ w·‖x − pivot‖² (see
    /// [`Bounds::inertia`]).
    pivot: Vec<f64>,
    spread: f64,
}

impl Bounds {
    /// Bounds after an exhaustive step against `centroids` (`k × d`) that
    /// produced `total` and, per row, the squared distances to the nearest
    /// and second-nearest centroids.
    pub fn new(centroids: &[f32], total: &Partial, distances: &[f32], second: &[f32]) -> Self {
        let k = total.weights.len();
        let d = centroids.len() / k.max(1);
        let weight: f64 = total.weights.iter().sum();
        let pivot: Vec<f64> = (0..d)
            .map(|j| {
                let s: f64 = (0..k).map(|c| total.sums[c * d + j]).sum();
                if weight > 0.0 {
                    s / weight
                } else {
                    0.0
                }
            })
            .collect();
        let (mut upper, mut lower) = (vec![0.0; distances.len()], vec![0.0; second.len()]);
        upper
            .par_iter_mut()
            .zip(lower.par_iter_mut())
            .zip(distances.par_iter().zip(second.par_iter()))
            .for_each(|((u, l), (&near, &next))| {
                *u = up(near.sqrt());
                *l = down(next.sqrt());
            });
        let mut bounds = Self {
            centroids: centroids.to_vec(),
            k,
            upper,
            lower,
            totals: total.clone(),
            pivot,
            spread: 0.0,
        };
        // The step's inertia was summed row by row; the spread is whatever
        // makes the identity reproduce it, so no pass over the rows is needed.
        bounds.spread = total.inertia - bounds.inertia_about_pivot();
        bounds
    }

    /// Whether these bounds can carry over to a step against `k` centroids.
    pub fn fits(&self, k: usize) -> bool {
        self.k == k
    }

    /// One pruned Lloyd step against `centroids` (`k × d`): relabels
    /// `rows.labels` and returns the per-cluster sums and the inertia
    /// against `centroids`.
    /// Blocks not yet started when `cancel` is set are skipped (the result
    /// is then unusable; the caller checks the flag).
    pub fn step(&mut self, rows: &mut Rows, pc: &PackedCentroids, cancel: &Cancel) -> Partial {
        let (k, d) = (self.k, rows.d);
        let centroids = pc.centroids.as_slice().expect("standard layout");
        let moved: Vec<f32> = (0..k)
            .map(|c| {
                let row = c * d..(c + 1) * d;
                up(distance_f64(&self.centroids[row.clone()], &centroids[row]) as f32)
            })
            .collect();
        // The largest movement, and the largest among the other centroids
        // for the rows of the cluster that moved most.
        let (mut first, mut second, mut argmax) = (0.0f32, 0.0f32, usize::MAX);
        for (c, &m) in moved.iter().enumerate() {
            if m > first {
                (second, first, argmax) = (first, m, c);
            } else if m > second {
                second = m;
            }
        }
        let shrink: Vec<f32> = (0..k)
            .map(|c| if c == argmax { second } else { first })
            .collect();
        let context = StepContext {
            pc,
            moved: &moved,
            shrink: &shrink,
            half_gap: &half_gaps(centroids, k, d),
        };
        let block = rows.block;
        let (x, weights) = (rows.x, rows.weights);
        let deltas: Vec<Option<Partial>> = rows
            .labels
            .par_chunks_mut(block)
            .zip(self.upper.par_chunks_mut(block))
            .zip(self.lower.par_chunks_mut(block))
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
        for delta in deltas.iter().flatten() {
            self.totals.add(delta);
        }
        self.centroids.copy_from_slice(centroids);
        self.totals.inertia = self.inertia();
        self.totals.clone()
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
                let centred_sum = self.totals.sums[c * d + j] - w * p;
                total += offset * (w * offset - 2.0 * centred_sum);
            }
        }
        total
    }
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
        let (k, d) = self.pc.centroids.dim();
        let centroids = self.pc.centroids.as_slice().expect("standard layout");
        let row = |i: usize| &x[i * d..(i + 1) * d];
        // First the bounds alone, streaming through the block; the rows that
        // fail are then read in a second loop whose loads do not wait on
        // branches, and are prefetched ahead: they are scattered, and each
        // is a cache miss.
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
        // Where most rows fail (centroids still moving), one exhaustive
        // pass over the block costs less than tightening, then gathering.
        let rescan: Vec<usize> = if tighten.len() * 2 > labels.len() {
            (0..labels.len()).collect()
        } else {
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
            rescan
        };
        if rescan.is_empty() {
            return None;
        }
        let m = rescan.len();
        let gathered: Cow<[f32]> = if m == labels.len() {
            Cow::Borrowed(x)
        } else {
            Cow::Owned(rescan.iter().flat_map(|&i| row(i)).copied().collect())
        };
        let (mut new_labels, mut nearest, mut second) = (vec![0; m], vec![0.0; m], vec![0.0; m]);
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
        let mut moves = Vec::new();
        for (r, &i) in rescan.iter().enumerate() {
            upper[i] = up(nearest[r].sqrt());
            lower[i] = down(second[r].sqrt());
            if labels[i] != new_labels[r] {
                moves.push(Move {
                    row: i,
                    from: labels[i] as usize,
                    to: new_labels[r] as usize,
                    weight: weights.map_or(1.0, |w| w[i] as f64),
                });
                labels[i] = new_labels[r];
            }
        }
        if moves.is_empty() {
            return None;
        }
        let mut delta = Partial::zeros(k, d);
        simd::dispatch(ApplyMoves {
            x,
            moves: &moves,
            delta: &mut delta,
        });
        Some(delta)
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

/// Half the distance from each centroid to its nearest other centroid
/// (rounded down; +∞ when k = 1).
fn half_gaps(centroids: &[f32], k: usize, d: usize) -> Vec<f32> {
    let row = |c: usize| &centroids[c * d..(c + 1) * d];
    (0..k)
        .into_par_iter()
        .map(|a| {
            let nearest = (0..k)
                .filter(|&b| b != a)
                .map(|b| distance_f64(row(a), row(b)))
                .fold(f64::INFINITY, f64::min);
            down((nearest / 2.0) as f32)
        })
        .collect()
}

fn distance_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Rounds an upper bound up.
fn up(v: f32) -> f32 {
    v * (1.0 + SLACK)
}

/// Rounds a lower bound down (never below zero).
fn down(v: f32) -> f32 {
    (v * (1.0 - SLACK)).max(0.0)
}
