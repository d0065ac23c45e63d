use std::path::PathBuf;

use crate::backend::BackendChoice;

/// Server settings; every limit is enforced and reported by `GetInfo`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Backend for fits that do not ask for one.
    pub backend: BackendChoice,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Largest dataset (rows × columns × 4 bytes) stored.
    pub max_dataset_bytes: u64,
    /// Jobs running at once; more wait in the queue.
    pub max_concurrent_jobs: usize,
    /// Rows in one `Assign` or `Transform` request.
    pub max_assign_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            max_dataset_bytes: 16 << 30,
            max_concurrent_jobs: 2,
            max_assign_rows: 1_000_000,
        }
    }
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            backend: BackendChoice::Auto,
            limits: Limits::default(),
        }
    }
}
