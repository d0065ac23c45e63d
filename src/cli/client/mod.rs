//! `segmenta client …`: talks to a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use segmenta::backend::BackendChoice;
use segmenta::data::{read_table, read_table_limited, read_text_column, ReadLimits, TextFormat};
use segmenta::service::proto as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::kmeans::InitArg;
use super::output::progress_bar;
use super::{column_name, TextArgs};
use segmenta::kmeans::InitSample;

mod info;
mod segment;
mod value;

/// The proto form of a text format; `None` when every option is left at
/// its default, so the server keeps a format stored with an uploaded log.
pub fn proto_text_format(f: &TextFormat) -> Option<pb::TextFormat> {
    (f != &TextFormat::default()).then(|| pb::TextFormat {
        delimiter: f.delimiter.map_or(String::new(), |d| d.shown().to_owned()),
        decimal_comma: f.decimal_comma,
        date_format: f.date_format.clone().unwrap_or_default(),
    })
}

pub fn proto_backend(b: Option<BackendChoice>) -> pb::Backend {
    match b {
        None => pb::Backend::Unspecified,
        Some(BackendChoice::Auto) => pb::Backend::Auto,
        Some(BackendChoice::Gpu) => pb::Backend::Gpu,
        Some(BackendChoice::Cpu) => pb::Backend::Cpu,
    }
}

fn fit_request(f: FitArgs) -> anyhow::Result<pb::FitKMeansRequest> {
    let (init, initial_centroids) = match &f.init_centroids {
        Some(path) => {
            let names: Vec<String> = f.columns.clone();
            let c = read_table(path, &names)?;
            (pb::InitMethod::Given, c.values.iter().copied().collect())
        }
        None => (
            match f.init {
                InitArg::KMeansPlusPlus => pb::InitMethod::KmeansPlusPlus,
                InitArg::KMeansParallel => pb::InitMethod::KmeansParallel,
                InitArg::Random => pb::InitMethod::Random,
            },
            Vec::new(),
        ),
    };
    Ok(pb::FitKMeansRequest {
        dataset_id: f.dataset,
        k: f.k,
        columns: f.columns,
        init: init as i32,
        initial_centroids,
        init_sample_rows: match f.init_sample {
            InitSample::Auto => None,
            InitSample::All => Some(0),
            InitSample::Rows(rows) => Some(rows as u64),
        },
        n_init: f.n_init,
        max_iter: f.max_iter.unwrap_or(0),
        tol: Some(f.tol),
        seed: f.seed,
        backend: proto_backend(f.backend) as i32,
        standardize: f.standardize,
        weights_column: f.weights.unwrap_or_default(),
    })
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address: HOST:PORT (the form `serve --addr` takes) or a URL.
    #[arg(
        long,
        default_value = "127.0.0.1:50051",
        env = "SEGMENTA_SERVER",
        global = true
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer KEY`.
    #[arg(long, env = "SEGMENTA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Connect with TLS, trusting this CA certificate (PEM).
    #[arg(long, env = "SEGMENTA_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (mutual TLS).
    #[arg(
        long,
        env = "SEGMENTA_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "SEGMENTA_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload a local CSV/TSV or Parquet file as a dataset.
    Upload {
        /// The file (CSV/TSV with a header row, or Parquet).
        #[arg(long)]
        input: PathBuf,
        /// Columns to upload, comma-separated (default: all; all numeric).
        #[arg(long, value_delimiter = ',', value_parser = column_name)]
        columns: Vec<String>,
        /// Dataset name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        text: TextArgs,
    },
    /// Have the server import a file under one of its import roots (a job).
    Import {
        /// Path on the server.
        #[arg(long)]
        path: String,
        /// Columns to keep, comma-separated (default: all; all numeric).
        #[arg(long, value_delimiter = ',', value_parser = column_name)]
        columns: Vec<String>,
        /// Dataset name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        text: TextArgs,
    },
    /// Fit k-means on a dataset and follow the job.
    Fit(FitArgs),
    /// Fit PCA on a dataset and follow the job.
    Pca {
        /// Dataset id (ds-…).
        #[arg(long)]
        dataset: String,
        /// Number of principal components to keep.
        #[arg(long)]
        n_components: u32,
        /// Columns to use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',', value_parser = column_name)]
        columns: Vec<String>,
        /// Scale projected components to unit variance.
        #[arg(long)]
        whiten: bool,
        /// Backend on the server (default: the server's).
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Segment customers: upload a transaction log (or name one on the
    /// server), run the segment job, download its report and tables.
    Segment(Box<segment::ClientSegmentArgs>),
    /// Lifetime value and churn risk (as `segmenta clv`) on the server:
    /// upload a log (or name one), run the job, print the fits and download
    /// its report and tables.
    Clv(Box<value::ClientClvArgs>),
    /// A campaign's uplift (as `segmenta uplift`) on a segmentation's
    /// groups: streams a local outcomes file; writes the page locally.
    Uplift(value::ClientUpliftArgs),
    /// Follow a job until it ends.
    Watch {
        /// Job id (job-…).
        job: String,
    },
    /// Cancel a job.
    Cancel {
        /// Job id (job-…).
        job: String,
    },
    /// Assign the rows of a local file to a model's clusters; prints CSV:
    /// id (or row), label, distance, margin.
    Assign {
        /// k-means model or segmentation id (km-…, seg-…).
        #[arg(long)]
        model: String,
        /// The rows, with the model's feature columns.
        #[arg(long)]
        input: PathBuf,
        /// Feature columns, comma-separated, in the model's order (default:
        /// the model's columns, by name).
        #[arg(long, value_delimiter = ',', value_parser = column_name)]
        columns: Vec<String>,
        /// Column whose values name each row in the output (default: row numbers).
        #[arg(long, value_parser = column_name)]
        id_col: Option<String>,
        #[command(flatten)]
        text: TextArgs,
    },
    /// Save a stored model as a model file (for `segmenta assign --model`).
    ExportModel {
        /// Model or segmentation id (km-…, pca-…, seg-…).
        id: String,
        /// Where the model file goes.
        #[arg(long)]
        out: PathBuf,
    },
    /// Register a model file (`kmeans --save-model`, `pca --save-model`, a
    /// segment run's model.json) with the server; prints the new model id.
    ImportModel {
        /// The model file.
        file: PathBuf,
    },
    /// List datasets.
    Datasets,
    /// List models.
    Models,
    /// List uploaded transaction logs.
    Transactions,
    /// Delete a dataset (ds-…), a model (km-…, pca-…), a transaction log
    /// (tx-…), a segmentation (seg-…) or a CLV run (clv-…). Needs the admin
    /// role.
    Delete {
        /// The object's id.
        id: String,
        /// Also delete what was made from it (models of a dataset,
        /// segmentations and CLV runs of a log); without it, such a delete
        /// is refused.
        #[arg(long)]
        cascade: bool,
    },
    /// Remove one customer from every stored log, output and job record
    /// (GDPR Art. 17). Needs the admin role.
    EraseCustomer {
        /// The customer id exactly as the logs write it.
        id: String,
    },
    /// Server version, backends, security settings and limits.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `client fit`: every k-means option the server takes.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Dataset id (ds-…).
    #[arg(long)]
    dataset: String,
    /// Number of clusters.
    #[arg(long)]
    k: u32,
    /// Feature columns, comma-separated (default: all but --weights).
    #[arg(long, value_delimiter = ',', value_parser = column_name)]
    columns: Vec<String>,
    /// How the first centroids are chosen.
    #[arg(long, value_enum, default_value = "k-means++")]
    init: InitArg,
    /// Start from these centroids instead (local CSV/Parquet, k rows, the
    /// feature columns in order, original units).
    #[arg(long, conflicts_with = "init")]
    init_centroids: Option<PathBuf>,
    /// Rows k-means++ and k-means|| draw from: `auto`, `all` or a number
    /// of rows (as `segmenta kmeans --init-sample`).
    #[arg(
        long,
        default_value = "auto",
        value_parser = super::kmeans::parse_init_sample,
        conflicts_with = "init_centroids"
    )]
    init_sample: InitSample,
    /// Runs from different seeds; the lowest inertia wins.
    #[arg(long, default_value_t = 1)]
    n_init: u32,
    /// Most Lloyd iterations per run (default 300, or what the server's
    /// max_iterations allows).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_iter: Option<u32>,
    /// Convergence tolerance, relative to the mean feature variance.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Scale every feature to unit variance first (stored with the model).
    #[arg(long)]
    standardize: bool,
    /// Dataset column holding sample weights (not used as a feature).
    #[arg(long, value_parser = column_name)]
    weights: Option<String>,
    /// Backend on the server (default: the server's).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Print the job id at once instead of following it.
    #[arg(long)]
    detach: bool,
}

/// Values per upload message: about 2 MiB, or less where the server's
/// message limit is lower ([`message_budget`]).
const BLOCK_VALUES: usize = 512 * 1024;

/// Bytes one request may take: half the server's message limit (GetInfo),
/// so framing and the other fields never tip it over; 2 MiB where the
/// server does not say.
pub(super) async fn message_budget(channel: Conn) -> (usize, Option<pb::Limits>) {
    let limits = pb::server_client::ServerClient::new(channel)
        .get_info(pb::GetInfoRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().limits);
    let budget = limits.as_ref().map_or(2 << 20, |l| {
        usize::try_from(l.max_message_bytes / 2).unwrap_or(usize::MAX)
    });
    (budget.max(1024), limits)
}

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let plaintext = (args.ca_cert.is_none() && !args.server.starts_with("https://"))
        .then(|| args.server.trim_start_matches("http://").to_owned());
    let client_cert = args.client_cert.is_some();
    tokio::runtime::Runtime::new()?.block_on(async {
        match run_async(args).await {
            Ok(()) => Ok(()),
            Err(e) => Err(match e.downcast::<tonic::Status>() {
                Ok(status) => {
                    let line = status_line(&status);
                    if !no_answer(&status) {
                        return Err(anyhow::anyhow!("{line}"));
                    }
                    match &plaintext {
                        Some(addr) if speaks_tls(addr).await => anyhow::anyhow!(
                            "{line} (the server speaks TLS and this client did not: connect with \
                             --ca-cert CA.pem, or SEGMENTA_CA_CERT)"
                        ),
                        Some(_) => anyhow::anyhow!("{line}"),
                        None => {
                            // The transport's causes name a TLS alert, if any.
                            let chain = crate::error_chain(&status);
                            // Else the likely cause, said as a condition: a
                            // server that checks client certificates ends
                            // the connection without a status.
                            let hint = tls_hint(&chain, client_cert).unwrap_or(if client_cert {
                                "if the server checks client certificates, it did not accept \
                                 this one: it must be issued by the CA the server trusts"
                            } else {
                                "if the server requires client certificates, pass --client-cert \
                                 and --client-key"
                            });
                            anyhow::anyhow!("{chain} ({hint})")
                        }
                    }
                }
                Err(e) => e,
            }),
        }
    })
}

/// What a TLS failure most likely means, from the names rustls gives its
/// alerts and certificate errors in the error's text.
fn tls_hint(chain: &str, client_cert: bool) -> Option<&'static str> {
    let has = |s: &str| chain.contains(s);
    if has("InvalidContentType") || has("corrupt message") {
        Some("the server does not speak TLS: connect without --ca-cert")
    } else if has("CertificateRequired") || (!client_cert && has("HandshakeFailure")) {
        Some("the server requires a client certificate (mutual TLS): pass --client-cert and --client-key")
    } else if client_cert && (has("UnknownCA") || has("BadCertificate") || has("DecryptError")) {
        Some(
            "the server did not accept the client certificate: it must be issued by the CA the \
             server trusts (its --tls-client-ca)",
        )
    } else if has("UnsupportedCertVersion") {
        Some(
            "an X.509 version 1 certificate: TLS needs version 3 (with openssl, sign it with \
             `-extfile` naming a subjectAltName)",
        )
    } else if has("UnknownIssuer") {
        Some("the server's certificate is not issued by the CA in --ca-cert")
    } else if has("NotValidForName") {
        Some("the server's certificate does not name the host in --server")
    } else {
        None
    }
}

/// The codes a call gets without a gRPC status from the server (a
/// protocol error, a reset, a cancelled call), as a plaintext client does
/// at a TLS port. A server can send them too: [`speaks_tls`] tells which.
fn no_answer(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(status.code(), Internal | Unknown | Cancelled | Unavailable)
}

/// Whether `addr` answers the HTTP/2 preface with a TLS record (an alert,
/// 0x15, or a handshake, 0x16): then the failure was a plaintext client
/// at a TLS port, and the hint is sure, not a guess.
async fn speaks_tls(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = std::time::Duration::from_secs(2);
    let addr = addr.split('/').next().unwrap_or(addr);
    let Ok(Ok(mut socket)) = tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, socket.read(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x15 || first[0] == 0x16
    )
}

/// A job the server ended without success (failed or cancelled): unlike
/// a lost stream, a sure sign the job is over.
#[derive(Debug, thiserror::Error)]
#[error("job {id} ended: {error}")]
pub struct JobEnded {
    pub id: String,
    pub error: String,
}

/// A status as the server meant it: its code's gRPC name and its message.
pub fn status_line(status: &tonic::Status) -> String {
    use tonic::Code::*;
    let name = match status.code() {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    };
    let message = status.message();
    if message.is_empty() {
        format!("{name} (the server gave no message)")
    } else {
        format!("{name}: {message}")
    }
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the API key (if any).
pub type Conn = InterceptedService<Channel, Bearer>;

pub fn with_token(channel: Channel, token: Option<&str>) -> anyhow::Result<Conn> {
    if token.is_some_and(|t| t.trim().is_empty()) {
        anyhow::bail!("the API key is empty (--token, or SEGMENTA_TOKEN set to nothing)");
    }
    let value = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .map_err(|_| anyhow::anyhow!("the API key has characters a header cannot carry"))?;
    Ok(InterceptedService::new(channel, Bearer(value)))
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Conn> {
    let tls = args.ca_cert.is_some();
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("{}://{}", if tls { "https" } else { "http" }, args.server)
    };
    let mut endpoint = segmenta::service::endpoint(&url).map_err(|e| {
        anyhow::anyhow!(
            "bad server address {:?}: {}",
            args.server,
            crate::error_chain(&e)
        )
    })?;
    if let Some(ca) = &args.ca_cert {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        let client_cert = args.client_cert.is_some();
        endpoint = endpoint.tls_config(config).map_err(|e| {
            let chain = crate::error_chain(&e);
            match tls_hint(&chain, client_cert) {
                Some(hint) => anyhow::anyhow!("TLS: {chain} ({hint})"),
                None => anyhow::anyhow!("TLS: {chain}"),
            }
        })?;
    }
    let client_cert = args.client_cert.is_some();
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = crate::error_chain(&e);
        match tls.then(|| tls_hint(&chain, client_cert)).flatten() {
            Some(hint) => anyhow::anyhow!("cannot connect to {url}: {chain} ({hint})"),
            None => anyhow::anyhow!("cannot connect to {url}: {chain}"),
        }
    })?;
    with_token(channel, args.token.as_deref())
}

async fn run_async(args: ClientArgs) -> anyhow::Result<()> {
    let channel = connect(&args).await?;
    let max = 64 << 20;
    match args.command {
        ClientCommand::Upload {
            input,
            columns,
            name,
            text,
        } => {
            let data = read_table_limited(&input, &columns, &text.format(None), ReadLimits::NONE)?;
            let name = name.unwrap_or_else(|| {
                input
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            });
            let values: std::sync::Arc<[f32]> = data.values.iter().copied().collect();
            let dataset = upload(channel, &name, data.columns.clone(), values).await?;
            say!(
                "uploaded {} rows × {} columns as {}",
                dataset.n_rows,
                dataset.n_cols,
                dataset.id
            );
        }
        ClientCommand::Import {
            path,
            columns,
            name,
            text,
        } => {
            let job = pb::datasets_client::DatasetsClient::new(channel.clone())
                .import(pb::ImportRequest {
                    path,
                    columns,
                    name: name.unwrap_or_default(),
                    text_format: proto_text_format(&text.format(None)),
                })
                .await?
                .into_inner();
            watch(channel, &job.id).await?;
        }
        ClientCommand::Fit(fit) => {
            let detach = fit.detach;
            let request = fit_request(fit)?;
            let job = pb::clustering_client::ClusteringClient::new(channel.clone())
                .max_encoding_message_size(max)
                .fit_k_means(request)
                .await?
                .into_inner();
            if detach {
                say!("{}", job.id);
            } else {
                watch(channel, &job.id).await?;
            }
        }
        ClientCommand::Segment(a) => segment::run(channel, *a).await?,
        ClientCommand::Clv(a) => value::clv(channel, *a).await?,
        ClientCommand::Uplift(a) => value::uplift(channel, a).await?,
        ClientCommand::Pca {
            dataset,
            n_components,
            columns,
            whiten,
            backend,
        } => {
            let request = pb::FitPcaRequest {
                dataset_id: dataset,
                n_components,
                columns,
                whiten,
                backend: proto_backend(backend) as i32,
            };
            let job = pb::decomposition_client::DecompositionClient::new(channel.clone())
                .fit_pca(request)
                .await?
                .into_inner();
            watch(channel, &job.id).await?;
        }
        ClientCommand::Watch { job } => {
            watch(channel, &job).await?;
        }
        ClientCommand::Cancel { job } => {
            let job = pb::jobs_client::JobsClient::new(channel)
                .cancel_job(pb::CancelJobRequest { id: job })
                .await?
                .into_inner();
            // A job that had ended is left as it ended: say so.
            match pb::JobState::try_from(job.state) {
                Ok(pb::JobState::Succeeded) => {
                    say!("{} had already succeeded: nothing to cancel", job.id)
                }
                Ok(pb::JobState::Failed) => {
                    say!("{} had already failed: nothing to cancel", job.id)
                }
                Ok(pb::JobState::Cancelled) => say!("{} is cancelled", job.id),
                _ => say!("cancel requested for {}", job.id),
            }
        }
        ClientCommand::Assign {
            model,
            input,
            columns,
            id_col,
            text,
        } => {
            let format = text.format(None);
            // By default the model's own columns, by name: an id column
            // or any other beside them is never sent as a feature.
            let mut shape = model_shape(channel.clone(), &model, max).await?;
            // A server from before segment models carried their ids: the
            // segmentation says them.
            let mut legacy_ids: Vec<u32> = Vec::new();
            if shape.descriptions.is_empty() && model.starts_with("seg-") {
                let seg = pb::segmentations_client::SegmentationsClient::new(channel.clone())
                    .get_segmentation(pb::GetSegmentationRequest { id: model.clone() })
                    .await?
                    .into_inner();
                legacy_ids = seg.segments.iter().map(|p| p.id).collect();
                shape.descriptions = seg.segments.into_iter().map(|p| p.description).collect();
            }
            let columns = if columns.is_empty() {
                shape.columns.clone()
            } else {
                columns
            };
            let data = read_table_limited(&input, &columns, &format, ReadLimits::NONE)?;
            let ids = match &id_col {
                Some(col) => Some(read_text_column(&input, col, &format)?),
                None => None,
            };
            let mut r =
                assign_in_requests(channel, &model, data.values.view(), shape.k, max).await?;
            if r.segments.is_empty() && !legacy_ids.is_empty() {
                r.segments = r
                    .labels
                    .iter()
                    .map(|&l| legacy_ids.get(l as usize).copied().unwrap_or(l))
                    .collect();
            }
            let mut out = csv::Writer::from_writer(crate::cli::MarkedStdout);
            // A segment model (a segmentation, or an imported model.json)
            // answers in its stable segment ids, with descriptions, as
            // offline `assign` writes them.
            let segment_model = !shape.descriptions.is_empty();
            if segment_model && r.segments.len() != r.labels.len() {
                anyhow::bail!("the server sent no segment ids for segment model {model}");
            }
            let header: &[&str] = if segment_model {
                &["segment", "description", "distance", "margin"]
            } else {
                &["label", "distance", "margin"]
            };
            out.write_record(
                std::iter::once(id_col.as_deref().unwrap_or("row")).chain(header.iter().copied()),
            )
            .map_err(crate::cli::csv_error)?;
            for i in 0..r.labels.len() {
                let id = ids.as_ref().map_or_else(
                    || (i + 1).to_string(),
                    |ids| ids.get(i).cloned().unwrap_or_default(),
                );
                let label = r.labels[i];
                let margin = r.margins.get(i).map_or(String::new(), |m| m.to_string());
                let distance = r.distances[i].to_string();
                let record = if segment_model {
                    let description = shape
                        .descriptions
                        .get(label as usize)
                        .cloned()
                        .unwrap_or_default();
                    vec![id, r.segments[i].to_string(), description, distance, margin]
                } else {
                    vec![id, label.to_string(), distance, margin]
                };
                out.write_record(record).map_err(crate::cli::csv_error)?;
            }
            out.flush().map_err(crate::cli::stdout_failed)?;
        }
        ClientCommand::ExportModel { id, out } => {
            match id_kind(&id) {
                Some(IdKind::Model) => {}
                Some(kind) => anyhow::bail!(
                    "{id} is {}: only models (km-…, pca-…) and segmentations (seg-…) export",
                    kind.name()
                ),
                None => anyhow::bail!("{id} is not an id Segmenta gives: {ID_FORMS}"),
            }
            let file = pb::models_client::ModelsClient::new(channel)
                .max_decoding_message_size(max)
                .export(pb::GetModelRequest { id: id.clone() })
                .await?
                .into_inner();
            std::fs::write(&out, &file.content)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            say!("model {id} saved to {}", out.display());
        }
        ClientCommand::ImportModel { file } => {
            let content = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let model = pb::models_client::ModelsClient::new(channel)
                .max_encoding_message_size(max)
                .import(pb::ImportModelRequest { content })
                .await?
                .into_inner();
            match model.model {
                Some(pb::model::Model::Kmeans(k)) => say!("{}  k-means k = {}", k.id, k.k),
                Some(pb::model::Model::Pca(p)) => {
                    say!("{}  PCA {} components", p.id, p.n_components)
                }
                None => {}
            }
        }
        ClientCommand::Datasets => {
            let client = pb::datasets_client::DatasetsClient::new(channel);
            let all = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list(pb::ListDatasetsRequest {
                            page_size: 0,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.datasets, page.next_page_token))
                }
            })
            .await?;
            if all.is_empty() {
                say!("no datasets");
            }
            for d in all {
                say!(
                    "{}  {:>10} rows × {:<3} {}  [{}]",
                    d.id,
                    d.n_rows,
                    d.n_cols,
                    d.name,
                    d.columns.join(",")
                );
            }
        }
        ClientCommand::Transactions => {
            let client = pb::segmentations_client::SegmentationsClient::new(channel);
            let all = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_transactions(pb::ListTransactionsRequest {
                            page_size: 0,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.transactions, page.next_page_token))
                }
            })
            .await?;
            if all.is_empty() {
                say!("no transaction logs");
            }
            for t in all {
                say!("{}  {:>12} bytes  {}", t.id, t.size_bytes, t.name);
            }
        }
        ClientCommand::Models => {
            let client = pb::models_client::ModelsClient::new(channel);
            let all = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list(pb::ListModelsRequest {
                            page_size: 0,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.models, page.next_page_token))
                }
            })
            .await?;
            // Where a model came from, in words: an imported model (a
            // model file, or a Python estimator's, whose rows were deleted)
            // and a distributed fit have no dataset.
            let origin = |dataset: &str| match dataset {
                "imported" => "imported from a model file, no dataset".to_owned(),
                "distributed" => "a distributed fit, no dataset".to_owned(),
                id => format!("dataset {id}"),
            };
            if all.is_empty() {
                say!("no models");
            }
            for m in all {
                match m.model {
                    Some(pb::model::Model::Kmeans(k)) => say!(
                        "{}  k-means k = {}, inertia {:.6e}, {}",
                        k.id,
                        k.k,
                        k.inertia,
                        origin(&k.dataset_id)
                    ),
                    Some(pb::model::Model::Pca(p)) => say!(
                        "{}  PCA {} components, {}",
                        p.id,
                        p.n_components,
                        origin(&p.dataset_id)
                    ),
                    None => {}
                }
            }
        }
        ClientCommand::Delete { id, cascade } => {
            let Some(kind) = id_kind(&id) else {
                anyhow::bail!("{id} is not an id Segmenta gives: {ID_FORMS}");
            };
            let response = match kind {
                IdKind::Dataset => {
                    pb::datasets_client::DatasetsClient::new(channel)
                        .delete(pb::DeleteDatasetRequest {
                            id: id.clone(),
                            cascade,
                        })
                        .await?
                }
                IdKind::Transactions => {
                    pb::segmentations_client::SegmentationsClient::new(channel)
                        .delete_transactions(pb::DeleteTransactionsRequest {
                            id: id.clone(),
                            cascade,
                        })
                        .await?
                }
                // A segmentation goes with its outputs, not as a model alone.
                IdKind::Clv | IdKind::Model => {
                    if kind == IdKind::Clv || id.starts_with("seg-") {
                        pb::segmentations_client::SegmentationsClient::new(channel)
                            .delete_segmentation(pb::DeleteSegmentationRequest { id: id.clone() })
                            .await?
                    } else {
                        pb::models_client::ModelsClient::new(channel)
                            .delete(pb::DeleteModelRequest { id: id.clone() })
                            .await?
                    }
                }
                IdKind::Job => anyhow::bail!(
                    "{id} is a job: jobs are not deleted (the server forgets them after \
                     --job-retention; `client cancel` stops a running one)"
                ),
            };
            for deleted in response.into_inner().deleted_ids {
                say!("deleted {deleted}");
            }
        }
        ClientCommand::EraseCustomer { id } => {
            let changed = pb::privacy_client::PrivacyClient::new(channel)
                .erase_customer(pb::EraseCustomerRequest { customer_id: id })
                .await?
                .into_inner()
                .changed;
            if changed.is_empty() {
                say!("no stored object named that customer");
            }
            for c in changed {
                say!("{} {}: {} rows removed", c.kind, c.id, c.rows_removed);
            }
        }
        ClientCommand::Info { json } => {
            let info = pb::server_client::ServerClient::new(channel)
                .get_info(pb::GetInfoRequest {})
                .await?
                .into_inner();
            if json {
                say!("{}", info::json(&info));
            } else {
                say!("{}", info::text(&info).trim_end_matches('\n'));
            }
        }
    }
    Ok(())
}

/// What `client assign` needs of a k-means model or segmentation.
struct ModelShape {
    columns: Vec<String>,
    k: usize,
    /// A segment model's description per centroid row; empty otherwise.
    descriptions: Vec<String>,
}

async fn model_shape(channel: Conn, model: &str, max: usize) -> anyhow::Result<ModelShape> {
    let got = pb::models_client::ModelsClient::new(channel)
        .max_decoding_message_size(max)
        .get(pb::GetModelRequest {
            id: model.to_owned(),
        })
        .await?
        .into_inner();
    match got.model {
        Some(pb::model::Model::Kmeans(m)) => Ok(ModelShape {
            k: m.k as usize,
            columns: m.columns,
            descriptions: m.segment_descriptions,
        }),
        Some(pb::model::Model::Pca(_)) => anyhow::bail!(
            "{model} is a PCA model: client assign takes a k-means model or a segmentation"
        ),
        None => anyhow::bail!("the server sent model {model} without its content"),
    }
}

/// Assigns `rows` in as many requests as the server's limits need (rows
/// per request under `max_assign_rows` and the work limit of one call,
/// bytes under half the message limit and this client's own), one after
/// another; the answers are joined in order.
async fn assign_in_requests(
    channel: Conn,
    model: &str,
    rows: ndarray::ArrayView2<'_, f32>,
    k: usize,
    max: usize,
) -> anyhow::Result<pb::AssignResponse> {
    let (budget, limits) = message_budget(channel.clone()).await;
    let budget = budget.min(max / 2);
    let d = rows.ncols().max(1);
    // A row's answer (label, segment, distance, margin) takes up to 21 bytes.
    let mut per_request = (budget / (4 * d).max(24)).max(1);
    let work = segmenta::service::engine::cost::MAX_ASSIGN_WORK / (k.max(1) * d) as f64;
    per_request = per_request.min((work as usize).max(1));
    if let Some(l) = limits.filter(|l| l.max_assign_rows > 0) {
        per_request = per_request.min(usize::try_from(l.max_assign_rows).unwrap_or(usize::MAX));
    }
    let mut client = pb::clustering_client::ClusteringClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let mut all = pb::AssignResponse::default();
    for chunk in rows.axis_chunks_iter(ndarray::Axis(0), per_request) {
        let r = client
            .assign(pb::AssignRequest {
                model_id: model.to_owned(),
                rows: chunk.iter().copied().collect(),
                n_features: d as u32,
            })
            .await?
            .into_inner();
        all.labels.extend(r.labels);
        all.segments.extend(r.segments);
        all.distances.extend(r.distances);
        all.margins.extend(r.margins);
    }
    Ok(all)
}

/// Every page of a list: `fetch(token)` returns a page and the next token
/// (empty after the last page).
async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        all.extend(page);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// Streams `values` (row-major) as whole-row blocks after a header; blocks
/// are built as the transport asks for them, not all up front.
pub async fn upload(
    channel: Conn,
    name: &str,
    columns: Vec<String>,
    values: std::sync::Arc<[f32]>,
) -> anyhow::Result<pb::Dataset> {
    use pb::upload_request::Message;
    let width = columns.len();
    let (budget, _) = message_budget(channel.clone()).await;
    let block = (BLOCK_VALUES.min(budget / 4) / width).max(1) * width;
    let header = pb::UploadRequest {
        message: Some(Message::Header(pb::UploadHeader {
            name: name.to_owned(),
            n_rows: (values.len() / width.max(1)) as u64,
            columns,
        })),
    };
    let n_blocks = values.len().div_ceil(block);
    let blocks = (0..n_blocks).map(move |b| {
        let rows = &values[b * block..((b + 1) * block).min(values.len())];
        let mut bytes = Vec::with_capacity(4 * rows.len());
        for v in rows {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        pb::UploadRequest {
            message: Some(Message::Rows(pb::RowBlock {
                values: Vec::new(),
                values_f32le: bytes.into(),
            })),
        }
    });
    let messages = tokio_stream::iter(std::iter::once(header).chain(blocks));
    let mut client = pb::datasets_client::DatasetsClient::new(channel);
    Ok(client.upload(messages).await?.into_inner())
}

/// Follows a job without a word on stdout (for `--json`): the finished
/// job, or its error.
async fn wait_quietly(channel: Conn, id: &str) -> anyhow::Result<pb::Job> {
    let mut events = pb::jobs_client::JobsClient::new(channel)
        .watch_job(pb::WatchJobRequest { id: id.to_owned() })
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        if let Some(pb::job_event::Event::Finished(job)) = event.event {
            return match pb::JobState::try_from(job.state) {
                Ok(pb::JobState::Succeeded) => Ok(job),
                _ => {
                    return Err(JobEnded {
                        id: id.to_owned(),
                        error: job.error,
                    }
                    .into())
                }
            };
        }
    }
    anyhow::bail!(
        "the server closed the stream before job {id} finished (`segmenta client watch {id}` \
         follows it)"
    )
}

/// Follows a job with a progress bar; prints its result and returns the
/// finished job, or fails with its error.
/// What an id names, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Dataset,
    Transactions,
    /// A k-means or PCA model, or a segmentation (also a model).
    Model,
    Clv,
    Job,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            IdKind::Dataset => "a dataset",
            IdKind::Transactions => "a transaction log",
            IdKind::Model => "a model",
            IdKind::Clv => "a CLV run",
            IdKind::Job => "a job",
        }
    }
}

const ID_FORMS: &str = "ids begin ds-, tx-, km-, pca-, seg-, clv- or job-";

fn id_kind(id: &str) -> Option<IdKind> {
    let (prefix, _) = id.split_once('-')?;
    Some(match prefix {
        "ds" => IdKind::Dataset,
        "tx" => IdKind::Transactions,
        "km" | "pca" | "seg" => IdKind::Model,
        "clv" => IdKind::Clv,
        "job" => IdKind::Job,
        _ => return None,
    })
}

/// What `segmenta segment` warns of, from a segmentation's input summary.
fn segmentation_warnings(i: &pb::InputSummary) {
    // Worded by the library, as `segmenta segment` words it.
    let future = segmenta::segmentation::transactions::FutureLines {
        lines: i.lines_after_today as usize,
        latest: chrono::NaiveDate::parse_from_str(&i.latest_future_date, "%Y-%m-%d").ok(),
        after: None,
    };
    if let Some(w) = future.warning().filter(|_| future.lines > 0) {
        eprintln!("warning: {w}");
    }
    if i.bad_rows > 0 {
        let mut by: Vec<String> = i
            .bad_rows_by_problem
            .iter()
            .map(|(problem, n)| format!("{n} {}", problem.replace('_', " ")))
            .collect();
        by.sort();
        eprintln!(
            "warning: {} of {} rows skipped as unreadable ({})",
            i.bad_rows,
            i.rows_read,
            by.join(", ")
        );
    }
}

async fn watch(channel: Conn, id: &str) -> anyhow::Result<pb::Job> {
    let mut events = pb::jobs_client::JobsClient::new(channel)
        .watch_job(pb::WatchJobRequest { id: id.to_owned() })
        .await?
        .into_inner();
    let bar = progress_bar(1000, false);
    bar.set_message(format!("job {id}"));
    // A stream lost mid-job says nothing of the job, which goes on (or runs
    // again after a restart): the error names it and how to follow it.
    let lost = |status: tonic::Status| {
        anyhow::anyhow!(
            "{} (lost the job's progress stream; job {id} may still be running: \
             `segmenta client watch {id}` follows it)",
            status_line(&status)
        )
    };
    while let Some(event) = events.message().await.map_err(lost)? {
        match event.event {
            Some(pb::job_event::Event::Progress(p)) => {
                bar.set_position((p.fraction * 1000.0) as u64);
                // Iterations and inertia only while a fit reports them.
                bar.set_message(if p.iteration > 0 || p.inertia > 0.0 {
                    format!(
                        "{} iteration {} inertia {:.6e}",
                        p.phase, p.iteration, p.inertia
                    )
                } else {
                    p.phase.clone()
                });
            }
            Some(pb::job_event::Event::Finished(job)) => {
                bar.finish_and_clear();
                match pb::JobState::try_from(job.state) {
                    Ok(pb::JobState::Succeeded) => {
                        match &job.result {
                            Some(pb::job::Result::Dataset(d)) => say!(
                                "dataset {} ({} rows × {} columns)",
                                d.id,
                                d.n_rows,
                                d.n_cols
                            ),
                            Some(pb::job::Result::Kmeans(m)) => {
                                say!(
                                    "model {}: k = {}, {} after {} iterations, inertia {:.6e}, backend {} [{}]",
                                    m.id,
                                    m.k,
                                    if m.converged { "converged" } else { "stopped at max_iter" },
                                    m.n_iter,
                                    m.inertia,
                                    m.backend,
                                    m.adapter
                                );
                                // A large k's sizes would make one endless line.
                                const SHOWN: usize = 32;
                                let sizes = &m.cluster_sizes;
                                if sizes.len() > SHOWN {
                                    say!(
                                        "cluster sizes: {:?} … and {} more",
                                        &sizes[..SHOWN],
                                        sizes.len() - SHOWN
                                    );
                                } else {
                                    say!("cluster sizes: {sizes:?}");
                                }
                            }
                            Some(pb::job::Result::Pca(p)) => say!(
                                "model {}: {} components, explained variance ratio {:?}",
                                p.id,
                                p.n_components,
                                p.explained_variance_ratio
                            ),
                            Some(pb::job::Result::Segmentation(s)) => {
                                if let Some(i) = &s.input {
                                    segmentation_warnings(i);
                                }
                                if !s.value_unavailable.is_empty() {
                                    eprintln!(
                                        "warning: no customer value: {}",
                                        s.value_unavailable
                                    );
                                }
                                say!(
                                    "segmentation {}: {} customers as of {} in {} segments",
                                    s.id,
                                    s.n_customers,
                                    s.as_of,
                                    s.k
                                );
                                if let Some(r) = &s.refresh {
                                    say!("refresh since {}: {}", r.previous_as_of, r.summary);
                                }
                                for p in &s.segments {
                                    say!(
                                        "  segment {}: {} customers ({:.1}%), {}",
                                        p.id,
                                        p.size,
                                        p.share * 100.0,
                                        p.description
                                    );
                                }
                                // As `segmenta segment --holdout-share` says it.
                                let control: u64 = s.segments.iter().map(|p| p.control).sum();
                                if control > 0 {
                                    let each: Vec<String> = s
                                        .segments
                                        .iter()
                                        .map(|p| format!("{}: {} of {}", p.id, p.control, p.size))
                                        .collect();
                                    say!(
                                        "campaign groups: {} treatment, {control} control (per segment: {})",
                                        s.n_customers.saturating_sub(control),
                                        each.join(", ")
                                    );
                                    let summary = segmenta::segmentation::ExperimentSummary {
                                        holdout_share: 0.0,
                                        salt: String::new(),
                                        treatment: s.n_customers.saturating_sub(control) as usize,
                                        control: control as usize,
                                        control_by_segment: s
                                            .segments
                                            .iter()
                                            .map(|p| (p.id, p.control as usize, p.size as usize))
                                            .collect(),
                                    };
                                    if let Some(w) = summary.warning() {
                                        eprintln!("warning: {w}");
                                    }
                                }
                            }
                            Some(pb::job::Result::Clv(c)) => {
                                let b = c.bgnbd.unwrap_or_default();
                                say!(
                                    "CLV run {}: {} customers at {} ({} with a repeat purchase), total predicted value {:.2}",
                                    c.id, c.n_customers, c.calibration_end, c.n_repeat_customers, c.total_clv
                                );
                                say!(
                                    "  BG/NBD r = {:.4}, alpha = {:.4}, a = {:.4}, b = {:.4}",
                                    b.r,
                                    b.alpha,
                                    b.a,
                                    b.b
                                );
                            }
                            None => say!("job {id} succeeded"),
                        }
                        return Ok(job);
                    }
                    _ => {
                        return Err(JobEnded {
                            id: id.to_owned(),
                            error: job.error,
                        }
                        .into())
                    }
                }
            }
            None => {}
        }
    }
    anyhow::bail!(
        "the server closed the stream before job {id} finished (`segmenta client watch {id}` \
         follows it)"
    )
}
