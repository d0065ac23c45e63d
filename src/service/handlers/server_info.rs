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
                max_data_dir_bytes: l.max_data_dir_bytes.unwrap_or(0),
                max_features: l.max_features as u32,
                max_k: l.max_k as u32,
                max_iterations: l.max_iterations as u32,
                max_fit_work: l.max_fit_work,
                max_silhouette_sample: l.max_silhouette_sample as u32,
                max_queued_jobs: l.max_queued_jobs as u32,
                max_concurrent_requests: l.max_concurrent_requests as u32,
                max_concurrent_uploads: l.max_concurrent_uploads as u32,
                max_streams_per_connection: l.max_streams_per_connection,
                max_name_bytes: l.max_name_bytes as u32,
                request_timeout_seconds: l.request_timeout.as_secs_f64(),
                idle_timeout_seconds: l.idle_timeout.as_secs_f64(),
                job_retention_seconds: l.job_retention.as_secs_f64(),
                max_retained_jobs: l.max_retained_jobs as u32,
                max_partition_cache_bytes: l.max_partition_cache_bytes,
                partition_ttl_seconds: l.partition_ttl.as_secs_f64(),
                max_connections: l.max_connections as u32,
                max_connections_per_peer: l.max_connections_per_peer as u32,
                handshake_timeout_seconds: l.handshake_timeout.as_secs_f64(),
            }),
            auth_required: self.engine.config.auth_keys.is_some(),
            tls: self.engine.config.tls.is_some(),
            client_certificates: self
                .engine
                .config
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca.is_some()),
            server_paths: self.engine.roots.is_enabled(),
        }))
    }
}
