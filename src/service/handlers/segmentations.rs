use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::value::{bad_row_policy, clv_job, max_bad_rows, value_options};
use super::{check_declared, next_message, page_request, paginate, require_declared, UploadPace};
use crate::data::TableFormat;
use crate::segmentation::transactions::TransactionColumns;
use crate::segmentation::{ExperimentOptions, KChoice, SegmentParams, SegmentationError};
use crate::service::convert::{backend_choice, clv_run, job, segmentation, text_format};
use crate::service::engine::{Engine, LogSource, Origin, SegmentJob};
use crate::service::error::{ServiceError, ServiceResult};
use crate::service::gate::{note, AuditIds};
use crate::service::proto as pb;
use crate::service::proto::upload_transactions_request::Message;

/// Artifacts are sent in chunks of this size, well under any message limit.
const CHUNK_BYTES: usize = 1 << 20;

pub struct SegmentationsService {
    pub engine: Arc<Engine>,
}

pub(super) fn columns(c: Option<pb::TransactionColumns>) -> TransactionColumns {
    let c = c.unwrap_or_default();
    let defaults = TransactionColumns::default();
    let or = |s: String, d: String| if s.is_empty() { d } else { s };
    let optional = |s: String| (!s.is_empty()).then_some(s);
    TransactionColumns {
        customer: or(c.customer, defaults.customer),
        date: or(c.date, defaults.date),
        amount: or(c.amount, defaults.amount),
        quantity: optional(c.quantity),
        order: optional(c.order),
    }
}

fn k_choice(k: Option<pb::segment_request::KChoice>) -> Result<Option<KChoice>, ServiceError> {
    use pb::segment_request::KChoice as K;
    match k {
        None => Ok(None),
        Some(K::K(0)) => Err(ServiceError::invalid("k", "k must be at least 1")),
        Some(K::K(k)) => Ok(Some(KChoice::Fixed(k as usize))),
        Some(K::KRange(r)) if 1 <= r.min && r.min <= r.max => {
            Ok(Some(KChoice::Range(r.min as usize..=r.max as usize)))
        }
        Some(K::KRange(r)) => Err(ServiceError::invalid(
            "k_range",
            format!("expected 1 <= min <= max, got {}..{}", r.min, r.max),
        )),
    }
}

/// A request, checked and typed.
pub(super) fn segment_job(r: pb::SegmentRequest) -> Result<SegmentJob, ServiceError> {
    use pb::segment_request::Source;
    let source = match r.source {
        Some(Source::TransactionsId(id)) if !id.is_empty() => LogSource::Uploaded(id),
        Some(Source::TransactionsPath(p)) if !p.is_empty() => LogSource::ServerPath(p),
        _ => {
            return Err(ServiceError::invalid(
                "source",
                "set transactions_id (from UploadTransactions) or transactions_path",
            ))
        }
    };
    let as_of = match r.as_of.trim() {
        "" => None,
        d => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| crate::Error::from(SegmentationError::BadDate(d.to_owned())))?,
        ),
    };
    let bad_rows = bad_row_policy(r.bad_rows)?;
    let defaults = SegmentParams::default();
    let params = SegmentParams {
        columns: columns(r.columns),
        bad_rows,
        as_of,
        k: k_choice(r.k_choice)?,
        outlier_percentile: if r.outlier_percentile == 0.0 {
            defaults.outlier_percentile
        } else {
            r.outlier_percentile
        },
        seed: r.seed,
        n_init: if r.n_init == 0 {
            defaults.n_init
        } else {
            r.n_init as usize
        },
        ..defaults
    };
    if !(params.outlier_percentile > 0.0 && params.outlier_percentile < 100.0) {
        return Err(crate::Error::from(SegmentationError::BadPercentile(
            params.outlier_percentile,
        ))
        .into());
    }
    let max_bad_rows = max_bad_rows(r.max_bad_rows, params.max_bad_rows)?;
    let min_share = r.min_share.unwrap_or(params.min_share);
    if !(0.0..1.0).contains(&min_share) {
        return Err(crate::Error::from(SegmentationError::BadMinShare(min_share)).into());
    }
    if r.features.len() > crate::segmentation::features::FEATURE_NAMES.len()
        || r.features.iter().any(|f| f.len() > 64)
    {
        return Err(ServiceError::invalid(
            "features",
            "at most the five features, by name",
        ));
    }
    crate::segmentation::asked_features(&r.features)
        .map_err(|message| ServiceError::invalid("features", message))?;
    Ok(SegmentJob {
        source,
        text_format: text_format(r.text_format, "text_format")?,
        params: SegmentParams {
            max_bad_rows,
            min_share,
            features: (!r.features.is_empty()).then_some(r.features),
            clv: r
                .value
                .filter(|v| v.enabled)
                .map(|v| value_options(&v))
                .transpose()?,
            experiment: experiment_options(r.experiment)?,
            ..params
        },
        previous_id: (!r.previous_segmentation_id.is_empty()).then_some(r.previous_segmentation_id),
        backend: backend_choice(r.backend)?,
    })
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::segmentations_server::Segmentations for SegmentationsService {
    /// Streams the file to a temporary name; it appears only once the stream
    /// ends cleanly.
    async fn upload_transactions(
        &self,
        request: Request<Streaming<pb::UploadTransactionsRequest>>,
    ) -> Result<Response<pb::TransactionLog>, Status> {
        let _slot = self.engine.upload_slot()?;
        let idle = self.engine.config.limits.idle_timeout;
        let audit = request.extensions().get::<AuditIds>().cloned();
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream, idle).await? {
            Some(pb::UploadTransactionsRequest {
                message: Some(Message::Header(h)),
            }) => h,
            Some(_) => {
                return Err(ServiceError::invalid(
                    "header",
                    "the first message must be a header (name, format)",
                )
                .into())
            }
            None => return Err(ServiceError::invalid("header", "empty stream: no header").into()),
        };
        let format = match pb::FileFormat::try_from(header.format) {
            Ok(pb::FileFormat::Csv) => TableFormat::Csv,
            Ok(pb::FileFormat::Parquet) => TableFormat::Parquet,
            _ => {
                return Err(ServiceError::invalid(
                    "header.format",
                    "set FILE_FORMAT_CSV or FILE_FORMAT_PARQUET",
                )
                .into())
            }
        };
        self.engine.check_name("header.name", &header.name)?;
        require_declared("header.size_bytes", "bytes", header.size_bytes)?;
        let text_format =
            text_format(header.text_format, "header.text_format")?.unwrap_or_default();
        let store = self.engine.store.clone();
        let mut writer = tokio::task::block_in_place(|| {
            store.begin_transactions(&header.name, format, text_format)
        })?;
        let pace = UploadPace::new(idle);
        while let Some(msg) = next_message(&mut stream, idle).await? {
            pace.check(writer.size_bytes())?;
            let Some(Message::Chunk(bytes)) = msg.message else {
                return Err(
                    ServiceError::invalid("chunk", "only chunks may follow the header").into(),
                );
            };
            self.engine
                .check_dataset_size(writer.size_bytes() + bytes.len() as u64)?;
            tokio::task::block_in_place(|| writer.append(&bytes))?;
        }
        check_declared(
            "header.size_bytes",
            "bytes",
            header.size_bytes,
            writer.size_bytes(),
        )?;
        if writer.size_bytes() == 0 {
            return Err(ServiceError::invalid("chunk", "the upload is empty").into());
        }
        let max = self.engine.config.limits.max_dataset_bytes;
        let meta = tokio::task::block_in_place(|| writer.finish(max))?;
        if let Some(a) = audit {
            a.push(&meta.id);
        }
        tracing::info!(id = %meta.id, bytes = meta.size_bytes, "transaction log uploaded");
        Ok(Response::new((&meta).into()))
    }

    async fn segment(
        &self,
        request: Request<pb::SegmentRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref().clone();
        if let Some(pb::segment_request::Source::TransactionsId(id)) = &r.source {
            note(&request, &[id]);
        }
        note(&request, &[&r.previous_segmentation_id]);
        let bytes = r.encode_to_vec();
        let segment = segment_job(r)?;
        let snapshot = self.engine.segment(segment, Origin::New(&bytes)).await?;
        note(&request, &[&snapshot.id]);
        Ok(Response::new(job(&snapshot, &self.engine)))
    }

    async fn clv(&self, request: Request<pb::ClvRequest>) -> Result<Response<pb::Job>, Status> {
        let r = request.get_ref().clone();
        if let Some(pb::clv_request::Source::TransactionsId(id)) = &r.source {
            note(&request, &[id]);
        }
        let bytes = r.encode_to_vec();
        let clv = clv_job(r)?;
        let snapshot = self.engine.clv(clv, Origin::New(&bytes))?;
        note(&request, &[&snapshot.id]);
        Ok(Response::new(job(&snapshot, &self.engine)))
    }

    async fn get_clv(
        &self,
        request: Request<pb::GetClvRequest>,
    ) -> Result<Response<pb::ClvRun>, Status> {
        note(&request, &[&request.get_ref().id]);
        let id = request.into_inner().id;
        let (meta, summary) = tokio::task::block_in_place(|| self.engine.store.clv_run(&id))?;
        Ok(Response::new(clv_run(&meta, &summary)))
    }

    async fn uplift(
        &self,
        request: Request<Streaming<pb::UpliftRequest>>,
    ) -> Result<Response<pb::UpliftReport>, Status> {
        let _slot = self.engine.upload_slot()?;
        let audit = request.extensions().get::<AuditIds>().cloned();
        let report = super::value::uplift(&self.engine, audit, request.into_inner()).await?;
        Ok(Response::new((&report).into()))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let r = request.into_inner();
        let page = page_request(r.page_size, r.page_token, &["tx"])?;
        let store = self.engine.store.clone();
        let all = tokio::task::block_in_place(|| store.list_transactions())?;
        let (transactions, next_page_token) = paginate(
            all.iter()
                .map(|t| (t.id.clone(), pb::TransactionLog::from(t))),
            &page,
            self.engine.config.limits.max_message_bytes / 2,
        );
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions,
            next_page_token,
        }))
    }

    async fn get_segmentation(
        &self,
        request: Request<pb::GetSegmentationRequest>,
    ) -> Result<Response<pb::Segmentation>, Status> {
        note(&request, &[&request.get_ref().id]);
        let id = request.into_inner().id;
        let (meta, doc) = tokio::task::block_in_place(|| self.engine.store.segmentation(&id))?;
        Ok(Response::new(segmentation(&meta, &doc)))
    }

    type DownloadArtifactStream = ChunkStream;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        note(&request, &[&request.get_ref().segmentation_id]);
        let r = request.into_inner();
        let path = self.engine.store.artifact(&r.segmentation_id, &r.name)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(ServiceError::io)?;
        // Read a chunk at a time as the client takes them: a large artifact
        // never sits whole in memory.
        let chunks = futures_util::stream::unfold(Some(file), |file| async move {
            use tokio::io::AsyncReadExt;
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            while filled < CHUNK_BYTES {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(Status::from(ServiceError::io(e))), None)),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(pb::FileChunk { data: buf }), Some(file)))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn delete_transactions(
        &self,
        request: Request<pb::DeleteTransactionsRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        note(&request, &[&request.get_ref().id]);
        let r = request.get_ref();
        let engine = self.engine.clone();
        let deleted_ids =
            tokio::task::block_in_place(|| engine.delete_transactions(&r.id, r.cascade))?;
        let ids: Vec<&str> = deleted_ids.iter().map(String::as_str).collect();
        note(&request, &ids);
        Ok(Response::new(pb::DeleteResponse {
            deleted: true,
            deleted_ids,
        }))
    }

    async fn delete_segmentation(
        &self,
        request: Request<pb::DeleteSegmentationRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let id = request.get_ref().id.clone();
        note(&request, &[&id]);
        tokio::task::block_in_place(|| self.engine.delete_segmentation(&id))?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: true,
            deleted_ids: vec![id],
        }))
    }
}

/// `SegmentRequest.experiment`: `None` for a share of 0.
fn experiment_options(
    e: Option<pb::ExperimentOptions>,
) -> ServiceResult<Option<ExperimentOptions>> {
    let Some(e) = e.filter(|e| e.holdout_share != 0.0) else {
        return Ok(None);
    };
    if !(e.holdout_share > 0.0 && e.holdout_share < 1.0) {
        return Err(crate::Error::from(crate::experiment::ExperimentError::from(
            crate::experiment::GroupError::Share(e.holdout_share),
        ))
        .into());
    }
    if e.salt.len() > 256 {
        return Err(ServiceError::invalid(
            "experiment.salt",
            "at most 256 bytes",
        ));
    }
    Ok(Some(ExperimentOptions {
        holdout_share: e.holdout_share,
        salt: if e.salt.is_empty() {
            "segmenta".into()
        } else {
            e.salt
        },
    }))
}
