//! GPU against CPU on the same data and the same initial centroids.
//!
//! Tolerances, and why:
//! - **Labels** must be equal except near ties. Both backends pick the
//!   argmin of `‖c‖² − 2x·c` in f32, whose rounding error is a few ε·(‖x‖² +
//!   ‖c‖²) (ε = 2⁻²³ ≈ 1.2e-7) and whose FMA order may differ between
//!   compilers. A differing label is accepted only if the two centroids'
//!   exact f64 distances differ by at most `TIE = 1e-5 · (1 + ‖x‖² + ‖c‖²)`.
//! - **Distances** are recomputed as `Σ (x − c)²` in f32 by both, summed in a
//!   different order: relative error ≤ d·ε; we allow `1e-5` relative.
//! - **Cluster sums**: the CPU adds in f64, the GPU in f32 over segments of at
//!   least 256 rows then with Neumaier compensation; error ≲ 256·ε·Σ|x| ≈ 3e-5
//!   of Σ|x|; we allow `1e-4 · Σ|x|`. Each backend's sums are checked against
//!   an f64 host sum of its *own* labels, so a tie flip cannot hide a bug.
//! - **Fits** compound these over iterations: centroids `1e-4` of the data
//!   scale, inertia `1e-5` relative.
//! - **PCA**: f32 Gram sums (relative ~1e-6 here) perturb eigenvalues by the
//!   same relative amount and eigenvectors by that over the eigen-gap; the
//!   test data has gaps ≥ 30 % so `1e-3` is loose but safe.

mod common;

use common::{assert_ties_only, blobs, gpu, gpu_with, host_sums, uniform, HostSums};
use ndarray::{Array1, Array2};
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::gpu::GpuOptions;
use segmenta::backend::{Backend, ClusterSums};
use segmenta::kmeans::{Init, KMeansParams};
use segmenta::pca::PcaParams;

/// Checks `sums` against an f64 host sum over `labels`.
fn check_sums(
    x: &Array2<f32>,
    w: Option<&Array1<f32>>,
    labels: &[u32],
    got: &ClusterSums,
    dists: &[f32],
) {
    let (k, d) = got.sums.dim();
    let HostSums {
        sums,
        weights,
        abs,
        inertia,
    } = host_sums(x, w, labels, k, |i| dists[i] as f64);
    for c in 0..k {
        assert!(
            (got.weights[c] - weights[c]).abs() <= 1e-4 * (1.0 + weights[c]),
            "cluster {c} weight {} vs {}",
            got.weights[c],
            weights[c]
        );
        for j in 0..d {
            let tol = 1e-4 * (1.0 + abs[c] / d as f64);
            assert!(
                (got.sums[[c, j]] - sums[[c, j]]).abs() <= tol,
                "cluster {c} dim {j}: {} vs {}",
                got.sums[[c, j]],
                sums[[c, j]]
            );
        }
    }
    assert!(
        (got.inertia - inertia).abs() <= 1e-4 * (1.0 + inertia),
        "inertia {} vs {inertia}",
        got.inertia
    );
}

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
}

/// Every k-means kernel on one shape.
fn kernels(n: usize, d: usize, k: usize, chunk_rows: Option<usize>, weighted: bool) {
    kernels_with(
        n,
        d,
        k,
        GpuOptions {
            max_chunk_rows: chunk_rows,
            ..Default::default()
        },
        weighted,
    )
}

fn kernels_with(n: usize, d: usize, k: usize, options: GpuOptions, weighted: bool) {
    let Some(gpu) = gpu_with(options) else { return };
    let x = uniform(n, d, -1.0, 1.0, (n * 31 + d * 7 + k) as u64);
    let c = uniform(k, d, -1.0, 1.0, 99 + k as u64);
    let w = weighted.then(|| uniform(n, 1, 0.5, 2.0, 5).column(0).to_owned());
    let cpu = CpuBackend::new();
    let mut g = gpu.upload(x.view(), w.as_ref().map(|w| w.view())).unwrap();
    let mut h = cpu.upload(x.view(), w.as_ref().map(|w| w.view())).unwrap();
    let (ag, ah) = (g.assign(c.view()).unwrap(), h.assign(c.view()).unwrap());
    assert_eq!(ag.labels.len(), n);
    let (sg, sh) = (&ag.second_distances, &ah.second_distances);
    assert_ties_only(x.view(), c.view(), &ag.labels, &ah.labels);
    for i in 0..n {
        if ag.labels[i] == ah.labels[i] {
            assert!(
                close(ag.distances[i], ah.distances[i], 1e-5),
                "row {i}: distance {} vs {}",
                ag.distances[i],
                ah.distances[i]
            );
            if k == 1 {
                assert!(sg[i].is_infinite() && sh[i].is_infinite());
            } else {
                assert!(
                    close(sg[i], sh[i], 1e-5),
                    "row {i}: second {} vs {}",
                    sg[i],
                    sh[i]
                );
            }
        }
    }
    // A Lloyd step's sums are those of the assignment's labels.
    let fused = g.lloyd_step(c.view()).unwrap();
    check_sums(&x, w.as_ref(), &ag.labels, &fused, &ag.distances);
    let fused = h.lloyd_step(c.view()).unwrap();
    check_sums(&x, w.as_ref(), &ah.labels, &fused, &ah.distances);
    let fused = h.lloyd_step(c.view()).unwrap();
    check_sums(&x, w.as_ref(), &ah.labels, &fused, &ah.distances);
}

#[test]
fn kernels_n_not_a_multiple_of_the_workgroup() {
    kernels(1000, 3, 5, None, false);
}

#[test]
fn kernels_d_is_1() {
    kernels(777, 1, 4, None, false);
}

#[test]
fn kernels_d_not_a_multiple_of_4_and_above_the_tile() {
    kernels(513, 7, 9, None, false);
    kernels(600, 19, 17, None, false);
}

#[test]
fn kernels_k_is_1() {
    kernels(300, 5, 1, None, false);
}

#[test]
fn kernels_k_equals_n() {
    kernels(64, 3, 64, None, false);
}

#[test]
fn kernels_k_above_256() {
    kernels(2000, 4, 300, None, false);
}

/// More workgroups than one dispatch dimension allows: a limit of 3 forces
/// the 2-D grid (and its overshoot) on every kernel, as 65,535 would on
/// more than 16.7 M rows.
#[test]
fn kernels_two_dimensional_dispatch() {
    let options = GpuOptions {
        max_chunk_rows: Some(1500),
        max_workgroups_per_dim: Some(3),
    };
    kernels_with(2600, 5, 7, options.clone(), true);
    let Some(gpu) = gpu_with(options) else { return };
    pca_parity(&gpu, &pca_data(2600), 3);
}

#[test]
fn kernels_several_chunks_and_weights() {
    kernels(5000, 6, 10, Some(700), true);
    kernels(1030, 2, 3, Some(257), false);
}

fn fit_parity(x: &Array2<f32>, k: usize, chunk_rows: Option<usize>, standardize: bool) {
    let Some(gpu) = gpu(chunk_rows) else { return };
    let init = x.slice(ndarray::s![..k, ..]).to_owned() + 0.5;
    let params = KMeansParams::new(k)
        .init(Init::Given(init))
        .tol(0.0)
        .max_iter(100)
        .standardize(standardize);
    let mg = params.fit(&gpu, x.view(), None).unwrap();
    let mc = params.fit(&CpuBackend::new(), x.view(), None).unwrap();
    assert_eq!(mg.backend().backend.to_string(), "gpu");
    assert_eq!(mc.backend().backend.to_string(), "cpu");
    assert_eq!(mg.n_iter(), mc.n_iter());
    assert_ties_only(x.view(), mc.centroids().view(), mg.labels(), mc.labels());
    let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (a, b) in mg.centroids().iter().zip(mc.centroids().iter()) {
        assert!((a - b).abs() <= 1e-4 * scale, "centroid {a} vs {b}");
    }
    let (ig, ic) = (mg.inertia(), mc.inertia());
    assert!((ig - ic).abs() <= 1e-5 * ic, "inertia {ig} vs {ic}");
    assert_eq!(mg.cluster_sizes(), mc.cluster_sizes());
}

#[test]
fn fit_parity_blobs() {
    let (x, _) = blobs(3000, 5, 6, 11);
    fit_parity(&x, 6, None, false);
}

#[test]
fn fit_parity_standardized_several_chunks() {
    let (x, _) = blobs(2500, 3, 4, 12);
    let x = x * 100.0 + 1000.0;
    fit_parity(&x, 4, Some(600), true);
}

#[test]
fn predict_parity_with_margins() {
    let Some(gpu) = gpu(Some(300)) else { return };
    let (x, _) = blobs(1200, 4, 5, 13);
    let model = KMeansParams::new(5)
        .seed(3)
        .fit(&CpuBackend::new(), x.view(), None)
        .unwrap();
    let new = uniform(900, 4, -5.0, 45.0, 14);
    let pg = model.predict(&gpu, new.view()).unwrap();
    let pc = model.predict(&CpuBackend::new(), new.view()).unwrap();
    assert_ties_only(new.view(), model.centroids().view(), &pg.labels, &pc.labels);
    let (mg, mc) = (pg.margins.unwrap(), pc.margins.unwrap());
    for i in 0..new.nrows() {
        if pg.labels[i] == pc.labels[i] {
            assert!(
                close(mg[i], mc[i], 1e-4),
                "row {i}: margin {} vs {}",
                mg[i],
                mc[i]
            );
        }
    }
}

fn pca_data(n: usize) -> Array2<f32> {
    let scales = [6.0f32, 4.0, 2.5, 1.5, 1.0, 0.5, 0.2];
    let base = uniform(n, scales.len(), -1.0, 1.0, 21);
    let mut x = Array2::from_shape_fn(base.dim(), |(i, j)| 100.0 + scales[j] * base[[i, j]]);
    // Mix the axes so components are not the identity.
    for mut row in x.rows_mut() {
        let (a, b) = (row[0], row[1]);
        row[0] = 0.8 * a + 0.6 * b;
        row[1] = -0.6 * a + 0.8 * b;
    }
    x
}

#[test]
fn pca_parity_several_chunks() {
    let Some(gpu) = gpu(Some(700)) else { return };
    pca_parity(&gpu, &pca_data(3000), 4);
}

/// PCA on both backends: eigenvalues, components, mean and projections agree.
fn pca_parity(gpu: &dyn Backend, x: &Array2<f32>, c: usize) {
    let params = PcaParams::new(c);
    let pg = params.fit(gpu, x.view()).unwrap();
    let pc = params.fit(&CpuBackend::new(), x.view()).unwrap();
    for (a, b) in pg.explained_variance().iter().zip(pc.explained_variance()) {
        assert!((a - b).abs() <= 1e-3 * b, "eigenvalue {a} vs {b}");
    }
    for (a, b) in pg.components().iter().zip(pc.components().iter()) {
        assert!((a - b).abs() <= 1e-3, "component entry {a} vs {b}");
    }
    for (a, b) in pg.mean().iter().zip(pc.mean().iter()) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "mean {a} vs {b}");
    }
    let (tg, tc) = (
        pg.transform(gpu, x.view()).unwrap(),
        pc.transform(&CpuBackend::new(), x.view()).unwrap(),
    );
    for (a, b) in tg.iter().zip(tc.iter()) {
        assert!((a - b).abs() <= 1e-2, "projection {a} vs {b}");
    }
}
