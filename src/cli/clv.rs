//! `segmenta clv`: lifetime value, churn risk and value tiers from a
//! transaction log.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::output::{fmt_f, table};
use segmenta::segmentation::transactions::BadRowPolicy;
use segmenta::segmentation::{SegmentationError, DEFAULT_MAX_BAD_ROWS};
use segmenta::value::clv::ChurnThresholds;
use segmenta::value::{run_clv, write_clv_outputs, ClvParams, TimeUnit, ValueOptions};

/// The value models' options, shared by `clv` and `segment --clv`.
#[derive(Debug, Args)]
pub struct ValueArgs {
    /// The unit of t_x, T, the horizon and the discount rate.
    #[arg(long, value_enum, default_value_t = TimeUnit::Week)]
    pub time_unit: TimeUnit,
    /// Periods (time units) ahead for expected purchases and CLV (default:
    /// one year).
    #[arg(long, value_name = "N")]
    pub horizon: Option<u32>,
    /// Discount rate per period (time unit), e.g. 0.01 a month.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 0.0,
        value_name = "R"
    )]
    pub discount_rate: f64,
    /// P(alive) thresholds HIGH,MEDIUM: below HIGH is high churn risk,
    /// below MEDIUM medium, else low.
    #[arg(long, default_value = "0.5,0.8", value_parser = parse_thresholds, value_name = "HIGH,MEDIUM")]
    pub churn_thresholds: ChurnThresholds,
}

impl ValueArgs {
    pub fn options(&self) -> ValueOptions {
        ValueOptions {
            unit: self.time_unit,
            horizon: self.horizon,
            discount_rate: self.discount_rate,
            churn: self.churn_thresholds,
        }
    }
}

#[derive(Debug, Args)]
pub struct ClvArgs {
    /// Transaction log, CSV (with a header) or Parquet.
    #[arg(long)]
    pub transactions: PathBuf,
    /// The models are fitted on purchases up to this date (YYYY-MM-DD,
    /// inclusive); it must lie within the log.
    #[arg(long, value_name = "DATE")]
    pub calibration_end: String,
    /// Check the predictions against the purchases after the calibration
    /// end up to this date (inclusive).
    #[arg(long, value_name = "DATE")]
    pub holdout_end: Option<String>,
    #[command(flatten)]
    pub value: ValueArgs,
    /// Where customers.csv, customers.parquet, clv.json and the report
    /// clv.html (with its charts) go (default: nothing is written).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// skip: count unreadable rows and report them; reject: stop at the first.
    #[arg(long, value_enum, default_value_t = BadRowPolicy::Skip)]
    pub bad_rows: BadRowPolicy,
    /// With --bad-rows skip: the largest fraction of unreadable rows (0–1)
    /// before the job fails with a summary of what could not be read.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_MAX_BAD_ROWS, value_name = "FRACTION")]
    pub max_bad_rows: f64,
    #[command(flatten)]
    pub log: super::LogArgs,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_thresholds(text: &str) -> Result<ChurnThresholds, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [high, medium] = parts[..] else {
        return Err(format!("expected HIGH,MEDIUM (two numbers), got {text:?}"));
    };
    let number = |v: &str| {
        v.parse::<f64>()
            .map_err(|_| format!("{v:?} is not a number"))
    };
    Ok(ChurnThresholds {
        high: number(high)?,
        medium: number(medium)?,
    })
}

fn date(text: &str) -> Result<chrono::NaiveDate, SegmentationError> {
    super::parse_as_of(Some(text)).map(|d| d.expect("given"))
}

pub fn run(args: ClvArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    args.log.refuse_order_col()?;
    let mut params = ClvParams::new(date(&args.calibration_end)?);
    params.holdout_end = args.holdout_end.as_deref().map(date).transpose()?;
    params.columns = args.log.columns();
    params.format = args.log.format();
    params.bad_rows = args.bad_rows;
    params.max_bad_rows = args.max_bad_rows;
    let v = args.value.options();
    params.unit = v.unit;
    params.horizon = v.horizon;
    params.discount_rate = v.discount_rate;
    params.churn = v.churn;
    let run = run_clv(&args.transactions, &params)?;
    let files = args
        .out
        .as_deref()
        .map(|dir| write_clv_outputs(&run, dir))
        .transpose()?;
    let s = &run.summary;
    if args.json {
        // On stderr with --json too: a pipeline reading stdout still logs them.
        print_warnings(s);
        let mut out = serde_json::to_value(s).expect("serialisable");
        out["files"] = json!(files);
        out["elapsed_seconds"] = json!(started.elapsed().as_secs_f64());
        println!("{out}");
        return Ok(());
    }
    print_summary(s)?;
    if let Some(f) = &files {
        println!(
            "wrote {}, {}, {} and the report {}",
            f.customers_csv.display(),
            f.customers_parquet.display(),
            f.clv_json.display(),
            f.report_html.display()
        );
    }
    Ok(())
}

/// The run's warnings and skipped rows, on stderr.
pub fn print_warnings(s: &segmenta::value::ClvSummary) {
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    if s.bad_rows.total > 0 {
        eprintln!(
            "warning: {} of {} rows skipped as unreadable: {}",
            s.bad_rows.total,
            s.rows_read,
            s.bad_rows.summary(true)
        );
    }
}

/// The summary as tables: the fits, the totals and the holdout check
/// (the warnings first, on stderr).
pub fn print_summary(s: &segmenta::value::ClvSummary) -> std::io::Result<()> {
    print_warnings(s);
    let unit = s.time_unit.name();
    say!(
        "{} customers at {} ({} with a repeat purchase), times in {unit}s",
        s.n_customers,
        s.calibration_end,
        s.n_repeat_customers
    );
    let b = &s.bgnbd;
    let g = &s.gamma_gamma;
    let header = ["model", "parameter", "estimate", "std. error"].map(String::from);
    let mut rows = Vec::new();
    for (name, v, se) in [
        ("r", b.r, b.std_errors.r),
        ("alpha", b.alpha, b.std_errors.alpha),
        ("a", b.a, b.std_errors.a),
        ("b", b.b, b.std_errors.b),
    ] {
        rows.push(vec!["BG/NBD".into(), name.into(), fmt_f(v), fmt_f(se)]);
    }
    for (name, v, se) in [
        ("p", g.p, g.std_errors.p),
        ("q", g.q, g.std_errors.q),
        ("v", g.v, g.std_errors.v),
    ] {
        rows.push(vec!["Gamma-Gamma".into(), name.into(), fmt_f(v), fmt_f(se)]);
    }
    say!("{}", table(&header, &rows).trim_end_matches('\n'));
    say!(
        "BG/NBD: log-likelihood {:.2} after {} iterations (gradient norm {:.1e}); Gamma-Gamma: {:.2} after {} (gradient norm {:.1e})",
        b.log_likelihood, b.iterations, b.gradient_norm, g.log_likelihood, g.iterations, g.gradient_norm
    );
    say!(
        "over the next {} {unit}s: total CLV {}, a new customer buys {:.3} times",
        s.horizon,
        fmt_f(s.total_clv),
        s.expected_purchases_new_customer
    );
    if let Some(h) = &s.holdout {
        say!(
            "holdout to {} ({:.1} {unit}s): {:.1} purchases predicted, {} made; mean absolute error {:.3} per customer",
            h.holdout_end, h.length, h.total_predicted, h.total_actual, h.mae
        );
        let header = [
            "repeat purchases",
            "customers",
            "predicted (mean)",
            "actual (mean)",
        ]
        .map(String::from);
        let rows: Vec<Vec<String>> = h
            .by_repeat_purchases
            .iter()
            .map(|b| {
                vec![
                    b.repeat_purchases.clone(),
                    b.customers.to_string(),
                    format!("{:.3}", b.mean_predicted),
                    format!("{:.3}", b.mean_actual),
                ]
            })
            .collect();
        say!("{}", table(&header, &rows).trim_end_matches('\n'));
    }
    Ok(())
}
