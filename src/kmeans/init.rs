//! Initial centroids: k-means++, k-means|| and random. They run on the host
//! over the scaled working copy; every parallel sum is over fixed blocks added
//! in order, so a seed always gives the same centroids.

use ndarray::{Array2, ArrayView2};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::params::Init;
use crate::backend::cpu::{squared_distance, CpuBackend};
use crate::backend::{Backend, BackendError, Cancel};

const BLOCK: usize = 8192;

/// Chooses `k` initial centroids for the rows of `x` (standard layout).
/// `cancel` is checked once per centre (k-means++) or round (k-means||).
pub(super) fn initial_centroids(
    init: &Init,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    seed: u64,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    Ok(match init {
        Init::Random => random(x, k, &mut rng),
        Init::KMeansPlusPlus => kmeans_plus_plus(x, weights, k, &mut rng, cancel)?,
        Init::KMeansParallel => kmeans_parallel(x, weights, k, &mut rng, cancel)?,
        Init::Given(c) => c.clone(),
    })
}

fn random(x: ArrayView2<f32>, k: usize, rng: &mut Xoshiro256PlusPlus) -> Array2<f32> {
    let picks = rand::seq::index::sample(rng, x.nrows(), k).into_vec();
    x.select(ndarray::Axis(0), &picks)
}

fn row<'a>(x: &'a ArrayView2<f32>, i: usize) -> &'a [f32] {
    let d = x.ncols();
    &x.as_slice().expect("standard layout")[i * d..(i + 1) * d]
}

fn weight(weights: Option<&[f32]>, i: usize) -> f64 {
    weights.map_or(1.0, |w| w[i] as f64)
}

/// Σ over fixed blocks, added in block order (deterministic).
fn block_sum(n: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
    let parts: Vec<f64> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| (b * BLOCK..((b + 1) * BLOCK).min(n)).map(&f).sum())
        .collect();
    parts.iter().sum()
}

/// Greedy k-means++ as in scikit-learn: each step draws `2 + ln k` candidates
/// by `w·D²` and keeps the one that lowers the total potential most.
///
/// One step reads the data once: the candidates are drawn together (from
/// one prefix sum of the potential, by binary search) and scored together,
/// each row's distances to all of them computed while the row is in cache;
/// the winner's per-row minima are kept, so no second pass is needed.
pub(super) fn kmeans_plus_plus(
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    let (n, d) = x.dim();
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres = Array2::<f32>::zeros((k, d));
    let mut cumulative = vec![0.0f64; n];
    let first = match weights {
        None => rng.random_range(0..n),
        Some(_) => {
            // By weight alone: every row's potential is 1.
            let ones = vec![1.0f32; n];
            prefix_sums(&ones, weights, &mut cumulative);
            sample_prefix(&cumulative, &ones, cumulative[n - 1], rng)
        }
    };
    centres.row_mut(0).assign(&x.row(first));
    let mut closest: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| squared_distance(row(&x, i), row(&x, first)))
        .collect();
    let mut potential = block_sum(n, |i| weight(weights, i) * closest[i] as f64);
    let mut minima = vec![0.0f32; n * trials];
    for c in 1..k {
        cancel.check()?;
        prefix_sums(&closest, weights, &mut cumulative);
        let candidates: Vec<usize> = (0..trials)
            .map(|_| sample_prefix(&cumulative, &closest, potential, rng))
            .collect();
        let potentials = score_candidates(x, weights, &closest, &candidates, &mut minima);
        let mut best = 0;
        for (t, &p) in potentials.iter().enumerate() {
            if p < potentials[best] {
                best = t;
            }
        }
        centres.row_mut(c).assign(&x.row(candidates[best]));
        potential = potentials[best];
        closest
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, m)| *m = minima[i * trials + best]);
    }
    Ok(centres)
}

/// `cumulative[i] = Σ_{j ≤ i} w_j·closest_j`, in fixed blocks (deterministic).
fn prefix_sums(closest: &[f32], weights: Option<&[f32]>, cumulative: &mut [f64]) {
    let totals: Vec<f64> = cumulative
        .par_chunks_mut(BLOCK)
        .enumerate()
        .map(|(b, out)| {
            let mut acc = 0.0;
            for (r, o) in out.iter_mut().enumerate() {
                let i = b * BLOCK + r;
                acc += weight(weights, i) * closest[i] as f64;
                *o = acc;
            }
            acc
        })
        .collect();
    let offsets: Vec<f64> = totals
        .iter()
        .scan(0.0, |acc, &t| {
            let start = *acc;
            *acc += t;
            Some(start)
        })
        .collect();
    cumulative
        .par_chunks_mut(BLOCK)
        .zip(offsets)
        .for_each(|(out, offset)| out.iter_mut().for_each(|v| *v += offset));
}

/// Draws a row with probability `w·D² / potential`, by binary search in the
/// prefix sums; uniform when every potential is zero.
fn sample_prefix(
    cumulative: &[f64],
    closest: &[f32],
    potential: f64,
    rng: &mut Xoshiro256PlusPlus,
) -> usize {
    if potential <= 0.0 {
        return rng.random_range(0..cumulative.len());
    }
    let target = rng.random::<f64>() * potential;
    let i = cumulative.partition_point(|&c| c <= target);
    if i < cumulative.len() {
        return i;
    }
    // Rounding left the target beyond the last positive potential.
    closest
        .iter()
        .rposition(|&d| d > 0.0)
        .unwrap_or(cumulative.len() - 1)
}

/// The potential each candidate would leave, `Σ w·min(closest, D²(x, c))`,
/// summed in fixed blocks; `minima[i·t + j]` gets row i's minimum with
/// candidate j.
fn score_candidates(
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    closest: &[f32],
    candidates: &[usize],
    minima: &mut [f32],
) -> Vec<f64> {
    let t = candidates.len();
    let centres: Vec<&[f32]> = candidates.iter().map(|&c| row(&x, c)).collect();
    let parts: Vec<Vec<f64>> = minima
        .par_chunks_mut(BLOCK * t)
        .enumerate()
        .map(|(b, out)| {
            let mut sums = vec![0.0f64; t];
            for (r, o) in out.chunks_mut(t).enumerate() {
                let i = b * BLOCK + r;
                let (xi, w) = (row(&x, i), weight(weights, i));
                for ((m, s), centre) in o.iter_mut().zip(&mut sums).zip(&centres) {
                    *m = closest[i].min(squared_distance(xi, centre));
                    *s += w * *m as f64;
                }
            }
            sums
        })
        .collect();
    let mut total = vec![0.0f64; t];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    total
}

/// k-means||: `ROUNDS` rounds, each keeping every row independently with
/// probability `min(1, ℓ·w·D²/ψ)` (ℓ = 2k); the candidates, weighted by the
/// rows closest to them, are reduced to k centres by weighted k-means++.
fn kmeans_parallel(
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    const ROUNDS: usize = 5;
    let n = x.nrows();
    let oversample = 2.0 * k as f64;
    let mut chosen = vec![rng.random_range(0..n)];
    let mut closest: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| squared_distance(row(&x, i), row(&x, chosen[0])))
        .collect();
    for round in 0..ROUNDS {
        cancel.check()?;
        let psi = block_sum(n, |i| weight(weights, i) * closest[i] as f64);
        if psi <= 0.0 {
            break;
        }
        let salt = rng.random::<u64>();
        let new: Vec<usize> = (0..n)
            .into_par_iter()
            .filter(|&i| {
                let p = oversample * weight(weights, i) * closest[i] as f64 / psi;
                unit_hash(salt, round as u64, i as u64) < p
            })
            .collect();
        for &c in &new {
            let centre = row(&x, c);
            closest
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, d)| *d = d.min(squared_distance(row(&x, i), centre)));
        }
        chosen.extend(new);
    }
    chosen.sort_unstable();
    chosen.dedup();
    if chosen.len() <= k {
        // Too few candidates (tiny or degenerate data): top up with k-means++.
        return kmeans_plus_plus(x, weights, k, rng, cancel);
    }
    let candidates = x.select(ndarray::Axis(0), &chosen);
    // Weight each candidate by the rows nearest to it, with the fast kernel.
    let cpu = CpuBackend::new().with_cancel(cancel.clone());
    let mut resident = cpu.upload(x, None)?;
    let nearest = resident.assign(candidates.view())?;
    let mut cand_weight = vec![0.0f32; chosen.len()];
    for (i, &label) in nearest.labels.iter().enumerate() {
        cand_weight[label as usize] += weight(weights, i) as f32;
    }
    kmeans_plus_plus(candidates.view(), Some(&cand_weight), k, rng, cancel)
}

/// A uniform number in [0, 1) from (salt, round, i): splitmix64, so sampling
/// is parallel yet independent of the thread schedule.
pub(super) fn unit_hash(salt: u64, round: u64, i: u64) -> f64 {
    let mut z =
        salt ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
