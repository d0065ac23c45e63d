use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::pca::PcaParams;
use crate::service::convert::{backend_choice, job};
use crate::service::engine::{Engine, Origin, PcaJob};
use crate::service::error::ServiceError;
use crate::service::gate::note;
use crate::service::proto as pb;

pub struct DecompositionService {
    pub engine: Arc<Engine>,
}

impl TryFrom<pb::FitPcaRequest> for PcaJob {
    type Error = ServiceError;

    fn try_from(r: pb::FitPcaRequest) -> Result<Self, ServiceError> {
        if r.dataset_id.is_empty() {
            return Err(ServiceError::invalid(
                "dataset_id",
                "a dataset id is needed",
            ));
        }
        Ok(PcaJob {
            dataset_id: r.dataset_id,
            columns: r.columns,
            params: PcaParams::new(r.n_components as usize).whiten(r.whiten),
            backend: backend_choice(r.backend)?,
        })
    }
}

#[tonic::async_trait]
impl pb::decomposition_server::Decomposition for DecompositionService {
    async fn fit_pca(
        &self,
        request: Request<pb::FitPcaRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref().clone();
        note(&request, &[&r.dataset_id]);
        let bytes = r.encode_to_vec();
        let fit = PcaJob::try_from(r)?;
        let snapshot = self.engine.fit_pca(fit, Origin::New(&bytes)).await?;
        note(&request, &[&snapshot.id]);
        Ok(Response::new(job(&snapshot, &self.engine)))
    }

    async fn transform(
        &self,
        request: Request<pb::TransformRequest>,
    ) -> Result<Response<pb::TransformResponse>, Status> {
        note(&request, &[&request.get_ref().model_id]);
        let r = request.into_inner();
        let (c, y) = self
            .engine
            .transform(&r.model_id, r.rows, r.n_features)
            .await?;
        Ok(Response::new(pb::TransformResponse {
            n_components: c as u32,
            values: y.iter().copied().collect(),
        }))
    }

    async fn inverse_transform(
        &self,
        request: Request<pb::InverseTransformRequest>,
    ) -> Result<Response<pb::InverseTransformResponse>, Status> {
        note(&request, &[&request.get_ref().model_id]);
        let r = request.into_inner();
        let x = self
            .engine
            .inverse_transform(&r.model_id, r.values, r.n_components)
            .await?;
        Ok(Response::new(pb::InverseTransformResponse {
            rows: x.iter().copied().collect(),
        }))
    }
}
