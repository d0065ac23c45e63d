//! The service as an attacker and an operator meet it: keys and roles, TLS,
//! limits refused before any work, idle and concurrent uploads, cancellation
//! of huge fits, pruning and paging, quotas and a full disk, erasure of one
//! customer, metrics. Every server is real, on 127.0.0.1:0.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::Array as _;
use common::server::{runtime, with_key, Keys, Pki, Served};
use segmenta::backend::BackendChoice;
use segmenta::service::proto as pb;
use segmenta::service::{Limits, ServerConfig};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

use pb::upload_request::Message;

fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        backend: BackendChoice::Cpu,
        ..ServerConfig::new(dir.join("data"))
    }
}

fn header(columns: &[&str], n_rows: usize) -> pb::UploadRequest {
    pb::UploadRequest {
        message: Some(Message::Header(pb::UploadHeader {
            name: "t".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            n_rows: n_rows as u64,
        })),
    }
}

fn rows(values: Vec<f32>) -> pb::UploadRequest {
    pb::UploadRequest {
        message: Some(Message::Rows(pb::RowBlock {
            values,
            values_f32le: Default::default(),
        })),
    }
}

/// A small two-column dataset: `n` rows in three groups.
fn grouped(n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let g = (i % 3) as f32;
            [
                g * 10.0 + (i % 7) as f32 * 0.1,
                g * -5.0 + (i % 5) as f32 * 0.1,
            ]
        })
        .collect()
}

fn datasets(c: &Channel) -> pb::datasets_client::DatasetsClient<Channel> {
    pb::datasets_client::DatasetsClient::new(c.clone())
}

fn jobs(c: &Channel) -> pb::jobs_client::JobsClient<Channel> {
    pb::jobs_client::JobsClient::new(c.clone())
}

fn clustering(c: &Channel) -> pb::clustering_client::ClusteringClient<Channel> {
    pb::clustering_client::ClusteringClient::new(c.clone())
}

async fn upload(
    c: &Channel,
    key: Option<&str>,
    values: Vec<f32>,
) -> Result<pb::Dataset, tonic::Status> {
    let stream = tokio_stream::iter(vec![header(&["a", "b"], values.len() / 2), rows(values)]);
    let request = match key {
        Some(k) => with_key(stream, k),
        None => tonic::Request::new(stream),
    };
    datasets(c).upload(request).await.map(|r| r.into_inner())
}

/// Follows a job to its end.
async fn finish(c: &Channel, key: Option<&str>, id: &str) -> pb::Job {
    let request = pb::WatchJobRequest { id: id.into() };
    let request = match key {
        Some(k) => with_key(request, k),
        None => tonic::Request::new(request),
    };
    let mut stream = jobs(c).watch_job(request).await.unwrap().into_inner();
    while let Some(e) = stream.message().await.unwrap() {
        if let Some(pb::job_event::Event::Finished(job)) = e.event {
            return job;
        }
    }
    panic!("job {id} never finished")
}

async fn wait_serving(c: &Channel, service: &str) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(c.clone());
    for _ in 0..200 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service:?} never SERVING");
}

#[test]
fn keys_and_roles_decide_every_call() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let keys = Keys::write_file(&dir.path().join("keys"));
        let server = Served::start(ServerConfig {
            auth_keys: Some(dir.path().join("keys")),
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        // Health needs no key, and every service is registered.
        for service in ["", "segmenta.v1.Segmentations", "segmenta.v1.Privacy"] {
            wait_serving(&c, service).await;
        }

        let list = || pb::ListDatasetsRequest::default();
        let e = datasets(&c).list(list()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(
            e.message().contains("authorization: Bearer"),
            "{}",
            e.message()
        );
        let e = datasets(&c)
            .list(with_key(list(), "sgk_not-a-key"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let mut bad_scheme = tonic::Request::new(list());
        bad_scheme.metadata_mut().insert(
            "authorization",
            format!("Basic {}", keys.admin).parse().unwrap(),
        );
        let e = datasets(&c).list(bad_scheme).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("is not `Bearer KEY`"), "{e:?}");
        assert!(!e.message().contains(&keys.admin), "the key is echoed");
        // A bare key, without the scheme: the same hint.
        let mut bare = tonic::Request::new(list());
        bare.metadata_mut()
            .insert("authorization", keys.admin.parse().unwrap());
        let e = datasets(&c).list(bare).await.unwrap_err();
        assert!(
            e.message().contains("put `Bearer ` before the API key"),
            "{e:?}"
        );

        // read: reads only.
        datasets(&c)
            .list(with_key(list(), &keys.read))
            .await
            .unwrap();
        let e = upload(&c, Some(&keys.read), grouped(30)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("needs the write role"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("analyst"), "{}", e.message());

        // write: uploads and fits, but no deletes.
        let d = upload(&c, Some(&keys.write), grouped(30)).await.unwrap();
        let fit = pb::FitKMeansRequest {
            dataset_id: d.id.clone(),
            k: 3,
            ..Default::default()
        };
        assert_eq!(
            clustering(&c)
                .fit_k_means(with_key(fit.clone(), &keys.read))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let job = clustering(&c)
            .fit_k_means(with_key(fit, &keys.write))
            .await
            .unwrap()
            .into_inner();
        let job = finish(&c, Some(&keys.read), &job.id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{}", job.error);
        let delete = || pb::DeleteDatasetRequest {
            id: d.id.clone(),
            cascade: true,
        };
        let e = datasets(&c)
            .delete(with_key(delete(), &keys.write))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("needs the admin role"),
            "{}",
            e.message()
        );
        let erase = pb::EraseCustomerRequest {
            customer_id: "C1".into(),
        };
        assert_eq!(
            pb::privacy_client::PrivacyClient::new(c.clone())
                .erase_customer(with_key(erase, &keys.write))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        // admin: deletes, cascading to the model.
        let deleted = datasets(&c)
            .delete(with_key(delete(), &keys.admin))
            .await
            .unwrap()
            .into_inner()
            .deleted_ids;
        assert_eq!(deleted.len(), 2, "{deleted:?}");

        // Reflection needs a key too.
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, ServerReflectionRequest,
        };
        let ask = || {
            tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }])
        };
        let mut reflection = ServerReflectionClient::new(c.clone());
        assert_eq!(
            reflection
                .server_reflection_info(ask())
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        reflection
            .server_reflection_info(with_key(ask(), &keys.read))
            .await
            .unwrap();

        let info = pb::server_client::ServerClient::new(c.clone())
            .get_info(with_key(pb::GetInfoRequest {}, &keys.read))
            .await
            .unwrap()
            .into_inner();
        assert!(info.auth_required && !info.tls && !info.server_paths);
        server.stop().await.unwrap();
    });
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: bool,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn info(c: &Channel, key: &str) -> Result<pb::ServerInfo, tonic::Status> {
    pb::server_client::ServerClient::new(c.clone())
        .get_info(with_key(pb::GetInfoRequest {}, key))
        .await
        .map(|r| r.into_inner())
}

/// The interpreter the test script set up (a virtual environment), or python3.
fn python() -> String {
    std::env::var("SEGMENTA_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_has_grpc() -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", "import grpc, segmenta"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("SEGMENTA_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!(
            "SEGMENTA_REQUIRE_PYTHON=1 but {} cannot import grpc and segmenta (pip install ./clients/python)",
            python()
        );
    }
    ok
}

/// `segmenta client --server ADDR --token TOKEN [extra] info` in a child
/// process: its exit code and stderr.
async fn cli_info(
    addr: std::net::SocketAddr,
    token: &str,
    extra: Vec<std::ffi::OsString>,
) -> (Option<i32>, String) {
    let (addr, token) = (addr.to_string(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_segmenta"))
            .args(["client", "--server", &addr, "--token", &token])
            .args(extra)
            .arg("info")
            .env_remove("SEGMENTA_SERVER")
            .env_remove("SEGMENTA_CA_CERT")
            .env_remove("SEGMENTA_CLIENT_CERT")
            .env_remove("SEGMENTA_CLIENT_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[test]
fn tls_and_mutual_tls_with_rust_and_python_clients() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let keys = Keys::write_file(&dir.path().join("keys"));
        let pki = Pki::new();
        let tls = pki.write(dir.path(), false);
        let server = Served::start(ServerConfig {
            auth_keys: Some(dir.path().join("keys")),
            tls: Some(tls),
            ..config(dir.path())
        })
        .await;
        let c = tls_channel(server.addr, &pki, false).await.unwrap();
        let got = info(&c, &keys.read).await.unwrap();
        assert!(got.tls && got.auth_required);
        // A plaintext client against the TLS port fails, and cleanly.
        let plain = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await;
        if let Ok(plain) = plain {
            let e = info(&plain, &keys.read).await.unwrap_err();
            assert_ne!(e.code(), Code::Ok);
        }
        // The command-line client says what is likely wrong.
        let (code, stderr) = cli_info(server.addr, &keys.read, Vec::new()).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("connect with --ca-cert"), "{stderr}");
        // A client that does not trust the CA is refused at the handshake.
        let other = Pki::new();
        assert!(
            tls_channel(server.addr, &other, false).await.is_err()
                || info(
                    &tls_channel(server.addr, &other, false).await.unwrap(),
                    &keys.read
                )
                .await
                .is_err()
        );

        if python_has_grpc() {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/examples/auth_tls_check.py");
            let out = std::process::Command::new(python())
                .arg(&script)
                .args(["--server", &server.addr.to_string()])
                .arg("--ca-cert")
                .arg(dir.path().join("ca.pem"))
                .args(["--token", &keys.read, "--server-name", "localhost"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("0 failed"), "{text}");
        } else {
            eprintln!(
                "SKIPPED: the Python TLS client check (no segmenta package); scripts/test.sh installs it"
            );
        }
        server.stop().await.unwrap();

        // Mutual TLS: no client certificate, no connection.
        let tls = pki.write(dir.path(), true);
        let server = Served::start(ServerConfig {
            auth_keys: Some(dir.path().join("keys")),
            tls: Some(tls),
            ..config(dir.path())
        })
        .await;
        let refused = match tls_channel(server.addr, &pki, false).await {
            Err(_) => true,
            Ok(c) => info(&c, &keys.read).await.is_err(),
        };
        assert!(refused, "a client without a certificate got through");
        let c = tls_channel(server.addr, &pki, true).await.unwrap();
        info(&c, &keys.read).await.unwrap();
        // The command-line client says what a refusal means.
        let ca: Vec<std::ffi::OsString> = vec!["--ca-cert".into(), dir.path().join("ca.pem").into()];
        let cli = |extra: Vec<std::ffi::OsString>| {
            cli_info(server.addr, &keys.read, [ca.clone(), extra].concat())
        };
        let (code, stderr) = cli(Vec::new()).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--client-cert"), "{stderr}");
        // A certificate from a CA the server does not trust.
        let stranger = Pki::new();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        stranger.write(&elsewhere, true);
        let (code, stderr) = cli(vec![
            "--client-cert".into(),
            elsewhere.join("client.pem").into(),
            "--client-key".into(),
            elsewhere.join("client.key").into(),
        ])
        .await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("client certificate") || stderr.contains("--client-cert"),
            "{stderr}"
        );
        let (code, stderr) = cli(vec![
            "--client-cert".into(),
            dir.path().join("client.pem").into(),
            "--client-key".into(),
            dir.path().join("client.key").into(),
        ])
        .await;
        assert_eq!(code, Some(0), "{stderr}");
        server.stop().await.unwrap();

        // TLS asked of a plaintext server: said as such.
        let plain = Served::start(ServerConfig {
            auth_keys: Some(dir.path().join("keys")),
            ..config(&dir.path().join("plain"))
        })
        .await;
        let (code, stderr) = cli_info(plain.addr, &keys.read, ca.clone()).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("does not speak TLS"), "{stderr}");
        plain.stop().await.unwrap();
    });
}

#[test]
fn requests_past_a_limit_are_refused_before_any_work() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(ServerConfig {
            limits: Limits {
                max_features: 8,
                max_k: 50,
                max_silhouette_sample: 1000,
                max_iterations: 200,
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        let exhausted = |e: tonic::Status, limit: &str| {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert!(
                e.message().contains(limit),
                "{} should name {limit}",
                e.message()
            );
        };
        // Too wide, refused at the header: nothing is stored.
        let wide: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
        let e = datasets(&c)
            .upload(tokio_stream::iter(vec![pb::UploadRequest {
                message: Some(Message::Header(pb::UploadHeader {
                    name: "wide".into(),
                    columns: wide,
                    n_rows: 1,
                })),
            }]))
            .await
            .unwrap_err();
        exhausted(e, "max_features");
        // Names are capped and never echoed whole.
        let e = datasets(&c)
            .upload(tokio_stream::iter(vec![pb::UploadRequest {
                message: Some(Message::Header(pb::UploadHeader {
                    name: "n".repeat(1 << 20),
                    columns: vec!["a".into()],
                    n_rows: 1,
                })),
            }]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 300, "{} bytes", e.message().len());
        let e = datasets(&c)
            .get(pb::GetDatasetRequest {
                id: "x".repeat(1 << 20),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().len() < 300, "{} bytes", e.message().len());

        let d = upload(&c, None, grouped(300)).await.unwrap();
        let fit = |k: u32, n_init: u32, max_iter: u32| pb::FitKMeansRequest {
            dataset_id: d.id.clone(),
            k,
            n_init,
            max_iter,
            ..Default::default()
        };
        exhausted(
            clustering(&c)
                .fit_k_means(fit(51, 1, 10))
                .await
                .unwrap_err(),
            "max_k",
        );
        exhausted(
            clustering(&c)
                .fit_k_means(fit(3, 1000, 1000))
                .await
                .unwrap_err(),
            "max_iterations",
        );
        // Unset, max_iter (300) yields to the limit rather than break it.
        let job = clustering(&c)
            .fit_k_means(fit(3, 2, 0))
            .await
            .unwrap()
            .into_inner();
        let job = finish(&c, None, &job.id).await;
        assert!(
            matches!(job.result, Some(pb::job::Result::Kmeans(_))),
            "{}",
            job.error
        );
        let job = clustering(&c)
            .fit_k_means(fit(3, 1, 50))
            .await
            .unwrap()
            .into_inner();
        let job = finish(&c, None, &job.id).await;
        let Some(pb::job::Result::Kmeans(model)) = job.result else {
            panic!("{}", job.error)
        };
        // So does the default silhouette sample (10,000).
        let default = clustering(&c)
            .evaluate(pb::EvaluateRequest {
                model_id: model.id.clone(),
                dataset_id: d.id.clone(),
                silhouette_sample_size: 0,
                seed: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(default.silhouette_sample_size, 300);
        let e = clustering(&c)
            .evaluate(pb::EvaluateRequest {
                model_id: model.id.clone(),
                dataset_id: d.id.clone(),
                silhouette_sample_size: 1001,
                seed: 0,
            })
            .await
            .unwrap_err();
        exhausted(e, "max_silhouette_sample");
        let ok = clustering(&c)
            .evaluate(pb::EvaluateRequest {
                model_id: model.id,
                dataset_id: d.id.clone(),
                silhouette_sample_size: 1000,
                seed: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.silhouette_sample_size, 300);
        // Server paths are off by default.
        let e = datasets(&c)
            .import(pb::ImportRequest {
                path: "/etc/passwd".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("--import-root"), "{}", e.message());
        server.stop().await.unwrap();
    });
}

/// Entries in the data directory's store folders named like temporaries.
fn temporaries(data: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in [
        "datasets",
        "models",
        "transactions",
        "segmentations",
        "jobs",
    ] {
        if let Ok(entries) = std::fs::read_dir(data.join(sub)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    found.push(format!("{sub}/{name}"));
                }
            }
        }
    }
    found
}

#[test]
fn idle_and_excess_uploads_are_cut_off_and_leave_nothing() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(ServerConfig {
            limits: Limits {
                idle_timeout: Duration::from_secs(1),
                handshake_timeout: Duration::from_secs(1),
                max_concurrent_uploads: 1,
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(header(&["a", "b"], 2)).await.unwrap();
        tx.send(rows(vec![1.0, 2.0])).await.unwrap();
        let started = Instant::now();
        let mut client = datasets(&c);
        let idle = tokio::spawn(async move {
            client
                .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // While that one is open, a second upload has no slot.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e = upload(&c, None, grouped(3)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.message().contains("max_concurrent_uploads"),
            "{}",
            e.message()
        );
        // A connection that never speaks is closed after the handshake timeout.
        let silent = tokio::task::spawn_blocking({
            let addr = server.addr;
            move || {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let t = Instant::now();
                let mut buf = [0u8; 64];
                // hyper may write its SETTINGS first; read until the close.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                t.elapsed()
            }
        });
        let e = idle.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("idle"), "{}", e.message());
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(tx);
        let closed_after = silent.await.unwrap();
        assert!(
            closed_after < Duration::from_secs(15),
            "a silent connection stayed open {closed_after:?}"
        );
        assert!(temporaries(&dir.path().join("data")).is_empty());
        let listed = datasets(&c)
            .list(pb::ListDatasetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .datasets;
        assert!(listed.is_empty(), "{listed:?}");
        upload(&c, None, grouped(3)).await.unwrap();
        server.stop().await.unwrap();
    });
}

/// Reads from `socket` until the server closes it (or 20 s pass); returns
/// how long that took and how many bytes came.
fn time_to_close(mut socket: std::net::TcpStream) -> (Duration, usize) {
    use std::io::Read;
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let (mut buf, mut got) = ([0u8; 4096], 0);
    while let Ok(n) = socket.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    (t.elapsed(), got)
}

/// A TLS ClientHello as a real client sends it: recorded from a tonic
/// client connecting to a listener that never answers.
async fn client_hello(pki: &Pki) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let recorder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = recorder.local_addr().unwrap();
    let pki_ca = pki.ca.clone();
    let connecting = tokio::spawn(async move {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki_ca))
            .domain_name("localhost");
        let _ = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await;
    });
    let (mut socket, _) = recorder.accept().await.unwrap();
    let mut hello = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut hello))
        .await
        .unwrap()
        .unwrap();
    hello.truncate(n);
    connecting.abort();
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    hello
}

/// Connection slots cannot be held by sockets that connect and stall: a
/// TLS ClientHello followed by silence is cut off at the handshake
/// timeout like a silent socket, and one address cannot take more than its
/// share of the slots.
#[test]
fn stalled_handshakes_and_one_greedy_peer_cannot_hold_the_slots() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let pki = Pki::new();
        let server = Served::start(ServerConfig {
            tls: Some(pki.write(dir.path(), true)),
            limits: Limits {
                handshake_timeout: Duration::from_secs(1),
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let hello = client_hello(&pki).await;
        let addr = server.addr;
        let (took, got) = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&hello).unwrap();
            time_to_close(s)
        })
        .await
        .unwrap();
        assert!(got > 0, "the server answered the ClientHello");
        assert!(
            took < Duration::from_secs(10),
            "a stalled TLS handshake held its slot {took:?}"
        );
        // A client that finishes the handshake is served.
        let c = tls_channel(server.addr, &pki, true).await.unwrap();
        pb::server_client::ServerClient::new(c)
            .get_info(pb::GetInfoRequest {})
            .await
            .unwrap();
        server.stop().await.unwrap();

        let server = Served::start(ServerConfig {
            limits: Limits {
                max_connections_per_peer: 2,
                handshake_timeout: Duration::from_secs(30),
                ..Limits::default()
            },
            ..config(&dir.path().join("second"))
        })
        .await;
        let addr = server.addr;
        let held: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (took, _) = tokio::task::spawn_blocking(move || {
            time_to_close(std::net::TcpStream::connect(addr).unwrap())
        })
        .await
        .unwrap();
        assert!(
            took < Duration::from_secs(5),
            "a third connection from one address was kept {took:?}"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        pb::server_client::ServerClient::new(server.channel().await)
            .get_info(pb::GetInfoRequest {})
            .await
            .unwrap();
        server.stop().await.unwrap();
    });
}

#[test]
fn cancel_stops_a_fit_with_a_huge_k_promptly() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(config(dir.path())).await;
        let c = server.channel().await;
        let n = 200_000;
        let values: Vec<f32> = (0..2 * n as u64)
            .map(|i| ((i * 7919) % 10007) as f32)
            .collect();
        let mut messages = vec![header(&["a", "b"], n)];
        messages.extend(values.chunks(100_000).map(|b| rows(b.to_vec())));
        let d = datasets(&c)
            .upload(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        for init in [pb::InitMethod::KmeansPlusPlus, pb::InitMethod::Random] {
            let job = clustering(&c)
                .fit_k_means(pb::FitKMeansRequest {
                    dataset_id: d.id.clone(),
                    k: 50_000,
                    init: init as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut events = jobs(&c)
                .watch_job(pb::WatchJobRequest { id: job.id.clone() })
                .await
                .unwrap()
                .into_inner();
            // Wait until it computes (the first event may be "queued").
            while let Some(e) = events.message().await.unwrap() {
                if matches!(e.event, Some(pb::job_event::Event::Progress(ref p)) if p.phase == "fitting" || p.phase == "lloyd")
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let asked = Instant::now();
            jobs(&c)
                .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
                .await
                .unwrap();
            let done = finish(&c, None, &job.id).await;
            let took = asked.elapsed();
            assert_eq!(done.state, pb::JobState::Cancelled as i32, "{}", done.error);
            eprintln!("{init:?}: k = 50000 on {n} rows stopped {took:?} after CancelJob");
            // A hang guard, not a speed test: the loops check every block.
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
        server.stop().await.unwrap();
    });
}

#[test]
fn finished_jobs_are_pruned_and_lists_page() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(ServerConfig {
            limits: Limits {
                max_retained_jobs: 2,
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let d = upload(&c, None, grouped(30)).await.unwrap();
            let job = clustering(&c)
                .fit_k_means(pb::FitKMeansRequest {
                    dataset_id: d.id.clone(),
                    k: 2,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            finish(&c, None, &job.id).await;
            ids.push(d.id);
        }
        // Pruning follows each job's end: give the last one a moment.
        let start = Instant::now();
        loop {
            let listed = jobs(&c)
                .list_jobs(pb::ListJobsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .jobs;
            let records = std::fs::read_dir(dir.path().join("data/jobs"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
                })
                .count();
            if listed.len() == 2 && records == 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} jobs listed, {records} records kept",
                listed.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Pages of one, in id order, ending with an empty token.
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let page = datasets(&c)
                .list(pb::ListDatasetsRequest {
                    page_size: 1,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.datasets.len() <= 1);
            seen.extend(page.datasets.into_iter().map(|d| d.id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, ids);
        for bad in [
            "../../etc",
            "garbage",
            "AAAA",
            &format!("km-{}", &ids[0][3..]),
        ] {
            let e = datasets(&c)
                .list(pb::ListDatasetsRequest {
                    page_size: 1,
                    page_token: bad.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        server.stop().await.unwrap();
    });
}

/// A tmpfs mounted for the test's lifetime (CI runs as root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server may still hold a file open for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_quota_or_a_full_disk_refuses_writes_and_keeps_serving() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(ServerConfig {
            limits: Limits {
                max_data_dir_bytes: Some(16 * 1024),
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        upload(&c, None, grouped(100)).await.unwrap();
        let e = upload(&c, None, grouped(5000)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.message().contains("max_data_dir_bytes"),
            "{}",
            e.message()
        );
        assert!(temporaries(&dir.path().join("data")).is_empty());
        upload(&c, None, grouped(100)).await.unwrap();
        server.stop().await.unwrap();

        // A real full disk: a 512 KiB tmpfs as the data directory.
        let Some(disk) = Tmpfs::mount(&dir.path().join("small"), 512 * 1024) else {
            if std::env::var("CI").is_ok() {
                panic!("CI runs as root and must be able to mount a tmpfs");
            }
            eprintln!("SKIPPED: the full-disk half of this test (cannot mount a tmpfs: not root?)");
            return;
        };
        let server = Served::start(ServerConfig {
            backend: BackendChoice::Cpu,
            ..ServerConfig::new(disk.0.join("data"))
        })
        .await;
        let c = server.channel().await;
        let e = upload(&c, None, grouped(100_000)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("disk is full"), "{}", e.message());
        assert!(temporaries(&disk.0.join("data")).is_empty());
        let d = upload(&c, None, grouped(100)).await.unwrap();
        datasets(&c)
            .get(pb::GetDatasetRequest { id: d.id })
            .await
            .unwrap();
        server.stop().await.unwrap();
    });
}

fn every_file(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            every_file(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    every_file(dir, &mut files);
    files
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .map(|f| f.display().to_string())
        .collect()
}

#[test]
fn erasing_a_customer_leaves_no_trace_in_the_data_dir() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(config(dir.path())).await;
        let c = server.channel().await;
        let target = "CUST-ERASE-7f3a9c";
        let mut log = String::from("customer_id,date,amount\n");
        for i in 0..60 {
            for j in 0..(1 + i % 4) {
                log.push_str(&format!("C{i:03},2026-0{}-1{j},{}.50\n", 1 + i % 9, 10 + i));
            }
        }
        log.push_str(&format!(
            "{target},2026-03-04,99.00\n{target},2026-05-06,12.00\n"
        ));
        let mut s = pb::segmentations_client::SegmentationsClient::new(c.clone());
        let uploaded = s
            .upload_transactions(tokio_stream::iter(vec![
                pb::UploadTransactionsRequest {
                    message: Some(pb::upload_transactions_request::Message::Header(
                        pb::TransactionsHeader {
                            name: "log.csv".into(),
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
            ]))
            .await
            .unwrap()
            .into_inner();
        // A European export of the same shop: BOM, semicolons, decimal
        // commas. Erasure must split it as the reader does.
        let mut eu = b"\xEF\xBB\xBFcustomer_id;date;amount\r\n".to_vec();
        eu.extend(format!("C001;01/02/2026;\"1.234,50\"\r\n{target};13/03/2026;99,00\r\n{target};14/05/2026;12,00\r\n").bytes());
        let european = s
            .upload_transactions(tokio_stream::iter(vec![
                pb::UploadTransactionsRequest {
                    message: Some(pb::upload_transactions_request::Message::Header(
                        pb::TransactionsHeader {
                            name: "eu.csv".into(),
                            format: pb::FileFormat::Csv as i32,
                            text_format: Some(pb::TextFormat {
                                decimal_comma: true,
                                ..Default::default()
                            }),
                            size_bytes: eu.len() as u64,
                        },
                    )),
                },
                pb::UploadTransactionsRequest {
                    message: Some(pb::upload_transactions_request::Message::Chunk(eu)),
                },
            ]))
            .await
            .unwrap()
            .into_inner();
        let job = s
            .segment(pb::SegmentRequest {
                source: Some(pb::segment_request::Source::TransactionsId(
                    uploaded.id.clone(),
                )),
                k_choice: Some(pb::segment_request::KChoice::K(3)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let done = finish(&c, None, &job.id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        let data = dir.path().join("data");
        let before = files_containing(&data, target.as_bytes());
        assert!(
            before.len() >= 3,
            "the id is stored before erasure: {before:?}"
        );

        let changed = pb::privacy_client::PrivacyClient::new(c.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: target.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .changed;
        for log in [&uploaded.id, &european.id] {
            let log_change = changed
                .iter()
                .find(|o| o.kind == "transaction_log" && &o.id == log)
                .unwrap_or_else(|| panic!("log {log} changed: {changed:?}"));
            assert_eq!(log_change.rows_removed, 2);
        }
        let eu_file = data.join("transactions").join(&european.id).join("log.csv");
        let kept = std::fs::read(&eu_file).unwrap();
        // BOM, delimiter, quoting and Windows line ends as uploaded.
        assert_eq!(
            String::from_utf8_lossy(&kept),
            "\u{FEFF}customer_id;date;amount\r\nC001;01/02/2026;\"1.234,50\"\r\n"
        );
        assert!(
            changed.iter().any(|o| o.kind == "segmentation"),
            "{changed:?}"
        );
        let after = files_containing(&data, target.as_bytes());
        assert!(after.is_empty(), "still named in {after:?}");
        // Parquet compresses: read the customer table back too.
        let Some(pb::job::Result::Segmentation(seg)) = done.result else {
            panic!()
        };
        let parquet = data
            .join("segmentations")
            .join(&seg.id)
            .join("customers.parquet");
        let file = std::fs::File::open(&parquet).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut customers = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let ids = arrow_cast::cast(batch.column(0), &arrow_schema::DataType::Utf8).unwrap();
            let ids = ids
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            customers += ids.len();
            assert!(ids.iter().all(|v| v != Some(target)));
        }
        assert_eq!(customers, 60);
        // A second erasure finds nothing, and the server serves on.
        let again = pb::privacy_client::PrivacyClient::new(c.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: target.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .changed;
        assert!(again.is_empty(), "{again:?}");
        server.stop().await.unwrap();
    });
}

#[test]
fn metrics_are_served_as_prometheus_text() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = Served::start(ServerConfig {
            metrics_addr: Some(addr),
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        let d = upload(&c, None, grouped(30)).await.unwrap();
        datasets(&c)
            .get(pb::GetDatasetRequest {
                id: "ds-nope".into(),
            })
            .await
            .unwrap_err();
        let job = clustering(&c)
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: d.id,
                k: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        finish(&c, None, &job.id).await;
        // A path spelled with extra slashes is not a known method: it gets
        // no label of its own (labels must not grow with attacker input).
        let mut grpc = tonic::client::Grpc::new(c.clone());
        grpc.ready().await.unwrap();
        let odd: tonic::Result<tonic::Response<pb::ServerInfo>> = grpc
            .unary(
                tonic::Request::new(pb::GetInfoRequest {}),
                http::uri::PathAndQuery::from_static("//segmenta.v1.Server/GetInfo"),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert_eq!(odd.unwrap_err().code(), Code::Unimplemented);
        let needles = [
            "segmenta_requests_total{method=\"/segmenta.v1.Datasets/Upload\",code=\"Ok\"} 1",
            "segmenta_requests_total{method=\"/segmenta.v1.Datasets/Get\",code=\"NotFound\"} 1",
            "segmenta_request_duration_seconds_bucket",
            "segmenta_jobs{kind=\"fit_kmeans\",state=\"succeeded\"} 1",
            "segmenta_job_queue_depth 0",
            "segmenta_stored_bytes",
            "segmenta_backend{backend=\"cpu\"",
            "segmenta_requests_total{method=\"unknown\",code=\"Unimplemented\"} 1",
        ];
        // A call is counted when its response ends, just after the client
        // has it: scrape again until the last one shows (10 s at most).
        let start = Instant::now();
        let text = loop {
            let text = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .await
            .unwrap();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            let missing: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| !text.contains(n))
                .collect();
            if missing.is_empty() {
                break text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{missing:?} missing from\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!text.contains("//segmenta"), "{text}");
        server.stop().await.unwrap();
    });
}

#[test]
fn scoring_in_streams_takes_the_same_slots_as_unary_calls() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = Served::start(ServerConfig {
            limits: Limits {
                max_concurrent_requests: 1,
                ..Limits::default()
            },
            ..config(dir.path())
        })
        .await;
        let c = server.channel().await;
        let d = 16;
        let values: Vec<f32> = (0..5000 * d).map(|i| ((i * 7919) % 1009) as f32).collect();
        let mut messages = vec![pb::UploadRequest {
            message: Some(Message::Header(pb::UploadHeader {
                name: "s".into(),
                columns: (0..d).map(|j| format!("f{j}")).collect(),
                n_rows: 5000,
            })),
        }];
        messages.push(rows(values));
        let ds = datasets(&c)
            .upload(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        let job = clustering(&c)
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: ds.id,
                k: 4000,
                max_iter: 1,
                init: pb::InitMethod::Random as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let job = finish(&c, None, &job.id).await;
        let Some(pb::job::Result::Kmeans(model)) = job.result else {
            panic!("{}", job.error)
        };
        // One stream message of 150,000 rows against k = 4,000 keeps the one
        // scoring slot busy for a while; a unary Assign meanwhile is shed.
        let big: Vec<f32> = (0..150_000 * d).map(|i| (i % 997) as f32).collect();
        let mut refused = None;
        for _ in 0..10 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(pb::AssignRequest {
                model_id: model.id.clone(),
                rows: big.clone(),
                n_features: 0,
            })
            .await
            .unwrap();
            let mut streaming = clustering(&c);
            let stream = tokio::spawn(async move {
                let mut out = streaming
                    .assign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let first = out.message().await;
                drop(tx);
                first
            });
            // Small unary calls, one every few milliseconds, for as long as
            // the stream's message is in flight: once the stream holds the
            // slot, the next one is shed. (A fixed sleep raced the upload
            // on a loaded machine.)
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut shed = None;
            while !stream.is_finished() && tokio::time::Instant::now() < deadline {
                let unary = clustering(&c)
                    .assign(pb::AssignRequest {
                        model_id: model.id.clone(),
                        rows: big[..d].to_vec(),
                        n_features: 0,
                    })
                    .await;
                if let Err(e) = unary {
                    shed = Some(e);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let streamed = stream.await.unwrap();
            match &streamed {
                // A unary call held the slot when the stream's message came: try again.
                Err(s) if s.code() == Code::ResourceExhausted => continue,
                other => assert!(other.is_ok(), "{other:?}"),
            }
            if shed.is_some() {
                refused = shed;
                break;
            }
        }
        let e = refused.expect("a unary Assign got a slot the stream held, ten times");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.message().contains("max_concurrent_requests"),
            "{}",
            e.message()
        );
        server.stop().await.unwrap();
    });
}
