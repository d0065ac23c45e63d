//! Kernel benchmarks per backend and shape: assignment, the fused Lloyd step
//! (assignment + centroid sums), Gram (alone, and PCA's fused sums + Gram)
//! and projection. Seeded data.
//!
//! `cargo bench --bench kernels` runs both backends (the GPU one on whatever
//! adapter is present: on lavapipe its numbers say nothing about a real GPU).
//! `SEGMENTA_BENCH_FULL=1` adds the 1,000,000-row shapes of BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::gpu::{AdapterPolicy, GpuBackend};
use segmenta::backend::Backend;

fn data(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| rng.random::<f32>())
}

/// A resident's `lloyd_step` is always exhaustive (pruning is the Lloyd
/// loop's strategy), so a step repeated on the same centroids times the
/// kernels, not the bounds.
fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut all: Vec<(&'static str, Box<dyn Backend>)> = vec![("cpu", Box::new(CpuBackend::new()))];
    match GpuBackend::new(AdapterPolicy::Any) {
        Ok(g) => all.push(("gpu", Box::new(g))),
        Err(e) => eprintln!("GPU benches skipped: {e}"),
    }
    all
}

fn shapes() -> Vec<(usize, usize, usize)> {
    let mut s = vec![(100_000, 32, 64), (100_000, 16, 8)];
    if std::env::var("SEGMENTA_BENCH_FULL").as_deref() == Ok("1") {
        s.extend([(1_000_000, 32, 64), (1_000_000, 16, 8)]);
    }
    s
}

fn kmeans_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("kmeans");
    group.sample_size(10);
    for (name, backend) in backends() {
        for (n, d, k) in shapes() {
            let x = data(n, d, 1);
            let centroids = data(k, d, 2);
            let mut resident = backend.upload(x.view(), None).unwrap();
            let id = format!("{name}/n{n}_d{d}_k{k}");
            group.throughput(Throughput::Elements((n * d * k) as u64));
            group.bench_function(BenchmarkId::new("lloyd_step", &id), |b| {
                b.iter(|| resident.lloyd_step(centroids.view()).unwrap())
            });
            group.bench_function(BenchmarkId::new("assign", &id), |b| {
                b.iter(|| resident.assign(centroids.view()).unwrap().labels.len())
            });
        }
    }
    group.finish();
}

fn pca_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("pca");
    group.sample_size(10);
    for (name, backend) in backends() {
        let (n, d) = (100_000, 64);
        let x = data(n, d, 3);
        let mean = vec![0.5f32; d];
        let components = data(8, d, 4);
        let mut resident = backend.upload(x.view(), None).unwrap();
        let id = format!("{name}/n{n}_d{d}");
        group.bench_function(BenchmarkId::new("gram", &id), |b| {
            b.iter(|| resident.gram(&mean).unwrap())
        });
        // What a PCA fit calls: sums and Gram (fused in one pass on the CPU).
        group.bench_function(BenchmarkId::new("centred_gram", &id), |b| {
            b.iter(|| resident.centred_gram().unwrap())
        });
        group.bench_function(BenchmarkId::new("project_c8", &id), |b| {
            b.iter(|| resident.project(&mean, components.view()).unwrap())
        });
        group.bench_function(BenchmarkId::new("column_sums", &id), |b| {
            b.iter(|| resident.column_sums().unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, kmeans_kernels, pca_kernels);
criterion_main!(benches);
