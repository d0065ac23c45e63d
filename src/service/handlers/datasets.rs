use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use super::{check_declared, next_message, page_request, paginate, require_declared, UploadPace};
use crate::service::convert::{job, text_format};
use crate::service::engine::distributed::f32_values;
use crate::service::engine::{Engine, Origin};
use crate::service::error::ServiceError;
use crate::service::gate::note;
use crate::service::proto as pb;
use crate::service::proto::upload_request::Message;

/// The block's values, from whichever of its two fields is set.
/// A block's values and the field they came in (what errors about them name).
fn row_values(block: pb::RowBlock) -> Result<(&'static str, Vec<f32>), ServiceError> {
    match (block.values.is_empty(), block.values_f32le.is_empty()) {
        (_, true) => Ok(("rows.values", block.values)),
        (true, false) => {
            let field = "rows.values_f32le";
            Ok((field, f32_values(field, &block.values_f32le)?))
        }
        (false, false) => Err(ServiceError::invalid(
            "rows",
            "set values or values_f32le, not both",
        )),
    }
}

pub struct DatasetsService {
    pub engine: Arc<Engine>,
}

#[tonic::async_trait]
impl pb::datasets_server::Datasets for DatasetsService {
    /// Streams rows straight to a temporary file; the dataset appears only
    /// once the stream ends cleanly (any error, an idle stream or a client
    /// that goes away leaves nothing behind).
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let _slot = self.engine.upload_slot()?;
        let idle = self.engine.config.limits.idle_timeout;
        let audit = request
            .extensions()
            .get::<crate::service::gate::AuditIds>()
            .cloned();
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream, idle).await? {
            Some(pb::UploadRequest {
                message: Some(Message::Header(h)),
            }) => h,
            Some(_) => {
                return Err(ServiceError::invalid(
                    "header",
                    "the first message must be a header (name, columns)",
                )
                .into())
            }
            None => return Err(ServiceError::invalid("header", "empty stream: no header").into()),
        };
        if header.columns.is_empty() {
            return Err(
                ServiceError::invalid("header.columns", "at least one column is needed").into(),
            );
        }
        self.engine.check_name("header.name", &header.name)?;
        self.engine.check_names("header.columns", &header.columns)?;
        require_declared("header.n_rows", "rows", header.n_rows)?;
        let store = self.engine.store.clone();
        let mut writer = tokio::task::block_in_place(|| {
            store.begin_dataset(&header.name, header.columns.clone())
        })?;
        let width = writer.width();
        let mut row = 0u64;
        let pace = UploadPace::new(idle);
        while let Some(msg) = next_message(&mut stream, idle).await? {
            pace.check(writer.size_bytes())?;
            let (field, block) = match msg.message {
                Some(Message::Rows(b)) => row_values(b)?,
                _ => {
                    return Err(ServiceError::invalid(
                        "rows",
                        "only row blocks may follow the header",
                    )
                    .into())
                }
            };
            if !block.len().is_multiple_of(width) {
                return Err(ServiceError::invalid(
                    field,
                    format!("a block of {} values is not whole rows of {width} columns (after row {row})", block.len()),
                )
                .into());
            }
            if let Some(i) = block.iter().position(|v| !v.is_finite()) {
                let (r, c) = (row + (i / width) as u64 + 1, i % width);
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "non-finite value at row {r}, column {:?}",
                        header.columns[c]
                    ),
                )
                .into());
            }
            self.engine
                .check_dataset_size(writer.size_bytes() + 4 * block.len() as u64)?;
            tokio::task::block_in_place(|| writer.append(&block))?;
            row += (block.len() / width) as u64;
        }
        check_declared("header.n_rows", "rows", header.n_rows, row)?;
        if row == 0 {
            return Err(ServiceError::invalid("rows", "the upload has no rows").into());
        }
        let meta = tokio::task::block_in_place(|| writer.finish())?;
        if let Some(a) = audit {
            a.push(&meta.id);
        }
        tracing::info!(id = %meta.id, rows = meta.n_rows, "dataset uploaded");
        Ok(Response::new((&meta).into()))
    }

    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref().clone();
        if r.path.is_empty() {
            return Err(ServiceError::invalid("path", "a file path is needed").into());
        }
        let bytes = r.encode_to_vec();
        let format = text_format(r.text_format, "text_format")?.unwrap_or_default();
        let snapshot =
            self.engine
                .import(r.path, r.columns, r.name, format, Origin::New(&bytes))?;
        note(&request, &[&snapshot.id]);
        Ok(Response::new(job(&snapshot, &self.engine)))
    }

    async fn get(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        note(&request, &[&request.get_ref().id]);
        let meta = self.engine.dataset(&request.get_ref().id)?;
        Ok(Response::new((&meta).into()))
    }

    async fn list(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let r = request.into_inner();
        let page = page_request(r.page_size, r.page_token, &["ds"])?;
        let store = self.engine.store.clone();
        let all = tokio::task::block_in_place(|| store.list_datasets())?;
        let (datasets, next_page_token) = paginate(
            all.iter().map(|d| (d.id.clone(), pb::Dataset::from(d))),
            &page,
            self.engine.config.limits.max_message_bytes / 2,
        );
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets,
            next_page_token,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteDatasetRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        note(&request, &[&request.get_ref().id]);
        let r = request.get_ref();
        let engine = self.engine.clone();
        let deleted_ids = tokio::task::block_in_place(|| engine.delete_dataset(&r.id, r.cascade))?;
        let ids: Vec<&str> = deleted_ids.iter().map(String::as_str).collect();
        note(&request, &ids);
        Ok(Response::new(pb::DeleteResponse {
            deleted: true,
            deleted_ids,
        }))
    }
}
