//! The standard benchmark workloads (issue-tracker names W1–W5): f32 data
//! from a fixed seed, fixed initial centroids, 20 Lloyd iterations, tol = 0.

use serde::Serialize;

/// What a workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Lloyd iterations from the first k rows.
    Lloyd { k: usize },
    /// A whole PCA fit (Gram matrix, eigendecomposition).
    Pca { components: usize },
    /// Greedy k-means++ initialisation.
    KMeansPlusPlus { k: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub id: &'static str,
    pub n: usize,
    pub d: usize,
    pub task: Task,
    /// Run on the CPU only when asked (`--cpu-w3`): minutes per run there.
    pub gpu_sized: bool,
}

impl Workload {
    pub fn describe(&self) -> String {
        let what = match self.task {
            Task::Lloyd { k } => format!("k-means k = {k}"),
            Task::Pca { components } => format!("PCA {components} components"),
            Task::KMeansPlusPlus { k } => format!("k-means++ init k = {k}"),
        };
        format!("{}: {what}, n = {}, d = {}", self.id, self.n, self.d)
    }

    /// Floating-point operations of one timed unit (an iteration, a fit, an
    /// initialisation), counting a multiply-add as 2.
    pub fn flop(&self) -> f64 {
        let (n, d) = (self.n as f64, self.d as f64);
        match self.task {
            Task::Lloyd { k } => 2.0 * n * k as f64 * d,
            // The Gram matrix XᵀX, counted as the symmetric product it is
            // (d(d + 1)/2 distinct entries), so the figure is comparable to
            // a GEMM peak.
            Task::Pca { .. } => n * d * (d + 1.0),
            // Each of k − 1 steps scores 2 + ln k candidates against all rows.
            Task::KMeansPlusPlus { k } => {
                let trials = 2.0 + (k as f64).ln().floor();
                2.0 * n * d * trials * (k as f64 - 1.0)
            }
        }
    }

    pub fn unit(&self) -> &'static str {
        match self.task {
            Task::Lloyd { .. } => "ms / iteration",
            Task::Pca { .. } => "ms / fit",
            Task::KMeansPlusPlus { .. } => "ms / init",
        }
    }
}

/// W1–W5; `quick` scales n down to 20,000 (W3, the widest, to 5,000): a
/// smoke test, not a timing.
pub fn standard(quick: bool) -> Vec<Workload> {
    let n = |full: usize| if quick { 20_000 } else { full };
    vec![
        Workload {
            id: "W1",
            n: n(1_000_000),
            d: 32,
            task: Task::Lloyd { k: 64 },
            gpu_sized: false,
        },
        Workload {
            id: "W2",
            n: n(1_000_000),
            d: 16,
            task: Task::Lloyd { k: 8 },
            gpu_sized: false,
        },
        Workload {
            id: "W3",
            n: if quick { 5_000 } else { 10_000_000 },
            d: 64,
            task: Task::Lloyd { k: 256 },
            gpu_sized: !quick,
        },
        Workload {
            id: "W4",
            n: n(1_000_000),
            d: 128,
            task: Task::Pca { components: 16 },
            gpu_sized: false,
        },
        Workload {
            id: "W5",
            n: n(1_000_000),
            d: 32,
            task: Task::KMeansPlusPlus { k: 256 },
            gpu_sized: false,
        },
    ]
}
