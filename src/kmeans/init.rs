//! Initial centroids: k-means++, k-means|| and random.
//!
//! The sampling logic runs on the host; every pass over the rows (each
//! row's distance to the newest centres, the trials' scores, the block sums
//! of the potential, k-means||'s draws) is a kernel of the resident's
//! backend ([`Resident::seed_start`] and the rest), on the GPU for a GPU
//! fit. Only block sums, scores and row indices cross to the host. Sums
//! are over fixed blocks added in order, so a seed always gives the same
//! centroids; the two backends give the same ones up to ties within f32
//! rounding.

use ndarray::{Array2, ArrayView2};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::params::{Init, InitSample};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BackendError, Cancel, Potential, Resident};
use crate::data::check_finite;

/// What a seeding works with: the data (standard layout) and weights, the
/// backend, the data as it already holds them (uploaded here when needed
/// and not given), and which rows to draw from.
pub(super) struct Seeding<'a> {
    pub backend: &'a dyn Backend,
    pub resident: Option<&'a mut dyn Resident>,
    pub x: ArrayView2<'a, f32>,
    pub weights: Option<&'a [f32]>,
    pub sample: InitSample,
    /// Check the rows seeding reads for NaN and infinities (a fit has
    /// checked every row already): only the sample when there is one.
    pub check_finite: bool,
}

/// The sample's row draws use their own stream of the seed, so seeding on
/// every row draws the same centres as before samples existed.
const SAMPLE_STREAM: u64 = 0x5eed_5a3b_1e00_0001;

/// Chooses `k` initial centroids for the rows of `s.x` (standard layout).
/// k-means++ and k-means|| draw from `s.sample`'s rows: a sample is
/// uploaded to the same backend as a second, small resident, so its
/// passes run there too. `cancel` is checked once per centre (k-means++)
/// or round (k-means||).
pub(super) fn initial_centroids(
    init: &Init,
    s: Seeding<'_>,
    k: usize,
    seed: u64,
    cancel: &Cancel,
) -> crate::Result<Array2<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (x, weights) = (s.x, s.weights);
    let n = x.nrows();
    let sampled = match init {
        Init::KMeansPlusPlus | Init::KMeansParallel => s.sample.rows(n, k, weights.is_some()),
        Init::Random | Init::Given(_) => None,
    };
    if let Some(m) = sampled {
        let mut picks_rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ SAMPLE_STREAM);
        let mut picks = rand::seq::index::sample(&mut picks_rng, n, m).into_vec();
        // In row order: the copy streams, and the result does not depend
        // on the order the sampler happened to return.
        picks.sort_unstable();
        let rows = x.select(ndarray::Axis(0), &picks);
        if s.check_finite && check_finite(rows.view(), &[]).is_err() {
            // The error should name the row in `x`, not in the sample.
            check_finite(x, &[])?;
        }
        let row_weights: Option<Vec<f32>> = weights.map(|w| picks.iter().map(|&i| w[i]).collect());
        let mut small = s.backend.upload(
            rows.view(),
            row_weights.as_deref().map(ndarray::ArrayView1::from),
        )?;
        return Ok(draw_centres(
            init,
            small.as_mut(),
            rows.view(),
            row_weights.as_deref(),
            k,
            &mut rng,
            cancel,
        )?);
    }
    if s.check_finite {
        check_finite(x, &[])?;
    }
    let mut uploaded = None;
    let resident = match s.resident {
        Some(r) => r,
        None => uploaded
            .insert(
                s.backend
                    .upload(x, weights.map(ndarray::ArrayView1::from))?,
            )
            .as_mut(),
    };
    let centres = draw_centres(init, resident, x, weights, k, &mut rng, cancel);
    // The per-row seeding state is not needed by the Lloyd steps.
    resident.seed_finish();
    Ok(centres?)
}

fn draw_centres(
    init: &Init,
    resident: &mut dyn Resident,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    match init {
        Init::Random => Ok(random(x, k, rng)),
        Init::KMeansPlusPlus => kmeans_plus_plus(resident, x, weights, k, rng, cancel),
        Init::KMeansParallel => kmeans_parallel(resident, x, weights, k, rng, cancel),
        Init::Given(c) => Ok(c.clone()),
    }
}

fn random(x: ArrayView2<f32>, k: usize, rng: &mut Xoshiro256PlusPlus) -> Array2<f32> {
    let picks = rand::seq::index::sample(rng, x.nrows(), k).into_vec();
    x.select(ndarray::Axis(0), &picks)
}

fn row<'a>(x: &'a ArrayView2<f32>, i: usize) -> &'a [f32] {
    let d = x.ncols();
    &x.as_slice().expect("standard layout")[i * d..(i + 1) * d]
}

/// A row drawn with probability `w·D² / potential` (uniformly when every
/// potential is zero): the block on the host, the row within it by the
/// backend.
fn draw(
    resident: &mut dyn Resident,
    potential: &Potential,
    trials: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<Vec<usize>, BackendError> {
    let total = potential.total();
    let n = resident.n_rows();
    let mut draws = Vec::with_capacity(trials);
    for _ in 0..trials {
        let target = rng.random::<f64>() * total;
        match potential.find(target).filter(|_| total > 0.0) {
            Some(at) => draws.push(at),
            None => return Ok((0..trials).map(|_| rng.random_range(0..n)).collect()),
        }
    }
    resident.seed_pick(&draws)
}

/// Greedy k-means++ as in scikit-learn: each step draws `2 + ln k`
/// candidates by `w·D²` and keeps the one that lowers the total potential
/// most. A step is three kernels: draw the trials (from the block sums),
/// score them (one pass over the rows the trials may lower), keep the best
/// (no pass on the CPU, which listed the rows each trial lowers; one on a
/// GPU).
pub(super) fn kmeans_plus_plus(
    resident: &mut dyn Resident,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    let (n, d) = x.dim();
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres = Array2::<f32>::zeros((k, d));
    let first = match weights {
        None => rng.random_range(0..n),
        Some(w) => by_weight(w, rng),
    };
    centres.row_mut(0).assign(&x.row(first));
    let mut potential = resident.seed_start(row(&x, first))?;
    for c in 1..k {
        cancel.check()?;
        let candidates = draw(resident, &potential, trials, rng)?;
        let scores = resident.seed_score(x.select(ndarray::Axis(0), &candidates).view())?;
        let mut best = 0;
        for (t, &p) in scores.iter().enumerate() {
            if p < scores[best] {
                best = t;
            }
        }
        centres.row_mut(c).assign(&x.row(candidates[best]));
        potential = resident.seed_keep(best)?;
    }
    Ok(centres)
}

/// A row drawn with probability proportional to its weight (host weights:
/// no distances are involved).
fn by_weight(w: &[f32], rng: &mut Xoshiro256PlusPlus) -> usize {
    let total: f64 = w.iter().map(|&v| v as f64).sum();
    if total <= 0.0 {
        return rng.random_range(0..w.len());
    }
    let target = rng.random::<f64>() * total;
    let mut acc = 0.0;
    for (i, &v) in w.iter().enumerate() {
        acc += v as f64;
        if acc > target {
            return i;
        }
    }
    w.iter().rposition(|&v| v > 0.0).unwrap_or(w.len() - 1)
}

/// k-means||: `ROUNDS` rounds, each keeping every row independently with
/// probability `min(1, ℓ·w·D²/ψ)` (ℓ = 2k), drawn by the backend; the
/// candidates, weighted by the rows closest to them (one Lloyd step's
/// weights: `O(candidates)` values back), are reduced to k centres by
/// weighted k-means++ on the host.
fn kmeans_parallel(
    resident: &mut dyn Resident,
    x: ArrayView2<f32>,
    weights: Option<&[f32]>,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    cancel: &Cancel,
) -> Result<Array2<f32>, BackendError> {
    const ROUNDS: usize = 5;
    const WEIGHT_SLICES: usize = 32;
    let n = x.nrows();
    let oversample = 2.0 * k as f64;
    let mut chosen = vec![rng.random_range(0..n)];
    let mut potential = resident.seed_start(row(&x, chosen[0]))?;
    for _ in 0..ROUNDS {
        cancel.check()?;
        let psi = potential.total();
        if psi <= 0.0 {
            break;
        }
        let new = resident.seed_oversample(oversample / psi, rng.random::<u32>())?;
        if new.is_empty() {
            continue;
        }
        potential = resident.seed_lower(x.select(ndarray::Axis(0), &new).view())?;
        chosen.extend(new);
    }
    chosen.sort_unstable();
    chosen.dedup();
    if chosen.len() <= k {
        // Too few candidates (tiny or degenerate data): top up with k-means++.
        return kmeans_plus_plus(resident, x, weights, k, rng, cancel);
    }
    let candidates = x.select(ndarray::Axis(0), &chosen);
    // Lloyd steps over slices of the rows, their weights added: a step's
    // per-block partials are `candidates × d` each (about 10k × d here),
    // so one step over every row at once would hold hundreds of them.
    let mut weight_sums = vec![0.0f64; chosen.len()];
    let slice = n.div_ceil(WEIGHT_SLICES).max(1);
    for start in (0..n).step_by(slice) {
        cancel.check()?;
        let part = resident.step_rows(start..(start + slice).min(n), candidates.view())?;
        weight_sums
            .iter_mut()
            .zip(&part.weights)
            .for_each(|(a, b)| *a += b);
    }
    let cand_weight: Vec<f32> = weight_sums.iter().map(|&w| w as f32).collect();
    let cpu = CpuBackend::new().with_cancel(cancel.clone());
    let mut small = cpu.upload(
        candidates.view(),
        Some(ndarray::ArrayView1::from(&cand_weight)),
    )?;
    kmeans_plus_plus(
        small.as_mut(),
        candidates.view(),
        Some(&cand_weight),
        k,
        rng,
        cancel,
    )
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
