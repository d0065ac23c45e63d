//! `client segment`: upload a log, run the segment job on the server and
//! download what it made.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use segmenta::backend::BackendChoice;
use segmenta::data::TableFormat;
use segmenta::segmentation::sweep::parse_k_range;
use segmenta::segmentation::SegmentationError;
use segmenta::service::proto as pb;

use super::{proto_backend, proto_text_format, watch, Conn};
use crate::cli::column_name;
use crate::cli::LogArgs;

#[derive(Debug, Args)]
pub struct ClientSegmentArgs {
    #[command(flatten)]
    source: LogSourceArgs,
    /// Download the report, charts, customer table, segments.json and
    /// model.json into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of segments (default: chosen from --k-range).
    #[arg(long, conflicts_with = "k_range", value_parser = clap::value_parser!(u32).range(1..))]
    k: Option<u32>,
    /// Try every k in MIN..MAX and keep the recommended one.
    #[arg(long, value_name = "MIN..MAX")]
    k_range: Option<String>,
    /// Recency and tenure are measured to this date (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    as_of: Option<String>,
    /// Also predict lifetime value and churn risk (as `segment --clv`).
    #[arg(long)]
    clv: bool,
    #[command(flatten)]
    value: crate::cli::clv::ValueArgs,
    /// A campaign's control share of each segment (as `segment
    /// --holdout-share`).
    #[arg(long, value_name = "SHARE")]
    holdout_share: Option<f64>,
    /// The campaign's salt (default "segmenta").
    #[arg(long, requires = "holdout_share", value_name = "S")]
    experiment_salt: Option<String>,
    /// A recommended k has no segment below this share of customers.
    #[arg(long, value_name = "FRACTION")]
    min_share: Option<f64>,
    /// Features to cluster on, comma-separated (default: every one with
    /// spread across the customers).
    #[arg(long, value_delimiter = ',', value_name = "NAMES", value_parser = column_name)]
    features: Vec<String>,
    /// Refresh: warm-start from this segmentation (seg-…) and keep its ids.
    #[arg(long)]
    previous: Option<String>,
    #[command(flatten)]
    log: LogArgs,
    /// Stop at the first unreadable row instead of skipping.
    #[arg(long)]
    reject_bad_rows: bool,
    /// Largest fraction of unreadable rows (0–1) before the job fails.
    #[arg(long, value_name = "FRACTION")]
    max_bad_rows: Option<f64>,
    /// Members beyond this percentile of their segment's distances are outliers.
    #[arg(long)]
    outlier_percentile: Option<f64>,
    /// k-means runs per k.
    #[arg(long)]
    n_init: Option<u32>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend on the server (default: the server's).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
}

/// Bytes per upload message, or fewer where the server's message limit
/// is lower.
const CHUNK: usize = 1 << 20;

pub(super) async fn upload_log(
    channel: Conn,
    path: &PathBuf,
    text: Option<pb::TextFormat>,
) -> anyhow::Result<String> {
    use pb::upload_transactions_request::Message;
    let format = match TableFormat::from_path(path)? {
        TableFormat::Csv => pb::FileFormat::Csv,
        TableFormat::Parquet => pb::FileFormat::Parquet,
    };
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // Declared, so a stream cut short is refused rather than stored.
    let size_bytes = file
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .len();
    let header = pb::UploadTransactionsRequest {
        message: Some(Message::Header(pb::TransactionsHeader {
            name,
            format: format as i32,
            text_format: text,
            size_bytes,
        })),
    };
    // Chunks are read as the transport asks for them. A read error must
    // not end the stream as if the file were whole: it sends a second
    // header, which the server refuses, discarding what it received.
    let chunk = CHUNK.min(super::message_budget(channel.clone()).await.0);
    let failed: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>> = Default::default();
    let failure = failed.clone();
    let mut done = false;
    let chunks = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = vec![0u8; chunk];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(pb::UploadTransactionsRequest {
                    message: Some(Message::Chunk(buf)),
                })
            }
            Err(e) => {
                done = true;
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Some(pb::UploadTransactionsRequest {
                    message: Some(Message::Header(pb::TransactionsHeader::default())),
                })
            }
        }
    });
    let messages = tokio_stream::iter(std::iter::once(header).chain(chunks));
    let sent = pb::segmentations_client::SegmentationsClient::new(channel)
        .upload_transactions(messages)
        .await;
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!(
            "cannot read {}: {e} (the upload was abandoned)",
            path.display()
        );
    }
    let log = sent?.into_inner();
    eprintln!(
        "uploaded {} ({} bytes) as {}",
        log.name, log.size_bytes, log.id
    );
    Ok(log.id)
}

pub async fn run(channel: Conn, a: ClientSegmentArgs) -> anyhow::Result<()> {
    use pb::segment_request::{KChoice, Source};
    // Checked before the upload, which would otherwise stay behind.
    if !a.features.is_empty() {
        segmenta::segmentation::asked_features(&a.features)
            .map_err(|e| anyhow::anyhow!("invalid features: {e}"))?;
    }
    // Checked before the upload, too.
    let k_choice = match (a.k, &a.k_range) {
        (Some(k), _) => Some(KChoice::K(k)),
        (None, Some(r)) => {
            let r = parse_k_range(r).ok_or_else(|| SegmentationError::BadKRange(r.clone()))?;
            Some(KChoice::KRange(pb::KRange {
                min: *r.start() as u32,
                max: *r.end() as u32,
            }))
        }
        (None, None) => None,
    };
    let text = proto_text_format(&a.log.format());
    let log = resolve_log(&channel, &a.source, text.clone()).await?;
    let source = match &log {
        LogRef::Id(id) | LogRef::Uploaded(id) => Source::TransactionsId(id.clone()),
        LogRef::Path(p) => Source::TransactionsPath(p.clone()),
    };
    let request = pb::SegmentRequest {
        source: Some(source),
        columns: Some(proto_columns(&a.log)),
        k_choice,
        as_of: a.as_of.unwrap_or_default(),
        previous_segmentation_id: a.previous.unwrap_or_default(),
        bad_rows: if a.reject_bad_rows {
            pb::BadRowPolicy::Reject
        } else {
            pb::BadRowPolicy::Skip
        } as i32,
        outlier_percentile: a.outlier_percentile.unwrap_or(0.0),
        seed: a.seed,
        n_init: a.n_init.unwrap_or(0),
        backend: proto_backend(a.backend) as i32,
        text_format: text,
        max_bad_rows: a.max_bad_rows,
        features: a.features,
        min_share: a.min_share,
        value: a.clv.then(|| pb::ValueOptions {
            enabled: true,
            ..proto_value(&a.value.options())
        }),
        experiment: a.holdout_share.map(|holdout_share| pb::ExperimentOptions {
            holdout_share,
            salt: a.experiment_salt.unwrap_or_default(),
        }),
    };
    let mut client = pb::segmentations_client::SegmentationsClient::new(channel.clone());
    let ran: anyhow::Result<_> = async {
        let job = client.clone().segment(request).await?.into_inner();
        let finished = watch(channel.clone(), &job.id).await?;
        Ok((job, finished))
    }
    .await;
    let (job, finished) = log.forget_on_failure(&channel, ran).await?;
    let Some(pb::job::Result::Segmentation(seg)) = finished.result else {
        anyhow::bail!("job {} finished without a segmentation", job.id);
    };
    if let Some(dir) = &a.out {
        download_all(&mut client, &seg.id, &seg.artifacts, dir).await?;
        say_downloaded(&seg.artifacts, dir, "report.html")?;
    }
    Ok(())
}

/// Where the downloads went, and the page to open.
pub(super) fn say_downloaded(
    names: &[String],
    dir: &std::path::Path,
    page: &str,
) -> std::io::Result<()> {
    say!(
        "{} files downloaded into {}; open {}",
        names.len(),
        dir.display(),
        dir.join(page).display()
    );
    Ok(())
}

/// Where a job's transaction log is: a local file to upload, a log
/// uploaded before, or a file on the server.
#[derive(Debug, Args)]
pub struct LogSourceArgs {
    /// A local transaction log (CSV/TSV or Parquet), uploaded first.
    #[arg(long, required_unless_present_any = ["transactions_id", "server_path"])]
    transactions: Option<PathBuf>,
    /// A log uploaded before (tx-…).
    #[arg(long, conflicts_with_all = ["transactions", "server_path"])]
    transactions_id: Option<String>,
    /// A log under one of the server's import roots.
    #[arg(long, conflicts_with = "transactions")]
    server_path: Option<String>,
}

pub(super) enum LogRef {
    Id(String),
    /// Uploaded by this command: deleted again if its job fails.
    Uploaded(String),
    Path(String),
}

impl LogRef {
    /// After a job that surely failed (the server refused it, or ended it
    /// without success): a log this command uploaded is deleted, as the
    /// Python client does (a later refresh needs only a successful run's
    /// log). Deleting needs an admin key; otherwise a warning names it. A
    /// lost connection or a closed stdout says nothing of the job, which
    /// may still be running: its log stays.
    pub(super) async fn forget_on_failure<T>(
        &self,
        channel: &Conn,
        outcome: anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let (Err(e), Self::Uploaded(id)) = (&outcome, self) else {
            return outcome;
        };
        let refused = e
            .downcast_ref::<tonic::Status>()
            .is_some_and(|s| std::error::Error::source(s).is_none());
        if !(refused || e.is::<super::JobEnded>()) {
            if !crate::is_closed_stdout(e) {
                eprintln!("the uploaded log {id} stays on the server, for the job");
            }
            return outcome;
        }
        let deleted = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            pb::segmentations_client::SegmentationsClient::new(channel.clone())
                .delete_transactions(pb::DeleteTransactionsRequest {
                    id: id.clone(),
                    cascade: false,
                }),
        )
        .await;
        match deleted {
            Ok(Ok(_)) => eprintln!("the uploaded log {id} was deleted, as the job failed"),
            Ok(Err(e)) => eprintln!(
                "warning: the uploaded log {id} stays on the server ({}); delete it with \
                 `segmenta client delete {id}`",
                super::status_line(&e)
            ),
            Err(_) => eprintln!(
                "warning: the uploaded log {id} stays on the server (no answer to its deletion); \
                 delete it with `segmenta client delete {id}`"
            ),
        }
        outcome
    }
}

/// Uploads a local log, or names the one given.
pub(super) async fn resolve_log(
    channel: &Conn,
    a: &LogSourceArgs,
    text: Option<pb::TextFormat>,
) -> anyhow::Result<LogRef> {
    Ok(
        match (&a.transactions, &a.transactions_id, &a.server_path) {
            (Some(path), _, _) => LogRef::Uploaded(upload_log(channel.clone(), path, text).await?),
            (None, Some(id), _) => LogRef::Id(id.clone()),
            (None, None, Some(p)) => LogRef::Path(p.clone()),
            (None, None, None) => {
                anyhow::bail!("give --transactions, --transactions-id or --server-path")
            }
        },
    )
}

pub(super) fn proto_columns(log: &LogArgs) -> pb::TransactionColumns {
    let c = log.columns();
    pb::TransactionColumns {
        customer: c.customer,
        date: c.date,
        amount: c.amount,
        quantity: c.quantity.unwrap_or_default(),
        order: c.order.unwrap_or_default(),
    }
}

/// The value options as the API takes them (`enabled` unset).
pub(super) fn proto_value(v: &segmenta::value::ValueOptions) -> pb::ValueOptions {
    pb::ValueOptions {
        enabled: false,
        time_unit: match v.unit {
            segmenta::value::TimeUnit::Day => pb::TimeUnit::Day,
            segmenta::value::TimeUnit::Week => pb::TimeUnit::Week,
            segmenta::value::TimeUnit::Month => pb::TimeUnit::Month,
        } as i32,
        horizon: v.horizon.unwrap_or(0),
        discount_rate: v.discount_rate,
        churn_high: v.churn.high,
        churn_medium: v.churn.medium,
    }
}

/// Downloads every artifact `names` of a segmentation or CLV run into `dir`.
pub(super) async fn download_all(
    client: &mut pb::segmentations_client::SegmentationsClient<Conn>,
    id: &str,
    names: &[String],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    segmenta::segmentation::create_private_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    for name in names {
        let mut stream = client
            .download_artifact(pb::DownloadArtifactRequest {
                segmentation_id: id.to_owned(),
                name: name.clone(),
            })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        // Names come from the server: keep only a plain file name.
        let file = std::path::Path::new(name)
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("the server named an artifact {name:?}"))?;
        let path = dir.join(file);
        std::fs::write(&path, &bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
