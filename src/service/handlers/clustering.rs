use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::ClusterSums;
use crate::kmeans::{InitSample, KMeansParams, Prediction};
use crate::service::convert::{backend_choice, job};
use crate::service::engine::distributed::{check_rows, check_weights, f32_values};
use crate::service::engine::partitions::{PartitionRows, Reservation};
use crate::service::engine::{kmeans_init, Engine, KMeansJob, Origin};
use crate::service::error::ServiceError;
use crate::service::gate::{caller, note};
use crate::service::proto as pb;

use super::{check_declared, next_message, require_declared, UploadPace};

pub struct ClusteringService {
    pub engine: Arc<Engine>,
}

/// `segment_ids`: a segment model's id per centroid row (empty otherwise).
fn response((p, segment_ids): (Prediction, Vec<u32>)) -> pb::AssignResponse {
    pb::AssignResponse {
        segments: if segment_ids.is_empty() {
            Vec::new()
        } else {
            p.labels.iter().map(|&l| segment_ids[l as usize]).collect()
        },
        labels: p.labels,
        distances: p.distances,
        margins: p.margins.unwrap_or_default(),
    }
}

/// Whose partitions a call may use: the key's name (`anonymous` without keys).
fn owner<T>(request: &Request<T>) -> String {
    caller(request).map_or_else(|| "anonymous".to_owned(), |c| c.name.clone())
}

fn sums_message(s: ClusterSums, n_rows: u64) -> pb::ClusterSums {
    let (k, d) = s.dim();
    pb::ClusterSums {
        k: k as u32,
        n_features: d as u32,
        sums: s.sums.iter().copied().collect(),
        weights: s.weights,
        inertia: s.inertia,
        n_rows,
    }
}

/// Reads a PutPartition stream to its end: the header, then whole rows,
/// each block checked, the cache's room checked as bytes arrive.
async fn read_partition<'e>(
    engine: &'e Engine,
    stream: &mut Streaming<pb::PutPartitionRequest>,
) -> Result<(pb::PartitionHeader, PartitionRows, Reservation<'e>), Status> {
    use pb::put_partition_request::Message;
    let idle = engine.config.limits.idle_timeout;
    let header = match next_message(stream, idle).await? {
        Some(pb::PutPartitionRequest {
            message: Some(Message::Header(h)),
        }) => h,
        Some(_) => {
            return Err(ServiceError::invalid(
                "header",
                "the first message must be a header (key, n_features)",
            )
            .into())
        }
        None => return Err(ServiceError::invalid("header", "empty stream: no header").into()),
    };
    engine.check_partition_header(&header)?;
    require_declared("header.n_rows", "rows", header.n_rows)?;
    let mut reservation = engine.partitions.reserve();
    let d = header.n_features as usize;
    let (mut values, mut weights) = (Vec::<f32>::new(), Vec::<f32>::new());
    let pace = UploadPace::new(idle);
    while let Some(msg) = next_message(stream, idle).await? {
        pace.check(4 * (values.len() + weights.len()) as u64)?;
        let Some(Message::Rows(block)) = msg.message else {
            return Err(ServiceError::invalid("rows", "only rows may follow the header").into());
        };
        let v = f32_values("rows.values_f32le", &block.values_f32le)?;
        if v.is_empty() {
            // Each message resets the idle timer: an empty one must not.
            return Err(
                ServiceError::invalid("rows.values_f32le", "an empty block of rows").into(),
            );
        }
        if !v.len().is_multiple_of(d) {
            return Err(ServiceError::invalid(
                "rows.values_f32le",
                format!(
                    "a block of {} values is not whole rows of {d} (after row {})",
                    v.len(),
                    values.len() / d
                ),
            )
            .into());
        }
        check_rows("rows.values_f32le", &v, d)?;
        let w = f32_values("rows.weights_f32le", &block.weights_f32le)?;
        if header.has_weights == w.is_empty() || (header.has_weights && w.len() * d != v.len()) {
            return Err(ServiceError::invalid(
                "rows.weights_f32le",
                if header.has_weights {
                    format!("{} weights for {} rows", w.len(), v.len() / d)
                } else {
                    "weights sent, but the header says has_weights = false".into()
                },
            )
            .into());
        }
        check_weights("rows.weights_f32le", &w)?;
        let incoming = 4 * (values.len() + v.len() + weights.len() + w.len()) as u64;
        engine.check_dataset_size(incoming)?;
        reservation.grow(4 * (v.len() + w.len()) as u64)?;
        values.extend_from_slice(&v);
        weights.extend_from_slice(&w);
    }
    let n = values.len() / d;
    if n == 0 {
        return Err(ServiceError::invalid(
            "rows",
            "the partition has no rows (skip empty partitions: they add nothing)",
        )
        .into());
    }
    // The cache charges exactly the rows: no spare capacity stays behind.
    values.shrink_to_fit();
    weights.shrink_to_fit();
    let rows = PartitionRows {
        x: ndarray::Array2::from_shape_vec((n, d), values).expect("whole rows"),
        weights: header.has_weights.then(|| ndarray::Array1::from(weights)),
    };
    Ok((header, rows, reservation))
}

impl TryFrom<pb::FitKMeansRequest> for KMeansJob {
    type Error = ServiceError;

    fn try_from(r: pb::FitKMeansRequest) -> Result<Self, ServiceError> {
        if r.dataset_id.is_empty() {
            return Err(ServiceError::invalid(
                "dataset_id",
                "a dataset id is needed",
            ));
        }
        let k = r.k as usize;
        let params = KMeansParams::new(k)
            .init(kmeans_init(r.init, r.initial_centroids, k)?)
            .init_sample(match r.init_sample_rows {
                None => InitSample::Auto,
                Some(0) => InitSample::All,
                Some(rows) => InitSample::Rows(usize::try_from(rows).unwrap_or(usize::MAX)),
            })
            .n_init(if r.n_init == 0 { 1 } else { r.n_init as usize })
            .max_iter(if r.max_iter == 0 {
                300
            } else {
                r.max_iter as usize
            })
            .tol(r.tol.unwrap_or(1e-4))
            .seed(r.seed)
            .standardize(r.standardize);
        Ok(KMeansJob {
            dataset_id: r.dataset_id,
            columns: r.columns,
            weights_column: (!r.weights_column.is_empty()).then_some(r.weights_column),
            params,
            backend: backend_choice(r.backend)?,
            max_iter_given: r.max_iter != 0,
        })
    }
}

type AssignStream = Pin<Box<dyn Stream<Item = Result<pb::AssignResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::clustering_server::Clustering for ClusteringService {
    async fn fit_k_means(
        &self,
        request: Request<pb::FitKMeansRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref().clone();
        note(&request, &[&r.dataset_id]);
        let bytes = r.encode_to_vec();
        let fit = KMeansJob::try_from(r)?;
        let snapshot = self.engine.fit_kmeans(fit, Origin::New(&bytes)).await?;
        note(&request, &[&snapshot.id]);
        Ok(Response::new(job(&snapshot, &self.engine)))
    }

    async fn assign(
        &self,
        request: Request<pb::AssignRequest>,
    ) -> Result<Response<pb::AssignResponse>, Status> {
        note(&request, &[&request.get_ref().model_id]);
        let r = request.into_inner();
        let p = self
            .engine
            .assign(&r.model_id, r.rows, r.n_features)
            .await?;
        Ok(Response::new(response(p)))
    }

    type AssignStreamStream = AssignStream;

    /// One response per request, in order. A bad request ends the stream
    /// with its error; earlier responses stand.
    async fn assign_stream(
        &self,
        request: Request<Streaming<pb::AssignRequest>>,
    ) -> Result<Response<AssignStream>, Status> {
        let engine = self.engine.clone();
        let audit = request
            .extensions()
            .get::<crate::service::gate::AuditIds>()
            .cloned();
        let requests = request.into_inner();
        let responses = requests.then(move |r| {
            let (engine, audit) = (engine.clone(), audit.clone());
            async move {
                let r = r?;
                if let Some(a) = &audit {
                    a.push(&r.model_id);
                }
                Ok(response(
                    engine.assign(&r.model_id, r.rows, r.n_features).await?,
                ))
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn put_partition(
        &self,
        request: Request<Streaming<pb::PutPartitionRequest>>,
    ) -> Result<Response<pb::Partition>, Status> {
        let _slot = self.engine.upload_slot()?;
        let who = owner(&request);
        let mut stream = request.into_inner();
        // Nothing is cached until the stream has ended cleanly: a broken
        // retry leaves the earlier upload in place.
        let (header, rows, reservation) = read_partition(&self.engine, &mut stream).await?;
        let key = header.key.clone().expect("checked");
        let (n_rows, n_features) = (rows.x.nrows() as u64, header.n_features);
        check_declared("header.n_rows", "rows", header.n_rows, n_rows)?;
        let ttl = (header.ttl_seconds > 0)
            .then(|| std::time::Duration::from_secs(header.ttl_seconds as u64));
        let stored = self
            .engine
            .put_partition(&who, &key, rows, ttl, reservation)?;
        Ok(Response::new(pb::Partition {
            key: Some(key),
            n_rows,
            n_features,
            replaced: stored.replaced,
            ttl_seconds: stored.ttl.as_secs_f64(),
        }))
    }

    async fn release_partitions(
        &self,
        request: Request<pb::ReleasePartitionsRequest>,
    ) -> Result<Response<pb::ReleasePartitionsResponse>, Status> {
        let who = owner(&request);
        let released = self
            .engine
            .release_partitions(&who, &request.get_ref().fit_id)?;
        Ok(Response::new(pb::ReleasePartitionsResponse {
            released: released as u32,
        }))
    }

    async fn partial_step(
        &self,
        request: Request<pb::PartialStepRequest>,
    ) -> Result<Response<pb::ClusterSums>, Status> {
        let who = owner(&request);
        let (sums, n_rows) = self.engine.partial_step(&who, request.into_inner()).await?;
        Ok(Response::new(sums_message(sums, n_rows)))
    }

    async fn partition_cost(
        &self,
        request: Request<pb::PartitionCostRequest>,
    ) -> Result<Response<pb::PartitionCostResponse>, Status> {
        let who = owner(&request);
        let (cost, n_rows, total_weight) = self
            .engine
            .partition_cost(&who, request.into_inner())
            .await?;
        Ok(Response::new(pb::PartitionCostResponse {
            cost,
            n_rows,
            total_weight,
        }))
    }

    async fn sample_by_cost(
        &self,
        request: Request<pb::SampleByCostRequest>,
    ) -> Result<Response<pb::SampleByCostResponse>, Status> {
        let who = owner(&request);
        let sample = self
            .engine
            .sample_by_cost(&who, request.into_inner())
            .await?;
        Ok(Response::new(pb::SampleByCostResponse {
            values_f32le: sample.iter().flat_map(|v| v.to_le_bytes()).collect(),
            n_features: sample.ncols() as u32,
            n_rows: sample.nrows() as u64,
        }))
    }

    async fn candidate_weights(
        &self,
        request: Request<pb::CandidateWeightsRequest>,
    ) -> Result<Response<pb::CandidateWeightsResponse>, Status> {
        let who = owner(&request);
        let weights = self
            .engine
            .candidate_weights(&who, request.into_inner())
            .await?;
        Ok(Response::new(pb::CandidateWeightsResponse { weights }))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        note(
            &request,
            &[&request.get_ref().model_id, &request.get_ref().dataset_id],
        );
        let r = request.into_inner();
        let sample = if r.silhouette_sample_size == 0 {
            // The default yields to the server's limit.
            10_000.min(self.engine.config.limits.max_silhouette_sample)
        } else {
            r.silhouette_sample_size as usize
        };
        let e = self
            .engine
            .evaluate(&r.model_id, &r.dataset_id, sample, r.seed)
            .await?;
        Ok(Response::new((&e).into()))
    }
}
