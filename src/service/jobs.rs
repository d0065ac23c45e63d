//! Long-running work: imports, fits and segment jobs run as jobs on a
//! bounded pool, and their records outlive the process.
//!
//! A job is queued until one of `max_concurrent_jobs` permits is free; jobs
//! on the GPU also queue (first come, first served) for the one GPU slot, so
//! a long fit cannot starve the next. The compute runs on its own rayon pool
//! whose threads run at a lower priority (nice 10), so calls that answer a
//! client (`Assign`, `Transform`) keep their latency while fits saturate the
//! cores. Watchers subscribe to a `watch` channel; the job goes on whether
//! or not anyone watches. Cancellation sets a flag every compute loop checks.
//!
//! Each job's record (kind, request, state, result id or error, times) is a
//! JSON file in `DATA_DIR/jobs/`, rewritten atomically at every change of
//! state. After a restart, finished jobs are served from their records and
//! unfinished ones run again from their stored request, under the same id.
//! A record holds ids, never per-row data; finished jobs are pruned after
//! the retention time or past the maximum count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::error::{ServiceError, ServiceResult};
use super::storage::{now_ms, write_json_atomically};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobKind {
    Import,
    FitKMeans,
    FitPca,
    Segment,
    Clv,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Import => "import",
            Self::FitKMeans => "fit_kmeans",
            Self::FitPca => "fit_pca",
            Self::Segment => "segment",
            Self::Clv => "clv",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub phase: String,
    pub run: u32,
    pub iteration: u32,
    pub inertia: f64,
    pub fraction: f64,
    pub elapsed_seconds: f64,
}

/// What a finished job made: the id of an object in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutput {
    Dataset(String),
    Model(String),
    Segmentation(String),
    Clv(String),
}

impl JobOutput {
    pub fn id(&self) -> &str {
        match self {
            Self::Dataset(id) | Self::Model(id) | Self::Segmentation(id) | Self::Clv(id) => id,
        }
    }
}

/// What a watcher sees, and what is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub progress: JobProgress,
    pub output: Option<JobOutput>,
    pub error: Option<String>,
    /// The gRPC code of `error` (`tonic::Code` as a number); absent in
    /// records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// A job's stored record: its snapshot and the request that started it
/// (the protobuf bytes, hex-encoded), to run it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub snapshot: JobSnapshot,
    pub request: String,
    /// Times the job started running without finishing (the server
    /// stopped under it, or died): past [`MAX_STARTS`] it is not run again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub starts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Starts a job gets: one whose run took the server down (out of memory,
/// say) would otherwise take it down again at every restart.
pub const MAX_STARTS: u32 = 3;

pub struct JobHandle {
    cancel: Arc<AtomicBool>,
    state: watch::Sender<JobSnapshot>,
    /// Kept until the job finishes (a finished job never runs again), so
    /// retained jobs hold no request bytes, in memory or on disk.
    request: Mutex<String>,
    /// As [`JobRecord::starts`].
    starts: AtomicU32,
}

impl JobHandle {
    fn request(&self) -> String {
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn drop_request(&self) {
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
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

    /// A new phase that does not know its share of the work keeps the
    /// fraction reached so far. (Only a job that starts over — a GPU
    /// failure run again on the CPU — reports a lower one.)
    pub fn phase(&self, phase: &str) {
        let elapsed_seconds = self.started.elapsed().as_secs_f64();
        self.state.send_modify(|s| {
            s.progress = JobProgress {
                phase: phase.to_owned(),
                fraction: s.progress.fraction,
                elapsed_seconds,
                ..Default::default()
            }
        });
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// How many jobs may wait and how long finished ones are kept.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub retention: Duration,
    pub max_retained: usize,
}

pub struct Jobs {
    dir: PathBuf,
    limits: JobLimits,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    permits: Arc<Semaphore>,
    gpu: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    pool: Arc<rayon::ThreadPool>,
    /// Set at shutdown: nothing new starts, records stay as they are so the
    /// next start runs unfinished jobs again, and watchers are let go.
    closing: watch::Sender<bool>,
}

/// The compute pool for jobs: as many threads as cores, at nice 10.
fn job_pool() -> std::io::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("segmenta-job-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .map_err(std::io::Error::other)
}

/// Lowers the calling thread's scheduling priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions; `gettid` is
    // the calling thread, and a failure only leaves the priority unchanged.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Jobs {
    /// Opens the job records in `dir`. Returns the jobs and the records of
    /// those that had not finished, for the engine to run again.
    pub fn open(dir: &Path, limits: JobLimits) -> std::io::Result<(Self, Vec<JobRecord>)> {
        std::fs::create_dir_all(dir)?;
        let jobs = Self {
            dir: dir.to_owned(),
            limits,
            jobs: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            gpu: Arc::new(Semaphore::new(1)),
            queued: Arc::new(AtomicUsize::new(0)),
            pool: Arc::new(job_pool()?),
            closing: watch::channel(false).0,
        };
        let mut unfinished = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            if name.starts_with(super::storage::TMP) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let record: JobRecord = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(file = %name, "skipping an unreadable job record: {e}");
                    continue;
                }
            };
            let mut record = record;
            if !record.snapshot.state.is_finished() && record.starts >= MAX_STARTS {
                // Its runs took the server down: failed, not run again.
                let s = &mut record.snapshot;
                s.state = JobState::Failed;
                s.error = Some(format!(
                    "the server stopped {} times while this job ran (it may need more memory \
                     than the server has); it is not run again",
                    record.starts
                ));
                s.error_code = Some(tonic::Code::ResourceExhausted as i32);
                s.finished_at_ms = Some(now_ms());
                record.request.clear();
                record.starts = 0;
                tracing::error!(job = %s.id, "a job the server stopped under {MAX_STARTS} times is not run again");
                if let Err(e) = write_json_atomically(&path, &record) {
                    tracing::error!(job = %record.snapshot.id, "cannot store the job record: {e}");
                }
            }
            // Unfinished jobs are visible (queued) at once, before the
            // engine runs them again; their handle is reused then.
            let mut shown = record.snapshot.clone();
            if !shown.state.is_finished() {
                shown.state = JobState::Queued;
                shown.progress = JobProgress {
                    phase: "queued again after a restart".into(),
                    ..Default::default()
                };
            }
            let (tx, _) = watch::channel(shown);
            jobs.lock().insert(
                record.snapshot.id.clone(),
                Arc::new(JobHandle {
                    cancel: Arc::new(AtomicBool::new(false)),
                    state: tx,
                    request: Mutex::new(if record.snapshot.state.is_finished() {
                        String::new()
                    } else {
                        record.request.clone()
                    }),
                    starts: AtomicU32::new(record.starts),
                }),
            );
            if !record.snapshot.state.is_finished() {
                unfinished.push(record);
            }
        }
        unfinished.sort_by(|a, b| a.snapshot.id.cmp(&b.snapshot.id));
        jobs.prune();
        Ok((jobs, unfinished))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobHandle>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> ServiceResult<Arc<JobHandle>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::not_found("job", id))
    }

    /// Jobs in id order (which is creation order), from after `after`.
    pub fn list(&self, after: Option<&str>) -> Vec<JobSnapshot> {
        let mut all: Vec<JobSnapshot> = self
            .lock()
            .values()
            .map(|j| j.snapshot())
            .filter(|s| after.is_none_or(|a| s.id.as_str() > a))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// (kind, state) of every job known, for metrics.
    pub fn counts(&self) -> Vec<(JobKind, JobState)> {
        self.lock()
            .values()
            .map(|j| {
                let s = j.snapshot();
                (s.kind, s.state)
            })
            .collect()
    }

    /// Becomes `true` when the server starts shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether a new job would be refused.
    pub fn is_full(&self) -> bool {
        self.queued() >= self.limits.max_queued
    }

    /// The compute pool jobs run on; `Evaluate` runs there too.
    pub fn pool(&self) -> Arc<rayon::ThreadPool> {
        self.pool.clone()
    }

    /// A permit to compute, in the jobs' queue (for `Evaluate`).
    pub async fn admit(&self) -> ServiceResult<tokio::sync::OwnedSemaphorePermit> {
        if self.is_full() {
            return Err(self.full());
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.clone().acquire_owned().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        permit.map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))
    }

    fn full(&self) -> ServiceError {
        ServiceError::ResourceExhausted {
            limit: "max_queued_jobs",
            message: format!(
                "{} jobs are already waiting; retry later",
                self.limits.max_queued
            ),
        }
    }

    fn persist(&self, snapshot: &JobSnapshot, request: &str, starts: u32) {
        let record = JobRecord {
            snapshot: snapshot.clone(),
            request: request.to_owned(),
            starts,
        };
        let path = self.dir.join(format!("{}.json", snapshot.id));
        if let Err(e) = write_json_atomically(&path, &record) {
            tracing::error!(job = %snapshot.id, "cannot store the job record: {e}");
        }
    }

    /// Starts `work` as a new job; its record is stored before this returns.
    pub fn submit<F>(
        self: &Arc<Self>,
        kind: JobKind,
        uses_gpu: bool,
        request: &[u8],
        work: F,
    ) -> ServiceResult<JobSnapshot>
    where
        F: FnOnce(&JobContext) -> ServiceResult<JobOutput> + Send + 'static,
    {
        if self.is_closing() {
            return Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        if self.is_full() {
            return Err(self.full());
        }
        let id = super::storage::new_id("job");
        Ok(self.start(id, now_ms(), kind, uses_gpu, hex::encode(request), work))
    }

    /// Runs a job from before a restart again, under its id.
    pub fn resume<F>(self: &Arc<Self>, record: &JobRecord, uses_gpu: bool, work: F) -> JobSnapshot
    where
        F: FnOnce(&JobContext) -> ServiceResult<JobOutput> + Send + 'static,
    {
        let s = &record.snapshot;
        self.start(
            s.id.clone(),
            s.created_at_ms,
            s.kind,
            uses_gpu,
            record.request.clone(),
            work,
        )
    }

    /// Marks a job from before a restart failed (its request no longer
    /// makes sense, e.g. its dataset was deleted).
    pub fn fail_stored(&self, record: &JobRecord, error: &ServiceError) {
        let mut s = record.snapshot.clone();
        s.state = JobState::Failed;
        s.error = Some(format!("after a restart: {error}"));
        s.error_code = Some(error.code() as i32);
        s.finished_at_ms = Some(now_ms());
        self.persist(&s, "", 0);
        if let Some(h) = self.lock().get(&s.id) {
            h.drop_request();
            h.state.send_replace(s);
        }
    }

    fn start<F>(
        self: &Arc<Self>,
        id: String,
        created_at_ms: i64,
        kind: JobKind,
        uses_gpu: bool,
        request: String,
        work: F,
    ) -> JobSnapshot
    where
        F: FnOnce(&JobContext) -> ServiceResult<JobOutput> + Send + 'static,
    {
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
            error_code: None,
            created_at_ms,
            finished_at_ms: None,
        };
        let existing = self
            .lock()
            .get(&id)
            .filter(|h| !h.snapshot().state.is_finished())
            .cloned();
        let starts = existing
            .as_ref()
            .map_or(0, |h| h.starts.load(Ordering::Relaxed));
        self.persist(&snapshot, &request, starts);
        let handle = match existing {
            // A job from before a restart: same watchers, same cancel flag.
            Some(h) => {
                h.state.send_replace(snapshot.clone());
                h
            }
            None => {
                let (tx, _) = watch::channel(snapshot.clone());
                let h = Arc::new(JobHandle {
                    cancel: Arc::new(AtomicBool::new(false)),
                    state: tx,
                    request: Mutex::new(request),
                    starts: AtomicU32::new(0),
                });
                self.lock().insert(id, h.clone());
                h
            }
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        let jobs = self.clone();
        tokio::spawn(async move {
            let permit = jobs.permits.clone().acquire_owned().await;
            let gpu = match (&permit, uses_gpu) {
                (Ok(_), true) => Some(jobs.gpu.clone().acquire_owned().await),
                _ => None,
            };
            jobs.queued.fetch_sub(1, Ordering::Relaxed);
            if permit.is_err() || jobs.is_closing() {
                // Shutting down before it started: the record stays queued.
                return;
            }
            let ctx = JobContext {
                cancel: handle.cancel.clone(),
                started: Instant::now(),
                state: handle.state.clone(),
            };
            let result = if ctx.cancelled() {
                Err(ServiceError::Cancelled)
            } else {
                handle.state.send_modify(|s| s.state = JobState::Running);
                // Counted before the work runs: a run that kills the
                // process is counted too.
                let starts = handle.starts.fetch_add(1, Ordering::Relaxed) + 1;
                jobs.persist(&handle.snapshot(), &handle.request(), starts);
                let (ctx2, pool) = (ctx.clone(), jobs.pool.clone());
                tokio::task::spawn_blocking(move || pool.install(|| work(&ctx2)))
                    .await
                    .unwrap_or_else(|e| {
                        // The panic's message can quote data: the server log
                        // has it, the job record (readable by every read key)
                        // does not.
                        tracing::error!(error = %e, "a job panicked");
                        Err(ServiceError::Internal(
                            "the job failed on a bug (see the server log)".into(),
                        ))
                    })
            };
            drop((gpu, permit));
            if jobs.is_closing() && matches!(result, Err(ServiceError::Cancelled)) {
                // Stopped by shutdown, not by a client: run again at the
                // next start. `Jobs::shutdown` stores it as queued, this
                // start not counted, as for a job still running then.
                return;
            }
            handle.state.send_modify(|s| {
                s.finished_at_ms = Some(now_ms());
                match result {
                    Ok(out) => {
                        s.state = JobState::Succeeded;
                        s.progress.fraction = 1.0;
                        s.progress.phase = "done".into();
                        s.output = Some(out);
                    }
                    Err(e) => {
                        s.state = match e {
                            ServiceError::Cancelled => JobState::Cancelled,
                            _ => JobState::Failed,
                        };
                        s.error = Some(e.to_string());
                        s.error_code = Some(e.code() as i32);
                    }
                }
            });
            handle.drop_request();
            jobs.persist(&handle.snapshot(), "", 0);
            jobs.prune();
        });
        snapshot
    }

    /// Forgets finished jobs past the retention time, then the oldest
    /// finished ones past the maximum count; their records are deleted.
    pub fn prune(&self) {
        let now = now_ms();
        let retention = self.limits.retention.as_millis() as i64;
        let mut jobs = self.lock();
        let mut finished: Vec<(i64, String)> = jobs
            .values()
            .map(|h| h.snapshot())
            .filter_map(|s| s.finished_at_ms.map(|t| (t, s.id)))
            .collect();
        finished.sort();
        let excess = finished.len().saturating_sub(self.limits.max_retained);
        for (i, (finished_at, id)) in finished.into_iter().enumerate() {
            if i < excess || now - finished_at > retention {
                jobs.remove(&id);
                let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
            }
        }
    }

    /// Rewrites every stored record whose error text contains `needle`
    /// (customer erasure); returns the ids of those changed.
    pub fn scrub(&self, needle: &str) -> Vec<String> {
        let handles: Vec<Arc<JobHandle>> = self.lock().values().cloned().collect();
        let mut changed = Vec::new();
        for h in handles {
            let snapshot = h.snapshot();
            let hit = snapshot
                .error
                .as_deref()
                .is_some_and(|e| e.contains(needle));
            if hit {
                h.state.send_modify(|s| {
                    s.error = s.error.as_ref().map(|e| e.replace(needle, "[erased]"));
                });
                self.persist(
                    &h.snapshot(),
                    &h.request(),
                    h.starts.load(Ordering::Relaxed),
                );
                changed.push(snapshot.id);
            }
        }
        changed
    }

    /// Stops taking jobs, cancels every unfinished one and waits (up to
    /// `timeout`) for them to stop. Their records stay unfinished, so the
    /// next start runs them again.
    pub async fn shutdown(&self, timeout: Duration) {
        self.closing.send_replace(true);
        self.permits.close();
        let handles: Vec<Arc<JobHandle>> = self
            .lock()
            .values()
            .filter(|h| !h.snapshot().state.is_finished())
            .cloned()
            .collect();
        for h in &handles {
            h.cancel();
        }
        // Running jobs stop at their next cancellation check.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self.permits.available_permits() < self.limits.max_concurrent.max(1)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every job still running, or stopped by the cancel above, was
        // stopped by a clean shutdown, not killed: stored as queued, this
        // run not counted against its starts (the one place that does so).
        for h in &handles {
            let stopped = h.state.send_if_modified(|s| {
                let running = s.state == JobState::Running;
                if running {
                    s.state = JobState::Queued;
                }
                running
            });
            if stopped {
                let starts = h.starts.load(Ordering::Relaxed).saturating_sub(1);
                h.starts.store(starts, Ordering::Relaxed);
                self.persist(&h.snapshot(), &h.request(), starts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> JobLimits {
        JobLimits {
            max_concurrent: 1,
            max_queued: 4,
            retention: Duration::from_secs(3600),
            max_retained: 100,
        }
    }

    fn record(id: &str, starts: u32) -> JobRecord {
        JobRecord {
            snapshot: JobSnapshot {
                id: id.into(),
                kind: JobKind::FitKMeans,
                state: JobState::Running,
                progress: JobProgress::default(),
                output: None,
                error: None,
                error_code: None,
                created_at_ms: now_ms(),
                finished_at_ms: None,
            },
            request: "00".into(),
            starts,
        }
    }

    #[test]
    fn a_job_the_server_stopped_under_again_and_again_is_not_run_again() {
        let dir = tempfile::TempDir::new().unwrap();
        for (id, starts) in [("job-once", 1), ("job-looping", MAX_STARTS)] {
            let path = dir.path().join(format!("{id}.json"));
            write_json_atomically(&path, &record(id, starts)).unwrap();
        }
        let (jobs, unfinished) = Jobs::open(dir.path(), limits()).unwrap();
        let ids: Vec<&str> = unfinished.iter().map(|r| r.snapshot.id.as_str()).collect();
        assert_eq!(ids, ["job-once"], "one crash gets another try");
        assert_eq!(unfinished[0].starts, 1);
        let failed = jobs.get("job-looping").unwrap().snapshot();
        assert_eq!(failed.state, JobState::Failed);
        assert!(
            failed.error.as_deref().unwrap().contains("not run again"),
            "{failed:?}"
        );
        // And so it stays, its request gone, at the next start.
        drop(jobs);
        let (jobs, unfinished) = Jobs::open(dir.path(), limits()).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(
            jobs.get("job-looping").unwrap().snapshot().state,
            JobState::Failed
        );
        let stored: JobRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join("job-looping.json")).unwrap())
                .unwrap();
        assert!(stored.request.is_empty());
    }

    /// A clean shutdown does not count against a job's starts, once, however
    /// the job stopped (at its cancellation check, or still running).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_shutdown_does_not_count_a_start() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("job-crashed-once.json");
        write_json_atomically(&path, &record("job-crashed-once", 1)).unwrap();
        let (jobs, unfinished) = Jobs::open(dir.path(), limits()).unwrap();
        let jobs = Arc::new(jobs);
        // Runs again (its second start), then the server shuts down.
        jobs.resume(&unfinished[0], false, |ctx| {
            while !ctx.cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(ServiceError::Cancelled)
        });
        let running = Instant::now();
        while jobs.get("job-crashed-once").unwrap().snapshot().state != JobState::Running {
            assert!(running.elapsed() < Duration::from_secs(20), "never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        jobs.shutdown(Duration::from_secs(10)).await;
        let stored: JobRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(stored.snapshot.state, JobState::Queued);
        assert_eq!(
            stored.starts, 1,
            "the earlier crash still counts, this stop not"
        );
    }
}
