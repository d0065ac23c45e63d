//! Jobs from before a restart, run again from their stored requests through
//! the same conversions and checks as a new request.

use std::sync::Arc;

use prost::Message;

use super::segmentations::segment_job;
use super::value::clv_job;
use crate::service::convert::text_format;
use crate::service::engine::{Engine, KMeansJob, Origin, PcaJob};
use crate::service::error::ServiceError;
use crate::service::jobs::{JobKind, JobRecord};
use crate::service::proto as pb;

fn decode<M: Message + Default>(record: &JobRecord) -> Result<M, ServiceError> {
    let bytes = hex::decode(&record.request)
        .map_err(|e| ServiceError::Internal(format!("stored request: {e}")))?;
    M::decode(bytes.as_slice()).map_err(|e| ServiceError::Internal(format!("stored request: {e}")))
}

async fn resume(engine: &Arc<Engine>, record: &JobRecord) -> Result<(), ServiceError> {
    let origin = Origin::Resumed(record);
    match record.snapshot.kind {
        JobKind::Import => {
            let r: pb::ImportRequest = decode(record)?;
            let format = text_format(r.text_format, "text_format")?.unwrap_or_default();
            engine.import(r.path, r.columns, r.name, format, origin)?;
        }
        JobKind::FitKMeans => {
            let job = KMeansJob::try_from(decode::<pb::FitKMeansRequest>(record)?)?;
            engine.fit_kmeans(job, origin).await?;
        }
        JobKind::FitPca => {
            let job = PcaJob::try_from(decode::<pb::FitPcaRequest>(record)?)?;
            engine.fit_pca(job, origin).await?;
        }
        JobKind::Segment => {
            let job = segment_job(decode::<pb::SegmentRequest>(record)?)?;
            engine.segment(job, origin).await?;
        }
        JobKind::Clv => {
            let job = clv_job(decode::<pb::ClvRequest>(record)?)?;
            engine.clv(job, origin)?;
        }
    }
    Ok(())
}

/// Runs every unfinished job again, under its id; one whose request no
/// longer passes its checks (its dataset was deleted, say) is marked failed
/// with the reason.
pub async fn resume_jobs(engine: &Arc<Engine>, records: Vec<JobRecord>) {
    for record in records {
        let id = record.snapshot.id.clone();
        match resume(engine, &record).await {
            Ok(()) => tracing::info!(job = %id, "job from before the restart queued again"),
            Err(e) => {
                tracing::warn!(job = %id, "job from before the restart cannot run again");
                engine.jobs.fail_stored(&record, &e);
            }
        }
    }
}
