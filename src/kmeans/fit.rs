use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::init::{initial_centroids, Seeding};
use super::lloyd::{lloyd, Run, RunSpec};
use super::model::KMeansModel;
use super::params::{FitControl, Init, KMeansParams};
use crate::backend::Backend;
use crate::data::{check_finite, Scaler};
use crate::error::{ParamsError, Result};

/// The rows a fit or a prediction reads: borrowed (scaled into a copy) or
/// owned (scaled in place).
pub(super) enum Input<'a> {
    View(ArrayView2<'a, f32>),
    Owned(Array2<f32>),
}

impl Input<'_> {
    pub(super) fn view(&self) -> ArrayView2<'_, f32> {
        match self {
            Input::View(x) => x.view(),
            Input::Owned(x) => x.view(),
        }
    }
}

impl KMeansParams {
    /// Fits on `x` (`n × d`) with optional sample weights (length `n`).
    pub fn fit(
        &self,
        backend: &dyn Backend,
        x: ArrayView2<f32>,
        weights: Option<ArrayView1<f32>>,
    ) -> Result<KMeansModel> {
        self.fit_with(backend, x, weights, &FitControl::default())
    }

    /// [`fit`](Self::fit) with progress reports and cancellation.
    pub fn fit_with(
        &self,
        backend: &dyn Backend,
        x: ArrayView2<f32>,
        weights: Option<ArrayView1<f32>>,
        control: &FitControl,
    ) -> Result<KMeansModel> {
        self.fit_input(backend, Input::View(x), weights, control)
    }

    /// [`fit_with`](Self::fit_with) on data the caller no longer needs: it
    /// is scaled in its own buffer, so the fit holds the rows once where
    /// `fit_with` holds them and a scaled copy. The same model.
    pub fn fit_owned_with(
        &self,
        backend: &dyn Backend,
        x: Array2<f32>,
        weights: Option<ArrayView1<f32>>,
        control: &FitControl,
    ) -> Result<KMeansModel> {
        self.fit_input(backend, Input::Owned(x), weights, control)
    }

    fn fit_input(
        &self,
        backend: &dyn Backend,
        input: Input,
        weights: Option<ArrayView1<f32>>,
        control: &FitControl,
    ) -> Result<KMeansModel> {
        let x = input.view();
        self.check()?;
        check_finite(x, &[])?;
        let (n, d) = x.dim();
        if self.k > n {
            return Err(ParamsError::KExceedsRows {
                k: self.k,
                n_rows: n,
            }
            .into());
        }
        let weights = weights.map(|w| check_weights(w, n)).transpose()?;
        if !self.log1p.is_empty() && self.log1p.len() != d {
            return Err(ParamsError::Log1pLength {
                expected: d,
                got: self.log1p.len(),
            }
            .into());
        }
        check_log1p_domain(x, &self.log1p)?;
        let scaler = Scaler::fit_log1p(x, self.standardize, self.log1p.clone());
        let working = match input {
            Input::View(x) => scaler.transform(x),
            Input::Owned(x) => scaler.transform_owned(x),
        };
        let init = match &self.init {
            Init::Given(c) => Init::Given(self.checked_given(c.view(), d, &scaler)?),
            other => other.clone(),
        };
        let variance: f64 = crate::data::ColumnStats::of(working.view())
            .var
            .iter()
            .sum::<f64>()
            / d as f64;
        let tol = self.tol * variance;

        let info = backend.info();
        tracing::info!(backend = %info.backend, adapter = %info.adapter, n, d, k = self.k, "k-means fit");
        let w = weights
            .as_ref()
            .map(|w| w.as_slice().expect("owned, contiguous"));
        let mut resident = backend.upload(working.view(), weights.as_ref().map(|w| w.view()))?;
        let mut best: Option<Run> = None;
        for run in 0..self.n_init {
            let seed = self.seed.wrapping_add(run as u64);
            let seeding = Seeding {
                backend,
                resident: Some(resident.as_mut()),
                x: working.view(),
                weights: w,
                sample: self.init_sample,
                check_finite: false,
            };
            let start = initial_centroids(&init, seeding, self.k, seed, &control.cancel_token())?;
            let spec = RunSpec {
                run,
                n_init: self.n_init,
                max_iter: self.max_iter,
                tol,
                pruning: self.pruning,
                control,
            };
            let result = lloyd(resident.as_mut(), working.view(), w, start, &spec)?;
            let better = best
                .as_ref()
                .is_none_or(|b| result.inertia_history.last() < b.inertia_history.last());
            if better {
                best = Some(result);
            }
        }
        let best = best.expect("n_init >= 1");
        // The final E-step: labels and distances for the final centroids.
        let assignment = resident.assign(best.centroids.view())?;
        let model = KMeansModel::new(best, assignment, scaler, w, info);
        let empty = model.cluster_sizes().iter().filter(|&&s| s == 0).count();
        if empty > 0 {
            tracing::warn!(
                k = self.k,
                "{empty} of {} clusters ended empty: the data has fewer distinct points than k",
                self.k
            );
        }
        Ok(model)
    }

    /// The centroids a fit on `x` would start from, in `x`'s units (no
    /// scaling), seeded on the CPU: for timing and inspecting the
    /// initialisation alone.
    pub fn initial_centroids(&self, x: ArrayView2<f32>) -> Result<ndarray::Array2<f32>> {
        self.initial_centroids_on(&crate::backend::cpu::CpuBackend::new(), x)
    }

    /// [`initial_centroids`](Self::initial_centroids) with the seeding
    /// kernels on `backend`: `x`, or only the sample seeding draws from
    /// ([`InitSample`](super::InitSample)), checked for NaN and infinities
    /// and uploaded once (a fit checks every row; this checks only the
    /// rows seeding reads, so it times what a fit spends on seeding).
    pub fn initial_centroids_on(
        &self,
        backend: &dyn Backend,
        x: ArrayView2<f32>,
    ) -> Result<ndarray::Array2<f32>> {
        self.check()?;
        if self.k > x.nrows() {
            return Err(ParamsError::KExceedsRows {
                k: self.k,
                n_rows: x.nrows(),
            }
            .into());
        }
        let x = x.as_standard_layout();
        let seeding = Seeding {
            backend,
            resident: None,
            x: x.view(),
            weights: None,
            sample: self.init_sample,
            check_finite: true,
        };
        initial_centroids(
            &self.init,
            seeding,
            self.k,
            self.seed,
            &crate::backend::Cancel::default(),
        )
    }

    fn checked_given(
        &self,
        c: ArrayView2<f32>,
        d: usize,
        scaler: &Scaler,
    ) -> Result<ndarray::Array2<f32>, ParamsError> {
        if c.dim() != (self.k, d) {
            return Err(ParamsError::InitShape {
                got_rows: c.nrows(),
                got_cols: c.ncols(),
                k: self.k,
                d,
            });
        }
        if let Some((i, j)) = c
            .indexed_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(ij, _)| ij)
        {
            return Err(ParamsError::InitNotFinite {
                row: i + 1,
                col: j + 1,
            });
        }
        Ok(scaler.transform(c))
    }
}

/// Rows must lie in the domain of `ln(1 + x)` on the flagged columns.
pub(super) fn check_log1p_domain(x: ArrayView2<f32>, log1p: &[bool]) -> Result<(), ParamsError> {
    match Scaler::check_domain(x, log1p) {
        Some((row, col, value)) => Err(ParamsError::Log1pDomain {
            row: row + 1,
            col: col + 1,
            value,
        }),
        None => Ok(()),
    }
}

fn check_weights(w: ArrayView1<f32>, n: usize) -> Result<Array1<f32>, ParamsError> {
    if w.len() != n {
        return Err(ParamsError::WeightsLength {
            expected: n,
            got: w.len(),
        });
    }
    if let Some((row, &value)) = w
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || **v < 0.0)
    {
        return Err(ParamsError::BadWeight {
            row: row + 1,
            value,
        });
    }
    if w.iter().all(|&v| v == 0.0) {
        return Err(ParamsError::ZeroWeightSum);
    }
    Ok(w.to_owned())
}
