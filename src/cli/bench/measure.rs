//! Timing one workload on one backend, peak memory, and the CPU's measured
//! matrix-multiply peak.

use std::time::Instant;

use ndarray::{Array2, Axis};
use rayon::prelude::*;
use serde::Serialize;

use super::workloads::{Task, Workload};
use segmenta::backend::Backend;
use segmenta::kmeans::{Init, InitSample, KMeansParams, Pruning, Stepper};
use segmenta::pca::PcaParams;

/// One implementation's figures on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub workload: &'static str,
    pub implementation: String,
    pub adapter: String,
    pub unit: &'static str,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Median device time per iteration from GPU timestamp queries, where
    /// the adapter supports them (k-means on the GPU).
    pub device_median_ms: Option<f64>,
    pub gflops: f64,
    /// GFLOP/s over the backend's measured peak, when one was measured:
    /// on the CPU the matrix-multiply probe, on a GPU its FMA probe.
    pub peak_fraction: Option<f64>,
    /// GFLOP/s over the FMA roofline of the instruction set the kernels ran
    /// at (CPU), or the GPU's FMA probe: the same ceiling on every machine.
    pub fma_fraction: Option<f64>,
    /// Upload, warm-up and every timed repetition.
    pub end_to_end_ms: Option<f64>,
    /// Peak resident host memory during the measurement (Linux).
    pub peak_rss_mib: Option<f64>,
    /// k-means workloads: median time of a fit's default initialisation
    /// (k-means++ on [`InitSample::Auto`]'s rows), from the host's rows to
    /// the centres: the sample drawn, checked and uploaded, and seeded.
    pub init_ms: Option<f64>,
    /// `init_ms` over a whole fit of [`FIT_ITERS`] iterations at
    /// `median_ms` each: the share of a fit spent choosing where to start.
    pub init_share: Option<f64>,
}

/// The Lloyd iterations `init_share` counts a fit as.
pub const FIT_ITERS: usize = 20;

fn median_min(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

/// Times `w` on `backend`: `iters` Lloyd iterations, or `repeats` fits or
/// initialisations.
pub fn run(
    w: &Workload,
    backend: &dyn Backend,
    pruning: Pruning,
    x: &Array2<f32>,
    iters: usize,
    repeats: usize,
) -> anyhow::Result<Measurement> {
    reset_peak_rss();
    let started = Instant::now();
    let mut device_times = Vec::new();
    let times = match w.task {
        Task::Lloyd { k } => lloyd(backend, pruning, x, k, iters, repeats, &mut device_times)?,
        Task::Pca { components } => (0..repeats)
            .map(|_| {
                let t = Instant::now();
                PcaParams::new(components).fit(backend, x.view())?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<anyhow::Result<_>>()?,
        // The kernels' benchmark: every row, however many there are.
        Task::KMeansPlusPlus { k } => (0..repeats)
            .map(|r| time_init(backend, x, k, InitSample::All, r))
            .collect::<anyhow::Result<_>>()?,
    };
    let end_to_end_ms = started.elapsed().as_secs_f64() * 1e3;
    let peak_rss_mib = peak_rss_mib();
    // After the end-to-end time and peak memory, which are the Lloyd
    // run's alone.
    let init_ms = match w.task {
        Task::Lloyd { k } if pruning == Pruning::Auto => {
            let times = (0..repeats.max(1))
                .map(|r| time_init(backend, x, k, InitSample::Auto, r))
                .collect::<anyhow::Result<_>>()?;
            Some(median_min(times).0)
        }
        _ => None,
    };
    let (median_ms, min_ms) = median_min(times);
    let info = backend.info();
    Ok(Measurement {
        workload: w.id,
        implementation: format!("segmenta {}", info.backend),
        adapter: info.adapter,
        unit: w.unit(),
        median_ms,
        min_ms,
        device_median_ms: (!device_times.is_empty()).then(|| median_min(device_times).0),
        gflops: w.flop() / (median_ms * 1e-3) / 1e9,
        peak_fraction: None,
        fma_fraction: None,
        end_to_end_ms: Some(end_to_end_ms),
        peak_rss_mib,
        init_ms,
        init_share: init_ms.map(|i| i / (i + FIT_ITERS as f64 * median_ms)),
    })
}

/// Milliseconds to choose `k` centres for `x` by k-means++ from `sample`'s
/// rows, with seed `seed`.
fn time_init(
    backend: &dyn Backend,
    x: &Array2<f32>,
    k: usize,
    sample: InitSample,
    seed: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    KMeansParams::new(k)
        .init(Init::KMeansPlusPlus)
        .init_sample(sample)
        .seed(seed as u64)
        .initial_centroids_on(backend, x.view())?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Wall time per Lloyd iteration of `repeats` whole runs of `iters` steps
/// from the first k rows, each on a fresh upload (not timed), so that a
/// pruned run's first, exhaustive step is counted like the peers' first
/// iteration. One untimed warm-up step first (pipelines, first touch).
/// Device times per iteration go to `device_times` where the backend has
/// timestamps.
fn lloyd(
    backend: &dyn Backend,
    pruning: Pruning,
    x: &Array2<f32>,
    k: usize,
    iters: usize,
    repeats: usize,
    device_times: &mut Vec<f64>,
) -> anyhow::Result<Vec<f64>> {
    let initial = x.slice(ndarray::s![..k, ..]).to_owned();
    backend.upload(x.view(), None)?.lloyd_step(initial.view())?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let mut centroids = initial.clone();
        let mut resident = backend.upload(x.view(), None)?;
        let mut stepper = Stepper::new(pruning);
        let mut elapsed = 0.0;
        let mut device = Some(0.0);
        for _ in 0..iters {
            let t = Instant::now();
            let step = stepper.step(resident.as_mut(), centroids.view())?;
            elapsed += t.elapsed().as_secs_f64() * 1e3;
            device = device
                .zip(resident.last_step_device_ms())
                .map(|(a, b)| a + b);
            for (c, mut row) in centroids.rows_mut().into_iter().enumerate() {
                if step.weights[c] > 0.0 {
                    row.iter_mut()
                        .zip(step.sums.row(c))
                        .for_each(|(v, &s)| *v = (s / step.weights[c]) as f32);
                }
            }
        }
        times.push(elapsed / iters.max(1) as f64);
        device_times.extend(device.map(|t| t / iters.max(1) as f64));
    }
    Ok(times)
}

/// The CPU's matrix-multiply throughput on all cores (GFLOP/s, best of 5):
/// an f32 GEMM split into row blocks, one per rayon task.
pub fn cpu_peak_gflops() -> f64 {
    let (m, kk, n) = (4096, 512, 512);
    let a = Array2::from_shape_fn((m, kk), |(i, j)| ((i * 7 + j * 3) % 13) as f32 * 0.1);
    let b = Array2::from_shape_fn((kk, n), |(i, j)| ((i * 5 + j) % 11) as f32 * 0.1);
    let mut c = Array2::<f32>::zeros((m, n));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        c.axis_chunks_iter_mut(Axis(0), 256)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), 256).into_par_iter())
            .for_each(|(mut out, rows)| out.assign(&rows.dot(&b)));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (m * kk * n) as f64 / best / 1e9
}

/// Resets the kernel's peak-RSS counter for this process (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
