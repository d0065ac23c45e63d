//! `segmenta bench`: the standard workloads W1–W5 on every available
//! backend, optionally against scikit-learn and FAISS on identical data.

mod load;
mod measure;
mod peers;
mod service;
mod value;
mod workloads;

use clap::{Args, ValueEnum};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::json;

use super::output::table;
use measure::Measurement;
use segmenta::backend::cpu::{fma_peak_gflops, simd_level, CpuBackend, SimdLevel};
use segmenta::backend::gpu::{AdapterPolicy, GpuBackend};
use segmenta::backend::Backend;
use segmenta::kmeans::Pruning;
use workloads::{Task, Workload};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
pub enum Which {
    All,
    Cpu,
    Gpu,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated (default: all of W1–W5).
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,...")]
    pub workload: Vec<String>,
    /// Lloyd iterations per timed k-means run (time per iteration = the
    /// run's time over this).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Timed runs (k-means), fits (PCA) or initialisations (k-means++) per
    /// workload: the median and the best are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// all: the CPU and a GPU adapter if there is one (a software one is
    /// skipped under --quick); cpu or gpu: that one only.
    #[arg(long, value_enum, default_value_t = Which::All)]
    pub backend: Which,
    /// Also run W3 (n = 10,000,000) on the CPU: minutes, and 2.5 GiB of data.
    #[arg(long)]
    pub cpu_w3: bool,
    /// Scaled-down sizes (n = 20,000; W3 5,000): a smoke test, not a timing.
    #[arg(long)]
    pub quick: bool,
    /// Also run scikit-learn and FAISS on the same data in this run
    /// (pip install -r scripts/requirements-bench.txt).
    #[arg(long)]
    pub compare: bool,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Measure the gRPC service instead (W1's data): upload throughput and
    /// Assign throughput with 10,000-row requests, over loopback.
    #[arg(long)]
    pub service: bool,
    /// With --service: a load test against a real `segmenta serve` process
    /// on loopback: 16 clients sending 1,000-row Assign calls while two fits
    /// and one evaluation run; Assign latency, throughput, server peak RSS.
    #[arg(long, requires = "service")]
    pub load: bool,
    /// With --load: how long the clients send, in seconds.
    #[arg(long, default_value_t = 20)]
    pub load_seconds: u64,
    /// Measure the value models instead: BG/NBD and Gamma-Gamma fits and
    /// scoring of simulated customers (with --compare, the lifetimes
    /// package on the same summary: pip install lifetimes).
    #[arg(long)]
    pub clv: bool,
    /// With --clv: customers simulated (default 1,000,000; 50,000 with
    /// --quick).
    #[arg(long, requires = "clv")]
    pub customers: Option<usize>,
}

/// Gaussian-ish blobs (sum of uniforms) around `centres` random centres;
/// fixed seed.
pub fn synthetic(n: usize, d: usize, centres: usize, seed: u64) -> Array2<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let c = Array2::from_shape_fn((centres, d), |_| rng.random::<f32>() * 10.0);
    // In huge pages, as a fit's working copy is (`data::pages`).
    let mut x = segmenta::data::pages::with_capacity(n * d);
    for _ in 0..n {
        let pick = rng.random_range(0..centres);
        for j in 0..d {
            let noise: f32 = (0..3).map(|_| rng.random::<f32>()).sum::<f32>() - 1.5;
            x.push(c[[pick, j]] + noise);
        }
    }
    Array2::from_shape_vec((n, d), x).expect("n × d values")
}

fn data_for(w: &Workload, seed: u64) -> Array2<f32> {
    let centres = match w.task {
        Task::Lloyd { k } | Task::KMeansPlusPlus { k } => k,
        Task::Pca { components } => components,
    };
    synthetic(w.n, w.d, centres, seed)
}

fn selected(args: &BenchArgs) -> anyhow::Result<Vec<Workload>> {
    let all = workloads::standard(args.quick);
    if args.workload.is_empty() {
        return Ok(all);
    }
    args.workload
        .iter()
        .map(|name| {
            all.iter()
                .find(|w| w.id.eq_ignore_ascii_case(name.trim()))
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!("unknown workload {name:?}; choose from W1, W2, W3, W4, W5")
                })
        })
        .collect()
}

/// The backends to run, and the GPU's measured f32 peak when there is one.
type Backends = (Vec<Box<dyn Backend>>, Option<f64>);

/// `quick` with every backend skips a software GPU adapter (lavapipe runs
/// the shaders hundreds of times slower than a GPU: minutes even for the
/// quick shapes); `--backend gpu` still runs it.
fn backends(which: Which, quick: bool) -> anyhow::Result<Backends> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    let mut gpu_peak = None;
    if which != Which::Cpu {
        match GpuBackend::new(AdapterPolicy::Any) {
            Ok(gpu) if quick && which == Which::All && !gpu.is_hardware() => eprintln!(
                "GPU skipped under --quick: {} is a software adapter (run with --backend gpu to time it anyway)",
                gpu.adapter_name()
            ),
            Ok(gpu) => {
                gpu_peak = Some(gpu.peak_gflops()?);
                out.push(Box::new(gpu));
            }
            Err(e) if which == Which::All => eprintln!("GPU skipped: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    if which != Which::Gpu {
        out.insert(0, Box::new(CpuBackend::new()));
    }
    Ok((out, gpu_peak))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clv {
        let n = args
            .customers
            .unwrap_or(if args.quick { 50_000 } else { 1_000_000 });
        return value::run(n, args.repeats, args.compare, args.seed, args.json);
    }
    if args.load {
        return load::run(args.load_seconds, args.quick, args.seed, args.json);
    }
    if args.service {
        let w = workloads::standard(args.quick)[0];
        let Task::Lloyd { k } = w.task else {
            unreachable!("W1 is k-means")
        };
        return service::run(&data_for(&w, args.seed), k, args.json);
    }
    let workloads = selected(&args)?;
    let (backends, gpu_peak) = backends(args.backend, args.quick)?;
    let on_cpu = |b: &dyn Backend| b.info().backend == segmenta::backend::BackendKind::Cpu;
    let peaks = Peaks::measure(backends.iter().any(|b| on_cpu(b.as_ref())), gpu_peak);
    let mut results: Vec<Measurement> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for w in &workloads {
        let runs: Vec<&dyn Backend> = backends
            .iter()
            .map(|b| b.as_ref())
            .filter(|b| !(w.gpu_sized && on_cpu(*b) && !args.cpu_w3))
            .collect();
        if runs.len() < backends.len() {
            skipped.push(format!("{} on the CPU (add --cpu-w3)", w.id));
        }
        if runs.is_empty() {
            continue; // nor the peers: their figures need ours beside them
        }
        if !args.json {
            eprintln!("{} ...", w.describe());
        }
        let x = data_for(w, args.seed);
        for backend in runs {
            let on_cpu = on_cpu(backend);
            let mut m = measure::run(w, backend, Pruning::Auto, &x, args.iters, args.repeats)?;
            // A pruned step's GFLOP/s counts an exhaustive step's work (an
            // effective rate that can pass the peak): no share of a peak.
            if !(on_cpu && matches!(w.task, Task::Lloyd { .. })) {
                peaks.rate(&mut m, on_cpu);
            }
            results.push(m);
            if on_cpu && matches!(w.task, Task::Lloyd { .. }) {
                // The kernels without pruning: what the GPU path computes.
                let mut m = measure::run(w, backend, Pruning::Off, &x, args.iters, args.repeats)?;
                m.implementation.push_str(" (exhaustive)");
                peaks.rate(&mut m, true);
                results.push(m);
            }
        }
        if args.compare {
            results.extend(peers::compare(w, &x, args.iters)?);
        }
    }
    if args.json {
        say!(
            "{}",
            json!({
                "quick": args.quick,
                "iters": args.iters,
                "repeats": args.repeats,
                "seed": args.seed,
                "cpu_peak_gflops": peaks.cpu_gemm,
                "cpu_simd_level": peaks.cpu_level,
                "cpu_fma_peak_gflops": peaks.cpu_fma.iter().map(|(l, g)| (l.name(), *g)).collect::<std::collections::BTreeMap<_, _>>(),
                "gpu_peak_gflops": peaks.gpu,
                "workloads": workloads,
                "results": results,
                "skipped": skipped,
            })
        );
        return Ok(());
    }
    print_table(&workloads, &results, &peaks)?;
    if results.iter().any(|m| m.init_ms.is_some()) {
        say!(
            "\ninit: a fit's default k-means++ (on the automatic sample of the rows); \
             % of fit: its share of a fit of {} iterations at the median rate",
            measure::FIT_ITERS
        );
    }
    for s in &skipped {
        say!("skipped: {s}");
    }
    Ok(())
}

/// The ceilings "% of peak" is measured against: the CPU's matrix-multiply
/// rate and FMA roofline per instruction set, and the GPU's FMA rate.
struct Peaks {
    cpu_gemm: Option<f64>,
    /// The level the CPU kernels run at (`SEGMENTA_SIMD` can narrow it).
    cpu_level: SimdLevel,
    /// Every level this CPU has, widest first.
    cpu_fma: Vec<(SimdLevel, f64)>,
    gpu: Option<f64>,
}

impl Peaks {
    fn measure(cpu: bool, gpu: Option<f64>) -> Self {
        Self {
            cpu_gemm: cpu.then(measure::cpu_peak_gflops),
            cpu_level: simd_level(),
            cpu_fma: if cpu {
                SimdLevel::available()
                    .into_iter()
                    .map(|l| (l, fma_peak_gflops(l)))
                    .collect()
            } else {
                Vec::new()
            },
            gpu,
        }
    }

    fn rate(&self, m: &mut Measurement, on_cpu: bool) {
        if on_cpu {
            let fma = self.cpu_fma.iter().find(|(l, _)| *l == self.cpu_level);
            m.peak_fraction = self.cpu_gemm.map(|p| m.gflops / p);
            m.fma_fraction = fma.map(|(_, p)| m.gflops / p);
        } else {
            m.peak_fraction = self.gpu.map(|p| m.gflops / p);
            m.fma_fraction = m.peak_fraction;
        }
    }
}

fn print_table(
    workloads: &[Workload],
    results: &[Measurement],
    peaks: &Peaks,
) -> std::io::Result<()> {
    if let Some(p) = peaks.cpu_gemm {
        say!("CPU matrix-multiply peak, measured: {p:.1} GFLOP/s");
    }
    if !peaks.cpu_fma.is_empty() {
        let each: Vec<String> = peaks
            .cpu_fma
            .iter()
            .map(|(l, g)| format!("{l} {g:.1}"))
            .collect();
        say!(
            "CPU FMA peak, measured: {} GFLOP/s; kernels run at {}",
            each.join(", "),
            peaks.cpu_level
        );
    }
    if let Some(p) = peaks.gpu {
        say!("GPU FMA peak, measured: {p:.1} GFLOP/s");
    }
    for w in workloads {
        let rows: Vec<&Measurement> = results.iter().filter(|m| m.workload == w.id).collect();
        let Some(first) = rows.first() else { continue };
        say!(
            "\n{} — {}, median of the timed runs",
            w.describe(),
            w.unit()
        );
        let header: Vec<String> = [
            "implementation",
            "adapter",
            "median ms",
            "min ms",
            "device ms",
            "GFLOP/s",
            "% of peak",
            "% of FMA",
            "× first",
            "end-to-end ms",
            "peak RSS MiB",
            "init ms",
            "init % of fit",
        ]
        .map(String::from)
        .to_vec();
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|m| {
                vec![
                    m.implementation.clone(),
                    m.adapter.clone(),
                    format!("{:.2}", m.median_ms),
                    format!("{:.2}", m.min_ms),
                    opt(m.device_median_ms, 2),
                    format!("{:.1}", m.gflops),
                    opt(m.peak_fraction.map(|f| f * 100.0), 0),
                    opt(m.fma_fraction.map(|f| f * 100.0), 0),
                    format!("{:.2}", m.median_ms / first.median_ms),
                    opt(m.end_to_end_ms, 0),
                    opt(m.peak_rss_mib, 0),
                    opt(m.init_ms, 1),
                    opt(m.init_share.map(|f| f * 100.0), 1),
                ]
            })
            .collect();
        say!("{}", table(&header, &cells).trim_end_matches('\n'));
    }
    Ok(())
}
