use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::fit::Input;
use super::lloyd::Run;
use crate::backend::{Assignment, Backend, BackendInfo};
use crate::data::{check_finite, Scaler};
use crate::error::{ParamsError, Result};

/// A fitted k-means model.
///
/// Serialising it keeps what prediction and reporting need; the per-row
/// training `labels` and `distances` are not persisted (they come back empty).
///
/// Distances are squared Euclidean, measured in the space the model clusters
/// in: original units, or standard deviations when fitted with
/// `standardize`. Inertia is their weighted sum, accumulated in f64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KMeansModel {
    centroids: Array2<f32>,
    scaled_centroids: Array2<f32>,
    scaler: Scaler,
    #[serde(skip)]
    labels: Vec<u32>,
    #[serde(skip)]
    distances: Vec<f32>,
    inertia: f64,
    n_iter: usize,
    /// Absent from model files written before it was recorded: read as
    /// `false` (unknown is not claimed as converged).
    #[serde(default)]
    converged: bool,
    inertia_history: Vec<f64>,
    cluster_sizes: Vec<usize>,
    backend: BackendInfo,
}

/// What a fit done elsewhere measured (see [`KMeansModel::from_centroids`]).
#[derive(Debug, Clone, Default)]
pub struct FitSummary {
    pub inertia: f64,
    pub n_iter: usize,
    pub converged: bool,
    pub inertia_history: Vec<f64>,
    /// Rows per cluster; empty when not counted.
    pub cluster_sizes: Vec<usize>,
}

/// Labels for new rows, with how clearly each row belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub labels: Vec<u32>,
    /// Squared distance to the assigned centroid.
    pub distances: Vec<f32>,
    /// Squared distance to the second-nearest centroid minus `distances`
    /// (≥ 0; small means the row sits between two segments). `None` when k = 1.
    pub margins: Option<Vec<f32>>,
}

impl KMeansModel {
    pub(super) fn new(
        run: Run,
        assignment: Assignment,
        scaler: Scaler,
        weights: Option<&[f32]>,
        backend: BackendInfo,
    ) -> Self {
        let k = run.centroids.nrows();
        let mut cluster_sizes = vec![0usize; k];
        for &l in &assignment.labels {
            cluster_sizes[l as usize] += 1;
        }
        let inertia = assignment
            .distances
            .iter()
            .enumerate()
            .map(|(i, &d)| weights.map_or(1.0, |w| w[i] as f64) * d as f64)
            .sum();
        Self {
            centroids: scaler.inverse_transform(run.centroids.view()),
            scaled_centroids: run.centroids,
            scaler,
            labels: assignment.labels,
            distances: assignment.distances,
            inertia,
            n_iter: run.n_iter,
            converged: run.converged,
            inertia_history: run.inertia_history,
            cluster_sizes,
            backend,
        }
    }

    /// A model of centroids fitted elsewhere (a distributed fit whose driver
    /// reduced the partitions' sums), in the rows' own units (no scaling).
    /// `summary` is what the fit measured, kept for reports.
    pub fn from_centroids(
        centroids: Array2<f32>,
        summary: FitSummary,
        backend: BackendInfo,
    ) -> Self {
        let d = centroids.ncols();
        Self {
            scaled_centroids: centroids.clone(),
            centroids,
            scaler: Scaler::identity(d),
            labels: Vec::new(),
            distances: Vec::new(),
            inertia: summary.inertia,
            n_iter: summary.n_iter,
            converged: summary.converged,
            inertia_history: summary.inertia_history,
            cluster_sizes: summary.cluster_sizes,
            backend,
        }
    }

    /// Centroids in the data's original units, `k × d`.
    pub fn centroids(&self) -> &Array2<f32> {
        &self.centroids
    }

    /// Centroids in the space distances are measured in (after the scaler).
    pub fn scaled_centroids(&self) -> &Array2<f32> {
        &self.scaled_centroids
    }

    pub fn scaler(&self) -> &Scaler {
        &self.scaler
    }

    pub fn k(&self) -> usize {
        self.centroids.nrows()
    }

    /// Whether a model read from a file is whole: every shape agrees with
    /// the centroids', and every stored number is finite (scales positive).
    /// A deserialised model is checked before use, so a damaged or
    /// hand-edited file is an error, never a panic.
    pub fn check_consistent(&self) -> std::result::Result<(), String> {
        let (k, d) = self.centroids.dim();
        let s = &self.scaler;
        if k == 0 || d == 0 {
            return Err(format!("the model has {k} centroids of {d} features"));
        }
        if self.scaled_centroids.dim() != (k, d) {
            return Err(format!(
                "scaled centroids are {:?}, centroids {k}×{d}",
                self.scaled_centroids.dim()
            ));
        }
        if s.mean.len() != d
            || s.centre().len() != d
            || s.scale.len() != d
            || !(s.log1p.is_empty() || s.log1p.len() == d)
        {
            return Err(format!(
                "the scaler has {} means, {} centres, {} scales and {} log1p flags for {d} features",
                s.mean.len(),
                s.centre().len(),
                s.scale.len(),
                s.log1p.len()
            ));
        }
        if !self.cluster_sizes.is_empty() && self.cluster_sizes.len() != k {
            return Err(format!(
                "{} cluster sizes for k = {k}",
                self.cluster_sizes.len()
            ));
        }
        let finite = self
            .centroids
            .iter()
            .chain(&self.scaled_centroids)
            .chain(&s.mean)
            .chain(s.centre());
        if finite.into_iter().any(|v| !v.is_finite())
            || s.scale.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err("the model holds a non-finite number or a non-positive scale".into());
        }
        Ok(())
    }

    pub fn n_features(&self) -> usize {
        self.centroids.ncols()
    }

    /// Label of every training row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Squared distance of every training row to its centroid.
    pub fn distances(&self) -> &[f32] {
        &self.distances
    }

    pub fn inertia(&self) -> f64 {
        self.inertia
    }

    pub fn n_iter(&self) -> usize {
        self.n_iter
    }

    /// Whether the fit converged within tolerance; `false` when it stopped
    /// at `max_iter`.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// Inertia of the assignment made in each iteration of the best run.
    pub fn inertia_history(&self) -> &[f64] {
        &self.inertia_history
    }

    /// Training rows per cluster.
    pub fn cluster_sizes(&self) -> &[usize] {
        &self.cluster_sizes
    }

    pub fn backend(&self) -> &BackendInfo {
        &self.backend
    }

    /// Renumbers the clusters: cluster `i` becomes `new_id[i]` (a
    /// permutation of `0..k`). Used to keep segment ids stable on refresh.
    pub fn renumber(&mut self, new_id: &[usize]) {
        let k = self.k();
        assert_eq!(new_id.len(), k, "one new id per cluster");
        let mut old_of = vec![0; k];
        for (old, &new) in new_id.iter().enumerate() {
            old_of[new] = old;
        }
        self.centroids = self.centroids.select(ndarray::Axis(0), &old_of);
        self.scaled_centroids = self.scaled_centroids.select(ndarray::Axis(0), &old_of);
        self.cluster_sizes = old_of.iter().map(|&o| self.cluster_sizes[o]).collect();
        for l in &mut self.labels {
            *l = new_id[*l as usize] as u32;
        }
    }

    /// Assigns new rows (in original units; the stored scaler is applied).
    pub fn predict(&self, backend: &dyn Backend, x: ArrayView2<f32>) -> Result<Prediction> {
        self.predict_input(backend, Input::View(x)).map(|(p, _)| p)
    }

    /// [`predict`](Self::predict) on rows the caller no longer needs: they
    /// are scaled in their own buffer (held once, not twice) and handed
    /// back scaled, for work in the model's units after the assignment.
    pub fn predict_owned(
        &self,
        backend: &dyn Backend,
        x: Array2<f32>,
    ) -> Result<(Prediction, Array2<f32>)> {
        self.predict_input(backend, Input::Owned(x))
    }

    fn predict_input(
        &self,
        backend: &dyn Backend,
        input: Input,
    ) -> Result<(Prediction, Array2<f32>)> {
        let x = input.view();
        if x.ncols() != self.n_features() {
            return Err(ParamsError::WidthMismatch {
                expected: self.n_features(),
                got: x.ncols(),
            }
            .into());
        }
        check_finite(x, &[])?;
        super::fit::check_log1p_domain(x, &self.scaler.log1p)?;
        let working = match input {
            Input::View(x) => self.scaler.transform(x),
            Input::Owned(x) => self.scaler.transform_owned(x),
        };
        let mut resident = backend.upload(working.view(), None)?;
        let a = resident.assign(self.scaled_centroids.view())?;
        drop(resident);
        let margins = (self.k() > 1).then_some(&a.second_distances).map(|second| {
            second
                .iter()
                .zip(&a.distances)
                .map(|(&s, &d)| (s - d).max(0.0))
                .collect()
        });
        let prediction = Prediction {
            labels: a.labels,
            distances: a.distances,
            margins,
        };
        Ok((prediction, working))
    }
}
