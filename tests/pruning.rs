//! Pruned Lloyd steps (the Hamerly strategy over the CPU's bounded kernel)
//! against exhaustive ones, on the same data and the same centroids at
//! every step.
//!
//! Tolerances, and why:
//! - **Labels** are equal except near ties: both paths pick the nearest
//!   centroid from f32 distances; bounds are widened by a few f32 ulps, so a
//!   row may keep a label that an exhaustive scan flips only when the two
//!   distances agree to about `1e-5` of `1 + ‖x‖² + ‖c‖²` (checked in f64).
//! - **Sums and weights** of the pruned path are updated by the rows that
//!   changed cluster, in f64; they are checked against an f64 host sum over
//!   its own labels to `1e-9` relative (f64 round-off over a few thousand
//!   additions, far below f32 resolution).
//! - **Inertia** of the pruned path comes from the sums, about the data's
//!   mean; the host reference sums exact f64 distances. The gap is the
//!   exhaustive first step's f32 per-row distances (`~d·ε ≈ 4e-6` relative)
//!   carried through, so we allow `1e-5` relative.

mod common;

use common::{assert_ties_only, blobs, dist2, host_sums, uniform, HostSums};
use ndarray::{Array1, Array2, ArrayView2};
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::{Backend, ClusterSums};
use segmenta::kmeans::{Init, KMeansParams, Pruning, Stepper};

/// Checks a step's sums, weights and inertia against an f64 host reference
/// over `labels`.
fn assert_step(
    x: &Array2<f32>,
    w: Option<&Array1<f32>>,
    c: ArrayView2<f32>,
    labels: &[u32],
    got: &ClusterSums,
) {
    let (k, d) = got.sums.dim();
    let HostSums {
        sums,
        weights,
        abs: scale,
        inertia,
    } = host_sums(x, w, labels, k, |i| {
        dist2(x.row(i), c.row(labels[i] as usize))
    });
    for c in 0..k {
        assert!(
            (got.weights[c] - weights[c]).abs() <= 1e-9 * (1.0 + weights[c]),
            "cluster {c}: weight {} vs {}",
            got.weights[c],
            weights[c]
        );
        for j in 0..d {
            assert!(
                (got.sums[[c, j]] - sums[[c, j]]).abs() <= 1e-9 * (1.0 + scale[c]),
                "cluster {c} dim {j}: {} vs {}",
                got.sums[[c, j]],
                sums[[c, j]]
            );
        }
    }
    assert!(
        (got.inertia - inertia).abs() <= 1e-5 * inertia,
        "inertia {} vs {inertia}",
        got.inertia
    );
}

fn means(step: &ClusterSums, previous: &Array2<f32>) -> Array2<f32> {
    let mut next = previous.clone();
    for (c, mut row) in next.rows_mut().into_iter().enumerate() {
        if step.weights[c] > 0.0 {
            for (v, &s) in row.iter_mut().zip(step.sums.row(c)) {
                *v = (s / step.weights[c]) as f32;
            }
        }
    }
    next
}

/// Runs `steps` Lloyd steps on both paths, feeding both the exhaustive
/// path's means, and checks every step; returns the near ties seen.
fn compare(x: &Array2<f32>, w: Option<&Array1<f32>>, k: usize, steps: usize) -> usize {
    // One resident for both strategies: the backend keeps no state between
    // kernels, so interleaving them changes nothing.
    let backend = CpuBackend::new();
    let mut r = backend.upload(x.view(), w.map(|w| w.view())).unwrap();
    let (mut pruned, mut exhaustive) = (Stepper::new(Pruning::Auto), Stepper::new(Pruning::Off));
    let mut c = x.slice(ndarray::s![..k, ..]).to_owned();
    let mut ties = 0;
    for _ in 0..steps {
        let got = pruned.step(r.as_mut(), c.view()).unwrap();
        let want = exhaustive.step(r.as_mut(), c.view()).unwrap();
        // What each step decided, per row.
        let a = pruned.labels().expect("a pruned step ran").to_vec();
        let b = r.assign(c.view()).unwrap().labels;
        ties += assert_ties_only(x.view(), c.view(), &a, &b);
        assert_step(x, w, c.view(), &a, &got);
        assert_step(x, w, c.view(), &b, &want);
        c = means(&want, &c);
    }
    ties
}

#[test]
fn small_k_weighted_steps_match_the_exhaustive_ones() {
    // Five centroids for three blobs (the first rows cycle through the
    // blobs): two blobs are split, and their shared boundary keeps moving.
    let (x, _) = blobs(20_003, 7, 3, 11);
    let w = uniform(x.nrows(), 1, 0.5, 2.0, 3).column(0).to_owned();
    compare(&x, Some(&w), 5, 12);
}

#[test]
fn panel_kernel_steps_match_the_exhaustive_ones() {
    let (x, _) = blobs(12_001, 33, 24, 12);
    compare(&x, None, 40, 10);
}

#[test]
fn steps_match_far_from_the_origin() {
    // Inertia comes from sums about the data's mean: an offset of 1,000
    // (a million in ‖x‖²) must not cost precision.
    let (x, _) = blobs(9_000, 4, 3, 13);
    compare(&(x + 1000.0), None, 6, 8);
}

#[test]
fn k_equal_one_and_duplicate_centroids() {
    let x = uniform(5_000, 3, -1.0, 1.0, 14);
    compare(&x, None, 1, 3);
    // Two identical centroids: half-gaps of zero prune nothing, and ties
    // between them must resolve like the exhaustive scan's.
    let mut y = x.clone();
    let first = y.row(0).to_owned();
    y.row_mut(1).assign(&first);
    compare(&y, None, 4, 4);
}

#[test]
fn fits_with_empty_cluster_relocation_agree() {
    let (x, _) = blobs(6_000, 5, 4, 15);
    // Centroids stacked on one row: all but one cluster start empty and are
    // relocated, after which the bounds must still hold.
    let init = Array2::from_shape_fn((4, 5), |(_, j)| x[[0, j]]);
    let fit = |pruning: Pruning| {
        KMeansParams::new(4)
            .pruning(pruning)
            .init(Init::Given(init.clone()))
            .n_init(1)
            .max_iter(30)
            .tol(0.0)
            .fit(&CpuBackend::new(), x.view(), None)
            .unwrap()
    };
    let (p, e) = (fit(Pruning::Auto), fit(Pruning::Off));
    assert_ties_only(x.view(), e.centroids().view(), p.labels(), e.labels());
    for (a, b) in p.centroids().iter().zip(e.centroids()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!((p.inertia() - e.inertia()).abs() <= 1e-6 * e.inertia());
}
