//! The lifetime-value job: a transaction log in, both models fitted, every
//! customer scored, optionally checked against a holdout period, and the
//! outputs written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::bgnbd::{BgNbd, BgNbdParams};
use super::clv::{score_until, ChurnThresholds, ClvOptions, Scores};
use super::fit::Fitted;
use super::gamma_gamma::{GammaGamma, GammaGammaFit};
use super::summary::{summarise, Summary, TimeUnit};
use super::ValueError;
use crate::data::TextFormat;
use crate::error::Result;
use crate::segmentation::job::read_checked_log;
use crate::segmentation::output::{parquet_bytes, write_atomic};
use crate::segmentation::transactions::{
    day_number, BadRowPolicy, BadRows, TransactionColumns, TransactionLog,
};
use crate::segmentation::{SegmentationError, DEFAULT_MAX_BAD_ROWS};

/// What the job reads and how it scores.
#[derive(Debug, Clone)]
pub struct ClvParams {
    pub columns: TransactionColumns,
    pub format: TextFormat,
    pub bad_rows: BadRowPolicy,
    pub max_bad_rows: f64,
    pub calibration_end: NaiveDate,
    pub holdout_end: Option<NaiveDate>,
    pub unit: TimeUnit,
    /// Periods ahead (default: one year in the time unit).
    pub horizon: Option<u32>,
    pub discount_rate: f64,
    pub churn: ChurnThresholds,
    /// Set to stop the job between its phases and while it scores.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The longest horizon: ten years. The models say little that far ahead,
/// and scoring takes a 2F1 per period per distinct customer history.
pub const MAX_HORIZON_DAYS: f64 = 3653.0;

/// Refuses a horizon past [`MAX_HORIZON_DAYS`], in the unit's periods.
fn check_horizon(unit: TimeUnit, horizon: Option<u32>) -> Result<(), ValueError> {
    let Some(h) = horizon else {
        return Ok(());
    };
    let max = (MAX_HORIZON_DAYS / unit.days()).floor() as u32;
    if h > max {
        return Err(ValueError::invalid(
            "horizon",
            format!(
                "the horizon is at most ten years ({max} {}s), got {h}",
                unit.name()
            ),
        ));
    }
    Ok(())
}

impl ClvParams {
    pub fn new(calibration_end: NaiveDate) -> Self {
        Self {
            columns: TransactionColumns::default(),
            format: TextFormat::default(),
            bad_rows: BadRowPolicy::Skip,
            max_bad_rows: DEFAULT_MAX_BAD_ROWS,
            calibration_end,
            holdout_end: None,
            unit: TimeUnit::default(),
            horizon: None,
            discount_rate: 0.0,
            churn: ChurnThresholds::default(),
            cancel: None,
        }
    }

    fn cancelled(&self) -> Result<(), ValueError> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(ValueError::Cancelled),
            _ => Ok(()),
        }
    }

    /// The horizon in periods: as given, else one year.
    pub fn horizon(&self) -> u32 {
        self.horizon
            .unwrap_or_else(|| (365.25 / self.unit.days()).round() as u32)
    }

    fn options(&self) -> ClvOptions {
        ClvOptions {
            horizon: self.horizon(),
            discount_rate: self.discount_rate,
            churn: self.churn,
        }
    }
}

/// The value options `segment --clv` takes: everything of [`ClvParams`]
/// but the log and the dates (the calibration end is the as-of date).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueOptions {
    pub unit: TimeUnit,
    pub horizon: Option<u32>,
    pub discount_rate: f64,
    pub churn: ChurnThresholds,
}

impl ValueOptions {
    /// Checks the options before any data is read.
    pub fn check(&self) -> Result<(), ValueError> {
        check_horizon(self.unit, self.horizon)?;
        ClvOptions {
            horizon: self.horizon.unwrap_or(1),
            discount_rate: self.discount_rate,
            churn: self.churn,
        }
        .check()
    }
}

impl Default for ValueOptions {
    fn default() -> Self {
        Self {
            unit: TimeUnit::default(),
            horizon: None,
            discount_rate: 0.0,
            churn: ChurnThresholds::default(),
        }
    }
}

/// The value job for a segmentation as of `as_of`: purchases up to it
/// (or up to the log's last day when `as_of` is later, as by default).
pub fn value_as_of(
    log: &TransactionLog,
    as_of: NaiveDate,
    options: &ValueOptions,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<ClvRun, ValueError> {
    let last = log.lines.iter().map(|l| l.day).max().unwrap_or(0);
    let end = day_number(as_of).min(last);
    let mut params = ClvParams::new(crate::segmentation::transactions::date_of(end));
    params.unit = options.unit;
    params.horizon = options.horizon;
    params.discount_rate = options.discount_rate;
    params.churn = options.churn;
    params.cancel = cancel;
    clv_of_log(log, &params)
}

/// Mean predicted and actual holdout purchases of the customers with one
/// number of calibration repeat purchases (the paper's Figure 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutBucket {
    /// `"0"` … `"6"`, `"7+"`.
    pub repeat_purchases: String,
    pub customers: usize,
    pub mean_predicted: f64,
    pub mean_actual: f64,
}

/// Predicted against actual purchases in the holdout period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutCheck {
    pub holdout_end: NaiveDate,
    /// The holdout's length in time units.
    pub length: f64,
    pub by_repeat_purchases: Vec<HoldoutBucket>,
    /// Mean absolute error per customer.
    pub mae: f64,
    pub total_predicted: f64,
    pub total_actual: u64,
}

/// The BG/NBD fit as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgNbdReport {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub log_likelihood: f64,
    pub std_errors: BgNbdParams,
    pub iterations: u64,
    pub gradient_norm: f64,
    pub converged: bool,
}

impl BgNbdReport {
    fn of(f: &Fitted<BgNbdParams>) -> Self {
        let se = &f.report.std_errors;
        Self {
            r: f.params.r,
            alpha: f.params.alpha,
            a: f.params.a,
            b: f.params.b,
            log_likelihood: f.report.log_likelihood,
            std_errors: BgNbdParams {
                r: se[0],
                alpha: se[1],
                a: se[2],
                b: se[3],
            },
            iterations: f.report.iterations,
            gradient_norm: f.report.gradient_norm,
            converged: f.report.converged,
        }
    }
}

/// The Gamma-Gamma fit as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaReport {
    pub p: f64,
    pub q: f64,
    pub v: f64,
    pub log_likelihood: f64,
    /// Named as the BG/NBD's are; an older record's `[p, q, v]` reads too.
    #[serde(deserialize_with = "std_errors_of")]
    pub std_errors: GammaGammaStdErrors,
    pub iterations: u64,
    /// NaN (written `null`) for the model's limit, which is not a point
    /// the optimiser reached.
    #[serde(deserialize_with = "nan_if_null")]
    pub gradient_norm: f64,
    pub converged: bool,
    /// Pearson correlation of frequency and mean spend.
    pub frequency_spend_correlation: f64,
    pub customers_fitted: usize,
    pub excluded_non_positive_spend: usize,
    /// `p` had no finite maximum: the fit is the model's limit
    /// ([`GammaGammaFit::p_at_limit`]).
    #[serde(default)]
    pub p_at_limit: bool,
}

/// Standard errors of the Gamma-Gamma parameters; NaN (written `null`)
/// where the data do not pin a parameter down (`p` at its limit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaStdErrors {
    #[serde(deserialize_with = "nan_if_null")]
    pub p: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub q: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub v: f64,
}

/// serde_json writes a NaN as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn std_errors_of<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<GammaGammaStdErrors, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Named(GammaGammaStdErrors),
        Listed([Option<f64>; 3]),
    }
    Ok(match Either::deserialize(d)? {
        Either::Named(e) => e,
        Either::Listed([p, q, v]) => GammaGammaStdErrors {
            p: p.unwrap_or(f64::NAN),
            q: q.unwrap_or(f64::NAN),
            v: v.unwrap_or(f64::NAN),
        },
    })
}

impl GammaGammaReport {
    fn of(g: &GammaGammaFit) -> Self {
        let (p, r) = (&g.fitted.params, &g.fitted.report);
        Self {
            p: p.p,
            q: p.q,
            v: p.v,
            log_likelihood: r.log_likelihood,
            std_errors: GammaGammaStdErrors {
                p: r.std_errors[0],
                q: r.std_errors[1],
                v: r.std_errors[2],
            },
            iterations: r.iterations,
            gradient_norm: r.gradient_norm,
            converged: r.converged,
            frequency_spend_correlation: g.correlation,
            customers_fitted: g.customers,
            excluded_non_positive_spend: g.excluded_non_positive,
            p_at_limit: g.p_at_limit,
        }
    }
}

/// Everything the job found, but the per-customer rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClvSummary {
    pub calibration_end: NaiveDate,
    pub time_unit: TimeUnit,
    pub horizon: u32,
    pub discount_rate: f64,
    pub churn_thresholds: ChurnThresholds,
    pub n_customers: usize,
    pub n_repeat_customers: usize,
    pub bgnbd: BgNbdReport,
    pub gamma_gamma: GammaGammaReport,
    /// Purchases a new customer makes in the horizon.
    pub expected_purchases_new_customer: f64,
    pub total_clv: f64,
    pub holdout: Option<HoldoutCheck>,
    pub rows_read: usize,
    pub bad_rows: BadRows,
    pub warnings: Vec<String>,
}

/// A finished job: the summary and the rows.
#[derive(Debug, Clone)]
pub struct ClvRun {
    pub summary: ClvSummary,
    pub customer_ids: Vec<String>,
    pub history: Summary,
    pub scores: Scores,
    pub bgnbd: BgNbd,
    pub gamma_gamma: GammaGamma,
}

/// Reads `transactions` and runs the job.
pub fn run_clv(transactions: &Path, params: &ClvParams) -> Result<ClvRun> {
    let log = read_checked_log(
        transactions,
        &params.columns,
        &params.format,
        params.bad_rows,
        params.max_bad_rows,
        Some(params.holdout_end.unwrap_or(params.calibration_end)),
    )?;
    let mut run = clv_of_log(&log, params)?;
    // Said here, not in `clv_of_log`: `segment --clv` says it once, for both.
    if let Some(w) = log.future.warning() {
        run.summary.warnings.insert(0, w);
    }
    Ok(run)
}

/// The job on a log already read.
pub fn clv_of_log(log: &TransactionLog, params: &ClvParams) -> Result<ClvRun, ValueError> {
    let options = params.options();
    check_horizon(params.unit, params.horizon)?;
    options.check()?;
    let history = summarise(
        log,
        day_number(params.calibration_end),
        params.holdout_end.map(day_number),
        params.unit,
    )?;
    params.cancelled()?;
    let bg_fit = BgNbd::fit(&history.rft, true)?;
    params.cancelled()?;
    let x: Vec<u32> = history.rft.iter().map(|r| r.x).collect();
    let gg_fit = GammaGamma::fit(&x, &history.mean_repeat_spend)?;
    params.cancelled()?;
    let bgnbd = BgNbd {
        params: bg_fit.params,
    };
    let gamma_gamma = GammaGamma {
        params: gg_fit.fitted.params,
    };
    let scores = score_until(
        &bgnbd,
        &gamma_gamma,
        &history.rft,
        &history.mean_repeat_spend,
        &options,
        params.cancel.as_deref(),
    )?;
    let mut warnings: Vec<String> = gg_fit.limit_warning().into_iter().collect();
    warnings.extend(gg_fit.correlation_warning());
    if gg_fit.excluded_non_positive > 0 {
        warnings.push(format!(
            "{} repeat customers with a mean spend of zero or less (refunds) were left out of the spend model; they get the population's expected spend",
            gg_fit.excluded_non_positive
        ));
    }
    let holdout = match (params.holdout_end, &history.holdout_purchases) {
        (Some(end), Some(actual)) => Some(holdout_check(
            &bgnbd,
            &history,
            actual,
            end,
            history.holdout_length.unwrap_or(0.0),
        )?),
        _ => None,
    };
    let summary = ClvSummary {
        calibration_end: params.calibration_end,
        time_unit: params.unit,
        horizon: options.horizon,
        discount_rate: options.discount_rate,
        churn_thresholds: options.churn,
        n_customers: history.len(),
        n_repeat_customers: history.repeat_customers(),
        bgnbd: BgNbdReport::of(&bg_fit),
        gamma_gamma: GammaGammaReport::of(&gg_fit),
        expected_purchases_new_customer: bgnbd.expected_new(options.horizon as f64)?,
        total_clv: scores.clv.iter().sum(),
        holdout,
        rows_read: log.rows_read,
        bad_rows: log.bad_rows.clone(),
        warnings,
    };
    Ok(ClvRun {
        customer_ids: history
            .customer
            .iter()
            .map(|&c| log.customer_ids[c as usize].clone())
            .collect(),
        summary,
        history,
        scores,
        bgnbd,
        gamma_gamma,
    })
}

fn holdout_check(
    bg: &BgNbd,
    history: &Summary,
    actual: &[u32],
    end: NaiveDate,
    length: f64,
) -> Result<HoldoutCheck, ValueError> {
    const TOP: usize = 7;
    let mut buckets = [(0usize, 0.0f64, 0u64); TOP + 1];
    let (mut abs_error, mut total_predicted, mut total_actual) = (0.0, 0.0, 0u64);
    for (r, &a) in history.rft.iter().zip(actual) {
        let predicted = bg.expected_purchases(r, length)?;
        let b = &mut buckets[(r.x as usize).min(TOP)];
        b.0 += 1;
        b.1 += predicted;
        b.2 += a as u64;
        abs_error += (predicted - a as f64).abs();
        total_predicted += predicted;
        total_actual += a as u64;
    }
    Ok(HoldoutCheck {
        holdout_end: end,
        length,
        by_repeat_purchases: buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.0 > 0)
            .map(|(i, &(n, p, a))| HoldoutBucket {
                repeat_purchases: if i == TOP {
                    format!("{TOP}+")
                } else {
                    i.to_string()
                },
                customers: n,
                mean_predicted: p / n as f64,
                mean_actual: a as f64 / n as f64,
            })
            .collect(),
        mae: abs_error / history.len() as f64,
        total_predicted,
        total_actual,
    })
}

/// The per-customer columns of the outputs.
pub const CLV_COLUMNS: [&str; 10] = [
    "customer_id",
    "x",
    "t_x",
    "T",
    "p_alive",
    "expected_purchases",
    "expected_spend",
    "clv",
    "value_tier",
    "churn_risk",
];

/// Where the outputs went.
#[derive(Debug, Clone, Serialize)]
pub struct ClvFiles {
    pub customers_csv: PathBuf,
    pub customers_parquet: PathBuf,
    pub clv_json: PathBuf,
    pub report_html: PathBuf,
    /// The report's PNG charts: `p_alive.png`, and `holdout.png` with a
    /// holdout.
    pub charts: Vec<PathBuf>,
}

impl ClvFiles {
    /// Every file's name, as a service lists them for download.
    pub fn names(&self) -> Vec<String> {
        crate::segmentation::output::file_names(
            [
                &self.report_html,
                &self.customers_csv,
                &self.customers_parquet,
                &self.clv_json,
            ]
            .into_iter()
            .chain(&self.charts),
        )
    }
}

/// Writes `customers.csv`, `customers.parquet`, `clv.json` (the summary)
/// and the report `clv.html` with its charts into `dir`, each atomically.
pub fn write_clv_outputs(run: &ClvRun, dir: &Path) -> Result<ClvFiles> {
    crate::segmentation::create_private_dir_all(dir)
        .map_err(|e| SegmentationError::output(dir, e))?;
    write_atomic(&dir.join("customers.csv"), &customers_csv(run)?)?;
    write_atomic(&dir.join("customers.parquet"), &customers_parquet(run)?)?;
    let summary = ClvSummary {
        bad_rows: run.summary.bad_rows.without_values(),
        ..run.summary.clone()
    };
    let doc = serde_json::to_vec_pretty(&summary).expect("serialisable");
    write_atomic(&dir.join("clv.json"), &doc)?;
    let (page, charts) = super::report::write_report(run, dir)?;
    write_atomic(&dir.join("clv.html"), page.as_bytes())?;
    Ok(ClvFiles {
        customers_csv: dir.join("customers.csv"),
        customers_parquet: dir.join("customers.parquet"),
        clv_json: dir.join("clv.json"),
        report_html: dir.join("clv.html"),
        charts: charts.iter().map(|c| dir.join(c.file)).collect(),
    })
}

fn customers_csv(run: &ClvRun) -> Result<Vec<u8>> {
    let fail = |e: csv::Error| SegmentationError::output(Path::new("customers.csv"), e);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CLV_COLUMNS).map_err(fail)?;
    let s = &run.scores;
    for (i, id) in run.customer_ids.iter().enumerate() {
        let h = run.history.rft[i];
        w.write_record([
            id.clone(),
            h.x.to_string(),
            h.t_x.to_string(),
            h.t.to_string(),
            s.p_alive[i].to_string(),
            s.expected_purchases[i].to_string(),
            s.expected_spend[i].to_string(),
            s.clv[i].to_string(),
            s.value_tier[i].name().to_string(),
            s.churn_risk[i].name().to_string(),
        ])
        .map_err(fail)?;
    }
    w.into_inner()
        .map_err(|e| SegmentationError::output(Path::new("customers.csv"), e).into())
}

fn customers_parquet(run: &ClvRun) -> Result<Vec<u8>> {
    let s = &run.scores;
    let h = &run.history.rft;
    let f64s = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(run.customer_ids.clone())),
        Arc::new(UInt32Array::from(h.iter().map(|r| r.x).collect::<Vec<_>>())),
        f64s(h.iter().map(|r| r.t_x).collect()),
        f64s(h.iter().map(|r| r.t).collect()),
        f64s(s.p_alive.clone()),
        f64s(s.expected_purchases.clone()),
        f64s(s.expected_spend.clone()),
        f64s(s.clv.clone()),
        Arc::new(StringArray::from(
            s.value_tier.iter().map(|t| t.name()).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            s.churn_risk.iter().map(|c| c.name()).collect::<Vec<_>>(),
        )),
    ];
    parquet_bytes(&CLV_COLUMNS, columns, "customers.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before the standard errors were named, and one
    /// with an undefined error (`null`), both read back.
    #[test]
    fn gamma_gamma_reports_read_old_and_null_errors() {
        let old = r#"{"p": 2.0, "q": 3.0, "v": 4.0, "log_likelihood": -10.0,
            "std_errors": [0.1, null, 0.3], "iterations": 5, "gradient_norm": null,
            "converged": true, "frequency_spend_correlation": 0.1,
            "customers_fitted": 9, "excluded_non_positive_spend": 0}"#;
        let r: GammaGammaReport = serde_json::from_str(old).unwrap();
        assert_eq!((r.std_errors.p, r.std_errors.v), (0.1, 0.3));
        assert!(r.std_errors.q.is_nan() && r.gradient_norm.is_nan());
        assert!(!r.p_at_limit);
        let again: GammaGammaReport =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again.std_errors.p, 0.1);
        assert!(again.std_errors.q.is_nan());
    }
}
