//! The seeding kernels (k-means++ and k-means|| on the backend): GPU
//! against CPU, and both against host arithmetic.
//!
//! Tolerances, and why: none. The data are small integers and the weights
//! integers, so every squared distance, every block sum and every total is
//! an integer below 2²⁴, exact in f32 on the device and in f64 on the host
//! whatever the order of the additions. Both backends must then give the
//! same bits: the same potentials, the same drawn rows, the same centres.
//! (On real-valued data the two round differently, and a draw whose target
//! falls within rounding of a row boundary may pick the neighbour: the tie
//! the parity tests allow for labels.)

mod common;

use common::{gpu, rng};
use ndarray::{Array1, Array2};
use rand::RngExt;
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::{seed_unit, Backend, Potential};
use segmenta::kmeans::{Init, InitSample, KMeansParams};

fn integer_data(n: usize, d: usize, seed: u64) -> (Array2<f32>, Array1<f32>) {
    let mut r = rng(seed);
    let x = Array2::from_shape_fn((n, d), |_| r.random_range(0..16) as f32);
    let w = Array1::from_shape_fn(n, |_| r.random_range(1..4) as f32);
    (x, w)
}

fn d2(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
    a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum()
}

/// Every seeding kernel on one backend, checked against the host's exact
/// arithmetic; returns what it drew so two backends can be compared.
fn run_kernels(backend: &dyn Backend, x: &Array2<f32>, w: &Array1<f32>) -> Vec<usize> {
    let n = x.nrows();
    let mut r = backend.upload(x.view(), Some(w.view())).unwrap();
    let mut closest: Vec<f64> = (0..n).map(|i| d2(x.row(i), x.row(7))).collect();
    let total =
        |closest: &[f64]| -> f64 { closest.iter().zip(w).map(|(c, &w)| c * w as f64).sum() };
    let check = |p: &Potential, closest: &[f64], what: &str| {
        assert_eq!(p.total(), total(closest), "{what}: total");
        assert_eq!(p.starts.len(), p.sums.len());
        assert_eq!(p.starts[0], 0);
        for (b, (&s, &sum)) in p.starts.iter().zip(&p.sums).enumerate() {
            let end = p.starts.get(b + 1).copied().unwrap_or(n);
            let want: f64 = (s..end).map(|i| closest[i] * w[i] as f64).sum();
            assert_eq!(sum, want, "{what}: block {b}");
        }
    };
    let p = r.seed_start(x.row(7).as_slice().unwrap()).unwrap();
    check(&p, &closest, "start");

    // Score six trials (not a multiple of any group), keep the fourth.
    let trials: Vec<usize> = vec![3, 100, 555, 901, 1200, 2999 % n];
    let cands = x.select(ndarray::Axis(0), &trials);
    let scores = r.seed_score(cands.view()).unwrap();
    for (j, &t) in trials.iter().enumerate() {
        let lowered: Vec<f64> = (0..n)
            .map(|i| closest[i].min(d2(x.row(i), x.row(t))))
            .collect();
        assert_eq!(scores[j], total(&lowered), "score of trial {j}");
    }
    let p = r.seed_keep(3).unwrap();
    for (i, c) in closest.iter_mut().enumerate() {
        *c = c.min(d2(x.row(i), x.row(trials[3])));
    }
    check(&p, &closest, "keep");
    assert!(r.seed_keep(6).is_err(), "a trial that was not scored");

    // Draws at fixed fractions of the total, one past it.
    let grand = p.total();
    let mut picked = Vec::new();
    let draws: Vec<(usize, f64)> = [0.0, 0.1, 0.37, 0.5, 0.93, 0.999_999, 1.5]
        .iter()
        .map(|f| p.find(f * grand).unwrap())
        .collect();
    let rows = r.seed_pick(&draws).unwrap();
    for (&f, &row) in [0.0, 0.1, 0.37, 0.5, 0.93, 0.999_999, 1.5]
        .iter()
        .zip(&rows)
    {
        // The first row whose running sum passes the target (the last
        // positive row past the total).
        let target = f * grand;
        let mut acc = 0.0;
        let want = (0..n)
            .find(|&i| {
                let v = closest[i] * w[i] as f64;
                acc += v;
                v > 0.0 && acc > target
            })
            .unwrap_or_else(|| (0..n).rev().find(|&i| closest[i] > 0.0).unwrap());
        assert_eq!(row, want, "draw at {f} of the total");
        picked.push(row);
    }

    // k-means||: a round's draw, then lowering by what it drew.
    let factor = 40.0 / grand;
    let drawn = r.seed_oversample(factor, 12345).unwrap();
    let want: Vec<usize> = (0..n)
        .filter(|&i| seed_unit(12345, i as u32) < factor as f32 * w[i] * closest[i] as f32)
        .collect();
    assert_eq!(drawn, want, "k-means|| draw");
    assert!(
        !drawn.is_empty() && drawn.len() < n / 4,
        "{} drawn",
        drawn.len()
    );
    let new = x.select(ndarray::Axis(0), &drawn);
    let p = r.seed_lower(new.view()).unwrap();
    for (i, near) in closest.iter_mut().enumerate() {
        for c in new.rows() {
            *near = near.min(d2(x.row(i), c));
        }
    }
    check(&p, &closest, "lower");
    picked.extend(drawn);
    picked
}

#[test]
fn cpu_seeding_kernels_match_host_arithmetic() {
    // Rows over several 4096-row blocks, the last one short.
    let (x, w) = integer_data(9000, 5, 1);
    run_kernels(&CpuBackend::new(), &x, &w);
}

#[test]
fn gpu_seeding_kernels_match_host_arithmetic_and_the_cpu() {
    // Several chunks, none a whole number of 256-row blocks.
    let Some(gpu) = gpu(Some(700)) else { return };
    let (x, w) = integer_data(3000, 5, 2);
    let on_gpu = run_kernels(&gpu, &x, &w);
    let on_cpu = run_kernels(&CpuBackend::new(), &x, &w);
    assert_eq!(on_gpu, on_cpu);
}

#[test]
fn kmeans_plus_plus_and_parallel_choose_the_same_centres_on_both_backends() {
    let Some(gpu) = gpu(Some(1000)) else { return };
    let (x, _) = integer_data(2500, 4, 3);
    for init in [Init::KMeansPlusPlus, Init::KMeansParallel] {
        let params = KMeansParams::new(12).init(init.clone()).seed(9);
        let g = params.initial_centroids_on(&gpu, x.view()).unwrap();
        let c = params.initial_centroids(x.view()).unwrap();
        assert_eq!(g, c, "{init:?}");
        // Distinct rows of the data.
        for (i, a) in c.rows().into_iter().enumerate() {
            assert!(x.rows().into_iter().any(|r| r == a));
            for b in c.rows().into_iter().skip(i + 1) {
                assert_ne!(a, b, "{init:?}: a centre chosen twice");
            }
        }
    }
}

/// Seeding is not just any rows: on well-separated blobs k-means++ puts
/// one centre in each blob, on either backend.
#[test]
fn kmeans_plus_plus_finds_every_blob() {
    let (x, truth) = common::blobs(4000, 3, 6, 4);
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    if let Some(g) = gpu(None) {
        backends.push(Box::new(g));
    }
    for b in &backends {
        let c = KMeansParams::new(6)
            .init(Init::KMeansPlusPlus)
            .seed(5)
            .initial_centroids_on(b.as_ref(), x.view())
            .unwrap();
        let mut blobs: Vec<usize> = c
            .rows()
            .into_iter()
            .map(|centre| {
                let i = x.rows().into_iter().position(|r| r == centre).unwrap();
                truth[i]
            })
            .collect();
        blobs.sort_unstable();
        assert_eq!(blobs, (0..6).collect::<Vec<_>>(), "{}", b.info().backend);
    }
}

/// Seeding on a sample: the sample is drawn on the host from the seed, so
/// both backends still choose the same centres, rows of the data. The
/// sample really restricts the draws (the centres differ from seeding on
/// every row, whose draws use the same stream), and a "sample" of every
/// row is seeding on every row.
#[test]
fn seeding_on_a_sample_is_the_same_on_both_backends() {
    // 1,200 of 2,500 rows: the sample spans two GPU chunks of 1,000.
    let gpu = gpu(Some(1000));
    let (x, _) = integer_data(2500, 4, 3);
    for init in [Init::KMeansPlusPlus, Init::KMeansParallel] {
        let params = KMeansParams::new(12).init(init.clone()).seed(9);
        let sampled = params.clone().init_sample(InitSample::Rows(1200));
        let c = sampled.initial_centroids(x.view()).unwrap();
        if let Some(gpu) = &gpu {
            let g = sampled.initial_centroids_on(gpu, x.view()).unwrap();
            assert_eq!(g, c, "{init:?}");
        }
        for a in c.rows() {
            assert!(x.rows().into_iter().any(|r| r == a), "{init:?}: not a row");
        }
        let all = params
            .clone()
            .init_sample(InitSample::All)
            .initial_centroids(x.view())
            .unwrap();
        assert_ne!(c, all, "{init:?}: the sample changed nothing");
        let every = params
            .clone()
            .init_sample(InitSample::Rows(2500))
            .initial_centroids(x.view())
            .unwrap();
        assert_eq!(every, all, "{init:?}");
        // Small data are never sampled by default.
        assert_eq!(params.initial_centroids(x.view()).unwrap(), all);
    }
}

#[test]
fn the_automatic_sample_and_its_limits() {
    let auto = InitSample::Auto;
    assert_eq!(auto.rows(131_072, 8, false), None, "up to twice the floor");
    assert_eq!(auto.rows(131_073, 8, false), Some(65_536));
    assert_eq!(auto.rows(10_000_000, 256, false), Some(262_144));
    assert_eq!(auto.rows(10_000_000, 256, true), None, "weighted");
    assert_eq!(InitSample::Rows(5_000).rows(4_000, 8, true), None);
    assert_eq!(
        InitSample::Rows(5_000).rows(10_000, 8, true),
        None,
        "half the rows"
    );
    assert_eq!(InitSample::Rows(5_000).rows(10_001, 8, true), Some(5_000));
    assert_eq!(InitSample::Rows(usize::MAX).rows(10_001, 8, false), None);
    assert_eq!(InitSample::All.rows(10_000_000, 8, false), None);
    let err = KMeansParams::new(10)
        .init_sample(InitSample::Rows(9))
        .check()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "an initialisation sample of 9 rows cannot give k = 10 centres"
    );
}

/// Only the rows seeding reads are checked, but a bad one is named by its
/// row in the data, not in the sample.
#[test]
fn a_non_finite_sampled_row_is_named_by_its_row_in_the_data() {
    let (mut x, _) = integer_data(3000, 4, 5);
    let params = KMeansParams::new(3).init_sample(InitSample::Rows(1000));
    // Every tenth row from the sixth: a sample of a third holds some.
    for i in (5..3000).step_by(10) {
        x[[i, 1]] = f32::NAN;
    }
    let err = params.initial_centroids(x.view()).unwrap_err().to_string();
    assert!(err.contains("at row 6, column"), "{err}");
}

/// The automatic sample is uniform over the rows, not their first part:
/// with the rows sorted by blob and one blob 50 times smaller than the
/// rest and last, the default seeding (65,536 of 148,350 rows) still puts
/// a centre in every blob, and the fit from it equals the fit seeded on
/// every row up to the order of the clusters.
#[test]
fn the_automatic_sample_finds_a_small_blob_at_the_end() {
    let (big, small, blobs, d) = (7_800, 150, 20, 3);
    let n = big * (blobs - 1) + small;
    let mut r = rng(17);
    let mut truth = Vec::with_capacity(n);
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        let blob = (i / big).min(blobs - 1);
        if j == 0 {
            truth.push(blob);
        }
        let centre = if j == blob % d {
            200.0 * (blob / d + 1) as f32
        } else {
            0.0
        };
        centre + r.random_range(-1.0f32..1.0)
    });
    assert_eq!(InitSample::Auto.rows(n, blobs, false), Some(65_536));
    let params = KMeansParams::new(blobs).seed(3).max_iter(50);
    let centres = params.initial_centroids(x.view()).unwrap();
    let mut found: Vec<usize> = centres
        .rows()
        .into_iter()
        .map(|c| truth[x.rows().into_iter().position(|r| r == c).unwrap()])
        .collect();
    found.sort_unstable();
    assert_eq!(found, (0..blobs).collect::<Vec<_>>());
    let cpu = CpuBackend::new();
    let sampled = params.fit(&cpu, x.view(), None).unwrap();
    let every = params
        .clone()
        .init_sample(InitSample::All)
        .fit(&cpu, x.view(), None)
        .unwrap();
    let ari = segmenta::kmeans::adjusted_rand_index(sampled.labels(), every.labels());
    assert_eq!(ari, 1.0);
    let (a, b) = (sampled.inertia(), every.inertia());
    assert!((a - b).abs() <= 1e-6 * b, "inertia {a} against {b}");
}
