use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendChoice;

/// Server settings; every limit is enforced and reported by `GetInfo`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Backend for fits that do not ask for one.
    pub backend: BackendChoice,
    pub limits: Limits,
    /// The API keys file (`NAME ROLE SHA256_HEX` per line). `None` turns
    /// authentication off: every caller is an admin (loopback use only; the
    /// CLI refuses other addresses without `--insecure`).
    pub auth_keys: Option<PathBuf>,
    /// Directories `Import` and `Segment` may read server-side files from.
    /// Empty: server paths are refused.
    pub import_roots: Vec<PathBuf>,
    pub tls: Option<TlsFiles>,
    /// Where Prometheus metrics are served (`None`: not served).
    pub metrics_addr: Option<SocketAddr>,
}

/// PEM files for TLS; with `client_ca`, clients must present a certificate
/// it signed (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What one request or the whole server may use. Each request's cost is
/// checked against these before it runs, so no request can take the server
/// down; the defaults suit a machine with a few GiB of memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Largest dataset (rows × columns × 4 bytes), or transaction log, stored.
    pub max_dataset_bytes: u64,
    /// All stored data together, in bytes (`None`: only the disk's size).
    pub max_data_dir_bytes: Option<u64>,
    /// Columns in a dataset, and features in a fit (PCA's Gram is `d × d`).
    pub max_features: usize,
    /// Clusters in one k-means fit.
    pub max_k: usize,
    /// `n_init × max_iter` of one fit.
    pub max_iterations: usize,
    /// Distance evaluations (`rows × k × features × n_init × max_iter`) one
    /// fit may budget for; about 10⁻¹¹ s each on one modern core.
    pub max_fit_work: f64,
    /// Rows in `Evaluate`'s silhouette sample (its cost grows with the square).
    pub max_silhouette_sample: usize,
    /// Jobs running at once; more wait in the queue.
    pub max_concurrent_jobs: usize,
    /// Jobs waiting to run; more are refused (and health says NOT_SERVING).
    pub max_queued_jobs: usize,
    /// Rows in one `Assign` or `Transform` request.
    pub max_assign_rows: usize,
    /// Calls in progress server-wide; more are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Upload streams (datasets and transaction logs) open at once.
    pub max_concurrent_uploads: usize,
    /// HTTP/2 streams one connection may have open.
    pub max_streams_per_connection: u32,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once from one peer address, so one host cannot
    /// take every slot (raise it behind a proxy or load balancer).
    pub max_connections_per_peer: usize,
    /// A new connection that has not sent its first bytes (the HTTP/2
    /// preface or a TLS ClientHello) in this long is closed; over TLS the
    /// whole handshake must also finish within it.
    pub handshake_timeout: Duration,
    /// Bytes of a name (datasets, logs, columns).
    pub max_name_bytes: usize,
    /// Longest a unary call may run (the client's shorter deadline wins).
    pub request_timeout: Duration,
    /// An upload stream that sends nothing for this long is aborted.
    pub idle_timeout: Duration,
    /// Finished jobs are forgotten after this long...
    pub job_retention: Duration,
    /// ...or once more than this many have finished (oldest first).
    pub max_retained_jobs: usize,
    /// Bytes of distributed fits' partitions cached in memory, all callers together.
    pub max_partition_cache_bytes: u64,
    /// How long an unused partition stays cached unless its upload says.
    pub partition_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            max_dataset_bytes: 16 << 30,
            max_data_dir_bytes: None,
            max_features: 4096,
            max_k: 100_000,
            max_iterations: 10_000,
            max_fit_work: 1e15,
            max_silhouette_sample: 20_000,
            max_concurrent_jobs: 2,
            max_queued_jobs: 100,
            max_assign_rows: 1_000_000,
            max_concurrent_requests: 256,
            max_concurrent_uploads: 8,
            max_streams_per_connection: 128,
            max_connections: 1024,
            max_connections_per_peer: 256,
            handshake_timeout: Duration::from_secs(10),
            max_name_bytes: 256,
            request_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            job_retention: Duration::from_secs(24 * 3600),
            max_retained_jobs: 1000,
            max_partition_cache_bytes: 2 << 30,
            partition_ttl: Duration::from_secs(600),
        }
    }
}

impl ServerConfig {
    /// Loopback-style defaults: no keys, no TLS, no server paths.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            backend: BackendChoice::Auto,
            limits: Limits::default(),
            auth_keys: None,
            import_roots: Vec::new(),
            tls: None,
            metrics_addr: None,
        }
    }
}
