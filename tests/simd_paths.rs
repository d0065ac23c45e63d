//! Every CPU instruction-set path, forced with `SEGMENTA_SIMD`, gives the
//! answers of plain f64 host arithmetic: the portable path (what ARM and
//! other CPUs run) and AVX2 are checked on any x86 machine, not only the
//! widest path the CI machine has.
//!
//! The level is read once per process, so the parent test runs the checks
//! in a child process per level (this test binary, filtered to the ignored
//! test below).

mod common;

use std::process::Command;

use common::{assert_ties_only, blobs, host_sums, HostSums};
use ndarray::Array2;
use segmenta::backend::cpu::{simd_level, CpuBackend, SimdLevel};
use segmenta::backend::Backend;
use segmenta::kmeans::{Init, KMeansParams, Pruning};
use segmenta::pca::PcaParams;

#[test]
fn every_instruction_set_gives_the_reference_answers() {
    let available = SimdLevel::available();
    for level in ["portable", "avx2", "avx512"] {
        if !available.iter().any(|l| l.name() == level) {
            eprintln!("NOTE: {level} is not on this CPU; its path was not run here");
            continue;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "reference_answers", "--ignored", "--nocapture"])
            .env("SEGMENTA_SIMD", level)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{level}:\n{text}");
        assert!(
            text.contains(&format!("ran at {level}")) && text.contains("1 passed"),
            "{level} did not run:\n{text}"
        );
    }
}

fn d2(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
    a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum()
}

/// The child: every kernel at the level `SEGMENTA_SIMD` names.
#[test]
#[ignore = "run in a child process by every_instruction_set_gives_the_reference_answers"]
fn reference_answers() {
    let level = simd_level();
    let asked = std::env::var("SEGMENTA_SIMD").unwrap_or_default();
    assert_eq!(level.name(), asked, "SEGMENTA_SIMD={asked} not honoured");
    let cpu = CpuBackend::new();
    // d odd and above 16; k in the lanes kernel (5) and the panels (40, 70).
    let (x, _) = blobs(5003, 19, 8, 21);
    let w = ndarray::Array1::from_shape_fn(x.nrows(), |i| 1.0 + (i % 3) as f32);
    for k in [5usize, 40, 70] {
        let c = x.slice(ndarray::s![..k, ..]).to_owned() + 0.25;
        let mut r = cpu.upload(x.view(), Some(w.view())).unwrap();
        let a = r.assign(c.view()).unwrap();
        let exact: Vec<u32> = x
            .rows()
            .into_iter()
            .map(|row| {
                (0..k)
                    .min_by(|&p, &q| d2(row, c.row(p)).total_cmp(&d2(row, c.row(q))))
                    .unwrap() as u32
            })
            .collect();
        assert_ties_only(x.view(), c.view(), &a.labels, &exact);
        for (i, &l) in a.labels.iter().enumerate() {
            let want = d2(x.row(i), c.row(l as usize));
            assert!(
                (a.distances[i] as f64 - want).abs() <= 1e-5 * (1.0 + want),
                "k={k} row {i}"
            );
        }
        let sums = r.lloyd_step(c.view()).unwrap();
        let HostSums {
            sums: want,
            weights,
            abs,
            ..
        } = host_sums(&x, Some(&w), &a.labels, k, |i| a.distances[i] as f64);
        for cl in 0..k {
            assert_eq!(sums.weights[cl], weights[cl], "k={k} cluster {cl} weight");
            for j in 0..x.ncols() {
                assert!(
                    (sums.sums[[cl, j]] - want[[cl, j]]).abs() <= 1e-9 * (1.0 + abs[cl]),
                    "k={k} cluster {cl} dim {j}"
                );
            }
        }
    }
    // Pruned and exhaustive fits agree.
    let fit = |p: Pruning| {
        KMeansParams::new(8)
            .init(Init::KMeansPlusPlus)
            .seed(3)
            .pruning(p)
            .tol(0.0)
            .max_iter(15)
            .fit(&cpu, x.view(), None)
            .unwrap()
    };
    let (pruned, plain) = (fit(Pruning::Auto), fit(Pruning::Off));
    assert_ties_only(
        x.view(),
        plain.centroids().view(),
        pruned.labels(),
        plain.labels(),
    );
    // PCA's Gram against an f64 two-pass one.
    let model = PcaParams::new(3).fit(&cpu, x.view()).unwrap();
    let mean: Vec<f64> = (0..x.ncols())
        .map(|j| x.column(j).iter().map(|&v| v as f64).sum::<f64>() / x.nrows() as f64)
        .collect();
    let centred = Array2::from_shape_fn(x.dim(), |(i, j)| x[[i, j]] as f64 - mean[j]);
    let cov = centred.t().dot(&centred) / (x.nrows() - 1) as f64;
    let total: f64 = cov.diag().sum();
    let explained: f64 = model.explained_variance().iter().sum();
    let top: f64 = {
        let mut ev: Vec<f64> = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_fn(
            x.ncols(),
            x.ncols(),
            |i, j| cov[[i, j]],
        ))
        .eigenvalues
        .iter()
        .copied()
        .collect();
        ev.sort_by(|a, b| b.total_cmp(a));
        ev[..3].iter().sum()
    };
    assert!(
        (explained - top).abs() <= 1e-4 * total,
        "PCA {explained} vs {top}"
    );
    eprintln!("ran at {}", level.name());
}
