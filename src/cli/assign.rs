//! `segmenta assign` and `segmenta score`: scoring with a saved model, no
//! server needed.

use std::path::{Path, PathBuf};

use clap::Args;
use ndarray::Array2;

use super::{column_name, parse_as_of, LogArgs, TextArgs};
use segmenta::backend::{may_fall_back, select, with_cpu_fallback, BackendChoice, BackendInfo};
use segmenta::data::{read_table_limited, read_text_column, ReadLimits};
use segmenta::kmeans::Prediction;
use segmenta::model_file::ModelFile;
use segmenta::segmentation::features::customer_features;
use segmenta::segmentation::transactions::{read_transactions_as, BadRowPolicy};
use segmenta::segmentation::SegmentationError;

#[derive(Debug, Args)]
pub struct AssignArgs {
    /// A model file: `kmeans --save-model`, or a segment run's model.json
    /// (rows are then customers' features: recency_days, frequency, …).
    #[arg(long)]
    pub model: PathBuf,
    /// Rows to assign (CSV/TSV or Parquet) with the model's columns.
    #[arg(long)]
    pub input: PathBuf,
    /// Column whose values name each row in the output (default: row numbers).
    #[arg(long, value_parser = column_name)]
    pub id_col: Option<String>,
    /// Write the CSV here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub text: TextArgs,
    /// auto: a hardware GPU if present, else the CPU. gpu: any GPU adapter. cpu: native kernels.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A segment run's model.json (or its output directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Transactions of new or updated customers (CSV/TSV or Parquet).
    #[arg(long)]
    pub transactions: PathBuf,
    /// Features are computed as of this date (YYYY-MM-DD; default: the day
    /// after the latest transaction).
    #[arg(long, value_name = "DATE")]
    pub as_of: Option<String>,
    /// Write the CSV here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    /// auto: a hardware GPU if present, else the CPU. gpu: any GPU adapter. cpu: native kernels.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
}

/// Where the work runs once, the rows are scaled in their own buffer (the
/// file's values are held once, not twice).
/// The prediction, and the backend that made it (the CPU after a GPU
/// failure under `auto`).
fn predict(
    choice: BackendChoice,
    x: Array2<f32>,
    model: &segmenta::kmeans::KMeansModel,
) -> anyhow::Result<(Prediction, BackendInfo)> {
    let backend = select(choice)?;
    if !may_fall_back(choice, backend.as_ref()) {
        return Ok((model.predict_owned(backend.as_ref(), x)?.0, backend.info()));
    }
    let mut used = backend.info();
    let p = with_cpu_fallback(choice, backend.as_ref(), |b| {
        used = b.info();
        model.predict(b, x.view())
    })?;
    Ok((p, used))
}

fn writer(out: Option<&Path>) -> anyhow::Result<csv::Writer<Box<dyn std::io::Write>>> {
    let sink: Box<dyn std::io::Write> = match out {
        // Customers' ids and segments: a new file is its owner's only.
        Some(p) => Box::new(
            super::private_file(p)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    Ok(csv::Writer::from_writer(sink))
}

/// One CSV row per input row: id, label (and description), distance, margin.
fn write_rows(
    out: Option<&Path>,
    id_name: &str,
    ids: &[String],
    (p, backend): (&Prediction, &BackendInfo),
    segments: Option<(&[String], &[u32])>,
) -> anyhow::Result<()> {
    let descriptions = segments.map(|s| s.0);
    anyhow::ensure!(
        ids.len() == p.labels.len(),
        "{} ids for {} rows",
        ids.len(),
        p.labels.len()
    );
    let mut w = writer(out)?;
    let mut header = vec![
        id_name,
        if descriptions.is_some() {
            "segment"
        } else {
            "label"
        },
    ];
    if descriptions.is_some() {
        header.push("description");
    }
    header.extend(["distance", "margin"]);
    w.write_record(&header)?;
    for (i, id) in ids.iter().enumerate() {
        let label = p.labels[i];
        // Segments are reported by their stable id, not the centroid row.
        let shown = segments.map_or(label, |s| s.1.get(label as usize).copied().unwrap_or(label));
        let mut record = vec![id.clone(), shown.to_string()];
        if let Some(d) = descriptions {
            record.push(d.get(label as usize).cloned().unwrap_or_default());
        }
        record.push(p.distances[i].to_string());
        record.push(
            p.margins
                .as_ref()
                .map_or(String::new(), |m| m[i].to_string()),
        );
        w.write_record(&record)?;
    }
    w.flush()?;
    if let Some(path) = out {
        eprintln!(
            "{} rows written to {}; backend {} [{}]",
            ids.len(),
            path.display(),
            backend.backend,
            backend.adapter
        );
    }
    Ok(())
}

pub fn run_assign(args: AssignArgs) -> anyhow::Result<()> {
    let file = ModelFile::load(&args.model)?;
    let (columns, model, segments) = match file {
        ModelFile::Segments(s) => (
            s.features.clone(),
            s.kmeans.clone(),
            Some((s.descriptions.clone(), s.ids())),
        ),
        other => {
            let (columns, model) = other.kmeans(&args.model)?;
            (columns, model, None)
        }
    };
    let format = args.text.format(None);
    let data = read_table_limited(&args.input, &columns, &format, ReadLimits::NONE)?;
    let ids = match &args.id_col {
        Some(col) => read_text_column(&args.input, col, &format)?,
        None => (1..=data.n_rows()).map(|i| i.to_string()).collect(),
    };
    let (p, used) = predict(args.backend, data.values, &model)?;
    write_rows(
        args.out.as_deref(),
        args.id_col.as_deref().unwrap_or("row"),
        &ids,
        (&p, &used),
        segments.as_ref().map(|(d, i)| (d.as_slice(), i.as_slice())),
    )
}

pub fn run_score(args: ScoreArgs) -> anyhow::Result<()> {
    let path = if args.model.is_dir() {
        args.model.join("model.json")
    } else {
        args.model.clone()
    };
    let model = match ModelFile::load(&path)? {
        ModelFile::Segments(s) => s,
        other => anyhow::bail!(
            "{} holds a {} model; score needs a segment run's model.json (use assign for k-means models)",
            path.display(),
            other.kind()
        ),
    };
    let as_of = parse_as_of(args.as_of.as_deref())?;
    let mut log = read_transactions_as(
        &args.transactions,
        &args.log.columns(),
        &args.log.format(),
        BadRowPolicy::Skip,
    )?;
    // As `segment` reads a log: a typo'd future date must not move the
    // as-of date and every recency with it.
    if log.lines.is_empty() {
        return Err(SegmentationError::NoTransactions.into());
    }
    log.leave_out_future(chrono::Utc::now().date_naive(), as_of)?;
    if let Some(w) = log.future.warning() {
        eprintln!("warning: {w}");
    }
    if log.bad_rows.total > 0 {
        eprintln!(
            "warning: {} of {} rows skipped as unreadable: {}",
            log.bad_rows.total,
            log.rows_read,
            log.bad_rows.summary(true)
        );
    }
    let customers = customer_features(&log, as_of)?;
    model.check_basis(customers.frequency_basis)?;
    let backend = select(args.backend)?;
    let mut used = backend.info();
    let p = with_cpu_fallback(args.backend, backend.as_ref(), |b| {
        used = b.info();
        model.assign(b, customers.values_f32().view())
    })?;
    eprintln!(
        "{} customers scored as of {} against the segments of {}",
        customers.ids.len(),
        customers.as_of,
        model.as_of
    );
    write_rows(
        args.out.as_deref(),
        "customer_id",
        &customers.ids,
        (&p, &used),
        Some((&model.descriptions, &model.ids())),
    )
}
