use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::service::engine::Engine;
use crate::service::proto as pb;

pub struct ServerService {
    pub engine: Arc<Engine>,
}

#[tonic::async_trait]
impl pb::server_server::Server for ServerService {
    async fn get_info(
        &self,
        _: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let backends = self.engine.backends().await;
        let mut names = vec!["cpu".to_string()];
        let mut adapters = Vec::new();
        if let Some(g) = &backends.gpu {
            names.push("gpu".into());
            adapters.push(g.adapter_name().to_owned());
        }
        let (default, _) = backends.resolve(None)?;
        let info = default.info();
        let l = &self.engine.config.limits;
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            backends: names,
            gpu_adapters: adapters,
            default_backend: info.backend.to_string(),
            default_adapter: info.adapter,
            limits: Some(pb::Limits {
                max_message_bytes: l.max_message_bytes as u64,
                max_dataset_bytes: l.max_dataset_bytes,
                max_concurrent_jobs: l.max_concurrent_jobs as u32,
                max_assign_rows: l.max_assign_rows as u64,
            }),
        }))
    }
}
