//! `segmenta segment` and `segmenta demo`: the customer segmentation job.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::column_name;
use super::output::{fmt_f, progress_bar, table};
use segmenta::backend::{select, with_cpu_fallback, BackendChoice};
use segmenta::kmeans::adjusted_rand_index;
use segmenta::segmentation::demo::{write_demo_log, PlantedGroup};
use segmenta::segmentation::sweep::parse_k_range;
use segmenta::segmentation::transactions::{BadRowPolicy, TransactionColumns};
use segmenta::segmentation::{
    run_segmentation, write_outputs, ExperimentOptions, KChoice, OutputFiles, SegmentControl,
    SegmentModel, SegmentParams, SegmentRun, SegmentationError, DEFAULT_MAX_BAD_ROWS,
    DEFAULT_MIN_SHARE,
};

/// Options shared by `segment` and `demo`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Number of segments (default: chosen from --k-range).
    #[arg(long, conflicts_with = "k_range")]
    pub k: Option<usize>,
    /// Try every k in MIN..MAX (inclusive) and keep the recommended one
    /// (default 3..8; a refresh keeps the previous model's k).
    #[arg(long, value_name = "MIN..MAX")]
    pub k_range: Option<String>,
    /// A recommended k has no segment smaller than this share of customers.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_MIN_SHARE, value_name = "FRACTION")]
    pub min_share: f64,
    /// Features to cluster on, comma-separated, from recency_days,
    /// frequency, monetary, avg_order_value, tenure_days (default: every
    /// one with spread across the customers; all five are profiled).
    #[arg(long, value_delimiter = ',', value_name = "NAMES", value_parser = column_name)]
    pub features: Vec<String>,
    /// Members beyond this percentile of their segment's distances are outliers.
    #[arg(long, allow_negative_numbers = true, default_value_t = 99.0)]
    pub outlier_percentile: f64,
    /// k-means runs per k; the lowest inertia wins.
    #[arg(long, default_value_t = 3)]
    pub n_init: usize,
    /// Seed of every random choice: same seed, same data, same segments.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto: a hardware GPU if present, else the CPU. gpu: any GPU adapter
    /// (software drivers included). cpu: native CPU kernels.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
    /// Also predict each customer's lifetime value and churn risk
    /// (BG/NBD and Gamma-Gamma as of the as-of date): columns in the
    /// customer table, value per segment in the profiles and the report.
    #[arg(long)]
    pub clv: bool,
    #[command(flatten)]
    pub value: super::clv::ValueArgs,
    /// Put this share of each segment's customers (0–1, exclusive) in a
    /// campaign's control group, the rest in treatment: column `group`.
    #[arg(long, allow_negative_numbers = true, value_name = "SHARE")]
    pub holdout_share: Option<f64>,
    /// The campaign's salt: the same salt and customers give the same
    /// groups; use a new one for each campaign.
    #[arg(
        long,
        default_value = "segmenta",
        requires = "holdout_share",
        value_name = "S"
    )]
    pub experiment_salt: String,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Transaction log, CSV (with a header) or Parquet.
    #[arg(long)]
    pub transactions: PathBuf,
    /// Where the customer table, segments.json, model.json and report.html go.
    #[arg(long)]
    pub out: PathBuf,
    /// Recency and tenure are measured to this date (YYYY-MM-DD; default:
    /// the day after the latest transaction). Later lines are ignored.
    #[arg(long, value_name = "DATE")]
    pub as_of: Option<String>,
    /// model.json of an earlier run: refit warm-started from it, keep its
    /// segment ids and report who moved.
    #[arg(long, value_name = "MODEL")]
    pub previous: Option<PathBuf>,
    /// skip: count unreadable rows and report them; reject: stop at the first.
    #[arg(long, value_enum, default_value_t = BadRowPolicy::Skip)]
    pub bad_rows: BadRowPolicy,
    /// With --bad-rows skip: the largest fraction of unreadable rows (0–1)
    /// before the job fails with a summary of what could not be read.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_MAX_BAD_ROWS, value_name = "FRACTION")]
    pub max_bad_rows: f64,
    #[command(flatten)]
    pub log: super::LogArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Customers in the generated log.
    #[arg(long, default_value_t = 100_000)]
    pub customers: usize,
    /// Seed of the generated log.
    #[arg(long, default_value_t = 42)]
    pub data_seed: u64,
    /// Output directory (the log goes there too).
    #[arg(long, default_value = "segmenta-demo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub job: JobArgs,
}

fn k_choice(job: &JobArgs) -> anyhow::Result<Option<KChoice>> {
    Ok(match (job.k, &job.k_range) {
        (Some(k), _) => Some(KChoice::Fixed(k)),
        (None, Some(r)) => Some(KChoice::Range(
            parse_k_range(r).ok_or_else(|| SegmentationError::BadKRange(r.clone()))?,
        )),
        (None, None) => None,
    })
}

fn params(
    job: &JobArgs,
    columns: TransactionColumns,
    bad_rows: BadRowPolicy,
    as_of: Option<&str>,
) -> anyhow::Result<SegmentParams> {
    let as_of = super::parse_as_of(as_of)?;
    if let Some(s) = job.holdout_share.filter(|s| !(*s > 0.0 && *s < 1.0)) {
        // Before the job runs, not after.
        return Err(segmenta::experiment::GroupError::Share(s).into());
    }
    if job.clv {
        job.value.options().check()?;
    }
    Ok(SegmentParams {
        columns,
        bad_rows,
        as_of,
        k: k_choice(job)?,
        outlier_percentile: job.outlier_percentile,
        seed: job.seed,
        n_init: job.n_init,
        min_share: job.min_share,
        features: (!job.features.is_empty()).then(|| job.features.clone()),
        clv: job.clv.then(|| job.value.options()),
        experiment: job.holdout_share.map(|holdout_share| ExperimentOptions {
            holdout_share,
            salt: job.experiment_salt.clone(),
        }),
        ..SegmentParams::default()
    })
}

/// Runs the job with a progress bar and writes the outputs.
fn execute(
    job: &JobArgs,
    transactions: &Path,
    params: &SegmentParams,
    previous: Option<&SegmentModel>,
    out: &Path,
) -> anyhow::Result<(SegmentRun, OutputFiles)> {
    let backend = select(job.backend)?;
    let bar = progress_bar(100, job.json);
    let phase_bar = bar.clone();
    let control = SegmentControl {
        on_phase: Some(Arc::new(move |phase: &str, fraction: f64| {
            phase_bar.set_position((fraction * 100.0) as u64);
            phase_bar.set_message(phase.to_owned());
        })),
        ..SegmentControl::default()
    };
    let run = with_cpu_fallback(job.backend, backend.as_ref(), |b| {
        run_segmentation(b, transactions, params, previous, &control)
    })?;
    bar.set_message("writing the report");
    let files = write_outputs(&run, out)?;
    bar.finish_and_clear();
    Ok((run, files))
}

pub fn run_segment(args: SegmentArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut params = params(
        &args.job,
        args.log.columns(),
        args.bad_rows,
        args.as_of.as_deref(),
    )?;
    params.format = args.log.format();
    params.max_bad_rows = args.max_bad_rows;
    let previous = args
        .previous
        .as_deref()
        .map(SegmentModel::load)
        .transpose()?;
    let (run, files) = execute(
        &args.job,
        &args.transactions,
        &params,
        previous.as_ref(),
        &args.out,
    )?;
    report(&args.job, &run, &files, started, None)
}

pub fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    segmenta::segmentation::create_private_dir_all(&args.out)?;
    let log_path = args.out.join("transactions.csv");
    if !args.job.json {
        eprintln!(
            "Generating {} customers' transactions (seed {})...",
            args.customers, args.data_seed
        );
    }
    let demo = write_demo_log(&log_path, args.customers, args.data_seed)?;
    write_planted(
        &args.out.join("planted_groups.csv"),
        &demo.customer_ids,
        &demo.groups,
    )?;
    let columns = TransactionColumns {
        order: Some("order_id".into()),
        ..TransactionColumns::default()
    };
    let params = params(&args.job, columns, BadRowPolicy::Skip, None)?;
    let (run, files) = execute(&args.job, &log_path, &params, None, &args.out)?;
    // Customers keep their generation order in the features (first
    // appearance differs), so map planted groups by id.
    let planted: std::collections::HashMap<&str, u32> = demo
        .customer_ids
        .iter()
        .map(String::as_str)
        .zip(
            demo.groups
                .iter()
                .map(|g| PlantedGroup::ALL.iter().position(|p| p == g).unwrap_or(0) as u32),
        )
        .collect();
    let truth: Vec<u32> = run
        .customers
        .ids
        .iter()
        .map(|id| planted[id.as_str()])
        .collect();
    let ari = adjusted_rand_index(&truth, &run.prediction.labels);
    let demo_info = json!({
        "transactions": log_path,
        "rows": demo.rows,
        "planted_groups": PlantedGroup::ALL.iter().map(|g| g.name()).collect::<Vec<_>>(),
        "adjusted_rand_index": ari,
    });
    report(&args.job, &run, &files, started, Some(demo_info))
}

fn write_planted(path: &Path, ids: &[String], groups: &[PlantedGroup]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["customer_id", "planted_group"])?;
    for (id, g) in ids.iter().zip(groups) {
        w.write_record([id.as_str(), g.name()])?;
    }
    w.flush()?;
    Ok(())
}

fn report(
    job: &JobArgs,
    run: &SegmentRun,
    files: &OutputFiles,
    started: Instant,
    demo: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let elapsed = started.elapsed().as_secs_f64();
    // On stderr with --json too: a pipeline reading stdout still logs them.
    let i = &run.input;
    if let Some(w) = i.notes.future.warning() {
        eprintln!("warning: {w}");
    }
    if i.bad_rows.total > 0 {
        eprintln!(
            "warning: {} of {} rows skipped as unreadable: {}",
            i.bad_rows.total,
            i.rows_read,
            i.bad_rows.summary(true)
        );
    }
    if let Some(why) = &run.value_unavailable {
        eprintln!("warning: no customer value (the segments are whole without it): {why}");
    }
    if job.json {
        // segments.json's document (preprocessing and feature choice
        // included), and what only this run knows.
        let mut out = serde_json::to_value(segmenta::segmentation::SegmentsDocument::of(run))?;
        out["converged"] = json!(run.model.kmeans.converged());
        out["files"] = json!(files);
        out["demo"] = json!(demo);
        out["elapsed_seconds"] = json!(elapsed);
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} customers as of {} from {} rows ({} unreadable row{} skipped); backend {} [{}]",
        run.customers.ids.len(),
        run.model.as_of,
        i.rows_read,
        i.bad_rows.total,
        if i.bad_rows.total == 1 { "" } else { "s" },
        run.backend.backend,
        run.backend.adapter
    );
    println!(
        "read as: {}dates {}",
        i.delimiter.map_or(String::new(), |d| format!(
            "fields separated by {:?}, ",
            d.shown()
        )),
        i.date_format
    );
    if !run.model.kmeans.converged() {
        println!(
            "k-means stopped at max_iter after {} iterations before converging",
            run.model.kmeans.n_iter()
        );
    }
    let f = &run.feature_choice;
    println!(
        "clustered on {}{}",
        f.clustered.join(", "),
        if f.left_out.is_empty() {
            String::new()
        } else {
            format!(
                " ({} left out: little spread across customers)",
                f.left_out
                    .iter()
                    .map(|(n, s)| format!("{n}, spread {s:.2}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    if let Some(sweep) = &run.sweep {
        let header: Vec<String> = [
            "k",
            "silhouette",
            "smallest segment",
            "stability",
            "eligible",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = sweep
            .scores
            .iter()
            .map(|s| {
                vec![
                    format!(
                        "{}{}",
                        s.k,
                        if s.k == sweep.recommended_k { " *" } else { "" }
                    ),
                    format!("{:.3}", s.silhouette),
                    format!("{:.1}%", s.min_share * 100.0),
                    segmenta::segmentation::sweep::shown_stability(s.stability),
                    if s.eligible { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        print!("{}", table(&header, &rows));
        println!("recommended {}", sweep.reason);
    }
    let header: Vec<String> = [
        "segment",
        "customers",
        "share",
        "recency",
        "frequency",
        "monetary",
        "description",
        "top RFM segment",
        "outliers",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = run
        .profiles
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.size.to_string(),
                format!("{:.1}%", p.share * 100.0),
                fmt_f(p.features[0].median),
                fmt_f(p.features[1].median),
                fmt_f(p.features[2].median),
                p.description.clone(),
                p.top_rfm_segments
                    .first()
                    .map_or(String::new(), |(s, _)| s.name().to_owned()),
                p.outliers.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
    println!("(recency, frequency, monetary: segment medians)");
    if let Some(v) = &run.value {
        let s = &v.summary;
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
        let header: Vec<String> = [
            "segment",
            "mean CLV",
            "share of value",
            "mean P(alive)",
            "high churn risk",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = run
            .profiles
            .iter()
            .filter_map(|p| {
                let v = p.value.as_ref()?;
                Some(vec![
                    p.id.to_string(),
                    format!("{:.2}", v.mean_clv),
                    format!("{:.1}%", v.value_share * 100.0),
                    format!("{:.3}", v.mean_p_alive),
                    v.high_churn_risk.to_string(),
                ])
            })
            .collect();
        println!(
            "customer value over the next {} {}s: total CLV {}",
            s.horizon,
            s.time_unit.name(),
            fmt_f(s.total_clv)
        );
        print!("{}", table(&header, &rows));
    }
    if let Some((_, e)) = &run.groups {
        println!(
            "campaign groups (salt {:?}): {} treatment, {} control ({} per segment: {})",
            e.salt,
            e.treatment,
            e.control,
            e.holdout_share,
            e.control_by_segment
                .iter()
                .map(|(s, c, n)| format!("{s}: {c} of {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(w) = e.warning() {
            eprintln!("warning: {w}");
        }
    }
    if let Some(r) = &run.refresh {
        println!(
            "refresh since {}: {}",
            r.previous_as_of,
            segmenta::segmentation::refresh::kept_sentence(r)
        );
    }
    if let Some(demo) = demo {
        println!(
            "planted groups recovered: adjusted Rand index {:.3}",
            demo["adjusted_rand_index"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "report: {}  ({:.1} s)",
        files.report_html.display(),
        elapsed
    );
    Ok(())
}
