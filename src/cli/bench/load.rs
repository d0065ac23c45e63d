//! `segmenta bench --service --load`: Assign latency under compute load,
//! against a real `segmenta serve` child process on loopback.
//!
//! 16 clients each send 1,000-row `Assign` calls back to back (bounded by
//! time and count) while two k-means fits and one evaluation run on the
//! same server. Reported: Assign p50/p99/max latency, throughput, every
//! failure by status code (load shedding is RESOURCE_EXHAUSTED), whether the
//! compute really overlapped the window, and the server's peak RSS.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use segmenta::service::proto as pb;
use serde_json::json;
use tonic::transport::Channel;

use crate::cli::client::{upload, with_token};
use crate::cli::output::table;

const CLIENTS: usize = 16;
const ROWS_PER_CALL: usize = 1000;
const D: usize = 16;
/// At most this many calls per client, whatever the duration.
const MAX_CALLS_PER_CLIENT: usize = 200_000;

struct ServerProcess {
    child: Child,
    addr: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(data: &std::path::Path) -> anyhow::Result<ServerProcess> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--addr", "127.0.0.1:0", "--backend", "cpu"])
        .args(["--max-concurrent-jobs", "3", "--data-dir"])
        .arg(data)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("segmenta serving on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("the server did not start"))?;
    Ok(ServerProcess { child, addr })
}

/// The child's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn blobs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let centres: Vec<f32> = (0..32 * D).map(|_| rng.random_range(-10.0..10.0)).collect();
    (0..n)
        .flat_map(|i| {
            let c = i % 32;
            let noise: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            (0..D)
                .map(|j| centres[c * D + j] + noise[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn job_result(channel: &Channel, id: &str) -> anyhow::Result<pb::Job> {
    let mut events = pb::jobs_client::JobsClient::new(channel.clone())
        .watch_job(pb::WatchJobRequest { id: id.into() })
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        if let Some(pb::job_event::Event::Finished(job)) = e.event {
            return Ok(job);
        }
    }
    anyhow::bail!("job {id} did not finish")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `quick`: 50,000 rows instead of 500,000 (a smoke test, not a timing).
pub fn run(seconds: u64, quick: bool, seed: u64, as_json: bool) -> anyhow::Result<()> {
    let n = if quick { 50_000 } else { 500_000 };
    let dir = tempfile::tempdir()?;
    let server = spawn_server(&dir.path().join("data"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let channel = segmenta::service::connect(&format!("http://{}", server.addr)).await?;
        let columns: Vec<String> = (0..D).map(|j| format!("f{j}")).collect();
        // The fits' data: 500,000 × 16; the scoring model is fitted first.
        let big: Arc<[f32]> = blobs(n, seed).into();
        let dataset = upload(with_token(channel.clone(), None)?, "load", columns, big.clone()).await?;
        let mut clustering = pb::clustering_client::ClusteringClient::new(channel.clone());
        let fit = |k: u32, max_iter: u32, tol: f64| pb::FitKMeansRequest {
            dataset_id: dataset.id.clone(),
            k,
            max_iter,
            tol: Some(tol),
            init: pb::InitMethod::Random as i32,
            ..Default::default()
        };
        let scoring = clustering.fit_k_means(fit(32, 20, 1e-4)).await?.into_inner();
        let scoring = job_result(&channel, &scoring.id).await?;
        let Some(pb::job::Result::Kmeans(model)) = scoring.result else {
            anyhow::bail!("the scoring model failed: {}", scoring.error)
        };

        // The compute load: two long fits and one evaluation.
        let mut background = Vec::new();
        for k in [512, 1024] {
            background.push(clustering.fit_k_means(fit(k, 300, 0.0)).await?.into_inner().id);
        }
        let mut evaluate = clustering.clone();
        let eval_request = pb::EvaluateRequest {
            model_id: model.id.clone(),
            dataset_id: dataset.id.clone(),
            silhouette_sample_size: 20_000,
            seed,
        };
        let evaluation = tokio::spawn(async move {
            let t = Instant::now();
            let r = evaluate.evaluate(eval_request).await;
            (r.map(|_| ()), t.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(std::collections::BTreeMap::<String, usize>::new()));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (channel, model_id) = (channel.clone(), model.id.clone());
            let (latencies, failures) = (latencies.clone(), failures.clone());
            let rows: Vec<f32> = big[c * ROWS_PER_CALL * D..(c + 1) * ROWS_PER_CALL * D].to_vec();
            clients.push(tokio::spawn(async move {
                let mut client = pb::clustering_client::ClusteringClient::new(channel);
                for _ in 0..MAX_CALLS_PER_CLIENT {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    let r = client
                        .assign(pb::AssignRequest {
                            model_id: model_id.clone(),
                            rows: rows.clone(),
                            n_features: 0,
                        })
                        .await;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    match r {
                        Ok(_) => latencies.lock().unwrap().push(ms),
                        Err(s) => {
                            *failures.lock().unwrap().entry(format!("{:?}", s.code())).or_default() += 1
                        }
                    }
                }
            }));
        }
        for c in clients {
            c.await?;
        }
        let window = started.elapsed().as_secs_f64();
        // Did the fits run through the whole window?
        let mut jobs = pb::jobs_client::JobsClient::new(channel.clone());
        let mut overlapped = 0;
        for id in &background {
            let job = jobs.get_job(pb::GetJobRequest { id: id.clone() }).await?.into_inner();
            if job.state == pb::JobState::Running as i32 {
                overlapped += 1;
            }
            let _ = jobs.cancel_job(pb::CancelJobRequest { id: id.clone() }).await;
        }
        // An evaluation still running is abandoned: dropping the call
        // cancels it on the server.
        let evaluated = tokio::time::timeout(Duration::from_secs(2), evaluation).await;
        let rss = peak_rss_mib(server.child.id());

        let mut l = latencies.lock().unwrap().clone();
        l.sort_by(f64::total_cmp);
        let calls = l.len();
        let failures = failures.lock().unwrap().clone();
        let (p50, p99, max) = (percentile(&l, 0.5), percentile(&l, 0.99), l.last().copied().unwrap_or(f64::NAN));
        let rows_per_s = (calls * ROWS_PER_CALL) as f64 / window;
        let eval_note = match evaluated {
            Ok(Ok((Ok(()), t))) => format!("finished after {:.1} s", t.as_secs_f64()),
            Ok(Ok((Err(s), _))) => format!("{:?}: {}", s.code(), s.message()),
            Ok(Err(e)) => format!("client task failed: {e}"),
            Err(_) => "still running at the end (abandoned)".into(),
        };
        if as_json {
            say!(
                "{}",
                json!({
                    "clients": CLIENTS, "rows_per_call": ROWS_PER_CALL, "seconds": window,
                    "assign_calls": calls, "assign_p50_ms": p50, "assign_p99_ms": p99,
                    "assign_max_ms": max, "assign_rows_per_s": rows_per_s,
                    "failures": failures, "fits_running_at_end": overlapped,
                    "evaluation": eval_note, "server_peak_rss_mib": rss,
                })
            );
            return Ok(());
        }
        say!(
            "load on loopback: {CLIENTS} clients × Assign({ROWS_PER_CALL} rows, d = {D}, k = 32) for {window:.1} s, \
             while 2 fits ({n} × 16, k = 512 and 1,024) and 1 evaluation (sample 20,000) run"
        );
        let header = ["measure", "value"].map(String::from).to_vec();
        let rows = vec![
            vec!["Assign calls answered".into(), calls.to_string()],
            vec!["Assign p50".into(), format!("{p50:.2} ms")],
            vec!["Assign p99".into(), format!("{p99:.2} ms")],
            vec!["Assign max".into(), format!("{max:.2} ms")],
            vec!["throughput".into(), format!("{:.0} calls/s, {:.2} M rows/s", calls as f64 / window, rows_per_s / 1e6)],
            vec!["failed calls".into(), if failures.is_empty() { "none".into() } else { format!("{failures:?}") }],
            vec!["fits still running at the end".into(), format!("{overlapped} of 2")],
            vec!["evaluation".into(), eval_note],
            vec!["server peak RSS".into(), rss.map_or("unknown".into(), |r| format!("{r:.0} MiB"))],
        ];
        say!("{}", table(&header, &rows).trim_end_matches('\n'));
        Ok(())
    })
}
