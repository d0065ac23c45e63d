use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::service::engine::Engine;
use crate::service::proto as pb;

pub struct JobsService {
    pub engine: Arc<Engine>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsService {
    type WatchJobStream = EventStream;

    /// Progress events as they happen, then the finished job. A watcher that
    /// disconnects only stops its own stream.
    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let handle = self.engine.jobs.get(&request.into_inner().id)?;
        let mut rx = handle.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                let event = if snapshot.state.is_finished() {
                    pb::job_event::Event::Finished((&snapshot).into())
                } else {
                    pb::job_event::Event::Progress((&snapshot.progress).into())
                };
                let last = snapshot.state.is_finished();
                if tx
                    .send(Ok(pb::JobEvent { event: Some(event) }))
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let handle = self.engine.jobs.get(&request.into_inner().id)?;
        Ok(Response::new((&handle.snapshot()).into()))
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.engine.jobs.list().iter().map(Into::into).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let handle = self.engine.jobs.get(&request.into_inner().id)?;
        handle.cancel();
        Ok(Response::new((&handle.snapshot()).into()))
    }
}
