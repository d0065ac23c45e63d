//! The embedded store: a data directory of datasets and models.
//!
//! ```text
//! DATA_DIR/datasets/<id>/meta.json, values.f32   (little-endian f32, row-major)
//! DATA_DIR/models/<id>.json
//! DATA_DIR/transactions/<id>/meta.json, log.csv | log.parquet   (as uploaded)
//! DATA_DIR/segmentations/<id>/meta.json + a segment or CLV job's outputs
//! DATA_DIR/jobs/<id>.json                         (job records, see `jobs`)
//! DATA_DIR/.lock                                  (held while a server runs)
//! ```
//! One server owns a data directory: [`Store::open`] takes an exclusive
//! advisory lock on `.lock` and fails if another process holds it.
//! Every write goes to a temporary name, is fsynced, then renamed into place
//! (and the directory fsynced): a crash leaves either the old state or the
//! new, never a partial dataset or model. Leftover temporaries are removed at
//! start-up. Deleting removes the files (customer data is personal data).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use crate::data::Dataset;
use crate::kmeans::KMeansModel;
use crate::pca::PcaModel;

mod segmentations;

pub use segmentations::{
    log_extent, OutputKind, SegmentationMeta, TransactionsMeta, TransactionsWriter,
};

pub(crate) const TMP: &str = ".tmp-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub id: String,
    pub name: String,
    pub n_rows: u64,
    pub columns: Vec<String>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ModelBody {
    KMeans(KMeansModel),
    Pca(PcaModel),
}

/// A stored model: the fitted model plus where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: String,
    pub dataset_id: String,
    pub columns: Vec<String>,
    pub created_at_ms: i64,
    pub body: ModelBody,
    /// A segment model's names for its clusters (absent for plain k-means
    /// and PCA models, and in segmentations' records from before it was
    /// kept, which [`Store::model`] completes from the segmentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<SegmentNames>,
}

/// What makes a k-means model a segment model: per centroid row, the
/// stable segment id and description, so Assign and Export give segment
/// ids, not positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentNames {
    pub as_of: chrono::NaiveDate,
    pub ids: Vec<u32>,
    pub descriptions: Vec<String>,
    pub next_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_basis: Option<crate::segmentation::features::FrequencyBasis>,
}

impl SegmentNames {
    /// A segment model's names (its customers stay behind).
    pub fn of(model: &crate::segmentation::SegmentModel) -> Self {
        Self {
            as_of: model.as_of,
            ids: model.ids(),
            descriptions: model.descriptions.clone(),
            next_id: model.next_segment_id,
            frequency_basis: model.frequency_basis,
        }
    }

    /// The segment model file for a record with these names, without
    /// customers: it scores (`assign`, `score`) but cannot seed a refresh.
    pub fn model_file(
        &self,
        columns: &[String],
        kmeans: &crate::kmeans::KMeansModel,
    ) -> crate::segmentation::SegmentModel {
        crate::segmentation::SegmentModel {
            format: crate::model_file::FORMAT.into(),
            version: crate::model_file::VERSION,
            kind: "segments".into(),
            as_of: self.as_of,
            features: columns.to_vec(),
            frequency_basis: self.frequency_basis,
            kmeans: kmeans.clone(),
            descriptions: self.descriptions.clone(),
            segment_ids: self.ids.clone(),
            next_segment_id: self.next_id,
            customer_ids: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// Closes the data directory to other users (0700): everything under it
/// is someone's customer data, whatever the umask left on the files.
fn make_private(root: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::metadata(root)?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let owner = meta.uid() == unsafe { libc::geteuid() };
            // Only the owner may change it; a directory handed to the
            // server by a platform (a volume shared with a group) stays as
            // it is, said in the log.
            let closed = owner
                && fs::set_permissions(root, fs::Permissions::from_mode(mode & 0o700)).is_ok();
            if closed {
                tracing::warn!(
                    dir = %root.display(),
                    "the data directory was open to other users ({:o}); it is now {:o}",
                    mode & 0o777,
                    mode & 0o700
                );
            } else {
                tracing::warn!(
                    dir = %root.display(),
                    "the data directory is open to other users ({:o}) and this server cannot \
                     change that: restrict it where it is provisioned",
                    mode & 0o777
                );
            }
        }
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh, time-ordered id with a readable prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Whether `s` has the form [`new_id`] gives, with one of `prefixes`.
pub fn is_id_of(prefixes: &[&str], s: &str) -> bool {
    s.split_once('-').is_some_and(|(prefix, rest)| {
        prefixes.contains(&prefix)
            && rest.len() == 32
            && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Ids are generated by us: anything else (path separators, dots) is unknown.
fn check_id(what: &'static str, id: &str) -> ServiceResult<()> {
    let ok = !id.is_empty()
        && id.len() < 100
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::not_found(what, id))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a stored directory: renamed away first (so it vanishes at once,
/// atomically), then deleted.
fn remove_dir(parent: &Path, dir: &Path, id: &str) -> ServiceResult<()> {
    let doomed = parent.join(format!("{TMP}deleted-{id}"));
    fs::rename(dir, &doomed).map_err(ServiceError::io)?;
    sync_dir(parent).map_err(ServiceError::io)?;
    fs::remove_dir_all(&doomed).map_err(ServiceError::io)
}

pub(crate) fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_vec(value)?;
    write_bytes_atomically(path, &text)
}

/// Bytes stored, against the optional quota. Writers reserve as they
/// write, so concurrent uploads cannot overshoot it together.
#[derive(Debug)]
struct Usage {
    used: AtomicU64,
    quota: Option<u64>,
}

impl Usage {
    fn reserve(&self, bytes: u64) -> ServiceResult<()> {
        let Some(quota) = self.quota else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + bytes <= quota).then_some(u + bytes)
            })
            .map(|_| ())
            .map_err(|used| ServiceError::ResourceExhausted {
                limit: "max_data_dir_bytes",
                message: format!(
                    "storing {bytes} more bytes would exceed the data directory's quota ({used} of {quota} bytes used)"
                ),
            })
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// Bytes in the files under `path`.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| tree_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the data directory {0} is in use by another segmenta server (it holds {0}/.lock); stop it or choose another --data-dir")]
    Locked(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    datasets: PathBuf,
    models: PathBuf,
    transactions: PathBuf,
    segmentations: PathBuf,
    usage: Arc<Usage>,
    /// Held for the store's lifetime: the advisory lock on `.lock`.
    _lock: Arc<File>,
}

impl Store {
    /// Opens (creating if needed) a data directory without a quota.
    pub fn open(root: &Path) -> Result<Self, OpenError> {
        Self::open_with_quota(root, None)
    }

    /// Opens (creating if needed) a data directory, locks it, and clears
    /// temporaries left by a crash.
    pub fn open_with_quota(root: &Path, quota: Option<u64>) -> Result<Self, OpenError> {
        crate::segmentation::create_private_dir_all(root)?;
        make_private(root)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(root.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let store = Self {
            root: root.to_owned(),
            datasets: root.join("datasets"),
            models: root.join("models"),
            transactions: root.join("transactions"),
            segmentations: root.join("segmentations"),
            usage: Arc::new(Usage {
                used: AtomicU64::new(0),
                quota,
            }),
            _lock: Arc::new(lock),
        };
        for dir in [
            &store.datasets,
            &store.models,
            &store.transactions,
            &store.segmentations,
        ] {
            fs::create_dir_all(dir)?;
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(TMP) {
                    let p = entry.path();
                    if p.is_dir() {
                        fs::remove_dir_all(&p)?
                    } else {
                        fs::remove_file(&p)?
                    }
                }
            }
        }
        store.recount();
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes stored (datasets, logs, models, outputs).
    pub fn used_bytes(&self) -> u64 {
        self.usage.used.load(Ordering::Relaxed)
    }

    /// Measures the stored bytes again (after files were rewritten in place).
    pub fn recount(&self) {
        let used = [
            &self.datasets,
            &self.models,
            &self.transactions,
            &self.segmentations,
        ]
        .iter()
        .map(|d| tree_bytes(d))
        .sum();
        self.usage.used.store(used, Ordering::Relaxed);
    }

    /// Counts `bytes` about to be written against the quota.
    pub fn reserve(&self, bytes: u64) -> ServiceResult<()> {
        self.usage.reserve(bytes)
    }

    /// Returns bytes that were reserved but not kept.
    pub fn release(&self, bytes: u64) {
        self.usage.release(bytes)
    }

    /// Removes a stored directory and gives its bytes back to the quota.
    fn remove_tree(&self, parent: &Path, dir: &Path, id: &str) -> ServiceResult<()> {
        let bytes = tree_bytes(dir);
        remove_dir(parent, dir, id)?;
        self.release(bytes);
        Ok(())
    }

    /// Starts writing a dataset; nothing is visible until [`DatasetWriter::finish`].
    pub fn begin_dataset(&self, name: &str, columns: Vec<String>) -> ServiceResult<DatasetWriter> {
        let id = new_id("ds");
        let tmp = self.datasets.join(format!("{TMP}{id}"));
        fs::create_dir_all(&tmp).map_err(ServiceError::io)?;
        let file = File::create(tmp.join("values.f32")).map_err(ServiceError::io)?;
        Ok(DatasetWriter {
            meta: DatasetMeta {
                id,
                name: name.to_owned(),
                n_rows: 0,
                columns,
                size_bytes: 0,
                created_at_ms: now_ms(),
            },
            tmp,
            dest: self.datasets.clone(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            store: self.clone(),
            committed: false,
        })
    }

    /// Stores a whole in-memory dataset (imports).
    pub fn put_dataset(&self, name: &str, data: &Dataset) -> ServiceResult<DatasetMeta> {
        let mut w = self.begin_dataset(name, data.columns.clone())?;
        let values = data.values.as_standard_layout();
        w.append(values.as_slice().expect("standard layout"))?;
        w.finish()
    }

    fn dataset_dir(&self, id: &str) -> ServiceResult<PathBuf> {
        check_id("dataset", id)?;
        let dir = self.datasets.join(id);
        if dir.join("meta.json").is_file() {
            Ok(dir)
        } else {
            Err(ServiceError::not_found("dataset", id))
        }
    }

    /// NOT_FOUND unless the dataset is stored, whether or not its
    /// metadata can be read.
    pub fn dataset_exists(&self, id: &str) -> ServiceResult<()> {
        self.dataset_dir(id).map(|_| ())
    }

    pub fn dataset(&self, id: &str) -> ServiceResult<DatasetMeta> {
        let text = fs::read(self.dataset_dir(id)?.join("meta.json")).map_err(ServiceError::io)?;
        let meta: DatasetMeta = serde_json::from_slice(&text)
            .map_err(|e| ServiceError::damaged("dataset", id, format!("its metadata: {e}")))?;
        if meta.columns.is_empty() {
            // Every upload and import refuses data without columns.
            return Err(ServiceError::damaged(
                "dataset",
                id,
                "its metadata names no columns",
            ));
        }
        Ok(meta)
    }

    pub fn load_dataset(&self, id: &str) -> ServiceResult<(DatasetMeta, Dataset)> {
        let meta = self.dataset(id)?;
        let damaged = |why: String| ServiceError::damaged("dataset", id, why);
        let shape = (meta.n_rows as usize, meta.columns.len());
        let len = shape
            .0
            .checked_mul(shape.1)
            .ok_or_else(|| damaged("its shape overflows".into()))?;
        let mut file =
            File::open(self.dataset_dir(id)?.join("values.f32")).map_err(ServiceError::io)?;
        let on_disk = file.metadata().map_err(ServiceError::io)?.len();
        // Compared in bytes on disk, so no shape in the metadata can
        // overflow the product or size an allocation the file cannot fill.
        if on_disk % 4 != 0 || on_disk / 4 != len as u64 {
            return Err(damaged(format!(
                "its values file holds {on_disk} bytes where {} rows × {} columns need {}",
                shape.0,
                shape.1,
                len as u128 * 4
            )));
        }
        // Read straight into the f32 buffer a fit reads (in huge pages
        // where large): no byte copy beside it, so loading holds the
        // values once.
        let mut values: Vec<f32> = crate::data::pages::with_capacity(len);
        values.resize(len, 0.0);
        file.read_exact(bytemuck::cast_slice_mut(&mut values))
            .map_err(ServiceError::io)?;
        if cfg!(target_endian = "big") {
            // Stored little-endian.
            for v in &mut values {
                *v = f32::from_bits(u32::from_le(v.to_bits()));
            }
        }
        let values = Array2::from_shape_vec(shape, values).map_err(|e| damaged(e.to_string()))?;
        Ok((
            meta.clone(),
            Dataset {
                columns: meta.columns,
                values,
            },
        ))
    }

    pub fn list_datasets(&self) -> ServiceResult<Vec<DatasetMeta>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.datasets).map_err(ServiceError::io)? {
            let name = entry
                .map_err(ServiceError::io)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.starts_with(TMP) {
                match self.dataset(&name) {
                    Ok(meta) => out.push(meta),
                    // Left out of the list, but an operator should know:
                    // Get says what is wrong (the log never quotes stored
                    // content) and Delete still takes its id.
                    Err(ServiceError::DataLoss(_)) => {
                        tracing::warn!(dataset = %name, "a stored dataset is damaged; left out of the list")
                    }
                    Err(_) => {}
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes the dataset from disk.
    pub fn delete_dataset(&self, id: &str) -> ServiceResult<()> {
        self.remove_tree(&self.datasets, &self.dataset_dir(id)?, id)
    }

    pub fn put_model(&self, record: &ModelRecord) -> ServiceResult<()> {
        check_id("model", &record.id)?;
        let path = self.models.join(format!("{}.json", record.id));
        let text = serde_json::to_vec(record).map_err(|e| ServiceError::Internal(e.to_string()))?;
        // A record written over (a migration) stops counting its old size.
        let replaced = fs::metadata(&path).map_or(0, |m| m.len());
        self.reserve(text.len() as u64)?;
        write_bytes_atomically(&path, &text).map_err(|e| {
            self.release(text.len() as u64);
            ServiceError::io(e)
        })?;
        self.release(replaced);
        Ok(())
    }

    pub fn model(&self, id: &str) -> ServiceResult<ModelRecord> {
        check_id("model", id)?;
        let path = self.models.join(format!("{id}.json"));
        let text = fs::read(&path).map_err(|_| ServiceError::not_found("model", id))?;
        let mut record: ModelRecord =
            serde_json::from_slice(&text).map_err(|e| ServiceError::damaged("model", id, e))?;
        // Shapes that disagree would panic where the model is used.
        match &record.body {
            ModelBody::KMeans(m) => m.check_consistent(),
            ModelBody::Pca(m) => m.check_consistent(),
        }
        .map_err(|e| ServiceError::damaged("model", id, e))?;
        // Every write names each column: a count that disagrees would
        // misname (or drop) columns in Assign's errors and in exports.
        let width = match &record.body {
            ModelBody::KMeans(m) => m.n_features(),
            ModelBody::Pca(m) => m.n_features(),
        };
        if record.columns.len() != width {
            return Err(ServiceError::damaged(
                "model",
                id,
                format!(
                    "{} column names for a model of {width} features",
                    record.columns.len()
                ),
            ));
        }
        if let (ModelBody::KMeans(m), Some(names)) = (&record.body, &record.segments) {
            if names.ids.len() != m.k() || names.descriptions.len() != m.k() {
                return Err(ServiceError::damaged(
                    "model",
                    id,
                    format!(
                        "{} segment ids and {} descriptions for k = {}",
                        names.ids.len(),
                        names.descriptions.len(),
                        m.k()
                    ),
                ));
            }
        }
        // A segmentation's record from before the names were kept with it:
        // completed from the segmentation once, and written back. Without
        // its segmentation it still reads (Assign then has no segment ids).
        if record.segments.is_none() && is_id_of(&["seg"], id) {
            if let Ok(model) = self.segmentation_model(id) {
                record.segments = Some(SegmentNames::of(&model));
                if let Err(e) = self.put_model(&record) {
                    tracing::warn!(model = %id, "cannot store the model's segment ids: {e}");
                }
            }
        }
        Ok(record)
    }

    /// Model ids in order; the models themselves are read one at a time
    /// (a page of a list reads only what it returns).
    pub fn model_ids(&self) -> ServiceResult<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.models).map_err(ServiceError::io)? {
            let name = entry
                .map_err(ServiceError::io)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some(id) = name.strip_suffix(".json").filter(|n| !n.starts_with(TMP)) {
                out.push(id.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn list_models(&self) -> ServiceResult<Vec<ModelRecord>> {
        self.model_ids()?.iter().map(|id| self.model(id)).collect()
    }

    pub fn delete_model(&self, id: &str) -> ServiceResult<()> {
        check_id("model", id)?;
        let path = self.models.join(format!("{id}.json"));
        let bytes = fs::metadata(&path)
            .map_err(|_| ServiceError::not_found("model", id))?
            .len();
        fs::remove_file(&path).map_err(ServiceError::io)?;
        self.release(bytes);
        sync_dir(&self.models).map_err(ServiceError::io)
    }

    /// The `dataset_id` of a model record that does not read as a model.
    fn damaged_model_source(&self, id: &str) -> Option<String> {
        let text = fs::read(self.models.join(format!("{id}.json"))).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
        value.get("dataset_id")?.as_str().map(str::to_owned)
    }

    /// Ids of the models fitted on a dataset (or made from a log). Reads
    /// each model in turn, keeping only its id.
    pub fn models_from(&self, source: &str) -> ServiceResult<Vec<String>> {
        let mut out = Vec::new();
        for id in self.model_ids()? {
            match self.model(&id) {
                Ok(m) if m.dataset_id == source => out.push(id),
                Ok(_) => {}
                // One damaged model must not block deleting every dataset;
                // it goes with its dataset when its record still names it
                // (its centroids came from those rows), else the log names
                // it and Models.Get says what is wrong.
                Err(ServiceError::DataLoss(_)) => {
                    if self.damaged_model_source(&id).as_deref() == Some(source) {
                        out.push(id);
                    } else {
                        tracing::warn!(model = %id, "a stored model is damaged; left out")
                    }
                }
                // Deleted meanwhile.
                Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` atomically (see [`replace_file_with`]).
pub(crate) fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file_with(path, |f| f.write_all(bytes))
}

/// Replaces `path` with what `write` produces: written to a temporary name
/// in the same directory, fsynced, renamed over `path`, and the directory
/// fsynced. The one way every stored file is replaced: a crash or a full
/// disk leaves the old file or the new one, and no temporary behind.
pub(crate) fn replace_file_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // A name no other writer uses, even for the same file at the same time.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().expect("file in a directory");
    let tmp = dir.join(format!(
        "{TMP}{}.{}.{}",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A dataset being written. Dropped without `finish`, it leaves nothing behind.
pub struct DatasetWriter {
    meta: DatasetMeta,
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
    store: Store,
    committed: bool,
}

impl DatasetWriter {
    pub fn width(&self) -> usize {
        self.meta.columns.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.meta.size_bytes
    }

    /// Appends whole rows.
    pub fn append(&mut self, values: &[f32]) -> ServiceResult<()> {
        debug_assert_eq!(values.len() % self.width(), 0);
        self.store.reserve(4 * values.len() as u64)?;
        let file = self.file.as_mut().expect("open until finish");
        // The file is little-endian f32: on little-endian machines, the bytes as they are.
        #[cfg(target_endian = "little")]
        file.write_all(bytemuck::cast_slice(values))
            .map_err(ServiceError::io)?;
        #[cfg(target_endian = "big")]
        for v in values {
            file.write_all(&v.to_le_bytes()).map_err(ServiceError::io)?;
        }
        self.meta.n_rows += (values.len() / self.width()) as u64;
        self.meta.size_bytes += 4 * values.len() as u64;
        Ok(())
    }

    /// Makes the dataset durable and visible.
    pub fn finish(mut self) -> ServiceResult<DatasetMeta> {
        let file = self.file.take().expect("finish once");
        let file = file
            .into_inner()
            .map_err(|e| ServiceError::io(e.into_error()))?;
        file.sync_all().map_err(ServiceError::io)?;
        write_json_atomically(&self.tmp.join("meta.json"), &self.meta).map_err(ServiceError::io)?;
        let dest = self.dest.join(&self.meta.id);
        fs::rename(&self.tmp, &dest).map_err(ServiceError::io)?;
        self.committed = true;
        sync_dir(&self.dest).map_err(ServiceError::io)?;
        Ok(self.meta.clone())
    }
}

impl Drop for DatasetWriter {
    /// An upload that did not finish (client gone, bad block, disk full)
    /// leaves nothing behind.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
            self.store.release(self.meta.size_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_a_crash_are_invisible_and_cleared() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Dataset::from_rows(vec!["a".into()], vec![1.0, 2.0]).unwrap();
        let kept = store.put_dataset("kept", &data).unwrap();
        // A writer dropped mid-way (as when a client disconnects) leaves nothing.
        let mut w = store.begin_dataset("half", vec!["a".into()]).unwrap();
        w.append(&[1.0]).unwrap();
        drop(w);
        // A crash between writing and renaming leaves a temporary directory.
        std::fs::create_dir_all(dir.path().join("datasets/.tmp-ds-crashed")).unwrap();
        std::fs::write(dir.path().join("models/.tmp-km-x.json"), b"{partial").unwrap();
        assert_eq!(store.list_datasets().unwrap(), vec![kept.clone()]);
        assert!(store.list_models().unwrap().is_empty());
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("datasets"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("models"))
                .unwrap()
                .count(),
            0
        );
        let (meta, back) = reopened.load_dataset(&kept.id).unwrap();
        assert_eq!(meta, kept);
        assert_eq!(back.values, data.values);
    }

    /// Values read straight into the f32 buffer come back exact; a values
    /// file cut short or grown on disk is reported damaged, not read.
    #[test]
    fn datasets_load_exactly_and_damaged_ones_are_errors() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let values: Vec<f32> = (0..3 * 40).map(|i| (i as f32 - 50.5) * 1e-3).collect();
        let data = Dataset::from_rows(vec!["a".into(), "b".into(), "c".into()], values).unwrap();
        let meta = store.put_dataset("d", &data).unwrap();
        let (_, back) = store.load_dataset(&meta.id).unwrap();
        assert_eq!(back.values, data.values);
        let file = dir
            .path()
            .join("datasets")
            .join(&meta.id)
            .join("values.f32");
        let bytes = std::fs::read(&file).unwrap();
        for damaged in [
            &bytes[..bytes.len() - 4],
            &[&bytes[..], &[0u8; 4][..]].concat(),
        ] {
            std::fs::write(&file, damaged).unwrap();
            let e = store.load_dataset(&meta.id).unwrap_err();
            assert!(e.to_string().contains("is damaged"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_is_closed_to_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::TempDir::new().unwrap();
        // Created by the store: private, parents included.
        let fresh = dir.path().join("a/b");
        drop(Store::open(&fresh).unwrap());
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        // Made by an operator with a loose umask: closed at open.
        let loose = dir.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        drop(Store::open(&loose).unwrap());
        assert_eq!(mode(&loose), 0o700);
    }

    #[test]
    fn one_store_per_directory() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, OpenError::Locked(_)), "{e}");
        assert!(e.to_string().contains("in use by another segmenta server"));
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn the_quota_refuses_writes_and_counts_deletes() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open_with_quota(dir.path(), Some(1000)).unwrap();
        let mut w = store.begin_dataset("big", vec!["a".into()]).unwrap();
        w.append(&[1.0; 200]).unwrap();
        let e = w.append(&[1.0; 100]).unwrap_err();
        assert!(
            matches!(
                e,
                ServiceError::ResourceExhausted {
                    limit: "max_data_dir_bytes",
                    ..
                }
            ),
            "{e}"
        );
        drop(w);
        assert_eq!(
            store.used_bytes(),
            0,
            "an abandoned upload gives its bytes back"
        );
        let small = Dataset::from_rows(vec!["a".into()], vec![1.0; 100]).unwrap();
        let kept = store.put_dataset("small", &small).unwrap();
        let used = store.used_bytes();
        assert!(used >= 400, "{used}");
        store.delete_dataset(&kept.id).unwrap();
        assert_eq!(store.used_bytes(), 0);
    }
}
