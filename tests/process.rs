//! The real `segmenta serve` process: secure defaults, one server per data
//! directory, key reloading on SIGHUP, a prompt exit on SIGTERM, nothing
//! acknowledged lost to SIGKILL, and logs free of customer data.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{runtime, with_key, Keys};
use segmenta::service::proto as pb;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::Code;

/// A `segmenta serve` child on 127.0.0.1:0; its stderr is collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_segmenta"));
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            "cpu",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("segmenta serving on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        Self { child, addr, log }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit by itself; `None` if it is still up.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_refuses_an_open_address_without_keys_and_a_locked_data_dir() {
    let dir = TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_segmenta"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("without API keys") && err.contains("--insecure"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let _first = Server::start(&dir.path().join("data"), &[], &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_segmenta"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by another segmenta server"), "{err}");
}

#[test]
fn sighup_reloads_the_keys_file() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("keys");
    let old = Keys::write_file(&file);
    let server = Server::start(
        &dir.path().join("data"),
        &["--auth-keys", file.to_str().unwrap()],
        &[],
    );
    runtime().block_on(async {
        let c = server.channel().await;
        let list = |key: &str| {
            let mut client = pb::datasets_client::DatasetsClient::new(c.clone());
            let request = with_key(pb::ListDatasetsRequest::default(), key);
            async move { client.list(request).await }
        };
        list(&old.read).await.unwrap();
        let new = Keys::write_file(&file);
        server.signal(libc::SIGHUP);
        let start = Instant::now();
        loop {
            match list(&old.read).await {
                Err(e) if e.code() == Code::Unauthenticated => break,
                _ if start.elapsed() > Duration::from_secs(20) => panic!("old key still works"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        list(&new.read).await.unwrap();
        // A broken file keeps the keys in force.
        std::fs::write(&file, "ops owner 1234\n").unwrap();
        server.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        list(&new.read).await.unwrap();
    });
    assert!(
        server.log().contains("keys file not reloaded"),
        "{}",
        server.log()
    );
}

async fn upload(
    c: &Channel,
    columns: &[&str],
    values: &[f32],
) -> Result<pb::Dataset, tonic::Status> {
    use pb::upload_request::Message;
    let mut messages = vec![pb::UploadRequest {
        message: Some(Message::Header(pb::UploadHeader {
            name: "d".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            n_rows: (values.len() / columns.len()) as u64,
        })),
    }];
    for block in values.chunks(columns.len() * 4096) {
        messages.push(pb::UploadRequest {
            message: Some(Message::Rows(pb::RowBlock {
                values: block.to_vec(),
                values_f32le: Default::default(),
            })),
        });
    }
    pb::datasets_client::DatasetsClient::new(c.clone())
        .upload(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

async fn finish(c: &Channel, id: &str, limit: Duration) -> pb::Job {
    let start = Instant::now();
    loop {
        let job = pb::jobs_client::JobsClient::new(c.clone())
            .get_job(pb::GetJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let finished = [
            pb::JobState::Succeeded as i32,
            pb::JobState::Failed as i32,
            pb::JobState::Cancelled as i32,
        ];
        if finished.contains(&job.state) {
            return job;
        }
        assert!(start.elapsed() < limit, "job {id} did not finish: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sigterm_ends_the_process_while_a_fit_and_an_evaluation_run() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[], &[]);
    let long_job = runtime().block_on(async {
        let c = server.channel().await;
        let n = 100_000;
        let values: Vec<f32> = (0..2 * n as u64)
            .map(|i| ((i * 7919) % 10007) as f32)
            .collect();
        let d = upload(&c, &["a", "b"], &values).await.unwrap();
        let mut clustering = pb::clustering_client::ClusteringClient::new(c.clone());
        let small = clustering
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: d.id.clone(),
                k: 5,
                max_iter: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let small = finish(&c, &small.id, Duration::from_secs(60)).await;
        let Some(pb::job::Result::Kmeans(model)) = small.result else {
            panic!("{}", small.error)
        };
        let long = clustering
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: d.id.clone(),
                k: 20_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut evaluate = clustering.clone();
        let request = pb::EvaluateRequest {
            model_id: model.id,
            dataset_id: d.id,
            silhouette_sample_size: 20_000,
            seed: 1,
        };
        tokio::spawn(async move { evaluate.evaluate(request).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        long.id
    });
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", server.log()));
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(
        server.log().contains("segmenta stopped"),
        "{}",
        server.log()
    );
    // The interrupted fit is still known, and queued to run again.
    let again = Server::start(&data, &[], &[]);
    runtime().block_on(async {
        let c = again.channel().await;
        let job = pb::jobs_client::JobsClient::new(c.clone())
            .get_job(pb::GetJobRequest {
                id: long_job.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            [pb::JobState::Queued as i32, pb::JobState::Running as i32].contains(&job.state),
            "{job:?}"
        );
        pb::jobs_client::JobsClient::new(c)
            .cancel_job(pb::CancelJobRequest { id: long_job })
            .await
            .unwrap();
    });
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Every `.tmp-` entry anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A tiny deterministic generator, so a failing round can be replayed.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn transaction_log(customers: usize) -> Vec<u8> {
    let mut log = String::from("customer_id,date,amount\n");
    for i in 0..customers {
        for j in 0..(1 + i % 5) {
            log.push_str(&format!(
                "K{i:05},2026-{:02}-{:02},{}.25\n",
                1 + i % 12,
                1 + j,
                5 + i % 90
            ));
        }
    }
    log.into_bytes()
}

/// Ids the server acknowledged, with the bytes the client sent.
type Acknowledged = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[test]
fn sigkill_at_any_moment_loses_nothing_acknowledged() {
    const ROUNDS: usize = 20;
    let seed = 0x5eed_0000_u64 + std::process::id() as u64;
    eprintln!("kill -9 rounds with seed {seed:#x}");
    let mut rng = Rand(seed);
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let root = dir.path().join("imports");
    std::fs::create_dir_all(&root).unwrap();
    let mut csv = String::from("a,b,c\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{},{},{}\n", i % 97, (i * 31) % 89, (i * 7) % 13));
    }
    std::fs::write(root.join("rows.csv"), csv).unwrap();
    let extra = ["--import-root", root.to_str().unwrap()];

    // What the server acknowledged, with what the client sent.
    let datasets: Acknowledged = Arc::default();
    let logs: Acknowledged = Arc::default();
    let jobs: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        // What the last kill left half-written must be gone once the server is up.
        let leftovers = temporaries(&data);
        let mut server = Server::start(&data, &extra, &[]);
        for t in &leftovers {
            assert!(!t.exists(), "round {round}: {t:?} survived the restart");
        }
        let delay = Duration::from_millis(5 + rng.below(250));
        let sizes: Vec<usize> = (0..4).map(|_| 500 + rng.below(30_000) as usize).collect();
        let rt = runtime();
        rt.block_on(async {
            let c = server.channel().await;
            // Check what the previous rounds left, before adding more.
            let known = datasets.lock().unwrap().clone();
            for (id, bytes) in &known {
                let meta = pb::datasets_client::DatasetsClient::new(c.clone())
                    .get(pb::GetDatasetRequest { id: id.clone() })
                    .await
                    .unwrap_or_else(|e| {
                        panic!("round {round}: acknowledged dataset {id} lost: {e}")
                    })
                    .into_inner();
                let stored =
                    std::fs::read(data.join("datasets").join(id).join("values.f32")).unwrap();
                assert_eq!(
                    sha(&stored),
                    sha(bytes),
                    "round {round}: dataset {id} changed"
                );
                assert_eq!(meta.size_bytes as usize, bytes.len());
            }
            let known_logs = logs.lock().unwrap().clone();
            for (id, bytes) in &known_logs {
                let stored = std::fs::read(data.join("transactions").join(id).join("log.csv"))
                    .unwrap_or_else(|e| panic!("round {round}: acknowledged log {id} lost: {e}"));
                assert_eq!(sha(&stored), sha(bytes), "round {round}: log {id} changed");
            }
            let known_jobs = jobs.lock().unwrap().clone();
            for id in &known_jobs {
                let job = pb::jobs_client::JobsClient::new(c.clone())
                    .get_job(pb::GetJobRequest { id: id.clone() })
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: acknowledged job {id} lost: {e}"))
                    .into_inner();
                // Failed only as a job the server died under again and
                // again (a crash loop's guard), said as such: never lost.
                assert!(
                    job.state != pb::JobState::Failed as i32
                        || job.error.contains("the server stopped"),
                    "round {round}: {job:?}"
                );
            }
            // Every dataset visible is whole.
            let visible = pb::datasets_client::DatasetsClient::new(c.clone())
                .list(pb::ListDatasetsRequest {
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .datasets;
            for d in &visible {
                let len = std::fs::metadata(data.join("datasets").join(&d.id).join("values.f32"))
                    .unwrap()
                    .len();
                assert_eq!(len, d.n_rows * d.n_cols as u64 * 4, "round {round}: {d:?}");
            }

            // Work, interrupted at a random moment.
            let work = async {
                let mut tasks = Vec::new();
                for (i, &n) in sizes.iter().enumerate() {
                    let (c, datasets, logs, jobs) =
                        (c.clone(), datasets.clone(), logs.clone(), jobs.clone());
                    let root = root.clone();
                    tasks.push(tokio::spawn(async move {
                        match i {
                            0 | 1 => {
                                let values: Vec<f32> =
                                    (0..3 * n).map(|v| ((v * 13 + i) % 101) as f32).collect();
                                if let Ok(d) = upload(&c, &["x", "y", "z"], &values).await {
                                    datasets
                                        .lock()
                                        .unwrap()
                                        .push((d.id.clone(), f32_bytes(&values)));
                                    let fit =
                                        pb::clustering_client::ClusteringClient::new(c.clone())
                                            .fit_k_means(pb::FitKMeansRequest {
                                                dataset_id: d.id,
                                                k: 4,
                                                ..Default::default()
                                            })
                                            .await;
                                    if let Ok(job) = fit {
                                        jobs.lock().unwrap().push(job.into_inner().id);
                                    }
                                }
                            }
                            2 => {
                                let import = pb::datasets_client::DatasetsClient::new(c.clone())
                                    .import(pb::ImportRequest {
                                        path: root.join("rows.csv").to_string_lossy().into(),
                                        ..Default::default()
                                    })
                                    .await;
                                if let Ok(job) = import {
                                    jobs.lock().unwrap().push(job.into_inner().id);
                                }
                            }
                            _ => {
                                let bytes = transaction_log(n / 20 + 30);
                                let mut s =
                                    pb::segmentations_client::SegmentationsClient::new(c.clone());
                                let messages = vec![
                                    pb::UploadTransactionsRequest {
                                        message: Some(
                                            pb::upload_transactions_request::Message::Header(
                                                pb::TransactionsHeader {
                                                    name: "log.csv".into(),
                                                    format: pb::FileFormat::Csv as i32,
                                                    text_format: None,
                                                    size_bytes: bytes.len() as u64,
                                                },
                                            ),
                                        ),
                                    },
                                    pb::UploadTransactionsRequest {
                                        message: Some(
                                            pb::upload_transactions_request::Message::Chunk(
                                                bytes.clone(),
                                            ),
                                        ),
                                    },
                                ];
                                if let Ok(log) =
                                    s.upload_transactions(tokio_stream::iter(messages)).await
                                {
                                    let id = log.into_inner().id;
                                    logs.lock().unwrap().push((id.clone(), bytes));
                                    let job = s
                                        .segment(pb::SegmentRequest {
                                            source: Some(
                                                pb::segment_request::Source::TransactionsId(id),
                                            ),
                                            k_choice: Some(pb::segment_request::KChoice::K(3)),
                                            ..Default::default()
                                        })
                                        .await;
                                    if let Ok(job) = job {
                                        jobs.lock().unwrap().push(job.into_inner().id);
                                    }
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            };
            let _ = tokio::time::timeout(delay, work).await;
        });
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        drop(rt);
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "rounds take too long"
        );
    }
    // Last: restart once more, let every interrupted job finish, stop
    // cleanly: no temporary is left anywhere.
    let mut server = Server::start(&data, &extra, &[]);
    runtime().block_on(async {
        let c = server.channel().await;
        let ids = jobs.lock().unwrap().clone();
        assert!(!ids.is_empty(), "no job was acknowledged in {ROUNDS} rounds");
        for id in &ids {
            let job = finish(&c, id, Duration::from_secs(120)).await;
            // Or failed as a job the server was killed under again and
            // again (the crash-loop guard), said as such.
            assert!(
                job.state == pb::JobState::Succeeded as i32
                    || (job.state == pb::JobState::Failed as i32
                        && job.error.contains("the server stopped")),
                "{job:?}"
            );
        }
        eprintln!(
            "{ROUNDS} rounds: {} datasets, {} logs, {} jobs acknowledged; all intact, all jobs done",
            datasets.lock().unwrap().len(),
            logs.lock().unwrap().len(),
            ids.len()
        );
    });
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    assert!(temporaries(&data).is_empty(), "{:?}", temporaries(&data));
}

#[test]
fn trace_logs_hold_no_customer_data_and_audit_every_call() {
    // A service manager's usual umask, which would leave files readable
    // by every user; the server must not keep it.
    // SAFETY: umask has no preconditions; other tests only create
    // temporary files, whose modes they do not check.
    unsafe { libc::umask(0o022) };
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("keys");
    let keys = Keys::write_file(&file);
    let server = Server::start(
        &dir.path().join("data"),
        &["--auth-keys", file.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    );
    let planted_column = "plantedcolumnq7";
    let planted_customer = "PLANTEDCUSTOMER93K";
    runtime().block_on(async {
        let c = server.channel().await;
        let admin = keys.admin.as_str();
        use pb::upload_request::Message;
        let values: Vec<f32> = (0..300)
            .map(|i| 4242.4242 + (i % 3) as f32 * 1000.0)
            .collect();
        let messages = vec![
            pb::UploadRequest {
                message: Some(Message::Header(pb::UploadHeader {
                    name: "planteddatasetname".into(),
                    columns: vec![planted_column.into(), "b".into(), "c".into()],
                    n_rows: 100,
                })),
            },
            pb::UploadRequest {
                message: Some(Message::Rows(pb::RowBlock {
                    values: values.clone(),
                    values_f32le: Default::default(),
                })),
            },
        ];
        let d = pb::datasets_client::DatasetsClient::new(c.clone())
            .upload(with_key(tokio_stream::iter(messages), admin))
            .await
            .unwrap()
            .into_inner();
        let job = pb::clustering_client::ClusteringClient::new(c.clone())
            .fit_k_means(with_key(
                pb::FitKMeansRequest {
                    dataset_id: d.id.clone(),
                    k: 3,
                    ..Default::default()
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut jobs = pb::jobs_client::JobsClient::new(c.clone());
        let model = loop {
            let j = jobs
                .get_job(with_key(pb::GetJobRequest { id: job.id.clone() }, admin))
                .await
                .unwrap()
                .into_inner();
            if let Some(pb::job::Result::Kmeans(m)) = j.result {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        pb::clustering_client::ClusteringClient::new(c.clone())
            .assign(with_key(
                pb::AssignRequest {
                    model_id: model.id.clone(),
                    rows: vec![4242.4242, 5242.4242, 6242.4242],
                    n_features: 0,
                },
                admin,
            ))
            .await
            .unwrap();
        let mut log = String::from("customer_id,date,amount\n");
        for i in 0..40 {
            log.push_str(&format!("N{i},2026-02-{:02},{}.00\n", 1 + i % 20, 10 + i));
        }
        log.push_str(&format!("{planted_customer},2026-02-03,7777.77\n"));
        log.push_str("BADROW,notadate,1.00\n");
        let mut s = pb::segmentations_client::SegmentationsClient::new(c.clone());
        let tx = s
            .upload_transactions(with_key(
                tokio_stream::iter(vec![
                    pb::UploadTransactionsRequest {
                        message: Some(pb::upload_transactions_request::Message::Header(
                            pb::TransactionsHeader {
                                name: "plantedlogname.csv".into(),
                                format: pb::FileFormat::Csv as i32,
                                text_format: None,
                                size_bytes: log.len() as u64,
                            },
                        )),
                    },
                    pb::UploadTransactionsRequest {
                        message: Some(pb::upload_transactions_request::Message::Chunk(
                            log.into_bytes(),
                        )),
                    },
                ]),
                admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let seg = s
            .segment(with_key(
                pb::SegmentRequest {
                    source: Some(pb::segment_request::Source::TransactionsId(tx.id.clone())),
                    k_choice: Some(pb::segment_request::KChoice::K(3)),
                    // The planted unreadable row is 1 of 42.
                    max_bad_rows: Some(0.1),
                    ..Default::default()
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner();
        loop {
            let j = jobs
                .get_job(with_key(pb::GetJobRequest { id: seg.id.clone() }, admin))
                .await
                .unwrap()
                .into_inner();
            if j.state == pb::JobState::Succeeded as i32 {
                break;
            }
            assert_ne!(j.state, pb::JobState::Failed as i32, "{}", j.error);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A bad request quoting a customer id, and an erasure.
        let _ = pb::datasets_client::DatasetsClient::new(c.clone())
            .get(with_key(
                pb::GetDatasetRequest {
                    id: planted_customer.into(),
                },
                admin,
            ))
            .await
            .unwrap_err();
        pb::privacy_client::PrivacyClient::new(c.clone())
            .erase_customer(with_key(
                pb::EraseCustomerRequest {
                    customer_id: planted_customer.into(),
                },
                admin,
            ))
            .await
            .unwrap();
        // Refused for its role: the audit line still names the key.
        let e = pb::models_client::ModelsClient::new(c.clone())
            .delete(with_key(
                pb::DeleteModelRequest {
                    id: model.id.clone(),
                },
                keys.read.as_str(),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    });
    std::thread::sleep(Duration::from_millis(300));
    // Whatever umask the server was started under (this test's), what it
    // wrote is its user's alone.
    let open = open_to_others(&dir.path().join("data"));
    assert!(open.is_empty(), "readable by others: {open:?}");
    let log = server.log();
    assert!(log.lines().count() > 50, "trace output expected:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("/segmenta.v1.Models/Delete")
            && l.contains("key=analyst")
            && l.contains("PermissionDenied")),
        "no audit line naming the refused key"
    );
    for planted in [
        planted_column,
        planted_customer,
        "planteddatasetname",
        "plantedlogname",
        "4242.42",
        "7777.77",
        "BADROW",
        "notadate",
        keys.admin.as_str(),
        &keys.admin[4..20],
    ] {
        assert!(
            !log.contains(planted),
            "{planted:?} appears in the log:\n{}",
            log.lines()
                .filter(|l| l.contains(planted))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for audited in [
        "/segmenta.v1.Datasets/Upload",
        "/segmenta.v1.Clustering/FitKMeans",
        "/segmenta.v1.Clustering/Assign",
        "/segmenta.v1.Segmentations/Segment",
        "/segmenta.v1.Privacy/EraseCustomer",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("audit") && l.contains(audited) && l.contains("key=ops")),
            "no audit line for {audited}"
        );
    }
}

/// Every file or directory under `root` that group or others may use.
fn open_to_others(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut open = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.permissions().mode() & 0o077 != 0 {
                open.push((path.clone(), meta.permissions().mode() & 0o777));
            }
            if meta.is_dir() {
                todo.push(path);
            }
        }
    }
    open
}

/// Runs the `segmenta` binary; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_segmenta"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("SEGMENTA_BACKEND")
        .env_remove("SEGMENTA_SERVER")
        .env_remove("SEGMENTA_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command-line client as a user drives it: both address forms,
/// readable and JSON info, a whole segment job with its downloads, model
/// files moving between the server and offline scoring, and errors that
/// name the status code in one line.
#[test]
fn the_cli_client_runs_the_workflow_against_a_real_server() {
    let dir = TempDir::new().unwrap();
    // Small limits, so the client must split what it sends to fit them.
    let limits = ["--max-assign-rows", "25", "--max-message-bytes", "1000000"];
    let server = Server::start(&dir.path().join("data"), &limits, &[]);
    let addr = server.addr.clone();
    let url = format!("http://{addr}");

    let (code, out, err) = cli(&["client", "--server", &addr, "info"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Segmenta ") && out.contains("limits:"),
        "{out}"
    );
    assert!(!out.contains("ServerInfo {"), "readable, not Debug: {out}");
    let (code, out, _) = cli(&["client", "--server", &url, "info", "--json"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&["client", "--server", &url, "--token", "", "info"]);
    assert_eq!(code, 1);
    assert!(err.contains("the API key is empty"), "{err}");
    // Piped into a reader that has gone (`| head`): a quiet end, as other
    // tools end, not a panic (the client keeps SIGPIPE ignored for its
    // sockets, so its writes see the closed pipe as an error).
    #[cfg(unix)]
    common::ends_quietly_on_a_closed_pipe(
        Command::new(env!("CARGO_BIN_EXE_segmenta")).args(["client", "--server", &addr, "info"]),
    );
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(info["limits"]["max_k"].as_u64().unwrap() > 0);

    // A European export, segmented on the server, artifacts downloaded.
    let log = dir.path().join("eu.csv");
    let mut text = String::from("customer_id;date;amount\n");
    for i in 0..120 {
        for j in 0..(1 + i % 4) {
            text.push_str(&format!(
                "K{i:03};{:02}/{:02}/2025;{},50 €\n",
                13 + j,
                1 + i % 12,
                5 + i
            ));
        }
    }
    std::fs::write(&log, text).unwrap();
    let out_dir = dir.path().join("downloaded");
    let (code, out, err) = cli(&[
        "client",
        "--server",
        &addr,
        "segment",
        "--transactions",
        log.to_str().unwrap(),
        "--decimal-comma",
        "--k",
        "3",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("segmentation seg-"), "{out}");
    // The uploaded log is held for refreshes, and listed.
    let (code, listed, err) = cli(&["client", "--server", &addr, "transactions"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("tx-") && l.ends_with("  eu.csv")),
        "{listed}"
    );
    for f in [
        "report.html",
        "customers.csv",
        "segments.json",
        "model.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} downloaded: {out}");
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("segments.json")).unwrap()).unwrap();
    assert_eq!(doc["n_customers"], 120);
    assert_eq!(doc["input"]["delimiter"], "semicolon");
    assert!(doc["input"]["date_format"]
        .as_str()
        .unwrap()
        .starts_with("%d/%m/%Y"));

    // Scoring by the segmentation, by its model.json imported, and offline
    // write the same table: segment ids with their descriptions.
    let seg_id = out
        .split_whitespace()
        .find(|w| w.starts_with("seg-"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    let customers = out_dir.join("customers.csv");
    let model_json = out_dir.join("model.json");
    let (code, imported, err) = cli(&[
        "client",
        "--server",
        &addr,
        "import-model",
        model_json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let imported = imported.split_whitespace().next().unwrap().to_owned();
    let (code, offline, err) = cli(&[
        "assign",
        "--model",
        model_json.to_str().unwrap(),
        "--input",
        customers.to_str().unwrap(),
        "--id-col",
        "customer_id",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        offline.starts_with("customer_id,segment,description,distance,margin\n"),
        "{offline}"
    );
    let first_three = |text: &str| -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().take(3).map(str::to_owned).collect())
            .collect()
    };
    for model in [&seg_id, &imported] {
        let (code, remote, err) = cli(&[
            "client",
            "--server",
            &addr,
            "assign",
            "--model",
            model,
            "--input",
            customers.to_str().unwrap(),
            "--id-col",
            "customer_id",
        ]);
        assert_eq!(code, 0, "{model}: {err}");
        assert_eq!(first_three(&remote), first_three(&offline), "{model}");
    }

    // Without --decimal-comma the job fails with the fix, in one line.
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "segment",
        "--transactions",
        log.to_str().unwrap(),
        "--k",
        "3",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("none of the") && err.contains("pass --decimal-comma"),
        "{err}"
    );
    assert!(!err.contains("50 €"), "no cell value from the log: {err}");

    // A model fitted offline, imported, scored on the server like offline.
    let table = dir.path().join("t.csv");
    let mut rows = String::from("id,x,y\n");
    for i in 0..60 {
        rows.push_str(&format!("r{i},{},{}\n", (i % 3) * 10 + i % 2, (i % 3) * 7));
    }
    std::fs::write(&table, rows).unwrap();
    let model = dir.path().join("km.json");
    let (code, _, err) = cli(&[
        "kmeans",
        "--input",
        table.to_str().unwrap(),
        "--columns",
        "x,y",
        "--k",
        "3",
        "--backend",
        "cpu",
        "--save-model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&[
        "client",
        "--server",
        &addr,
        "import-model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let id = out.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with("km-"), "{out}");
    let (code, out, err) = cli(&["client", "--server", &addr, "models"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.ends_with("imported from a model file, no dataset")),
        "{out}"
    );
    let remote_assign = |columns: &[&str]| {
        let input = table.to_str().unwrap();
        let args = ["client", "--server", &addr, "assign", "--model", &id];
        cli(&[&args[..], &["--input", input, "--id-col", "id"], columns].concat())
    };
    let (code, remote, err) = remote_assign(&["--columns", "x,y"]);
    assert_eq!(code, 0, "{err}");
    // Its CSV writer, too, ends quietly on a closed pipe.
    #[cfg(unix)]
    common::ends_quietly_on_a_closed_pipe(
        Command::new(env!("CARGO_BIN_EXE_segmenta"))
            .args(["client", "--server", &addr, "assign", "--model", &id])
            .args(["--input", table.to_str().unwrap(), "--id-col", "id"]),
    );
    let (code, local, err) = cli(&[
        "assign",
        "--model",
        model.to_str().unwrap(),
        "--input",
        table.to_str().unwrap(),
        "--id-col",
        "id",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    let labels = |csv: &str| -> Vec<(String, String)> {
        csv.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_owned(), f[1].to_owned())
            })
            .collect()
    };
    assert_eq!(labels(&remote), labels(&local));
    assert!(remote.starts_with("id,label,"), "{remote}");
    assert_eq!(
        labels(&remote).len(),
        60,
        "three requests of at most 25 rows"
    );
    // Without --columns, the model's own columns: the id column is not sent.
    let (code, by_name, err) = remote_assign(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(by_name, remote);
    // An upload of more values than one message holds goes in blocks.
    let wide = dir.path().join("wide.csv");
    let mut text = String::from("a,b\n");
    for i in 0..150_000 {
        text.push_str(&format!("{},{}\n", i % 97, i % 13));
    }
    std::fs::write(&wide, text).unwrap();
    let (code, out, err) = cli(&[
        "client",
        "--server",
        &addr,
        "upload",
        "--input",
        wide.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("uploaded 150000 rows × 2 columns"), "{out}");
    let exported = dir.path().join("exported.json");
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "export-model",
        &id,
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, again, err) = cli(&[
        "assign",
        "--model",
        exported.to_str().unwrap(),
        "--input",
        table.to_str().unwrap(),
        "--id-col",
        "id",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(labels(&again), labels(&local));

    // Errors: the status code by name and the server's message, one line.
    let (code, _, err) = cli(&["client", "--server", &addr, "watch", "job-nope"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "import-model",
        table.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    // A missing local file: said once.
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "upload",
        "--input",
        "/nonexistent/x.csv",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    drop(server);
}

/// `client clv` and `client uplift` print what `clv` and `uplift` print
/// on the same files, and download or write the same pages.
#[test]
fn the_cli_client_runs_clv_and_uplift_like_the_local_commands() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let addr = server.addr.clone();
    let log = dir.path().join("log.csv");
    common::logs::buying_and_leaving(&log, 800, 21);
    let log = log.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let (code, out, err) = cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let value = [
        "--calibration-end",
        "2025-03-31",
        "--holdout-end",
        "2025-12-31",
        "--horizon",
        "26",
        "--json",
    ];
    let out_dir = dir.path().join("clv");
    let remote = json(
        &[
            &["client", "--server", &addr, "clv", "--transactions", log][..],
            &value,
            &["--out", out_dir.to_str().unwrap()],
        ]
        .concat(),
    );
    let local = json(&[&["clv", "--transactions", log][..], &value].concat());
    for key in [
        "bgnbd",
        "gamma_gamma",
        "holdout",
        "total_clv",
        "n_customers",
    ] {
        assert_eq!(remote[key], local[key], "{key}");
    }
    assert!(remote["id"].as_str().unwrap().starts_with("clv-"));
    for f in ["clv.html", "holdout.png", "customers.csv", "clv.json"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    // A job that fails on what only the log can tell: the log this
    // command uploaded does not stay behind.
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "clv",
        "--transactions",
        log,
        "--calibration-end",
        "2026-06-30",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("after the last purchase"), "{err}");
    let uploaded = err
        .split_whitespace()
        .find(|w| w.starts_with("tx-"))
        .unwrap_or_else(|| panic!("no log id in {err}"));
    assert!(
        err.contains(&format!(
            "the uploaded log {uploaded} was deleted, as the job failed"
        )),
        "{err}"
    );
    let stored = |id: &str| {
        std::fs::read_dir(dir.path().join("data/transactions"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(id))
    };
    assert!(!stored(uploaded), "the failed run's log stays");
    assert!(stored("tx-"), "the successful run's log is kept");

    // Groups drawn on the server, outcomes streamed from a local file.
    let seg_dir = dir.path().join("seg");
    let (code, out, err) = cli(&[
        "client",
        "--server",
        &addr,
        "segment",
        "--transactions",
        log,
        "--k",
        "3",
        "--holdout-share",
        "0.3",
        "--out",
        seg_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let seg = out
        .split_whitespace()
        .find(|w| w.starts_with("seg-"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let customers = std::fs::read_to_string(seg_dir.join("customers.csv")).unwrap();
    let mut outcomes = String::from("customer_id,converted,revenue\n");
    let header: Vec<&str> = customers.lines().next().unwrap().split(',').collect();
    let group = header.iter().position(|h| *h == "group").unwrap();
    // The groups are said as the local `segment` says them.
    let control = customers
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(group) == Some("control"))
        .count();
    let treatment = customers.lines().count() - 1 - control;
    assert!(
        out.contains(&format!(
            "campaign groups: {treatment} treatment, {control} control (per segment: "
        )),
        "{out}"
    );
    for (i, line) in customers.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let rate = if f[group] == "treatment" { 35 } else { 10 };
        let converted = (i * 37) % 100 < rate;
        outcomes.push_str(&format!(
            "{},{},{}\n",
            f[0],
            converted as u8,
            if converted { "30" } else { "" }
        ));
    }
    let outcomes_path = dir.path().join("outcomes.csv");
    std::fs::write(&outcomes_path, outcomes).unwrap();
    let up_dir = dir.path().join("up");
    let remote = json(&[
        "client",
        "--server",
        &addr,
        "uplift",
        "--segmentation",
        &seg,
        "--outcomes",
        outcomes_path.to_str().unwrap(),
        "--out",
        up_dir.to_str().unwrap(),
        "--json",
    ]);
    let local = json(&[
        "uplift",
        "--assignments",
        seg_dir.join("customers.csv").to_str().unwrap(),
        "--outcomes",
        outcomes_path.to_str().unwrap(),
        "--json",
    ]);
    for key in ["overall", "segments", "customers", "warnings"] {
        assert_eq!(remote[key], local[key], "{key}");
    }
    assert!(remote["overall"]["conversion"]["low"].as_f64().unwrap() > 0.1);
    assert!(up_dir.join("uplift.html").is_file() && up_dir.join("uplift.png").is_file());
    // A segmentation without groups: the status code and the reason.
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "uplift",
        "--segmentation",
        "seg-missing",
        "--outcomes",
        outcomes_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("NOT_FOUND") && err.contains("seg-missing"),
        "{err}"
    );
}
