//! `segmenta bench --service`: gRPC throughput over loopback against an
//! in-process server on a temporary data directory (CPU backend).

use std::time::Instant;

use ndarray::Array2;
use segmenta::backend::BackendChoice;
use segmenta::service::proto as pb;
use segmenta::service::{serve, Limits, ServerConfig};
use serde_json::json;

use crate::cli::client::{upload, with_token};
use crate::cli::output::table;

const ASSIGN_ROWS: usize = 10_000;
const REPEATS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(x: &Array2<f32>, k: usize, as_json: bool) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let limits = Limits { max_message_bytes: 64 << 20, max_assign_rows: ASSIGN_ROWS, ..Limits::default() };
        let config = ServerConfig { backend: BackendChoice::Cpu, limits, ..ServerConfig::new(dir.path()) };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let channel = segmenta::service::connect(&addr).await?;
        let (n, d) = x.dim();
        let columns: Vec<String> = (0..d).map(|j| format!("f{j}")).collect();
        let flat: std::sync::Arc<[f32]> = x.iter().copied().collect();
        let bytes = (n * d * 4) as f64;

        let mut upload_secs = Vec::new();
        let mut dataset = None;
        for _ in 0..REPEATS {
            let t = Instant::now();
            dataset = Some(upload(with_token(channel.clone(), None)?, "bench", columns.clone(), flat.clone()).await?);
            upload_secs.push(t.elapsed().as_secs_f64());
        }
        let dataset = dataset.expect("REPEATS > 0");

        let fit = pb::FitKMeansRequest { dataset_id: dataset.id, k: k as u32, max_iter: 3, init: pb::InitMethod::Random as i32, ..Default::default() };
        let mut clustering = pb::clustering_client::ClusteringClient::new(channel.clone()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        let job = clustering.fit_k_means(fit).await?.into_inner();
        let mut events = pb::jobs_client::JobsClient::new(channel.clone()).watch_job(pb::WatchJobRequest { id: job.id }).await?.into_inner();
        let mut model_id = None;
        while let Some(e) = events.message().await? {
            if let Some(pb::job_event::Event::Finished(job)) = e.event {
                match job.result {
                    Some(pb::job::Result::Kmeans(m)) => model_id = Some(m.id),
                    _ => anyhow::bail!("fit failed: {}", job.error),
                }
            }
        }
        let model_id = model_id.ok_or_else(|| anyhow::anyhow!("fit did not finish"))?;

        let requests: Vec<Vec<f32>> = flat.chunks(ASSIGN_ROWS * d).filter(|c| c.len() == ASSIGN_ROWS * d).take(100).map(<[f32]>::to_vec).collect();
        let mut assign_rates = Vec::new();
        for _ in 0..REPEATS {
            let t = Instant::now();
            for rows in &requests {
                clustering.assign(pb::AssignRequest { model_id: model_id.clone(), rows: rows.clone(), n_features: 0 }).await?;
            }
            assign_rates.push((requests.len() * ASSIGN_ROWS) as f64 / t.elapsed().as_secs_f64());
        }
        let _ = stop.send(());
        server.await??;

        let upload_mb_s = bytes / median(upload_secs.clone()) / 1e6;
        let assign_rows_s = median(assign_rates);
        if as_json {
            say!("{}", json!({"n": n, "d": d, "k": k, "upload_mb_per_s": upload_mb_s, "upload_seconds": upload_secs, "assign_rows_per_request": ASSIGN_ROWS, "assign_rows_per_s": assign_rows_s}));
            return Ok(());
        }
        say!("gRPC over loopback, n = {n}, d = {d}, k = {k}, median of {REPEATS}");
        let header = ["measure", "value"].map(String::from).to_vec();
        let rows = vec![
            vec![format!("upload {:.0} MB", bytes / 1e6), format!("{upload_mb_s:.0} MB/s")],
            vec![format!("Assign, {ASSIGN_ROWS} rows per request"), format!("{:.2} M rows/s", assign_rows_s / 1e6)],
        ];
        say!("{}", table(&header, &rows).trim_end_matches('\n'));
        Ok(())
    })
}
