//! Long-running work: imports and fits run as jobs on a bounded pool.
//!
//! A job is queued until one of `max_concurrent_jobs` permits is free; jobs
//! on the GPU also queue (first come, first served) for the one GPU slot, so
//! a long fit cannot starve the next. The compute runs in `spawn_blocking`,
//! off the async runtime, so `Assign` calls keep being served. Watchers
//! subscribe to a `watch` channel; the job goes on whether or not anyone
//! watches. Cancellation sets a flag the fit checks every iteration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{watch, Semaphore};

use super::error::ServiceError;
use super::storage::{now_ms, DatasetMeta, ModelRecord, SegmentationMeta};
use crate::segmentation::SegmentsDocument;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Import,
    FitKMeans,
    FitPca,
    Segment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobProgress {
    pub phase: String,
    pub run: u32,
    pub iteration: u32,
    pub inertia: f64,
    pub fraction: f64,
    pub elapsed_seconds: f64,
}

#[derive(Debug, Clone)]
pub enum JobOutput {
    Dataset(DatasetMeta),
    Model(Box<ModelRecord>),
    Segmentation(Box<(SegmentationMeta, SegmentsDocument)>),
}

/// What a watcher sees.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    pub id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub progress: JobProgress,
    pub output: Option<JobOutput>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

pub struct JobHandle {
    cancel: Arc<AtomicBool>,
    state: watch::Sender<JobSnapshot>,
}

impl JobHandle {
    pub fn snapshot(&self) -> JobSnapshot {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobSnapshot> {
        self.state.subscribe()
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Given to the job's work: cancellation and progress.
#[derive(Clone)]
pub struct JobContext {
    pub cancel: Arc<AtomicBool>,
    started: Instant,
    state: watch::Sender<JobSnapshot>,
}

impl JobContext {
    pub fn progress(&self, mut p: JobProgress) {
        p.elapsed_seconds = self.started.elapsed().as_secs_f64();
        self.state.send_modify(|s| s.progress = p);
    }

    pub fn phase(&self, phase: &str) {
        self.progress(JobProgress {
            phase: phase.to_owned(),
            ..Default::default()
        });
    }
}

pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    permits: Arc<Semaphore>,
    gpu: Arc<Semaphore>,
}

impl Jobs {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            gpu: Arc::new(Semaphore::new(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobHandle>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Result<Arc<JobHandle>, ServiceError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound {
                what: "job",
                id: id.to_owned(),
            })
    }

    pub fn list(&self) -> Vec<JobSnapshot> {
        let mut all: Vec<JobSnapshot> = self.lock().values().map(|j| j.snapshot()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Starts `work` as a job and returns its first snapshot at once.
    pub fn submit<F>(&self, kind: JobKind, uses_gpu: bool, work: F) -> JobSnapshot
    where
        F: FnOnce(&JobContext) -> Result<JobOutput, ServiceError> + Send + 'static,
    {
        let id = super::storage::new_id("job");
        let snapshot = JobSnapshot {
            id: id.clone(),
            kind,
            state: JobState::Queued,
            progress: JobProgress {
                phase: "queued".into(),
                ..Default::default()
            },
            output: None,
            error: None,
            created_at_ms: now_ms(),
            finished_at_ms: None,
        };
        let (tx, _) = watch::channel(snapshot.clone());
        let handle = Arc::new(JobHandle {
            cancel: Arc::new(AtomicBool::new(false)),
            state: tx,
        });
        self.lock().insert(id, handle.clone());
        let (permits, gpu) = (self.permits.clone(), self.gpu.clone());
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let _gpu = if uses_gpu {
                Some(gpu.acquire_owned().await.expect("never closed"))
            } else {
                None
            };
            let ctx = JobContext {
                cancel: handle.cancel.clone(),
                started: Instant::now(),
                state: handle.state.clone(),
            };
            let result = if handle.cancel.load(Ordering::Relaxed) {
                Err(ServiceError::Cancelled)
            } else {
                handle.state.send_modify(|s| s.state = JobState::Running);
                let ctx2 = ctx.clone();
                tokio::task::spawn_blocking(move || work(&ctx2))
                    .await
                    .unwrap_or_else(|e| Err(ServiceError::Internal(format!("job panicked: {e}"))))
            };
            handle.state.send_modify(|s| {
                s.finished_at_ms = Some(now_ms());
                match result {
                    Ok(out) => {
                        s.state = JobState::Succeeded;
                        s.progress.fraction = 1.0;
                        s.progress.phase = "done".into();
                        s.output = Some(out);
                    }
                    Err(ServiceError::Cancelled) => {
                        s.state = JobState::Cancelled;
                        s.error = Some("cancelled".into());
                    }
                    Err(e) => {
                        s.state = JobState::Failed;
                        s.error = Some(e.to_string());
                    }
                }
            });
        });
        snapshot
    }

    /// Cancels every unfinished job and waits (up to `timeout`) for them to stop.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        let handles: Vec<Arc<JobHandle>> = self.lock().values().cloned().collect();
        for h in &handles {
            h.cancel();
        }
        let wait = async {
            for h in handles {
                let mut rx = h.subscribe();
                let _ = rx.wait_for(|s| s.state.is_finished()).await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}
