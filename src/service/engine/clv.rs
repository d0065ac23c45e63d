//! The CLV job over gRPC: the same library call as `segmenta clv`, its
//! outputs staged and committed into the store beside the segmentations.

use std::sync::Arc;

use super::segment::LogSource;
use super::Engine;
use crate::service::error::ServiceResult;
use crate::service::jobs::{JobKind, JobOutput, JobSnapshot};
use crate::service::paths::segmentation_content_error;
use crate::service::storage::OutputKind;
use crate::value::{run_clv, write_clv_outputs, ClvParams, ClvRun};

/// A CLV request, checked and typed.
pub struct ClvJob {
    pub source: LogSource,
    /// As [`super::SegmentJob::text_format`].
    pub text_format: Option<crate::data::TextFormat>,
    pub params: ClvParams,
}

impl Engine {
    /// Checks the log, then queues the job.
    pub fn clv(
        self: &Arc<Self>,
        mut job: ClvJob,
        origin: super::Origin<'_>,
    ) -> ServiceResult<JobSnapshot> {
        let log = self.job_log(&job.source, job.text_format.take())?;
        job.params.format = log.format.clone();
        let engine = self.clone();
        // CPU work: reading the log (sized by job_log), fits over grouped
        // per-customer sums, then scoring, whose work is the distinct
        // histories times the horizon (at most ten years) and which stops
        // on cancel.
        self.spawn(JobKind::Clv, false, origin, move |ctx| {
            log.recheck(&engine)?;
            let erasures = engine.erasures();
            ctx.phase("fitting the value models");
            let params = ClvParams {
                cancel: Some(ctx.cancel.clone()),
                ..job.params.clone()
            };
            let mut run = run_clv(&log.path, &params)
                .map_err(|e| segmentation_content_error(e, log.server_file))?;
            // As for segment jobs: no cell of the log in stored outputs.
            run.summary.bad_rows = run.summary.bad_rows.without_values();
            ctx.phase("writing outputs");
            engine.commit(erasures, log.commit_source(), || {
                log.note_delimiter(&engine)?;
                engine.store_clv(&run, log.source.clone())
            })
        })
    }

    fn store_clv(&self, run: &ClvRun, source: String) -> ServiceResult<JobOutput> {
        let meta = self.store.store_outputs(OutputKind::Clv, source, |dir| {
            Ok(write_clv_outputs(run, dir)?.names())
        })?;
        Ok(JobOutput::Clv(meta.id))
    }
}
