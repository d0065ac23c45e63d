//! The segment job over gRPC: same library call as the CLI, outputs staged
//! and committed into the store, the model registered for Assign.

use std::path::PathBuf;
use std::sync::Arc;

use super::Engine;
use crate::backend::{with_cpu_fallback, BackendChoice};
use crate::kmeans::FitControl;
use crate::segmentation::features::FEATURE_NAMES;
use crate::segmentation::{run_segmentation, write_outputs, SegmentControl, SegmentParams};
use crate::service::error::ServiceResult;
use crate::service::jobs::{JobKind, JobOutput, JobProgress, JobSnapshot};
use crate::service::storage::{now_ms, ModelBody, ModelRecord, SegmentationMeta};

/// Where the transaction log comes from.
#[derive(Debug, Clone)]
pub enum LogSource {
    Uploaded(String),
    ServerPath(String),
}

/// A segment request, checked and typed.
pub struct SegmentJob {
    pub source: LogSource,
    pub params: SegmentParams,
    pub previous_id: Option<String>,
    pub backend: Option<BackendChoice>,
}

impl Engine {
    /// Checks the log and the previous segmentation exist, then queues the job.
    pub async fn segment(self: &Arc<Self>, job: SegmentJob) -> ServiceResult<JobSnapshot> {
        let (path, source) = match &job.source {
            LogSource::Uploaded(id) => (self.store.transactions_path(id)?, id.clone()),
            LogSource::ServerPath(p) => (PathBuf::from(p), p.clone()),
        };
        let previous = job
            .previous_id
            .as_deref()
            .map(|id| self.store.segmentation_model(id))
            .transpose()?;
        let backends = self.backends().await;
        let (backend, choice) = backends.resolve(job.backend)?;
        let uses_gpu = backend.info().backend == crate::backend::BackendKind::Gpu;
        let engine = self.clone();
        Ok(self.jobs.submit(JobKind::Segment, uses_gpu, move |ctx| {
            let (backend, _) = backends.resolve(Some(choice))?;
            let sink = ctx.clone();
            let control = SegmentControl {
                fit: FitControl::default().cancel_flag(ctx.cancel.clone()),
                on_phase: Some(Arc::new(move |phase: &str, fraction: f64| {
                    sink.progress(JobProgress {
                        phase: phase.to_owned(),
                        fraction,
                        ..Default::default()
                    })
                })),
            };
            let run = with_cpu_fallback(choice, backend, |b| {
                run_segmentation(b, &path, &job.params, previous.as_ref(), &control)
            })?;
            ctx.phase("writing outputs");
            engine.store_segmentation(&run, source)
        }))
    }

    fn store_segmentation(
        &self,
        run: &crate::segmentation::SegmentRun,
        source: String,
    ) -> ServiceResult<JobOutput> {
        let (id, staged) = self.store.stage_segmentation()?;
        let written = write_outputs(run, &staged);
        let files = match written {
            Ok(files) => files,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(e.into());
            }
        };
        let mut artifacts: Vec<String> = [
            &files.report_html,
            &files.customers_csv,
            &files.customers_parquet,
            &files.segments_json,
            &files.model_json,
        ]
        .into_iter()
        .chain(&files.charts)
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
        artifacts.dedup();
        let meta = SegmentationMeta {
            id: id.clone(),
            source: source.clone(),
            created_at_ms: now_ms(),
            artifacts,
        };
        self.store.commit_segmentation(&staged, &meta)?;
        // Registered as a model too, so Assign scores new customers with the
        // stored log1p and scaling.
        self.store.put_model(&ModelRecord {
            id: id.clone(),
            dataset_id: source,
            columns: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            created_at_ms: meta.created_at_ms,
            body: ModelBody::KMeans(run.model.kmeans.clone()),
        })?;
        let (meta, doc) = self.store.segmentation(&id)?;
        Ok(JobOutput::Segmentation(Box::new((meta, doc))))
    }
}
