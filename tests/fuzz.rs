//! Property tests with hostile input: random bytes as every RPC's message,
//! extreme numbers and wrong combinations in well-formed messages, and random
//! or damaged files for every reader. The property is always the same: an
//! answer (a status, or an error value), never a panic, and the server keeps
//! serving. A panic hook counts panics on the server's threads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::server::{runtime, Served};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use segmenta::backend::BackendChoice;
use segmenta::service::proto as pb;
use segmenta::service::{Limits, ServerConfig};
use tempfile::TempDir;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics outside the test's own thread (the server's workers).
fn count_server_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        if !name.contains("::") && name != "main" {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        default(info);
    }));
}

/// Messages as raw bytes, so anything can be sent as any method's request.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

const UNARY: &[&str] = &[
    "/segmenta.v1.Datasets/Import",
    "/segmenta.v1.Datasets/Get",
    "/segmenta.v1.Datasets/List",
    "/segmenta.v1.Datasets/Delete",
    "/segmenta.v1.Jobs/GetJob",
    "/segmenta.v1.Jobs/ListJobs",
    "/segmenta.v1.Jobs/CancelJob",
    "/segmenta.v1.Clustering/FitKMeans",
    "/segmenta.v1.Clustering/Assign",
    "/segmenta.v1.Clustering/Evaluate",
    "/segmenta.v1.Clustering/ReleasePartitions",
    "/segmenta.v1.Clustering/PartialStep",
    "/segmenta.v1.Clustering/PartitionCost",
    "/segmenta.v1.Clustering/SampleByCost",
    "/segmenta.v1.Clustering/CandidateWeights",
    "/segmenta.v1.Decomposition/FitPca",
    "/segmenta.v1.Decomposition/Transform",
    "/segmenta.v1.Decomposition/InverseTransform",
    "/segmenta.v1.Segmentations/Segment",
    "/segmenta.v1.Segmentations/GetSegmentation",
    "/segmenta.v1.Segmentations/Clv",
    "/segmenta.v1.Segmentations/GetClv",
    "/segmenta.v1.Segmentations/DeleteTransactions",
    "/segmenta.v1.Segmentations/DeleteSegmentation",
    "/segmenta.v1.Models/Get",
    "/segmenta.v1.Models/List",
    "/segmenta.v1.Models/Delete",
    "/segmenta.v1.Models/Export",
    "/segmenta.v1.Models/Import",
    "/segmenta.v1.Models/CreateKMeans",
    "/segmenta.v1.Server/GetInfo",
    "/segmenta.v1.Privacy/EraseCustomer",
];

const CLIENT_STREAMING: &[&str] = &[
    "/segmenta.v1.Datasets/Upload",
    "/segmenta.v1.Segmentations/UploadTransactions",
    "/segmenta.v1.Clustering/PutPartition",
    "/segmenta.v1.Segmentations/Uplift",
];

const SERVER_STREAMING: &[&str] = &[
    "/segmenta.v1.Jobs/WatchJob",
    "/segmenta.v1.Segmentations/DownloadArtifact",
];

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

/// The server still answers, promptly.
async fn still_serving(c: &Channel) {
    let info = tokio::time::timeout(
        Duration::from_secs(30),
        pb::server_client::ServerClient::new(c.clone()).get_info(pb::GetInfoRequest {}),
    )
    .await
    .expect("GetInfo answered in time");
    info.expect("the server still serves");
}

/// A status, not a broken transport: the call was answered.
fn answered(r: Result<(), Status>) {
    if let Err(s) = r {
        assert!(
            !s.message().contains("h2 protocol error") && s.code() != Code::Unknown,
            "a broken answer: {s:?}"
        );
    }
}

/// Sends `bytes` as one whole message to `method`.
async fn send_raw(
    c: &Channel,
    method: &'static str,
    kind: u8,
    messages: Vec<Vec<u8>>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(c.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let first = messages.first().cloned().unwrap_or_default();
    match kind {
        0 => grpc
            .unary(tonic::Request::new(first), path(method), Raw)
            .await
            .map(|_| ()),
        1 => grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter(messages)),
                path(method),
                Raw,
            )
            .await
            .map(|_| ()),
        _ => {
            let mut stream = grpc
                .server_streaming(tonic::Request::new(first), path(method), Raw)
                .await?
                .into_inner();
            // Read a little: a watched job may run for a while.
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
            Ok(())
        }
    }
}

fn small_server(dir: &TempDir) -> ServerConfig {
    ServerConfig {
        backend: BackendChoice::Cpu,
        limits: Limits {
            max_message_bytes: 1 << 20,
            max_dataset_bytes: 4 << 20,
            max_assign_rows: 10_000,
            max_silhouette_sample: 2_000,
            max_k: 1_000,
            max_features: 64,
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..ServerConfig::new(dir.path().join("data"))
    }
}

#[test]
fn random_bytes_as_any_message_are_answered() {
    count_server_panics();
    let rt = runtime();
    let dir = TempDir::new().unwrap();
    let server = rt.block_on(Served::start(small_server(&dir)));
    let c = rt.block_on(server.channel());
    let method = prop_oneof![
        (0..UNARY.len()).prop_map(|i| (UNARY[i], 0u8)),
        (0..CLIENT_STREAMING.len()).prop_map(|i| (CLIENT_STREAMING[i], 1u8)),
        (0..SERVER_STREAMING.len()).prop_map(|i| (SERVER_STREAMING[i], 2u8)),
    ];
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..4096),
        // Field tags with huge lengths and repeated fields.
        Just(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just([0x10u8, 0xff, 0xff, 0xff, 0xff, 0x0f].repeat(200)),
    ];
    let strategy = (method, proptest::collection::vec(bytes, 1..4));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |((method, kind), messages)| {
            rt.block_on(async {
                answered(send_raw(&c, method, kind, messages).await);
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(still_serving(&c));
    rt.block_on(server.stop()).unwrap();
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(u32::MAX),
        Just(1 << 31),
        0u32..100
    ]
}

fn extreme_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1e308),
        Just(99.9999),
        0.0f64..100.0
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("../../etc/passwd".to_string()),
        Just("/proc/self/environ".to_string()),
        Just("ds-".to_string() + &"0".repeat(32)),
        Just("9999-12-31".to_string()),
        Just("+262143-12-31".to_string()),
        Just("x".repeat(300_000)),
        "[a-z0-9-]{0,40}",
        any::<String>(),
    ]
}

fn floats() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(
            prop_oneof![
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::MAX),
                -1e6f32..1e6
            ],
            0..64
        ),
        Just(vec![1.0; 200_000]),
    ]
}

/// Well-formed messages with hostile contents, against real objects.
#[test]
fn extreme_numbers_and_wrong_combinations_are_answered() {
    count_server_panics();
    let rt = runtime();
    let dir = TempDir::new().unwrap();
    let server = rt.block_on(Served::start(small_server(&dir)));
    let c = rt.block_on(server.channel());
    // A dataset and a model to aim at.
    let (dataset, model) = rt.block_on(async {
        use pb::upload_request::Message;
        let values: Vec<f32> = (0..600).map(|i| (i % 17) as f32).collect();
        let d = pb::datasets_client::DatasetsClient::new(c.clone())
            .upload(tokio_stream::iter(vec![
                pb::UploadRequest {
                    message: Some(Message::Header(pb::UploadHeader {
                        name: "f".into(),
                        columns: vec!["a".into(), "b".into(), "c".into()],
                        n_rows: 200,
                    })),
                },
                pb::UploadRequest {
                    message: Some(Message::Rows(pb::RowBlock {
                        values,
                        values_f32le: Default::default(),
                    })),
                },
            ]))
            .await
            .unwrap()
            .into_inner();
        let job = pb::clustering_client::ClusteringClient::new(c.clone())
            .fit_k_means(pb::FitKMeansRequest {
                dataset_id: d.id.clone(),
                k: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = pb::jobs_client::JobsClient::new(c.clone())
            .watch_job(pb::WatchJobRequest { id: job.id })
            .await
            .unwrap()
            .into_inner();
        let mut model = None;
        while let Some(e) = events.message().await.unwrap() {
            if let Some(pb::job_event::Event::Finished(j)) = e.event {
                if let Some(pb::job::Result::Kmeans(m)) = j.result {
                    model = Some(m.id);
                }
            }
        }
        (d.id, model.expect("a model"))
    });
    let id = prop_oneof![Just(dataset.clone()), Just(model.clone()), text()];
    let strategy = (
        0u8..8,
        id.clone(),
        id,
        extreme_u32(),
        extreme_u32(),
        extreme_u32(),
        extreme_f64(),
        floats(),
        text(),
        any::<i32>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |(which, a, b, x, y, z, f, values, s, e)| {
            rt.block_on(async {
                let r: Result<(), Status> = match which {
                    0 => pb::clustering_client::ClusteringClient::new(c.clone())
                        .fit_k_means(pb::FitKMeansRequest {
                            dataset_id: a,
                            k: x,
                            columns: vec![s.clone()],
                            init: e.rem_euclid(6),
                            initial_centroids: values,
                            n_init: y,
                            max_iter: z,
                            tol: Some(f),
                            seed: x as u64,
                            backend: e.rem_euclid(5),
                            standardize: y % 2 == 0,
                            weights_column: if z % 2 == 0 { s } else { String::new() },
                            init_sample_rows: match e.rem_euclid(4) {
                                0 => None,
                                1 => Some(0),
                                2 => Some(u64::MAX),
                                _ => Some(y as u64),
                            },
                        })
                        .await
                        .map(|_| ()),
                    1 => pb::clustering_client::ClusteringClient::new(c.clone())
                        .evaluate(pb::EvaluateRequest {
                            model_id: a,
                            dataset_id: b,
                            silhouette_sample_size: x,
                            seed: y as u64,
                        })
                        .await
                        .map(|_| ()),
                    2 => pb::clustering_client::ClusteringClient::new(c.clone())
                        .assign(pb::AssignRequest {
                            model_id: a,
                            rows: values,
                            n_features: 0,
                        })
                        .await
                        .map(|_| ()),
                    3 => pb::decomposition_client::DecompositionClient::new(c.clone())
                        .fit_pca(pb::FitPcaRequest {
                            dataset_id: a,
                            n_components: x,
                            columns: if y % 2 == 0 { vec![s] } else { Vec::new() },
                            whiten: z % 2 == 0,
                            backend: e,
                        })
                        .await
                        .map(|_| ()),
                    4 => pb::segmentations_client::SegmentationsClient::new(c.clone())
                        .segment(pb::SegmentRequest {
                            source: Some(if x % 2 == 0 {
                                pb::segment_request::Source::TransactionsId(a)
                            } else {
                                pb::segment_request::Source::TransactionsPath(s.clone())
                            }),
                            columns: None,
                            k_choice: Some(if y % 2 == 0 {
                                pb::segment_request::KChoice::K(z)
                            } else {
                                pb::segment_request::KChoice::KRange(pb::KRange { min: y, max: z })
                            }),
                            as_of: s,
                            previous_segmentation_id: b,
                            bad_rows: e,
                            outlier_percentile: f,
                            seed: 0,
                            n_init: x,
                            backend: e,
                            text_format: (x % 3 != 0).then(|| pb::TextFormat {
                                delimiter: ["", ";", "::", "\u{0}"][z as usize % 4].into(),
                                decimal_comma: y % 2 == 0,
                                date_format: ["", "%d/%m/%Y", "%Q", "%"][y as usize % 4].into(),
                            }),
                            max_bad_rows: (x % 2 == 0).then_some(f),
                            features: if y % 3 == 0 {
                                vec![["tenure_days", "x", "", "monetary"][z as usize % 4].into()]
                            } else {
                                Vec::new()
                            },
                            min_share: (z % 2 == 0).then_some(f),
                            value: (y % 4 == 1).then(|| pb::ValueOptions {
                                enabled: x % 2 == 0,
                                time_unit: e,
                                horizon: z,
                                discount_rate: f,
                                churn_high: f,
                                churn_medium: -f,
                            }),
                            experiment: (y % 4 == 2).then(|| pb::ExperimentOptions {
                                holdout_share: f,
                                salt: ["", "x", "\u{0}"][x as usize % 3].repeat(z as usize % 300),
                            }),
                        })
                        .await
                        .map(|_| ()),
                    5 => pb::segmentations_client::SegmentationsClient::new(c.clone())
                        .clv(pb::ClvRequest {
                            source: Some(if x % 2 == 0 {
                                pb::clv_request::Source::TransactionsId(a)
                            } else {
                                pb::clv_request::Source::TransactionsPath(s.clone())
                            }),
                            columns: (y % 2 == 0).then(|| pb::TransactionColumns {
                                customer: s.clone(),
                                ..Default::default()
                            }),
                            calibration_end: ["", "2025-01-01", "2025-02-30", "+999999-01-01"]
                                [z as usize % 4]
                                .into(),
                            holdout_end: if y % 3 == 0 { s.clone() } else { b },
                            value: (x % 3 == 0).then(|| pb::ValueOptions {
                                enabled: y % 2 == 0,
                                time_unit: e,
                                horizon: z,
                                discount_rate: f,
                                churn_high: -f,
                                churn_medium: f,
                            }),
                            bad_rows: e,
                            max_bad_rows: (x % 2 == 0).then_some(f),
                            text_format: (x % 3 != 0).then(|| pb::TextFormat {
                                delimiter: ["", ";", "::", "\u{0}"][z as usize % 4].into(),
                                decimal_comma: y % 2 == 0,
                                date_format: ["", "%d/%m/%Y", "%Q", "%"][y as usize % 4].into(),
                            }),
                        })
                        .await
                        .map(|_| ()),
                    6 => {
                        use pb::uplift_request::Message;
                        let header = pb::UpliftRequest {
                            message: Some(Message::Header(pb::UpliftHeader { segmentation_id: a })),
                        };
                        let n = values.len();
                        let block = pb::UpliftRequest {
                            message: Some(Message::Outcomes(pb::OutcomeBlock {
                                customer_ids: vec![s; n % 7],
                                converted: vec![x % 2 == 0; (n + y as usize % 2) % 7],
                                revenue: values.iter().map(|&v| v as f64 * f).take(n % 7).collect(),
                            })),
                        };
                        let messages = if z % 3 == 0 {
                            vec![block.clone(), header]
                        } else {
                            vec![header, block.clone(), block]
                        };
                        pb::segmentations_client::SegmentationsClient::new(c.clone())
                            .uplift(tokio_stream::iter(messages))
                            .await
                            .map(|_| ())
                    }
                    _ => pb::jobs_client::JobsClient::new(c.clone())
                        .list_jobs(pb::ListJobsRequest {
                            page_size: x,
                            page_token: s,
                        })
                        .await
                        .map(|_| ()),
                };
                if let Err(status) = &r {
                    assert!(
                        status.message().len() <= 2048,
                        "{} bytes",
                        status.message().len()
                    );
                    assert!(
                        !matches!(status.code(), Code::Unknown | Code::Internal),
                        "{status:?}"
                    );
                }
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        // Cancel whatever the fuzzing queued, then check the server is fine.
        let jobs = pb::jobs_client::JobsClient::new(c.clone())
            .list_jobs(pb::ListJobsRequest {
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        for j in jobs {
            let _ = pb::jobs_client::JobsClient::new(c.clone())
                .cancel_job(pb::CancelJobRequest { id: j.id })
                .await;
        }
        still_serving(&c).await;
    });
    rt.block_on(server.stop()).unwrap();
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

/// Valid files of each kind, to damage.
fn valid_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let csv =
        b"customer_id,date,amount\nA,2026-01-02,10.5\nB,2026-01-03,3\nA,2026-02-01,7\n".to_vec();
    let path = dir.join("seed.parquet");
    {
        use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
        let batch = RecordBatch::try_from_iter(vec![
            (
                "customer_id",
                std::sync::Arc::new(StringArray::from(vec!["A", "B", "A"])) as ArrayRef,
            ),
            (
                "date",
                std::sync::Arc::new(StringArray::from(vec![
                    "2026-01-02",
                    "2026-01-03",
                    "2026-02-01",
                ])) as ArrayRef,
            ),
            (
                "amount",
                std::sync::Arc::new(Float64Array::from(vec![10.5, 3.0, 7.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let parquet = std::fs::read(&path).unwrap();
    vec![(dir.join("f.csv"), csv), (dir.join("f.parquet"), parquet)]
}

#[test]
fn random_and_damaged_files_are_errors_not_panics() {
    // In a thread of its own, named with "::": the parquet crate still
    // panics on some damaged files, and the readers catch it (an error, not
    // a crash), but the panic hook of the server tests running beside this
    // one would count the caught panic as the server's.
    std::thread::Builder::new()
        .name("fuzz::damaged_files".into())
        .spawn(damaged_files_are_errors)
        .unwrap()
        .join()
        .unwrap();
}

fn damaged_files_are_errors() {
    let dir = TempDir::new().unwrap();
    let seeds = valid_files(dir.path());
    let damaged = (
        0..seeds.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        any::<prop::sample::Index>(),
    );
    let random = proptest::collection::vec(any::<u8>(), 0..2048);
    let strategy = (damaged, random, any::<bool>());
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let columns = segmenta::segmentation::transactions::TransactionColumns::default();
    runner
        .run(&strategy, |((which, edits, cut), random, use_random)| {
            let (path, seed) = &seeds[which];
            let mut bytes = if use_random { random } else { seed.clone() };
            if !bytes.is_empty() {
                for (at, v) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = v;
                }
                if !use_random && cut.index(4) == 0 {
                    let n = cut.index(bytes.len());
                    bytes.truncate(n);
                }
            }
            std::fs::write(path, &bytes).unwrap();
            let _ = segmenta::data::read_table(path, &[]);
            let _ = segmenta::segmentation::transactions::read_transactions(
                path,
                &columns,
                segmenta::segmentation::transactions::BadRowPolicy::Skip,
            );
            let model = dir.path().join("model.json");
            std::fs::write(&model, &bytes).unwrap();
            let _ = segmenta::segmentation::SegmentModel::load(&model);
            Ok(())
        })
        .unwrap();
}

/// The panics once known: a model.json whose scaler has the wrong length,
/// and a log whose latest date is the calendar's last day.
#[test]
fn known_panics_are_errors_now() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.csv");
    let mut text = String::from("customer_id,date,amount\n");
    for i in 0..30 {
        text.push_str(&format!("C{i},2026-01-{:02},{}.0\n", 1 + i % 28, 5 + i));
    }
    std::fs::write(&log, &text).unwrap();
    let backend = segmenta::backend::cpu::CpuBackend::new();
    let params = segmenta::segmentation::SegmentParams {
        k: Some(segmenta::segmentation::KChoice::Fixed(3)),
        ..Default::default()
    };
    let control = segmenta::segmentation::SegmentControl::default();
    let run =
        segmenta::segmentation::run_segmentation(&backend, &log, &params, None, &control).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let files = segmenta::segmentation::write_outputs(&run, &out).unwrap();
    let mut model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.model_json).unwrap()).unwrap();
    let scaler = model
        .pointer_mut("/kmeans/scaler/mean")
        .and_then(|v| v.as_array_mut())
        .expect("a scaler mean in model.json");
    scaler.pop();
    std::fs::write(&files.model_json, serde_json::to_vec(&model).unwrap()).unwrap();
    let Err(e) = segmenta::segmentation::SegmentModel::load(&files.model_json) else {
        panic!("a damaged scaler was accepted");
    };
    assert!(e.to_string().contains("scaler"), "{e}");

    text.push_str("C1,9999-12-31,5.0\nC2,+262143-12-31,5.0\n");
    std::fs::write(&log, &text).unwrap();
    // 2 of 32 rows: above the default 1 %, so the job fails with a summary…
    let e = segmenta::segmentation::run_segmentation(&backend, &log, &params, None, &control)
        .unwrap_err();
    assert!(e.to_string().contains("2 of 32 rows"), "{e}");
    // …and with a tolerance they are skipped.
    let params = segmenta::segmentation::SegmentParams {
        max_bad_rows: 0.1,
        ..params
    };
    let run = segmenta::segmentation::run_segmentation(&backend, &log, &params, None, &control)
        .expect("sentinel dates are bad rows, not a panic");
    assert_eq!(run.input.bad_rows.total, 2, "{:?}", run.input.bad_rows);
}

/// Every single-byte edit of a small Parquet file, read as a table and as a
/// log: each is a table or an error, never a panic out of a reader (CI once
/// found an edit on which the parquet crate panics).
#[test]
fn every_byte_edit_of_a_parquet_file_is_answered() {
    std::thread::Builder::new()
        .name("fuzz::parquet_edits".into())
        .spawn(|| {
            let dir = TempDir::new().unwrap();
            let (seed, bytes) = valid_files(dir.path())
                .into_iter()
                .find(|(p, _)| p.extension().is_some_and(|e| e == "parquet"))
                .unwrap();
            let columns = segmenta::segmentation::transactions::TransactionColumns::default();
            let path = dir.path().join("edited.parquet");
            let mut escaped = Vec::new();
            for at in 0..bytes.len() {
                for value in [0u8, 19, 0x7f, 0xff] {
                    let mut edited = bytes.clone();
                    edited[at] = value;
                    std::fs::write(&path, &edited).unwrap();
                    let read = std::panic::catch_unwind(|| {
                        let _ = segmenta::data::read_table(&path, &[]);
                        let _ = segmenta::segmentation::transactions::read_transactions(
                            &path,
                            &columns,
                            segmenta::segmentation::transactions::BadRowPolicy::Skip,
                        );
                    });
                    if read.is_err() {
                        escaped.push((at, value));
                    }
                }
            }
            assert!(
                escaped.is_empty(),
                "{seed:?}: panics escaped for (byte, value) {escaped:?}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
