//! The service's state and domain operations. Handlers validate and convert;
//! the engine does the work (with the library) and owns storage and jobs.

mod segment;

pub use segment::{LogSource, SegmentJob};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::Array2;
use tokio::sync::OnceCell;

use super::config::ServerConfig;
use super::error::{ServiceError, ServiceResult};
use super::jobs::{JobContext, JobKind, JobOutput, JobProgress, JobSnapshot, Jobs};
use super::storage::{new_id, now_ms, DatasetMeta, ModelBody, ModelRecord, Store};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{AdapterPolicy, GpuBackend};
use crate::backend::{with_cpu_fallback, Backend, BackendChoice};
use crate::data::{read_table, resolve_columns};
use crate::kmeans::{evaluate, Evaluation, FitControl, Init, KMeansParams, Prediction};
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
}

/// What a k-means fit request asks for, checked and typed.
pub struct KMeansJob {
    pub dataset_id: String,
    pub columns: Vec<String>,
    pub weights_column: Option<String>,
    pub params: KMeansParams,
    pub backend: Option<BackendChoice>,
}

pub struct PcaJob {
    pub dataset_id: String,
    pub columns: Vec<String>,
    pub params: PcaParams,
    pub backend: Option<BackendChoice>,
}

pub struct Engine {
    pub config: ServerConfig,
    pub store: Store,
    pub jobs: Jobs,
    backends: OnceCell<Arc<Backends>>,
    models: Mutex<HashMap<String, Arc<ModelRecord>>>,
}

impl Engine {
    pub fn new(config: ServerConfig) -> std::io::Result<Self> {
        let store = Store::open(&config.data_dir)?;
        let jobs = Jobs::new(config.limits.max_concurrent_jobs);
        Ok(Self {
            config,
            store,
            jobs,
            backends: OnceCell::new(),
            models: Mutex::new(HashMap::new()),
        })
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

    fn check_rows(&self, n_values: usize, width: usize) -> ServiceResult<usize> {
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

    pub fn check_dataset_size(&self, bytes: u64) -> ServiceResult<()> {
        let limit = self.config.limits.max_dataset_bytes;
        if bytes > limit {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_dataset_bytes",
                message: format!("the dataset would hold {bytes} bytes; the limit is {limit}"),
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
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), record.clone());
        Ok(record)
    }

    pub fn delete_model(&self, id: &str) -> ServiceResult<()> {
        self.store.delete_model(id)?;
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    pub fn import(
        self: &Arc<Self>,
        path: String,
        columns: Vec<String>,
        name: String,
    ) -> JobSnapshot {
        let engine = self.clone();
        self.jobs.submit(JobKind::Import, false, move |ctx| {
            ctx.phase("reading");
            let data =
                read_table(std::path::Path::new(&path), &columns).map_err(crate::Error::from)?;
            engine.check_dataset_size((data.values.len() * 4) as u64)?;
            ctx.phase("storing");
            let name = if name.is_empty() {
                std::path::Path::new(&path)
                    .file_name()
                    .map_or(path.clone(), |n| n.to_string_lossy().into_owned())
            } else {
                name
            };
            Ok(JobOutput::Dataset(engine.store.put_dataset(&name, &data)?))
        })
    }

    /// Checks what can be checked before queueing, then starts the fit.
    pub async fn fit_kmeans(self: &Arc<Self>, job: KMeansJob) -> ServiceResult<JobSnapshot> {
        job.params.check().map_err(crate::Error::from)?;
        let meta = self.store.dataset(&job.dataset_id)?;
        let mut features = if job.columns.is_empty() {
            meta.columns.clone()
        } else {
            job.columns.clone()
        };
        if let Some(w) = &job.weights_column {
            resolve_columns(&meta.columns, std::slice::from_ref(w)).map_err(crate::Error::from)?;
            features.retain(|c| c != w);
        }
        if features.is_empty() {
            return Err(ServiceError::invalid(
                "columns",
                "no feature columns left besides the weights column",
            ));
        }
        resolve_columns(&meta.columns, &features).map_err(crate::Error::from)?;
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
        let uses_gpu = backend.info().backend == crate::backend::BackendKind::Gpu;
        let engine = self.clone();
        let backends2 = backends.clone();
        Ok(self.jobs.submit(JobKind::FitKMeans, uses_gpu, move |ctx| {
            let (backend, _) = backends2.resolve(Some(choice))?;
            engine.run_kmeans(ctx, backend, choice, &job, features)
        }))
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
        let (_, data) = self.store.load_dataset(&job.dataset_id)?;
        let (x, columns) = data.select_columns(&features).map_err(crate::Error::from)?;
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
        let sink = ctx.clone();
        let control = FitControl::default()
            .cancel_flag(ctx.cancel.clone())
            .on_progress(move |p| {
                sink.progress(JobProgress {
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
        let model = with_cpu_fallback(choice, backend, |b| {
            job.params
                .fit_with(b, x.view(), weights.as_ref().map(|w| w.view()), &control)
        })?;
        self.save_model(&job.dataset_id, columns, ModelBody::KMeans(model))
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
        let record = ModelRecord {
            id: new_id(prefix),
            dataset_id: dataset_id.to_owned(),
            columns,
            created_at_ms: now_ms(),
            body,
        };
        self.store.put_model(&record)?;
        Ok(JobOutput::Model(Box::new(record)))
    }

    pub async fn fit_pca(self: &Arc<Self>, job: PcaJob) -> ServiceResult<JobSnapshot> {
        let meta = self.store.dataset(&job.dataset_id)?;
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
        let backends = self.backends().await;
        let (backend, choice) = backends.resolve(job.backend)?;
        let uses_gpu = backend.info().backend == crate::backend::BackendKind::Gpu;
        let engine = self.clone();
        Ok(self.jobs.submit(JobKind::FitPca, uses_gpu, move |ctx| {
            let (backend, _) = backends.resolve(Some(choice))?;
            ctx.phase("loading");
            let (_, data) = engine.store.load_dataset(&job.dataset_id)?;
            let (x, columns) = data.select_columns(&features).map_err(crate::Error::from)?;
            ctx.phase("fitting");
            let model = with_cpu_fallback(choice, backend, |b| job.params.fit(b, x.view()))?;
            engine.save_model(&job.dataset_id, columns, ModelBody::Pca(model))
        }))
    }

    /// Scores raw rows with a k-means model, on the CPU (small batches: the
    /// GPU's round trip would cost more than the work).
    pub async fn assign(&self, model_id: &str, rows: Vec<f32>) -> ServiceResult<Prediction> {
        let record = self.model(model_id)?;
        let ModelBody::KMeans(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a k-means model"
            )));
        };
        let n = self.check_rows(rows.len(), model.n_features())?;
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let ModelBody::KMeans(model) = &record.body else {
                unreachable!("checked above")
            };
            let x = Array2::from_shape_vec((n, model.n_features()), rows).expect("checked shape");
            Ok(model.predict(&CpuBackend::new(), x.view())?)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    pub async fn transform(
        &self,
        model_id: &str,
        rows: Vec<f32>,
    ) -> ServiceResult<(usize, Array2<f32>)> {
        let record = self.model(model_id)?;
        let ModelBody::Pca(model) = &record.body else {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a PCA model"
            )));
        };
        let n = self.check_rows(rows.len(), model.n_features())?;
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let ModelBody::Pca(model) = &record.body else {
                unreachable!("checked above")
            };
            let x = Array2::from_shape_vec((n, model.n_features()), rows).expect("checked shape");
            Ok((
                model.n_components(),
                model.transform(&CpuBackend::new(), x.view())?,
            ))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    pub async fn evaluate(
        self: &Arc<Self>,
        model_id: &str,
        dataset_id: &str,
        sample: usize,
        seed: u64,
    ) -> ServiceResult<Evaluation> {
        let record = self.model(model_id)?;
        if !matches!(record.body, ModelBody::KMeans(_)) {
            return Err(ServiceError::FailedPrecondition(format!(
                "model {model_id} is not a k-means model"
            )));
        }
        self.store.dataset(dataset_id)?;
        let engine = self.clone();
        let dataset_id = dataset_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let ModelBody::KMeans(model) = &record.body else {
                unreachable!("checked above")
            };
            let (_, data) = engine.store.load_dataset(&dataset_id)?;
            let (x, _) = data
                .select_columns(&record.columns)
                .map_err(crate::Error::from)?;
            let labels = model.predict(&CpuBackend::new(), x.view())?.labels;
            let scaled = model.scaler().transform(x.view());
            Ok(evaluate(scaled.view(), &labels, model.k(), sample, seed))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    pub fn dataset(&self, id: &str) -> ServiceResult<DatasetMeta> {
        self.store.dataset(id)
    }
}

/// `Init` from the request's choice and optional centroids (`k × d`).
pub fn kmeans_init(kind: i32, centroids: Vec<f32>, k: usize) -> ServiceResult<Init> {
    use super::proto::InitMethod as P;
    match P::try_from(kind)
        .map_err(|_| ServiceError::invalid("init", format!("unknown init {kind}")))?
    {
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
            Ok(Init::Given(
                Array2::from_shape_vec((k, d), centroids).expect("checked"),
            ))
        }
    }
}
