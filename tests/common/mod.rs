//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use segmenta::backend::gpu::{AdapterPolicy, GpuBackend, GpuOptions};

pub mod logs;
pub mod server;

/// A GPU backend on any adapter (lavapipe in CI), or `None` with a printed
/// notice when no adapter at all exists. With `SEGMENTA_REQUIRE_GPU=1` (set by
/// scripts/test.sh once it has installed a driver) a missing adapter fails.
pub fn gpu(max_chunk_rows: Option<usize>) -> Option<GpuBackend> {
    gpu_with(GpuOptions {
        max_chunk_rows,
        ..Default::default()
    })
}

pub fn gpu_with(options: GpuOptions) -> Option<GpuBackend> {
    match GpuBackend::with_options(AdapterPolicy::Any, options) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("SEGMENTA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("SEGMENTA_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// Uniform values in [lo, hi).
pub fn uniform(n: usize, d: usize, lo: f32, hi: f32, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_fn((n, d), |_| lo + (hi - lo) * r.random::<f32>())
}

/// `k` well-separated blobs (centres 20 apart per axis on a grid, unit-ish
/// noise); returns data and the true labels.
pub fn blobs(n: usize, d: usize, k: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut r = rng(seed);
    let centres = Array2::from_shape_fn((k, d), |(c, j)| if j == c % d { 20.0 * (c / d + 1) as f32 } else { 0.0 } + 3.0 * (c as f32) * (j as f32 % 2.0));
    let mut labels = Vec::with_capacity(n);
    let mut x = Array2::<f32>::zeros((n, d));
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        let c = i % k;
        labels.push(c);
        for (j, v) in row.iter_mut().enumerate() {
            let noise: f32 = (0..4).map(|_| r.random::<f32>()).sum::<f32>() - 2.0;
            *v = centres[[c, j]] + noise;
        }
    }
    (x, labels)
}

/// Squared distance in f64, as an independent reference.
pub fn dist2(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum()
}

fn sq_norm(v: ndarray::ArrayView1<f32>) -> f64 {
    v.iter().map(|&a| (a as f64).powi(2)).sum()
}

/// Asserts that labelings `a` and `b` of `x` against centroids `c` differ
/// only at near ties: rows whose two centroids' exact f64 distances agree
/// to `1e-5 · (1 + ‖x‖² + ‖c‖²)`, the scale of f32 rounding in
/// `‖c‖² − 2x·c`. Returns how many rows differ.
pub fn assert_ties_only(
    x: ndarray::ArrayView2<f32>,
    c: ndarray::ArrayView2<f32>,
    a: &[u32],
    b: &[u32],
) -> usize {
    let mut ties = 0;
    for i in 0..x.nrows() {
        if a[i] != b[i] {
            let (ca, cb) = (c.row(a[i] as usize), c.row(b[i] as usize));
            let (da, db) = (dist2(x.row(i), ca), dist2(x.row(i), cb));
            let scale = 1.0 + sq_norm(x.row(i)) + sq_norm(ca).max(sq_norm(cb));
            assert!(
                (da - db).abs() <= 1e-5 * scale,
                "row {i}: labels {} vs {} are not a tie ({da} vs {db})",
                a[i],
                b[i]
            );
            ties += 1;
        }
    }
    ties
}

/// An f64 host reference for one assignment's cluster sums.
pub struct HostSums {
    /// `k × d`: Σ w·x per cluster.
    pub sums: ndarray::Array2<f64>,
    pub weights: Vec<f64>,
    /// Σ w·|x| over each cluster's values: the scale of its sums' round-off.
    pub abs: Vec<f64>,
    /// Σ w·`row_inertia(i)`.
    pub inertia: f64,
}

/// Sums `x`'s rows (weighted by `w`) per label in f64, and the inertia from
/// each row's squared distance `row_inertia(i)`.
pub fn host_sums(
    x: &ndarray::Array2<f32>,
    w: Option<&ndarray::Array1<f32>>,
    labels: &[u32],
    k: usize,
    row_inertia: impl Fn(usize) -> f64,
) -> HostSums {
    let d = x.ncols();
    let mut out = HostSums {
        sums: ndarray::Array2::zeros((k, d)),
        weights: vec![0.0; k],
        abs: vec![0.0; k],
        inertia: 0.0,
    };
    for (i, &l) in labels.iter().enumerate() {
        let wi = w.map_or(1.0, |w| w[i] as f64);
        let l = l as usize;
        out.weights[l] += wi;
        out.inertia += wi * row_inertia(i);
        for j in 0..d {
            out.sums[[l, j]] += wi * x[[i, j]] as f64;
            out.abs[l] += wi * (x[[i, j]] as f64).abs();
        }
    }
    out
}

/// Adjusted Rand index of two labelings.
pub fn adjusted_rand_index(a: &[usize], b: &[u32]) -> f64 {
    let ka = a.iter().max().map_or(0, |m| m + 1);
    let kb = b.iter().max().map_or(0, |&m| m as usize + 1);
    let mut table = vec![vec![0u64; kb]; ka];
    for (&x, &y) in a.iter().zip(b) {
        table[x][y as usize] += 1;
    }
    let c2 = |v: u64| (v * v.saturating_sub(1)) as f64 / 2.0;
    let sum_ij: f64 = table.iter().flatten().map(|&v| c2(v)).sum();
    let sum_a: f64 = table.iter().map(|r| c2(r.iter().sum())).sum();
    let sum_b: f64 = (0..kb).map(|j| c2(table.iter().map(|r| r[j]).sum())).sum();
    let total = c2(a.len() as u64);
    let expected = sum_a * sum_b / total;
    let max = (sum_a + sum_b) / 2.0;
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

/// A reference Lloyd run in f64, written independently of the library:
/// returns (centroids, labels, inertia) after `iters` iterations or
/// convergence (no label changes).
pub fn reference_lloyd(
    x: &Array2<f32>,
    init: &Array2<f32>,
    iters: usize,
) -> (Array2<f64>, Vec<usize>, f64) {
    let (n, d) = x.dim();
    let k = init.nrows();
    let mut c = init.mapv(|v| v as f64);
    let mut labels = vec![usize::MAX; n];
    for _ in 0..iters {
        let mut changed = false;
        for i in 0..n {
            let best = (0..k)
                .map(|j| {
                    (0..d)
                        .map(|t| (x[[i, t]] as f64 - c[[j, t]]).powi(2))
                        .sum::<f64>()
                })
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
                .0;
            changed |= labels[i] != best;
            labels[i] = best;
        }
        if !changed {
            break;
        }
        let mut sums = Array2::<f64>::zeros((k, d));
        let mut counts = Array1::<f64>::zeros(k);
        for i in 0..n {
            counts[labels[i]] += 1.0;
            for t in 0..d {
                sums[[labels[i], t]] += x[[i, t]] as f64;
            }
        }
        for j in 0..k {
            if counts[j] > 0.0 {
                for t in 0..d {
                    c[[j, t]] = sums[[j, t]] / counts[j];
                }
            }
        }
    }
    let inertia = (0..n)
        .map(|i| {
            (0..d)
                .map(|t| (x[[i, t]] as f64 - c[[labels[i], t]]).powi(2))
                .sum::<f64>()
        })
        .sum();
    (c, labels, inertia)
}

/// Runs `cmd` with its stdout closed before it writes (as `| head` leaves
/// it) and checks it ends as other tools end: by SIGPIPE, never a panic.
#[cfg(unix)]
pub fn ends_quietly_on_a_closed_pipe(cmd: &mut std::process::Command) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}
