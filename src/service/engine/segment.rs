//! The segment job over gRPC: same library call as the CLI, outputs staged
//! and committed into the store, the model registered for Assign.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Engine, Origin, Source};
use crate::backend::cpu::CpuBackend;
use crate::backend::{with_cpu_fallback, BackendChoice, BackendKind};
use crate::data::TextFormat;
use crate::kmeans::FitControl;
use crate::segmentation::{
    run_segmentation, write_outputs, KChoice, SegmentControl, SegmentParams,
};
use crate::service::error::{ServiceError, ServiceResult};
use crate::service::jobs::{JobKind, JobOutput, JobProgress, JobSnapshot};
use crate::service::paths::{segmentation_content_error, Allowed};
use crate::service::storage::{ModelBody, ModelRecord, OutputKind};

/// Most values of k one sweep may try (each is a full set of fits).
const MAX_SWEEP_KS: usize = 64;
/// Most k-means runs per k in a segment job.
const MAX_SEGMENT_N_INIT: usize = 100;

/// Where the transaction log comes from.
#[derive(Debug, Clone)]
pub enum LogSource {
    Uploaded(String),
    ServerPath(String),
}

/// A transaction log a job reads, found and sized before the job is queued.
pub(super) struct JobLog {
    pub path: PathBuf,
    /// What the outputs record as their source: the log's id, or
    /// `file:NAME` for a server-side file.
    pub source: String,
    pub server_file: bool,
    /// At most this many lines.
    pub lines: u64,
    /// How its text is written: the request's, else the one stored with an
    /// uploaded log.
    pub format: TextFormat,
    uploaded: Option<String>,
    allowed: Option<Allowed>,
}

impl JobLog {
    /// Run at the job's start: a server-side file must still be the one
    /// allowed.
    pub fn recheck(&self, engine: &Engine) -> ServiceResult<()> {
        match &self.allowed {
            Some(a) => engine.roots.recheck("transactions_path", a),
            None => Ok(()),
        }
    }

    /// What must still exist when the outputs are stored.
    pub fn commit_source(&self) -> Source<'_> {
        self.uploaded.as_deref().map_or(Source::None, Source::Log)
    }

    /// Run with the outputs' commit (under the lock erasure takes), once
    /// the job read the log: an uploaded log read with a delimiter other
    /// than its upload's is to be split that way by erasure too. Only a
    /// job that succeeded records one: a refused or failed request must
    /// not make erasure split the log wrongly.
    pub fn note_delimiter(&self, engine: &Engine) -> ServiceResult<()> {
        match (&self.uploaded, self.format.delimiter) {
            (Some(id), Some(d)) => engine.store.note_read_delimiter(id, d),
            _ => Ok(()),
        }
    }
}

impl Engine {
    /// Finds the log, checks its size against `max_dataset_bytes`, and
    /// settles its text format.
    pub(super) fn job_log(
        &self,
        source: &LogSource,
        text_format: Option<TextFormat>,
    ) -> ServiceResult<JobLog> {
        let format = match (text_format, source) {
            (Some(f), _) => f,
            (None, LogSource::Uploaded(id)) => self.store.transactions(id)?.text_format,
            (None, LogSource::ServerPath(_)) => Default::default(),
        };
        let (path, label, allowed, uploaded) = match source {
            LogSource::Uploaded(id) => (
                self.store.transactions_path(id)?,
                id.clone(),
                None,
                Some(id.clone()),
            ),
            LogSource::ServerPath(p) => {
                let a = self.roots.allow("transactions_path", p)?;
                // Only the file's name is kept: the server's directory layout
                // is not the clients' business.
                let label = format!(
                    "file:{}",
                    a.path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                );
                (a.path.clone(), label, Some(a), None)
            }
        };
        let (lines, bytes) = crate::service::storage::log_extent(&path)?;
        self.check_dataset_size(bytes)?;
        Ok(JobLog {
            path,
            source: label,
            server_file: allowed.is_some(),
            lines,
            format,
            uploaded,
            allowed,
        })
    }
}

/// A segment request, checked and typed.
pub struct SegmentJob {
    pub source: LogSource,
    /// The request's text format; `None`: the one stored with an uploaded
    /// log (the default for a server path).
    pub text_format: Option<crate::data::TextFormat>,
    pub params: SegmentParams,
    pub previous_id: Option<String>,
    pub backend: Option<BackendChoice>,
}

impl Engine {
    /// Checks the log, the previous segmentation and the request's cost,
    /// then queues the job.
    pub async fn segment(
        self: &Arc<Self>,
        mut job: SegmentJob,
        origin: Origin<'_>,
    ) -> ServiceResult<JobSnapshot> {
        let log = self.job_log(&job.source, job.text_format.take())?;
        job.params.format = log.format.clone();
        self.check_segment_cost(&job.params, log.lines)?;
        let previous = job
            .previous_id
            .as_deref()
            .map(|id| self.store.segmentation_model(id))
            .transpose()?;
        let backends = self.backends().await;
        let (backend, choice) = backends.resolve(job.backend)?;
        let uses_gpu = backend.info().backend == BackendKind::Gpu;
        let engine = self.clone();
        self.spawn(JobKind::Segment, uses_gpu, origin, move |ctx| {
            let cpu = CpuBackend::new().cancel_on(ctx.cancel.clone());
            let backend = backends.for_job(choice, &cpu)?;
            log.recheck(&engine)?;
            let erasures = engine.erasures();
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
            let mut run = with_cpu_fallback(choice, backend, |b| {
                run_segmentation(b, &log.path, &job.params, previous.as_ref(), &control)
            })
            // Never a cell value in a job's error: job records are readable
            // by every read key and outlive the log.
            .map_err(|e| segmentation_content_error(e, log.server_file))?;
            // Nor in the stored outputs: an unreadable cell can be anything
            // (a name shifted into the date column), and erasure would not
            // find it in segments.json or the report. Rows, columns and
            // fixes stay.
            run.input.bad_rows = run.input.bad_rows.without_values();
            ctx.phase("writing outputs");
            engine.commit(erasures, log.commit_source(), || {
                log.note_delimiter(&engine)?;
                engine.store_segmentation(&run, log.source.clone())
            })
        })
    }

    fn check_segment_cost(&self, params: &SegmentParams, lines: u64) -> ServiceResult<()> {
        let max_k = self.config.limits.max_k;
        let (lo, hi) = match &params.k {
            None => (
                *crate::segmentation::DEFAULT_K_RANGE.start(),
                *crate::segmentation::DEFAULT_K_RANGE.end(),
            ),
            Some(KChoice::Fixed(k)) => (*k, *k),
            Some(KChoice::Range(r)) => (*r.start(), *r.end()),
        };
        if hi > max_k {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_k",
                message: format!("k up to {hi}; the limit is {max_k}"),
            });
        }
        if hi - lo + 1 > MAX_SWEEP_KS {
            return Err(ServiceError::invalid(
                "k_range",
                format!(
                    "a sweep over {} values of k; at most {MAX_SWEEP_KS}",
                    hi - lo + 1
                ),
            ));
        }
        if params.n_init > MAX_SEGMENT_N_INIT {
            return Err(ServiceError::invalid(
                "n_init",
                format!("n_init = {}; at most {MAX_SEGMENT_N_INIT}", params.n_init),
            ));
        }
        super::cost::segment(&self.config.limits, lines, lo..=hi, params.n_init)
    }

    fn store_segmentation(
        &self,
        run: &crate::segmentation::SegmentRun,
        source: String,
    ) -> ServiceResult<JobOutput> {
        let meta = self
            .store
            .store_outputs(OutputKind::Segmentation, source.clone(), |dir| {
                Ok(write_outputs(run, dir)?.names())
            })?;
        // Registered as a model too, so Assign scores new customers with the
        // stored log1p and scaling.
        self.store.put_model(&ModelRecord {
            id: meta.id.clone(),
            dataset_id: source,
            columns: run.model.features.clone(),
            created_at_ms: meta.created_at_ms,
            body: ModelBody::KMeans(run.model.kmeans.clone()),
            segments: Some(crate::service::storage::SegmentNames::of(&run.model)),
        })?;
        Ok(JobOutput::Segmentation(meta.id))
    }
}
