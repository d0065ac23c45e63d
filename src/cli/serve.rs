//! `segmenta serve`: the gRPC server, secure by default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use segmenta::backend::BackendChoice;
use segmenta::service::{serve_with, shutdown_signal, Limits, ServerConfig, TlsFiles};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 24h)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "SEGMENTA_ADDR")]
    pub addr: String,
    /// Where datasets, models, logs, outputs and job records are stored.
    /// One server per directory (it is locked).
    #[arg(long, default_value = "./segmenta-data", env = "SEGMENTA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Backend for fits that do not choose one.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
    /// API keys file: one `NAME ROLE SHA256_HEX` per line (see `segmenta
    /// keys new`); re-read on SIGHUP. Without it every caller is an admin,
    /// so only loopback addresses are served unless --insecure is given.
    #[arg(long, env = "SEGMENTA_AUTH_KEYS")]
    pub auth_keys: Option<PathBuf>,
    /// Serve a non-loopback address without API keys (anyone who reaches
    /// the port can read and delete every dataset).
    #[arg(long)]
    pub insecure: bool,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, env = "SEGMENTA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SEGMENTA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "SEGMENTA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// A directory whose regular files Import and Segment may read by path
    /// (repeatable). Without one, server-side paths are refused.
    #[arg(
        long = "import-root",
        env = "SEGMENTA_IMPORT_ROOTS",
        value_delimiter = ','
    )]
    pub import_roots: Vec<PathBuf>,
    /// Serve Prometheus metrics (text) on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "SEGMENTA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Every limit of [`Limits`], with its default.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest gRPC message, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes, env = "SEGMENTA_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,
    /// Largest dataset (rows × columns × 4) or transaction log, in bytes.
    #[arg(long, default_value_t = Limits::default().max_dataset_bytes, env = "SEGMENTA_MAX_DATASET_BYTES")]
    pub max_dataset_bytes: u64,
    /// Quota for everything stored in the data directory, in bytes.
    #[arg(long, env = "SEGMENTA_MAX_DATA_DIR_BYTES")]
    pub max_data_dir_bytes: Option<u64>,
    /// Columns in a dataset and features in a fit (PCA's Gram is d × d).
    #[arg(long, default_value_t = Limits::default().max_features, env = "SEGMENTA_MAX_FEATURES")]
    pub max_features: usize,
    /// Clusters in one k-means fit.
    #[arg(long, default_value_t = Limits::default().max_k, env = "SEGMENTA_MAX_K")]
    pub max_k: usize,
    /// n_init × max_iter of one fit.
    #[arg(long, default_value_t = Limits::default().max_iterations, env = "SEGMENTA_MAX_ITERATIONS")]
    pub max_iterations: usize,
    /// Work budget of one fit: rows × k × features × n_init × max_iter.
    #[arg(long, default_value_t = Limits::default().max_fit_work, env = "SEGMENTA_MAX_FIT_WORK")]
    pub max_fit_work: f64,
    /// Rows in Evaluate's silhouette sample.
    #[arg(long, default_value_t = Limits::default().max_silhouette_sample, env = "SEGMENTA_MAX_SILHOUETTE_SAMPLE")]
    pub max_silhouette_sample: usize,
    /// Jobs (imports, fits, segment jobs, evaluations) running at once.
    #[arg(long, default_value_t = Limits::default().max_concurrent_jobs, env = "SEGMENTA_MAX_CONCURRENT_JOBS")]
    pub max_concurrent_jobs: usize,
    /// Jobs waiting to run; more are refused.
    #[arg(long, default_value_t = Limits::default().max_queued_jobs, env = "SEGMENTA_MAX_QUEUED_JOBS")]
    pub max_queued_jobs: usize,
    /// Rows in one Assign or Transform request.
    #[arg(long, default_value_t = Limits::default().max_assign_rows, env = "SEGMENTA_MAX_ASSIGN_ROWS")]
    pub max_assign_rows: usize,
    /// Calls in progress server-wide; more are shed (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = Limits::default().max_concurrent_requests, env = "SEGMENTA_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: usize,
    /// Upload streams open at once.
    #[arg(long, default_value_t = Limits::default().max_concurrent_uploads, env = "SEGMENTA_MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: usize,
    /// HTTP/2 streams per connection.
    #[arg(long, default_value_t = Limits::default().max_streams_per_connection, env = "SEGMENTA_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: u32,
    /// Connections open at once (keep it under the process's file limit).
    #[arg(long, default_value_t = Limits::default().max_connections, env = "SEGMENTA_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Connections open at once from one address (raise it behind a proxy).
    #[arg(long, default_value_t = Limits::default().max_connections_per_peer, env = "SEGMENTA_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: usize,
    /// A new connection that has not spoken in this long is closed; over
    /// TLS, one whose handshake has not finished in this long too.
    #[arg(long, default_value = "10s", value_parser = duration, env = "SEGMENTA_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Duration,
    /// Bytes in a name (datasets, logs, columns).
    #[arg(long, default_value_t = Limits::default().max_name_bytes, env = "SEGMENTA_MAX_NAME_BYTES")]
    pub max_name_bytes: usize,
    /// Longest a unary call may run (a client's shorter deadline wins).
    #[arg(long, default_value = "5m", value_parser = duration, env = "SEGMENTA_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,
    /// An upload stream silent for this long is aborted.
    #[arg(long, default_value = "60s", value_parser = duration, env = "SEGMENTA_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// How long finished jobs are kept.
    #[arg(long, default_value = "24h", value_parser = duration, env = "SEGMENTA_JOB_RETENTION")]
    pub job_retention: Duration,
    /// Most finished jobs kept (oldest go first).
    #[arg(long, default_value_t = Limits::default().max_retained_jobs, env = "SEGMENTA_MAX_RETAINED_JOBS")]
    pub max_retained_jobs: usize,
    /// Bytes of distributed fits' partitions (Clustering.PutPartition) held in memory.
    #[arg(long, default_value_t = Limits::default().max_partition_cache_bytes, env = "SEGMENTA_MAX_PARTITION_CACHE_BYTES")]
    pub max_partition_cache_bytes: u64,
    /// How long an unused cached partition is kept, unless its upload says.
    #[arg(long, default_value = "10m", value_parser = duration, env = "SEGMENTA_PARTITION_TTL")]
    pub partition_ttl: Duration,
}

impl From<LimitArgs> for Limits {
    fn from(a: LimitArgs) -> Self {
        Self {
            max_message_bytes: a.max_message_bytes,
            max_dataset_bytes: a.max_dataset_bytes,
            max_data_dir_bytes: a.max_data_dir_bytes,
            max_features: a.max_features,
            max_k: a.max_k,
            max_iterations: a.max_iterations,
            max_fit_work: a.max_fit_work,
            max_silhouette_sample: a.max_silhouette_sample,
            max_concurrent_jobs: a.max_concurrent_jobs,
            max_queued_jobs: a.max_queued_jobs,
            max_assign_rows: a.max_assign_rows,
            max_concurrent_requests: a.max_concurrent_requests,
            max_concurrent_uploads: a.max_concurrent_uploads,
            max_streams_per_connection: a.max_streams_per_connection,
            max_connections: a.max_connections,
            max_connections_per_peer: a.max_connections_per_peer,
            handshake_timeout: a.handshake_timeout,
            max_name_bytes: a.max_name_bytes,
            request_timeout: a.request_timeout,
            idle_timeout: a.idle_timeout,
            job_retention: a.job_retention,
            max_retained_jobs: a.max_retained_jobs,
            max_partition_cache_bytes: a.max_partition_cache_bytes,
            partition_ttl: a.partition_ttl,
        }
    }
}

/// Every file the server writes holds someone's customers: whatever umask
/// the service manager handed over, new files are the server's user's
/// alone (0600, directories 0700).
fn close_new_files() {
    #[cfg(unix)]
    // SAFETY: umask has no preconditions and cannot fail; it runs before
    // any thread that creates files exists.
    unsafe {
        libc::umask(0o077);
    }
}

/// How long the process waits for compute threads after the server stops.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    close_new_files();
    let config = ServerConfig {
        data_dir: args.data_dir,
        backend: args.backend,
        limits: args.limits.into(),
        auth_keys: args.auth_keys,
        import_roots: args.import_roots,
        tls: args.tls_cert.map(|cert| TlsFiles {
            cert,
            key: args.tls_key.expect("clap requires it"),
            client_ca: args.tls_client_ca,
        }),
        metrics_addr: args.metrics_addr,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {} (--addr HOST:PORT)", args.addr))?;
        let local = listener.local_addr()?;
        if config.auth_keys.is_none() && !local.ip().is_loopback() && !args.insecure {
            anyhow::bail!(
                "refusing to serve {local} without API keys: anyone who can reach it could read and delete every dataset. \
                 Pass --auth-keys FILE (create keys with `segmenta keys new`), or --insecure to accept that"
            );
        }
        let banner = format!(
            "segmenta serving on {local}{} (data in {}; {})",
            if config.tls.is_some() { " with TLS" } else { "" },
            config.data_dir.display(),
            if config.auth_keys.is_some() {
                "API keys required"
            } else {
                "no API keys: every caller is an admin"
            }
        );
        serve_with(config, listener, shutdown_signal(), || eprintln!("{banner}")).await?;
        Ok(())
    });
    // Compute threads stop at their next cancellation check; never let one
    // keep the process alive past the shutdown timeout.
    runtime.shutdown_timeout(EXIT_TIMEOUT);
    result?;
    eprintln!("segmenta stopped");
    Ok(())
}
