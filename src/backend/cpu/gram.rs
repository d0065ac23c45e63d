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
//! `(i, j)` with `i ≤ j` are enough: 36 of 64 tiles at d = 128.

use ndarray::Array2;
use rayon::prelude::*;

use super::block_rows;
use super::simd::{self, F32x16, SimdKernel};
use crate::backend::ColumnSums;

const LANES: usize = 16;

/// Rows averaged for the pivot.
const PIVOT_ROWS: usize = 1024;
/// Rows centred into scratch at a time: 512 × d f32 stay in L2 for d ≤ 256.
const SUB_ROWS: usize = 512;

/// Column sums about the pivot and the centred Gram `Σ (x − mean)(x − mean)ᵀ`
/// of the row-major `n × d` matrix `x`.
pub(super) fn centred_gram(x: &[f32], n: usize, d: usize) -> (ColumnSums, Array2<f64>) {
    let lead = n.min(PIVOT_ROWS);
    let mut pivot64 = vec![0.0f64; d];
    for row in x.chunks_exact(d).take(lead) {
        pivot64
            .iter_mut()
            .zip(row)
            .for_each(|(p, &v)| *p += v as f64);
    }
    let pivot: Vec<f32> = pivot64.iter().map(|&p| (p / lead as f64) as f32).collect();
    let (sum, shifted) = gram_about(x, n, d, &pivot);
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
pub(super) fn gram_about(x: &[f32], n: usize, d: usize, centre: &[f32]) -> (Vec<f64>, Array2<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f32>)> = x
        .par_chunks(block_rows(n) * d)
        .map(|block| block_gram(block, d, centre))
        .collect();
    let dp = padded(d);
    let mut sum = vec![0.0f64; d];
    let mut upper = vec![0.0f64; dp * dp];
    for (s, g) in parts {
        sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        upper.iter_mut().zip(&g).for_each(|(a, &b)| *a += b as f64);
    }
    let gram = Array2::from_shape_fn((d, d), |(i, j)| upper[i.min(j) * dp + i.max(j)]);
    (sum, gram)
}

/// One block's f64 column sums of `x − pivot` and f32 Gram about the pivot
/// (`dp × dp` with `dp` = d rounded up to 16; upper tiles only, the lower
/// triangle is left unspecified).
fn block_gram(block: &[f32], d: usize, pivot: &[f32]) -> (Vec<f64>, Vec<f32>) {
    let dp = padded(d);
    let mut sums = vec![0.0f64; d];
    let mut gram = vec![0.0f32; dp * dp];
    let mut scratch = vec![0.0f32; SUB_ROWS * dp];
    for sub in block.chunks(SUB_ROWS * d) {
        let m = sub.len() / d;
        for (dst, src) in scratch.chunks_exact_mut(dp).zip(sub.chunks_exact(d)) {
            for ((o, &v), &p) in dst.iter_mut().zip(src).zip(pivot) {
                *o = v - p;
            }
            for (s, &o) in sums.iter_mut().zip(dst.iter()) {
                *s += o as f64;
            }
        }
        simd::dispatch(UpperGram {
            a: &scratch[..m * dp],
            dp,
            gram: &mut gram,
        });
    }
    (sums, gram)
}

/// `d` rounded up to whole vectors; the padding columns are zero.
fn padded(d: usize) -> usize {
    d.div_ceil(LANES) * LANES
}

/// `gram += aᵀ·a` on the tiles `(i, j)` with `i ≤ j`, for `a` of shape
/// `m × dp` (row-major). The rows are already in cache in the layout the
/// microkernel wants, so unlike a general matrix product nothing is packed.
struct UpperGram<'a> {
    a: &'a [f32],
    dp: usize,
    gram: &'a mut [f32],
}

impl SimdKernel for UpperGram<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: F32x16>(self) {
        let tiles = self.dp / LANES;
        assert!(self.a.len().is_multiple_of(self.dp) && self.gram.len() == self.dp * self.dp);
        for ti in 0..tiles {
            for tj in ti..tiles {
                // SAFETY: dispatched with S's CPU features; the tile's rows
                // and columns lie inside `a` and `gram` (asserted above).
                unsafe { tile::<S>(self.a, self.dp, ti * LANES, tj * LANES, self.gram) }
            }
        }
    }
}

/// One 16 × 16 tile: for every row, one vector of columns `j0..j0+16`
/// times sixteen broadcasts of columns `i0..i0+16`; sixteen independent
/// accumulators keep the FMA units busy.
// Index loops mirror the register tile; iterators would obscure it.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<S: F32x16>(a: &[f32], dp: usize, i0: usize, j0: usize, gram: &mut [f32]) {
    let mut acc = [S::splat(0.0); LANES];
    for row in a.chunks_exact(dp) {
        let p = row.as_ptr();
        let right = S::load(p.add(j0));
        for ii in 0..LANES {
            acc[ii] = S::fma(S::splat(*p.add(i0 + ii)), right, acc[ii]);
        }
    }
    let one = S::splat(1.0);
    for ii in 0..LANES {
        let g = gram.as_mut_ptr().add((i0 + ii) * dp + j0);
        S::fma(one, acc[ii], S::load(g)).store(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let (sums, gram) = centred_gram(&x, n, d);
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
                    // f32 products summed in f32 over one block: ~1e-6 of the
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
