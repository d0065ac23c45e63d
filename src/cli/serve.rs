use std::path::PathBuf;

use clap::Args;
use segmenta::backend::BackendChoice;
use segmenta::service::{serve, shutdown_signal, Limits, ServerConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "SEGMENTA_ADDR")]
    pub addr: String,
    /// Where datasets and models are stored.
    #[arg(long, default_value = "./segmenta-data", env = "SEGMENTA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Backend for fits that do not choose one.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
    /// Largest gRPC message, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes, env = "SEGMENTA_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,
    /// Largest dataset stored, in bytes (rows × columns × 4).
    #[arg(long, default_value_t = Limits::default().max_dataset_bytes, env = "SEGMENTA_MAX_DATASET_BYTES")]
    pub max_dataset_bytes: u64,
    /// Jobs (imports, fits) running at once; more wait in a queue.
    #[arg(long, default_value_t = Limits::default().max_concurrent_jobs, env = "SEGMENTA_MAX_CONCURRENT_JOBS")]
    pub max_concurrent_jobs: usize,
    /// Rows in one Assign or Transform request.
    #[arg(long, default_value_t = Limits::default().max_assign_rows, env = "SEGMENTA_MAX_ASSIGN_ROWS")]
    pub max_assign_rows: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        data_dir: args.data_dir,
        backend: args.backend,
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
            max_dataset_bytes: args.max_dataset_bytes,
            max_concurrent_jobs: args.max_concurrent_jobs,
            max_assign_rows: args.max_assign_rows,
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        eprintln!(
            "segmenta serving on {} (data in {})",
            listener.local_addr()?,
            config.data_dir.display()
        );
        serve(config, listener, shutdown_signal()).await?;
        eprintln!("segmenta stopped");
        Ok(())
    })
}
