//! `segmenta bench`: time Lloyd iterations on seeded synthetic data, and
//! (with `--compare`) scikit-learn on the identical data and initial centroids.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::{Args, ValueEnum};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use serde_json::json;

use super::output::table;
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::gpu::{AdapterPolicy, GpuBackend};
use segmenta::backend::Backend;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
pub enum Which {
    All,
    Cpu,
    Gpu,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub n: usize,
    /// Features.
    #[arg(long, default_value_t = 32)]
    pub d: usize,
    /// Clusters.
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    /// Lloyd iterations timed (median reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long, value_enum, default_value_t = Which::All)]
    pub backend: Which,
    /// Scaled-down sizes (n = 20,000): a smoke test, not a timing.
    #[arg(long)]
    pub quick: bool,
    /// Also run scikit-learn on the same data (needs python3 with
    /// scikit-learn: pip install -r scripts/requirements-bench.txt).
    #[arg(long)]
    pub compare: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Measure the gRPC service instead: upload throughput of the n × d data
    /// and Assign throughput with 10,000-row requests, over loopback.
    #[arg(long)]
    pub service: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    implementation: String,
    adapter: String,
    median_ms: f64,
    min_ms: f64,
    gflops: f64,
    upload_ms: f64,
}

/// Gaussian-ish blobs (sum of uniforms) around `k` random centres; fixed seed.
pub fn synthetic(n: usize, d: usize, k: usize, seed: u64) -> (Array2<f32>, Array2<f32>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let centres = Array2::from_shape_fn((k, d), |_| rng.random::<f32>() * 10.0);
    let mut x = Array2::<f32>::zeros((n, d));
    for mut row in x.rows_mut() {
        let c = rng.random_range(0..k);
        for (j, v) in row.iter_mut().enumerate() {
            let noise: f32 = (0..3).map(|_| rng.random::<f32>()).sum::<f32>() - 1.5;
            *v = centres[[c, j]] + noise;
        }
    }
    // Initial centroids: the first k rows (as every implementation gets them).
    let init = x.slice(ndarray::s![..k, ..]).to_owned();
    (x, init)
}

fn time_backend(
    backend: &dyn Backend,
    x: &Array2<f32>,
    init: &Array2<f32>,
    iters: usize,
) -> anyhow::Result<Row> {
    let t = Instant::now();
    let mut resident = backend.upload(x.view(), None)?;
    resident.lloyd_step(init.view())?; // warm-up; also completes the upload
    let upload_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut centroids = init.clone();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let step = resident.lloyd_step(centroids.view())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        for (c, mut row) in centroids.rows_mut().into_iter().enumerate() {
            if step.weights[c] > 0.0 {
                row.iter_mut()
                    .zip(step.sums.row(c))
                    .for_each(|(v, &s)| *v = (s / step.weights[c]) as f32);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flop = 2.0 * (x.nrows() * x.ncols() * init.nrows()) as f64;
    let info = backend.info();
    Ok(Row {
        implementation: format!("segmenta {}", info.backend),
        adapter: info.adapter,
        median_ms: median,
        min_ms: times[0],
        gflops: flop / (median * 1e-3) / 1e9,
        upload_ms,
    })
}

fn write_npy(path: &Path, a: &Array2<f32>) -> anyhow::Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        a.nrows(),
        a.ncols()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(bytemuck::cast_slice(
        a.as_standard_layout().as_slice().expect("contiguous"),
    ))?;
    Ok(())
}

fn compare(x: &Array2<f32>, init: &Array2<f32>, iters: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    write_npy(&dir.path().join("x.npy"), x)?;
    write_npy(&dir.path().join("init.npy"), init)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_peers.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .arg(iters.to_string())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/bench_peers.py failed (pip install -r scripts/requirements-bench.txt?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let flop = 2.0 * (x.nrows() * x.ncols() * init.nrows()) as f64;
    let peers: Vec<(String, f64, f64)> = serde_json::from_slice(&out.stdout)?;
    Ok(peers
        .into_iter()
        .map(|(name, median, min)| Row {
            implementation: name,
            adapter: "cpu".into(),
            median_ms: median,
            min_ms: min,
            gflops: flop / (median * 1e-3) / 1e9,
            upload_ms: 0.0,
        })
        .collect())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let n = if args.quick {
        args.n.min(20_000)
    } else {
        args.n
    };
    let (x, init) = synthetic(n, args.d, args.k, args.seed);
    if args.service {
        return super::bench_service::run(&x, args.k, args.json);
    }
    let mut rows = Vec::new();
    if args.backend != Which::Gpu {
        rows.push(time_backend(&CpuBackend::new(), &x, &init, args.iters)?);
    }
    if args.backend != Which::Cpu {
        match GpuBackend::new(AdapterPolicy::Any) {
            Ok(gpu) => rows.push(time_backend(&gpu, &x, &init, args.iters)?),
            Err(e) if args.backend == Which::All => eprintln!("GPU skipped: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    if args.compare {
        rows.extend(compare(&x, &init, args.iters)?);
    }
    if args.json {
        println!(
            "{}",
            json!({"n": n, "d": args.d, "k": args.k, "iters": args.iters, "results": rows})
        );
        return Ok(());
    }
    println!(
        "Lloyd iteration, n = {n}, d = {}, k = {}, median of {} iterations",
        args.d, args.k, args.iters
    );
    let base = rows.first().map_or(1.0, |r| r.median_ms);
    let header: Vec<String> = [
        "implementation",
        "adapter",
        "median ms",
        "min ms",
        "GFLOP/s",
        "× first",
        "upload+1st ms",
    ]
    .map(String::from)
    .to_vec();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.implementation.clone(),
                r.adapter.clone(),
                format!("{:.2}", r.median_ms),
                format!("{:.2}", r.min_ms),
                format!("{:.1}", r.gflops),
                format!("{:.2}", r.median_ms / base),
                format!("{:.1}", r.upload_ms),
            ]
        })
        .collect();
    print!("{}", table(&header, &cells));
    Ok(())
}
