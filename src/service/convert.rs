//! Domain ↔ proto conversions, in one place.

use super::engine::Engine;
use super::error::ServiceError;
use super::jobs::{JobKind, JobOutput, JobProgress, JobSnapshot, JobState};
use super::proto as pb;
use super::storage::{DatasetMeta, ModelBody, ModelRecord, SegmentationMeta, TransactionsMeta};
use crate::backend::BackendChoice;
use crate::data::{Delimiter, TableFormat, TextFormat};
use crate::experiment::{Interval, Uplift, UpliftReport};
use crate::kmeans::Evaluation;
use crate::segmentation::features::FrequencyBasis;
use crate::segmentation::transactions::check_date_format;
use crate::segmentation::SegmentsDocument;
use crate::value::{ClvSummary, TimeUnit};
use std::collections::HashMap;

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn backend_choice(value: i32) -> Result<Option<BackendChoice>, super::error::ServiceError> {
    match pb::Backend::try_from(value) {
        Ok(pb::Backend::Unspecified) => Ok(None),
        Ok(pb::Backend::Auto) => Ok(Some(BackendChoice::Auto)),
        Ok(pb::Backend::Gpu) => Ok(Some(BackendChoice::Gpu)),
        Ok(pb::Backend::Cpu) => Ok(Some(BackendChoice::Cpu)),
        Err(_) => Err(super::error::ServiceError::invalid(
            "backend",
            format!("unknown backend {value}"),
        )),
    }
}

/// A request's text format, checked; `None` when the request has none or
/// leaves every field empty (then a stored format applies).
pub fn text_format(
    f: Option<pb::TextFormat>,
    field: &'static str,
) -> Result<Option<TextFormat>, ServiceError> {
    let Some(f) = f else { return Ok(None) };
    if f == pb::TextFormat::default() {
        return Ok(None);
    }
    let delimiter =
        match f.delimiter.as_str() {
            "" => None,
            d => Some(d.parse::<Delimiter>().map_err(|e| {
                ServiceError::invalid(field, e.chars().take(120).collect::<String>())
            })?),
        };
    let date_format = match f.date_format.as_str() {
        "" => None,
        d if d.len() > 64 => {
            return Err(ServiceError::invalid(
                field,
                "date_format: at most 64 bytes",
            ))
        }
        d => {
            check_date_format(d).map_err(|e| ServiceError::invalid(field, e))?;
            Some(d.to_owned())
        }
    };
    Ok(Some(TextFormat {
        delimiter,
        decimal_comma: f.decimal_comma,
        date_format,
    }))
}

impl From<&DatasetMeta> for pb::Dataset {
    fn from(m: &DatasetMeta) -> Self {
        Self {
            id: m.id.clone(),
            name: m.name.clone(),
            n_rows: m.n_rows,
            n_cols: m.columns.len() as u32,
            columns: m.columns.clone(),
            size_bytes: m.size_bytes,
            created_at: Some(timestamp(m.created_at_ms)),
        }
    }
}

fn flat(a: &ndarray::Array2<f32>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

impl From<&ModelRecord> for pb::Model {
    fn from(r: &ModelRecord) -> Self {
        let model = match &r.body {
            ModelBody::KMeans(m) => pb::model::Model::Kmeans(pb::KMeansModel {
                id: r.id.clone(),
                dataset_id: r.dataset_id.clone(),
                k: m.k() as u32,
                columns: r.columns.clone(),
                centroids: flat(m.centroids()),
                inertia: m.inertia(),
                n_iter: m.n_iter() as u32,
                inertia_history: m.inertia_history().to_vec(),
                cluster_sizes: m.cluster_sizes().iter().map(|&s| s as u64).collect(),
                backend: m.backend().backend.to_string(),
                adapter: m.backend().adapter.clone(),
                standardized: m.scaler().standardize,
                created_at: Some(timestamp(r.created_at_ms)),
                converged: m.converged(),
                segment_ids: r.segments.as_ref().map_or_else(Vec::new, |s| s.ids.clone()),
                segment_descriptions: r
                    .segments
                    .as_ref()
                    .map_or_else(Vec::new, |s| s.descriptions.clone()),
            }),
            ModelBody::Pca(m) => pb::model::Model::Pca(pb::PcaModel {
                id: r.id.clone(),
                dataset_id: r.dataset_id.clone(),
                n_components: m.n_components() as u32,
                columns: r.columns.clone(),
                components: flat(m.components()),
                explained_variance: m.explained_variance().to_vec(),
                explained_variance_ratio: m.explained_variance_ratio().to_vec(),
                singular_values: m.singular_values().to_vec(),
                mean: m.mean().to_vec(),
                whiten: m.whiten(),
                backend: m.backend().backend.to_string(),
                adapter: m.backend().adapter.clone(),
                created_at: Some(timestamp(r.created_at_ms)),
            }),
        };
        Self { model: Some(model) }
    }
}

impl From<&JobProgress> for pb::JobProgress {
    fn from(p: &JobProgress) -> Self {
        Self {
            phase: p.phase.clone(),
            run: p.run,
            iteration: p.iteration,
            inertia: p.inertia,
            fraction: p.fraction,
            elapsed_seconds: p.elapsed_seconds,
        }
    }
}

/// The job as clients see it; a finished job's result is read from the
/// store (a record holds only its id), and is absent once deleted.
pub fn job(s: &JobSnapshot, engine: &Engine) -> pb::Job {
    let kind = match s.kind {
        JobKind::Import => pb::JobKind::Import,
        JobKind::FitKMeans => pb::JobKind::FitKmeans,
        JobKind::FitPca => pb::JobKind::FitPca,
        JobKind::Segment => pb::JobKind::Segment,
        JobKind::Clv => pb::JobKind::Clv,
    };
    let state = match s.state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    };
    let result = s.output.as_ref().and_then(|o| match o {
        JobOutput::Dataset(id) => engine
            .dataset(id)
            .ok()
            .map(|d| pb::job::Result::Dataset((&d).into())),
        JobOutput::Model(id) => engine.model(id).ok().and_then(|m| {
            pb::Model::from(m.as_ref()).model.map(|m| match m {
                pb::model::Model::Kmeans(k) => pb::job::Result::Kmeans(k),
                pb::model::Model::Pca(p) => pb::job::Result::Pca(p),
            })
        }),
        JobOutput::Segmentation(id) => engine
            .store
            .segmentation(id)
            .ok()
            .map(|(meta, doc)| pb::job::Result::Segmentation(segmentation(&meta, &doc))),
        JobOutput::Clv(id) => engine
            .store
            .clv_run(id)
            .ok()
            .map(|(meta, summary)| pb::job::Result::Clv(clv_run(&meta, &summary))),
    });
    pb::Job {
        id: s.id.clone(),
        kind: kind as i32,
        state: state as i32,
        progress: Some((&s.progress).into()),
        result,
        error: s.error.clone().unwrap_or_default(),
        error_code: s.error_code.unwrap_or(0),
        created_at: Some(timestamp(s.created_at_ms)),
        finished_at: s.finished_at_ms.map(timestamp),
    }
}

impl From<&Evaluation> for pb::EvaluateResponse {
    fn from(e: &Evaluation) -> Self {
        Self {
            inertia: e.inertia,
            silhouette: e.silhouette,
            silhouette_sample_size: e.silhouette_sample_size as u32,
            davies_bouldin: e.davies_bouldin,
            calinski_harabasz: e.calinski_harabasz,
        }
    }
}

pub fn file_format(f: TableFormat) -> pb::FileFormat {
    match f {
        TableFormat::Csv => pb::FileFormat::Csv,
        TableFormat::Parquet => pb::FileFormat::Parquet,
    }
}

impl From<&TransactionsMeta> for pb::TransactionLog {
    fn from(m: &TransactionsMeta) -> Self {
        Self {
            id: m.id.clone(),
            name: m.name.clone(),
            format: file_format(m.format) as i32,
            size_bytes: m.size_bytes,
            created_at: Some(timestamp(m.created_at_ms)),
        }
    }
}

/// A stored segmentation as the API shows it.
pub fn segmentation(meta: &SegmentationMeta, doc: &SegmentsDocument) -> pb::Segmentation {
    let segments = doc
        .segments
        .iter()
        .map(|p| pb::SegmentProfile {
            id: p.id as u32,
            size: p.size as u64,
            share: p.share,
            description: p.description.clone(),
            features: p
                .features
                .iter()
                .map(|f| pb::FeatureProfile {
                    feature: f.feature.clone(),
                    mean: f.mean,
                    median: f.median,
                    lift: f.lift,
                })
                .collect(),
            top_rfm_segments: p
                .top_rfm_segments
                .iter()
                .map(|(s, c)| pb::RfmCount {
                    rfm_segment: s.name().to_owned(),
                    customers: *c as u64,
                })
                .collect(),
            outlier_threshold: p.outlier_threshold,
            outliers: p.outliers as u64,
            mean_margin: p.mean_margin,
            value: p.value.as_ref().map(|v| pb::SegmentValue {
                mean_clv: v.mean_clv,
                total_clv: v.total_clv,
                value_share: v.value_share,
                mean_p_alive: v.mean_p_alive,
                high_churn_risk: v.high_churn_risk as u64,
            }),
            control: doc.experiment.as_ref().map_or(0, |e| {
                e.control_by_segment
                    .iter()
                    .find(|(id, _, _)| *id as usize == p.id)
                    .map_or(0, |(_, c, _)| *c as u64)
            }),
        })
        .collect();
    let k_sweep = doc.k_sweep.as_ref().map(|s| pb::KSweep {
        scores: s
            .scores
            .iter()
            .map(|k| pb::KScore {
                k: k.k as u32,
                inertia: k.inertia,
                silhouette: k.silhouette,
                davies_bouldin: k.davies_bouldin,
                calinski_harabasz: k.calinski_harabasz,
                min_share: k.min_share,
                stability: k.stability,
                eligible: k.eligible,
            })
            .collect(),
        recommended_k: s.recommended_k as u32,
        rule: s.rule.clone(),
        reason: s.reason.clone(),
    });
    let u64s = |v: &[usize]| v.iter().map(|&c| c as u64).collect::<Vec<_>>();
    let refresh = doc.refresh.as_ref().map(|r| pb::Refresh {
        previous_as_of: r.previous_as_of.to_string(),
        rows: r
            .transitions
            .counts
            .iter()
            .map(|row| pb::TransitionRow { counts: u64s(row) })
            .collect(),
        arrived: u64s(&r.transitions.arrived),
        left: u64s(&r.transitions.left),
        size_drift: r
            .size_drift
            .iter()
            .map(|d| pb::SizeDrift {
                segment: d.segment as u32,
                previous_size: d.previous_size as u64,
                size: d.size as u64,
                previous_share: d.previous_share,
                share: d.share,
            })
            .collect(),
        stayed_fraction: r.transitions.stayed_fraction(),
        previous_segment_ids: r.transitions.previous_ids.clone(),
        segment_ids: r.transitions.ids.clone(),
        summary: crate::segmentation::refresh::kept_sentence(r),
    });
    let i = &doc.input;
    let input = pb::InputSummary {
        rows_read: i.rows_read as u64,
        bad_rows: i.bad_rows.total as u64,
        bad_rows_by_problem: by_problem(&i.bad_rows),
        lines_after_as_of: i.notes.lines_after_as_of as u64,
        refund_lines: i.notes.refund_lines as u64,
        customers_without_purchase: i.notes.customers_without_purchase as u64,
        lines_after_today: i.notes.future.lines as u64,
        latest_future_date: i
            .notes
            .future
            .latest
            .map_or(String::new(), |d| d.to_string()),
        frequency_basis: match i.frequency_basis {
            FrequencyBasis::Orders => "orders",
            FrequencyBasis::PurchaseDays => "purchase_days",
        }
        .to_owned(),
        delimiter: i.delimiter.map_or(String::new(), |d| d.shown().to_owned()),
        date_format: i.date_format.clone(),
    };
    pb::Segmentation {
        id: meta.id.clone(),
        as_of: doc.as_of.to_string(),
        k: doc.k as u32,
        n_customers: doc.n_customers as u64,
        features: doc.preprocessing.features.clone(),
        log1p: doc.preprocessing.log1p.clone(),
        segments,
        k_sweep,
        refresh,
        input: Some(input),
        artifacts: meta.artifacts.clone(),
        backend: doc.backend.backend.to_string(),
        adapter: doc.backend.adapter.clone(),
        created_at: Some(timestamp(meta.created_at_ms)),
        features_left_out: doc
            .feature_choice
            .left_out
            .iter()
            .map(|(f, _)| f.clone())
            .collect(),
        value_unavailable: doc.value_unavailable.clone().unwrap_or_default(),
    }
}

/// Unreadable rows by problem, keyed by the problem's name.
fn by_problem(b: &crate::segmentation::transactions::BadRows) -> HashMap<String, u64> {
    b.by_problem
        .iter()
        .map(|(p, &c)| {
            let key = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            (key, c as u64)
        })
        .collect()
}

pub fn time_unit(unit: TimeUnit) -> pb::TimeUnit {
    match unit {
        TimeUnit::Day => pb::TimeUnit::Day,
        TimeUnit::Week => pb::TimeUnit::Week,
        TimeUnit::Month => pb::TimeUnit::Month,
    }
}

fn fit_diagnostics(
    log_likelihood: f64,
    iterations: u64,
    gradient_norm: f64,
    converged: bool,
) -> pb::FitDiagnostics {
    pb::FitDiagnostics {
        log_likelihood,
        iterations,
        gradient_norm,
        converged,
    }
}

/// A stored CLV run as the API shows it.
pub fn clv_run(meta: &SegmentationMeta, s: &ClvSummary) -> pb::ClvRun {
    let (b, g) = (&s.bgnbd, &s.gamma_gamma);
    pb::ClvRun {
        id: meta.id.clone(),
        calibration_end: s.calibration_end.to_string(),
        time_unit: time_unit(s.time_unit) as i32,
        horizon: s.horizon,
        discount_rate: s.discount_rate,
        churn_high: s.churn_thresholds.high,
        churn_medium: s.churn_thresholds.medium,
        n_customers: s.n_customers as u64,
        n_repeat_customers: s.n_repeat_customers as u64,
        bgnbd: Some(pb::BgNbdFit {
            r: b.r,
            alpha: b.alpha,
            a: b.a,
            b: b.b,
            r_std_error: b.std_errors.r,
            alpha_std_error: b.std_errors.alpha,
            a_std_error: b.std_errors.a,
            b_std_error: b.std_errors.b,
            fit: Some(fit_diagnostics(
                b.log_likelihood,
                b.iterations,
                b.gradient_norm,
                b.converged,
            )),
        }),
        gamma_gamma: Some(pb::GammaGammaFit {
            p: g.p,
            q: g.q,
            v: g.v,
            p_std_error: g.std_errors.p,
            q_std_error: g.std_errors.q,
            v_std_error: g.std_errors.v,
            fit: Some(fit_diagnostics(
                g.log_likelihood,
                g.iterations,
                g.gradient_norm,
                g.converged,
            )),
            frequency_spend_correlation: g.frequency_spend_correlation,
            customers_fitted: g.customers_fitted as u64,
            excluded_non_positive_spend: g.excluded_non_positive_spend as u64,
            p_at_limit: g.p_at_limit,
        }),
        expected_purchases_new_customer: s.expected_purchases_new_customer,
        total_clv: s.total_clv,
        holdout: s.holdout.as_ref().map(|h| pb::HoldoutCheck {
            holdout_end: h.holdout_end.to_string(),
            length: h.length,
            by_repeat_purchases: h
                .by_repeat_purchases
                .iter()
                .map(|b| pb::HoldoutBucket {
                    repeat_purchases: b.repeat_purchases.clone(),
                    customers: b.customers as u64,
                    mean_predicted: b.mean_predicted,
                    mean_actual: b.mean_actual,
                })
                .collect(),
            mae: h.mae,
            total_predicted: h.total_predicted,
            total_actual: h.total_actual,
        }),
        rows_read: s.rows_read as u64,
        bad_rows: s.bad_rows.total as u64,
        bad_rows_by_problem: by_problem(&s.bad_rows),
        warnings: s.warnings.clone(),
        artifacts: meta.artifacts.clone(),
        created_at: Some(timestamp(meta.created_at_ms)),
    }
}

fn interval(i: &Interval) -> pb::Interval {
    pb::Interval {
        estimate: i.estimate,
        low: i.low,
        high: i.high,
    }
}

fn arm(a: &crate::experiment::uplift::Arm) -> pb::Arm {
    pb::Arm {
        customers: a.customers as u64,
        conversions: a.conversions as u64,
        conversion_rate: a.conversion_rate,
        revenue_per_customer: a.revenue_per_customer,
        revenue_sd: a.revenue_sd,
    }
}

fn uplift(u: &Uplift) -> pb::Uplift {
    pb::Uplift {
        stratum: u.stratum.clone(),
        treatment: Some(arm(&u.treatment)),
        control: Some(arm(&u.control)),
        conversion: Some(interval(&u.conversion)),
        conversion_relative: u.conversion_relative.as_ref().map(interval),
        conversion_p_value: u.conversion_p_value,
        revenue: Some(interval(&u.revenue)),
        revenue_relative: u.revenue_relative.as_ref().map(interval),
        revenue_p_value: u.revenue_p_value,
        warning: u.warning.clone().unwrap_or_default(),
    }
}

impl From<&UpliftReport> for pb::UpliftReport {
    fn from(r: &UpliftReport) -> Self {
        Self {
            overall: Some(uplift(&r.overall)),
            segments: r.segments.iter().map(uplift).collect(),
            customers: r.customers as u64,
            without_outcome: r.without_outcome as u64,
            unknown_outcomes: r.unknown_outcomes as u64,
            warnings: r.warnings.clone(),
        }
    }
}

fn interval_of(i: Option<&pb::Interval>) -> Interval {
    i.map_or(
        Interval {
            estimate: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        },
        |i| Interval {
            estimate: i.estimate,
            low: i.low,
            high: i.high,
        },
    )
}

fn arm_of(a: Option<&pb::Arm>) -> crate::experiment::uplift::Arm {
    let a = a.cloned().unwrap_or_default();
    crate::experiment::uplift::Arm {
        customers: a.customers as usize,
        conversions: a.conversions as usize,
        conversion_rate: a.conversion_rate,
        revenue_per_customer: a.revenue_per_customer,
        revenue_sd: a.revenue_sd,
    }
}

fn uplift_of(u: &pb::Uplift) -> Uplift {
    Uplift {
        stratum: u.stratum.clone(),
        treatment: arm_of(u.treatment.as_ref()),
        control: arm_of(u.control.as_ref()),
        conversion: interval_of(u.conversion.as_ref()),
        conversion_relative: u.conversion_relative.as_ref().map(|i| interval_of(Some(i))),
        conversion_p_value: u.conversion_p_value,
        revenue: interval_of(u.revenue.as_ref()),
        revenue_relative: u.revenue_relative.as_ref().map(|i| interval_of(Some(i))),
        revenue_p_value: u.revenue_p_value,
        warning: (!u.warning.is_empty()).then(|| u.warning.clone()),
    }
}

/// A server's answer back in the library's terms, so a client prints and
/// writes it as `segmenta uplift` does.
impl From<&pb::UpliftReport> for UpliftReport {
    fn from(r: &pb::UpliftReport) -> Self {
        Self {
            overall: uplift_of(&r.overall.clone().unwrap_or_default()),
            segments: r.segments.iter().map(uplift_of).collect(),
            customers: r.customers as usize,
            without_outcome: r.without_outcome as usize,
            unknown_outcomes: r.unknown_outcomes as usize,
            warnings: r.warnings.clone(),
        }
    }
}
