//! PCA's statistics in one pass over the data: column sums and the Gram
//! matrix, both about a pivot, with only the upper triangle of the Gram
//! computed.
//!
//! Why a pivot: the centred Gram needs the mean, which would cost a second
//! pass; `Σ (x − p)(x − p)ᵀ − s·sᵀ/n` (with `s = Σ (x − p)`) is the same
//! matrix. In f32 the correction cancels badly when `p` is far from the
//! mean, so the pivot is the mean of the leading rows, not the first row.
//!
//! Why the upper triangle: the Gram is symmetric, so its 16 × 16 tiles
//! `(i, j)` with `i ≤ j` are enough: 36 of 64 tiles at d = 128, the eight on
//! the diagonal doing little more than their upper half.
//!
//! Why it is fast: the product is bound by the FMA units, so everything
//! else hides behind it. Rows are centred a sub-block at a time into scratch
//! that stays in cache, and the next sub-block is prefetched a line at a
//! time between the product's rows; each tile's f32 sums go into an f64
//! Gram once per sub-block.

use ndarray::Array2;
use rayon::prelude::*;

use super::simd::{self, F32x16, F32x8, SimdKernel};
use crate::backend::{Cancel, ColumnSums};

const LANES: usize = 16;

/// Rows averaged for the pivot.
const PIVOT_ROWS: usize = 1024;
/// Rows centred into scratch at a time: 512 × d f32 stay in L2 for d ≤ 256,
/// beside the next 512 rows being prefetched. It also bounds how many
/// products a tile sums in f32 before they go into the block's f64 Gram.
const SUB_ROWS: usize = 512;
/// Blocks per pass, whatever the thread count, so that the sums are added in
/// the same order on every machine; each block's scratch and f64 Gram are
/// set up once, and the blocks' Grams are added up serially.
const BLOCKS: usize = 16;

/// Column sums about the pivot and the centred Gram `Σ (x − mean)(x − mean)ᵀ`
/// of the row-major `n × d` matrix `x`.
/// Blocks not started once `cancel` is set are skipped: the result is then
/// unusable, and the caller checks the flag.
pub(super) fn centred_gram(
    x: &[f32],
    n: usize,
    d: usize,
    cancel: &Cancel,
) -> (ColumnSums, Array2<f64>) {
    let lead = n.min(PIVOT_ROWS);
    let mut pivot64 = vec![0.0f64; d];
    for row in x.chunks_exact(d).take(lead) {
        pivot64
            .iter_mut()
            .zip(row)
            .for_each(|(p, &v)| *p += v as f64);
    }
    let pivot: Vec<f32> = pivot64.iter().map(|&p| (p / lead as f64) as f32).collect();
    let (sum, shifted) = gram_about(x, n, d, &pivot, cancel);
    let gram = Array2::from_shape_fn((d, d), |(i, j)| {
        shifted[[i, j]] - sum[i] * sum[j] / n as f64
    });
    let sums = ColumnSums {
        n,
        sum_sq: shifted.diag().to_vec(),
        pivot,
        sum,
    };
    (sums, gram)
}

/// Column sums of `x − centre` and the Gram `Σ (x − centre)(x − centre)ᵀ`
/// (both halves filled), in one pass.
pub(super) fn gram_about(
    x: &[f32],
    n: usize,
    d: usize,
    centre: &[f32],
    cancel: &Cancel,
) -> (Vec<f64>, Array2<f64>) {
    let block = (n.div_ceil(BLOCKS).next_multiple_of(SUB_ROWS) * d).max(1);
    let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..n * d)
        .into_par_iter()
        .step_by(block)
        .map(|start| block_gram(&x[start..], block, d, centre, cancel))
        .collect();
    let dp = padded(d);
    let mut sum = vec![0.0f64; d];
    let mut upper = vec![0.0f64; dp * dp];
    for (s, g) in parts {
        sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        upper.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
    }
    let gram = Array2::from_shape_fn((d, d), |(i, j)| upper[i.min(j) * dp + i.max(j)]);
    (sum, gram)
}

/// One block's f64 column sums of `x − pivot` and f64 Gram about the pivot
/// (`dp × dp` with `dp` = d rounded up to 16; upper tiles only, the lower
/// triangle is left unspecified). The block is the first `len` values of
/// `rest`; what follows it is only prefetched.
fn block_gram(
    rest: &[f32],
    len: usize,
    d: usize,
    pivot: &[f32],
    cancel: &Cancel,
) -> (Vec<f64>, Vec<f64>) {
    let dp = padded(d);
    let mut sums = vec![0.0f64; d];
    let mut gram = vec![0.0f64; dp * dp];
    let mut scratch = vec![0.0f32; SUB_ROWS * dp];
    let mut sub_sums = vec![0.0f32; dp];
    let mut sub_gram = vec![0.0f32; dp * dp];
    let block = &rest[..len.min(rest.len())];
    for (s, sub) in block.chunks(SUB_ROWS * d).enumerate() {
        if cancel.is_set() {
            break;
        }
        let m = sub.len() / d;
        simd::dispatch(Centre {
            x: sub,
            d,
            dp,
            pivot,
            out: &mut scratch[..m * dp],
            sums: &mut sub_sums,
        });
        for (total, part) in sums.iter_mut().zip(&mut sub_sums) {
            *total += std::mem::take(part) as f64;
        }
        // The next rows come from memory while these are multiplied: the
        // arithmetic then hides the stream instead of waiting on it. Past
        // the block's end they are probably this thread's next block.
        let next = (s + 1) * SUB_ROWS * d;
        let ahead = rest
            .get(next..(next + SUB_ROWS * d).min(rest.len()))
            .unwrap_or(&[]);
        simd::dispatch(UpperGram {
            a: &scratch[..m * dp],
            dp,
            sums: &mut sub_gram,
            ahead,
        });
        flush_upper(&mut sub_gram, &mut gram, dp);
    }
    (sums, gram)
}

/// `out = x − pivot` (`out` rows padded to `dp` with zeros) and
/// `sums += Σ (x − pivot)` in f32: a sub-block's few hundred rows lose no
/// more to f32 than the Gram's own f32 sums do, and the f64 totals take
/// over from there. It goes down a strip of columns at a time, so that the
/// strip's pivot and running sums stay in registers.
struct Centre<'a> {
    x: &'a [f32],
    d: usize,
    dp: usize,
    pivot: &'a [f32],
    out: &'a mut [f32],
    sums: &'a mut [f32],
}

impl SimdKernel for Centre<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        let Centre {
            x,
            d,
            dp,
            pivot,
            out,
            sums,
        } = self;
        let full = d / LANES * LANES;
        assert!(pivot.len() == d && sums.len() == dp && out.len() / dp == x.len() / d);
        let wide = full / (STRIP * LANES) * (STRIP * LANES);
        // SAFETY: dispatched with S's CPU features; every strip ends at or
        // before column `full ≤ d ≤ dp`.
        unsafe {
            for c in (0..wide).step_by(STRIP * LANES) {
                centre_strip::<S, STRIP>(x, d, dp, c, pivot, out, sums);
            }
            for c in (wide..full).step_by(LANES) {
                centre_strip::<S, 1>(x, d, dp, c, pivot, out, sums);
            }
        }
        for (dst, src) in out.chunks_exact_mut(dp).zip(x.chunks_exact(d)) {
            for j in full..d {
                dst[j] = src[j] - pivot[j];
                sums[j] += dst[j];
            }
        }
    }
}

/// Vectors per strip in [`Centre`]: each row's strip is a few contiguous
/// cache lines, and its pivot and sums fit in registers.
const STRIP: usize = 4;

/// [`Centre`] on the `W` vectors of columns from `c`.
///
/// # Safety
/// S's CPU features are enabled; `c + 16·W ≤ d ≤ dp`; `x` is whole rows
/// of `d`, `out` as many rows of `dp`, `pivot` `d` values and `sums` `dp`.
#[inline(always)]
unsafe fn centre_strip<S: F32x16, const W: usize>(
    x: &[f32],
    d: usize,
    dp: usize,
    c: usize,
    pivot: &[f32],
    out: &mut [f32],
    sums: &mut [f32],
) {
    let one = S::splat(1.0);
    let p: [S; W] = std::array::from_fn(|q| S::load(pivot.as_ptr().add(c + q * LANES)));
    let mut sum: [S; W] = std::array::from_fn(|q| S::load(sums.as_ptr().add(c + q * LANES)));
    for (dst, src) in out.chunks_exact_mut(dp).zip(x.chunks_exact(d)) {
        for q in 0..W {
            let at = c + q * LANES;
            let v = S::sub(S::load(src.as_ptr().add(at)), p[q]);
            v.store(dst.as_mut_ptr().add(at));
            sum[q] = S::fma(one, v, sum[q]);
        }
    }
    for (q, s) in sum.iter().enumerate() {
        s.store(sums.as_mut_ptr().add(c + q * LANES));
    }
}

/// `d` rounded up to whole vectors; the padding columns are zero.
fn padded(d: usize) -> usize {
    d.div_ceil(LANES) * LANES
}

/// `sums += aᵀ·a` on the tiles `(i, j)` with `i ≤ j`, for `a` of shape
/// `m × dp` (row-major), prefetching `ahead` on the way. The rows are
/// already in cache in the layout the microkernel wants, so unlike a
/// general matrix product nothing is packed.
///
/// `sums` holds the f32 sums of the rows so far (`dp × dp`, the upper tiles
/// only), which the caller adds into its f64 Gram once per sub-block.
/// Going through them [`CHUNK_ROWS`] rows at a time, every tile's strips
/// read rows that stay in L1; a whole sub-block is L2's, and an AVX2 strip
/// reads two lines of it per six cycles of FMAs, close to what L2 delivers.
/// A strip's running sums go through `sums` between chunks, which is exact:
/// the same additions in the same order as one pass over the sub-block.
struct UpperGram<'a> {
    a: &'a [f32],
    dp: usize,
    sums: &'a mut [f32],
    ahead: &'a [f32],
}

/// Rows of [`UpperGram`] multiplied per pass over the tiles: 16 KiB of
/// rows at d = 128, half of L1, beside a strip's sums and the prefetches.
const CHUNK_ROWS: usize = 32;

impl SimdKernel for UpperGram<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        let UpperGram { a, dp, sums, ahead } = self;
        let tiles = dp / LANES;
        assert!(dp.is_multiple_of(LANES) && a.len().is_multiple_of(dp) && sums.len() == dp * dp);
        let wide = S::REGISTERS >= 32;
        let strips = if wide { wide_strips(tiles) } else { Vec::new() };
        assert!(strips
            .iter()
            .all(|s| s.end() <= dp && s.i0 + WIDE_ROWS <= dp));
        // Each tile (or wide strip) prefetches an equal share of `ahead`,
        // in whole lines, spread over its rows.
        let parts = if wide {
            strips.len()
        } else {
            tiles * (tiles + 1) / 2
        };
        let share = ahead.len().div_ceil(parts).next_multiple_of(LINE).max(LINE);
        let rows = a.len() / dp;
        // A power of two, so that the row test is a mask and a shift.
        let shift = (rows / (share / LINE)).max(1).ilog2();
        let shares: Vec<Prefetch> = ahead
            .chunks(share)
            .map(|lines| Prefetch { lines, shift })
            .collect();
        let idle = Prefetch { lines: &[], shift };
        for (c, chunk) in a.chunks(CHUNK_ROWS * dp).enumerate() {
            let first = c * CHUNK_ROWS;
            let mut shares = shares.iter().copied();
            if wide {
                for &strip in &strips {
                    let ahead = shares.next().unwrap_or(idle);
                    let tile = Tile {
                        a: chunk,
                        first,
                        dp,
                        i0: strip.i0,
                        j0: strip.col,
                    };
                    // SAFETY: dispatched with S's CPU features; every
                    // strip's rows and columns lie inside `a`'s rows and
                    // `sums` (asserted above).
                    unsafe { wide_strip::<S>(tile, strip, sums, ahead) }
                }
                continue;
            }
            for ti in 0..tiles {
                for tj in ti..tiles {
                    let ahead = shares.next().unwrap_or(idle);
                    let tile = Tile {
                        a: chunk,
                        first,
                        dp,
                        i0: ti * LANES,
                        j0: tj * LANES,
                    };
                    // SAFETY: dispatched with S's CPU features; the tile's
                    // rows and columns lie inside `a` and `sums` (asserted
                    // above).
                    unsafe {
                        if ti == tj {
                            diagonal_tile::<S>(tile, sums, ahead)
                        } else {
                            off_diagonal_tile::<S>(tile, sums, ahead)
                        }
                    }
                }
            }
        }
    }
}

/// Adds the upper tiles of the f32 `sums` into the f64 `gram` (both
/// `dp × dp`) and zeroes them for the next sub-block.
fn flush_upper(sums: &mut [f32], gram: &mut [f64], dp: usize) {
    for i in 0..dp {
        let from = i / LANES * LANES;
        let at = i * dp + from..(i + 1) * dp;
        gram[at.clone()]
            .iter_mut()
            .zip(&mut sums[at])
            .for_each(|(g, s)| *g += std::mem::take(s) as f64);
    }
}

/// f32 values in a cache line.
const LINE: usize = 16;

/// A tile's share of the next rows to prefetch: one line every
/// `1 << shift` rows of the product, while the share lasts.
#[derive(Clone, Copy)]
struct Prefetch<'a> {
    lines: &'a [f32],
    shift: u32,
}

impl Prefetch<'_> {
    /// No prefetching (a tile's second and later strips: the first did it).
    #[inline(always)]
    fn none(self) -> Self {
        Prefetch {
            lines: &[],
            shift: self.shift,
        }
    }

    #[inline(always)]
    fn at_row(self, r: usize) {
        let line = (r >> self.shift) * LINE;
        if r & ((1 << self.shift) - 1) == 0 && line < self.lines.len() {
            simd::prefetch(self.lines[line..].as_ptr());
        }
    }
}

/// Rows of a [`WideStrip`]: eight broadcasts feed up to three vectors'
/// FMAs, so there are fewer loads per FMA than in a 16-row, one-vector
/// tile (11 per 24 FMAs against 17 per 16). With two 512-bit FMA units a
/// core issues up to two loads a cycle, and the one-vector tile left the
/// FMA units half idle waiting on them.
const WIDE_ROWS: usize = 8;

/// A part of the upper triangle for the 32-register level: rows
/// `i0..i0 + 8` against, from column `col`, first eight columns in a
/// half-width vector where `half` (the corner of a diagonal tile, whose
/// other half is below the diagonal), then `vectors` whole vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WideStrip {
    i0: usize,
    col: usize,
    half: bool,
    vectors: usize,
}

impl WideStrip {
    /// The first column after the strip.
    fn end(self) -> usize {
        self.col + if self.half { LANES / 2 } else { 0 } + self.vectors * LANES
    }
}

/// The upper triangle of a `tiles × tiles` grid of 16 × 16 tiles as wide
/// strips: each tile row's top eight rows from its diagonal to the end,
/// its bottom eight from the diagonal tile's right half (a half vector) to
/// the end, split as evenly as possible into at most three vectors a strip
/// (two beside a half: 8 × 3 accumulators, the vectors and a broadcast fit
/// in 32 registers).
fn wide_strips(tiles: usize) -> Vec<WideStrip> {
    let mut strips = Vec::new();
    let mut split = |i0: usize, mut col: usize, mut half: bool, vectors: usize| {
        let most = |half: bool| if half { 2 } else { 3 };
        let mut left = vectors;
        while left > 0 || half {
            // As even as possible: the strips left take `left` between them.
            let count = (left + usize::from(half)).div_ceil(most(false));
            let take = left.div_ceil(count.max(1)).min(most(half));
            strips.push(WideStrip {
                i0,
                col,
                half,
                vectors: take,
            });
            col += if half { LANES / 2 } else { 0 } + take * LANES;
            left -= take;
            half = false;
        }
    };
    for ti in 0..tiles {
        let i0 = ti * LANES;
        split(i0, i0, false, tiles - ti);
        split(i0 + WIDE_ROWS, i0 + WIDE_ROWS, true, tiles - ti - 1);
    }
    strips
}

/// One [`WideStrip`] over a chunk of rows: `tile` gives the chunk, and the
/// strip's first row (`i0`) and column (`j0`).
///
/// # Safety
/// S's CPU features are enabled; `tile.a` is whole rows of `dp`, `sums`
/// is `dp × dp`, and the strip's rows and columns are below `dp`
/// (`shape.end() ≤ dp`, `shape.i0 + 8 ≤ dp`).
#[inline(always)]
unsafe fn wide_strip<S: F32x16>(tile: Tile, shape: WideStrip, sums: &mut [f32], ahead: Prefetch) {
    // SAFETY: the caller's contract.
    unsafe {
        match (shape.half, shape.vectors) {
            (false, 1) => strip::<S, WIDE_ROWS, 1, false>(tile, sums, ahead),
            (false, 2) => strip::<S, WIDE_ROWS, 2, false>(tile, sums, ahead),
            (false, 3) => strip::<S, WIDE_ROWS, 3, false>(tile, sums, ahead),
            (true, 0) => strip::<S, WIDE_ROWS, 0, true>(tile, sums, ahead),
            (true, 1) => strip::<S, WIDE_ROWS, 1, true>(tile, sums, ahead),
            (true, 2) => strip::<S, WIDE_ROWS, 2, true>(tile, sums, ahead),
            _ => unreachable!("wide_strips makes no {shape:?}"),
        }
    }
}

/// Rows `i0..i0 + R` of `tile` from column `j0`: first eight columns in a
/// half-width vector where `H`, then `V` whole vectors, added to their
/// running sums. The shape is in the type, so the accumulators are
/// registers: every level's tiles and strips are this one loop.
///
/// # Safety
/// S's CPU features are enabled; `tile.a` is whole rows of `dp`, `sums`
/// is `dp × dp`, and rows `i0..i0 + R` and columns `j0..j0 + 8·H + 16·V`
/// are below `dp`.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn strip<S: F32x16, const R: usize, const V: usize, const H: bool>(
    tile: Tile,
    sums: &mut [f32],
    ahead: Prefetch,
) {
    const HALF: usize = LANES / 2;
    let Tile {
        a,
        first,
        dp,
        i0,
        j0,
    } = tile;
    let from = j0 + if H { HALF } else { 0 };
    debug_assert!(from + V * LANES <= dp && i0 + R <= dp && sums.len() == dp * dp);
    let row_at = |ii: usize| (i0 + ii) * dp;
    // SAFETY: the caller's contract keeps every offset below inside
    // `sums` (rows i0..i0 + R, columns j0..from + 16·V ≤ dp) and each row
    // of `a`.
    unsafe {
        let mut corner = [S::Half::splat(0.0); R];
        let mut acc = [[S::splat(0.0); V]; R];
        for ii in 0..R {
            if H {
                corner[ii] = S::Half::load(sums.as_ptr().add(row_at(ii) + j0));
            }
            for v in 0..V {
                acc[ii][v] = S::load(sums.as_ptr().add(row_at(ii) + from + v * LANES));
            }
        }
        for (r, row) in a.chunks_exact(dp).enumerate() {
            ahead.at_row(first + r);
            let p = row.as_ptr();
            let right = if H {
                S::Half::load(p.add(j0))
            } else {
                S::Half::splat(0.0)
            };
            let mut cols = [S::splat(0.0); V];
            for v in 0..V {
                cols[v] = S::load(p.add(from + v * LANES));
            }
            for ii in 0..R {
                let x = *p.add(i0 + ii);
                if H {
                    corner[ii] = S::Half::fma(S::Half::splat(x), right, corner[ii]);
                }
                for v in 0..V {
                    acc[ii][v] = S::fma(S::splat(x), cols[v], acc[ii][v]);
                }
            }
        }
        for ii in 0..R {
            if H {
                corner[ii].store(sums.as_mut_ptr().add(row_at(ii) + j0));
            }
            for v in 0..V {
                acc[ii][v].store(sums.as_mut_ptr().add(row_at(ii) + from + v * LANES));
            }
        }
    }
}

/// A tile of the product over a chunk of rows: `a` is the chunk (`dp`
/// wide), whose first row is row `first` of the sub-block (for the
/// prefetch schedule); the tile's rows are columns `i0..` of `a`, its
/// columns `j0..` (16 of each for a 16-register tile; a [`strip`] says how
/// many it takes).
#[derive(Clone, Copy)]
struct Tile<'a> {
    a: &'a [f32],
    first: usize,
    dp: usize,
    i0: usize,
    j0: usize,
}

impl Tile<'_> {
    /// The tile `rows` further down.
    #[inline(always)]
    fn down(self, rows: usize) -> Self {
        Tile {
            i0: self.i0 + rows,
            ..self
        }
    }
}

/// One 16 × 16 tile on a level with 16 registers (AVX2, portable), where
/// each 16-lane accumulator is two registers: summed as row strips of 6, 6
/// and 4 (12 accumulator registers, the row vector and a broadcast), each
/// a pass over the chunk, which is in L1. (With 32 registers the product
/// goes by [`WideStrip`]s instead.)
///
/// # Safety
/// S's CPU features are enabled; `tile.a` is whole rows of `dp`, `sums`
/// is `dp × dp`, and the tile's rows and columns (`i0..i0 + 16`,
/// `j0..j0 + 16`) are below `dp`.
#[inline(always)]
unsafe fn off_diagonal_tile<S: F32x16>(tile: Tile, sums: &mut [f32], ahead: Prefetch) {
    // SAFETY: the caller's contract; the strips are the tile's rows.
    unsafe {
        strip::<S, 6, 1, false>(tile, sums, ahead);
        strip::<S, 6, 1, false>(tile.down(6), sums, ahead.none());
        strip::<S, 4, 1, false>(tile.down(12), sums, ahead.none());
    }
}

/// A tile on the diagonal needs only its upper triangle: its first eight
/// rows as in [`off_diagonal_tile`] (six, then two), its last eight only on
/// their last eight columns, in half-width vectors.
///
/// # Safety
/// As [`off_diagonal_tile`], with `j0 = i0`.
#[inline(always)]
unsafe fn diagonal_tile<S: F32x16>(tile: Tile, sums: &mut [f32], ahead: Prefetch) {
    const HALF: usize = LANES / 2;
    let corner = Tile {
        i0: tile.i0 + HALF,
        j0: tile.i0 + HALF,
        ..tile
    };
    // SAFETY: the caller's contract; the corner is inside the tile.
    unsafe {
        strip::<S, 6, 1, false>(tile, sums, ahead);
        strip::<S, 2, 1, false>(tile.down(6), sums, ahead.none());
        strip::<S, WIDE_ROWS, 0, true>(corner, sums, ahead.none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Centring and the upper-triangle product on every vector type the CPU
    /// runs (not only the one `dispatch` picks here), against scalar loops:
    /// three tiles across (diagonal and off-diagonal tiles) and eight (every
    /// wide-strip shape, see `wide_strips_cover_the_upper_triangle_once`),
    /// and a row count that is not a multiple of anything.
    #[test]
    fn every_vector_path_matches_scalar_loops() {
        for d in [40, 123] {
            matches_scalar_loops(37, d);
        }
    }

    fn matches_scalar_loops(m: usize, d: usize) {
        let dp = padded(d);
        let x: Vec<f32> = (0..m * d)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let pivot: Vec<f32> = (0..d).map(|j| j as f32 * 0.1).collect();
        let centred: Vec<f32> = (0..m * d).map(|i| x[i] - pivot[i % d]).collect();
        let check = |name: &str, run: &dyn Fn(Centre, UpperGram)| {
            let (mut out, mut sums, mut gram32) =
                (vec![0.0; m * dp], vec![0.0; dp], vec![0.0f32; dp * dp]);
            let centre = Centre {
                x: &x,
                d,
                dp,
                pivot: &pivot,
                out: &mut out,
                sums: &mut sums,
            };
            let scratch: Vec<f32> = (0..m * dp)
                .map(|i| {
                    if i % dp < d {
                        centred[i / dp * d + i % dp]
                    } else {
                        0.0
                    }
                })
                .collect();
            run(
                centre,
                UpperGram {
                    a: &scratch,
                    dp,
                    sums: &mut gram32,
                    ahead: &x,
                },
            );
            let mut gram = vec![0.0f64; dp * dp];
            flush_upper(&mut gram32, &mut gram, dp);
            assert!(gram32.iter().all(|&v| v == 0.0), "{name}: sums not zeroed");
            for r in 0..m {
                for j in 0..dp {
                    let want = if j < d { centred[r * d + j] } else { 0.0 };
                    assert_eq!(out[r * dp + j], want, "{name}: centred[{r}, {j}]");
                }
            }
            for j in 0..d {
                let want: f32 = (0..m).map(|r| centred[r * d + j]).sum();
                assert!(
                    (sums[j] - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{name}: sum {j}"
                );
                for i in 0..=j {
                    let want: f64 = (0..m)
                        .map(|r| centred[r * d + i] as f64 * centred[r * d + j] as f64)
                        .sum();
                    // 37 f32 products of values below 10 summed in f32.
                    let got = gram[i * dp + j];
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(100.0),
                        "{name}: gram[{i}, {j}] = {got}, want {want}"
                    );
                }
            }
        };
        check("portable", &|c, g| {
            c.run::<simd::Portable>();
            g.run::<simd::Portable>();
        });
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                check("avx2", &|c, g| {
                    c.run::<simd::Avx2>();
                    g.run::<simd::Avx2>();
                });
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                check("avx512", &|c, g| {
                    c.run::<simd::Avx512>();
                    g.run::<simd::Avx512>();
                });
            }
        }
    }

    /// Every upper cell of the Gram (and no cell twice) is in exactly one
    /// wide strip, no strip reaches below the tiles that `flush_upper`
    /// adds up or past the last column, and each strip's accumulators fit
    /// in 32 registers; at eight tiles every strip shape occurs.
    #[test]
    fn wide_strips_cover_the_upper_triangle_once() {
        for tiles in 1..=12 {
            let dp = tiles * LANES;
            let mut count = vec![0u8; dp * dp];
            let strips = wide_strips(tiles);
            for s in &strips {
                let most = if s.half { 2 } else { 3 };
                assert!(s.vectors <= most && (s.half || s.vectors > 0), "{s:?}");
                assert!(
                    s.end() <= dp && s.i0 + WIDE_ROWS <= dp,
                    "{s:?} at {tiles} tiles"
                );
                for i in s.i0..s.i0 + WIDE_ROWS {
                    for j in s.col..s.end() {
                        assert!(
                            j >= i / LANES * LANES,
                            "{s:?} reaches below the flushed tiles"
                        );
                        count[i * dp + j] += 1;
                    }
                }
            }
            for i in 0..dp {
                for j in i..dp {
                    assert_eq!(count[i * dp + j], 1, "cell ({i}, {j}) at {tiles} tiles");
                }
            }
            if tiles == 8 {
                let mut shapes: Vec<_> = strips.iter().map(|s| (s.half, s.vectors)).collect();
                shapes.sort();
                shapes.dedup();
                assert_eq!(
                    shapes,
                    [
                        (false, 1),
                        (false, 2),
                        (false, 3),
                        (true, 0),
                        (true, 1),
                        (true, 2)
                    ]
                );
            }
        }
    }

    /// Against an f64 two-pass reference, on data far from the origin (where
    /// an uncentred or first-row-pivoted f32 Gram would lose digits), with d
    /// not a multiple of 16 and n spanning several sub-blocks and blocks.
    #[test]
    fn matches_an_f64_two_pass_reference() {
        for &(n, d) in &[(2, 1), (1500, 7), (9000, 37)] {
            let x: Vec<f32> = (0..n * d)
                .map(|i| {
                    let (r, j) = (i / d, i % d);
                    let wave = ((r * 31 + j * 17) % 97) as f32 / 97.0 - 0.5;
                    1.0e4
                        + (j as f32) * 3.0
                        + wave * (1.0 + j as f32 * 0.1)
                        + (r % 5) as f32 * 0.01 * j as f32
                })
                .collect();
            let mean: Vec<f64> = (0..d)
                .map(|j| (0..n).map(|r| x[r * d + j] as f64).sum::<f64>() / n as f64)
                .collect();
            let (sums, gram) = centred_gram(&x, n, d, &Cancel::default());
            for (j, m) in sums.mean().iter().enumerate() {
                assert!(
                    (m - mean[j]).abs() <= 1e-6 * mean[j].abs(),
                    "n={n} d={d}: mean {m} vs {}",
                    mean[j]
                );
            }
            let scale = (0..d)
                .map(|j| {
                    (0..n)
                        .map(|r| (x[r * d + j] as f64 - mean[j]).powi(2))
                        .sum::<f64>()
                })
                .fold(0.0f64, f64::max);
            for i in 0..d {
                for j in 0..d {
                    let want: f64 = (0..n)
                        .map(|r| (x[r * d + i] as f64 - mean[i]) * (x[r * d + j] as f64 - mean[j]))
                        .sum();
                    // f32 products summed in f32 over one sub-block: ~1e-6 of the
                    // largest diagonal entry; 1e-4 leaves room.
                    assert!(
                        (gram[[i, j]] - want).abs() <= 1e-4 * scale.max(1e-12),
                        "n={n} d={d}: gram[{i},{j}] = {} vs {want}",
                        gram[[i, j]]
                    );
                }
            }
        }
    }
}
