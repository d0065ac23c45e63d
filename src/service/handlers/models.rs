use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{page_request, paginate};
use crate::service::engine::Engine;
use crate::service::gate::note;
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
        note(&request, &[&request.get_ref().id]);
        let record = self.engine.model(&request.get_ref().id)?;
        Ok(Response::new(record.as_ref().into()))
    }

    async fn list(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let r = request.into_inner();
        let page = page_request(r.page_size, r.page_token)?;
        let store = self.engine.store.clone();
        let all = tokio::task::block_in_place(|| store.list_models())?;
        let (models, next_page_token) = paginate(
            all.iter().map(|m| (m.id.clone(), pb::Model::from(m))),
            &page,
            self.engine.config.limits.max_message_bytes / 2,
        );
        Ok(Response::new(pb::ListModelsResponse {
            models,
            next_page_token,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let id = request.get_ref().id.clone();
        note(&request, &[&id]);
        self.engine.delete_model(&id)?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: true,
            deleted_ids: vec![id],
        }))
    }
}
