//! Domain ↔ proto conversions, in one place.

use super::jobs::{JobKind, JobOutput, JobProgress, JobSnapshot, JobState};
use super::proto as pb;
use super::storage::{DatasetMeta, ModelBody, ModelRecord};
use crate::backend::BackendChoice;
use crate::kmeans::Evaluation;

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn backend_choice(value: i32) -> Result<Option<BackendChoice>, super::error::ServiceError> {
    match pb::Backend::try_from(value) {
        Ok(pb::Backend::Unspecified) => Ok(None),
        Ok(pb::Backend::Auto) => Ok(Some(BackendChoice::Auto)),
        Ok(pb::Backend::Gpu) => Ok(Some(BackendChoice::Gpu)),
        Ok(pb::Backend::Cpu) => Ok(Some(BackendChoice::Cpu)),
        Err(_) => Err(super::error::ServiceError::invalid(
            "backend",
            format!("unknown backend {value}"),
        )),
    }
}

impl From<&DatasetMeta> for pb::Dataset {
    fn from(m: &DatasetMeta) -> Self {
        Self {
            id: m.id.clone(),
            name: m.name.clone(),
            n_rows: m.n_rows,
            n_cols: m.columns.len() as u32,
            columns: m.columns.clone(),
            size_bytes: m.size_bytes,
            created_at: Some(timestamp(m.created_at_ms)),
        }
    }
}

fn flat(a: &ndarray::Array2<f32>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

impl From<&ModelRecord> for pb::Model {
    fn from(r: &ModelRecord) -> Self {
        let model = match &r.body {
            ModelBody::KMeans(m) => pb::model::Model::Kmeans(pb::KMeansModel {
                id: r.id.clone(),
                dataset_id: r.dataset_id.clone(),
                k: m.k() as u32,
                columns: r.columns.clone(),
                centroids: flat(m.centroids()),
                inertia: m.inertia(),
                n_iter: m.n_iter() as u32,
                inertia_history: m.inertia_history().to_vec(),
                cluster_sizes: m.cluster_sizes().iter().map(|&s| s as u64).collect(),
                backend: m.backend().backend.to_string(),
                adapter: m.backend().adapter.clone(),
                standardized: m.scaler().standardize,
                created_at: Some(timestamp(r.created_at_ms)),
            }),
            ModelBody::Pca(m) => pb::model::Model::Pca(pb::PcaModel {
                id: r.id.clone(),
                dataset_id: r.dataset_id.clone(),
                n_components: m.n_components() as u32,
                columns: r.columns.clone(),
                components: flat(m.components()),
                explained_variance: m.explained_variance().to_vec(),
                explained_variance_ratio: m.explained_variance_ratio().to_vec(),
                singular_values: m.singular_values().to_vec(),
                mean: m.mean().to_vec(),
                whiten: m.whiten(),
                backend: m.backend().backend.to_string(),
                adapter: m.backend().adapter.clone(),
                created_at: Some(timestamp(r.created_at_ms)),
            }),
        };
        Self { model: Some(model) }
    }
}

impl From<&JobProgress> for pb::JobProgress {
    fn from(p: &JobProgress) -> Self {
        Self {
            phase: p.phase.clone(),
            run: p.run,
            iteration: p.iteration,
            inertia: p.inertia,
            fraction: p.fraction,
            elapsed_seconds: p.elapsed_seconds,
        }
    }
}

impl From<&JobSnapshot> for pb::Job {
    fn from(s: &JobSnapshot) -> Self {
        let kind = match s.kind {
            JobKind::Import => pb::JobKind::Import,
            JobKind::FitKMeans => pb::JobKind::FitKmeans,
            JobKind::FitPca => pb::JobKind::FitPca,
        };
        let state = match s.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        };
        let result = s.output.as_ref().map(|o| match o {
            JobOutput::Dataset(d) => pb::job::Result::Dataset(d.into()),
            JobOutput::Model(m) => match pb::Model::from(m.as_ref()).model.expect("always set") {
                pb::model::Model::Kmeans(k) => pb::job::Result::Kmeans(k),
                pb::model::Model::Pca(p) => pb::job::Result::Pca(p),
            },
        });
        Self {
            id: s.id.clone(),
            kind: kind as i32,
            state: state as i32,
            progress: Some((&s.progress).into()),
            result,
            error: s.error.clone().unwrap_or_default(),
            created_at: Some(timestamp(s.created_at_ms)),
            finished_at: s.finished_at_ms.map(timestamp),
        }
    }
}

impl From<&Evaluation> for pb::EvaluateResponse {
    fn from(e: &Evaluation) -> Self {
        Self {
            inertia: e.inertia,
            silhouette: e.silhouette,
            silhouette_sample_size: e.silhouette_sample_size as u32,
            davies_bouldin: e.davies_bouldin,
            calinski_harabasz: e.calinski_harabasz,
        }
    }
}
