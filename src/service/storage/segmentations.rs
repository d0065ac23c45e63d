//! Uploaded transaction logs and the outputs of segment jobs.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_id, new_id, now_ms, remove_dir, sync_dir, write_json_atomically, Store, TMP};
use crate::data::TableFormat;
use crate::segmentation::{SegmentModel, SegmentsDocument};
use crate::service::error::{ServiceError, ServiceResult};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionsMeta {
    pub id: String,
    pub name: String,
    pub format: TableFormat,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

/// A stored segment job's outputs: where they came from and which files
/// may be downloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationMeta {
    pub id: String,
    /// The transactions id, or the server path the log was read from.
    pub source: String,
    pub created_at_ms: i64,
    pub artifacts: Vec<String>,
}

/// A transaction log being uploaded; dropped without `finish`, it leaves
/// nothing behind.
pub struct TransactionsWriter {
    meta: TransactionsMeta,
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
}

impl TransactionsWriter {
    pub fn size_bytes(&self) -> u64 {
        self.meta.size_bytes
    }

    pub fn append(&mut self, bytes: &[u8]) -> ServiceResult<()> {
        let file = self.file.as_mut().expect("open until finish");
        file.write_all(bytes).map_err(ServiceError::io)?;
        self.meta.size_bytes += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(mut self) -> ServiceResult<TransactionsMeta> {
        let file = self.file.take().expect("finish once");
        let file = file
            .into_inner()
            .map_err(|e| ServiceError::io(e.into_error()))?;
        file.sync_all().map_err(ServiceError::io)?;
        write_json_atomically(&self.tmp.join("meta.json"), &self.meta).map_err(ServiceError::io)?;
        fs::rename(&self.tmp, self.dest.join(&self.meta.id)).map_err(ServiceError::io)?;
        sync_dir(&self.dest).map_err(ServiceError::io)?;
        Ok(self.meta.clone())
    }
}

impl Drop for TransactionsWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn log_name(format: TableFormat) -> String {
    format!("log.{}", format.extension())
}

impl Store {
    pub fn begin_transactions(
        &self,
        name: &str,
        format: TableFormat,
    ) -> ServiceResult<TransactionsWriter> {
        let id = new_id("tx");
        let tmp = self.transactions.join(format!("{TMP}{id}"));
        fs::create_dir_all(&tmp).map_err(ServiceError::io)?;
        let file = File::create(tmp.join(log_name(format))).map_err(ServiceError::io)?;
        Ok(TransactionsWriter {
            meta: TransactionsMeta {
                id,
                name: name.to_owned(),
                format,
                size_bytes: 0,
                created_at_ms: now_ms(),
            },
            tmp,
            dest: self.transactions.clone(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn transactions(&self, id: &str) -> ServiceResult<TransactionsMeta> {
        let not_found = || ServiceError::NotFound {
            what: "transaction log",
            id: id.to_owned(),
        };
        check_id("transaction log", id)?;
        let text =
            fs::read(self.transactions.join(id).join("meta.json")).map_err(|_| not_found())?;
        serde_json::from_slice(&text)
            .map_err(|e| ServiceError::Internal(format!("transaction log {id}: {e}")))
    }

    /// The stored log's file, for the reader.
    pub fn transactions_path(&self, id: &str) -> ServiceResult<PathBuf> {
        let meta = self.transactions(id)?;
        Ok(self.transactions.join(id).join(log_name(meta.format)))
    }

    /// A fresh id and an empty staging directory for a segment job's outputs.
    pub fn stage_segmentation(&self) -> ServiceResult<(String, PathBuf)> {
        let id = new_id("seg");
        let dir = self.segmentations.join(format!("{TMP}{id}"));
        fs::create_dir_all(&dir).map_err(ServiceError::io)?;
        Ok((id, dir))
    }

    /// Makes staged outputs visible under their id, atomically.
    pub fn commit_segmentation(&self, staged: &Path, meta: &SegmentationMeta) -> ServiceResult<()> {
        write_json_atomically(&staged.join("meta.json"), meta).map_err(ServiceError::io)?;
        fs::rename(staged, self.segmentations.join(&meta.id)).map_err(ServiceError::io)?;
        sync_dir(&self.segmentations).map_err(ServiceError::io)
    }

    fn segmentation_dir(&self, id: &str) -> ServiceResult<PathBuf> {
        check_id("segmentation", id)?;
        let dir = self.segmentations.join(id);
        if dir.join("meta.json").is_file() {
            Ok(dir)
        } else {
            Err(ServiceError::NotFound {
                what: "segmentation",
                id: id.to_owned(),
            })
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, id: &str, file: &str) -> ServiceResult<T> {
        let text = fs::read(self.segmentation_dir(id)?.join(file)).map_err(ServiceError::io)?;
        serde_json::from_slice(&text)
            .map_err(|e| ServiceError::Internal(format!("segmentation {id}, {file}: {e}")))
    }

    pub fn segmentation(&self, id: &str) -> ServiceResult<(SegmentationMeta, SegmentsDocument)> {
        Ok((
            self.read_json(id, "meta.json")?,
            self.read_json(id, "segments.json")?,
        ))
    }

    pub fn segmentation_model(&self, id: &str) -> ServiceResult<SegmentModel> {
        self.read_json(id, "model.json")
    }

    /// The path of one of a segmentation's listed artifacts.
    pub fn artifact(&self, id: &str, name: &str) -> ServiceResult<PathBuf> {
        let meta: SegmentationMeta = self.read_json(id, "meta.json")?;
        if !meta.artifacts.iter().any(|a| a == name) {
            return Err(ServiceError::NotFound {
                what: "artifact",
                id: format!("{id}/{name} (available: {})", meta.artifacts.join(", ")),
            });
        }
        Ok(self.segmentation_dir(id)?.join(name))
    }

    pub fn delete_transactions(&self, id: &str) -> ServiceResult<()> {
        self.transactions(id)?;
        remove_dir(&self.transactions, &self.transactions.join(id), id)
    }

    /// Removes the outputs; the caller removes the registered model.
    pub fn delete_segmentation(&self, id: &str) -> ServiceResult<()> {
        remove_dir(&self.segmentations, &self.segmentation_dir(id)?, id)
    }
}
