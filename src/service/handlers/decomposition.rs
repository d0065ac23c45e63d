use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pca::PcaParams;
use crate::service::convert::backend_choice;
use crate::service::engine::{Engine, PcaJob};
use crate::service::error::ServiceError;
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
        let job = PcaJob::try_from(request.into_inner())?;
        let snapshot = self.engine.fit_pca(job).await?;
        Ok(Response::new((&snapshot).into()))
    }

    async fn transform(
        &self,
        request: Request<pb::TransformRequest>,
    ) -> Result<Response<pb::TransformResponse>, Status> {
        let r = request.into_inner();
        let (c, y) = self.engine.transform(&r.model_id, r.rows).await?;
        Ok(Response::new(pb::TransformResponse {
            n_components: c as u32,
            values: y.iter().copied().collect(),
        }))
    }
}
