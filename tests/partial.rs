//! Partial cluster sums add up: the sums of row partitions, merged on the
//! host, equal the sums of all the rows against the same centroids — what a
//! chunked, multi-device or distributed Lloyd step reduces.
//!
//! Tolerances: counts are exact (the same rows get the same labels against
//! the same centroids). The CPU accumulates in f64, so sums and inertia
//! differ only by the order of additions: relative 1e-12. The GPU sums in
//! f32 per chunk before the host's f64 reduction: relative 1e-5 (f32 has
//! 24 bits; a few thousand terms of similar size lose at most ~1e-6).

mod common;

use common::{blobs, gpu};
use ndarray::{s, Array1, Array2};
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::{Backend, ClusterSums};

fn step(
    backend: &dyn Backend,
    x: ndarray::ArrayView2<f32>,
    w: Option<ndarray::ArrayView1<f32>>,
    c: &Array2<f32>,
) -> ClusterSums {
    backend.upload(x, w).unwrap().lloyd_step(c.view()).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

fn check(backend: &dyn Backend, rel: f64) {
    let (x, _) = blobs(3001, 7, 5, 11);
    let w: Array1<f32> = (0..x.nrows()).map(|i| 0.5 + (i % 4) as f32).collect();
    let c = x.slice(s![..5, ..]).to_owned();
    for weights in [None, Some(w.view())] {
        let whole = step(backend, x.view(), weights, &c);
        // Uneven partitions, one of them a single row.
        let cuts = [0, 1, 700, 2048, x.nrows()];
        let parts: Vec<ClusterSums> = cuts
            .windows(2)
            .map(|r| {
                let rows = s![r[0]..r[1], ..];
                step(
                    backend,
                    x.slice(rows),
                    weights.map(|w| w.slice_move(s![r[0]..r[1]])),
                    &c,
                )
            })
            .collect();
        let merged = ClusterSums::total(5, 7, &parts).unwrap();
        assert_eq!(merged.weights.len(), 5);
        for j in 0..5 {
            assert!(
                close(merged.weights[j], whole.weights[j], rel),
                "weight {j}"
            );
        }
        for (a, b) in merged.sums.iter().zip(whole.sums.iter()) {
            assert!(close(*a, *b, rel), "{a} vs {b}");
        }
        assert!(close(merged.inertia, whole.inertia, rel));
    }
}

#[test]
fn cpu_partitions_add_up_to_the_whole() {
    check(&CpuBackend::new(), 1e-12);
}

#[test]
fn gpu_partitions_add_up_to_the_whole() {
    let Some(g) = gpu(Some(512)) else { return };
    check(&g, 1e-5);
}

#[test]
fn merging_is_checked_and_zeros_are_its_identity() {
    let mut a = ClusterSums {
        sums: Array2::from_elem((2, 3), 1.5),
        weights: vec![2.0, 1.0],
        inertia: 4.0,
    };
    let before = a.clone();
    a.merge(&ClusterSums::zeros(2, 3)).unwrap();
    assert_eq!(a, before);
    let e = a.merge(&ClusterSums::zeros(3, 3)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cluster sums of shape (2, 3) and (3, 3) cannot be added"
    );
    let twice = ClusterSums::total(2, 3, [&before, &before]).unwrap();
    assert_eq!(twice.weights, [4.0, 2.0]);
    assert_eq!(twice.inertia, 8.0);
    assert!(twice.sums.iter().all(|&v| v == 3.0));
}

/// Every backend's `assign` returns labels, distances and second distances,
/// whatever ran before it (no hidden order between kernels).
#[test]
fn assign_reports_every_field_on_every_backend() {
    let (x, _) = blobs(600, 4, 3, 5);
    let c = x.slice(s![..3, ..]).to_owned();
    let cpu = CpuBackend::new();
    let exhaustive = CpuBackend::exhaustive();
    let g = gpu(None);
    let mut backends: Vec<&dyn Backend> = vec![&cpu, &exhaustive];
    if let Some(g) = &g {
        backends.push(g);
    }
    let mut reference: Option<Vec<u32>> = None;
    for b in backends {
        let what = b.info().adapter;
        let mut r = b.upload(x.view(), None).unwrap();
        let a = r.assign(c.view()).unwrap();
        assert_eq!((a.labels.len(), a.distances.len()), (600, 600), "{what}");
        assert!(
            a.second_distances
                .iter()
                .zip(&a.distances)
                .all(|(s, d)| s.is_finite() && s >= d),
            "{what}"
        );
        // No call order: Lloyd steps in between change nothing an assign reports.
        for _ in 0..3 {
            r.lloyd_step(c.view()).unwrap();
        }
        let again = r.assign(c.view()).unwrap();
        assert_eq!(again.labels, a.labels, "{what}");
        assert_eq!(again.distances, a.distances, "{what}");
        match &reference {
            Some(labels) => assert_eq!(&a.labels, labels, "{what}"),
            None => reference = Some(a.labels.clone()),
        }
        // k = 1: no second centroid, so the second distance is infinite.
        let one = r.assign(c.slice(s![..1, ..])).unwrap();
        assert!(
            one.second_distances.iter().all(|s| s.is_infinite()),
            "{what}"
        );
    }
}
