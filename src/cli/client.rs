//! `segmenta client …`: talks to a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use segmenta::data::read_table;
use segmenta::service::proto as pb;
use tonic::transport::Channel;

use super::output::progress_bar;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "SEGMENTA_SERVER",
        global = true
    )]
    pub server: String,
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
    /// Delete a dataset (ds-…) or a model (km-…, pca-…).
    Delete { id: String },
    /// Server version, backends and limits.
    Info,
}

/// Values per upload message: about 2 MiB, well under the 4 MiB default limit.
const BLOCK_VALUES: usize = 512 * 1024;

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run_async(args))
}

fn print_json<T: std::fmt::Debug>(value: &T) {
    println!("{value:#?}");
}

async fn run_async(args: ClientArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.server.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.server))?;
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
            for d in pb::datasets_client::DatasetsClient::new(channel)
                .list(pb::ListDatasetsRequest {})
                .await?
                .into_inner()
                .datasets
            {
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
            for m in pb::models_client::ModelsClient::new(channel)
                .list(pb::ListModelsRequest {})
                .await?
                .into_inner()
                .models
            {
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
        ClientCommand::Delete { id } => {
            if id.starts_with("ds-") {
                pb::datasets_client::DatasetsClient::new(channel)
                    .delete(pb::DeleteDatasetRequest { id: id.clone() })
                    .await?;
            } else {
                pb::models_client::ModelsClient::new(channel)
                    .delete(pb::DeleteModelRequest { id: id.clone() })
                    .await?;
            }
            println!("deleted {id}");
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

/// Streams `values` (row-major) as whole-row blocks after a header; blocks
/// are built as the transport asks for them, not all up front.
pub async fn upload(
    channel: Channel,
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
async fn watch(channel: Channel, id: &str) -> anyhow::Result<()> {
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
