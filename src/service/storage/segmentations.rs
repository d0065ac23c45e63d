//! Uploaded transaction logs and the outputs of segment jobs.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_id, new_id, now_ms, sync_dir, tree_bytes, write_json_atomically, Store, TMP};
use crate::data::{TableFormat, TextFormat};
use crate::segmentation::{SegmentModel, SegmentationError, SegmentsDocument};
use crate::service::error::{ServiceError, ServiceResult};
use crate::value::ClvSummary;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionsMeta {
    pub id: String,
    pub name: String,
    pub format: TableFormat,
    /// How the text of the log is written, as its uploader said.
    #[serde(default)]
    pub text_format: TextFormat,
    /// Other delimiters jobs read the log with (a job's text format
    /// overrides the upload's): an erasure splits its lines by each, so a
    /// customer a job found is found by the erasure too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_delimiters: Vec<crate::data::Delimiter>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

/// Which job made a stored set of outputs. Both kinds live side by side,
/// so downloads, deletes, cascades and erasure treat them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A segment job's (`seg-…`).
    #[default]
    Segmentation,
    /// A CLV job's (`clv-…`).
    Clv,
}

impl OutputKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Segmentation => "seg",
            Self::Clv => "clv",
        }
    }

    fn reader(self) -> &'static str {
        match self {
            Self::Segmentation => "GetSegmentation",
            Self::Clv => "GetClv",
        }
    }
}

/// A stored job's outputs: where they came from and which files may be
/// downloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationMeta {
    pub id: String,
    /// Records from before CLV runs are segmentations.
    #[serde(default)]
    pub kind: OutputKind,
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
    store: Store,
    committed: bool,
}

impl TransactionsWriter {
    pub fn size_bytes(&self) -> u64 {
        self.meta.size_bytes
    }

    pub fn append(&mut self, bytes: &[u8]) -> ServiceResult<()> {
        self.store.reserve(bytes.len() as u64)?;
        let file = self.file.as_mut().expect("open until finish");
        file.write_all(bytes).map_err(ServiceError::io)?;
        self.meta.size_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Commits the upload. A Parquet log must be valid and unpack into at
    /// most `max_bytes` ([`log_extent`]): refused now, while the sender is
    /// here, it can neither fail every job nor swell on disk when an
    /// erasure rewrites it.
    pub fn finish(mut self, max_bytes: u64) -> ServiceResult<TransactionsMeta> {
        let file = self.file.take().expect("finish once");
        let file = file
            .into_inner()
            .map_err(|e| ServiceError::io(e.into_error()))?;
        file.sync_all().map_err(ServiceError::io)?;
        if self.meta.format == TableFormat::Parquet {
            // A log that is not Parquet would fail every job and every
            // erasure that reads it: refused now, while the sender is here.
            let path = self.tmp.join(log_name(TableFormat::Parquet));
            let not_parquet = || {
                ServiceError::invalid(
                    "header.format",
                    "the upload is not a valid Parquet file (its footer cannot be read); \
                     for a text file use FILE_FORMAT_CSV",
                )
            };
            let file = File::open(&path).map_err(ServiceError::io)?;
            crate::data::guard_parquet(
                || {
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .map(|_| ())
                        .map_err(|_| not_parquet())
                },
                not_parquet,
            )?;
            let (_, unpacked) = log_extent(&path)?;
            if unpacked > max_bytes {
                return Err(ServiceError::ResourceExhausted {
                    limit: "max_dataset_bytes",
                    message: format!(
                        "the Parquet log unpacks into at least {unpacked} bytes; the limit is {max_bytes}"
                    ),
                });
            }
            // The footer's sizes are what it says; the pages are checked too.
            crate::data::guard_parquet(
                || check_parquet_cells(&path, max_bytes),
                || ServiceError::invalid("header.format", "the upload is not a valid Parquet file"),
            )?;
        }
        write_json_atomically(&self.tmp.join("meta.json"), &self.meta).map_err(ServiceError::io)?;
        fs::rename(&self.tmp, self.dest.join(&self.meta.id)).map_err(ServiceError::io)?;
        self.committed = true;
        sync_dir(&self.dest).map_err(ServiceError::io)?;
        Ok(self.meta.clone())
    }
}

impl Drop for TransactionsWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
            self.store.release(self.meta.size_bytes);
        }
    }
}

/// Memory a parsed log line takes (customer id, day, amount, order), to
/// bound what a small compressed Parquet file can unpack into.
const BYTES_PER_LINE: u64 = 64;

/// A log's size before parsing: at most how many lines it holds, and how
/// many bytes it counts as against `max_dataset_bytes`. A Parquet file
/// counts as what it unpacks into: its rows (each at least
/// [`BYTES_PER_LINE`]) and the uncompressed size of its columns, both from
/// its footer, so neither many tiny rows nor one enormous value in a small
/// compressed file gets past the limit. A CSV file counts as itself, and a
/// line takes at least 12 bytes (`a,2026-1-1,1` and a newline).
pub fn log_extent(path: &Path) -> ServiceResult<(u64, u64)> {
    let bytes = fs::metadata(path).map_err(ServiceError::io)?.len();
    match TableFormat::from_path(path) {
        Ok(TableFormat::Parquet) => {
            let file = File::open(path).map_err(ServiceError::io)?;
            let invalid = || ServiceError::invalid("transactions", "not a valid Parquet file");
            let (rows, unpacked) = crate::data::guard_parquet(
                || {
                    let builder =
                        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                            file,
                        )
                        .map_err(|_| invalid())?;
                    let meta = builder.metadata();
                    let unpacked: u64 = meta
                        .row_groups()
                        .iter()
                        .flat_map(|g| g.columns())
                        .map(|c| c.uncompressed_size().max(0) as u64)
                        .fold(0, u64::saturating_add);
                    // The file's count and its row groups' counts, the
                    // larger: a footer may state either falsely.
                    let grouped: u64 = meta
                        .row_groups()
                        .iter()
                        .map(|g| g.num_rows().max(0) as u64)
                        .fold(0, u64::saturating_add);
                    let stated = meta.file_metadata().num_rows().max(0) as u64;
                    Ok((stated.max(grouped), unpacked))
                },
                invalid,
            )?;
            Ok((
                rows,
                bytes.max(rows.saturating_mul(BYTES_PER_LINE)).max(unpacked),
            ))
        }
        _ => Ok((bytes / 12 + 1, bytes)),
    }
}

/// The longest cell a stored Parquet log may hold: ids, dates and amounts
/// are short, and one huge value (compressed or dictionary-encoded into a
/// few bytes) would be copied into every row that refers to it.
const MAX_PARQUET_CELL_BYTES: usize = 64 * 1024;

/// Reads a Parquet log once, keeping string columns dictionary-encoded (so
/// nothing is expanded), and refuses it when a cell is longer than
/// [`MAX_PARQUET_CELL_BYTES`] or its cells, expanded as the readers expand
/// them, would pass `max_bytes`: a footer can lie, and a dictionary can
/// repeat one long value in every row, so only the decoded pages tell.
fn check_parquet_cells(path: &Path, max_bytes: u64) -> ServiceResult<()> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    let refuse = |message: String| ServiceError::ResourceExhausted {
        limit: "max_dataset_bytes",
        message,
    };
    let invalid = || {
        ServiceError::invalid(
            "header.format",
            "the upload is not a valid Parquet file (its pages cannot be read)",
        )
    };
    let open = || File::open(path).map_err(ServiceError::io);
    let plain = ParquetRecordBatchReaderBuilder::try_new(open()?).map_err(|_| invalid())?;
    let fields: Vec<Field> = plain
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => f.as_ref().clone().with_data_type(
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            ),
            DataType::Binary | DataType::LargeBinary => f.as_ref().clone().with_data_type(
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary)),
            ),
            _ => f.as_ref().clone(),
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(std::sync::Arc::new(Schema::new(fields)));
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(open()?, options)
        .and_then(|b| b.with_batch_size(8 * 1024).build())
        .map_err(|_| invalid())?;
    let mut expanded = 0u64;
    for batch in reader {
        let batch = batch.map_err(|_| invalid())?;
        for column in batch.columns() {
            let bytes = match column.as_any_dictionary_opt() {
                Some(dict) => {
                    let values = dict.values();
                    let lengths: Vec<usize> = match values.data_type() {
                        DataType::Utf8 => {
                            let v = values.as_string::<i32>();
                            (0..v.len()).map(|i| v.value(i).len()).collect()
                        }
                        DataType::Binary => {
                            let v = values.as_binary::<i32>();
                            (0..v.len()).map(|i| v.value(i).len()).collect()
                        }
                        _ => Vec::new(),
                    };
                    if let Some(&longest) = lengths.iter().max() {
                        if longest > MAX_PARQUET_CELL_BYTES {
                            return Err(refuse(format!(
                                "a cell of {longest} bytes; the most a Parquet log's cell may \
                                 hold is {MAX_PARQUET_CELL_BYTES}"
                            )));
                        }
                    }
                    let keys = dict.normalized_keys();
                    keys.iter()
                        .enumerate()
                        .filter(|&(i, _)| dict.keys().is_valid(i))
                        .map(|(_, &k)| lengths.get(k).copied().unwrap_or(0) as u64 + 8)
                        .sum()
                }
                None => column.get_array_memory_size() as u64,
            };
            expanded = expanded.saturating_add(bytes);
        }
        if expanded > max_bytes {
            return Err(refuse(format!(
                "the Parquet log unpacks into more than {max_bytes} bytes (the limit)"
            )));
        }
    }
    Ok(())
}

fn log_name(format: TableFormat) -> String {
    format!("log.{}", format.extension())
}

impl Store {
    pub fn begin_transactions(
        &self,
        name: &str,
        format: TableFormat,
        text_format: TextFormat,
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
                text_format,
                read_delimiters: Vec::new(),
                size_bytes: 0,
                created_at_ms: now_ms(),
            },
            tmp,
            dest: self.transactions.clone(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            store: self.clone(),
            committed: false,
        })
    }

    /// NOT_FOUND unless the log is stored, whether or not its metadata
    /// can be read.
    pub fn transactions_exist(&self, id: &str) -> ServiceResult<()> {
        check_id("transaction log", id)?;
        if self.transactions.join(id).join("meta.json").is_file() {
            Ok(())
        } else {
            Err(ServiceError::not_found("transaction log", id))
        }
    }

    pub fn transactions(&self, id: &str) -> ServiceResult<TransactionsMeta> {
        let not_found = || ServiceError::not_found("transaction log", id);
        check_id("transaction log", id)?;
        let text =
            fs::read(self.transactions.join(id).join("meta.json")).map_err(|_| not_found())?;
        serde_json::from_slice(&text)
            .map_err(|e| ServiceError::damaged("transaction log", id, format!("its metadata: {e}")))
    }

    /// Records that a job reads log `id` split by `delimiter`, before it
    /// does ([`TransactionsMeta::read_delimiters`]).
    pub fn note_read_delimiter(
        &self,
        id: &str,
        delimiter: crate::data::Delimiter,
    ) -> ServiceResult<()> {
        // Read, change, write: one at a time, or two jobs' notes could
        // overwrite each other.
        static NOTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = NOTING.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = self.transactions(id)?;
        if meta.text_format.delimiter == Some(delimiter)
            || meta.read_delimiters.contains(&delimiter)
        {
            return Ok(());
        }
        meta.read_delimiters.push(delimiter);
        write_json_atomically(&self.transactions.join(id).join("meta.json"), &meta)
            .map_err(ServiceError::io)
    }

    /// The stored log's file, for the reader.
    pub fn transactions_path(&self, id: &str) -> ServiceResult<PathBuf> {
        let meta = self.transactions(id)?;
        Ok(self.transactions.join(id).join(log_name(meta.format)))
    }

    /// Stores a job's outputs under a fresh id: `write` fills a staging
    /// directory and names the files to list, which become visible at once
    /// when they fit in the quota. Outputs that are not committed are
    /// removed: a staged customer table must not outlive its job (erasure
    /// and deletes see committed outputs only).
    pub fn store_outputs(
        &self,
        kind: OutputKind,
        source: String,
        write: impl FnOnce(&Path) -> crate::error::Result<Vec<String>>,
    ) -> ServiceResult<SegmentationMeta> {
        let id = new_id(kind.prefix());
        let staged = self.segmentations.join(format!("{TMP}{id}"));
        fs::create_dir_all(&staged).map_err(ServiceError::io)?;
        let committed = write(&staged)
            .map_err(ServiceError::from)
            .and_then(|artifacts| {
                let meta = SegmentationMeta {
                    id,
                    kind,
                    source,
                    created_at_ms: now_ms(),
                    artifacts,
                };
                self.commit_staged(&staged, &meta).map(|()| meta)
            });
        if committed.is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        committed
    }

    fn commit_staged(&self, staged: &Path, meta: &SegmentationMeta) -> ServiceResult<()> {
        write_json_atomically(&staged.join("meta.json"), meta).map_err(ServiceError::io)?;
        let bytes = tree_bytes(staged);
        self.reserve(bytes)?;
        let committed = fs::rename(staged, self.segmentations.join(&meta.id))
            .and_then(|()| sync_dir(&self.segmentations));
        committed.map_err(|e| {
            self.release(bytes);
            ServiceError::io(e)
        })
    }

    fn segmentation_dir(&self, id: &str) -> ServiceResult<PathBuf> {
        check_id(what_is(id), id)?;
        let dir = self.segmentations.join(id);
        if dir.join("meta.json").is_file() {
            Ok(dir)
        } else {
            Err(ServiceError::not_found(what_is(id), id))
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, id: &str, file: &str) -> ServiceResult<T> {
        let text = fs::read(self.segmentation_dir(id)?.join(file)).map_err(ServiceError::io)?;
        serde_json::from_slice(&text)
            .map_err(|e| ServiceError::damaged(what_is(id), id, format!("{file}: {e}")))
    }

    /// The outputs' record, if they are of `kind`: another kind's id is
    /// refused with the call that reads it.
    fn meta_of(&self, id: &str, kind: OutputKind) -> ServiceResult<SegmentationMeta> {
        let meta: SegmentationMeta = self.read_json(id, "meta.json")?;
        if meta.kind != kind {
            return Err(ServiceError::FailedPrecondition(format!(
                "{id} is not a {}: read it with {}",
                match kind {
                    OutputKind::Segmentation => "segmentation",
                    OutputKind::Clv => "CLV run",
                },
                meta.kind.reader()
            )));
        }
        Ok(meta)
    }

    pub fn segmentation(&self, id: &str) -> ServiceResult<(SegmentationMeta, SegmentsDocument)> {
        Ok((
            self.meta_of(id, OutputKind::Segmentation)?,
            self.read_json(id, "segments.json")?,
        ))
    }

    /// The stored model, run through the checks a model file gets (its
    /// features, shapes and labels agree), so a damaged one is DATA_LOSS
    /// here rather than a panic in the refresh that uses it.
    pub fn segmentation_model(&self, id: &str) -> ServiceResult<SegmentModel> {
        self.meta_of(id, OutputKind::Segmentation)?;
        let text =
            fs::read(self.segmentation_dir(id)?.join("model.json")).map_err(ServiceError::io)?;
        SegmentModel::from_json(&text, "model.json").map_err(|e| {
            let why = match e {
                crate::Error::Segmentation(SegmentationError::PreviousModel {
                    message, ..
                }) => format!("model.json: {message}"),
                other => other.to_string(),
            };
            ServiceError::damaged(what_is(id), id, why)
        })
    }

    /// A CLV run's record and summary.
    pub fn clv_run(&self, id: &str) -> ServiceResult<(SegmentationMeta, ClvSummary)> {
        Ok((
            self.meta_of(id, OutputKind::Clv)?,
            self.read_json(id, "clv.json")?,
        ))
    }

    /// The path of a segmentation's customer table, for uplift.
    pub fn segmentation_customers(&self, id: &str) -> ServiceResult<PathBuf> {
        self.meta_of(id, OutputKind::Segmentation)?;
        Ok(self.segmentation_dir(id)?.join("customers.csv"))
    }

    /// The path of one of a segmentation's listed artifacts.
    pub fn artifact(&self, id: &str, name: &str) -> ServiceResult<PathBuf> {
        let meta: SegmentationMeta = self.read_json(id, "meta.json")?;
        if !meta.artifacts.iter().any(|a| a == name) {
            return Err(ServiceError::NotFoundIn {
                what: "artifact",
                id: crate::service::auth::clip(name),
                available: meta.artifacts.join(", "),
            });
        }
        Ok(self.segmentation_dir(id)?.join(name))
    }

    pub fn delete_transactions(&self, id: &str) -> ServiceResult<()> {
        self.transactions_exist(id)?;
        self.remove_tree(&self.transactions, &self.transactions.join(id), id)
    }

    /// Removes the outputs; the caller removes the registered model.
    pub fn delete_segmentation(&self, id: &str) -> ServiceResult<()> {
        self.remove_tree(&self.segmentations, &self.segmentation_dir(id)?, id)
    }

    pub fn list_transactions(&self) -> ServiceResult<Vec<TransactionsMeta>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.transactions).map_err(ServiceError::io)? {
            let name = entry.map_err(ServiceError::io)?.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(TMP) {
                if let Ok(meta) = self.transactions(&name) {
                    out.push(meta);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn list_segmentations(&self) -> ServiceResult<Vec<SegmentationMeta>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.segmentations).map_err(ServiceError::io)? {
            let name = entry.map_err(ServiceError::io)?.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(TMP) {
                if let Ok(meta) = self.read_json::<SegmentationMeta>(&name, "meta.json") {
                    out.push(meta);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The directory of a stored segmentation's outputs (for erasure).
    pub fn segmentation_path(&self, id: &str) -> ServiceResult<PathBuf> {
        self.segmentation_dir(id)
    }
}

/// What an id names in messages: segmentations and CLV runs share a
/// directory, and `clv-nope` is a CLV run that is not there.
fn what_is(id: &str) -> &'static str {
    if id.starts_with("clv-") {
        "CLV run"
    } else {
        "segmentation"
    }
}
