//! Writing a segment run to a directory: the per-customer table (CSV and
//! Parquet), `segments.json`, `model.json` and the HTML report.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray, UInt32Array,
    UInt8Array,
};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::error::SegmentationError;
use super::features::FEATURE_NAMES;
use super::job::{ExperimentSummary, FeatureChoice, InputSummary, Refresh, SegmentRun};
use super::profile::SegmentProfile;
use super::report;
use super::rfm::RfmSegment;
use super::sweep::KSweep;
use crate::backend::BackendInfo;
use crate::error::Result;
use crate::value::ClvSummary;

/// Paths of everything [`write_outputs`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct OutputFiles {
    pub customers_csv: PathBuf,
    pub customers_parquet: PathBuf,
    pub segments_json: PathBuf,
    pub model_json: PathBuf,
    pub report_html: PathBuf,
    pub charts: Vec<PathBuf>,
}

impl OutputFiles {
    /// Every file's name, as a service lists them for download.
    pub fn names(&self) -> Vec<String> {
        file_names(
            [
                &self.report_html,
                &self.customers_csv,
                &self.customers_parquet,
                &self.segments_json,
                &self.model_json,
            ]
            .into_iter()
            .chain(&self.charts),
        )
    }
}

/// The file names of `paths`, in order, each once.
pub(crate) fn file_names<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in paths {
        if let Some(n) = p.file_name() {
            let n = n.to_string_lossy().into_owned();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Writes every output into `dir` (created if needed). Each file is written
/// under a temporary name and renamed into place, so a crash never leaves a
/// half-written file under a final name.
pub fn write_outputs(run: &SegmentRun, dir: &Path) -> Result<OutputFiles> {
    create_private_dir_all(dir).map_err(|e| SegmentationError::output(dir, e))?;
    let files = OutputFiles {
        customers_csv: dir.join("customers.csv"),
        customers_parquet: dir.join("customers.parquet"),
        segments_json: dir.join("segments.json"),
        model_json: dir.join("model.json"),
        report_html: dir.join("report.html"),
        charts: Vec::new(),
    };
    write_atomic(&files.customers_csv, &customers_csv(run)?)?;
    write_atomic(&files.customers_parquet, &customers_parquet(run)?)?;
    let doc = serde_json::to_vec_pretty(&SegmentsDocument::of(run)).expect("serialisable");
    write_atomic(&files.segments_json, &doc)?;
    let model = serde_json::to_vec(&run.model).expect("serialisable");
    write_atomic(&files.model_json, &model)?;
    let charts = report::write_charts(run, dir)?;
    report::remove_stale_charts(dir, &charts, report::SEGMENT_CHARTS)?;
    let html = report::html(run, &charts);
    write_atomic(&files.report_html, html.as_bytes())?;
    Ok(OutputFiles {
        charts: charts.into_iter().map(|c| dir.join(c.file)).collect(),
        ..files
    })
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, bytes).map_err(|e| SegmentationError::output(path, e).into())
}

/// Creates `dir` and any missing parents readable by their owner only
/// (0700 on Unix): they hold customers' data. An existing directory keeps
/// its mode (the user chose it).
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` under a temporary name (this process's), syncs and
/// renames it to `path`; on failure nothing is left behind.
pub(crate) fn replace_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-write-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Column names of the per-customer table.
pub const CUSTOMER_COLUMNS: [&str; 14] = [
    "customer_id",
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "segment",
    "distance",
    "margin",
    "outlier",
];

/// The columns `--clv` adds after [`CUSTOMER_COLUMNS`].
pub const VALUE_COLUMNS: [&str; 6] = [
    "p_alive",
    "expected_purchases",
    "expected_spend",
    "clv",
    "value_tier",
    "churn_risk",
];

fn customers_csv(run: &SegmentRun) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| SegmentationError::output(Path::new("customers.csv"), e);
    let mut header: Vec<&str> = CUSTOMER_COLUMNS.to_vec();
    if run.value.is_some() {
        header.extend(VALUE_COLUMNS);
    }
    if run.groups.is_some() {
        header.push("group");
    }
    w.write_record(&header).map_err(fail)?;
    let margins = run.margins();
    for (i, id) in run.customers.ids.iter().enumerate() {
        let f = run.customers.values.row(i);
        let s = run.rfm[i];
        let mut record: Vec<String> = vec![id.clone()];
        record.extend(f.iter().map(|v| v.to_string()));
        record.extend([s.r, s.f, s.m].map(|v| v.to_string()));
        record.push(run.rfm_segments[i].name().to_owned());
        record.push(run.model.id_of(run.prediction.labels[i]).to_string());
        record.push(run.prediction.distances[i].to_string());
        record.push(margins[i].to_string());
        record.push(run.outliers[i].to_string());
        if let Some(v) = &run.value {
            let s = &v.scores;
            record.extend([
                s.p_alive[i].to_string(),
                s.expected_purchases[i].to_string(),
                s.expected_spend[i].to_string(),
                s.clv[i].to_string(),
                s.value_tier[i].name().to_string(),
                s.churn_risk[i].name().to_string(),
            ]);
        }
        if let Some((groups, _)) = &run.groups {
            record.push(groups[i].name().to_string());
        }
        w.write_record(&record).map_err(fail)?;
    }
    w.into_inner()
        .map_err(|e| SegmentationError::output(Path::new("customers.csv"), e).into())
}

fn customers_parquet(run: &SegmentRun) -> Result<Vec<u8>> {
    let x = &run.customers.values;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(run.customers.ids.clone()))];
    for j in 0..FEATURE_NAMES.len() {
        columns.push(Arc::new(Float64Array::from(x.column(j).to_vec())));
    }
    for pick in [
        |s: &super::rfm::RfmScore| s.r,
        |s: &super::rfm::RfmScore| s.f,
        |s: &super::rfm::RfmScore| s.m,
    ] {
        columns.push(Arc::new(UInt8Array::from(
            run.rfm.iter().map(pick).collect::<Vec<_>>(),
        )));
    }
    columns.push(Arc::new(StringArray::from(
        run.rfm_segments
            .iter()
            .map(RfmSegment::name)
            .collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(UInt32Array::from(
        run.prediction
            .labels
            .iter()
            .map(|&l| run.model.id_of(l))
            .collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(Float32Array::from(
        run.prediction.distances.clone(),
    )));
    columns.push(Arc::new(Float32Array::from(run.margins())));
    columns.push(Arc::new(BooleanArray::from(run.outliers.clone())));
    let mut names: Vec<&str> = CUSTOMER_COLUMNS.to_vec();
    if let Some(v) = &run.value {
        let s = &v.scores;
        names.extend(VALUE_COLUMNS);
        for values in [&s.p_alive, &s.expected_purchases, &s.expected_spend, &s.clv] {
            columns.push(Arc::new(Float64Array::from(values.clone())));
        }
        columns.push(Arc::new(StringArray::from(
            s.value_tier.iter().map(|t| t.name()).collect::<Vec<_>>(),
        )));
        columns.push(Arc::new(StringArray::from(
            s.churn_risk.iter().map(|c| c.name()).collect::<Vec<_>>(),
        )));
    }
    if let Some((groups, _)) = &run.groups {
        names.push("group");
        columns.push(Arc::new(StringArray::from(
            groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
        )));
    }
    parquet_bytes(&names, columns, "customers.parquet")
}

/// One Parquet file in memory from named columns; errors name `file`.
pub(crate) fn parquet_bytes(names: &[&str], columns: Vec<ArrayRef>, file: &str) -> Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| SegmentationError::output(Path::new(file), e);
    let batch = RecordBatch::try_from_iter(names.iter().zip(columns).map(|(n, c)| (*n, c)))
        .map_err(|e| fail(&e))?;
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, batch.schema(), None).map_err(|e| fail(&e))?;
    writer.write(&batch).map_err(|e| fail(&e))?;
    writer.close().map_err(|e| fail(&e))?;
    Ok(buffer)
}

/// `segments.json`: everything but the per-customer rows. The service reads
/// it back to answer queries about a stored segmentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentsDocument {
    pub as_of: chrono::NaiveDate,
    pub n_customers: usize,
    pub k: usize,
    pub backend: BackendInfo,
    pub preprocessing: Preprocessing,
    pub segments: Vec<SegmentProfile>,
    pub k_sweep: Option<KSweep>,
    pub refresh: Option<Refresh>,
    pub input: InputSummary,
    #[serde(default)]
    pub feature_choice: FeatureChoice,
    /// With `--clv`: the value models and what they predict overall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ClvSummary>,
    /// With `--clv`, when the value models cannot be fitted on this log:
    /// why (the segments are whole without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_unavailable: Option<String>,
    /// With `--holdout-share`: the campaign groups drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentSummary>,
}

/// How features are transformed before clustering (stored in the model).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preprocessing {
    pub features: Vec<String>,
    pub log1p: Vec<bool>,
    /// Mean and standard deviation after log1p.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    /// What distances are measured on: `(x − centre) / scale` per feature
    /// (a median, so one wild value cannot cost the others their precision).
    #[serde(default)]
    pub centre: Vec<f32>,
}

impl SegmentsDocument {
    pub fn of(run: &SegmentRun) -> Self {
        let scaler = run.model.kmeans.scaler();
        Self {
            as_of: run.model.as_of,
            n_customers: run.customers.ids.len(),
            k: run.model.k(),
            backend: run.backend.clone(),
            preprocessing: Preprocessing {
                features: run.model.features.clone(),
                log1p: (0..run.model.features.len())
                    .map(|j| scaler.log1p.get(j).copied().unwrap_or(false))
                    .collect(),
                mean: scaler.mean.clone(),
                scale: scaler.scale.clone(),
                centre: scaler.centre().to_vec(),
            },
            segments: run.profiles.clone(),
            k_sweep: run.sweep.clone(),
            refresh: run.refresh.clone(),
            input: InputSummary {
                bad_rows: run.input.bad_rows.without_values(),
                ..run.input.clone()
            },
            feature_choice: run.feature_choice.clone(),
            value: run.value.as_ref().map(|v| crate::value::job::ClvSummary {
                bad_rows: v.summary.bad_rows.without_values(),
                ..v.summary.clone()
            }),
            value_unavailable: run.value_unavailable.clone(),
            experiment: run.groups.as_ref().map(|g| g.1.clone()),
        }
    }
}
