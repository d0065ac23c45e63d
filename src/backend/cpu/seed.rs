//! The CPU's seeding kernels (k-means++, k-means||): every row's `D²` to the
//! nearest centre chosen so far lives here, beside the rows; the host side
//! (`kmeans::init`) sees only block sums and row indices.
//!
//! Scoring a k-means++ step is the hot loop: `t = 2 + ln k` trials against
//! every row. It is bound by memory, not arithmetic (a row of `4·d` bytes
//! feeds `2·d·t` flops), so what makes it fast is reading fewer rows.
//!
//! - **Rows that no trial can bring closer are skipped** (the triangle
//!   inequality, as in exact accelerated k-means++): each row remembers which
//!   chosen centre `a` its `D²` is to, and when `‖c − a‖ ≥ 2·D` trial `c`
//!   cannot be nearer than `D`. The test carries a margin larger than the f32
//!   rounding of the three distances involved ([`skip_bounds`]), so a
//!   skipped row is one whose computed distance would not have been below
//!   `D²` either: the minima, the scores and the kept `D²` are the same bits
//!   as when every row is computed (the GPU computes every row, and agrees
//!   as before: up to f32 rounding). Rows near a chosen centre are skipped;
//!   rows of clusters that hold no centre yet are not.
//! - **The rows still computed are packed**: once at most half of a block's
//!   rows are computed, the block keeps a copy of just those rows, in order,
//!   and reads them from there, contiguous, instead of scattered through the
//!   matrix (which waits on memory at every row). The copy is remade when
//!   the block's computed rows halve again, or when rows outside it must be
//!   computed, and is never more than half the block. A block with more
//!   rows computed reads them in place.
//! - **Trials go in the lanes, rows one after another** ([`score_rows`]):
//!   each listed row's values are broadcast against eight trials' values
//!   at a time, six rows at a time (two on the portable path), with even
//!   and odd values summed apart (the assignment kernels' order: distances
//!   are exact `Σ (x − c)²`, the same bits as before at each level). Only
//!   the listed rows are read, each once for all trials, in place or from
//!   the block's copy, with nothing transposed and no row copied into a
//!   tile; rows [`AHEAD`] down the list are prefetched wherever they are.
//!   (Until session 17 rows went sixteen at a time in the lanes, as
//!   transposed tiles: whole tiles were read and computed in place, and
//!   scattered rows copied into a tile first. With that session's other
//!   changes to this file, W5 took 1.5 to 1.8 times as long.)
//!
//! Scoring lists, per block and trial, the rows the trial lowers and their
//! new `D²` (found from the compare mask's bits). A trial's score in a
//! block is the block's potential less what its list lowers, in f64, so no
//! per-row minima are stored or summed (`t` values per row, most of them
//! unchanged `D²`, were once written and read back every step); keeping
//! the winner applies its list, with no second read of the rows.

use rayon::prelude::*;

use super::simd::{self, F32x16, F32x8, SimdKernel};
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
    /// Which centre each row's `D²` is to, while that is known: through
    /// k-means++'s steps, not after [`Seed::lowered`].
    owners: Option<Owners>,
    /// Per block, the copy of the rows it still computes (module docs).
    packed: Vec<Packed>,
    /// Per block, what the last scoring computed, for keeping a trial.
    scored: Vec<Scored>,
    /// The last scored trials, `t × d`.
    candidates: Vec<f32>,
    trials: usize,
    /// The last scored trials' skip bounds, `t × m` (empty without owners).
    bounds: Vec<f32>,
    /// Per block, `Σ w·D²` of `closest` as [`Seed::keep`] found it; empty
    /// when not known (before the first keep, after [`Seed::lowered`]).
    potential: Vec<f64>,
}

struct Owners {
    /// The centres chosen so far, `m × d`.
    centres: Vec<f32>,
    /// Per row, the index in `centres` of the centre its `D²` is to.
    of_row: Vec<u32>,
}

/// A block's copy of some of its rows; empty when the block is read in
/// place.
#[derive(Default)]
struct Packed {
    /// Block-relative rows, increasing.
    rows: Vec<u32>,
    /// Their values, `rows.len() × d`.
    values: Vec<f32>,
}

/// What the last scoring found in a block: the rows it computed, and per
/// trial the rows the trial brings closer with their new `D²` (few: those
/// nearer the trial than to every chosen centre). Keeping a trial applies
/// its list, without another read of the rows.
#[derive(Default)]
struct Scored {
    rows: Vec<u32>,
    /// Per trial.
    closer: Vec<Vec<(u32, f32)>>,
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

    fn block(&self, b: usize) -> std::ops::Range<usize> {
        b * BLOCK..((b + 1) * BLOCK).min(self.n())
    }

    fn block_x(&self, range: &std::ops::Range<usize>) -> &[f32] {
        &self.x[range.start * self.d..range.end * self.d]
    }
}

impl Seed {
    /// Starts over at one centre: every `D²` is the distance to it.
    pub fn start(&mut self, rows: &Rows, centre: &[f32]) -> Potential {
        let n = rows.n();
        *self = Seed {
            closest: vec![f32::INFINITY; n],
            owners: Some(Owners {
                centres: Vec::new(),
                of_row: vec![0; n],
            }),
            ..Seed::default()
        };
        self.score(rows, centre, 1);
        self.keep(rows, 0)
    }

    /// `D²` was lowered by other centres (`Resident::seed_lower`): which centre each row
    /// is nearest is no longer known, and the stored trials are stale.
    pub fn lowered(&mut self) {
        self.owners = None;
        self.trials = 0;
        self.potential.clear();
        self.packed.iter_mut().for_each(|p| *p = Packed::default());
        self.scored.clear();
    }

    /// The number of trials [`Seed::score`] last scored (0 when none are
    /// stored).
    pub fn trials(&self) -> usize {
        self.trials
    }

    /// Scores `candidates` (`t × d`, row-major) against every row: each
    /// trial's potential `Σ w·min(D², d²)`. `D²` is unchanged.
    pub fn score(&mut self, rows: &Rows, candidates: &[f32], t: usize) -> Vec<f64> {
        let (n, d) = (rows.n(), rows.d);
        assert!(self.closest.len() == n && t > 0 && candidates.len() == t * d);
        self.candidates = candidates.to_vec();
        self.trials = t;
        self.bounds = match &self.owners {
            Some(o) => skip_bounds(&o.centres, candidates, d),
            None => Vec::new(),
        };
        self.packed.resize_with(n.div_ceil(BLOCK), Packed::default);
        self.scored.resize_with(n.div_ceil(BLOCK), Scored::default);
        // A row is computed when some trial might bring it closer.
        let m = self.bounds.len() / t;
        let any: Vec<f32> = (0..m)
            .map(|a| {
                (0..t)
                    .map(|j| self.bounds[j * m + a])
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();
        let of_row = self
            .owners
            .as_ref()
            .filter(|_| m > 0)
            .map(|o| &o.of_row[..]);
        let closest = &self.closest;
        let trial_lanes = trials_in_lanes(candidates, t, d);
        let known = &self.potential[..];
        let known = (known.len() == self.packed.len()).then_some(known);
        let parts: Vec<Vec<f64>> = self
            .packed
            .par_iter_mut()
            .zip(self.scored.par_iter_mut())
            .enumerate()
            .map_init(Vec::new, |from, (b, (packed, scored))| {
                let range = rows.block(b);
                let (x, near) = (rows.block_x(&range), &closest[range.clone()]);
                let owners = of_row.map(|o| (&o[range.clone()], &any[..]));
                let todo = &mut scored.rows;
                rows_to_compute(owners, near, todo);
                repack(todo, x, d, packed, from);
                let potential = match known {
                    Some(sums) => sums[b],
                    None => block_potential(rows, range.start, near),
                };
                // Cleared, and shrunk once far larger than needed: early
                // trials lower many rows, later ones few.
                for list in scored.closer.iter_mut() {
                    if list.capacity() > 4 * list.len() + 1024 {
                        *list = Vec::new();
                    }
                    list.clear();
                }
                scored.closer.resize_with(t, Vec::new);
                simd::dispatch(ScoreRows {
                    d,
                    t,
                    trials: &trial_lanes,
                    rows: todo,
                    from,
                    closest: near,
                    closer: &mut scored.closer,
                });
                trial_scores(
                    &scored.closer[..t],
                    near,
                    rows.weights.map(|w| &w[range.clone()]),
                    potential,
                )
            })
            .collect();
        let mut total = vec![0.0f64; t];
        for part in parts {
            total.iter_mut().zip(part).for_each(|(a, p)| *a += p);
        }
        total
    }

    /// Lowers `D²` by trial `j` of the last [`Seed::score`]; returns the new
    /// potential. The caller checks `j < trials()`.
    pub fn keep(&mut self, rows: &Rows, j: usize) -> Potential {
        let (n, d) = (rows.n(), rows.d);
        assert!(j < self.trials && self.closest.len() == n);
        let new_owner = self
            .owners
            .as_ref()
            .map_or(0, |o| (o.centres.len() / d.max(1)) as u32);
        let mut owner_blocks: Vec<Option<&mut [u32]>> = match &mut self.owners {
            Some(o) => o.of_row.chunks_mut(BLOCK).map(Some).collect(),
            None => (0..n.div_ceil(BLOCK)).map(|_| None).collect(),
        };
        let sums: Vec<f64> = self
            .closest
            .par_chunks_mut(BLOCK)
            .zip(owner_blocks.par_iter_mut())
            .zip(self.scored.par_iter())
            .enumerate()
            .map(|(b, ((near, owner), scored))| {
                for &(r, v) in &scored.closer[j] {
                    near[r as usize] = v;
                    if let Some(owner) = owner.as_deref_mut() {
                        owner[r as usize] = new_owner;
                    }
                }
                block_potential(rows, b * BLOCK, near)
            })
            .collect();
        drop(owner_blocks);
        if let Some(o) = &mut self.owners {
            o.centres
                .extend_from_slice(&self.candidates[j * d..(j + 1) * d]);
        }
        // The other trials were scored against the old D².
        self.trials = 0;
        self.potential.clone_from(&sums);
        Potential {
            starts: (0..n).step_by(BLOCK).collect(),
            sums,
        }
    }
}

/// Fills `todo` with the block-relative indices of the rows to compute,
/// given the block's `D²` (`near`): with `owners` (each row's centre and a
/// bound per centre), the rows with `D²` above their centre's bound; without,
/// every row.
fn rows_to_compute(owners: Option<(&[u32], &[f32])>, near: &[f32], todo: &mut Vec<u32>) {
    todo.clear();
    match owners {
        None => todo.extend(0..near.len() as u32),
        Some((of_row, bound)) => simd::dispatch(RowsToCompute {
            of_row,
            bound,
            near,
            todo,
        }),
    }
}

/// [`rows_to_compute`] with owners, sixteen rows at a time: the bounds
/// gathered by owner, one compare, and the rows whose lanes are set
/// written out from the mask's bits. Late in k-means++ most sixteens have
/// none, and the scalar loop it replaced (a tenth of W5's time) went row
/// by row.
struct RowsToCompute<'a> {
    of_row: &'a [u32],
    bound: &'a [f32],
    near: &'a [f32],
    todo: &'a mut Vec<u32>,
}

impl SimdKernel for RowsToCompute<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        let RowsToCompute {
            of_row,
            bound,
            near,
            todo,
        } = self;
        let m = near.len();
        assert!(of_row.len() == m && !bound.is_empty());
        todo.resize(m, 0);
        let mut len = 0;
        let whole = m / LANES * LANES;
        for r0 in (0..whole).step_by(LANES) {
            let owners: &[u32; LANES] = of_row[r0..r0 + LANES].try_into().expect("sixteen");
            // SAFETY: dispatched with S's CPU features; `near` holds
            // sixteen values from `r0` (r0 + 16 ≤ whole ≤ m).
            let bits = unsafe {
                S::bits(S::lt(
                    S::gather(bound, owners),
                    S::load(near.as_ptr().add(r0)),
                ))
            };
            // Branch-free within a sixteen: how many lanes are set has no
            // pattern to predict while many rows are computed.
            // (Each write is at most at its own row, below m.)
            if bits != 0 {
                for q in 0..LANES {
                    todo[len] = (r0 + q) as u32;
                    len += ((bits >> q) & 1) as usize;
                }
            }
        }
        // Branch-free: which rows are computed has no pattern to predict.
        for r in whole..m {
            todo[len] = r as u32;
            len += (bound[of_row[r] as usize] < near[r]) as usize;
        }
        todo.truncate(len);
    }
}

/// Where each of `todo`'s rows is read: from `packed` where it holds the
/// row, else in place in the block's `x`. Both lists are increasing, so one
/// walk finds them all.
fn sources<'a>(
    todo: &'a [u32],
    x: &'a [f32],
    d: usize,
    packed: &'a Packed,
) -> impl Iterator<Item = (u32, &'a [f32])> + 'a {
    let mut p = 0;
    todo.iter().map(move |&r| {
        while p < packed.rows.len() && packed.rows[p] < r {
            p += 1;
        }
        let row = if packed.rows.get(p) == Some(&r) {
            &packed.values[p * d..(p + 1) * d]
        } else {
            &x[r as usize * d..(r as usize + 1) * d]
        };
        (r, row)
    })
}

/// Updates a block's copy of its computed rows before scoring, and lists
/// in `from` where each of `todo`'s rows is read. The copy is made once at
/// most half the block is computed, remade when the computed rows are half
/// of those copied or rows not in the copy are more than an eighth of it,
/// and dropped when more than half the block is computed again.
fn repack(todo: &[u32], x: &[f32], d: usize, packed: &mut Packed, from: &mut Vec<*const f32>) {
    let m = x.len() / d.max(1);
    from.clear();
    if todo.len() * 2 > m {
        *packed = Packed::default();
        from.extend(todo.iter().map(|&r| x[r as usize * d..].as_ptr()));
        return;
    }
    if todo.is_empty() {
        // Nothing left to compute here: the copy is freed.
        *packed = Packed::default();
        return;
    }
    if !packed.rows.is_empty() {
        from.extend(sources(todo, x, d, packed).map(|(_, row)| row.as_ptr()));
        let copied = packed.values.as_ptr_range();
        let missing = from.iter().filter(|p| !copied.contains(p)).count();
        if todo.len() * 2 > packed.rows.len() && missing * 8 <= packed.rows.len() {
            return;
        }
    }
    let mut values = Vec::with_capacity(todo.len() * d);
    for (_, row) in sources(todo, x, d, packed) {
        values.extend_from_slice(row);
    }
    *packed = Packed {
        rows: todo.to_vec(),
        values,
    };
    from.clear();
    from.extend(packed.values.chunks_exact(d).map(<[f32]>::as_ptr));
}

/// Per trial `j` and chosen centre `a` (`t × m`): a row whose `D²` is to `a`
/// and at most this bound cannot be brought closer by `j`.
///
/// The bound is `‖c − a‖² / (4(1 + ε))`. Exactly, `‖c − a‖ ≥ 2D` gives
/// `‖x − c‖ ≥ D`. Each of the three squared distances is computed in f32
/// with a relative error of at most about `(d + 2)·2⁻²⁴`, and the margin `ε`
/// (at least `2⁻¹⁰`, and `8(d + 2)·2⁻²⁴` for wide rows) exceeds three times
/// that, so a skipped row's computed distance is never below its computed
/// `D²`, and `min` would have kept `D²` anyway.
///
/// The argument needs relative errors, so where they do not hold the bound
/// is 0 (only rows at `D²` = 0 are skipped, which is always right): a
/// distance that overflowed or is not a number, one small enough that
/// subnormal terms carry absolute errors (below `2⁻¹⁰⁰`), and rows so wide
/// (`(d + 2)·2⁻²⁴ > 1/64`) that first-order error bounds stop holding.
fn skip_bounds(centres: &[f32], candidates: &[f32], d: usize) -> Vec<f32> {
    let m = centres.len() / d.max(1);
    let t = candidates.len() / d.max(1);
    let error = (d as f64 + 2.0) * 2f64.powi(-24);
    if d == 0 || error > 1.0 / 64.0 {
        return vec![0.0; t * m];
    }
    let eps = (1.0f64 / 1024.0).max(8.0 * error);
    let scale = (0.25 / (1.0 + eps)) as f32;
    let smallest = 2f32.powi(-100);
    candidates
        .chunks_exact(d)
        .flat_map(|c| {
            centres.chunks_exact(d).map(move |a| {
                let dist: f32 = c.iter().zip(a).map(|(x, y)| (x - y) * (x - y)).sum();
                if dist.is_finite() && dist >= smallest {
                    dist * scale
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// The potential of `closest`: Σ w·D² per block, in f64.
pub(super) fn potential(rows: &Rows, closest: &[f32]) -> Potential {
    let sums = closest
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, block)| block_potential(rows, b * BLOCK, block))
        .collect();
    Potential {
        starts: (0..closest.len()).step_by(BLOCK).collect(),
        sums,
    }
}

/// Σ w·D² of one block starting at row `start`, in f64; four partial sums
/// break the add chain, in a fixed order.
fn block_potential(rows: &Rows, start: usize, block: &[f32]) -> f64 {
    sum_by_four(block, |r, &c| rows.weight(start + r) as f64 * c as f64)
}

/// `Σ term(i, items[i])` in f64, term `i` into partial sum `i mod 4` (no
/// add waits on the one before), then the sums pairwise. Terms are taken
/// in order, four at a time, so the sums stay in registers: indexed by
/// `i % 4` they were kept on the stack, a store and a reload per term.
#[inline(always)]
fn sum_by_four<T>(items: &[T], mut term: impl FnMut(usize, &T) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    for (i, chunk) in items.chunks(4).enumerate() {
        for (q, sum) in acc.iter_mut().enumerate() {
            *sum += chunk.get(q).map_or(0.0, |v| term(4 * i + q, v));
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
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

/// Trials scored at once: one per lane of an eight-lane vector.
const TRIAL_LANES: usize = 8;

/// The trials (`t × d`, row-major) with trials in the lanes: per group of
/// eight, `d` vectors of eight (`out[(g·d + j)·8 + l]` is trial `8g + l`'s
/// value `j`), padding lanes zero.
fn trials_in_lanes(candidates: &[f32], t: usize, d: usize) -> Vec<f32> {
    let groups = t.div_ceil(TRIAL_LANES);
    let mut out = vec![0.0f32; groups * d * TRIAL_LANES];
    for (trial, c) in candidates.chunks_exact(d.max(1)).take(t).enumerate() {
        let (g, l) = (trial / TRIAL_LANES, trial % TRIAL_LANES);
        for (j, &v) in c.iter().enumerate() {
            out[(g * d + j) * TRIAL_LANES + l] = v;
        }
    }
    out
}

/// Rows ahead of the one being scored whose lines are asked for: the
/// rows a block computes are listed, so this works the same for rows read
/// in place, from a copy, or scattered.
const AHEAD: usize = 32;

/// Built only by [`Seed::score`] (and tests): the rows of a block to
/// score, each by its first value's address.
struct ScoreRows<'a> {
    d: usize,
    t: usize,
    /// [`trials_in_lanes`].
    trials: &'a [f32],
    /// Block-relative rows, increasing.
    rows: &'a [u32],
    /// Per row in `rows`, where its `d` values are (in the block or its
    /// copy).
    from: &'a [*const f32],
    /// The block's `D²`.
    closest: &'a [f32],
    /// Per trial, the rows it brings closer (`d² < D²`) and their `d²`,
    /// appended in row order.
    closer: &'a mut [Vec<(u32, f32)>],
}

impl SimdKernel for ScoreRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        // SAFETY: dispatched with S's CPU features; `from` holds pointers
        // to `d` readable values each, into the block or its copy as
        // [`repack`] left them, and every slice is sized in [`score_rows`]
        // before any load.
        unsafe {
            if <S::Half as F32x8>::REGISTERS >= 16 {
                score_rows::<S::Half, 6>(self)
            } else {
                score_rows::<S::Half, 2>(self)
            }
        }
    }
}

/// Scores `R` rows at a time against eight trials in the lanes of one
/// vector: per value, a broadcast of the row's value, a subtraction and an
/// FMA, with even and odd values summed apart and added last, as the
/// assignment kernels do at the same level, in the same order. Only the
/// listed rows are read, each once for all trials (more than eight go in
/// further groups of eight while the rows are in L1), with nothing
/// transposed.
///
/// # Safety
/// The caller was compiled with `H`'s CPU features, and each of `k.from`'s
/// pointers has `k.d` readable values. Shapes and row indices are checked
/// here.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn score_rows<H: F32x8, const R: usize>(k: ScoreRows) {
    let (d, t, n) = (k.d, k.t, k.rows.len());
    let groups = t.div_ceil(TRIAL_LANES);
    assert!(
        d > 0
            && k.trials.len() >= groups * d * TRIAL_LANES
            && k.closer.len() >= t
            && k.from.len() == n
            && k.rows.iter().all(|&r| (r as usize) < k.closest.len())
    );
    let mut lanes = [0.0f32; TRIAL_LANES];
    let one = H::splat(1.0);
    let mut i = 0;
    while i < n {
        let count = R.min(n - i);
        for &ahead in k.from.iter().skip(i + AHEAD).take(count) {
            let mut j = 0;
            while j < d {
                simd::prefetch(ahead.wrapping_add(j));
                j += LANES;
            }
            simd::prefetch(ahead.wrapping_add(d - 1));
        }
        // A short last chunk repeats its first row; the repeats are not
        // reported.
        let p: [*const f32; R] = chunk(k.from, i);
        let row: [u32; R] = chunk(k.rows, i);
        // Each trial's list grows in row order whatever the groups.
        for g in 0..groups {
            let c = k.trials.as_ptr().add(g * d * TRIAL_LANES);
            let valid = if t - g * TRIAL_LANES >= TRIAL_LANES {
                (1u32 << TRIAL_LANES) - 1
            } else {
                (1u32 << (t - g * TRIAL_LANES)) - 1
            };
            let mut even = [H::splat(0.0); R];
            let mut odd = [H::splat(0.0); R];
            let mut j = 0;
            while j + 1 < d {
                let (c0, c1) = (
                    H::load(c.add(j * TRIAL_LANES)),
                    H::load(c.add((j + 1) * TRIAL_LANES)),
                );
                for q in 0..R {
                    let a = H::sub(H::splat(*p[q].add(j)), c0);
                    even[q] = H::fma(a, a, even[q]);
                    let b = H::sub(H::splat(*p[q].add(j + 1)), c1);
                    odd[q] = H::fma(b, b, odd[q]);
                }
                j += 2;
            }
            if j < d {
                let c0 = H::load(c.add(j * TRIAL_LANES));
                for q in 0..R {
                    let a = H::sub(H::splat(*p[q].add(j)), c0);
                    even[q] = H::fma(a, a, even[q]);
                }
            }
            // All R rows compared in registers first, with one branch for
            // the lot: late in k-means++ most rows are lowered by no trial,
            // and a branch per row (with the sums spilled around it) was a
            // sixth of W5 on a Zen 1 core.
            let mut dist = [H::splat(0.0); R];
            let mut bits = [0u32; R];
            let mut any = 0;
            for q in 0..R {
                dist[q] = H::fma(one, even[q], odd[q]);
                let near = H::splat(k.closest[row[q] as usize]);
                bits[q] = H::bits(H::lt(dist[q], near)) & valid;
                any |= bits[q];
            }
            if any == 0 {
                continue;
            }
            let closer = &mut k.closer[g * TRIAL_LANES..];
            for q in 0..count {
                let mut bits = bits[q];
                if bits == 0 {
                    continue;
                }
                dist[q].store(lanes.as_mut_ptr());
                while bits != 0 {
                    let l = bits.trailing_zeros() as usize;
                    closer[l].push((row[q], lanes[l]));
                    bits &= bits - 1;
                }
            }
        }
        i += R;
    }
}

/// `items[i..i + R]`, or where fewer are left, those and then `items[i]`
/// repeated. `i < items.len()`.
#[inline(always)]
fn chunk<T: Copy, const R: usize>(items: &[T], i: usize) -> [T; R] {
    match items.get(i..i + R) {
        Some(whole) => whole.try_into().expect("R items"),
        None => {
            let mut out = [items[i]; R];
            out[..items.len() - i].copy_from_slice(&items[i..]);
            out
        }
    }
}

/// Each trial's potential in a block from what it lowers: the block's
/// potential less the listed rows' drops, in f64 in the list's (row)
/// order, four partial sums so that no add waits on the one before. The
/// same additions whichever rows were skipped, since a skipped row is never
/// on a list.
fn trial_scores(
    closer: &[Vec<(u32, f32)>],
    closest: &[f32],
    weights: Option<&[f32]>,
    potential: f64,
) -> Vec<f64> {
    let weight = |r: usize| weights.map_or(1.0, |w| w[r]) as f64;
    closer
        .iter()
        .map(|list| {
            if potential.is_finite() {
                return potential
                    - sum_by_four(list, |_, &(r, v)| {
                        weight(r as usize) * (closest[r as usize] as f64 - v as f64)
                    });
            }
            // Some D² is infinite (a distance overflowed f32), and there is
            // no difference to take from it: Σ w·min(D², d²) row by row.
            let mut lowered = list.iter().peekable();
            sum_by_four(closest, |r, &near| {
                let v = match lowered.peek() {
                    Some(&&(row, v)) if row as usize == r => {
                        lowered.next();
                        v
                    }
                    _ => near,
                };
                weight(r) * v as f64
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows each trial brings closer, as `run` (the kernel at one
    /// level) lists them.
    fn score_at(
        run: &dyn Fn(ScoreRows),
        d: usize,
        t: usize,
        trials: &[f32],
        rows: &[u32],
        from: &[*const f32],
        closest: &[f32],
    ) -> Vec<Vec<(u32, f32)>> {
        let mut closer = vec![Vec::new(); t];
        run(ScoreRows {
            d,
            t,
            trials,
            rows,
            from,
            closest,
            closer: &mut closer,
        });
        closer
    }

    /// The scoring kernel on every vector type the CPU runs, against scalar
    /// loops: an odd d, trials fewer than a vector's lanes and more (a
    /// second, partial group), a last chunk shorter than the kernel's rows,
    /// weights, and every place a row is read from: in place, a packed copy,
    /// and a copy holding only some of the rows (each read from where it is).
    #[test]
    fn every_vector_path_scores_as_scalar_loops() {
        let (n, d) = (70, 7);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 3) as f32).collect();
        let closest: Vec<f32> = (0..n).map(|i| (i * 29 % 1200) as f32).collect();
        // Rows 0–15, none of 16–31, then every third row skipped: 41 rows.
        let todo: Vec<u32> = (0..n as u32)
            .filter(|&r| r < 16 || (r >= 32 && r % 3 != 1))
            .collect();
        let copy = |rows: Vec<u32>| Packed {
            values: rows
                .iter()
                .flat_map(|&r| x[r as usize * d..(r as usize + 1) * d].to_vec())
                .collect(),
            rows,
        };
        let half: Vec<u32> = todo.iter().copied().filter(|r| r % 2 == 0).collect();
        let layouts = [
            ("in place", Packed::default()),
            ("packed", copy(todo.clone())),
            ("half packed", copy(half)),
        ];
        for t in [6, 11] {
            let cands: Vec<f32> = (0..t * d).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
            let trials = trials_in_lanes(&cands, t, d);
            // Integer data: every distance and sum is exact.
            let dist = |i: usize, j: usize| -> f32 {
                (0..d)
                    .map(|c| (x[i * d + c] - cands[j * d + c]).powi(2))
                    .sum()
            };
            let want_closer: Vec<Vec<(u32, f32)>> = (0..t)
                .map(|j| {
                    (todo.iter())
                        .map(|&r| (r, dist(r as usize, j)))
                        .filter(|&(r, v)| v < closest[r as usize])
                        .collect()
                })
                .collect();
            let potential: f64 = (0..n).map(|i| w[i] as f64 * closest[i] as f64).sum();
            let want: Vec<f64> = (0..t)
                .map(|j| {
                    (0..n)
                        .map(|i| {
                            let listed = todo.contains(&(i as u32));
                            let v = if listed {
                                dist(i, j).min(closest[i])
                            } else {
                                closest[i]
                            };
                            w[i] as f64 * v as f64
                        })
                        .sum()
                })
                .collect();
            assert!(want_closer
                .iter()
                .all(|l| !l.is_empty() && l.len() < todo.len()));
            for (layout, packed) in &layouts {
                let from: Vec<*const f32> = sources(&todo, &x, d, packed)
                    .map(|(_, row)| row.as_ptr())
                    .collect();
                let check = |name: &str, run: &dyn Fn(ScoreRows)| {
                    let closer = score_at(run, d, t, &trials, &todo, &from, &closest);
                    assert_eq!(
                        closer, want_closer,
                        "{name}, {layout}, t = {t}: rows brought closer"
                    );
                    let got = trial_scores(&closer, &closest, Some(&w), potential);
                    assert_eq!(got, want, "{name}, {layout}, t = {t}: potentials");
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
    }

    /// On non-integer data each distance is the bits of one order of
    /// operations: per trial and value `x − c`, its square added by FMA to
    /// an even or an odd sum by the value's parity, then the two sums
    /// added. Scalar code in that order (fused at the x86 levels, unfused on
    /// the portable path, as its `fma` is) gives the same bits, for eleven
    /// trials (a second, partial group of lanes) and an odd d.
    #[test]
    fn distances_are_one_order_of_operations_at_every_level() {
        let (n, d, t) = (53, 11, 11);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        };
        let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let cands: Vec<f32> = (0..t * d).map(|_| next()).collect();
        // Every distance is below an infinite D², so every row is listed.
        let closest = vec![f32::INFINITY; n];
        let todo: Vec<u32> = (0..n as u32).collect();
        let from: Vec<*const f32> = todo.iter().map(|&r| x[r as usize * d..].as_ptr()).collect();
        let trials = trials_in_lanes(&cands, t, d);
        let reference = |fused: bool, i: usize, j: usize| -> u32 {
            let fma = |a: f32, b: f32, c: f32| if fused { a.mul_add(b, c) } else { a * b + c };
            let (mut even, mut odd) = (0.0f32, 0.0f32);
            for v in 0..d {
                let a = x[i * d + v] - cands[j * d + v];
                if v % 2 == 0 {
                    even = fma(a, a, even);
                } else {
                    odd = fma(a, a, odd);
                }
            }
            fma(1.0, even, odd).to_bits()
        };
        // The two orders differ on this data, so the test tells them apart.
        assert!((0..n).any(|i| (0..t).any(|j| reference(true, i, j) != reference(false, i, j))));
        let check = |name: &str, fused: bool, run: &dyn Fn(ScoreRows)| {
            let closer = score_at(run, d, t, &trials, &todo, &from, &closest);
            for (j, list) in closer.iter().enumerate() {
                let got: Vec<(u32, u32)> = list.iter().map(|&(r, v)| (r, v.to_bits())).collect();
                let want: Vec<(u32, u32)> =
                    (0..n).map(|i| (i as u32, reference(fused, i, j))).collect();
                assert_eq!(got, want, "{name}: trial {j}");
            }
        };
        check("portable", false, &|k| k.run::<simd::Portable>());
        #[cfg(target_arch = "x86_64")]
        {
            if simd::detected() >= simd::Level::Avx2 {
                check("avx2", true, &|k| k.run::<simd::Avx2>());
            }
            if simd::detected() >= simd::Level::Avx512 {
                check("avx512", true, &|k| k.run::<simd::Avx512>());
            }
        }
    }

    /// Blobs in 8 dimensions, non-integer, so rounding is real: enough rows
    /// for several blocks.
    fn blobs(n: usize, d: usize) -> Vec<f32> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let centres: Vec<f32> = (0..16 * d).map(|_| next() * 10.0).collect();
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            let c = (i * 7) % 16;
            for j in 0..d {
                x.push(centres[c * d + j] + next() - 0.5);
            }
        }
        x
    }

    /// Skipping rows by their owners changes no bit: twenty greedy steps with
    /// owners known and unknown give the same scores, `D²` and potentials,
    /// while most rows are skipped by the end.
    #[test]
    fn skipping_rows_changes_no_bit() {
        let (n, d, t) = (3 * BLOCK + 123, 8, 5);
        let x = blobs(n, d);
        let rows = Rows {
            x: &x,
            d,
            weights: None,
        };
        let (mut pruned, mut full) = (Seed::default(), Seed::default());
        assert_eq!(pruned.start(&rows, &x[..d]).sums, {
            let p = full.start(&rows, &x[..d]);
            full.lowered();
            p.sums
        });
        let mut packed_blocks = 0;
        for step in 0..40 {
            let picks: Vec<usize> = (0..t).map(|q| (step * 7919 + q * 104_729) % n).collect();
            let cands: Vec<f32> = picks
                .iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
                .collect();
            let (a, b) = (pruned.score(&rows, &cands, t), full.score(&rows, &cands, t));
            assert_eq!(a, b, "step {step}: scores");
            let best = (step * 3) % t;
            let (pa, pb) = (pruned.keep(&rows, best), full.keep(&rows, best));
            assert_eq!(pa.sums, pb.sums, "step {step}: potentials");
            assert_eq!(pruned.closest, full.closest, "step {step}: D²");
            packed_blocks =
                packed_blocks.max(pruned.packed.iter().filter(|p| !p.rows.is_empty()).count());
            assert!(full.packed.iter().all(|p| p.rows.is_empty()));
        }
        // The test is only worth something if rows really were skipped (by
        // the first trial's bounds, at least), and read from a block's copy.
        let o = pruned.owners.as_ref().expect("owners kept");
        let any: Vec<f32> = (0..o.centres.len() / d).map(|a| pruned.bounds[a]).collect();
        let mut todo = Vec::new();
        rows_to_compute(
            Some((&o.of_row[..BLOCK], &any)),
            &pruned.closest[..BLOCK],
            &mut todo,
        );
        assert!(
            todo.len() < BLOCK / 2,
            "{} of {BLOCK} rows computed",
            todo.len()
        );
        assert!(packed_blocks > 0, "no block was ever packed");
    }

    /// Where the margin argument does not hold (distances that overflow, or
    /// so small that subnormal terms round absolutely) no row is skipped
    /// wrongly: from every start, every single trial leaves the same `D²`
    /// with owners as without.
    #[test]
    fn extreme_magnitudes_skip_nothing_wrongly() {
        let tiny = 2f32.powi(-75);
        let x = [
            0.0,
            1.8e19,
            1.85e19,
            -1e19,
            1e19,
            1.549 * tiny,
            2.569 * tiny,
            3.0e38,
            -3.0e38,
        ];
        let rows = Rows {
            x: &x,
            d: 1,
            weights: None,
        };
        for start in 0..x.len() {
            for trial in 0..x.len() {
                let (mut pruned, mut full) = (Seed::default(), Seed::default());
                pruned.start(&rows, &x[start..start + 1]);
                full.start(&rows, &x[start..start + 1]);
                full.lowered();
                let c = &x[trial..trial + 1];
                let score = pruned.score(&rows, c, 1);
                assert_eq!(score, full.score(&rows, c, 1));
                // What lowering would leave, summed directly: an infinite
                // D² gives an infinite score, never a NaN.
                let direct: f64 = x
                    .iter()
                    .zip(&pruned.closest)
                    .map(|(&v, &near)| ((v - c[0]) * (v - c[0])).min(near) as f64)
                    .sum();
                assert_eq!(score, [direct], "start {start}, trial {trial}");
                pruned.keep(&rows, 0);
                full.keep(&rows, 0);
                let bits = |s: &Seed| s.closest.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&pruned), bits(&full), "start {start}, trial {trial}");
            }
        }
    }
}
