//! Clustering and PCA quality on data with a known answer, on both backends.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{adjusted_rand_index, blobs, gpu, reference_lloyd, uniform};
use ndarray::{array, Array1, Array2, ShapeBuilder};
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::{
    with_cpu_fallback, Backend, BackendChoice, BackendError, BackendInfo, BackendKind, GpuError,
    Resident,
};
use segmenta::kmeans::{FitControl, Init, KMeansParams};
use segmenta::pca::PcaParams;
use segmenta::Error;

fn backends() -> Vec<Box<dyn Backend>> {
    let mut all: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    if let Some(g) = gpu(None) {
        all.push(Box::new(g));
    }
    all
}

#[test]
fn blobs_are_recovered() {
    let (x, truth) = blobs(4000, 6, 8, 1);
    for b in backends() {
        for init in [Init::KMeansPlusPlus, Init::KMeansParallel] {
            let model = KMeansParams::new(8)
                .init(init.clone())
                .n_init(3)
                .seed(5)
                .fit(b.as_ref(), x.view(), None)
                .unwrap();
            let ari = adjusted_rand_index(&truth, model.labels());
            assert!(ari >= 0.99, "{:?} {init:?}: ARI {ari}", b.info());
        }
    }
}

/// One wild value (a mistyped amount of 10¹² among tens) must not cost the
/// other rows their differences: centred on the mean (3.3 × 10⁹ here), the
/// f32 working copy rounded every ordinary row of that column to the same
/// number, and three planted groups came back with centroids at 0.
#[test]
fn one_wild_value_leaves_the_other_clusters_intact() {
    let (x, truth) = blobs(300, 2, 3, 9);
    let mut wild = Array2::<f32>::zeros((301, 2));
    wild.slice_mut(ndarray::s![..300, ..]).assign(&x);
    wild[(300, 0)] = 1e12;
    let mut expected = truth.clone();
    expected.push(3);
    for b in backends() {
        for standardize in [false, true] {
            let model = KMeansParams::new(4)
                .standardize(standardize)
                .n_init(3)
                .seed(2)
                .fit(b.as_ref(), wild.view(), None)
                .unwrap();
            let ari = adjusted_rand_index(&expected, model.labels());
            assert!(
                ari >= 0.99,
                "{:?} standardize {standardize}: ARI {ari}",
                b.info()
            );
            // The planted groups' centroids are where their rows are.
            for c in 0..3 {
                let rows: Vec<usize> = (0..300).filter(|&i| truth[i] == c).collect();
                let label = model.labels()[rows[0]] as usize;
                for j in 0..2 {
                    let mean = rows.iter().map(|&i| x[(i, j)]).sum::<f32>() / rows.len() as f32;
                    let got = model.centroids()[(label, j)];
                    assert!(
                        (got - mean).abs() <= 1e-3 * mean.abs().max(1.0),
                        "{:?}: centroid {label} feature {j} is {got}, its rows' mean {mean}",
                        b.info()
                    );
                }
            }
        }
    }
}

#[test]
fn inertia_matches_an_independent_reference() {
    let x = uniform(1500, 4, 0.0, 10.0, 2);
    let init = x.slice(ndarray::s![..6, ..]).to_owned();
    let (_, _, reference) = reference_lloyd(&x, &init, 300);
    for b in backends() {
        let model = KMeansParams::new(6)
            .init(Init::Given(init.clone()))
            .tol(0.0)
            .fit(b.as_ref(), x.view(), None)
            .unwrap();
        let rel = (model.inertia() - reference).abs() / reference;
        assert!(
            rel <= 0.01,
            "{:?}: inertia {} vs reference {reference}",
            b.info(),
            model.inertia()
        );
    }
}

#[test]
fn same_seed_same_result() {
    let (x, _) = blobs(3000, 5, 6, 3);
    for b in backends() {
        for init in [Init::KMeansPlusPlus, Init::KMeansParallel, Init::Random] {
            let params = KMeansParams::new(6).init(init).n_init(2).seed(42);
            let a = params.fit(b.as_ref(), x.view(), None).unwrap();
            let c = params.fit(b.as_ref(), x.view(), None).unwrap();
            assert_eq!(a.centroids(), c.centroids());
            assert_eq!(a.labels(), c.labels());
            assert_eq!(a.inertia().to_bits(), c.inertia().to_bits());
            assert_eq!(a.inertia_history(), c.inertia_history());
        }
    }
}

#[test]
fn empty_clusters_are_relocated() {
    // The third initial centroid is far from every row: it gets no rows in
    // the first iteration and must be moved, not left empty or NaN.
    let (x, _) = blobs(600, 2, 3, 4);
    let init = array![[0.0f32, 0.0], [20.0, 0.0], [1e4, 1e4]];
    for b in backends() {
        let model = KMeansParams::new(3)
            .init(Init::Given(init.clone()))
            .fit(b.as_ref(), x.view(), None)
            .unwrap();
        assert!(model.centroids().iter().all(|v| v.is_finite()));
        assert_eq!(model.cluster_sizes().len(), 3);
        assert!(
            model.cluster_sizes().iter().all(|&s| s > 0),
            "{:?}",
            model.cluster_sizes()
        );
    }
}

#[test]
fn k_equals_n_gives_singletons() {
    let x = uniform(40, 3, 0.0, 1.0, 5);
    for b in backends() {
        let model = KMeansParams::new(40)
            .fit(b.as_ref(), x.view(), None)
            .unwrap();
        assert!(model.cluster_sizes().iter().all(|&s| s == 1));
        assert!(model.inertia() < 1e-6);
    }
}

#[test]
fn integer_weights_equal_repeated_rows() {
    let x = uniform(300, 3, 0.0, 1.0, 6);
    let reps: Vec<usize> = (0..300).map(|i| 1 + i % 3).collect();
    let repeated = Array2::from_shape_fn((reps.iter().sum(), 3), |(i, j)| {
        let mut r = i;
        let mut src = 0;
        while r >= reps[src] {
            r -= reps[src];
            src += 1;
        }
        x[[src, j]]
    });
    let w = Array1::from_iter(reps.iter().map(|&r| r as f32));
    let init = x.slice(ndarray::s![..4, ..]).to_owned();
    let params = KMeansParams::new(4).init(Init::Given(init)).tol(0.0);
    for b in backends() {
        let weighted = params.fit(b.as_ref(), x.view(), Some(w.view())).unwrap();
        let plain = params.fit(b.as_ref(), repeated.view(), None).unwrap();
        for (a, c) in weighted.centroids().iter().zip(plain.centroids().iter()) {
            assert!((a - c).abs() < 1e-4, "{a} vs {c}");
        }
        assert!((weighted.inertia() - plain.inertia()).abs() < 1e-3 * plain.inertia());
    }
}

#[test]
fn standardized_model_predicts_raw_rows() {
    // Column 1 is in units 1000× larger; the scaler must be stored with the
    // model and applied again to raw rows by `predict`.
    let (x, truth) = blobs(900, 2, 3, 7);
    let raw = &x * &ndarray::arr1(&[1.0f32, 1000.0]);
    let model = KMeansParams::new(3)
        .standardize(true)
        .seed(1)
        .fit(&CpuBackend::new(), raw.view(), None)
        .unwrap();
    assert!(adjusted_rand_index(&truth, model.labels()) > 0.99);
    assert!(model.scaler().standardize);
    let scale = &model.scaler().scale;
    assert!(scale[1] > 500.0 * scale[0], "{scale:?}");
    // Centroids are reported in original units.
    let col1_max = raw.column(1).iter().fold(0.0f32, |m, &v| m.max(v));
    assert!(model
        .centroids()
        .column(1)
        .iter()
        .any(|&v| v > 0.3 * col1_max));
    let again = model.predict(&CpuBackend::new(), raw.view()).unwrap();
    assert_eq!(again.labels, model.labels());
    assert!(again.margins.unwrap().iter().all(|&m| m >= 0.0));
}

/// A fit or prediction that takes its rows (scaling them in their own
/// buffer) gives the same bits as one that borrows them, with and
/// without standardising and `log1p`, weighted or not; column-major rows
/// are copied first. The owned prediction also hands back the rows scaled
/// as the model scales them.
#[test]
fn owned_rows_give_the_same_model_as_borrowed_ones() {
    let (x, _) = blobs(1500, 3, 4, 31);
    let x = x.mapv(f32::abs);
    let w = Array1::from_shape_fn(x.nrows(), |i| 1.0 + (i % 4) as f32);
    let cpu = CpuBackend::new();
    let control = FitControl::default();
    let column_major = {
        let mut f = Array2::zeros(x.raw_dim().f());
        f.assign(&x);
        f
    };
    for (standardize, log1p) in [
        (false, vec![]),
        (true, vec![]),
        (true, vec![true, false, true]),
    ] {
        for weights in [None, Some(w.view())] {
            let params = KMeansParams::new(5)
                .standardize(standardize)
                .log1p(log1p.clone())
                .seed(2);
            let borrowed = params.fit_with(&cpu, x.view(), weights, &control).unwrap();
            for rows in [x.clone(), column_major.clone()] {
                let owned = params
                    .fit_owned_with(&cpu, rows, weights, &control)
                    .unwrap();
                assert_eq!(owned.centroids(), borrowed.centroids());
                assert_eq!(owned.labels(), borrowed.labels());
                assert_eq!(owned.distances(), borrowed.distances());
                assert_eq!(owned.inertia_history(), borrowed.inertia_history());
            }
            let predicted = borrowed.predict(&cpu, x.view()).unwrap();
            let (owned, scaled) = borrowed.predict_owned(&cpu, x.clone()).unwrap();
            assert_eq!(owned.labels, predicted.labels);
            assert_eq!(owned.distances, predicted.distances);
            assert_eq!(scaled, borrowed.scaler().transform(x.view()));
        }
    }
}

#[test]
fn cancellation_stops_the_fit() {
    let (x, _) = blobs(500, 2, 3, 9);
    let flag = Arc::new(AtomicBool::new(true));
    let control = FitControl::default().cancel_flag(flag);
    let err = KMeansParams::new(3)
        .fit_with(&CpuBackend::new(), x.view(), None, &control)
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
}

#[test]
fn progress_reports_every_iteration() {
    let (x, _) = blobs(500, 2, 3, 10);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let control =
        FitControl::default().on_progress(move |p| sink.lock().unwrap().push(p.iteration));
    let model = KMeansParams::new(3)
        .fit_with(&CpuBackend::new(), x.view(), None, &control)
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        (1..=model.n_iter()).collect::<Vec<_>>()
    );
}

/// A backend whose device is "lost" on upload, as a GPU can be mid-fit.
struct LostGpu;

impl Backend for LostGpu {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BackendKind::Gpu,
            adapter: "lost".into(),
        }
    }
    fn upload<'a>(
        &'a self,
        _: ndarray::ArrayView2<'a, f32>,
        _: Option<ndarray::ArrayView1<'a, f32>>,
    ) -> Result<Box<dyn Resident + 'a>, BackendError> {
        Err(GpuError::DeviceLost("simulated".into()).into())
    }
}

#[test]
fn auto_falls_back_to_the_cpu_when_the_gpu_fails() {
    let (x, _) = blobs(300, 2, 3, 11);
    let params = KMeansParams::new(3);
    let model = with_cpu_fallback(BackendChoice::Auto, &LostGpu, |b| {
        params.fit(b, x.view(), None)
    })
    .unwrap();
    assert_eq!(model.backend().backend, BackendKind::Cpu);
    // An explicit `gpu` choice reports the failure instead.
    let err = with_cpu_fallback(BackendChoice::Gpu, &LostGpu, |b| {
        params.fit(b, x.view(), None)
    })
    .unwrap_err();
    assert!(err.to_string().contains("device lost"), "{err}");
}

#[test]
fn pca_recovers_planted_directions() {
    // Variance 9 along (1, 1)/√2, 1 along (1, −1)/√2, 0.01 along z.
    let base = uniform(4000, 3, -1.0, 1.0, 12) * 3.0f32.sqrt();
    let x = Array2::from_shape_fn((4000, 3), |(i, j)| {
        let (a, b, c) = (3.0 * base[[i, 0]], base[[i, 1]], 0.1 * base[[i, 2]]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        [s * (a + b), s * (a - b), c][j] + 50.0
    });
    for b in backends() {
        let pca = PcaParams::new(2).fit(b.as_ref(), x.view()).unwrap();
        let ev = pca.explained_variance();
        assert!(
            (ev[0] - 9.0).abs() < 0.5 && (ev[1] - 1.0).abs() < 0.1,
            "{ev:?}"
        );
        let c0 = pca.components().row(0);
        assert!((c0[0] - c0[1]).abs() < 0.02 && c0[2].abs() < 0.02, "{c0}");
        let y = pca.transform(b.as_ref(), x.view()).unwrap();
        let back = pca.inverse_transform(y.view()).unwrap();
        let err = (&back - &x).iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(err < 0.5, "reconstruction error {err}");
    }
}

#[test]
fn pca_whitening_gives_unit_variance() {
    let x = uniform(3000, 4, -1.0, 1.0, 13) * ndarray::arr1(&[5.0f32, 2.0, 1.0, 0.5]);
    let pca = PcaParams::new(3)
        .whiten(true)
        .fit(&CpuBackend::new(), x.view())
        .unwrap();
    let y = pca.transform(&CpuBackend::new(), x.view()).unwrap();
    for col in y.columns() {
        let var = col.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (col.len() - 1) as f64;
        assert!((var - 1.0).abs() < 1e-3, "variance {var}");
    }
    let back = pca.inverse_transform(y.view()).unwrap();
    let full = PcaParams::new(3).fit(&CpuBackend::new(), x.view()).unwrap();
    let direct = full
        .inverse_transform(full.transform(&CpuBackend::new(), x.view()).unwrap().view())
        .unwrap();
    assert!(back
        .iter()
        .zip(direct.iter())
        .all(|(a, b)| (a - b).abs() < 1e-3));
}

/// Every backend's assignment kernels against an f64 brute force, on shapes
/// that cover both CPU kernels (k ≤ 16 rows-in-lanes, k > 16 panels), widths
/// around the 16-column transpose chunks, and row counts that leave partial
/// tiles. Labels must be the exact argmin except at near-ties (within
/// `1e-5 · (1 + ‖x‖² + ‖c‖²)`, the f32 rounding of either scoring);
/// distances are f32 sums of d squares, so `1e-5` relative; cluster sums are
/// checked against an f64 sum over the backend's own labels.
#[test]
fn kernels_match_a_brute_force_reference() {
    let shapes = [
        (1, 1, 1),
        (37, 3, 5),
        (203, 16, 8),
        (301, 17, 16),
        (130, 33, 17),
        (77, 5, 40),
    ];
    for b in backends() {
        for &(n, d, k) in &shapes {
            let x = uniform(n, d, -3.0, 5.0, (n + d) as u64);
            let c = uniform(k, d, -3.0, 5.0, (k * 7 + d) as u64);
            let w = Array1::from_shape_fn(n, |i| 0.5 + (i % 3) as f32);
            let mut r = b.upload(x.view(), Some(w.view())).unwrap();
            let a = r.assign(c.view()).unwrap();
            let fused = r.lloyd_step(c.view()).unwrap();
            let what = format!("{:?} n={n} d={d} k={k}", b.info().backend);
            let (mut sums, mut weights, mut inertia) =
                (Array2::<f64>::zeros((k, d)), vec![0.0; k], 0.0);
            for i in 0..n {
                let row = x.row(i);
                let mut exact: Vec<(f64, usize)> =
                    (0..k).map(|j| (common::dist2(row, c.row(j)), j)).collect();
                exact.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
                let l = a.labels[i] as usize;
                let tie = 1e-5 * (1.0 + row.dot(&row) as f64 + c.row(l).dot(&c.row(l)) as f64);
                assert!(
                    common::dist2(row, c.row(l)) - exact[0].0 <= tie,
                    "{what}: row {i} label {l}, best {:?}",
                    exact[0]
                );
                let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-5 * (1.0 + want);
                assert!(
                    close(a.distances[i], common::dist2(row, c.row(l))),
                    "{what}: row {i} distance {}",
                    a.distances[i]
                );
                let second = &a.second_distances;
                if k == 1 {
                    assert_eq!(second[i], f32::INFINITY, "{what}");
                } else {
                    assert!(
                        close(second[i], exact[1].0),
                        "{what}: row {i} second {} vs {}",
                        second[i],
                        exact[1].0
                    );
                }
                let wi = w[i] as f64;
                for j in 0..d {
                    sums[[l, j]] += wi * x[[i, j]] as f64;
                }
                weights[l] += wi;
                inertia += wi * a.distances[i] as f64;
            }
            let scale: f64 = x.iter().map(|v| v.abs() as f64).sum::<f64>() * 3.0;
            for (got, want) in fused.sums.iter().zip(&sums) {
                assert!(
                    (got - want).abs() <= 1e-4 * scale / k as f64,
                    "{what}: sum {got} vs {want}"
                );
            }
            for (got, want) in fused.weights.iter().zip(&weights) {
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want),
                    "{what}: weight {got} vs {want}"
                );
            }
            assert!(
                (fused.inertia - inertia).abs() <= 1e-5 * (1.0 + inertia),
                "{what}: inertia {} vs {inertia}",
                fused.inertia
            );
        }
    }
}

/// Device timing: a GPU step is bracketed by timestamp queries where the
/// adapter has them (lavapipe does), the CPU reports none, and the GPU peak
/// probe gives a finite positive figure.
#[test]
fn step_device_time_and_gpu_peak() {
    let x = uniform(2000, 8, 0.0, 1.0, 3);
    let c = x.slice(ndarray::s![..4, ..]).to_owned();
    let cpu = CpuBackend::new();
    let mut r = cpu.upload(x.view(), None).unwrap();
    r.lloyd_step(c.view()).unwrap();
    assert_eq!(r.last_step_device_ms(), None);
    let Some(g) = gpu(None) else { return };
    let mut r = g.upload(x.view(), None).unwrap();
    assert_eq!(r.last_step_device_ms(), None, "no step yet");
    r.lloyd_step(c.view()).unwrap();
    match r.last_step_device_ms() {
        Some(ms) => assert!(ms > 0.0 && ms < 60_000.0, "device time {ms} ms"),
        None => assert!(!g.has_timestamps(), "timestamps supported but none read"),
    }
    let peak = g.peak_gflops().unwrap();
    assert!(peak.is_finite() && peak > 0.0, "peak {peak}");
}

/// PCA rejects NaN and infinities naming the first one, on every backend:
/// the CPU finds them through its column sums (no separate pass), so both
/// a bad value among the rows that set its pivot and one far after them,
/// and opposite infinities in one column (their sum is NaN, not ∞).
#[test]
fn pca_names_the_first_non_finite_value_on_every_backend() {
    let cases: [&[(usize, usize, f32)]; 4] = [
        &[(2_500, 3, f32::NAN)],
        &[(10, 1, f32::INFINITY)],
        &[(1_200, 0, f32::NEG_INFINITY), (2_900, 0, f32::INFINITY)],
        &[(2_999, 4, f32::NAN), (1_999, 2, f32::INFINITY)],
    ];
    let mut backends: Vec<Box<dyn segmenta::backend::Backend>> = vec![Box::new(CpuBackend::new())];
    backends.extend(gpu(None).map(|g| Box::new(g) as Box<dyn segmenta::backend::Backend>));
    for backend in &backends {
        for bad in cases {
            let mut x = uniform(3_000, 5, -1.0, 1.0, 21);
            for &(i, j, v) in bad {
                x[[i, j]] = v;
            }
            let (row, column, _) = *bad.iter().min_by_key(|b| (b.0, b.1)).unwrap();
            match PcaParams::new(2).fit(backend.as_ref(), x.view()) {
                Err(Error::Data(segmenta::data::DataError::NotFinite {
                    row: r,
                    column: c,
                    ..
                })) => {
                    assert_eq!((r, c), (row + 1, format!("#{}", column + 1)), "{bad:?}");
                }
                other => panic!(
                    "{bad:?} on {:?}: expected NotFinite, got {other:?}",
                    backend.info()
                ),
            }
        }
    }
}
