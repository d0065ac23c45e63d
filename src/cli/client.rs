//! `segmenta client …`: talks to a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use segmenta::data::read_table;
use segmenta::service::proto as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::output::progress_bar;

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
    /// Upload a local CSV or Parquet file as a dataset.
    Upload {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Have the server import a file it can read (runs as a job).
    Import {
        #[arg(long)]
        path: String,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
    },
    /// Fit k-means on a dataset and follow the job.
    Fit {
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        k: u32,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        standardize: bool,
        #[arg(long, default_value_t = 1)]
        n_init: u32,
        /// Return the job id at once instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Fit PCA on a dataset and follow the job.
    Pca {
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        n_components: u32,
        #[arg(long)]
        whiten: bool,
    },
    /// Follow a job until it ends.
    Watch { job: String },
    /// Cancel a job.
    Cancel { job: String },
    /// Assign the rows of a local file with a k-means model; prints label, distance, margin.
    Assign {
        #[arg(long)]
        model: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
    },
    /// List datasets.
    Datasets,
    /// List models.
    Models,
    /// Delete a dataset (ds-…), a model (km-…, pca-…), a transaction log
    /// (tx-…) or a segmentation (seg-…). Needs the admin role.
    Delete {
        id: String,
        /// Also delete what was made from it (models of a dataset,
        /// segmentations of a log); without it, such a delete is refused.
        #[arg(long)]
        cascade: bool,
    },
    /// Remove one customer from every stored log, output and job record
    /// (GDPR Art. 17). Needs the admin role.
    EraseCustomer { id: String },
    /// Server version, backends and limits.
    Info,
}

/// Values per upload message: about 2 MiB, well under the 4 MiB default limit.
const BLOCK_VALUES: usize = 512 * 1024;

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        run_async(args)
            .await
            .map_err(|e| match e.downcast::<tonic::Status>() {
                Ok(status) => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
                Err(e) => e,
            })
    })
}

fn print_json<T: std::fmt::Debug>(value: &T) {
    println!("{value:#?}");
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
    let value = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .map_err(|_| anyhow::anyhow!("the API key has characters a header cannot carry"))?;
    Ok(InterceptedService::new(channel, Bearer(value)))
}

/// The whole chain of an error: tonic's "transport error" says little alone.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Conn> {
    let tls = args.ca_cert.is_some();
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("{}://{}", if tls { "https" } else { "http" }, args.server)
    };
    let mut endpoint = segmenta::service::endpoint(&url)
        .map_err(|e| anyhow::anyhow!("bad server address {:?}: {}", args.server, chain(&e)))?;
    if let Some(ca) = &args.ca_cert {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| anyhow::anyhow!("TLS: {}", chain(&e)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {}", chain(&e)))?;
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
        } => {
            let data = read_table(&input, &columns)?;
            let name = name.unwrap_or_else(|| {
                input
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            });
            let values: std::sync::Arc<[f32]> = data.values.iter().copied().collect();
            let dataset = upload(channel, &name, data.columns.clone(), values).await?;
            println!(
                "uploaded {} rows × {} columns as {}",
                dataset.n_rows, dataset.n_cols, dataset.id
            );
        }
        ClientCommand::Import { path, columns } => {
            let job = pb::datasets_client::DatasetsClient::new(channel.clone())
                .import(pb::ImportRequest {
                    path,
                    columns,
                    name: String::new(),
                })
                .await?
                .into_inner();
            watch(channel, &job.id).await?;
        }
        ClientCommand::Fit {
            dataset,
            k,
            columns,
            seed,
            standardize,
            n_init,
            detach,
        } => {
            let request = pb::FitKMeansRequest {
                dataset_id: dataset,
                k,
                columns,
                seed,
                standardize,
                n_init,
                ..Default::default()
            };
            let job = pb::clustering_client::ClusteringClient::new(channel.clone())
                .fit_k_means(request)
                .await?
                .into_inner();
            if detach {
                println!("{}", job.id);
            } else {
                watch(channel, &job.id).await?;
            }
        }
        ClientCommand::Pca {
            dataset,
            n_components,
            whiten,
        } => {
            let request = pb::FitPcaRequest {
                dataset_id: dataset,
                n_components,
                whiten,
                ..Default::default()
            };
            let job = pb::decomposition_client::DecompositionClient::new(channel.clone())
                .fit_pca(request)
                .await?
                .into_inner();
            watch(channel, &job.id).await?;
        }
        ClientCommand::Watch { job } => watch(channel, &job).await?,
        ClientCommand::Cancel { job } => {
            let job = pb::jobs_client::JobsClient::new(channel)
                .cancel_job(pb::CancelJobRequest { id: job })
                .await?
                .into_inner();
            println!("cancel requested for {}", job.id);
        }
        ClientCommand::Assign {
            model,
            input,
            columns,
        } => {
            let data = read_table(&input, &columns)?;
            let mut client = pb::clustering_client::ClusteringClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            let r = client
                .assign(pb::AssignRequest {
                    model_id: model,
                    rows: data.values.iter().copied().collect(),
                })
                .await?
                .into_inner();
            println!("row,label,distance,margin");
            for i in 0..r.labels.len() {
                let margin = r.margins.get(i).map_or(String::new(), |m| m.to_string());
                println!("{},{},{},{}", i + 1, r.labels[i], r.distances[i], margin);
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
            for d in all {
                println!(
                    "{}  {:>10} rows × {:<3} {}  [{}]",
                    d.id,
                    d.n_rows,
                    d.n_cols,
                    d.name,
                    d.columns.join(",")
                );
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
            for m in all {
                match m.model {
                    Some(pb::model::Model::Kmeans(k)) => println!(
                        "{}  k-means k = {}, inertia {:.6e}, dataset {}",
                        k.id, k.k, k.inertia, k.dataset_id
                    ),
                    Some(pb::model::Model::Pca(p)) => println!(
                        "{}  PCA {} components, dataset {}",
                        p.id, p.n_components, p.dataset_id
                    ),
                    None => {}
                }
            }
        }
        ClientCommand::Delete { id, cascade } => {
            let response = if id.starts_with("ds-") {
                pb::datasets_client::DatasetsClient::new(channel)
                    .delete(pb::DeleteDatasetRequest {
                        id: id.clone(),
                        cascade,
                    })
                    .await?
            } else if id.starts_with("tx-") {
                pb::segmentations_client::SegmentationsClient::new(channel)
                    .delete_transactions(pb::DeleteTransactionsRequest {
                        id: id.clone(),
                        cascade,
                    })
                    .await?
            } else if id.starts_with("seg-") {
                pb::segmentations_client::SegmentationsClient::new(channel)
                    .delete_segmentation(pb::DeleteSegmentationRequest { id: id.clone() })
                    .await?
            } else {
                pb::models_client::ModelsClient::new(channel)
                    .delete(pb::DeleteModelRequest { id: id.clone() })
                    .await?
            };
            for deleted in response.into_inner().deleted_ids {
                println!("deleted {deleted}");
            }
        }
        ClientCommand::EraseCustomer { id } => {
            let changed = pb::privacy_client::PrivacyClient::new(channel)
                .erase_customer(pb::EraseCustomerRequest { customer_id: id })
                .await?
                .into_inner()
                .changed;
            if changed.is_empty() {
                println!("no stored object named that customer");
            }
            for c in changed {
                println!("{} {}: {} rows removed", c.kind, c.id, c.rows_removed);
            }
        }
        ClientCommand::Info => print_json(
            &pb::server_client::ServerClient::new(channel)
                .get_info(pb::GetInfoRequest {})
                .await?
                .into_inner(),
        ),
    }
    Ok(())
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
    let block = (BLOCK_VALUES / width).max(1) * width;
    let header = pb::UploadRequest {
        message: Some(Message::Header(pb::UploadHeader {
            name: name.to_owned(),
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

/// Follows a job with a progress bar; prints its result or fails with its error.
async fn watch(channel: Conn, id: &str) -> anyhow::Result<()> {
    let mut events = pb::jobs_client::JobsClient::new(channel)
        .watch_job(pb::WatchJobRequest { id: id.to_owned() })
        .await?
        .into_inner();
    let bar = progress_bar(1000, false);
    bar.set_message(format!("job {id}"));
    while let Some(event) = events.message().await? {
        match event.event {
            Some(pb::job_event::Event::Progress(p)) => {
                bar.set_position((p.fraction * 1000.0) as u64);
                bar.set_message(format!(
                    "{} iteration {} inertia {:.6e}",
                    p.phase, p.iteration, p.inertia
                ));
            }
            Some(pb::job_event::Event::Finished(job)) => {
                bar.finish_and_clear();
                match pb::JobState::try_from(job.state) {
                    Ok(pb::JobState::Succeeded) => {
                        match job.result {
                            Some(pb::job::Result::Dataset(d)) => println!(
                                "dataset {} ({} rows × {} columns)",
                                d.id, d.n_rows, d.n_cols
                            ),
                            Some(pb::job::Result::Kmeans(m)) => {
                                println!("model {}: k = {}, {} iterations, inertia {:.6e}, backend {} [{}]", m.id, m.k, m.n_iter, m.inertia, m.backend, m.adapter);
                                println!("cluster sizes: {:?}", m.cluster_sizes);
                            }
                            Some(pb::job::Result::Pca(p)) => println!(
                                "model {}: {} components, explained variance ratio {:?}",
                                p.id, p.n_components, p.explained_variance_ratio
                            ),
                            Some(pb::job::Result::Segmentation(s)) => {
                                println!(
                                    "segmentation {}: {} customers as of {} in {} segments",
                                    s.id, s.n_customers, s.as_of, s.k
                                );
                                for p in &s.segments {
                                    println!(
                                        "  segment {}: {} customers ({:.1}%), {}",
                                        p.id,
                                        p.size,
                                        p.share * 100.0,
                                        p.description
                                    );
                                }
                            }
                            None => println!("job {id} succeeded"),
                        }
                        return Ok(());
                    }
                    _ => anyhow::bail!("job {id} ended: {}", job.error),
                }
            }
            None => {}
        }
    }
    anyhow::bail!("the server closed the stream before job {id} finished")
}
