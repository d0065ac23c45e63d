use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ndarray::Array2;

use super::hamerly::Pruning;
use crate::error::ParamsError;

/// How the first centroids are chosen.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Init {
    /// Greedy k-means++ (2 + ln k candidates per step), weighted by sample weights.
    #[default]
    KMeansPlusPlus,
    /// Scalable k-means|| (Bahmani et al.): 5 rounds oversampling 2k points,
    /// then weighted k-means++ on the candidates. For large n.
    KMeansParallel,
    /// k distinct rows chosen uniformly.
    Random,
    /// Given centroids, `k × d` in the data's original units.
    Given(Array2<f32>),
}

/// Which rows k-means++ and k-means|| draw their centres from.
///
/// Greedy k-means++ costs about `2 + ln k` Lloyd steps' worth of distances
/// over the rows it sees (eight at k = 256), so over every row of a large
/// fit it can cost as much as the Lloyd loop. A uniform sample of a
/// thousand rows per centre seeds as well on anything but clusters a
/// thousand times smaller than the average (each still gets about one
/// sampled row), and the Lloyd loop then runs on every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitSample {
    /// [`AUTO_ROWS_PER_CENTRE`](Self::AUTO_ROWS_PER_CENTRE) rows per
    /// centre, at least [`AUTO_MIN_ROWS`](Self::AUTO_MIN_ROWS), as
    /// [`InitSample::Rows`]. Weighted fits seed on every row (a uniform
    /// sample could miss a heavy row).
    #[default]
    Auto,
    /// Every row: exact k-means++ over the data.
    All,
    /// This many rows, drawn uniformly, weights kept; every row when
    /// there are at most twice as many (seeding on them costs little
    /// more than on the sample, and saves the copy). At least k.
    Rows(usize),
}

impl InitSample {
    /// Rows per centre of the automatic sample.
    pub const AUTO_ROWS_PER_CENTRE: usize = 1024;
    /// The automatic sample's floor, for small k.
    pub const AUTO_MIN_ROWS: usize = 65_536;

    /// How many of `n` rows seeding draws from, or `None` for every row.
    pub fn rows(self, n: usize, k: usize, weighted: bool) -> Option<usize> {
        let m = match self {
            Self::All => return None,
            Self::Auto if weighted => return None,
            Self::Auto => (Self::AUTO_ROWS_PER_CENTRE.saturating_mul(k)).max(Self::AUTO_MIN_ROWS),
            Self::Rows(m) => m,
        };
        (n > m.saturating_mul(2)).then_some(m)
    }
}

/// K-means hyperparameters; build with [`KMeansParams::new`] and the setters.
#[derive(Debug, Clone)]
pub struct KMeansParams {
    pub(super) k: usize,
    pub(super) init: Init,
    pub(super) init_sample: InitSample,
    pub(super) n_init: usize,
    pub(super) max_iter: usize,
    pub(super) tol: f64,
    pub(super) seed: u64,
    pub(super) standardize: bool,
    pub(super) log1p: Vec<bool>,
    pub(super) pruning: Pruning,
}

impl KMeansParams {
    /// Defaults follow scikit-learn: k-means++, one run, 300 iterations,
    /// `tol = 1e-4`; seed 0; no standardisation.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            init: Init::default(),
            init_sample: InitSample::default(),
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            standardize: false,
            log1p: Vec::new(),
            pruning: Pruning::Auto,
        }
    }

    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Which rows k-means++ and k-means|| draw from ([`InitSample::Auto`]
    /// by default: a sample of about a thousand rows per centre on large
    /// unweighted data).
    pub fn init_sample(mut self, sample: InitSample) -> Self {
        self.init_sample = sample;
        self
    }

    /// Whether Lloyd steps are pruned (Hamerly's bounds, the default where
    /// the backend has the kernel). The result is the same up to ties
    /// within f32 rounding; [`Pruning::Off`] is for measuring kernels.
    pub fn pruning(mut self, pruning: Pruning) -> Self {
        self.pruning = pruning;
        self
    }

    /// Runs the whole fit `n` times from different seeds; keeps the lowest inertia.
    pub fn n_init(mut self, n: usize) -> Self {
        self.n_init = n;
        self
    }

    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }

    /// Stop when the squared centroid shift summed over clusters is at most
    /// `tol ×` the mean per-feature variance of the (scaled) data — as
    /// scikit-learn defines it. `0` runs until the centroids stop moving.
    pub fn tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Scale every feature to unit variance before clustering; the scaler is
    /// stored in the model and applied again by `predict`.
    pub fn standardize(mut self, yes: bool) -> Self {
        self.standardize = yes;
        self
    }

    /// Per feature: cluster on `ln(1 + x)` instead of `x` (before any
    /// standardisation), for right-skewed features such as spend. Stored in
    /// the model and applied again by `predict`. Empty (the default): none.
    pub fn log1p(mut self, columns: Vec<bool>) -> Self {
        self.log1p = columns;
        self
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The same parameters with another k (for sweeps over k).
    pub fn with_k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// How the first centroids are chosen.
    pub fn init_value(&self) -> &Init {
        &self.init
    }

    /// Lloyd runs from different initial centroids.
    pub fn n_init_value(&self) -> usize {
        self.n_init
    }

    pub fn max_iter_value(&self) -> usize {
        self.max_iter
    }

    pub fn seed_value(&self) -> u64 {
        self.seed
    }

    /// Checks what can be checked without data.
    pub fn check(&self) -> Result<(), ParamsError> {
        if self.k == 0 {
            return Err(ParamsError::ZeroK);
        }
        if self.n_init == 0 {
            return Err(ParamsError::ZeroNInit);
        }
        if self.max_iter == 0 {
            return Err(ParamsError::ZeroMaxIter);
        }
        if let InitSample::Rows(rows) = self.init_sample {
            if rows < self.k {
                return Err(ParamsError::InitSampleTooSmall { rows, k: self.k });
            }
        }
        if !self.tol.is_finite() || self.tol < 0.0 {
            return Err(ParamsError::BadTol(self.tol));
        }
        Ok(())
    }
}

/// One Lloyd iteration's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0-based index of the run among `n_init`.
    pub run: usize,
    pub n_init: usize,
    /// 1-based iteration within the run.
    pub iteration: usize,
    pub max_iter: usize,
    /// Inertia of the assignment made in this iteration.
    pub inertia: f64,
    /// Squared centroid shift of this iteration.
    pub shift: f64,
}

/// Called after every Lloyd iteration.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Observation and cancellation of a running fit.
#[derive(Clone, Default)]
pub struct FitControl {
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
}

impl FitControl {
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// The fit stops with [`Error::Cancelled`](crate::Error::Cancelled) at
    /// the next iteration once `flag` is set.
    pub fn cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// The flag as the kernels take it.
    pub fn cancel_token(&self) -> crate::backend::Cancel {
        self.cancel
            .clone()
            .map(crate::backend::Cancel::new)
            .unwrap_or_default()
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn report(&self, p: &Progress) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }
}

impl std::fmt::Debug for FitControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitControl")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}
