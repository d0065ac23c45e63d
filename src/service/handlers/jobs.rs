use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{page_request, paginate};
use crate::service::convert::job;
use crate::service::engine::Engine;
use crate::service::gate::note;
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
        note(&request, &[&request.get_ref().id]);
        let handle = self.engine.jobs.get(&request.get_ref().id)?;
        let mut rx = handle.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let engine = self.engine.clone();
        let mut closing = self.engine.jobs.closing();
        tokio::spawn(async move {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                let last = snapshot.state.is_finished();
                let event = if last {
                    pb::job_event::Event::Finished(job(&snapshot, &engine))
                } else {
                    pb::job_event::Event::Progress((&snapshot.progress).into())
                };
                if tx
                    .send(Ok(pb::JobEvent { event: Some(event) }))
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return;
                    },
                    // Shutdown: end the stream so the server can stop; the
                    // job runs again when the server is back.
                    _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the server is shutting down; the job runs again when it is back: watch it then",
                            )))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        note(&request, &[&request.get_ref().id]);
        let handle = self.engine.jobs.get(&request.get_ref().id)?;
        Ok(Response::new(job(&handle.snapshot(), &self.engine)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let page = page_request(r.page_size, r.page_token, &["job"])?;
        let snapshots = self.engine.jobs.list(page.after.as_deref());
        let engine = &self.engine;
        let (jobs, next_page_token) = paginate(
            snapshots
                .iter()
                .take(page.size + 1)
                .map(|s| (s.id.clone(), job(s, engine))),
            &page,
            engine.config.limits.max_message_bytes / 2,
        );
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        note(&request, &[&request.get_ref().id]);
        let handle = self.engine.jobs.get(&request.get_ref().id)?;
        handle.cancel();
        Ok(Response::new(job(&handle.snapshot(), &self.engine)))
    }
}
