//! Properties that must hold for any input (proptest, CPU backend).

use ndarray::Array2;
use proptest::prelude::*;
use segmenta::backend::cpu::CpuBackend;
use segmenta::kmeans::{Init, KMeansParams};
use segmenta::pca::PcaParams;

fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = Array2<f32>> {
    (2..max_rows, 1..max_cols).prop_flat_map(|(n, d)| {
        proptest::collection::vec(-100.0f32..100.0, n * d)
            .prop_map(move |v| Array2::from_shape_vec((n, d), v).unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn labels_in_range_and_inertia_never_increases(x in matrix(120, 6), k in 1usize..8, seed in 0u64..1000, init in 0usize..3) {
        let k = k.min(x.nrows());
        let init = [Init::KMeansPlusPlus, Init::KMeansParallel, Init::Random][init].clone();
        let model = KMeansParams::new(k).init(init).seed(seed).tol(0.0).fit(&CpuBackend::new(), x.view(), None).unwrap();
        prop_assert!(model.labels().iter().all(|&l| (l as usize) < k));
        prop_assert_eq!(model.cluster_sizes().iter().sum::<usize>(), x.nrows());
        let h = model.inertia_history();
        for w in h.windows(2) {
            // f32 rounding of centroids can add a hair; nothing more.
            prop_assert!(w[1] <= w[0] * (1.0 + 1e-5) + 1e-3, "history {:?}", h);
        }
        prop_assert!(model.inertia() <= h.last().unwrap() * (1.0 + 1e-5) + 1e-3);
        prop_assert!(model.centroids().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn pca_components_orthonormal_and_sorted(x in matrix(80, 7), c in 1usize..7) {
        let c = c.min(x.ncols()).min(x.nrows());
        let pca = PcaParams::new(c).fit(&CpuBackend::new(), x.view()).unwrap();
        let comps = pca.components();
        let gram = comps.dot(&comps.t());
        let ev = pca.explained_variance();
        for i in 0..c {
            for j in 0..c {
                let want = if i == j { 1.0 } else { 0.0 };
                prop_assert!((gram[[i, j]] - want).abs() < 1e-3, "C·Cᵀ = {}", gram);
            }
        }
        prop_assert!(ev.windows(2).all(|w| w[0] >= w[1]), "{:?}", ev);
        prop_assert!(pca.explained_variance_ratio().iter().sum::<f64>() <= 1.0 + 1e-9);
        // Sign convention: each component's largest-magnitude entry is positive.
        for row in comps.rows() {
            let big = row.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            prop_assert!(big >= 0.0);
        }
    }
}
