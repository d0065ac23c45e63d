//! The service's state and domain operations. Handlers validate and convert;
//! the engine checks every request's cost against the limits, does the work
//! (with the library) and owns storage and jobs.

mod clv;
pub mod cost;
pub mod distributed;
pub mod partitions;
mod privacy;
mod segment;

pub use clv::ClvJob;
pub use privacy::{Erased, Erasure};
pub use segment::{LogSource, SegmentJob};

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ndarray::Array2;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use super::config::ServerConfig;
use super::error::{ServiceError, ServiceResult};
use super::jobs::{JobContext, JobKind, JobLimits, JobOutput, JobRecord, JobSnapshot, Jobs};
use super::paths::{content_error, ImportRoots};
use super::storage::{
    new_id, now_ms, DatasetMeta, ModelBody, ModelRecord, OpenError, SegmentNames, Store,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{AdapterPolicy, GpuBackend};
use crate::backend::{
    may_fall_back, with_cpu_fallback, Backend, BackendChoice, BackendKind, Cancel,
};
use crate::data::{
    first_repeated, read_table_limited, resolve_columns, DataError, ReadLimits, TextFormat,
};
use crate::kmeans::{evaluate_with, Evaluation, FitControl, Init, KMeansParams, Prediction};
use crate::pca::PcaParams;

/// The compute backends this server can use.
pub struct Backends {
    pub cpu: CpuBackend,
    /// Any GPU adapter (software ones included), if one could be had.
    pub gpu: Option<GpuBackend>,
    pub default: BackendChoice,
}

impl Backends {
    fn init(default: BackendChoice) -> Self {
        let gpu = match GpuBackend::new(AdapterPolicy::Any) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::info!("no GPU adapter ({e}); fits run on the CPU");
                None
            }
        };
        Self {
            cpu: CpuBackend::new(),
            gpu,
            default,
        }
    }

    /// The backend for a request's choice (`None`: the server default).
    pub fn resolve(
        &self,
        choice: Option<BackendChoice>,
    ) -> ServiceResult<(&dyn Backend, BackendChoice)> {
        let choice = choice.unwrap_or(self.default);
        match choice {
            BackendChoice::Cpu => Ok((&self.cpu, choice)),
            BackendChoice::Gpu => match &self.gpu {
                Some(g) => Ok((g, choice)),
                None => Err(ServiceError::Unavailable(
                    "backend gpu requested but this server has no GPU adapter".into(),
                )),
            },
            BackendChoice::Auto => match &self.gpu {
                Some(g) if g.is_hardware() => Ok((g, choice)),
                _ => Ok((&self.cpu, choice)),
            },
        }
    }

    /// The backend a job runs on: on the CPU, one whose kernels stop
    /// between blocks of rows once the job is cancelled.
    fn for_job<'a>(
        &'a self,
        choice: BackendChoice,
        cpu: &'a CpuBackend,
    ) -> ServiceResult<&'a dyn Backend> {
        let (b, _) = self.resolve(Some(choice))?;
        Ok(if b.info().backend == BackendKind::Cpu {
            cpu
        } else {
            b
        })
    }
}

/// What a k-means fit request asks for, checked and typed.
pub struct KMeansJob {
    pub dataset_id: String,
    pub columns: Vec<String>,
    pub weights_column: Option<String>,
    pub params: KMeansParams,
    pub backend: Option<BackendChoice>,
    /// Whether the request set max_iter: the default (300) yields to the
    /// server's max_iterations instead of being refused by it.
    pub max_iter_given: bool,
}

pub struct PcaJob {
    pub dataset_id: String,
    pub columns: Vec<String>,
    pub params: PcaParams,
    pub backend: Option<BackendChoice>,
}

/// Where a job comes from: a new request (its protobuf bytes, stored for a
/// restart) or the record of a job from before a restart.
#[derive(Clone, Copy)]
pub enum Origin<'a> {
    New(&'a [u8]),
    Resumed(&'a JobRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the data directory: {0}")]
    Store(#[from] OpenError),
    /// An import root that cannot be opened (the message names it).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Models kept in memory for Assign; past this the cache starts over.
const MODEL_CACHE_ENTRIES: usize = 64;

/// Sets a flag when dropped: a call whose client went away (or whose
/// deadline passed) stops the compute it started.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct Engine {
    pub config: ServerConfig,
    pub store: Store,
    pub jobs: Arc<Jobs>,
    pub roots: ImportRoots,
    uploads: Arc<Semaphore>,
    /// Slots for scoring (Assign, Transform), whether the rows come in a
    /// unary call or a stream message: streams do not hold the gate's slots.
    scoring: Arc<Semaphore>,
    backends: OnceCell<Arc<Backends>>,
    models: Mutex<HashMap<String, Arc<ModelRecord>>>,
    /// Rows of distributed fits' partitions, in memory.
    pub partitions: partitions::PartitionCache,
    /// Slots for distributed steps (PartialStep and the k-means|| calls),
    /// as many as jobs may compute at once; calls wait for one.
    distributed: Arc<Semaphore>,
    /// Distributed steps running or waiting for a slot.
    distributed_waiting: std::sync::atomic::AtomicUsize,
    /// Held while a job stores its result, while something is deleted and
    /// while a customer is erased; counts the erasures. A job that read its
    /// input before an erasure, or whose input was deleted meanwhile,
    /// stores nothing.
    commits: Mutex<u64>,
}

/// What a job's result was made from, checked when it is stored.
pub enum Source<'a> {
    Dataset(&'a str),
    Log(&'a str),
    /// A server-side file or nothing stored: nothing to check.
    None,
}

/// Refuses a scoring reply that overflowed float32 (finite rows near 1e38):
/// an infinity is no answer. `field` is the request's rows.
fn refuse_overflow(out: &Array2<f32>, field: &str) -> ServiceResult<()> {
    match out
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        Some(i) => Err(ServiceError::invalid(
            field,
            format!(
                "row {} overflows float32 once projected (values near 1e38); scale the rows \
                 as the model's were",
                i + 1
            ),
        )),
        None => Ok(()),
    }
}

impl Engine {
    /// Opens the data directory (locking it) and the job records. Returns
    /// the records of jobs that had not finished, to run again.
    pub fn open(config: ServerConfig) -> Result<(Arc<Self>, Vec<JobRecord>), EngineError> {
        let l = &config.limits;
        let store = Store::open_with_quota(&config.data_dir, l.max_data_dir_bytes)?;
        let (jobs, unfinished) = Jobs::open(
            &config.data_dir.join("jobs"),
            JobLimits {
                max_concurrent: l.max_concurrent_jobs,
                max_queued: l.max_queued_jobs,
                retention: l.job_retention,
                max_retained: l.max_retained_jobs,
            },
        )?;
        let roots = ImportRoots::new(&config.import_roots)?;
        let partitions =
            partitions::PartitionCache::new(l.max_partition_cache_bytes, l.partition_ttl);
        let distributed = Arc::new(Semaphore::new(l.max_concurrent_jobs.max(1)));
        let engine = Self {
            uploads: Arc::new(Semaphore::new(l.max_concurrent_uploads.max(1))),
            scoring: Arc::new(Semaphore::new(l.max_concurrent_requests.max(1))),
            config,
            store,
            jobs: Arc::new(jobs),
            roots,
            backends: OnceCell::new(),
            models: Mutex::new(HashMap::new()),
            partitions,
            distributed,
            distributed_waiting: std::sync::atomic::AtomicUsize::new(0),
            commits: Mutex::new(0),
        };
        Ok((Arc::new(engine), unfinished))
    }

    /// The backends, initialised on first use (GPU start-up can take seconds).
    pub async fn backends(&self) -> Arc<Backends> {
        let default = self.config.backend;
        self.backends
            .get_or_init(|| async move {
                Arc::new(
                    tokio::task::spawn_blocking(move || Backends::init(default))
                        .await
                        .expect("backend init"),
                )
            })
            .await
            .clone()
    }

    /// The backends if they are initialised already (metrics never wait).
    pub fn backends_if_ready(&self) -> Option<Arc<Backends>> {
        self.backends.get().cloned()
    }

    /// A slot for one upload stream, or RESOURCE_EXHAUSTED at once.
    pub fn upload_slot(&self) -> ServiceResult<OwnedSemaphorePermit> {
        self.uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::ResourceExhausted {
                limit: "max_concurrent_uploads",
                message: format!(
                    "{} uploads are in progress; retry when one finishes",
                    self.config.limits.max_concurrent_uploads
                ),
            })
    }

    /// A scoring slot, or RESOURCE_EXHAUSTED at once (load shedding).
    fn scoring_slot(&self) -> ServiceResult<OwnedSemaphorePermit> {
        self.scoring
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::ResourceExhausted {
                limit: "max_concurrent_requests",
                message: format!(
                    "server busy: {} scoring calls in progress; retry with backoff",
                    self.config.limits.max_concurrent_requests
                ),
            })
    }

    /// `declared`: the caller's row width (`n_features`, or `n_components`
    /// for an inverse transform, in the request; 0 = not said), which
    /// catches rows of the wrong width whose values happen to fill whole
    /// rows of the model's.
    fn check_rows(
        &self,
        n_values: usize,
        width: usize,
        declared: (&'static str, u32),
    ) -> ServiceResult<usize> {
        let (field, declared) = declared;
        if declared != 0 && declared as usize != width {
            let noun = field.trim_start_matches("n_");
            return Err(ServiceError::invalid(
                field,
                format!("the rows have {declared} {noun}; the model has {width}"),
            ));
        }
        if width == 0 || !n_values.is_multiple_of(width) {
            return Err(ServiceError::invalid(
                "rows",
                format!("{n_values} values do not fill rows of width {width}"),
            ));
        }
        let rows = n_values / width;
        if rows == 0 {
            return Err(ServiceError::invalid("rows", "no rows given"));
        }
        if rows > self.config.limits.max_assign_rows {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_assign_rows",
                message: format!(
                    "{rows} rows in one request; the limit is {}",
                    self.config.limits.max_assign_rows
                ),
            });
        }
        Ok(rows)
    }

    /// `bytes`: the size so far of data that may still be arriving (an
    /// upload is stopped at the block that passes the limit), so the
    /// message says "at least".
    pub fn check_dataset_size(&self, bytes: u64) -> ServiceResult<()> {
        let limit = self.config.limits.max_dataset_bytes;
        if bytes > limit {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_dataset_bytes",
                message: format!("the data hold at least {bytes} bytes; the limit is {limit}"),
            });
        }
        Ok(())
    }

    pub fn model(&self, id: &str) -> ServiceResult<Arc<ModelRecord>> {
        if let Some(m) = self
            .models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(m.clone());
        }
        let record = Arc::new(self.store.model(id)?);
        let mut cache = self.models.lock().unwrap_or_else(|p| p.into_inner());
        // A bounded cache: models can be megabytes each.
        if cache.len() >= MODEL_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id.to_owned(), record.clone());
        Ok(record)
    }

    pub fn delete_model(&self, id: &str) -> ServiceResult<()> {
        self.store.delete_model(id)?;
        self.forget_model(id);
        Ok(())
    }

    fn forget_model(&self, id: &str) {
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn commits(&self) -> std::sync::MutexGuard<'_, u64> {
        self.commits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The erasure count, read when a job starts.
    pub fn erasures(&self) -> u64 {
        *self.commits()
    }

    /// Stores a job's result with `store`, unless a customer was erased
    /// since the job started (`erasures`) or its source is gone.
    pub fn commit<T>(
        &self,
        erasures: u64,
        source: Source,
        store: impl FnOnce() -> ServiceResult<T>,
    ) -> ServiceResult<T> {
        let guard = self.commits();
        if *guard != erasures {
            return Err(ServiceError::FailedPrecondition(
                "a customer was erased while this job ran; nothing was stored: run it again".into(),
            ));
        }
        let gone = match source {
            Source::Dataset(id) => self.store.dataset(id).err().map(|e| ("dataset", id, e)),
            Source::Log(id) => self
                .store
                .transactions(id)
                .err()
                .map(|e| ("transaction log", id, e)),
            Source::None => None,
        };
        match gone {
            // Damaged on disk, not deleted: said as such (DATA_LOSS).
            Some((_, _, e @ ServiceError::DataLoss(_))) => Err(e),
            Some((what, id, _)) => Err(ServiceError::FailedPrecondition(format!(
                "{what} {id} was deleted while this job ran; nothing was stored"
            ))),
            None => store(),
        }
    }

    /// Erases under the commit lock, so no job stores a result read before.
    /// The count moves whatever the outcome: a partial erasure changed
    /// files too, and a running job must not store what it read before.
    pub fn erase_customer(&self, customer_id: &str) -> ServiceResult<Erasure> {
        let mut guard = self.commits();
        let erased = self.erase_customer_unlocked(customer_id);
        *guard += 1;
        erased
    }

    /// Deletes a dataset; with `cascade`, the models fitted on it too,
    /// otherwise their existence is FAILED_PRECONDITION. Returns what went.
    pub fn delete_dataset(&self, id: &str, cascade: bool) -> ServiceResult<Vec<String>> {
        let _guard = self.commits();
        // Only that it exists: a dataset with damaged metadata must still
        // go (its DATA_LOSS error says to delete it).
        self.store.dataset_exists(id)?;
        let models = self.store.models_from(id)?;
        self.cascade_or_refuse("dataset", id, &models, cascade)?;
        self.store.delete_dataset(id)?;
        for m in &models {
            self.delete_model(m)?;
        }
        Ok(std::iter::once(id.to_owned()).chain(models).collect())
    }

    /// Deletes an uploaded log; with `cascade`, the segmentations made from
    /// it (outputs and models) too.
    pub fn delete_transactions(&self, id: &str, cascade: bool) -> ServiceResult<Vec<String>> {
        let _guard = self.commits();
        self.store.transactions_exist(id)?;
        let derived: Vec<String> = self
            .store
            .list_segmentations()?
            .into_iter()
            .filter(|s| s.source == id)
            .map(|s| s.id)
            .collect();
        self.cascade_or_refuse("transaction log", id, &derived, cascade)?;
        self.store.delete_transactions(id)?;
        for s in &derived {
            self.delete_segmentation(s)?;
        }
        Ok(std::iter::once(id.to_owned()).chain(derived).collect())
    }

    /// A segmentation's outputs and its registered model.
    pub fn delete_segmentation(&self, id: &str) -> ServiceResult<()> {
        self.store.delete_segmentation(id)?;
        // Its model may already have been deleted through Models.
        match self.delete_model(id) {
            Ok(()) | Err(ServiceError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn cascade_or_refuse(
        &self,
        what: &str,
        id: &str,
        dependents: &[String],
        cascade: bool,
    ) -> ServiceResult<()> {
        if dependents.is_empty() || cascade {
            return Ok(());
        }
        let shown: Vec<&str> = dependents.iter().take(20).map(String::as_str).collect();
        Err(ServiceError::FailedPrecondition(format!(
            "{what} {id} has {} derived object(s) ({}{}); delete them first, or delete with cascade (`--cascade` in the CLI)",
            dependents.len(),
            shown.join(", "),
            if dependents.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )))
    }

    /// Starts (or, after a restart, resumes) a job.
    fn spawn<F>(
        self: &Arc<Self>,
        kind: JobKind,
        uses_gpu: bool,
        origin: Origin,
        work: F,
    ) -> ServiceResult<JobSnapshot>
    where
        F: FnOnce(&JobContext) -> ServiceResult<JobOutput> + Send + 'static,
    {
        match origin {
            Origin::New(request) => self.jobs.submit(kind, uses_gpu, request, work),
            Origin::Resumed(record) => Ok(self.jobs.resume(record, uses_gpu, work)),
        }
    }

    /// Reads a file under an import root into a new dataset, as a job. The
    /// path is checked before the job is queued; sizes are checked while
    /// reading, so a huge file is refused without being parsed whole.
    pub fn import(
        self: &Arc<Self>,
        path: String,
        columns: Vec<String>,
        name: String,
        format: TextFormat,
        origin: Origin,
    ) -> ServiceResult<JobSnapshot> {
        let allowed = self.roots.allow("path", &path)?;
        let resolved = allowed.path.clone();
        self.check_names("columns", &columns)?;
        let name = if name.is_empty() {
            resolved
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        } else {
            name
        };
        self.check_name("name", &name)?;
        let engine = self.clone();
        let l = self.config.limits;
        let limits = ReadLimits {
            max_values: (l.max_dataset_bytes / 4).min(usize::MAX as u64) as usize,
            max_columns: l.max_features,
        };
        self.spawn(JobKind::Import, false, origin, move |ctx| {
            engine.roots.recheck("path", &allowed)?;
            ctx.phase("reading");
            let data =
                read_table_limited(&resolved, &columns, &format, limits).map_err(content_error)?;
            engine.check_names("columns", &data.columns)?;
            ctx.phase("storing");
            Ok(JobOutput::Dataset(
                engine.store.put_dataset(&name, &data)?.id,
            ))
        })
    }

    /// Checks the request and its cost before queueing, then starts the fit.
    pub async fn fit_kmeans(
        self: &Arc<Self>,
        mut job: KMeansJob,
        origin: Origin<'_>,
    ) -> ServiceResult<JobSnapshot> {
        job.params.check().map_err(crate::Error::from)?;
        let cap = self.config.limits.max_iterations / job.params.n_init_value().max(1);
        if !job.max_iter_given && job.params.max_iter_value() > cap {
            job.params = job.params.clone().max_iter(cap.max(1));
        }
        self.check_names("columns", &job.columns)?;
        let meta = self.store.dataset(&job.dataset_id)?;
        self.check_stored_names("dataset", &meta.id, &meta.columns)?;
        let mut features = if job.columns.is_empty() {
            meta.columns.clone()
        } else {
            job.columns.clone()
        };
        if let Some(w) = &job.weights_column {
            resolve_columns(&meta.columns, std::slice::from_ref(w)).map_err(|e| {
                match ServiceError::from(crate::Error::from(e)) {
                    ServiceError::InvalidArgument { message, .. } => {
                        ServiceError::invalid("weights_column", message)
                    }
                    other => other,
                }
            })?;
            features.retain(|c| c != w);
        }
        if features.is_empty() {
            return Err(ServiceError::invalid(
                "columns",
                "no feature columns left besides the weights column",
            ));
        }
        resolve_columns(&meta.columns, &features).map_err(crate::Error::from)?;
        if let Init::Given(c) = job.params.init_value() {
            if c.ncols() != features.len() {
                return Err(ServiceError::invalid(
                    "initial_centroids",
                    format!(
                        "{} centroids of {} values; the fit has {} feature columns",
                        c.nrows(),
                        c.ncols(),
                        features.len()
                    ),
                ));
            }
        }
        // The server's limits first: a k past max_k is refused as such
        // whatever the dataset.
        cost::kmeans(
            &self.config.limits,
            &job.params,
            meta.n_rows,
            features.len(),
        )?;
        if job.params.k() as u64 > meta.n_rows {
            return Err(ServiceError::invalid(
                "k",
                format!(
                    "k = {} is larger than the number of rows ({})",
                    job.params.k(),
                    meta.n_rows
                ),
            ));
        }
        let backends = self.backends().await;
        let (backend, choice) = backends.resolve(job.backend)?;
        let uses_gpu = backend.info().backend == BackendKind::Gpu;
        let engine = self.clone();
        self.spawn(JobKind::FitKMeans, uses_gpu, origin, move |ctx| {
            let cpu = CpuBackend::new().cancel_on(ctx.cancel.clone());
            let backend = backends.for_job(choice, &cpu)?;
            engine.run_kmeans(ctx, backend, choice, &job, features)
        })
    }

    fn run_kmeans(
        &self,
        ctx: &JobContext,
        backend: &dyn Backend,
        choice: BackendChoice,
        job: &KMeansJob,
        features: Vec<String>,
    ) -> ServiceResult<JobOutput> {
        ctx.phase("loading");
        let erasures = self.erasures();
        let (_, data) = self.store.load_dataset(&job.dataset_id)?;
        let weights = match &job.weights_column {
            Some(w) => Some(
                data.select_columns(std::slice::from_ref(w))
                    .map_err(crate::Error::from)?
                    .0
                    .column(0)
                    .to_owned(),
            ),
            None => None,
        };
        // The features in the loaded buffer itself: the data is held once.
        let (x, columns) = data.into_columns(&features).map_err(crate::Error::from)?;
        let sink = ctx.clone();
        let control = FitControl::default()
            .cancel_flag(ctx.cancel.clone())
            .on_progress(move |p| {
                sink.progress(super::jobs::JobProgress {
                    phase: "lloyd".into(),
                    run: p.run as u32,
                    iteration: p.iteration as u32,
                    inertia: p.inertia,
                    fraction: (p.run * p.max_iter + p.iteration) as f64
                        / (p.n_init * p.max_iter) as f64,
                    elapsed_seconds: 0.0,
                })
            });
        ctx.phase("fitting");
        let weights = weights.as_ref().map(|w| w.view());
        let model = if !may_fall_back(choice, backend) {
            // Run once, so the fit may scale the rows in their own buffer:
            // held once, not twice.
            job.params.fit_owned_with(backend, x, weights, &control)?
        } else {
            with_cpu_fallback(choice, backend, |b| {
                job.params.fit_with(b, x.view(), weights, &control)
            })?
        };
        self.commit(erasures, Source::Dataset(&job.dataset_id), || {
            self.save_model(&job.dataset_id, columns, ModelBody::KMeans(model))
        })
    }

    fn save_model(
        &self,
        dataset_id: &str,
        columns: Vec<String>,
        body: ModelBody,
    ) -> ServiceResult<JobOutput> {
        let prefix = match body {
            ModelBody::KMeans(_) => "km",
            ModelBody::Pca(_) => "pca",
        };
        // Values near f32's limit overflow once squared: such a fit "ends"
        // with infinite inertia, and a record holding it could not be read
        // back (JSON has no infinity).
        let finite = match &body {
            ModelBody::KMeans(m) => {
                m.inertia().is_finite()
                    && m.inertia_history().iter().all(|v| v.is_finite())
                    && m.centroids().iter().all(|v| v.is_finite())
            }
            ModelBody::Pca(m) => {
                m.components().iter().all(|v| v.is_finite())
                    && m.explained_variance().iter().all(|v| v.is_finite())
            }
        };
        if !finite {
            return Err(ServiceError::invalid(
                "data",
                "the fit overflowed (an inertia or centroid is not a finite number): values or \
                 initial centroids near 1e38 overflow when squared; scale them. Nothing was stored",
            ));
        }
        let record = ModelRecord {
            id: new_id(prefix),
            dataset_id: dataset_id.to_owned(),
            columns,
            created_at_ms: now_ms(),
            body,
            segments: None,
        };
        self.store.put_model(&record)?;
        Ok(JobOutput::Model(record.id))
    }

    pub async fn fit_pca(
        self: &Arc<Self>,
        job: PcaJob,
        origin: Origin<'_>,
    ) -> ServiceResult<JobSnapshot> {
        self.check_names("columns", &job.columns)?;
        let meta = self.store.dataset(&job.dataset_id)?;
        self.check_stored_names("dataset", &meta.id, &meta.columns)?;
        let features = if job.columns.is_empty() {
            meta.columns.clone()
        } else {
            job.columns.clone()
        };
        resolve_columns(&meta.columns, &features).map_err(crate::Error::from)?;
        let c = job.params.n_components;
        if c == 0 || c > features.len() {
            return Err(ServiceError::invalid(
                "n_components",
                format!(
                    "n_components = {c} must be between 1 and the number of features ({})",
                    features.len()
                ),
            ));
        }
        cost::pca(&self.config.limits, meta.n_rows, features.len(), c)?;
        let backends = self.backends().await;
        let (backend, choice) = backends.resolve(job.backend)?;
        let uses_gpu = backend.info().backend == BackendKind::Gpu;
        let engine = self.clone();
        self.spawn(JobKind::FitPca, uses_gpu, origin, move |ctx| {
            let cpu = CpuBackend::new().cancel_on(ctx.cancel.clone());
            let backend = backends.for_job(choice, &cpu)?;
            ctx.phase("loading");
            let erasures = engine.erasures();
            let (_, data) = engine.store.load_dataset(&job.dataset_id)?;
            let (x, columns) = data.into_columns(&features).map_err(crate::Error::from)?;
            ctx.phase("fitting");
            let model = with_cpu_fallback(choice, backend, |b| job.params.fit(b, x.view()))?;
            if ctx.cancelled() {
                return Err(ServiceError::Cancelled);
            }
            engine.commit(erasures, Source::Dataset(&job.dataset_id), || {
                engine.save_model(&job.dataset_id, columns, ModelBody::Pca(model))
            })
        })
    }

    /// Scores raw rows with a k-means model, on the CPU (small batches: the
    /// GPU's round trip would cost more than the work). Runs on the
    /// default rayon pool, at normal priority, apart from the jobs' pool.
    pub async fn assign(
        &self,
        model_id: &str,
        rows: Vec<f32>,
        n_features: u32,
    ) -> ServiceResult<(Prediction, Vec<u32>)> {
        let record = self.model(model_id)?;
        let ModelBody::KMeans(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a k-means model"
            )));
        };
        let n = self.check_rows(rows.len(), model.n_features(), ("n_features", n_features))?;
        cost::assign(n, model.k(), model.n_features())?;
        // A label, a distance, a margin and a segment id per row.
        cost::reply_fits_message(&self.config.limits, n, 4 * 5)?;
        let _slot = self.scoring_slot()?;
        let record = record.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        tokio::task::spawn_blocking(move || {
            let ModelBody::KMeans(model) = &record.body else {
                unreachable!("checked above")
            };
            let x = Array2::from_shape_vec((n, model.n_features()), rows).expect("checked shape");
            // Checked here too, so a NaN is named by the model's column.
            crate::data::check_finite(x.view(), &record.columns).map_err(crate::Error::from)?;
            let prediction = model.predict(&CpuBackend::new().cancel_on(cancel), x.view())?;
            if let Some(i) = prediction.distances.iter().position(|d| !d.is_finite()) {
                return Err(ServiceError::invalid(
                    "rows",
                    format!(
                        "row {} is too far from every centroid for float32: its squared distance \
                         overflows (values near 1e19 or above); scale the rows as the model's were",
                        i + 1
                    ),
                ));
            }
            let ids = record
                .segments
                .as_ref()
                .map_or_else(Vec::new, |s| s.ids.clone());
            Ok((prediction, ids))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    pub async fn transform(
        &self,
        model_id: &str,
        rows: Vec<f32>,
        n_features: u32,
    ) -> ServiceResult<(usize, Array2<f32>)> {
        let record = self.model(model_id)?;
        let ModelBody::Pca(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a PCA model"
            )));
        };
        let n = self.check_rows(rows.len(), model.n_features(), ("n_features", n_features))?;
        cost::reply_fits_message(&self.config.limits, n, 4 * model.n_components())?;
        let _slot = self.scoring_slot()?;
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let ModelBody::Pca(model) = &record.body else {
                unreachable!("checked above")
            };
            let x = Array2::from_shape_vec((n, model.n_features()), rows).expect("checked shape");
            crate::data::check_finite(x.view(), &record.columns).map_err(crate::Error::from)?;
            let y = model.transform(&CpuBackend::new(), x.view())?;
            refuse_overflow(&y, "rows")?;
            Ok((model.n_components(), y))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    /// A stored model as a model file.
    pub fn export_model(&self, record: &ModelRecord) -> Vec<u8> {
        let columns = record.columns.clone();
        match (&record.body, &record.segments) {
            // Its segment ids and descriptions go with it, its customers not.
            (ModelBody::KMeans(model), Some(names)) => {
                serde_json::to_vec(&names.model_file(&columns, model)).expect("serialisable")
            }
            (ModelBody::KMeans(model), None) => crate::model_file::TableModel::Kmeans {
                columns,
                model: model.clone(),
            }
            .to_bytes(),
            (ModelBody::Pca(model), _) => crate::model_file::TableModel::Pca {
                columns,
                model: model.clone(),
            }
            .to_bytes(),
        }
    }

    /// Checks a model file against the limits and stores it as a new model.
    pub fn import_model(&self, content: &[u8]) -> ServiceResult<ModelRecord> {
        use crate::model_file::{ModelFile, TableModel};
        let file = ModelFile::parse(content, "the model file").map_err(|e| {
            // Clipped (it may quote the file), but the place of the fault
            // kept: "… at line 3 column 14".
            let text = e.to_string();
            let shown = match text.rfind(" at line ") {
                Some(at) if text.len() - at <= 40 => {
                    format!("{}{}", crate::service::auth::clip(&text[..at]), &text[at..])
                }
                _ => crate::service::auth::clip(&text),
            };
            ServiceError::invalid("content", shown)
        })?;
        let (columns, body, segments) = match file {
            ModelFile::Table(TableModel::Kmeans { columns, model }) => {
                (columns, ModelBody::KMeans(model), None)
            }
            ModelFile::Table(TableModel::Pca { columns, model }) => {
                (columns, ModelBody::Pca(model), None)
            }
            // Customer ids and labels stay behind: a model needs none. Its
            // segment ids stay with it, so Assign answers in them.
            ModelFile::Segments(s) => {
                let names = SegmentNames::of(&s);
                (s.features, ModelBody::KMeans(s.kmeans), Some(names))
            }
        };
        let limits = &self.config.limits;
        if columns.len() > limits.max_features {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_features",
                message: format!(
                    "{} features; the limit is {}",
                    columns.len(),
                    limits.max_features
                ),
            });
        }
        if let ModelBody::KMeans(m) = &body {
            if m.k() > limits.max_k {
                return Err(ServiceError::ResourceExhausted {
                    limit: "max_k",
                    message: format!("k = {}; the limit is {}", m.k(), limits.max_k),
                });
            }
        }
        self.check_names("columns", &columns)?;
        let prefix = match body {
            ModelBody::KMeans(_) => "km",
            ModelBody::Pca(_) => "pca",
        };
        let record = ModelRecord {
            id: new_id(prefix),
            dataset_id: "imported".into(),
            columns,
            created_at_ms: now_ms(),
            body,
            segments,
        };
        self.store.put_model(&record)?;
        Ok(record)
    }

    /// A k-means model from centroids a distributed fit's driver reduced.
    pub fn create_kmeans(
        &self,
        r: crate::service::proto::CreateKMeansRequest,
    ) -> ServiceResult<ModelRecord> {
        let limits = &self.config.limits;
        let k = r.k as usize;
        if k == 0 {
            return Err(ServiceError::invalid("k", "must be at least 1"));
        }
        // A limit is RESOURCE_EXHAUSTED wherever it is met, as in FitKMeans.
        if k > limits.max_k {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_k",
                message: format!("k = {k}; the limit is {}", limits.max_k),
            });
        }
        if r.centroids.is_empty() || !r.centroids.len().is_multiple_of(k) {
            return Err(ServiceError::invalid(
                "centroids",
                format!("{} values are not k = {k} whole rows", r.centroids.len()),
            ));
        }
        let d = r.centroids.len() / k;
        if d > limits.max_features {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_features",
                message: format!("{d} features; the limit is {}", limits.max_features),
            });
        }
        cost::model_fits_message(limits, k.saturating_mul(d))?;
        distributed::check_rows("centroids", &r.centroids, d)?;
        // Stored as JSON, where a non-finite number would not read back.
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        if !finite(r.inertia) || !r.inertia_history.iter().all(|&v| finite(v)) {
            return Err(ServiceError::invalid(
                "inertia",
                "inertia and inertia_history must be finite and non-negative",
            ));
        }
        if r.inertia_history.len() > limits.max_iterations {
            return Err(ServiceError::invalid(
                "inertia_history",
                format!("at most {} values (max_iterations)", limits.max_iterations),
            ));
        }
        let columns = if r.columns.is_empty() {
            (0..d).map(|j| format!("x{j}")).collect()
        } else {
            r.columns
        };
        if columns.len() != d {
            return Err(ServiceError::invalid(
                "columns",
                format!("{} names for {d} centroid columns", columns.len()),
            ));
        }
        self.check_names("columns", &columns)?;
        if !r.cluster_sizes.is_empty() && r.cluster_sizes.len() != k {
            return Err(ServiceError::invalid(
                "cluster_sizes",
                format!("{} sizes for k = {k}", r.cluster_sizes.len()),
            ));
        }
        let summary = crate::kmeans::FitSummary {
            inertia: r.inertia,
            n_iter: r.n_iter as usize,
            converged: r.converged,
            inertia_history: r.inertia_history,
            cluster_sizes: r.cluster_sizes.iter().map(|&s| s as usize).collect(),
        };
        let backend = crate::backend::BackendInfo {
            backend: BackendKind::Cpu,
            adapter: "distributed".into(),
        };
        let centroids = Array2::from_shape_vec((k, d), r.centroids).expect("whole rows");
        let record = ModelRecord {
            id: new_id("km"),
            dataset_id: "distributed".into(),
            columns,
            created_at_ms: now_ms(),
            body: ModelBody::KMeans(crate::kmeans::KMeansModel::from_centroids(
                centroids, summary, backend,
            )),
            segments: None,
        };
        self.store.put_model(&record)?;
        Ok(record)
    }

    /// Maps component values back to the model's columns.
    pub async fn inverse_transform(
        &self,
        model_id: &str,
        values: Vec<f32>,
        n_components: u32,
    ) -> ServiceResult<Array2<f32>> {
        let record = self.model(model_id)?;
        let ModelBody::Pca(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a PCA model"
            )));
        };
        let n = self.check_rows(
            values.len(),
            model.n_components(),
            ("n_components", n_components),
        )?;
        // The reply (n × columns) is wider than the request.
        cost::reply_fits_message(&self.config.limits, n, 4 * model.n_features())?;
        let _slot = self.scoring_slot()?;
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let ModelBody::Pca(model) = &record.body else {
                unreachable!("checked above")
            };
            let y =
                Array2::from_shape_vec((n, model.n_components()), values).expect("checked shape");
            let components: Vec<String> = (1..=model.n_components())
                .map(|c| format!("component {c}"))
                .collect();
            crate::data::check_finite(y.view(), &components).map_err(crate::Error::from)?;
            let x = model.inverse_transform(y.view())?;
            refuse_overflow(&x, "values")?;
            Ok(x)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    /// Scores a model on a dataset. Waits for a compute slot in the jobs'
    /// queue and runs on their pool; a client that goes away or whose
    /// deadline passes stops it (the dropped call sets its cancel flag).
    pub async fn evaluate(
        self: &Arc<Self>,
        model_id: &str,
        dataset_id: &str,
        sample: usize,
        seed: u64,
    ) -> ServiceResult<Evaluation> {
        let record = self.model(model_id)?;
        let ModelBody::KMeans(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a k-means model"
            )));
        };
        let meta = self.store.dataset(dataset_id)?;
        self.check_stored_names("model", &record.id, &record.columns)?;
        self.check_stored_names("dataset", &meta.id, &meta.columns)?;
        resolve_columns(&meta.columns, &record.columns).map_err(crate::Error::from)?;
        cost::evaluate(
            &self.config.limits,
            meta.n_rows,
            model.k(),
            model.n_features(),
            sample,
        )?;
        let permit = self.jobs.admit().await?;
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        let engine = self.clone();
        let dataset_id = dataset_id.to_owned();
        let pool = self.jobs.pool();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.install(|| {
                let ModelBody::KMeans(model) = &record.body else {
                    unreachable!("checked above")
                };
                let (_, data) = engine.store.load_dataset(&dataset_id)?;
                let (x, _) = data
                    .into_columns(&record.columns)
                    .map_err(crate::Error::from)?;
                let cpu = CpuBackend::new().cancel_on(cancel.clone());
                let (prediction, scaled) = model.predict_owned(&cpu, x)?;
                let labels = prediction.labels;
                let e = evaluate_with(
                    scaled.view(),
                    &labels,
                    model.k(),
                    sample,
                    seed,
                    &Cancel::new(cancel),
                )
                .map_err(crate::Error::from)?;
                Ok(e)
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    pub fn dataset(&self, id: &str) -> ServiceResult<DatasetMeta> {
        self.store.dataset(id)
    }

    /// A name is at most `max_name_bytes` (datasets, logs, columns).
    pub fn check_name(&self, field: &str, name: &str) -> ServiceResult<()> {
        let max = self.config.limits.max_name_bytes;
        if name.len() > max {
            return Err(ServiceError::invalid(
                field,
                format!("a name of {} bytes; the limit is {max}", name.len()),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                field,
                "names may not contain control characters",
            ));
        }
        Ok(())
    }

    /// Column lists: each name checked, and at most `max_features` of them.
    pub fn check_names(&self, field: &str, names: &[String]) -> ServiceResult<()> {
        let max = self.config.limits.max_features;
        if names.len() > max {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_features",
                message: format!("{} columns; the limit is {max}", names.len()),
            });
        }
        names.iter().try_for_each(|n| self.check_name(field, n))?;
        if names.iter().any(String::is_empty) {
            return Err(ServiceError::invalid(field, "a column name is empty"));
        }
        // Files' headers and the CLI's lists are trimmed: a padded name
        // could never be asked for again.
        if names.iter().any(|n| n.trim() != n) {
            return Err(ServiceError::invalid(
                field,
                "a column name starts or ends with white space",
            ));
        }
        match first_repeated(names) {
            Some(name) => Err(ServiceError::invalid(
                field,
                DataError::RepeatedColumn {
                    name: crate::service::auth::clip(name),
                }
                .to_string(),
            )),
            None => Ok(()),
        }
    }

    /// A dataset or model stored by an earlier version may name a column
    /// twice; it cannot be read by name. Says so, instead of blaming the
    /// request.
    fn check_stored_names(&self, what: &str, id: &str, names: &[String]) -> ServiceResult<()> {
        match first_repeated(names) {
            Some(name) => Err(ServiceError::FailedPrecondition(format!(
                "{what} {id} names column {:?} more than once (stored by an earlier \
                 version); store it again with distinct column names",
                crate::service::auth::clip(name)
            ))),
            None => Ok(()),
        }
    }
}

/// `Init` from the request's choice and optional centroids (`k × d`).
pub fn kmeans_init(kind: i32, centroids: Vec<f32>, k: usize) -> ServiceResult<Init> {
    use super::proto::InitMethod as P;
    match P::try_from(kind)
        .map_err(|_| ServiceError::invalid("init", format!("unknown init {kind}")))?
    {
        other if other != P::Given && !centroids.is_empty() => Err(ServiceError::invalid(
            "initial_centroids",
            format!(
                "{} values given with init {}: set init to INIT_METHOD_GIVEN to start from \
                 them, or send none",
                centroids.len(),
                other.as_str_name()
            ),
        )),
        P::Unspecified | P::KmeansPlusPlus => Ok(Init::KMeansPlusPlus),
        P::KmeansParallel => Ok(Init::KMeansParallel),
        P::Random => Ok(Init::Random),
        P::Given => {
            if k == 0 || centroids.is_empty() || !centroids.len().is_multiple_of(k) {
                return Err(ServiceError::invalid(
                    "initial_centroids",
                    format!("{} values do not make {k} centroids", centroids.len()),
                ));
            }
            let d = centroids.len() / k;
            if let Some(i) = centroids.iter().position(|v| !v.is_finite()) {
                return Err(ServiceError::invalid(
                    "initial_centroids",
                    format!(
                        "non-finite value ({}) at row {}, column {}",
                        centroids[i],
                        i / d + 1,
                        i % d + 1
                    ),
                ));
            }
            Ok(Init::Given(
                Array2::from_shape_vec((k, d), centroids).expect("checked"),
            ))
        }
    }
}
