//! The gRPC service, end to end: a real server on 127.0.0.1:0 and the
//! generated client. Every call has a deadline so a hang fails the test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::blobs;
use ndarray::Array2;
use segmenta::backend::cpu::CpuBackend;
use segmenta::backend::BackendChoice;
use segmenta::kmeans::KMeansParams;
use segmenta::pca::PcaParams;
use segmenta::service::proto as pb;
use segmenta::service::{serve, Limits, ServerConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

use pb::upload_request::Message;

struct TestServer {
    channel: Channel,
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// A server on `dir` whose import root is the examples' data folder.
    async fn start(dir: &Path, limits: Limits) -> Self {
        Self::start_with(ServerConfig {
            backend: BackendChoice::Cpu,
            limits,
            import_roots: vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data")],
            ..ServerConfig::new(dir)
        })
        .await
    }

    async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            serve(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = Channel::from_shared(addr.clone())
            .unwrap()
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            addr,
            stop: Some(stop),
            done,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.done)
            .await
            .expect("server stops")
            .unwrap();
    }

    fn datasets(&self) -> pb::datasets_client::DatasetsClient<Channel> {
        pb::datasets_client::DatasetsClient::new(self.channel.clone())
    }
    fn jobs(&self) -> pb::jobs_client::JobsClient<Channel> {
        pb::jobs_client::JobsClient::new(self.channel.clone())
    }
    fn clustering(&self) -> pb::clustering_client::ClusteringClient<Channel> {
        pb::clustering_client::ClusteringClient::new(self.channel.clone())
    }
    fn decomposition(&self) -> pb::decomposition_client::DecompositionClient<Channel> {
        pb::decomposition_client::DecompositionClient::new(self.channel.clone())
    }
    fn models(&self) -> pb::models_client::ModelsClient<Channel> {
        pb::models_client::ModelsClient::new(self.channel.clone())
    }
    fn server(&self) -> pb::server_client::ServerClient<Channel> {
        pb::server_client::ServerClient::new(self.channel.clone())
    }

    /// Uploads in blocks of 500 rows, alternating the two encodings.
    async fn upload(&self, columns: &[&str], x: &Array2<f32>) -> pb::Dataset {
        let mut messages = vec![header("test", columns, x.nrows())];
        let values = x.as_standard_layout().to_owned();
        for (i, block) in values
            .as_slice()
            .unwrap()
            .chunks(columns.len() * 500)
            .enumerate()
        {
            messages.push(if i % 2 == 0 {
                rows(block.to_vec())
            } else {
                raw_rows(block.iter().flat_map(|v| v.to_le_bytes()).collect())
            });
        }
        self.datasets()
            .upload(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner()
    }

    /// Follows a job to its end; returns the finished job and the progress events seen.
    async fn finish(&self, id: &str) -> (pb::Job, Vec<pb::JobProgress>) {
        let mut stream = self
            .jobs()
            .watch_job(pb::WatchJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut progress = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            match event.event.unwrap() {
                pb::job_event::Event::Progress(p) => progress.push(p),
                pb::job_event::Event::Finished(job) => return (job, progress),
            }
        }
        panic!("watch stream ended without a finished job");
    }
}

fn header(name: &str, columns: &[&str], n_rows: usize) -> pb::UploadRequest {
    pb::UploadRequest {
        message: Some(Message::Header(pb::UploadHeader {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            n_rows: n_rows as u64,
        })),
    }
}

fn rows(values: Vec<f32>) -> pb::UploadRequest {
    pb::UploadRequest {
        message: Some(Message::Rows(pb::RowBlock {
            values,
            ..Default::default()
        })),
    }
}

/// The fast form: raw little-endian bytes.
fn raw_rows(bytes: Vec<u8>) -> pb::UploadRequest {
    pb::UploadRequest {
        message: Some(Message::Rows(pb::RowBlock {
            values_f32le: bytes.into(),
            ..Default::default()
        })),
    }
}

fn flat(x: &Array2<f32>) -> Vec<f32> {
    x.as_standard_layout().iter().copied().collect()
}

fn kmeans_of(job: &pb::Job) -> pb::KMeansModel {
    match job.result.clone() {
        Some(pb::job::Result::Kmeans(m)) => m,
        other => panic!("expected a k-means model, got {other:?} ({})", job.error),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn round_trip_matches_the_library() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let (x, _) = blobs(3000, 3, 4, 21);
        let dataset = server.upload(&["a", "b", "c"], &x).await;
        assert_eq!((dataset.n_rows, dataset.n_cols), (3000, 3));
        assert_eq!(
            server
                .datasets()
                .get(pb::GetDatasetRequest {
                    id: dataset.id.clone()
                })
                .await
                .unwrap()
                .into_inner(),
            dataset
        );

        let fit = pb::FitKMeansRequest {
            dataset_id: dataset.id.clone(),
            k: 4,
            seed: 9,
            standardize: true,
            n_init: 2,
            backend: pb::Backend::Cpu as i32,
            ..Default::default()
        };
        let job = server
            .clustering()
            .fit_k_means(fit)
            .await
            .unwrap()
            .into_inner();
        let (job, progress) = server.finish(&job.id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{}", job.error);
        assert!(!progress.is_empty());
        let model = kmeans_of(&job);
        let local = KMeansParams::new(4)
            .seed(9)
            .standardize(true)
            .n_init(2)
            .fit(&CpuBackend::new(), x.view(), None)
            .unwrap();
        assert_eq!(model.centroids, flat(local.centroids()));
        assert_eq!(model.inertia, local.inertia());
        assert_eq!(model.n_iter as usize, local.n_iter());
        assert_eq!(model.backend, "cpu");

        let probe = x.slice(ndarray::s![..200, ..]).to_owned();
        let assigned = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: model.id.clone(),
                rows: flat(&probe),
                n_features: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let expected = local.predict(&CpuBackend::new(), probe.view()).unwrap();
        assert_eq!(assigned.labels, expected.labels);
        assert_eq!(assigned.distances, expected.distances);
        assert_eq!(assigned.margins, expected.margins.unwrap());
        // A NaN is named by the model's own column, not its position.
        let mut rows = flat(&probe.slice(ndarray::s![..2, ..]).to_owned());
        rows[4] = f32::NAN;
        let e = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: model.id.clone(),
                rows,
                n_features: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(
            e.message()
                .contains("non-finite value (NaN) at row 2, column \"b\""),
            "{e}"
        );

        // The bidirectional stream answers each request in order.
        let requests = (0..3).map(|i| pb::AssignRequest {
            model_id: model.id.clone(),
            rows: flat(&x.slice(ndarray::s![i * 10..i * 10 + 10, ..]).to_owned()),
            n_features: 0,
        });
        let mut answers = server
            .clustering()
            .assign_stream(tokio_stream::iter(requests.collect::<Vec<_>>()))
            .await
            .unwrap()
            .into_inner();
        for i in 0..3 {
            let r = answers
                .message()
                .await
                .unwrap()
                .expect("one answer per request");
            assert_eq!(r.labels, &local.labels()[i * 10..i * 10 + 10]);
        }
        assert!(answers.message().await.unwrap().is_none());

        let eval = server
            .clustering()
            .evaluate(pb::EvaluateRequest {
                model_id: model.id.clone(),
                dataset_id: dataset.id.clone(),
                silhouette_sample_size: 500,
                seed: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(eval.silhouette > 0.5 && eval.silhouette <= 1.0, "{eval:?}");
        assert_eq!(eval.silhouette_sample_size, 500);
        assert!(
            eval.davies_bouldin > 0.0 && eval.davies_bouldin < 1.0,
            "{eval:?}"
        );
        assert!(eval.calinski_harabasz > 100.0, "{eval:?}");

        let job = server
            .decomposition()
            .fit_pca(pb::FitPcaRequest {
                dataset_id: dataset.id.clone(),
                n_components: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (job, _) = server.finish(&job.id).await;
        let Some(pb::job::Result::Pca(pca)) = job.result else {
            panic!("no PCA model: {}", job.error)
        };
        let local_pca = PcaParams::new(2).fit(&CpuBackend::new(), x.view()).unwrap();
        assert_eq!(pca.components, flat(local_pca.components()));
        let t = server
            .decomposition()
            .transform(pb::TransformRequest {
                model_id: pca.id.clone(),
                rows: flat(&probe),
                n_features: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            t.values,
            flat(
                &local_pca
                    .transform(&CpuBackend::new(), probe.view())
                    .unwrap()
            )
        );

        assert_eq!(
            server
                .models()
                .list(pb::ListModelsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .models
                .len(),
            2
        );
        server
            .models()
            .delete(pb::DeleteModelRequest {
                id: model.id.clone(),
            })
            .await
            .unwrap();
        server
            .datasets()
            .delete(pb::DeleteDatasetRequest {
                cascade: true,
                id: dataset.id.clone(),
            })
            .await
            .unwrap();
        let gone = server
            .datasets()
            .get(pb::GetDatasetRequest {
                id: dataset.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert_eq!(
            server
                .models()
                .get(pb::GetModelRequest { id: model.id })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        // Deleted means deleted: no file of the dataset is left on disk.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("datasets"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        server.stop().await;
    });
}

#[test]
fn import_runs_as_a_job() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/customers.csv");
        let job = server
            .datasets()
            .import(pb::ImportRequest {
                path: path.to_string_lossy().into(),
                columns: vec!["recency_days".into(), "monetary".into()],
                name: String::new(),
                text_format: None,
            })
            .await
            .unwrap()
            .into_inner();
        let (job, _) = server.finish(&job.id).await;
        let Some(pb::job::Result::Dataset(d)) = job.result else {
            panic!("{}", job.error)
        };
        assert_eq!(
            (d.n_rows, d.n_cols, d.name.as_str()),
            (800, 2, "customers.csv")
        );
        // Outside the import root, missing or not: the same answer, at once.
        for path in [
            "/nonexistent.csv".to_string(),
            "/etc/passwd".to_string(),
            path.with_file_name("../../Cargo.toml")
                .to_string_lossy()
                .into_owned(),
        ] {
            let e = server
                .datasets()
                .import(pb::ImportRequest {
                    path: path.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{path}");
            assert!(
                e.message().contains("not found or not allowed"),
                "{}",
                e.message()
            );
        }
        server.stop().await;
    });
}

#[test]
fn cancel_a_running_fit_and_restart_on_the_same_data() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let (x, _) = blobs(20_000, 8, 30, 22);
        let dataset = server
            .upload(&["a", "b", "c", "d", "e", "f", "g", "h"], &x)
            .await;
        let fit = pb::FitKMeansRequest {
            dataset_id: dataset.id.clone(),
            k: 3,
            ..Default::default()
        };
        let job = server
            .clustering()
            .fit_k_means(fit)
            .await
            .unwrap()
            .into_inner();
        let model = kmeans_of(&server.finish(&job.id).await.0);
        let probe = flat(&x.slice(ndarray::s![..5, ..]).to_owned());

        // Long enough to still be running when the cancel arrives.
        let long = pb::FitKMeansRequest {
            dataset_id: dataset.id.clone(),
            k: 30,
            n_init: 30,
            tol: Some(0.0),
            ..Default::default()
        };
        let job = server
            .clustering()
            .fit_k_means(long.clone())
            .await
            .unwrap()
            .into_inner();
        let mut stream = server
            .jobs()
            .watch_job(pb::WatchJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        while let Some(e) = stream.message().await.unwrap() {
            if matches!(e.event, Some(pb::job_event::Event::Progress(ref p)) if p.iteration > 0) {
                break;
            }
        }
        drop(stream); // a watcher leaving does not stop the job
        let state = server
            .jobs()
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .state;
        assert_eq!(state, pb::JobState::Running as i32);
        // Assign is served while the fit runs.
        let assign = pb::AssignRequest {
            model_id: model.id.clone(),
            rows: probe.clone(),
            n_features: 0,
        };
        let served =
            tokio::time::timeout(Duration::from_secs(10), server.clustering().assign(assign))
                .await
                .expect("assign not blocked by the fit");
        assert_eq!(served.unwrap().into_inner().labels.len(), 5);
        server
            .jobs()
            .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
            .await
            .unwrap();
        let (done, _) = tokio::time::timeout(Duration::from_secs(30), server.finish(&job.id))
            .await
            .expect("cancelled promptly");
        assert_eq!(done.state, pb::JobState::Cancelled as i32);
        assert_eq!(done.error_code, Code::Cancelled as i32);

        // Shutting down with a fit running cancels it; no model is written.
        let job = server
            .clustering()
            .fit_k_means(long)
            .await
            .unwrap()
            .into_inner();
        let mut stream = server
            .jobs()
            .watch_job(pb::WatchJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        while let Some(e) = stream.message().await.unwrap() {
            if matches!(e.event, Some(pb::job_event::Event::Progress(ref p)) if p.iteration > 0) {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(30), server.stop())
            .await
            .expect("graceful shutdown is prompt");

        let again = TestServer::start(dir.path(), Limits::default()).await;
        let datasets = again
            .datasets()
            .list(pb::ListDatasetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .datasets;
        assert_eq!(datasets, vec![dataset]);
        let models = again
            .models()
            .list(pb::ListModelsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .models;
        assert_eq!(models.len(), 1, "only the finished model survives");
        // The interrupted fit is known after the restart and runs again.
        let resumed = again
            .jobs()
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(
            [pb::JobState::Queued as i32, pb::JobState::Running as i32].contains(&resumed.state),
            "{resumed:?}"
        );
        let cancelled = again
            .jobs()
            .get_job(pb::GetJobRequest {
                id: done.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
        let labels = again
            .clustering()
            .assign(pb::AssignRequest {
                model_id: model.id,
                rows: probe,
                n_features: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .labels;
        assert_eq!(labels.len(), 5);
        again.stop().await;
    });
}

#[test]
fn bad_requests_get_the_right_code_and_the_server_keeps_serving() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_dataset_bytes: 64 * 1024,
            max_concurrent_jobs: 2,
            max_assign_rows: 100,
            ..Limits::default()
        };
        let server = TestServer::start(dir.path(), limits).await;
        let code = |r: Result<tonic::Response<pb::Dataset>, tonic::Status>| r.unwrap_err();

        // Malformed upload streams.
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![rows(vec![1.0, 2.0])]))
                .await,
        );
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("first message must be a header"));
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(Vec::<pb::UploadRequest>::new()))
                .await,
        );
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a", "b"], 2),
                    rows(vec![1.0, 2.0, 3.0]),
                ]))
                .await,
        );
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("not whole rows of 2 columns"), "{e}");
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a", "b"], 2),
                    rows(vec![1.0, 2.0, 3.0, f32::NAN]),
                ]))
                .await,
        );
        assert!(
            e.message()
                .contains("non-finite value at row 2, column \"b\""),
            "{e}"
        );
        // A header must say how many rows follow: a cancelled stream ends
        // like a whole one, and only the count tells them apart.
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a"], 0),
                    rows(vec![1.0]),
                ]))
                .await,
        );
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("header.n_rows: required"), "{e}");
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![header("x", &["a"], 1)]))
                .await,
        );
        assert!(e.message().contains("ended after 0"), "{e}");
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a"], 1),
                    raw_rows(vec![0, 0, 128]),
                ]))
                .await,
        );
        assert!(
            e.message().contains("3 bytes are not whole 4-byte floats"),
            "{e}"
        );
        // Whole floats that are not whole rows name the field they came in.
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a", "b"], 2),
                    raw_rows(vec![0; 12]),
                ]))
                .await,
        );
        assert!(
            e.message()
                .starts_with("rows.values_f32le: a block of 3 values is not whole rows"),
            "{e}"
        );
        let both = pb::UploadRequest {
            message: Some(Message::Rows(pb::RowBlock {
                values: vec![1.0],
                values_f32le: vec![0, 0, 0, 0].into(),
            })),
        };
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![header("x", &["a"], 1), both]))
                .await,
        );
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("not both"), "{e}");
        // Over the message limit (tonic answers OUT_OF_RANGE) and the dataset limit.
        let e = code(
            server
                .datasets()
                .upload(tokio_stream::iter(vec![
                    header("x", &["a"], 300_000),
                    rows(vec![0.0; 300_000]),
                ]))
                .await,
        );
        assert_eq!(e.code(), Code::OutOfRange, "{e}");
        let blocks: Vec<_> = std::iter::once(header("x", &["a"], 25_000))
            .chain((0..5).map(|_| rows(vec![0.0; 5000])))
            .collect();
        let e = code(server.datasets().upload(tokio_stream::iter(blocks)).await);
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("max_dataset_bytes"), "{e}");
        // Nothing half-written is visible.
        assert!(server
            .datasets()
            .list(pb::ListDatasetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .datasets
            .is_empty());

        // Unknown ids.
        let nf = |s: tonic::Status| assert_eq!(s.code(), Code::NotFound, "{s}");
        nf(server
            .datasets()
            .get(pb::GetDatasetRequest {
                id: "ds-missing".into(),
            })
            .await
            .unwrap_err());
        nf(server
            .datasets()
            .get(pb::GetDatasetRequest {
                id: "../../etc/passwd".into(),
            })
            .await
            .unwrap_err());
        nf(server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: "ds-missing".into(),
                k: 2,
                ..Default::default()
            })
            .await
            .unwrap_err());
        nf(server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: "km-missing".into(),
                rows: vec![1.0],
                n_features: 0,
            })
            .await
            .unwrap_err());
        nf(server
            .jobs()
            .get_job(pb::GetJobRequest {
                id: "job-missing".into(),
            })
            .await
            .unwrap_err());
        nf(server
            .jobs()
            .watch_job(pb::WatchJobRequest {
                id: "job-missing".into(),
            })
            .await
            .unwrap_err());
        nf(server
            .models()
            .delete(pb::DeleteModelRequest {
                id: "km-missing".into(),
            })
            .await
            .unwrap_err());

        // Bad arguments, naming the field.
        let (x, _) = blobs(300, 2, 3, 23);
        let dataset = server.upload(&["a", "b"], &x).await;
        let fit = |k: u32| pb::FitKMeansRequest {
            dataset_id: dataset.id.clone(),
            k,
            ..Default::default()
        };
        let e = server.clustering().fit_k_means(fit(0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("k:"), "{e}");
        let e = server.clustering().fit_k_means(fit(301)).await.unwrap_err();
        assert!(
            e.message().contains("larger than the number of rows (300)"),
            "{e}"
        );
        let e = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                columns: vec!["zzz".into()],
                ..fit(2)
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("unknown column \"zzz\""), "{e}");
        // Initial centroids: checked before the job, and only with GIVEN.
        let given = |values: Vec<f32>, init: pb::InitMethod| pb::FitKMeansRequest {
            init: init as i32,
            initial_centroids: values,
            ..fit(2)
        };
        for (request, message) in [
            (
                given(vec![0.0, 1.0, 2.0, f32::NAN], pb::InitMethod::Given),
                "initial_centroids: non-finite value (NaN) at row 2, column 2",
            ),
            (
                given(vec![0.0, 1.0, 2.0], pb::InitMethod::Given),
                "initial_centroids: 3 values do not make 2 centroids",
            ),
            (
                given(vec![0.0; 6], pb::InitMethod::Given),
                "initial_centroids: 2 centroids of 3 values; the fit has 2 feature columns",
            ),
            (
                given(vec![1.0, 2.0, 3.0], pb::InitMethod::KmeansPlusPlus),
                "initial_centroids: 3 values given with init INIT_METHOD_KMEANS_PLUS_PLUS",
            ),
            (
                pb::FitKMeansRequest {
                    weights_column: "zzz".into(),
                    ..fit(2)
                },
                "weights_column: unknown column \"zzz\"",
            ),
        ] {
            let e = server.clustering().fit_k_means(request).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().starts_with(message), "{e}");
        }
        // Centroids near f32's limit overflow once squared: the job fails
        // saying so and stores nothing (no unreadable model left behind).
        let count_models = || async {
            server
                .models()
                .list(pb::ListModelsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .models
                .len()
        };
        let before = count_models().await;
        let job = server
            .clustering()
            .fit_k_means(given(vec![3e38, -3e38, 3e38, -3e38], pb::InitMethod::Given))
            .await
            .unwrap()
            .into_inner();
        let (done, _) = server.finish(&job.id).await;
        assert_eq!(done.state, pb::JobState::Failed as i32, "{done:?}");
        assert!(done.error.contains("overflowed"), "{}", done.error);
        assert_eq!(done.error_code, Code::InvalidArgument as i32);
        assert_eq!(count_models().await, before);
        // A k past max_k is that limit, whatever the rows.
        let e = server
            .clustering()
            .fit_k_means(fit(200_000))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("max_k"), "{e}");
        let e = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                columns: vec!["a".into(), "b".into(), "a".into()],
                ..fit(2)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message() == "columns: column \"a\" is named more than once",
            "{e}"
        );
        // Also when the weights column is the one repeated, and in an
        // uploaded header.
        let e = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                columns: vec!["a".into(), "b".into(), "b".into()],
                weights_column: "b".into(),
                ..fit(2)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("\"b\" is named more than once"), "{e}");
        let e = server
            .datasets()
            .upload(tokio_stream::iter(vec![
                header("twice", &["a", "b", "a"], 1),
                rows(vec![1.0, 2.0, 3.0]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message() == "header.columns: column \"a\" is named more than once",
            "{e}"
        );
        // An empty column name, uploaded or asked for.
        let e = server
            .datasets()
            .upload(tokio_stream::iter(vec![
                header("unnamed", &["a", ""], 1),
                rows(vec![1.0, 2.0]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "header.columns: a column name is empty");
        let e = server
            .datasets()
            .upload(tokio_stream::iter(vec![
                header("padded", &["a", " a "], 1),
                rows(vec![1.0, 2.0]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "header.columns: a column name starts or ends with white space"
        );
        let e = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                columns: vec!["a".into(), "".into()],
                ..fit(2)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "columns: a column name is empty");
        let e = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                backend: 99,
                ..fit(2)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = server
            .decomposition()
            .fit_pca(pb::FitPcaRequest {
                dataset_id: dataset.id.clone(),
                n_components: 3,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("n_components:"), "{e}");

        let job = server
            .clustering()
            .fit_k_means(fit(3))
            .await
            .unwrap()
            .into_inner();
        let model = kmeans_of(&server.finish(&job.id).await.0);
        let assign = |rows: Vec<f32>| pb::AssignRequest {
            model_id: model.id.clone(),
            rows,
            n_features: 0,
        };
        let e = server
            .clustering()
            .assign(assign(vec![1.0, 2.0, 3.0]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("rows of width 2"), "{e}");
        // Four rows of one feature fill two rows of the model's two: only a
        // declared width catches them.
        let e = server
            .clustering()
            .assign(pb::AssignRequest {
                n_features: 1,
                ..assign(vec![1.0, 2.0, 3.0, 4.0])
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("the rows have 1 features; the model has 2"),
            "{e}"
        );
        let e = server
            .clustering()
            .assign(assign(vec![1.0, f32::INFINITY]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        let e = server
            .clustering()
            .assign(assign(vec![0.5; 2 * 101]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("max_assign_rows"), "{e}");
        let e = server
            .decomposition()
            .transform(pb::TransformRequest {
                model_id: model.id.clone(),
                rows: vec![1.0, 2.0],
                n_features: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        // A bad request in a stream ends that stream with its error.
        let mut s = server
            .clustering()
            .assign_stream(tokio_stream::iter(vec![
                assign(vec![1.0, 2.0]),
                assign(vec![1.0]),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
        assert_eq!(s.message().await.unwrap_err().code(), Code::InvalidArgument);

        // Still serving.
        let info = server
            .server()
            .get_info(pb::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.limits.unwrap().max_assign_rows, 100);
        assert_eq!(
            server
                .clustering()
                .assign(assign(vec![1.0, 2.0]))
                .await
                .unwrap()
                .into_inner()
                .labels
                .len(),
            1
        );
        server.stop().await;
    });
}

#[test]
fn health_and_reflection() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
        let mut status = 0;
        for _ in 0..100 {
            status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut reflection = ServerReflectionClient::new(server.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for s in [
            "segmenta.v1.Datasets",
            "segmenta.v1.Clustering",
            "segmenta.v1.Jobs",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
        }
        drop(responses);
        server.stop().await;
    });
}

/// The Python package's tour of the API runs against this server
/// (clients/python/examples/round_trip.py; the package's own tests are run
/// by pytest from scripts/test.sh).
#[test]
fn python_client_round_trip() {
    let python = std::env::var("SEGMENTA_PYTHON").unwrap_or("python3".into());
    let has_package = std::process::Command::new(&python)
        .args(["-c", "import segmenta"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_package {
        if std::env::var("SEGMENTA_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("SEGMENTA_REQUIRE_PYTHON=1 but {python} cannot import segmenta");
        }
        eprintln!("SKIPPED: no Python with the segmenta package (scripts/test.sh installs it into .venv-test and sets SEGMENTA_PYTHON)");
        return;
    }
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/examples/round_trip.py");
        let addr = server.addr.trim_start_matches("http://").to_owned();
        let out = tokio::process::Command::new(&python)
            .arg(script)
            .args(["--server", &addr])
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "python client failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("round trip ok"), "{stdout}");
        server.stop().await;
    });
}

// ---------------------------------------------------------------- segmentation

fn tx_header(name: &str, format: pb::FileFormat, size: usize) -> pb::UploadTransactionsRequest {
    pb::UploadTransactionsRequest {
        message: Some(pb::upload_transactions_request::Message::Header(
            pb::TransactionsHeader {
                name: name.into(),
                format: format as i32,
                text_format: None,
                size_bytes: size as u64,
            },
        )),
    }
}

fn tx_chunk(bytes: &[u8]) -> pb::UploadTransactionsRequest {
    pb::UploadTransactionsRequest {
        message: Some(pb::upload_transactions_request::Message::Chunk(
            bytes.to_vec(),
        )),
    }
}

impl TestServer {
    fn segmentations(&self) -> pb::segmentations_client::SegmentationsClient<Channel> {
        pb::segmentations_client::SegmentationsClient::new(self.channel.clone())
    }

    async fn upload_log(&self, bytes: &[u8]) -> pb::TransactionLog {
        let mut messages = vec![tx_header("log.csv", pb::FileFormat::Csv, bytes.len())];
        messages.extend(bytes.chunks(64 * 1024).map(tx_chunk));
        self.segmentations()
            .upload_transactions(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner()
    }

    async fn download(&self, id: &str, name: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut stream = self
            .segmentations()
            .download_artifact(pb::DownloadArtifactRequest {
                segmentation_id: id.into(),
                name: name.into(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}

fn segmentation_of(job: &pb::Job) -> pb::Segmentation {
    match job.result.clone() {
        Some(pb::job::Result::Segmentation(s)) => s,
        other => panic!("expected a segmentation, got {other:?} ({})", job.error),
    }
}

#[test]
fn segment_over_grpc_predicts_value_and_draws_campaign_groups() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("log.csv");
        segmenta::segmentation::demo::write_demo_log(&log, 2_000, 4).unwrap();
        let server = TestServer::start(&dir.path().join("data"), Limits::default()).await;
        let uploaded = server.upload_log(&std::fs::read(&log).unwrap()).await;
        let request = pb::SegmentRequest {
            source: Some(pb::segment_request::Source::TransactionsId(uploaded.id)),
            k_choice: Some(pb::segment_request::KChoice::K(3)),
            value: Some(pb::ValueOptions {
                enabled: true,
                time_unit: pb::TimeUnit::Week as i32,
                horizon: 26,
                ..Default::default()
            }),
            experiment: Some(pb::ExperimentOptions {
                holdout_share: 0.25,
                salt: "spring".into(),
            }),
            ..Default::default()
        };
        let job = server
            .segmentations()
            .segment(request.clone())
            .await
            .unwrap()
            .into_inner();
        let (done, _) = server.finish(&job.id).await;
        let seg = segmentation_of(&done);
        let share: f64 = seg
            .segments
            .iter()
            .map(|s| s.value.as_ref().expect("a value profile").value_share)
            .sum();
        assert!((share - 1.0).abs() < 1e-9, "{share}");
        for s in &seg.segments {
            assert_eq!(
                s.control,
                (0.25 * s.size as f64).round() as u64,
                "segment {}",
                s.id
            );
        }
        let table =
            String::from_utf8(server.download(&seg.id, "customers.csv").await.unwrap()).unwrap();
        let header = table.lines().next().unwrap();
        assert!(
            header.ends_with(
                ",p_alive,expected_purchases,expected_spend,clv,value_tier,churn_risk,group"
            ),
            "{header}"
        );

        // Bad options are refused before the job is queued.
        for (request, field) in [
            (
                pb::SegmentRequest {
                    value: Some(pb::ValueOptions {
                        enabled: true,
                        discount_rate: 2.0,
                        ..Default::default()
                    }),
                    ..request.clone()
                },
                "discount_rate",
            ),
            (
                pb::SegmentRequest {
                    value: Some(pb::ValueOptions {
                        enabled: true,
                        time_unit: 99,
                        ..Default::default()
                    }),
                    ..request.clone()
                },
                "value.time_unit",
            ),
            (
                pb::SegmentRequest {
                    experiment: Some(pb::ExperimentOptions {
                        holdout_share: 1.5,
                        salt: String::new(),
                    }),
                    ..request.clone()
                },
                "holdout_share",
            ),
        ] {
            let e = server.segmentations().segment(request).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(field), "{field}: {e}");
        }
        server.stop().await;
    });
}

#[test]
fn segment_over_grpc_matches_the_library_and_refreshes_stably() {
    use segmenta::segmentation::transactions::TransactionColumns;
    use segmenta::segmentation::{run_segmentation, KChoice, SegmentControl, SegmentParams};
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("log.csv");
        segmenta::segmentation::demo::write_demo_log(&log, 3_000, 9).unwrap();
        let server = TestServer::start(&dir.path().join("data"), Limits::default()).await;
        let uploaded = server.upload_log(&std::fs::read(&log).unwrap()).await;
        assert_eq!(uploaded.size_bytes, std::fs::metadata(&log).unwrap().len());
        // Every log held is listed, paged in upload order: none is lost to
        // a reply that never arrived.
        let second = server
            .upload_log(b"customer_id,date,amount\nA,2025-01-02,5\n")
            .await;
        let list = |page_token: String| {
            let mut s = server.segmentations();
            async move {
                s.list_transactions(pb::ListTransactionsRequest {
                    page_size: 1,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner()
            }
        };
        let first_page = list(String::new()).await;
        assert_eq!(first_page.transactions, vec![uploaded.clone()]);
        let second_page = list(first_page.next_page_token).await;
        assert_eq!(second_page.transactions.len(), 1);
        assert_eq!(second_page.transactions[0].id, second.id);
        assert!(second_page.next_page_token.is_empty(), "the last page");

        let request = pb::SegmentRequest {
            source: Some(pb::segment_request::Source::TransactionsId(
                uploaded.id.clone(),
            )),
            columns: Some(pb::TransactionColumns {
                order: "order_id".into(),
                ..Default::default()
            }),
            k_choice: Some(pb::segment_request::KChoice::KRange(pb::KRange {
                min: 3,
                max: 6,
            })),
            ..Default::default()
        };
        let job = server
            .segmentations()
            .segment(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.kind, pb::JobKind::Segment as i32);
        let (done, progress) = server.finish(&job.id).await;
        let seg = segmentation_of(&done);
        assert!(
            progress.iter().any(|p| p.phase.starts_with("choosing k")),
            "{progress:?}"
        );
        // Progress never goes back, "writing outputs" included.
        assert!(
            progress.windows(2).all(|w| w[1].fraction >= w[0].fraction),
            "{:?}",
            progress
                .iter()
                .map(|p| (&p.phase, p.fraction))
                .collect::<Vec<_>>()
        );

        // The same job through the library gives the same segments.
        let params = SegmentParams {
            columns: TransactionColumns {
                order: Some("order_id".into()),
                ..Default::default()
            },
            k: Some(KChoice::Range(3..=6)),
            ..SegmentParams::default()
        };
        let lib = run_segmentation(
            &CpuBackend::new(),
            &log,
            &params,
            None,
            &SegmentControl::default(),
        )
        .unwrap();
        assert_eq!(seg.k as usize, lib.model.k());
        assert_eq!(seg.n_customers as usize, lib.customers.ids.len());
        let sizes: Vec<u64> = seg.segments.iter().map(|s| s.size).collect();
        let lib_sizes: Vec<u64> = lib.profiles.iter().map(|p| p.size as u64).collect();
        assert_eq!(sizes, lib_sizes);
        assert_eq!(seg.k_sweep.as_ref().unwrap().scores.len(), 4);
        let input = seg.input.as_ref().unwrap();
        assert_eq!(input.bad_rows as usize, lib.input.bad_rows.total);
        assert_eq!(input.frequency_basis, "orders");

        // Get returns the stored document; artifacts download intact.
        let got = server
            .segmentations()
            .get_segmentation(pb::GetSegmentationRequest { id: seg.id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, seg);
        let html =
            String::from_utf8(server.download(&seg.id, "report.html").await.unwrap()).unwrap();
        assert!(html.contains("<h2>Segments</h2>"));
        let png = server.download(&seg.id, "pca_scatter.png").await.unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let e = server.download(&seg.id, "../meta.json").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");

        // The segmentation is a model: Assign applies its log1p and scaling.
        let x = lib
            .customers
            .values_f32()
            .slice(ndarray::s![..50, ..])
            .to_owned();
        let assigned = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: seg.id.clone(),
                rows: flat(&x),
                n_features: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(assigned.labels, lib.prediction.labels[..50]);
        let ids: Vec<u32> = seg.segments.iter().map(|s| s.id).collect();
        let want: Vec<u32> = assigned.labels.iter().map(|&l| ids[l as usize]).collect();
        assert_eq!(assigned.segments, want);

        // A segment model keeps its segment ids through Import and Export:
        // ids that are not positions (as after a refresh) come back as ids.
        let mut renamed = lib.model.clone();
        renamed.segment_ids = (0..renamed.k() as u32).map(|i| 3 + 2 * i).collect();
        renamed.next_segment_id = 3 + 2 * renamed.k() as u32;
        let imported = server
            .models()
            .import(pb::ImportModelRequest {
                content: serde_json::to_vec(&renamed).unwrap(),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::model::Model::Kmeans(km)) = imported.model else {
            panic!("{imported:?}")
        };
        assert_eq!(km.segment_ids, renamed.segment_ids);
        assert_eq!(km.segment_descriptions, renamed.descriptions);
        // A damaged file: the error is clipped but keeps where it broke.
        let mut damaged = serde_json::to_string_pretty(&renamed).unwrap();
        damaged.insert_str(damaged.find("\"features\"").unwrap(), "oops ");
        let e = server
            .models()
            .import(pb::ImportModelRequest {
                content: damaged.into_bytes(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(" at line "), "{e}");
        assert!(e.message().len() < 300, "{e}");
        let by_import = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: km.id.clone(),
                rows: flat(&x),
                n_features: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_import.labels, assigned.labels);
        let want: Vec<u32> = by_import.labels.iter().map(|&l| 3 + 2 * l).collect();
        assert_eq!(by_import.segments, want);
        for id in [&km.id, &seg.id] {
            let file = server
                .models()
                .export(pb::GetModelRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            // A segment model file, for scoring: no customers in it.
            let exported =
                segmenta::segmentation::SegmentModel::from_json(&file.content, "export").unwrap();
            assert!(exported.customer_ids.is_empty() && exported.labels.is_empty());
            assert_eq!(exported.descriptions, lib.model.descriptions);
            assert_eq!(exported.frequency_basis, lib.model.frequency_basis);
            let p = exported.assign(&CpuBackend::new(), x.view()).unwrap();
            assert_eq!(p.labels, assigned.labels);
            let expect_ids = if id == &km.id {
                &renamed.segment_ids
            } else {
                &ids
            };
            assert_eq!(&exported.ids(), expect_ids, "{id}");
        }
        // A plain k-means model answers without segments.
        let plain = server
            .models()
            .create_k_means(pb::CreateKMeansRequest {
                columns: vec!["a".into()],
                k: 2,
                centroids: vec![0.0, 1.0],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::model::Model::Kmeans(plain)) = plain.model else {
            panic!()
        };
        assert!(plain.segment_ids.is_empty());
        let a = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: plain.id,
                rows: vec![0.9, 0.1],
                n_features: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.labels, [1, 0]);
        assert!(a.segments.is_empty());

        // A refresh on the same log keeps every customer's segment id.
        let refresh = pb::SegmentRequest {
            previous_segmentation_id: seg.id.clone(),
            k_choice: None,
            ..request.clone()
        };
        let job = server
            .segmentations()
            .segment(refresh)
            .await
            .unwrap()
            .into_inner();
        let again = segmentation_of(&server.finish(&job.id).await.0);
        let r = again.refresh.unwrap();
        for (i, row) in r.rows.iter().enumerate() {
            for (j, &c) in row.counts.iter().enumerate() {
                assert_eq!(c, if i == j { sizes[i] } else { 0 }, "rows[{i}][{j}]");
            }
        }
        assert_eq!(r.stayed_fraction, 1.0);

        // Bad requests: clear errors, and the server keeps serving.
        let bad = |r: pb::SegmentRequest| {
            let client = server.segmentations();
            async move { client.clone().segment(r).await.unwrap_err() }
        };
        let e = bad(pb::SegmentRequest::default()).await;
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("transactions_id"), "{e}");
        let e = bad(pb::SegmentRequest {
            source: Some(pb::segment_request::Source::TransactionsId(
                "tx-nope".into(),
            )),
            ..Default::default()
        })
        .await;
        assert_eq!(e.code(), Code::NotFound, "{e}");
        let e = bad(pb::SegmentRequest {
            k_choice: Some(pb::segment_request::KChoice::KRange(pb::KRange {
                min: 5,
                max: 2,
            })),
            ..request.clone()
        })
        .await;
        assert!(
            e.message().contains("k_range") || e.message().contains("min <= max"),
            "{e}"
        );
        let e = bad(pb::SegmentRequest {
            as_of: "last tuesday".into(),
            ..request.clone()
        })
        .await;
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("invalid date"), "{e}");
        // Features are checked before the job is queued, not when it runs.
        for (features, message) in [
            (vec!["bogus"], "features: unknown feature \"bogus\""),
            (
                vec!["monetary", "frequency", "monetary"],
                "features: feature \"monetary\" is named more than once",
            ),
        ] {
            let e = bad(pb::SegmentRequest {
                features: features.into_iter().map(String::from).collect(),
                ..request.clone()
            })
            .await;
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(message), "{e}");
        }
        let e = bad(pb::SegmentRequest {
            previous_segmentation_id: "seg-missing".into(),
            ..request.clone()
        })
        .await;
        assert_eq!(e.code(), Code::NotFound, "{e}");
        // A stored model whose labels no longer match its customers is
        // DATA_LOSS when a refresh asks for it, not a panic in the job.
        let model_file = dir
            .path()
            .join("data/segmentations")
            .join(&seg.id)
            .join("model.json");
        let good = std::fs::read(&model_file).unwrap();
        let mut model: serde_json::Value = serde_json::from_slice(&good).unwrap();
        model["labels"].as_array_mut().unwrap().pop();
        std::fs::write(&model_file, serde_json::to_vec(&model).unwrap()).unwrap();
        let e = bad(pb::SegmentRequest {
            previous_segmentation_id: seg.id.clone(),
            ..request.clone()
        })
        .await;
        assert_eq!(e.code(), Code::DataLoss, "{e}");
        assert!(
            e.message()
                .contains("customer labels do not match the model"),
            "{e}"
        );
        std::fs::write(&model_file, good).unwrap();
        // A job that fails while reading (a rejected bad row) reports the row.
        let broken = server
            .upload_log(b"customer_id,date,amount\na,2024-01-01,5\nb,someday,3\n")
            .await;
        let job = server
            .segmentations()
            .segment(pb::SegmentRequest {
                source: Some(pb::segment_request::Source::TransactionsId(broken.id)),
                bad_rows: pb::BadRowPolicy::Reject as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (failed, _) = server.finish(&job.id).await;
        assert_eq!(failed.state, pb::JobState::Failed as i32);
        assert!(
            failed.error.contains("row 2: an unreadable date"),
            "{}",
            failed.error
        );
        // The failure's code, as the call would have failed with.
        assert_eq!(failed.error_code, Code::InvalidArgument as i32);
        // Malformed upload streams.
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![tx_chunk(b"x")]))
            .await
            .unwrap_err();
        assert!(
            e.message().contains("first message must be a header"),
            "{e}"
        );
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![
                tx_header("x", pb::FileFormat::Unspecified, 1),
                tx_chunk(b"x"),
            ]))
            .await
            .unwrap_err();
        assert!(e.message().contains("header.format"), "{e}");
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![tx_header(
                "x",
                pb::FileFormat::Csv,
                0,
            )]))
            .await
            .unwrap_err();
        assert!(
            e.message().starts_with("header.size_bytes: required"),
            "{e}"
        );
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![tx_header(
                "x",
                pb::FileFormat::Csv,
                1,
            )]))
            .await
            .unwrap_err();
        assert!(e.message().contains("ended after 0"), "{e}");
        // Still serving; deleting removes the outputs, the model and the log.
        server
            .segmentations()
            .get_segmentation(pb::GetSegmentationRequest { id: seg.id.clone() })
            .await
            .unwrap();
        let mut s = server.segmentations();
        s.delete_segmentation(pb::DeleteSegmentationRequest { id: seg.id.clone() })
            .await
            .unwrap();
        let e = s
            .get_segmentation(pb::GetSegmentationRequest { id: seg.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = server
            .models()
            .get(pb::GetModelRequest { id: seg.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(!dir.path().join("data/segmentations").join(&seg.id).exists());
        // The refresh was made from the same log: a plain delete is refused
        // and names it; a cascading one takes it along.
        let e = s
            .delete_transactions(pb::DeleteTransactionsRequest {
                id: uploaded.id.clone(),
                cascade: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains(&again.id), "{}", e.message());
        let deleted = s
            .delete_transactions(pb::DeleteTransactionsRequest {
                id: uploaded.id.clone(),
                cascade: true,
            })
            .await
            .unwrap()
            .into_inner()
            .deleted_ids;
        assert_eq!(deleted, vec![uploaded.id.clone(), again.id.clone()]);
        assert!(!dir
            .path()
            .join("data/segmentations")
            .join(&again.id)
            .exists());
        let e = server
            .models()
            .get(pb::GetModelRequest {
                id: again.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(!dir
            .path()
            .join("data/transactions")
            .join(&uploaded.id)
            .exists());
        let e = s
            .delete_transactions(pb::DeleteTransactionsRequest {
                id: uploaded.id.clone(),
                cascade: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        server.stop().await;
    });
}

// ---------------------------------------------------------------- distributed fits

fn part_header(
    fit_id: &str,
    index: u32,
    d: u32,
    weights: bool,
    n_rows: usize,
) -> pb::PutPartitionRequest {
    pb::PutPartitionRequest {
        message: Some(pb::put_partition_request::Message::Header(
            pb::PartitionHeader {
                key: Some(pb::PartitionKey {
                    fit_id: fit_id.into(),
                    index,
                }),
                n_features: d,
                has_weights: weights,
                ttl_seconds: 0,
                n_rows: n_rows as u64,
            },
        )),
    }
}

fn part_rows(values: &[f32], weights: &[f32]) -> pb::PutPartitionRequest {
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    pb::PutPartitionRequest {
        message: Some(pb::put_partition_request::Message::Rows(
            pb::PartitionRows {
                values_f32le: le(values),
                weights_f32le: le(weights),
            },
        )),
    }
}

/// Malformed partition streams are refused naming the problem, a refused
/// upload leaves the earlier one in place, the cache's budget holds, and a
/// partition's share equals the library's sums over the same rows.
#[test]
fn partitions_refuse_malformed_streams_and_keep_the_last_good_upload() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let limits = Limits {
            max_partition_cache_bytes: 4096,
            ..Limits::default()
        };
        let server = TestServer::start(dir.path(), limits).await;
        let put = |messages: Vec<pb::PutPartitionRequest>| {
            let mut c = server.clustering();
            async move { c.put_partition(tokio_stream::iter(messages)).await }
        };
        let good = put(vec![
            part_header("fit-1", 0, 2, false, 3),
            part_rows(&[0.0, 0.0, 1.0, 1.0], &[]),
            part_rows(&[9.0, 9.0], &[]),
        ])
        .await
        .unwrap()
        .into_inner();
        assert_eq!((good.n_rows, good.n_features, good.replaced), (3, 2, false));

        for (messages, needle) in [
            (
                vec![part_rows(&[1.0, 2.0], &[])],
                "first message must be a header",
            ),
            (vec![part_header("../up", 0, 2, false, 1)], "key.fit_id"),
            (vec![part_header("fit-1", 0, 0, false, 1)], "n_features"),
            (
                vec![
                    part_header("fit-1", 0, 2, false, 1),
                    part_rows(&[1.0, 2.0, 3.0], &[]),
                ],
                "not whole rows of 2",
            ),
            (
                vec![
                    part_header("fit-1", 0, 2, false, 1),
                    part_rows(&[1.0, f32::NAN], &[]),
                ],
                "non-finite value at row 0, column 1",
            ),
            (
                vec![
                    part_header("fit-1", 0, 2, true, 1),
                    part_rows(&[1.0, 2.0], &[]),
                ],
                "0 weights for 1 rows",
            ),
            (
                vec![
                    part_header("fit-1", 0, 2, true, 1),
                    part_rows(&[1.0, 2.0], &[-1.0]),
                ],
                "not a finite non-negative number",
            ),
            (
                vec![
                    part_header("fit-1", 0, 2, false, 1),
                    part_rows(&[1.0, 2.0], &[1.0]),
                ],
                "has_weights = false",
            ),
        ] {
            let e = put(messages).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(needle), "{needle}: {e}");
        }
        // Over the cache's budget (4 KiB): refused, naming the limit.
        let e = put(vec![
            part_header("fit-1", 1, 2, false, 600),
            part_rows(&vec![1.0; 2 * 600], &[]),
        ])
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("max_partition_cache_bytes"), "{e}");

        // The good upload survived every refused retry of its key.
        let centroids = vec![0.0f32, 0.0, 10.0, 10.0];
        let step = server
            .clustering()
            .partial_step(pb::PartialStepRequest {
                rows: Some(pb::RowSource {
                    source: Some(pb::row_source::Source::Partition(pb::PartitionKey {
                        fit_id: "fit-1".into(),
                        index: 0,
                    })),
                }),
                centroids: centroids.clone(),
                backend: pb::Backend::Cpu as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let x = Array2::from_shape_vec((3, 2), vec![0.0f32, 0.0, 1.0, 1.0, 9.0, 9.0]).unwrap();
        let c = Array2::from_shape_vec((2, 2), centroids).unwrap();
        let want =
            segmenta::kmeans::partial::partial_step(&CpuBackend::new(), x.view(), None, c.view())
                .unwrap();
        assert_eq!(step.n_rows, 3);
        assert_eq!(step.weights, want.weights);
        assert_eq!(step.sums, want.sums.iter().copied().collect::<Vec<f64>>());
        assert!((step.inertia - want.inertia).abs() < 1e-9);
        assert!((step.inertia - 2.0 - 2.0).abs() < 1e-5, "{}", step.inertia);

        let released = server
            .clustering()
            .release_partitions(pb::ReleasePartitionsRequest {
                fit_id: "fit-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.released, 1);
        server.stop().await;
    });
}

fn clv_of(job: &pb::Job) -> pb::ClvRun {
    match job.result.clone() {
        Some(pb::job::Result::Clv(c)) => c,
        other => panic!("expected a CLV run, got {other:?} ({})", job.error),
    }
}

/// `Clv` gives what `segmenta clv` gives on the same log, stores the same
/// files beside the segmentations (so downloads, cascades and erasure
/// reach them), and refuses bad requests before queueing.
#[test]
fn clv_over_grpc_matches_the_library_and_writes_its_artifacts() {
    use segmenta::value::{run_clv, ClvParams, TimeUnit};
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("log.csv");
        common::logs::buying_and_leaving(&log, 2_000, 5);
        let server = TestServer::start(&dir.path().join("data"), Limits::default()).await;
        let uploaded = server.upload_log(&std::fs::read(&log).unwrap()).await;
        let request = pb::ClvRequest {
            source: Some(pb::clv_request::Source::TransactionsId(uploaded.id.clone())),
            calibration_end: "2025-03-31".into(),
            holdout_end: "2025-12-31".into(),
            value: Some(pb::ValueOptions {
                time_unit: pb::TimeUnit::Week as i32,
                horizon: 26,
                discount_rate: 0.002,
                ..Default::default()
            }),
            ..Default::default()
        };
        // An order column would be ignored by the models: refused.
        let e = server
            .segmentations()
            .clv(pb::ClvRequest {
                columns: Some(pb::TransactionColumns {
                    order: "order_id".into(),
                    ..Default::default()
                }),
                ..request.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(
            e.message().starts_with("columns.order: not used by Clv"),
            "{e}"
        );
        let job = server
            .segmentations()
            .clv(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.kind, pb::JobKind::Clv as i32);
        let (done, _) = server.finish(&job.id).await;
        let run = clv_of(&done);

        // The same numbers as the library on the same file.
        let mut params = ClvParams::new(chrono::NaiveDate::from_ymd_opt(2025, 3, 31).unwrap());
        params.holdout_end = chrono::NaiveDate::from_ymd_opt(2025, 12, 31);
        params.unit = TimeUnit::Week;
        params.horizon = Some(26);
        params.discount_rate = 0.002;
        let local = run_clv(&log, &params).unwrap().summary;
        let b = run.bgnbd.unwrap();
        assert_eq!(
            [b.r, b.alpha, b.a, b.b],
            [
                local.bgnbd.r,
                local.bgnbd.alpha,
                local.bgnbd.a,
                local.bgnbd.b
            ]
        );
        assert_eq!(b.r_std_error, local.bgnbd.std_errors.r);
        assert!(b.fit.unwrap().converged);
        let g = run.gamma_gamma.unwrap();
        assert_eq!(
            [g.p, g.q, g.v],
            [
                local.gamma_gamma.p,
                local.gamma_gamma.q,
                local.gamma_gamma.v
            ]
        );
        assert_eq!(run.n_customers, local.n_customers as u64);
        assert_eq!(run.total_clv, local.total_clv);
        assert_eq!(run.horizon, 26);
        assert_eq!(run.time_unit, pb::TimeUnit::Week as i32);
        let holdout = run.holdout.clone().expect("a holdout check");
        assert_eq!(
            holdout.total_actual,
            local.holdout.as_ref().unwrap().total_actual
        );
        assert_eq!(holdout.by_repeat_purchases.len(), 8);
        assert_eq!(run.bad_rows, local.bad_rows.total as u64);

        // GetClv gives the job's result; the files download.
        let got = server
            .segmentations()
            .get_clv(pb::GetClvRequest { id: run.id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, run);
        for name in [
            "clv.html",
            "customers.csv",
            "customers.parquet",
            "clv.json",
            "p_alive.png",
            "holdout.png",
        ] {
            assert!(run.artifacts.iter().any(|a| a == name), "{name}");
        }
        let table =
            String::from_utf8(server.download(&run.id, "customers.csv").await.unwrap()).unwrap();
        assert_eq!(table.lines().count() as u64, run.n_customers + 1);
        let first = table
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();

        // A CLV run is not a segmentation, nor a segmentation a CLV run.
        let e = server
            .segmentations()
            .get_segmentation(pb::GetSegmentationRequest { id: run.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("GetClv"), "{e}");

        // Erasure reaches the CLV run's customer tables.
        let erased = pb::privacy_client::PrivacyClient::new(server.channel.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: first.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let hit = erased
            .changed
            .iter()
            .find(|c| c.id == run.id)
            .expect("the CLV run changed");
        assert_eq!(
            hit.rows_removed, 1,
            "the customer's one row (in both tables)"
        );
        let table =
            String::from_utf8(server.download(&run.id, "customers.csv").await.unwrap()).unwrap();
        assert!(!table.lines().any(|l| l.starts_with(&format!("{first},"))));
        // In the service's own tables only the customer_id column names a
        // customer: erasing "3" leaves the customers with x = 3 alone.
        assert!(table.lines().any(|l| l.split(',').nth(1) == Some("3")));
        let erased = pb::privacy_client::PrivacyClient::new(server.channel.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: "3".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!erased.changed.iter().any(|c| c.id == run.id), "{erased:?}");
        let after =
            String::from_utf8(server.download(&run.id, "customers.csv").await.unwrap()).unwrap();
        assert_eq!(after, table);

        // Bad requests are refused before the job is queued.
        for (bad, code, field) in [
            (
                pb::ClvRequest {
                    calibration_end: String::new(),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "calibration_end",
            ),
            (
                pb::ClvRequest {
                    calibration_end: "30/06/2025".into(),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "calibration_end",
            ),
            (
                pb::ClvRequest {
                    holdout_end: "2026-13-01".into(),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "holdout_end",
            ),
            (
                pb::ClvRequest {
                    source: None,
                    ..request.clone()
                },
                Code::InvalidArgument,
                "source",
            ),
            (
                pb::ClvRequest {
                    source: Some(pb::clv_request::Source::TransactionsId("tx-nope".into())),
                    ..request.clone()
                },
                Code::NotFound,
                "tx-nope",
            ),
            (
                pb::ClvRequest {
                    value: Some(pb::ValueOptions {
                        churn_high: 0.9,
                        churn_medium: 0.5,
                        ..Default::default()
                    }),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "churn",
            ),
            (
                pb::ClvRequest {
                    max_bad_rows: Some(-1.0),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "max_bad_rows",
            ),
            (
                pb::ClvRequest {
                    value: Some(pb::ValueOptions {
                        time_unit: pb::TimeUnit::Day as i32,
                        horizon: 100_000,
                        ..Default::default()
                    }),
                    ..request.clone()
                },
                Code::InvalidArgument,
                "at most ten years",
            ),
        ] {
            let e = server.segmentations().clv(bad).await.unwrap_err();
            assert_eq!(e.code(), code, "{field}: {e}");
            assert!(e.message().contains(field), "{field}: {e}");
        }
        // What only the log can tell fails the job, saying why.
        let job = server
            .segmentations()
            .clv(pb::ClvRequest {
                holdout_end: "2025-01-01".into(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        let (failed, _) = server.finish(&job.id).await;
        assert_eq!(failed.state, pb::JobState::Failed as i32);
        assert!(failed.error.contains("holdout end"), "{}", failed.error);
        // The request's dates are named, the log's are not (job records
        // quote no cell of the log).
        let job = server
            .segmentations()
            .clv(pb::ClvRequest {
                calibration_end: "2027-01-01".into(),
                holdout_end: String::new(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        let (failed, _) = server.finish(&job.id).await;
        assert!(
            failed
                .error
                .contains("2027-01-01 is after the last purchase in the log:"),
            "{}",
            failed.error
        );
        assert!(!failed.error.contains("(202"), "{}", failed.error);
        // A log that is not what its upload says is refused at upload,
        // without quoting its bytes.
        let fake = b"PAR1 customer SECRET-9 not really parquet PAR1";
        let mut messages = vec![tx_header(
            "log.parquet",
            pb::FileFormat::Parquet,
            fake.len(),
        )];
        messages.push(tx_chunk(fake));
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(messages))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("not a valid Parquet file"), "{e}");
        assert!(!e.message().contains("SECRET"), "{e}");

        // Deleting the log with cascade takes the CLV run too.
        let deleted = server
            .segmentations()
            .delete_transactions(pb::DeleteTransactionsRequest {
                id: uploaded.id.clone(),
                cascade: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(deleted.deleted_ids.contains(&run.id), "{deleted:?}");
        let e = server
            .segmentations()
            .get_clv(pb::GetClvRequest { id: run.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
        server.stop().await;
    });
}

fn outcome_block(rows: &[(String, bool, f64)]) -> pb::UpliftRequest {
    pb::UpliftRequest {
        message: Some(pb::uplift_request::Message::Outcomes(pb::OutcomeBlock {
            customer_ids: rows.iter().map(|r| r.0.clone()).collect(),
            converted: rows.iter().map(|r| r.1).collect(),
            revenue: rows.iter().map(|r| r.2).collect(),
        })),
    }
}

fn uplift_header(id: &str) -> pb::UpliftRequest {
    pb::UpliftRequest {
        message: Some(pb::uplift_request::Message::Header(pb::UpliftHeader {
            segmentation_id: id.into(),
        })),
    }
}

/// `Uplift` on streamed outcomes gives what `segmenta uplift` gives on the
/// same customers and outcomes, finds a planted lift, and answers bad
/// streams with errors that name the problem.
#[test]
fn uplift_over_grpc_matches_the_library_and_refuses_bad_streams() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("log.csv");
        segmenta::segmentation::demo::write_demo_log(&log, 2_000, 6).unwrap();
        let server = TestServer::start(&dir.path().join("data"), Limits::default()).await;
        let uploaded = server.upload_log(&std::fs::read(&log).unwrap()).await;
        let segment = |experiment| pb::SegmentRequest {
            source: Some(pb::segment_request::Source::TransactionsId(
                uploaded.id.clone(),
            )),
            k_choice: Some(pb::segment_request::KChoice::K(3)),
            experiment,
            ..Default::default()
        };
        let mut ids = Vec::new();
        for experiment in [
            Some(pb::ExperimentOptions {
                holdout_share: 0.3,
                salt: "autumn".into(),
            }),
            None,
        ] {
            let job = server
                .segmentations()
                .segment(segment(experiment))
                .await
                .unwrap()
                .into_inner();
            ids.push(segmentation_of(&server.finish(&job.id).await.0).id);
        }
        let (with_groups, without) = (&ids[0], &ids[1]);
        let table = server.download(with_groups, "customers.csv").await.unwrap();
        let assignments = dir.path().join("customers.csv");
        std::fs::write(&assignments, &table).unwrap();

        // Treated customers convert at about 30 %, control ones at 10 %; one
        // outcome per customer but the last 50, and a few strangers.
        let mut reader = csv::Reader::from_reader(table.as_slice());
        let headers = reader.headers().unwrap().clone();
        let (id_col, group_col) = (
            headers.iter().position(|h| h == "customer_id").unwrap(),
            headers.iter().position(|h| h == "group").unwrap(),
        );
        let mut rows: Vec<(String, bool, f64)> = Vec::new();
        for (i, r) in reader.records().enumerate() {
            let r = r.unwrap();
            let treated = &r[group_col] == "treatment";
            let converted = (i * 7919) % 100 < if treated { 30 } else { 10 };
            rows.push((
                r[id_col].to_string(),
                converted,
                if converted {
                    20.0 + (i % 13) as f64
                } else {
                    0.0
                },
            ));
        }
        rows.truncate(rows.len() - 50);
        rows.push(("stranger-1".into(), true, 5.0));
        rows.push(("stranger-2".into(), false, 0.0));
        let outcomes = dir.path().join("outcomes.csv");
        let mut w = csv::Writer::from_path(&outcomes).unwrap();
        w.write_record(["customer_id", "converted", "revenue"])
            .unwrap();
        for (id, c, r) in &rows {
            w.write_record([id.clone(), (*c as u8).to_string(), r.to_string()])
                .unwrap();
        }
        w.flush().unwrap();
        let local = segmenta::experiment::measure(&assignments, &outcomes, false).unwrap();

        let mut messages = vec![uplift_header(with_groups)];
        messages.extend(rows.chunks(700).map(outcome_block));
        let report = server
            .segmentations()
            .uplift(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        let overall = report.overall.clone().unwrap();
        let conversion = overall.conversion.unwrap();
        let l = &local.overall;
        assert_eq!(
            [conversion.estimate, conversion.low, conversion.high],
            [l.conversion.estimate, l.conversion.low, l.conversion.high]
        );
        assert_eq!(overall.revenue_p_value, l.revenue_p_value);
        assert!(
            conversion.low > 0.1 && conversion.high < 0.3,
            "{conversion:?}"
        );
        assert_eq!(report.segments.len(), local.segments.len());
        assert_eq!(report.without_outcome, 50);
        assert_eq!(report.unknown_outcomes, 2);
        assert_eq!(report.warnings, local.warnings);
        assert_eq!(
            overall.treatment.unwrap().customers + overall.control.unwrap().customers,
            report.customers
        );

        // Bad streams, each answered with what is wrong; the server goes on.
        let dup = vec![rows[0].clone(), rows[0].clone()];
        let nan = vec![(rows[0].0.clone(), true, f64::NAN)];
        let huge = vec![(rows[0].0.clone(), true, 1.7e308)];
        let ragged = pb::UpliftRequest {
            message: Some(pb::uplift_request::Message::Outcomes(pb::OutcomeBlock {
                customer_ids: vec!["a".into(), "b".into()],
                converted: vec![true],
                revenue: vec![1.0, 2.0],
            })),
        };
        let cases: Vec<(Vec<pb::UpliftRequest>, Code, &str)> = vec![
            (
                vec![uplift_header(without), outcome_block(&rows[..10])],
                Code::FailedPrecondition,
                "no campaign groups",
            ),
            (vec![uplift_header("seg-nope")], Code::NotFound, "seg-nope"),
            (
                vec![uplift_header("")],
                Code::InvalidArgument,
                "segmentation_id",
            ),
            (
                vec![outcome_block(&rows[..3])],
                Code::InvalidArgument,
                "header",
            ),
            (
                vec![uplift_header(with_groups), outcome_block(&dup)],
                Code::InvalidArgument,
                "rows 1 and 2 have the same customer id",
            ),
            (
                vec![uplift_header(with_groups), outcome_block(&nan)],
                Code::InvalidArgument,
                "revenue",
            ),
            (
                vec![uplift_header(with_groups), outcome_block(&huge)],
                Code::InvalidArgument,
                "at most 1e15",
            ),
            (
                vec![uplift_header(with_groups), ragged],
                Code::InvalidArgument,
                "one entry per customer",
            ),
            (
                vec![uplift_header(with_groups), uplift_header(with_groups)],
                Code::InvalidArgument,
                "only outcome blocks",
            ),
        ];
        for (messages, code, needle) in cases {
            let e = server
                .segmentations()
                .uplift(tokio_stream::iter(messages))
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{needle}: {e}");
            assert!(e.message().contains(needle), "{needle}: {e}");
            assert!(!e.message().contains(dir.path().to_str().unwrap()), "{e}");
        }
        server.stop().await;
    });
}

/// A job whose outputs do not fit in the quota stores nothing: no staged
/// customer table stays behind for erasure and deletes to miss.
#[test]
fn outputs_refused_by_the_quota_leave_nothing_on_disk() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("log.csv");
        common::logs::buying_and_leaving(&log, 600, 7);
        let size = std::fs::metadata(&log).unwrap().len();
        let data = dir.path().join("data");
        let server = TestServer::start(
            &data,
            Limits {
                max_data_dir_bytes: Some(size + 20_000),
                ..Limits::default()
            },
        )
        .await;
        let uploaded = server.upload_log(&std::fs::read(&log).unwrap()).await;
        let job = server
            .segmentations()
            .clv(pb::ClvRequest {
                source: Some(pb::clv_request::Source::TransactionsId(uploaded.id.clone())),
                calibration_end: "2025-03-31".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (failed, _) = server.finish(&job.id).await;
        assert_eq!(failed.state, pb::JobState::Failed as i32);
        assert!(
            failed.error.contains("max_data_dir_bytes"),
            "{}",
            failed.error
        );
        let left: Vec<_> = std::fs::read_dir(data.join("segmentations"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        server.stop().await;
    });
}

/// Erasure goes on past a stored log it cannot read (one damaged on disk),
/// then fails naming it; ids with tabs and newlines are erased too.
#[test]
fn erasure_goes_on_past_a_damaged_log_and_names_it() {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("data");
        let server = TestServer::start(&data, Limits::default()).await;
        let text = "customer_id,date,amount\n\"TAB\tX\",2025-01-02,5\nKEEP,2025-01-03,6\n";
        let readable = server.upload_log(text.as_bytes()).await;
        // A valid Parquet upload, then damaged on disk (as by a failing disk).
        let ids: ArrayRef = std::sync::Arc::new(StringArray::from(vec!["TAB\tX", "KEEP"]));
        let batch = RecordBatch::try_from_iter([("customer_id", ids)]).unwrap();
        let mut bytes = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let damaged = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![
                tx_header("log.parquet", pb::FileFormat::Parquet, bytes.len()),
                tx_chunk(&bytes),
            ]))
            .await
            .unwrap()
            .into_inner();
        let file = data
            .join("transactions")
            .join(&damaged.id)
            .join("log.parquet");
        std::fs::write(&file, b"PAR1 damaged PAR1").unwrap();

        let e = pb::privacy_client::PrivacyClient::new(server.channel.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: "TAB\tX".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains(&damaged.id), "{e}");
        // The readable log lost the customer all the same.
        let log =
            std::fs::read_to_string(data.join("transactions").join(&readable.id).join("log.csv"))
                .unwrap();
        assert!(!log.contains("TAB") && log.contains("KEEP"), "{log}");
        // Once the damaged log is gone, erasure succeeds.
        server
            .segmentations()
            .delete_transactions(pb::DeleteTransactionsRequest {
                id: damaged.id.clone(),
                cascade: true,
            })
            .await
            .unwrap();
        pb::privacy_client::PrivacyClient::new(server.channel.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: "TAB\tX".into(),
            })
            .await
            .unwrap();
        server.stop().await;
    });
}

/// A job may read an uploaded log with another delimiter than the upload
/// named; the erasure must then split its lines as that job did, or the
/// customer the job found stays on disk (and comes back in the next run).
#[test]
fn erasure_splits_a_log_as_the_jobs_that_read_it_did() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("data");
        let server = TestServer::start(&data, Limits::default()).await;
        let mut text = String::from("customer_id|date|amount\n");
        for c in 0..30 {
            for day in 1..=3 {
                text.push_str(&format!(
                    "P{c:05}|2025-0{day}-1{}|{}\n",
                    c % 9,
                    10 + c * day
                ));
            }
        }
        let upload = |delimiter: &str| pb::UploadTransactionsRequest {
            message: Some(pb::upload_transactions_request::Message::Header(
                pb::TransactionsHeader {
                    name: "pipes.csv".into(),
                    format: pb::FileFormat::Csv as i32,
                    text_format: Some(pb::TextFormat {
                        delimiter: delimiter.into(),
                        ..Default::default()
                    }),
                    size_bytes: text.len() as u64,
                },
            )),
        };
        // The uploader said ","; the job says "|" (after one that said ";"
        // and failed: a failed job's delimiter is not recorded).
        let log = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![
                upload(","),
                tx_chunk(text.as_bytes()),
            ]))
            .await
            .unwrap()
            .into_inner();
        let job = server
            .segmentations()
            .segment(pb::SegmentRequest {
                source: Some(pb::segment_request::Source::TransactionsId(log.id.clone())),
                k_choice: Some(pb::segment_request::KChoice::K(2)),
                text_format: Some(pb::TextFormat {
                    delimiter: "|".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (done, _) = server.finish(&job.id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
        let failed = server
            .segmentations()
            .segment(pb::SegmentRequest {
                source: Some(pb::segment_request::Source::TransactionsId(log.id.clone())),
                k_choice: Some(pb::segment_request::KChoice::K(2)),
                text_format: Some(pb::TextFormat {
                    delimiter: ";".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        if let Ok(job) = failed {
            let (done, _) = server.finish(&job.into_inner().id).await;
            assert_eq!(done.state, pb::JobState::Failed as i32);
        }
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(data.join("transactions").join(&log.id).join("meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["read_delimiters"],
            serde_json::json!(["pipe"]),
            "{meta}"
        );
        let erased = pb::privacy_client::PrivacyClient::new(server.channel.clone())
            .erase_customer(pb::EraseCustomerRequest {
                customer_id: "P00003".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let on_log = erased.changed.iter().find(|c| c.id == log.id).unwrap();
        assert_eq!(on_log.rows_removed, 3);
        let stored =
            std::fs::read_to_string(data.join("transactions").join(&log.id).join("log.csv"))
                .unwrap();
        assert!(!stored.contains("P00003"), "{stored}");
        assert_eq!(stored.lines().count(), 1 + 29 * 3);
        server.stop().await;
    });
}

/// An upload that ends short of what its header declared (as a stream the
/// client cancelled ends, to the server) is refused and leaves nothing; a
/// partition upload cut short keeps the earlier one.
#[test]
fn uploads_cut_short_of_their_declared_size_are_refused() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let declared = |rows: u64| pb::UploadRequest {
            message: Some(Message::Header(pb::UploadHeader {
                name: "d".into(),
                columns: vec!["a".into(), "b".into()],
                n_rows: rows,
            })),
        };
        let e = server
            .datasets()
            .upload(tokio_stream::iter(vec![
                declared(3),
                rows(vec![1.0, 2.0, 3.0, 4.0]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(
            e.message().contains("header.n_rows") && e.message().contains("ended after 2"),
            "{e}"
        );
        let whole = server
            .datasets()
            .upload(tokio_stream::iter(vec![
                declared(2),
                rows(vec![1.0, 2.0, 3.0, 4.0]),
            ]))
            .await
            .unwrap()
            .into_inner();
        let listed = server
            .datasets()
            .list(pb::ListDatasetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .datasets;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, whole.id);

        let log = b"customer_id,date,amount\nA,2025-01-02,5\nB,2025-01-0";
        let header = |size: u64| pb::UploadTransactionsRequest {
            message: Some(pb::upload_transactions_request::Message::Header(
                pb::TransactionsHeader {
                    name: "cut.csv".into(),
                    format: pb::FileFormat::Csv as i32,
                    size_bytes: size,
                    ..Default::default()
                },
            )),
        };
        let e = server
            .segmentations()
            .upload_transactions(tokio_stream::iter(vec![header(80), tx_chunk(log)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("header.size_bytes"), "{e}");
        let kept = std::fs::read_dir(dir.path().join("transactions"))
            .unwrap()
            .count();
        assert_eq!(kept, 0, "nothing of the cut log was kept");

        let mut part = part_header("fit-cut", 0, 2, false, 2);
        let good = server
            .clustering()
            .put_partition(tokio_stream::iter(vec![
                part.clone(),
                part_rows(&[1.0, 2.0, 3.0, 4.0], &[]),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(good.n_rows, 2);
        if let Some(pb::put_partition_request::Message::Header(h)) = &mut part.message {
            h.n_rows = 5;
        }
        let e = server
            .clustering()
            .put_partition(tokio_stream::iter(vec![part, part_rows(&[9.0, 9.0], &[])]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        server.stop().await;
    });
}

/// k-means|| scores several times k candidate centres: a k under `max_k`
/// must not be refused for them, while a Lloyd step's centroids stay
/// bounded by `max_k` itself.
#[test]
fn candidate_centres_are_not_held_to_max_k() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(
            dir.path(),
            Limits {
                max_k: 4,
                ..Limits::default()
            },
        )
        .await;
        let rows: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        server
            .clustering()
            .put_partition(tokio_stream::iter(vec![
                part_header("fit-k", 0, 2, false, rows.len() / 2),
                part_rows(&rows, &[]),
            ]))
            .await
            .unwrap();
        let source = || {
            Some(pb::RowSource {
                source: Some(pb::row_source::Source::Partition(pb::PartitionKey {
                    fit_id: "fit-k".into(),
                    index: 0,
                })),
            })
        };
        let nine: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let cost = server
            .clustering()
            .partition_cost(pb::PartitionCostRequest {
                rows: source(),
                centers: nine.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cost.n_rows, 20);
        let e = server
            .clustering()
            .partial_step(pb::PartialStepRequest {
                rows: source(),
                centroids: nine,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("9 centroids"), "{e}");
        server.stop().await;
    });
}

/// A small compressed Parquet file whose one value unpacks into megabytes
/// is refused at the upload: it would swell in every job's memory and on
/// disk at an erasure.
#[test]
fn a_parquet_log_counts_as_what_it_unpacks_into() {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(
            dir.path(),
            Limits {
                max_dataset_bytes: 1 << 20,
                ..Limits::default()
            },
        )
        .await;
        let big = "A".repeat(4 << 20);
        let column = |v: Vec<&str>| -> ArrayRef { std::sync::Arc::new(StringArray::from(v)) };
        let batch = RecordBatch::try_from_iter([
            ("customer_id", column(vec![big.as_str(), "B"])),
            ("date", column(vec!["2025-01-01", "2025-01-02"])),
            ("amount", column(vec!["1", "2"])),
        ])
        .unwrap();
        // Written small (zstd), then uploaded: the server's answer.
        let upload = |batch: RecordBatch, dictionary: bool| {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .set_dictionary_enabled(dictionary)
                .build();
            let mut bytes = Vec::new();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props))
                    .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
            let mut client = server.segmentations();
            async move {
                client
                    .upload_transactions(tokio_stream::iter(vec![
                        tx_header("bomb.parquet", pb::FileFormat::Parquet, bytes.len()),
                        tx_chunk(&bytes),
                    ]))
                    .await
                    .unwrap_err()
            }
        };
        let e = upload(batch, false).await;
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(
            e.message().contains("max_dataset_bytes") && e.message().contains("unpacks"),
            "{e}"
        );
        // An honest footer, but a dictionary repeating one 32 KiB value in
        // 16,000 rows (512 MiB once expanded): the pages tell.
        let wide = "B".repeat(32 << 10);
        let n = 16_000;
        let batch = RecordBatch::try_from_iter([
            ("customer_id", column(vec![wide.as_str(); n])),
            ("date", column(vec!["2025-01-01"; n])),
            ("amount", column(vec!["1"; n])),
        ])
        .unwrap();
        let e = upload(batch, true).await;
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("unpacks into more than"), "{e}");
        // Nothing was kept.
        let kept = std::fs::read_dir(dir.path().join("transactions"))
            .unwrap()
            .count();
        assert_eq!(kept, 0);
        server.stop().await;
    });
}

/// Pops the last element of the first array under `key` (depth first).
fn shorten_first(v: &mut serde_json::Value, key: &str) -> bool {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(a)) = map.get_mut(key) {
                return a.pop().is_some();
            }
            map.values_mut().any(|v| shorten_first(v, key))
        }
        serde_json::Value::Array(a) => a.iter_mut().any(|v| shorten_first(v, key)),
        _ => false,
    }
}

/// Datasets and models damaged on the server's disk are DATA_LOSS (or a
/// failed job) naming the object and what is wrong, never a panic or a
/// blamed request; the server keeps serving the objects that are whole.
#[test]
fn damaged_stored_objects_are_data_loss_and_the_server_keeps_serving() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let (x, _) = blobs(300, 3, 3, 5);
        let dataset = server.upload(&["a", "b", "c"], &x).await;
        let fit = |id: &str| pb::FitKMeansRequest {
            dataset_id: id.into(),
            k: 3,
            backend: pb::Backend::Cpu as i32,
            ..Default::default()
        };
        let job = server.clustering().fit_k_means(fit(&dataset.id)).await;
        let (job, _) = server.finish(&job.unwrap().into_inner().id).await;
        let kmeans = kmeans_of(&job);
        let job = server.clustering().fit_k_means(fit(&dataset.id)).await;
        let (job, _) = server.finish(&job.unwrap().into_inner().id).await;
        let misnamed = kmeans_of(&job);
        let job = server
            .decomposition()
            .fit_pca(pb::FitPcaRequest {
                dataset_id: dataset.id.clone(),
                n_components: 2,
                ..Default::default()
            })
            .await;
        let (job, _) = server.finish(&job.unwrap().into_inner().id).await;
        let Some(pb::job::Result::Pca(pca)) = job.result else {
            panic!("no PCA model: {}", job.error)
        };
        let stored = dir.path().join("datasets").join(&dataset.id);
        let meta = std::fs::read(stored.join("meta.json")).unwrap();
        let get = || {
            let (mut client, id) = (server.datasets(), dataset.id.clone());
            async move { client.get(pb::GetDatasetRequest { id }).await }
        };

        // A values file cut short: the fit's job fails saying so.
        let values = std::fs::read(stored.join("values.f32")).unwrap();
        std::fs::write(stored.join("values.f32"), &values[..values.len() - 4]).unwrap();
        let job = server.clustering().fit_k_means(fit(&dataset.id)).await;
        let (job, _) = server.finish(&job.unwrap().into_inner().id).await;
        assert_eq!(job.state, pb::JobState::Failed as i32);
        assert!(
            job.error
                .contains(&format!("dataset {} is damaged", dataset.id))
                && job.error.contains("values file holds 3596 bytes"),
            "{}",
            job.error
        );
        std::fs::write(stored.join("values.f32"), &values).unwrap();

        // Metadata that is not JSON, or names no columns.
        let no_columns = String::from_utf8(meta.clone())
            .unwrap()
            .replace(r#""columns":["a","b","c"]"#, r#""columns":[]"#);
        assert_ne!(
            no_columns.as_bytes(),
            &meta[..],
            "the metadata's form changed"
        );
        for (bytes, why) in [
            (&b"{ not json"[..], "its metadata: "),
            (no_columns.as_bytes(), "its metadata names no columns"),
        ] {
            std::fs::write(stored.join("meta.json"), bytes).unwrap();
            let e = get().await.unwrap_err();
            assert_eq!(e.code(), Code::DataLoss, "{e}");
            assert!(e.message().contains(why), "{e}");
            let e = server
                .clustering()
                .fit_k_means(fit(&dataset.id))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::DataLoss, "{e}");
        }
        std::fs::write(stored.join("meta.json"), &meta).unwrap();
        assert_eq!(get().await.unwrap().into_inner(), dataset);

        // Models: one not JSON, one whose shapes disagree. Damaged while
        // the server is down (a running one holds the models it used).
        server.stop().await;
        let models = dir.path().join("models");
        let kmeans_file = models.join(format!("{}.json", kmeans.id));
        std::fs::write(&kmeans_file, b"[1, 2").unwrap();
        let pca_file = models.join(format!("{}.json", pca.id));
        let mut record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&pca_file).unwrap()).unwrap();
        assert!(
            shorten_first(&mut record, "explained_variance"),
            "no explained_variance in {record}"
        );
        std::fs::write(&pca_file, serde_json::to_vec(&record).unwrap()).unwrap();
        // A column name lost: the count no longer matches the width.
        let misnamed_file = models.join(format!("{}.json", misnamed.id));
        let mut record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&misnamed_file).unwrap()).unwrap();
        record["columns"].as_array_mut().unwrap().pop();
        std::fs::write(&misnamed_file, serde_json::to_vec(&record).unwrap()).unwrap();
        let server = TestServer::start(dir.path(), Limits::default()).await;
        let e = server
            .models()
            .get(pb::GetModelRequest {
                id: misnamed.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{e}");
        assert!(
            e.message()
                .contains("2 column names for a model of 3 features"),
            "{e}"
        );
        let e = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: kmeans.id.clone(),
                rows: vec![0.0; 3],
                n_features: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{e}");
        assert!(
            e.message()
                .starts_with(&format!("model {} is damaged", kmeans.id)),
            "{e}"
        );
        let e = server
            .decomposition()
            .transform(pb::TransformRequest {
                model_id: pca.id.clone(),
                rows: vec![0.0; 3],
                n_features: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{e}");
        assert!(
            e.message()
                .contains("1 explained_variance values for 2 components"),
            "{e}"
        );

        // Still serving the whole dataset.
        let job = server.clustering().fit_k_means(fit(&dataset.id)).await;
        let (job, _) = server.finish(&job.unwrap().into_inner().id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{}", job.error);

        // A dataset whose metadata is damaged can still be deleted, as its
        // error says, and damaged models do not stand in the way.
        std::fs::write(stored.join("meta.json"), b"{ not json").unwrap();
        let gone = server
            .datasets()
            .delete(pb::DeleteDatasetRequest {
                id: dataset.id.clone(),
                cascade: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(gone.deleted_ids.contains(&dataset.id), "{gone:?}");
        let e = server
            .datasets()
            .get(pb::GetDatasetRequest {
                id: dataset.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
        server.stop().await;
    });
}

/// Scoring calls refuse what they cannot answer before any work: a NaN
/// component, a reply over the message limit (with the rows that would
/// fit), rows whose squared distance overflows float32; the server keeps
/// serving.
#[test]
fn scoring_refuses_what_it_cannot_answer() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let limits = Limits {
            max_message_bytes: 64 << 10,
            ..Limits::default()
        };
        let server = TestServer::start(dir.path(), limits).await;
        let (x, _) = blobs(500, 8, 2, 4);
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let dataset = server.upload(&names, &x).await;
        let job = server
            .decomposition()
            .fit_pca(pb::FitPcaRequest {
                dataset_id: dataset.id.clone(),
                n_components: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::job::Result::Pca(pca)) = server.finish(&job.id).await.0.result else {
            panic!("no PCA model")
        };
        let inverse = |values: Vec<f32>| {
            let mut d = server.decomposition();
            let model_id = pca.id.clone();
            async move {
                d.inverse_transform(pb::InverseTransformRequest {
                    model_id,
                    values,
                    n_components: 1,
                })
                .await
            }
        };
        let e = inverse(vec![0.5, f32::NAN]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("component 1"), "{e}");
        // 3,000 rows of 8 floats back: 96,000 bytes over a 65,536 limit.
        let e = inverse(vec![0.5; 3000]).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(
            e.message().contains("max_message_bytes")
                && e.message().contains("send at most 2016 rows"),
            "{e}"
        );
        // Finite rows that overflow once projected are refused, not inf.
        let e = server
            .decomposition()
            .transform(pb::TransformRequest {
                model_id: pca.id.clone(),
                // Along the component's signs: Σ|c| > 1 times 3e38.
                rows: pca
                    .components
                    .iter()
                    .map(|c| 3e38f32.copysign(*c))
                    .collect(),
                n_features: 8,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(
            e.message().starts_with("rows: row 1 overflows float32"),
            "{e}"
        );
        let back = inverse(vec![0.5; 2000]).await.unwrap().into_inner();
        assert_eq!(back.rows.len(), 2000 * 8);

        let job = server
            .clustering()
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: dataset.id.clone(),
                k: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::job::Result::Kmeans(model)) = server.finish(&job.id).await.0.result else {
            panic!("no k-means model")
        };
        let e = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: model.id.clone(),
                rows: vec![3e38; 8],
                n_features: 8,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().starts_with("rows: row 1 is too far"), "{e}");
        let fine = server
            .clustering()
            .assign(pb::AssignRequest {
                model_id: model.id.clone(),
                rows: x.row(0).to_vec(),
                n_features: 8,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(fine.distances[0].is_finite());
    });
}
