//! The `segmenta demo` pipeline end to end on the CPU backend: generate the
//! 100,000-customer transaction log, run the segment job (k sweep 2..10,
//! three k-means runs per k), write every output and the report.
//!
//! `cargo bench --bench segment` — the goal is under a minute on a 2-core
//! machine without a GPU. Under `cargo test` it runs once on 5,000 customers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use segmenta::backend::cpu::CpuBackend;
use segmenta::segmentation::demo::write_demo_log;
use segmenta::segmentation::transactions::TransactionColumns;
use segmenta::segmentation::{run_segmentation, write_outputs, SegmentControl, SegmentParams};

fn demo(c: &mut Criterion) {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let customers = if benchmarking { 100_000 } else { 5_000 };
    let dir = tempfile::TempDir::new().expect("temp dir");
    let params = SegmentParams {
        columns: TransactionColumns {
            order: Some("order_id".into()),
            ..Default::default()
        },
        ..SegmentParams::default()
    };
    let backend = CpuBackend::new();
    let mut group = c.benchmark_group("demo_end_to_end");
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter(customers), |b| {
        b.iter(|| {
            let log = dir.path().join("transactions.csv");
            write_demo_log(&log, customers, 42).expect("log");
            let run = run_segmentation(&backend, &log, &params, None, &SegmentControl::default())
                .expect("segment job");
            write_outputs(&run, &dir.path().join("out")).expect("outputs");
            run.model.k()
        })
    });
    group.finish();
}

criterion_group!(benches, demo);
criterion_main!(benches);
