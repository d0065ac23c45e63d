//! The CPU assignment microkernels: distance and argmin fused, no `n × k`
//! matrix in memory. Two kernels share the bookkeeping: one for small k
//! (rows in lanes, [`nearest_in_lanes`]) and one for larger k (centroids in
//! lanes, below).
//!
//! For larger k, scores are `½‖c‖² − x·c` (half the squared distance
//! less `½‖x‖²`, which does not change the argmin), so
//! the inner loop is a register-blocked matrix product: a tile of `R` rows
//! against a panel of `V × LANES` centroids, stored negated and transposed
//! (`[d][V][LANES]`) so that every step is one broadcast and `V` vector FMAs
//! per row. The tile is sized to the register file: `R × V` accumulators,
//! `V` panel vectors and a broadcast must fit, or the accumulators spill
//! and every FMA waits on a store and a reload. With AVX-512's 32 registers
//! that is 4 × 4 (64 centroids); with AVX2's 16 (8 of our 16-lane values)
//! it is 6 × 1, twelve 8-lane accumulators: 4 × 4 there spilled 24 of its
//! 32 and ran at a third of the FMA peak. The best and second-best scores are tracked per lane and reduced
//! across lanes once per row. The winner's distance is then recomputed exactly
//! as `Σ (x − c)²`, so reported distances do not suffer the expansion's
//! cancellation.

use ndarray::ArrayView2;

use super::simd::{self, F32x16, F32x8, SimdKernel};

pub const LANES: usize = 16;
/// The most rows of a panel tile ([`PackedCentroids::tile_rows`]).
const MAX_ROWS: usize = 6;
/// Up to this many centroids, rows go in the lanes instead of centroids
/// ([`nearest_in_lanes`]): a panel would leave lanes idle, and the per-row
/// horizontal reductions and distance recomputation would dominate.
pub const SMALL_K: usize = 16;

/// Centroids packed into panels for the microkernel.
pub struct PackedCentroids<'c> {
    pub centroids: ArrayView2<'c, f32>,
    /// Vectors per panel: 1, 2 or 4 (a panel holds `v × 16` centroids).
    v: usize,
    n_panels: usize,
    /// `n_panels × d × v` vectors of LANES values: each centroid negated,
    /// so that a score, `½‖c‖² − x·c`, is the panel product plus
    /// `norms`: an add, where `‖c‖² − 2·x·c` was an FMA (on cores
    /// whose adds have pipes of their own, Zen's, one operation per row
    /// and panel off the FMA pipes). Negation and halving are exact, so
    /// scores are the old ones halved and order and tie alike; a panel of
    /// `−2c` would have overflowed where `x·c` passes f32's half maximum
    /// (coordinates near 1e19) and picked a wrong label. Padding
    /// centroids are 0.
    panels: Vec<[f32; LANES]>,
    /// `n_panels × v` vectors of ½‖c‖²; padding is +∞ so it never wins.
    norms: Vec<[f32; LANES]>,
    /// For the small-k kernel instead of panels: the centroids row-major,
    /// zero-padded to a whole number of [`GROUP`]s.
    grouped: Vec<f32>,
}

impl<'c> PackedCentroids<'c> {
    pub fn new(centroids: ArrayView2<'c, f32>) -> Self {
        Self::for_level(centroids, simd::level())
    }

    /// Packed for the kernels of `level` (the panel width depends on it).
    fn for_level(centroids: ArrayView2<'c, f32>, level: simd::Level) -> Self {
        let (k, d) = centroids.dim();
        if k <= SMALL_K {
            let mut grouped = vec![0.0; k.div_ceil(GROUP) * GROUP * d];
            for (dst, &v) in grouped.iter_mut().zip(centroids.iter()) {
                *dst = v;
            }
            return Self {
                centroids,
                v: 0,
                n_panels: 0,
                panels: Vec::new(),
                norms: Vec::new(),
                grouped,
            };
        }
        let v = match k {
            _ if level < simd::Level::Avx512 => 1,
            0..=16 => 1,
            17..=32 => 2,
            _ => 4,
        };
        let width = v * LANES;
        let n_panels = k.div_ceil(width);
        let mut panels = vec![[0.0; LANES]; n_panels * d * v];
        let mut norms = vec![[f32::INFINITY; LANES]; n_panels * v];
        for (c, row) in centroids.rows().into_iter().enumerate() {
            let (p, slot) = (c / width, c % width);
            let (vi, lane) = (slot / LANES, slot % LANES);
            for (j, &value) in row.iter().enumerate() {
                panels[(p * d + j) * v + vi][lane] = -value;
            }
            norms[p * v + vi][lane] = 0.5 * row.iter().map(|&x| x * x).sum::<f32>();
        }
        Self {
            centroids,
            v,
            n_panels,
            panels,
            norms,
            grouped: Vec::new(),
        }
    }

    /// Whether the small-k kernel runs (see [`SMALL_K`]).
    fn rows_in_lanes(&self) -> bool {
        self.centroids.nrows() <= SMALL_K
    }

    /// Rows per tile: 16 in the lanes for small k; for panels, as many as
    /// the registers hold beside a panel of `v` vectors (module docs).
    pub fn tile_rows(&self) -> usize {
        match (self.rows_in_lanes(), self.v) {
            (true, _) => LANES,
            (false, 1) => MAX_ROWS,
            (false, _) => 4,
        }
    }
}

/// Nearest and second-nearest centroid of one row.
#[derive(Debug, Clone, Copy)]
struct Nearest {
    pub label: u32,
    pub second: u32,
}

/// Per-cluster f64 partial sums of one block of rows.
#[derive(Clone)]
pub struct Partial {
    /// `k × d`, row-major.
    pub sums: Vec<f64>,
    pub weights: Vec<f64>,
    pub inertia: f64,
}

impl Partial {
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            sums: vec![0.0; k * d],
            weights: vec![0.0; k],
            inertia: 0.0,
        }
    }

    /// Adds `other` element-wise (callers add blocks in a fixed order, so the
    /// result is the same bits on every run).
    pub fn add(&mut self, other: &Partial) {
        self.sums
            .iter_mut()
            .zip(&other.sums)
            .for_each(|(a, b)| *a += b);
        self.weights
            .iter_mut()
            .zip(&other.weights)
            .for_each(|(a, b)| *a += b);
        self.inertia += other.inertia;
    }
}

/// Where one block's results go. `second` and `partial` are optional: the
/// Lloyd step skips the second distance, prediction skips the sums.
pub struct BlockOut<'o> {
    pub labels: &'o mut [u32],
    pub distances: &'o mut [f32],
    pub second: Option<&'o mut [f32]>,
    pub partial: Option<&'o mut Partial>,
}

/// Assigns the rows of `x` (`m × d`, contiguous row-major) and fills `out`.
pub fn assign_block(x: &[f32], weights: Option<&[f32]>, pc: &PackedCentroids, out: BlockOut) {
    simd::dispatch(AssignBlock {
        x,
        weights,
        pc,
        out,
    })
}

struct AssignBlock<'a, 'c, 'o> {
    x: &'a [f32],
    weights: Option<&'a [f32]>,
    pc: &'a PackedCentroids<'c>,
    out: BlockOut<'o>,
}

impl SimdKernel for AssignBlock<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        assign_block_impl::<S>(self.x, self.weights, self.pc, self.out)
    }
}

/// One tile's outputs: the rows' slices of the block's labels, distances
/// (exact squared distance to the nearest centroid) and, when asked, second
/// distances (to the runner-up; +∞ when k = 1).
struct TileOut<'o> {
    labels: &'o mut [u32],
    distances: &'o mut [f32],
    second: Option<&'o mut [f32]>,
}

#[inline(always)]
fn assign_block_impl<S: F32x16>(
    x: &[f32],
    weights: Option<&[f32]>,
    pc: &PackedCentroids,
    mut out: BlockOut,
) {
    let d = pc.centroids.ncols();
    let m = x.len() / d;
    let tile_rows = pc.tile_rows();
    let mut padded = vec![0.0f32; tile_rows * d];
    let mut columns = vec![0.0f32; LANES * d];
    let mut second = out.second;
    for t in (0..m).step_by(tile_rows) {
        let rows = tile_rows.min(m - t);
        let tile = if rows == tile_rows {
            &x[t * d..(t + tile_rows) * d]
        } else {
            padded[..rows * d].copy_from_slice(&x[t * d..(t + rows) * d]);
            &padded[..]
        };
        let tile_out = TileOut {
            labels: &mut out.labels[t..t + rows],
            distances: &mut out.distances[t..t + rows],
            second: second.as_deref_mut().map(|s| &mut s[t..t + rows]),
        };
        // SAFETY (both kernels): the caller was compiled with S's CPU
        // features; every tile holds `tile_rows × d` values and the packing
        // matches `pc`.
        unsafe {
            match (pc.rows_in_lanes(), tile_out.second.is_some()) {
                (true, true) => nearest_in_lanes::<S, true>(tile, pc, &mut columns, tile_out),
                (true, false) => nearest_in_lanes::<S, false>(tile, pc, &mut columns, tile_out),
                (false, _) => nearest_in_panels::<S>(tile, pc, tile_out),
            }
        }
        if let Some(p) = out.partial.as_deref_mut() {
            let labels = &out.labels[t..t + rows];
            for (r, row) in x[t * d..(t + rows) * d].chunks_exact(d).enumerate() {
                let label = labels[r] as usize;
                let w = weights.map_or(1.0, |w| w[t + r]) as f64;
                // SAFETY: as above.
                unsafe { S::add_scaled_f64(&mut p.sums[label * d..(label + 1) * d], row, w) };
                p.weights[label] += w;
            }
        }
    }
    if let Some(p) = out.partial {
        p.inertia += inertia(out.distances, weights);
    }
}

/// `Σ w · distance` of a block in f64, in a fixed order: four partial
/// sums, row i in sum i mod 4, so the adds vectorise and no add waits on
/// the one before (summed per row inside the tile loop, they were a chain
/// of store-to-load round trips).
fn inertia(distances: &[f32], weights: Option<&[f32]>) -> f64 {
    let mut sums = [0.0f64; 4];
    let chunks = distances.chunks_exact(4);
    let tail = chunks.remainder();
    match weights {
        None => {
            for c in chunks {
                for (s, &v) in sums.iter_mut().zip(c) {
                    *s += v as f64;
                }
            }
            for (s, &v) in sums.iter_mut().zip(tail) {
                *s += v as f64;
            }
        }
        Some(w) => {
            for (c, w) in chunks.zip(w.chunks_exact(4)) {
                for ((s, &v), &w) in sums.iter_mut().zip(c).zip(w) {
                    *s += w as f64 * v as f64;
                }
            }
            let w_tail = &w[distances.len() - tail.len()..];
            for ((s, &v), &w) in sums.iter_mut().zip(tail).zip(w_tail) {
                *s += w as f64 * v as f64;
            }
        }
    }
    (sums[0] + sums[1]) + (sums[2] + sums[3])
}

/// Centroids scored together in [`nearest_in_lanes`], at most: with two
/// partial sums each, eight independent FMA chains hide the FMA latency.
const GROUP: usize = 4;

/// Centroids [`group_distances`] scores at once at S's level: [`GROUP`]
/// where the register file holds its 2 · GROUP sums beside the operands,
/// else half as many. On AVX2 a 16-lane sum is two of the 16 ymm
/// registers, so four centroids' sums (16 ymm) spilled and every FMA
/// waited on a store and a reload; two (8 ymm) still keep eight FMA chains
/// in flight. Each centroid's sums are the same either way, so every level
/// gives the same bits.
#[inline(always)]
fn group_width<S: F32x16>() -> usize {
    if S::REGISTERS >= 4 * GROUP {
        GROUP
    } else {
        GROUP / 2
    }
}

/// Exact squared distances `Σ (x − c)²` of sixteen rows (a transposed
/// tile: `columns[j · 16 + r]`) to the first [`group_width`] of the
/// [`GROUP`] centres stored row-major from `centres` (`GROUP × d` values),
/// even and odd dimensions in two sums each, added last; the other entries
/// are +∞, so a caller that offered them anyway would never pick one.
///
/// # Safety
/// The caller was compiled with S's CPU features; `columns` holds `16 · d`
/// values and `centres` points at `group_width::<S>() · d` readable ones.
#[inline(always)]
unsafe fn group_distances<S: F32x16>(columns: &[f32], centres: *const f32, d: usize) -> [S; GROUP] {
    if group_width::<S>() == GROUP {
        distances_of::<S, GROUP>(columns, centres, d)
    } else {
        distances_of::<S, { GROUP / 2 }>(columns, centres, d)
    }
}

/// [`group_distances`] of the first `G` centres.
///
/// # Safety
/// As for [`group_distances`].
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn distances_of<S: F32x16, const G: usize>(
    columns: &[f32],
    centres: *const f32,
    d: usize,
) -> [S; GROUP] {
    let column = columns.as_ptr();
    let mut even = [S::splat(0.0); G];
    let mut odd = [S::splat(0.0); G];
    let mut j = 0;
    while j + 1 < d {
        for q in 0..G {
            let row = centres.add(q * d + j);
            let a = S::sub(S::load(column.add(j * LANES)), S::splat(*row));
            even[q] = S::fma(a, a, even[q]);
            let b = S::sub(S::load(column.add((j + 1) * LANES)), S::splat(*row.add(1)));
            odd[q] = S::fma(b, b, odd[q]);
        }
        j += 2;
    }
    if j < d {
        for q in 0..G {
            let a = S::sub(
                S::load(column.add(j * LANES)),
                S::splat(*centres.add(q * d + j)),
            );
            even[q] = S::fma(a, a, even[q]);
        }
    }
    // A loop, not `array::from_fn`: its closure is compiled without S's
    // CPU features, and the FMAs became out-of-line calls (a third of the
    // AVX2 small-k step).
    let one = S::splat(1.0);
    let mut out = [S::splat(f32::INFINITY); GROUP];
    for q in 0..G {
        out[q] = S::fma(one, even[q], odd[q]);
    }
    out
}

/// The small-k kernel: sixteen rows in the lanes of one vector, centroids in
/// an outer loop. The tile is transposed once (in registers on AVX-512 and
/// AVX2), distances are computed
/// directly as `Σ (x − c)²` (exact, so nothing is recomputed), and the argmin
/// is a lane-wise compare: no horizontal reductions. Ties keep the lower
/// centroid index, as in the panel kernel.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn nearest_in_lanes<S: F32x16, const SECOND: bool>(
    tile: &[f32],
    pc: &PackedCentroids,
    columns: &mut [f32],
    out: TileOut,
) {
    let (k, d) = pc.centroids.dim();
    assert!(
        tile.len() >= LANES * d
            && columns.len() == d * LANES
            && pc.grouped.len() >= k.div_ceil(GROUP) * GROUP * d
    );
    S::transpose_tile(tile, d, columns);
    let columns: &[f32] = columns;
    let c = pc.grouped.as_ptr();
    let mut lanes = LaneBest::<S>::empty();
    let width = group_width::<S>();
    for g in (0..k).step_by(width) {
        let dist = group_distances::<S>(columns, c.add(g * d), d);
        for q in 0..width.min(k - g) {
            lanes.update::<SECOND>(dist[q], S::splat((g + q) as f32));
        }
    }
    let rows = out.labels.len();
    let mut best = [0.0f32; LANES];
    let mut label = [0u32; LANES];
    let mut runner_up = [0.0f32; LANES];
    // Whole tiles store straight into the outputs (a slice copy of a
    // run-time length would be a `memcpy` call per tile).
    if rows == LANES {
        lanes.best_idx.store_u32(out.labels.as_mut_ptr());
        lanes.best.store(out.distances.as_mut_ptr());
        if let Some(second) = out.second {
            lanes.second.store(second.as_mut_ptr());
        }
    } else {
        lanes.best_idx.store_u32(label.as_mut_ptr());
        out.labels.copy_from_slice(&label[..rows]);
        lanes.best.store(best.as_mut_ptr());
        out.distances.copy_from_slice(&best[..rows]);
        if let Some(second) = out.second {
            lanes.second.store(runner_up.as_mut_ptr());
            second.copy_from_slice(&runner_up[..rows]);
        }
    }
}

/// The large-k kernel: [`PackedCentroids::tile_rows`] rows against panels of centroids (see the
/// module docs), then the winner's (and runner-up's) exact distance.
#[inline(always)]
unsafe fn nearest_in_panels<S: F32x16>(tile: &[f32], pc: &PackedCentroids, out: TileOut) {
    let (k, d) = pc.centroids.dim();
    let centroids = pc
        .centroids
        .as_slice()
        .expect("packed centroids are standard-layout");
    let mut nearest = [Nearest {
        label: 0,
        second: 0,
    }; MAX_ROWS];
    let near = &mut nearest;
    match (pc.v, out.second.is_some()) {
        (1, false) => nearest_tile::<S, MAX_ROWS, 1, false>(tile, pc, near),
        (2, false) => nearest_tile::<S, 4, 2, false>(tile, pc, near),
        (_, false) => nearest_tile::<S, 4, 4, false>(tile, pc, near),
        (1, true) => nearest_tile::<S, MAX_ROWS, 1, true>(tile, pc, near),
        (2, true) => nearest_tile::<S, 4, 2, true>(tile, pc, near),
        (_, true) => nearest_tile::<S, 4, 4, true>(tile, pc, near),
    }
    let centroid = |c: u32| &centroids[c as usize * d..(c as usize + 1) * d];
    let mut second = out.second;
    for (r, near) in nearest.iter().enumerate().take(out.labels.len()) {
        let row = &tile[r * d..(r + 1) * d];
        out.labels[r] = near.label;
        out.distances[r] = squared_distance(row, centroid(near.label));
        if let Some(s) = second.as_deref_mut() {
            s[r] = if k == 1 {
                f32::INFINITY
            } else {
                squared_distance(row, centroid(near.second))
            };
        }
    }
}

/// Per-lane running best and second-best scores of one row. Centroid
/// indices are carried as f32 (exact below 2²⁴) so one vector type serves.
#[derive(Clone, Copy)]
struct LaneBest<S: F32x16> {
    best: S,
    best_idx: S,
    second: S,
    second_idx: S,
}

impl<S: F32x16> LaneBest<S> {
    #[inline(always)]
    unsafe fn empty() -> Self {
        Self {
            best: S::splat(f32::INFINITY),
            best_idx: S::splat(0.0),
            second: S::splat(f32::INFINITY),
            second_idx: S::splat(0.0),
        }
    }

    /// Offers `scores` for the centroids `idx` (one per lane). Strict `<`
    /// keeps the lower index on ties, as a sequential scan would. Without
    /// `SECOND` only the best is tracked (the Lloyd step needs no more).
    #[inline(always)]
    unsafe fn update<const SECOND: bool>(&mut self, scores: S, idx: S) {
        let better = S::lt(scores, self.best);
        if SECOND {
            let better_second = S::lt(scores, self.second);
            let demoted = S::select(better_second, scores, self.second);
            self.second = S::select(better, self.best, demoted);
            let demoted_idx = S::select(better_second, idx, self.second_idx);
            self.second_idx = S::select(better, self.best_idx, demoted_idx);
        }
        self.best_idx = S::select(better, idx, self.best_idx);
        self.best = S::select(better, scores, self.best);
    }

    /// Reduces the lanes; ties go to the lower centroid index.
    #[inline(always)]
    unsafe fn finish<const SECOND: bool>(&self) -> Nearest {
        let inf = S::splat(f32::INFINITY);
        let best = self.best.reduce_min();
        let label = S::select(S::eq(self.best, S::splat(best)), self.best_idx, inf).reduce_min();
        if !SECOND {
            return Nearest {
                label: label as u32,
                second: 0,
            };
        }
        // The runner-up is the best of every other lane and the second of the winner's lane.
        let winner_lane = S::eq(self.best_idx, S::splat(label));
        let others = S::select(winner_lane, self.second, self.best);
        let others_idx = S::select(winner_lane, self.second_idx, self.best_idx);
        let second = others.reduce_min();
        let second_label = S::select(S::eq(others, S::splat(second)), others_idx, inf).reduce_min();
        Nearest {
            label: label as u32,
            second: if second_label.is_finite() {
                second_label as u32
            } else {
                0
            },
        }
    }
}

/// Per-lane running best score of one row, eight lanes wide: the large-k
/// kernel's state where registers are few ([`nearest_tile`]). Folding a
/// panel's sixteen scores into eight lanes as they are offered halves what
/// six rows keep between panels (12 AVX2 registers, not 24), and so what
/// spills to the stack and comes back every panel.
#[derive(Clone, Copy)]
struct HalfBest<H: F32x8> {
    best: H,
    best_idx: H,
}

impl<H: F32x8> HalfBest<H> {
    #[inline(always)]
    unsafe fn empty() -> Self {
        Self {
            best: H::splat(f32::INFINITY),
            best_idx: H::splat(0.0),
        }
    }

    /// As [`LaneBest::update`] without the runner-up.
    #[inline(always)]
    unsafe fn update(&mut self, scores: H, idx: H) {
        let better = H::lt(scores, self.best);
        self.best_idx = H::select(better, idx, self.best_idx);
        self.best = H::min(scores, self.best);
    }

    /// As [`LaneBest::finish`]: ties go to the lower centroid index.
    #[inline(always)]
    unsafe fn label(&self) -> u32 {
        let best = self.best.reduce_min();
        let inf = H::splat(f32::INFINITY);
        H::select(H::eq(self.best, H::splat(best)), self.best_idx, inf).reduce_min() as u32
    }
}

// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn nearest_tile<S: F32x16, const R: usize, const V: usize, const SECOND: bool>(
    tile: &[f32],
    pc: &PackedCentroids,
    out: &mut [Nearest; MAX_ROWS],
) {
    let d = pc.centroids.ncols();
    assert!(tile.len() >= R * d && pc.panels.len() >= pc.n_panels * d * V);
    let lane_index: [f32; LANES] = std::array::from_fn(|l| l as f32);
    let lane_index = S::load(lane_index.as_ptr());
    // fma(1, a, b) is a + b exactly; compilers emit the add.
    let one = S::splat(1.0);
    // Each lane of a half sees its centroids in increasing index order
    // (lane l: l, then l + 8, of each panel in turn), so strict `<` keeps
    // the lower index on ties as the sixteen-lane state does.
    if !SECOND && V == 1 && S::REGISTERS < 32 {
        let mut lanes = [HalfBest::<S::Half>::empty(); R];
        for p in 0..pc.n_panels {
            let acc = panel_products::<S, R, V>(tile, pc, p);
            let norms = S::load(pc.norms[p].as_ptr());
            let first = S::splat((p * LANES) as f32);
            let (idx_lo, idx_hi) = S::fma(one, lane_index, first).halves();
            for r in 0..R {
                let (lo, hi) = S::fma(one, acc[r][0], norms).halves();
                lanes[r].update(lo, idx_lo);
                lanes[r].update(hi, idx_hi);
            }
        }
        for r in 0..R {
            out[r] = Nearest {
                label: lanes[r].label(),
                second: 0,
            };
        }
        return;
    }
    let mut lanes = [LaneBest::<S>::empty(); R];
    for p in 0..pc.n_panels {
        let acc = panel_products::<S, R, V>(tile, pc, p);
        for v in 0..V {
            let norms = S::load(pc.norms[p * V + v].as_ptr());
            let first = S::splat(((p * V + v) * LANES) as f32);
            let idx = S::fma(one, lane_index, first);
            for r in 0..R {
                // score = ½‖c‖² + x·(−c)
                lanes[r].update::<SECOND>(S::fma(one, acc[r][v], norms), idx);
            }
        }
    }
    for r in 0..R {
        out[r] = lanes[r].finish::<SECOND>();
    }
}

/// `x · (−c)` of the tile's `R` rows with panel `p`'s `V × 16` centroids: the
/// register tile of the module docs. Two features per pass, from a pointer
/// per row: the loop's counter and address arithmetic were a fifth of the
/// AVX2 tile's instructions (W1's exhaustive step 6 % faster there, the
/// portable path 11 %; AVX-512 unchanged). Each sum's FMAs keep their order.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn panel_products<S: F32x16, const R: usize, const V: usize>(
    tile: &[f32],
    pc: &PackedCentroids,
    p: usize,
) -> [[S; V]; R] {
    let d = pc.centroids.ncols();
    let panel = pc.panels[p * d * V..].as_ptr() as *const f32;
    let mut acc = [[S::splat(0.0); V]; R];
    let mut rows = [tile.as_ptr(); R];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = tile.as_ptr().add(r * d);
    }
    let mut j = 0;
    while j + 1 < d {
        panel_step::<S, R, V>(&mut acc, &rows, panel, j);
        panel_step::<S, R, V>(&mut acc, &rows, panel, j + 1);
        j += 2;
    }
    if j < d {
        panel_step::<S, R, V>(&mut acc, &rows, panel, j);
    }
    acc
}

/// One feature `j` of [`panel_products`]: a broadcast per row, `V` FMAs.
///
/// # Safety
/// As for [`panel_products`]; `rows` point at the tile's rows.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn panel_step<S: F32x16, const R: usize, const V: usize>(
    acc: &mut [[S; V]; R],
    rows: &[*const f32; R],
    panel: *const f32,
    j: usize,
) {
    let mut c = [S::splat(0.0); V];
    for (v, cv) in c.iter_mut().enumerate() {
        *cv = S::load(panel.add((j * V + v) * LANES));
    }
    for r in 0..R {
        let xv = S::splat(*rows[r].add(j));
        for v in 0..V {
            acc[r][v] = S::fma(xv, c[v], acc[r][v]);
        }
    }
}

/// Exact squared Euclidean distance, `Σ (a − b)²` in f32, with eight partial
/// sums so the loop vectorises.
#[inline(always)]
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            let diff = x[l] - y[l];
            acc[l] += diff * diff;
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Small whole numbers, so that every score and distance is exact in
    /// f32 and the argmin has one right answer: the lowest index among the
    /// centroids at the least distance. Centroids repeat every 8 and every
    /// 16 indices, so that exact ties fall in the same lane, in the other
    /// half of a panel and in another panel. At every level, with and
    /// without the runner-up (two ways of keeping the per-lane state).
    /// The rows of `x` assigned at `level`: labels, distances and (when
    /// asked, else NaN) second distances.
    fn assign_at(
        level: simd::Level,
        x: &[f32],
        pc: &PackedCentroids,
        with_second: bool,
    ) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let m = x.len() / pc.centroids.ncols();
        let (mut labels, mut distances, mut second) =
            (vec![u32::MAX; m], vec![f32::NAN; m], vec![f32::NAN; m]);
        simd::dispatch_at(
            level,
            AssignBlock {
                x,
                weights: None,
                pc,
                out: BlockOut {
                    labels: &mut labels,
                    distances: &mut distances,
                    second: with_second.then_some(&mut second[..]),
                    partial: None,
                },
            },
        );
        (labels, distances, second)
    }

    /// Coordinates near 1.5e19: `x·c` passes half of f32's maximum, so a
    /// panel of `−2c` gave every centroid a score of −∞ and the lowest
    /// index won (a review's find). The nearest must still win, at every
    /// level, with and without the runner-up.
    #[test]
    fn every_level_finds_the_nearest_at_large_magnitudes() {
        for level in simd::Level::available() {
            let k = 17;
            let c = Array2::from_shape_fn((k, 1), |(c, _)| match c {
                0 => 1.4e19f32,
                1 => 1.5e19,
                _ => -1e19 - c as f32 * 1e17,
            });
            let x = [1.5e19f32, 1.4e19, -1.2e19];
            let want = [1u32, 0, 16];
            let pc = PackedCentroids::for_level(c.view(), level);
            for with_second in [false, true] {
                let (labels, distances, _) = assign_at(level, &x, &pc, with_second);
                assert_eq!(labels, want, "{level}, second {with_second}");
                for (r, &l) in want.iter().enumerate() {
                    assert_eq!(distances[r], (x[r] - c[[l as usize, 0]]).powi(2), "{level}");
                }
            }
        }
    }

    #[test]
    fn every_level_breaks_exact_ties_to_the_lowest_index() {
        for level in simd::Level::available() {
            let shapes = [(17usize, 3usize), (40, 19), (64, 32), (70, 5)];
            for (&(k, d), period) in shapes.iter().flat_map(|s| [8, 16, 24].map(|p| (s, p))) {
                let c = Array2::from_shape_fn((k, d), |(c, j)| {
                    ((c % period * 7 + j * 3) % 9) as f32 - 4.0
                });
                let m = 53;
                let x: Vec<f32> = (0..m * d)
                    .map(|i| ((i * 5 + i / d) % 11) as f32 - 5.0)
                    .collect();
                let exact = |r: usize, c_: usize| -> f32 {
                    (0..d).map(|j| (x[r * d + j] - c[[c_, j]]).powi(2)).sum()
                };
                let pc = PackedCentroids::for_level(c.view(), level);
                for with_second in [false, true] {
                    let (labels, distances, second) = assign_at(level, &x, &pc, with_second);
                    for r in 0..m {
                        let all: Vec<f32> = (0..k).map(|c_| exact(r, c_)).collect();
                        let least = all.iter().copied().fold(f32::INFINITY, f32::min);
                        let want = all.iter().position(|&v| v == least).unwrap() as u32;
                        let at = format!(
                            "{level}, k = {k}, d = {d}, period {period}, second {with_second}, row {r}"
                        );
                        assert_eq!(labels[r], want, "{at}");
                        assert_eq!(distances[r], least, "{at}");
                        if with_second {
                            // The runner-up may tie the winner (a repeat).
                            let mut sorted = all.clone();
                            sorted.sort_by(f32::total_cmp);
                            assert_eq!(second[r], sorted[1], "{at}");
                        }
                    }
                }
            }
        }
    }
}
