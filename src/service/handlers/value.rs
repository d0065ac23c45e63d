//! Requests of the value and experiment calls (`Clv`, `Uplift`), checked
//! and typed before any work starts.

use std::path::Path;

use tonic::{Status, Streaming};

use super::{next_message, UploadPace};
use crate::experiment::{Assignments, Outcomes, UpliftReport};
use crate::segmentation::transactions::BadRowPolicy;
use crate::segmentation::SegmentationError;
use crate::service::convert::text_format;
use crate::service::engine::{ClvJob, Engine, LogSource};
use crate::service::error::{ServiceError, ServiceResult};
use crate::service::gate::AuditIds;
use crate::service::proto as pb;
use crate::value::{ChurnThresholds, ClvParams, TimeUnit, ValueOptions};

pub(super) fn bad_row_policy(value: i32) -> ServiceResult<BadRowPolicy> {
    match pb::BadRowPolicy::try_from(value) {
        Ok(pb::BadRowPolicy::Unspecified | pb::BadRowPolicy::Skip) => Ok(BadRowPolicy::Skip),
        Ok(pb::BadRowPolicy::Reject) => Ok(BadRowPolicy::Reject),
        Err(_) => Err(ServiceError::invalid(
            "bad_rows",
            format!("unknown policy {value}"),
        )),
    }
}

pub(super) fn max_bad_rows(value: Option<f64>, default: f64) -> ServiceResult<f64> {
    let v = value.unwrap_or(default);
    if !(0.0..=1.0).contains(&v) {
        return Err(crate::Error::from(SegmentationError::BadMaxBadRows(v)).into());
    }
    Ok(v)
}

/// The value options of a request, whether or not `enabled` is set.
pub(super) fn value_options(v: &pb::ValueOptions) -> ServiceResult<ValueOptions> {
    let unit = match pb::TimeUnit::try_from(v.time_unit) {
        Ok(pb::TimeUnit::Unspecified | pb::TimeUnit::Week) => TimeUnit::Week,
        Ok(pb::TimeUnit::Day) => TimeUnit::Day,
        Ok(pb::TimeUnit::Month) => TimeUnit::Month,
        Err(_) => {
            return Err(ServiceError::invalid(
                "value.time_unit",
                format!("unknown time unit {}", v.time_unit),
            ))
        }
    };
    let or = |x: f64, default: f64| if x == 0.0 { default } else { x };
    let defaults = ChurnThresholds::default();
    let options = ValueOptions {
        unit,
        horizon: (v.horizon > 0).then_some(v.horizon),
        discount_rate: v.discount_rate,
        churn: ChurnThresholds {
            high: or(v.churn_high, defaults.high),
            medium: or(v.churn_medium, defaults.medium),
        },
    };
    options.check().map_err(crate::Error::from)?;
    Ok(options)
}

fn date(field: &'static str, text: &str) -> ServiceResult<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
        ServiceError::invalid(
            field,
            format!(
                "invalid date {:?}: expected YYYY-MM-DD",
                crate::service::auth::clip(text)
            ),
        )
    })
}

/// A `Clv` request, checked and typed.
pub(super) fn clv_job(r: pb::ClvRequest) -> ServiceResult<ClvJob> {
    use pb::clv_request::Source;
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
    if r.calibration_end.trim().is_empty() {
        return Err(ServiceError::invalid(
            "calibration_end",
            "set the calibration end (YYYY-MM-DD): the models see the purchases up to it",
        ));
    }
    let mut params = ClvParams::new(date("calibration_end", &r.calibration_end)?);
    params.holdout_end = match r.holdout_end.trim() {
        "" => None,
        d => Some(date("holdout_end", d)?),
    };
    let v = value_options(&r.value.unwrap_or_default())?;
    params.unit = v.unit;
    params.horizon = v.horizon;
    params.discount_rate = v.discount_rate;
    params.churn = v.churn;
    // The models count purchase days, as the paper does: an order column
    // would be ignored, so it is refused (as the CLI refuses --order-col).
    params.columns = super::segmentations::columns(r.columns);
    if params.columns.order.is_some() {
        return Err(ServiceError::invalid(
            "columns.order",
            format!(
                "not used by Clv: {}; leave it empty",
                crate::value::COUNTS_PURCHASE_DAYS
            ),
        ));
    }
    params.bad_rows = bad_row_policy(r.bad_rows)?;
    params.max_bad_rows = max_bad_rows(r.max_bad_rows, params.max_bad_rows)?;
    Ok(ClvJob {
        source,
        text_format: text_format(r.text_format, "text_format")?,
        params,
    })
}

/// What outcomes are called in errors.
const OUTCOMES: &str = "outcomes";

/// `Uplift`: the header names a segmentation with campaign groups; the
/// outcome blocks that follow are recorded against its customers as they
/// arrive, and nothing of them is stored.
pub(super) async fn uplift(
    engine: &Engine,
    audit: Option<AuditIds>,
    mut stream: Streaming<pb::UpliftRequest>,
) -> Result<UpliftReport, Status> {
    use pb::uplift_request::Message;
    let idle = engine.config.limits.idle_timeout;
    let id = match next_message(&mut stream, idle).await? {
        Some(pb::UpliftRequest {
            message: Some(Message::Header(h)),
        }) if !h.segmentation_id.is_empty() => h.segmentation_id,
        Some(pb::UpliftRequest {
            message: Some(Message::Header(_)),
        }) => {
            return Err(ServiceError::invalid(
                "header.segmentation_id",
                "name the segmentation whose groups the campaign used",
            )
            .into())
        }
        Some(_) => {
            return Err(ServiceError::invalid(
                "header",
                "the first message must be a header (segmentation_id)",
            )
            .into())
        }
        None => return Err(ServiceError::invalid("header", "empty stream: no header").into()),
    };
    if let Some(a) = &audit {
        a.push(&id);
    }
    let assignments = tokio::task::block_in_place(|| -> ServiceResult<Assignments> {
        let (_, doc) = engine.store.segmentation(&id)?;
        if doc.experiment.is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "segmentation {id} has no campaign groups: run Segment with \
                 experiment.holdout_share set, and run the campaign on its groups"
            )));
        }
        let path = engine.store.segmentation_customers(&id)?;
        Assignments::read_as(&path, Path::new("customers.csv"))
            .map_err(|e| crate::Error::from(e).into())
    })?;
    let mut outcomes = Outcomes::new(&assignments, Path::new(OUTCOMES));
    let pace = UploadPace::new(idle);
    let (mut received, mut row, mut block) = (0u64, 0usize, 0usize);
    while let Some(msg) = next_message(&mut stream, idle).await? {
        pace.check(received)?;
        let Some(Message::Outcomes(b)) = msg.message else {
            return Err(ServiceError::invalid(
                OUTCOMES,
                "only outcome blocks may follow the header",
            )
            .into());
        };
        block += 1;
        received += b
            .customer_ids
            .iter()
            .map(|c| c.len() as u64 + 16)
            .sum::<u64>();
        engine.check_dataset_size(received)?;
        let n = b.customer_ids.len();
        if b.converted.len() != n || b.revenue.len() != n {
            return Err(ServiceError::invalid(
                OUTCOMES,
                format!(
                    "block {block}: {n} customer ids, {} converted and {} revenue values; \
                     each list needs one entry per customer",
                    b.converted.len(),
                    b.revenue.len()
                ),
            )
            .into());
        }
        for ((id, converted), revenue) in b.customer_ids.iter().zip(b.converted).zip(b.revenue) {
            row += 1;
            outcomes
                .record(row, id, converted, revenue)
                .map_err(|e| ServiceError::from(crate::Error::from(e)))?;
        }
    }
    Ok(outcomes
        .finish()
        .map_err(|e| ServiceError::from(crate::Error::from(e)))?)
}
