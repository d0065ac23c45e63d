use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::service::engine::Engine;
use crate::service::error::ServiceError;
use crate::service::proto as pb;
use crate::service::proto::upload_request::Message;

/// The block's values, from whichever of its two fields is set.
fn row_values(block: pb::RowBlock) -> Result<Vec<f32>, ServiceError> {
    match (block.values.is_empty(), block.values_f32le.is_empty()) {
        (_, true) => Ok(block.values),
        (true, false) => {
            let bytes = block.values_f32le;
            if !bytes.len().is_multiple_of(4) {
                return Err(ServiceError::invalid(
                    "rows.values_f32le",
                    format!("{} bytes are not whole 4-byte floats", bytes.len()),
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect())
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
    /// once the stream ends cleanly (any error leaves nothing behind).
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
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
        let store = self.engine.store.clone();
        let mut writer = tokio::task::block_in_place(|| {
            store.begin_dataset(&header.name, header.columns.clone())
        })?;
        let width = writer.width();
        let mut row = 0u64;
        while let Some(msg) = stream.message().await? {
            let block = match msg.message {
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
                    "rows.values",
                    format!("a block of {} values is not whole rows of {width} columns (after row {row})", block.len()),
                )
                .into());
            }
            if let Some(i) = block.iter().position(|v| !v.is_finite()) {
                let (r, c) = (row + (i / width) as u64 + 1, i % width);
                return Err(ServiceError::invalid(
                    "rows.values",
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
        if row == 0 {
            return Err(ServiceError::invalid("rows", "the upload has no rows").into());
        }
        let meta = tokio::task::block_in_place(|| writer.finish())?;
        tracing::info!(id = %meta.id, rows = meta.n_rows, "dataset uploaded");
        Ok(Response::new((&meta).into()))
    }

    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        if r.path.is_empty() {
            return Err(ServiceError::invalid("path", "a file path is needed").into());
        }
        let job = self.engine.import(r.path, r.columns, r.name);
        Ok(Response::new((&job).into()))
    }

    async fn get(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let meta = self.engine.dataset(&request.into_inner().id)?;
        Ok(Response::new((&meta).into()))
    }

    async fn list(
        &self,
        _: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let datasets = self
            .engine
            .store
            .list_datasets()?
            .iter()
            .map(Into::into)
            .collect();
        Ok(Response::new(pb::ListDatasetsResponse { datasets }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteDatasetRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let id = request.into_inner().id;
        let store = self.engine.store.clone();
        tokio::task::block_in_place(|| store.delete_dataset(&id))?;
        Ok(Response::new(pb::DeleteResponse { deleted: true }))
    }
}
