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
        let page = page_request(r.page_size, r.page_token, &["km", "pca", "seg"])?;
        let engine = self.engine.clone();
        let (models, next_page_token) = tokio::task::block_in_place(|| {
            let ids = engine.store.model_ids()?;
            // Models are read as the page fills, never all at once.
            let after = ids
                .into_iter()
                .filter(|id| page.after.as_ref().is_none_or(|a| id > a));
            let loaded = after.filter_map(|id| match engine.store.model(&id) {
                Ok(m) => Some((id, pb::Model::from(&m))),
                // Left out of the listing, as Datasets.List leaves out a
                // damaged dataset; the log names it, and Models.Get says
                // what is wrong with it.
                Err(e) => {
                    tracing::warn!(model = %id, error = %e, "a stored model cannot be read; left out of the list");
                    None
                }
            });
            Ok::<_, crate::service::error::ServiceError>(paginate(
                loaded,
                &page,
                engine.config.limits.max_message_bytes / 2,
            ))
        })?;
        Ok(Response::new(pb::ListModelsResponse {
            models,
            next_page_token,
        }))
    }

    async fn export(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelFile>, Status> {
        note(&request, &[&request.get_ref().id]);
        let record = self.engine.model(&request.get_ref().id)?;
        Ok(Response::new(pb::ModelFile {
            content: self.engine.export_model(&record),
        }))
    }

    async fn import(
        &self,
        request: Request<pb::ImportModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let engine = self.engine.clone();
        let content = request.get_ref().content.clone();
        let record = tokio::task::block_in_place(|| engine.import_model(&content))?;
        note(&request, &[&record.id]);
        Ok(Response::new((&record).into()))
    }

    async fn create_k_means(
        &self,
        request: Request<pb::CreateKMeansRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let engine = self.engine.clone();
        let r = request.get_ref().clone();
        let record = tokio::task::block_in_place(|| engine.create_kmeans(r))?;
        note(&request, &[&record.id]);
        Ok(Response::new((&record).into()))
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
