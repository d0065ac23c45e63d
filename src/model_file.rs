//! Model files: what `kmeans --save-model`, `pca --save-model` and `segment`
//! (its `model.json`) write, and what `assign` and `score` read — so new
//! customers are scored without a server.
//!
//! A file is one JSON object with `"format": "segmenta-model"`, a `version`
//! and a `kind` (`kmeans`, `pca` or `segments`). Readers refuse a newer
//! version rather than misread it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::kmeans::KMeansModel;
use crate::pca::PcaModel;
use crate::segmentation::SegmentModel;

pub const FORMAT: &str = "segmenta-model";
/// The version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// A k-means or PCA model with the columns it was fitted on, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TableModel {
    Kmeans {
        columns: Vec<String>,
        model: KMeansModel,
    },
    Pca {
        columns: Vec<String>,
        model: PcaModel,
    },
}

/// Any model file.
#[derive(Debug, Clone)]
pub enum ModelFile {
    Table(TableModel),
    Segments(SegmentModel),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("cannot read the model file {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a Segmenta model file: {message}")]
    NotAModel { path: String, message: String },
    #[error("{path} is a version {version} model file; this build reads up to version {VERSION}: upgrade Segmenta")]
    TooNew { path: String, version: u64 },
    #[error("{path} holds a {found} model; this command needs a {wanted} model")]
    WrongKind {
        path: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

impl ModelFile {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Table(TableModel::Kmeans { .. }) => "k-means",
            Self::Table(TableModel::Pca { .. }) => "PCA",
            Self::Segments(_) => "segments",
        }
    }

    /// Reads and checks a model file (a `model.json` of an older build,
    /// without `format`, is read as segments).
    pub fn load(path: &Path) -> Result<Self, ModelFileError> {
        let p = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| ModelFileError::Read {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &p)
    }

    /// [`Self::load`] from bytes; `name` names them in errors.
    pub fn parse(text: &[u8], name: &str) -> Result<Self, ModelFileError> {
        let p = name.to_owned();
        let not = |message: String| ModelFileError::NotAModel {
            path: p.clone(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| not(e.to_string()))?;
        let format = value.get("format").and_then(|f| f.as_str());
        match format {
            Some(FORMAT) => {}
            Some(other) => return Err(not(format!("format {other:?}"))),
            None if value.get("customer_ids").is_some() => {}
            None => return Err(not("no \"format\": \"segmenta-model\"".into())),
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(1);
        if version > VERSION as u64 {
            return Err(ModelFileError::TooNew { path: p, version });
        }
        let model = match value.get("kind").and_then(|k| k.as_str()) {
            None | Some("segments") => {
                Self::Segments(SegmentModel::from_json(text, &p).map_err(|e| not(e.to_string()))?)
            }
            Some(_) => Self::Table(serde_json::from_value(value).map_err(|e| not(e.to_string()))?),
        };
        if let Self::Table(t) = &model {
            t.check().map_err(not)?;
        }
        Ok(model)
    }

    pub fn kmeans(self, path: &Path) -> Result<(Vec<String>, KMeansModel), ModelFileError> {
        match self {
            Self::Table(TableModel::Kmeans { columns, model }) => Ok((columns, model)),
            other => Err(other.wrong(path, "k-means")),
        }
    }

    pub fn pca(self, path: &Path) -> Result<(Vec<String>, PcaModel), ModelFileError> {
        match self {
            Self::Table(TableModel::Pca { columns, model }) => Ok((columns, model)),
            other => Err(other.wrong(path, "PCA")),
        }
    }

    fn wrong(&self, path: &Path, wanted: &'static str) -> ModelFileError {
        ModelFileError::WrongKind {
            path: path.display().to_string(),
            found: self.kind(),
            wanted,
        }
    }
}

impl TableModel {
    fn check(&self) -> Result<(), String> {
        let (columns, n_features) = match self {
            Self::Kmeans { columns, model } => {
                model.check_consistent()?;
                (columns, model.n_features())
            }
            Self::Pca { columns, model } => {
                model.check_consistent()?;
                (columns, model.n_features())
            }
        };
        if columns.len() != n_features {
            return Err(format!(
                "{} column names for {n_features} features",
                columns.len()
            ));
        }
        Ok(())
    }

    /// The model file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("serialisable");
        value["format"] = FORMAT.into();
        value["version"] = VERSION.into();
        serde_json::to_vec(&value).expect("serialisable")
    }

    /// Writes the model file atomically (a temporary name, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        write_atomic(path, &self.to_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelFileError> {
    crate::segmentation::replace_atomically(path, bytes).map_err(|e| ModelFileError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
