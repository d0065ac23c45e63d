//! The CPU's FMA roofline, per instruction set: independent multiply-add
//! chains on every rayon thread, nothing loaded or stored. Beside the
//! matrix-multiply probe (what a tuned GEMM reaches), it is the ceiling a
//! kernel compiled for that level can reach on this machine, so a kernel's
//! "% of peak" means the same on every CPU.

use std::time::Instant;

use super::simd::{dispatch_at, F32x16, Level, SimdKernel};

/// FMAs per chain per timed run.
const ITERS: usize = 4_000_000;

/// GFLOP/s of fused multiply-adds at `level` on all threads (a multiply-add
/// counts as 2), best of five runs.
pub fn fma_peak_gflops(level: Level) -> f64 {
    let mut best = f64::INFINITY;
    let mut flop = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        let per_thread = rayon::broadcast(|_| dispatch_at(level, Chains { iters: ITERS }));
        best = best.min(t.elapsed().as_secs_f64());
        flop = per_thread.iter().map(|&(f, _)| f).sum();
        std::hint::black_box(per_thread);
    }
    flop / best / 1e9
}

struct Chains {
    iters: usize,
}

impl SimdKernel for Chains {
    /// (flop done, a value that depends on every chain).
    type Output = (f64, f32);
    #[inline(always)]
    fn run<S: F32x16>(self) -> (f64, f32) {
        // Chains to spare over the FMA latency on every port (4–5 cycles
        // × 2 ports = 10 vector FMAs in flight), within the registers each
        // level has: 24 of AVX-512's 32, 14 of AVX2's 16 (7 two-register
        // values).
        // SAFETY: dispatched with S's CPU features.
        unsafe {
            if S::REGISTERS >= 32 {
                chains::<S, 24>(self.iters)
            } else {
                chains::<S, 7>(self.iters)
            }
        }
    }
}

#[inline(always)]
unsafe fn chains<S: F32x16, const C: usize>(iters: usize) -> (f64, f32) {
    let (a, b) = (
        S::splat(std::hint::black_box(0.999_999)),
        S::splat(std::hint::black_box(1e-7)),
    );
    // Every lane of every chain starts apart, so the compiler cannot merge
    // chains or lanes that would compute the same values.
    let mut acc = [S::splat(0.0); C];
    for (c, v) in acc.iter_mut().enumerate() {
        let start: [f32; 16] = std::array::from_fn(|l| 1.0 + (c * 16 + l) as f32 * 1e-3);
        *v = S::load(std::hint::black_box(start).as_ptr());
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = S::fma(*v, a, b);
        }
    }
    let mut lanes = [0.0f32; 16];
    let mut check = 0.0;
    // Every lane of every chain feeds the result: a lane nobody reads
    // would be optimised away, and the probe would count work not done.
    for v in acc {
        v.store(lanes.as_mut_ptr());
        check += lanes.iter().sum::<f32>();
    }
    ((iters * C * 16 * 2) as f64, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_measures_a_positive_finite_rate() {
        for level in Level::available() {
            let g = fma_peak_gflops(level);
            assert!(g.is_finite() && g > 0.0, "{level}: {g}");
        }
    }
}
