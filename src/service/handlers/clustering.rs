use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::kmeans::{KMeansParams, Prediction};
use crate::service::convert::{backend_choice, job};
use crate::service::engine::{kmeans_init, Engine, KMeansJob, Origin};
use crate::service::error::ServiceError;
use crate::service::gate::note;
use crate::service::proto as pb;

pub struct ClusteringService {
    pub engine: Arc<Engine>,
}

fn response(p: Prediction) -> pb::AssignResponse {
    pb::AssignResponse {
        labels: p.labels,
        distances: p.distances,
        margins: p.margins.unwrap_or_default(),
    }
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
            10_000
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
