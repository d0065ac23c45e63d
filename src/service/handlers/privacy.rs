use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::service::engine::Engine;
use crate::service::gate::note;
use crate::service::proto as pb;

pub struct PrivacyService {
    pub engine: Arc<Engine>,
}

#[tonic::async_trait]
impl pb::privacy_server::Privacy for PrivacyService {
    /// The customer id itself is never logged; the audit line names the
    /// objects rewritten.
    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let engine = self.engine.clone();
        let id = request.get_ref().customer_id.clone();
        let erased = tokio::task::block_in_place(|| engine.erase_customer(&id))?;
        let ids: Vec<&str> = erased.iter().map(|e| e.id.as_str()).collect();
        note(&request, &ids);
        tracing::info!(objects = erased.len(), "customer erased");
        Ok(Response::new(pb::EraseCustomerResponse {
            changed: erased
                .into_iter()
                .map(|e| pb::ErasedObject {
                    kind: e.kind.into(),
                    id: e.id,
                    rows_removed: e.rows_removed,
                })
                .collect(),
        }))
    }
}
