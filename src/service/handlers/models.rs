use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::service::engine::Engine;
use crate::service::proto as pb;

pub struct ModelsService {
    pub engine: Arc<Engine>,
}

#[tonic::async_trait]
impl pb::models_server::Models for ModelsService {
    async fn get(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let record = self.engine.model(&request.into_inner().id)?;
        Ok(Response::new(record.as_ref().into()))
    }

    async fn list(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .engine
            .store
            .list_models()?
            .iter()
            .map(Into::into)
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.engine.delete_model(&request.into_inner().id)?;
        Ok(Response::new(pb::DeleteResponse { deleted: true }))
    }
}
