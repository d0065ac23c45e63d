//! The CPU's seeding kernels (k-means++, k-means||): every row's `D²` to the
//! nearest centre chosen so far lives here, beside the rows; the host side
//! (`kmeans::init`) sees only block sums and row indices.
//!
//! Scoring a k-means++ step is the hot loop: `t = 2 + ln k` trials against
//! every row. Sixteen rows go in the lanes of a vector (the tile transposed
//! once), four trials at a time with two partial sums each (eight
//! independent FMA chains, the small-k assignment kernel's
//! `group_distances`), distances exact as `Σ (x − c)²`. Each trial's
//! `min(D², d²)` is stored (trial-major), so keeping the winner is a copy,
//! not another pass over the rows; weighted sums go into per-lane f32
//! accumulators, added in f64 once per block. The kernel reads each row once
//! per step: at d = 32 that is 128 bytes for 448 flops, so on a 2-core
//! machine it is bound by memory bandwidth, not the FMA units.

use rayon::prelude::*;

use super::kernel::{group_distances, GROUP};
use super::simd::{self, F32x16, SimdKernel};
use crate::backend::{seed_unit, Potential};

/// Rows per block of the potential: fixed, so sums are added in the same
/// order on every run.
pub const BLOCK: usize = 4096;
const LANES: usize = 16;

/// The per-row seeding state.
#[derive(Default)]
pub(super) struct Seed {
    /// `D²` per row.
    pub closest: Vec<f32>,
    /// The last scored trials' `min(D², d²)`, `t × n`, trial-major.
    pub minima: Vec<f32>,
    pub trials: usize,
}

/// Rows `x` (`n × d`), their weights, and `D²`.
pub(super) struct Rows<'a> {
    pub x: &'a [f32],
    pub d: usize,
    pub weights: Option<&'a [f32]>,
}

impl Rows<'_> {
    fn n(&self) -> usize {
        self.x.len() / self.d.max(1)
    }

    fn weight(&self, i: usize) -> f32 {
        self.weights.map_or(1.0, |w| w[i])
    }
}

/// The potential of `closest`: Σ w·D² per block, in f64.
pub(super) fn potential(rows: &Rows, closest: &[f32]) -> Potential {
    let sums = closest
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, block)| {
            let start = b * BLOCK;
            let mut acc = [0.0f64; 4];
            for (r, &c) in block.iter().enumerate() {
                acc[r % 4] += rows.weight(start + r) as f64 * c as f64;
            }
            (acc[0] + acc[1]) + (acc[2] + acc[3])
        })
        .collect();
    Potential {
        starts: (0..closest.len()).step_by(BLOCK).collect(),
        sums,
    }
}

/// Scores `candidates` (`t × d`, row-major) against every row: fills
/// `minima` (`t × n`) and returns each trial's potential.
pub(super) fn score(
    rows: &Rows,
    closest: &[f32],
    candidates: &[f32],
    minima: &mut [f32],
) -> Vec<f64> {
    let (n, d) = (rows.n(), rows.d);
    let t = candidates.len() / d.max(1);
    assert!(closest.len() == n && minima.len() == t * n);
    // Candidates zero-padded to whole groups (padding is computed, not stored).
    let mut padded = candidates.to_vec();
    padded.resize(t.div_ceil(GROUP) * GROUP * d, 0.0);
    // Each block writes its own rows of every trial's minima.
    let per_block: Vec<Vec<&mut [f32]>> = {
        let mut trials: Vec<std::slice::ChunksMut<f32>> = minima
            .chunks_mut(n.max(1))
            .map(|m| m.chunks_mut(BLOCK))
            .collect();
        (0..n.div_ceil(BLOCK))
            .map(|_| trials.iter_mut().filter_map(|c| c.next()).collect())
            .collect()
    };
    let parts: Vec<Vec<f64>> = per_block
        .into_par_iter()
        .enumerate()
        .map(|(b, mut out)| {
            let start = b * BLOCK;
            let m = (n - start).min(BLOCK);
            simd::dispatch(ScoreBlock {
                x: &rows.x[start * d..(start + m) * d],
                d,
                weights: rows.weights.map(|w| &w[start..start + m]),
                closest: &closest[start..start + m],
                candidates: &padded,
                t,
                out: &mut out,
            })
        })
        .collect();
    let mut total = vec![0.0f64; t];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    total
}

/// `closest = minima[j]` and the new potential, in one pass.
pub(super) fn keep(rows: &Rows, seed: &mut Seed, j: usize) -> Potential {
    let n = rows.n();
    let kept = &seed.minima[j * n..(j + 1) * n];
    let sums = seed
        .closest
        .par_chunks_mut(BLOCK)
        .zip(kept.par_chunks(BLOCK))
        .enumerate()
        .map(|(b, (out, src))| {
            out.copy_from_slice(src);
            let start = b * BLOCK;
            // Four partial sums break the f64 add chain; fixed order.
            let mut acc = [0.0f64; 4];
            for (r, &c) in src.iter().enumerate() {
                acc[r % 4] += rows.weight(start + r) as f64 * c as f64;
            }
            (acc[0] + acc[1]) + (acc[2] + acc[3])
        })
        .collect();
    Potential {
        starts: (0..n).step_by(BLOCK).collect(),
        sums,
    }
}

/// The row of `block` where the running sum of w·D² first exceeds `offset`
/// (f64, from the block's start); past the block's sum, its last row with a
/// positive potential (or its first row when none is).
pub(super) fn pick(
    rows: &Rows,
    closest: &[f32],
    starts: &[usize],
    block: usize,
    offset: f64,
) -> usize {
    let start = starts[block];
    let end = starts.get(block + 1).copied().unwrap_or(closest.len());
    let mut acc = 0.0f64;
    let mut last_positive = None;
    for (i, &c) in closest.iter().enumerate().take(end).skip(start) {
        let v = rows.weight(i) as f64 * c as f64;
        if v > 0.0 {
            acc += v;
            last_positive = Some(i);
            if acc > offset {
                return i;
            }
        }
    }
    last_positive.unwrap_or(start)
}

/// k-means||'s draw: rows with `seed_unit(salt, i) < factor·w·D²` (f32).
pub(super) fn oversample(rows: &Rows, closest: &[f32], factor: f64, salt: u32) -> Vec<usize> {
    let factor = factor as f32;
    closest
        .par_chunks(BLOCK)
        .enumerate()
        .flat_map_iter(|(b, block)| {
            let start = b * BLOCK;
            block.iter().enumerate().filter_map(move |(r, &c)| {
                let i = start + r;
                (seed_unit(salt, i as u32) < factor * rows.weight(i) * c).then_some(i)
            })
        })
        .collect()
}

struct ScoreBlock<'a, 'o> {
    x: &'a [f32],
    d: usize,
    weights: Option<&'a [f32]>,
    closest: &'a [f32],
    /// Zero-padded to whole groups.
    candidates: &'a [f32],
    t: usize,
    /// Per trial, this block's slice of its minima.
    out: &'a mut [&'o mut [f32]],
}

impl SimdKernel for ScoreBlock<'_, '_> {
    /// The block's potential per trial.
    type Output = Vec<f64>;
    #[inline(always)]
    fn run<S: F32x16>(self) -> Vec<f64> {
        // SAFETY: dispatched with S's CPU features; every slice is sized
        // below before any load.
        unsafe { score_block::<S>(self) }
    }
}

// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn score_block<S: F32x16>(k: ScoreBlock) -> Vec<f64> {
    let (d, t) = (k.d, k.t);
    let m = k.closest.len();
    assert!(
        k.x.len() == m * d
            && k.candidates.len() >= t.div_ceil(GROUP) * GROUP * d
            && k.out.len() == t
            && k.out.iter().all(|o| o.len() == m)
    );
    let mut sums = vec![S::splat(0.0); t];
    let mut columns = vec![0.0f32; LANES * d];
    let mut tile = vec![0.0f32; LANES * d];
    let (mut near, mut w, mut minima) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    let c = k.candidates.as_ptr();
    for t0 in (0..m).step_by(LANES) {
        let rows = LANES.min(m - t0);
        // Whole tiles are read in place; a short last tile is padded with
        // zero rows of zero weight.
        let (rows_in, nearv, wv) = if rows == LANES {
            let wv = match k.weights {
                Some(ws) => S::load(ws.as_ptr().add(t0)),
                None => S::splat(1.0),
            };
            (
                &k.x[t0 * d..(t0 + LANES) * d],
                S::load(k.closest.as_ptr().add(t0)),
                wv,
            )
        } else {
            tile[..rows * d].copy_from_slice(&k.x[t0 * d..(t0 + rows) * d]);
            tile[rows * d..].fill(0.0);
            near[..rows].copy_from_slice(&k.closest[t0..t0 + rows]);
            near[rows..].fill(0.0);
            match k.weights {
                Some(ws) => w[..rows].copy_from_slice(&ws[t0..t0 + rows]),
                None => w[..rows].fill(1.0),
            }
            w[rows..].fill(0.0);
            (&tile[..], S::load(near.as_ptr()), S::load(w.as_ptr()))
        };
        S::transpose_tile(rows_in, d, &mut columns);
        for g in (0..t).step_by(GROUP) {
            let dists = group_distances::<S>(&columns, c.add(g * d), d);
            for q in 0..GROUP.min(t - g) {
                let dist = dists[q];
                // min(D², d²): D² where it is not larger.
                let lower = S::select(S::lt(dist, nearv), dist, nearv);
                sums[g + q] = S::fma(wv, lower, sums[g + q]);
                let out = &mut k.out[g + q];
                if rows == LANES {
                    lower.store(out.as_mut_ptr().add(t0));
                } else {
                    lower.store(minima.as_mut_ptr());
                    out[t0..t0 + rows].copy_from_slice(&minima[..rows]);
                }
            }
        }
    }
    sums.iter()
        .map(|s| {
            let mut lanes = [0.0f32; LANES];
            s.store(lanes.as_mut_ptr());
            lanes.iter().map(|&v| v as f64).sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scoring kernel on every vector type the CPU runs, against scalar
    /// loops: a short last tile, an odd d, trials not a multiple of the
    /// group, weights.
    #[test]
    fn every_vector_path_scores_as_scalar_loops() {
        let (n, d, t) = (53, 7, 6);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 3) as f32).collect();
        let closest: Vec<f32> = (0..n).map(|i| (i * 29 % 400) as f32).collect();
        let mut cands: Vec<f32> = (0..t * d).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let want_minima: Vec<f32> = (0..t)
            .flat_map(|j| {
                let (x, cands, closest) = (&x, &cands, &closest);
                (0..n).map(move |i| {
                    let dist: f32 = (0..d)
                        .map(|c| (x[i * d + c] - cands[j * d + c]).powi(2))
                        .sum();
                    dist.min(closest[i])
                })
            })
            .collect();
        let want: Vec<f64> = (0..t)
            .map(|j| {
                (0..n)
                    .map(|i| w[i] as f64 * want_minima[j * n + i] as f64)
                    .sum()
            })
            .collect();
        cands.resize(t.div_ceil(GROUP) * GROUP * d, 0.0);
        let check = |name: &str, run: &dyn Fn(ScoreBlock) -> Vec<f64>| {
            let mut minima = vec![0.0f32; t * n];
            let mut out: Vec<&mut [f32]> = minima.chunks_mut(n).collect();
            let got = run(ScoreBlock {
                x: &x,
                d,
                weights: Some(&w),
                closest: &closest,
                candidates: &cands,
                t,
                out: &mut out,
            });
            // Integer data: every distance and sum is exact in f32.
            assert_eq!(minima, want_minima, "{name}: minima");
            assert_eq!(got, want, "{name}: potentials");
        };
        check("portable", &|k| k.run::<simd::Portable>());
        #[cfg(target_arch = "x86_64")]
        {
            if simd::detected() >= simd::Level::Avx2 {
                check("avx2", &|k| k.run::<simd::Avx2>());
            }
            if simd::detected() >= simd::Level::Avx512 {
                check("avx512", &|k| k.run::<simd::Avx512>());
            }
        }
    }
}
