use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::service::engine::Engine;
use crate::service::error::ServiceError;
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
        let erasure = tokio::task::block_in_place(|| engine.erase_customer(&id))?;
        let ids: Vec<&str> = erasure.changed.iter().map(|e| e.id.as_str()).collect();
        note(&request, &ids);
        if !erasure.unreadable.is_empty() {
            tracing::warn!(
                objects = erasure.changed.len(),
                unreadable = erasure.unreadable.len(),
                "customer erased but from files that cannot be read"
            );
            // Never an OK that could be taken for a complete erasure.
            return Err(ServiceError::FailedPrecondition(format!(
                "the customer was erased from {} object(s) but not from {}, which cannot be read \
                 (damaged): delete them (DeleteTransactions, DeleteSegmentation), then erase again",
                erasure.changed.len(),
                erasure.unreadable.join(", ")
            ))
            .into());
        }
        tracing::info!(objects = erasure.changed.len(), "customer erased");
        Ok(Response::new(pb::EraseCustomerResponse {
            changed: erasure
                .changed
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
