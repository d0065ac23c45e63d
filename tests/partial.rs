//! Partial cluster sums add up: the sums of row partitions, merged on the
//! host, equal the sums of all the rows against the same centroids — what a
//! chunked, multi-device or distributed Lloyd step reduces.
//!
//! The same holds for steps over row ranges of one resident and for rows
//! streamed in chunks.
//!
//! Tolerances: counts are exact (the same rows get the same labels against
//! the same centroids). The CPU accumulates in f64, so sums and inertia
//! differ only by the order of additions: relative 1e-12. The GPU sums
//! segments of a few hundred rows in f32 and groups of segments in
//! compensated f32 before the host's f64 reduction, and a range moves the
//! segment boundaries: relative 1e-5 (f32 has 24 bits; a few thousand
//! terms of similar size lose at most ~1e-6).

mod common;

use common::{blobs, gpu};
use ndarray::{s, Array1, Array2, Axis};
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::{Backend, ClusterSums};
use segmenta::kmeans::partial::StreamedStep;

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

/// Steps over row ranges of one resident add up to the step over all its
/// rows, whatever ran in between; the GPU's ranges cross its 512-row
/// chunks and start inside them. Tolerances as above.
fn check_ranges(backend: &dyn Backend, rel: f64) {
    let (x, _) = blobs(3001, 7, 5, 12);
    let w: Array1<f32> = (0..x.nrows()).map(|i| 0.5 + (i % 3) as f32).collect();
    let c = x.slice(s![..5, ..]).to_owned();
    let mut r = backend.upload(x.view(), Some(w.view())).unwrap();
    let whole = r.lloyd_step(c.view()).unwrap();
    let cuts = [0, 1, 700, 1500, 2048, 3001];
    let mut parts = Vec::new();
    for (i, cut) in cuts.windows(2).enumerate() {
        parts.push(r.step_rows(cut[0]..cut[1], c.view()).unwrap());
        if i == 2 {
            // Another kernel in between changes nothing.
            r.assign(x.slice(s![..3, ..])).unwrap();
        }
    }
    // A range's sums are its rows' sums: the same as uploading them alone.
    let alone = step(
        backend,
        x.slice(s![700..1500, ..]),
        Some(w.slice(s![700..1500])),
        &c,
    );
    for (a, b) in parts[2].sums.iter().zip(alone.sums.iter()) {
        assert!(close(*a, *b, rel), "range 700..1500: {a} vs {b}");
    }
    let merged = ClusterSums::total(5, 7, &parts).unwrap();
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
    // An empty range is the sums of no rows; rows past the end are an error.
    assert_eq!(
        r.step_rows(5..5, c.view()).unwrap(),
        ClusterSums::zeros(5, 7)
    );
    let e = r.step_rows(3000..3002, c.view()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rows 3000..3002 asked of a matrix of 3001 rows"
    );
}

#[test]
fn cpu_row_ranges_add_up_to_the_whole() {
    check_ranges(&CpuBackend::new(), 1e-12);
}

#[test]
fn gpu_row_ranges_add_up_to_the_whole() {
    let Some(g) = gpu(Some(512)) else { return };
    check_ranges(&g, 1e-5);
}

/// Rows streamed in chunks (never resident together) give the whole step.
fn check_streamed(backend: &dyn Backend, rel: f64) {
    let (x, _) = blobs(2500, 6, 4, 13);
    let c = x.slice(s![..4, ..]).to_owned();
    let whole = step(backend, x.view(), None, &c);
    let mut streamed = StreamedStep::new(backend, c.view());
    for chunk in x.axis_chunks_iter(Axis(0), 333) {
        streamed.push(chunk, None).unwrap();
    }
    // An empty chunk is no rows; a chunk of the wrong width is refused.
    streamed.push(x.slice(s![..0, ..]), None).unwrap();
    let e = streamed.push(x.slice(s![..2, ..3]), None).unwrap_err();
    assert_eq!(e.to_string(), "rows have 3 features, the model expects 6");
    assert_eq!(streamed.rows(), 2500);
    let total = streamed.finish();
    assert_eq!(total.weights, whole.weights);
    for (a, b) in total.sums.iter().zip(whole.sums.iter()) {
        assert!(close(*a, *b, rel), "{a} vs {b}");
    }
    assert!(close(total.inertia, whole.inertia, rel));
}

#[test]
fn cpu_streamed_rows_add_up_to_the_whole() {
    check_streamed(&CpuBackend::new(), 1e-12);
}

#[test]
fn gpu_streamed_rows_add_up_to_the_whole() {
    let Some(g) = gpu(Some(512)) else { return };
    check_streamed(&g, 1e-5);
}

/// Residents move to the thread that runs their partition.
#[test]
fn residents_are_send() {
    fn send<T: Send>(_: &T) {}
    let x = Array2::<f32>::zeros((4, 2));
    let backend = CpuBackend::new();
    let r = backend.upload(x.view(), None).unwrap();
    send(&r);
    let c = Array2::<f32>::zeros((1, 2));
    let sums = std::thread::scope(|s| {
        s.spawn(move || {
            let mut r = r;
            r.lloyd_step(c.view()).unwrap()
        })
        .join()
        .unwrap()
    });
    assert_eq!(sums.weights, vec![4.0]);
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
    assert_eq!(twice, before.clone() + before.clone());
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
    let g = gpu(None);
    let mut backends: Vec<&dyn Backend> = vec![&cpu];
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
