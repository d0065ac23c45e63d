//! The segment job: transactions in, named, profiled, stable segments out.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::error::SegmentationError;
use super::features::{
    customer_features, CustomerFeatures, FeatureNotes, FrequencyBasis, FEATURE_NAMES, FREQUENCY,
    MONETARY, RECENCY,
};
use super::profile::{profile, ProfileInput, SegmentProfile, ValueProfile};
use super::refresh::{carry_ids, size_drift, transitions, SegmentChange, SizeDrift, Transitions};
use super::rfm::{rfm_scores, RfmScore, RfmSegment};
use super::sweep::{sweep_k, Criteria, KSweep};
use super::transactions::{
    read_transactions_as, BadRowPolicy, BadRows, TransactionColumns, TransactionLog,
};
use crate::backend::{Backend, BackendInfo};
use crate::data::{Delimiter, TextFormat};
use crate::error::Result;
use crate::experiment::{assign_groups, Group};
use crate::kmeans::{FitControl, Init, KMeansModel, KMeansParams, Prediction};
use crate::pca::PcaParams;
use crate::value::clv::{ChurnRisk, Scores};
use crate::value::{value_as_of, ClvRun, ClvSummary, ValueError, ValueOptions};

/// How many segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KChoice {
    Fixed(usize),
    /// Fit each k and recommend one ([`super::sweep::RULE`]).
    Range(RangeInclusive<usize>),
}

/// The k range swept when neither k nor a previous model is given: fewer
/// than 3 segments rarely tell a team anything new, more than 8 rarely get
/// a campaign each.
pub const DEFAULT_K_RANGE: RangeInclusive<usize> = 3..=8;

/// The smallest segment a recommended k may have, as a share of customers.
pub const DEFAULT_MIN_SHARE: f64 = 0.05;

/// Positions in [`FEATURE_NAMES`] of `names` (a non-empty subset, in that
/// order, without repeats).
pub fn feature_columns(names: &[String]) -> std::result::Result<Vec<usize>, String> {
    let mut columns = Vec::with_capacity(names.len());
    for name in names {
        let j = FEATURE_NAMES
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| {
                format!(
                    "unknown feature {name:?}; choose from {}",
                    FEATURE_NAMES.join(", ")
                )
            })?;
        if columns.last().is_some_and(|&last| last >= j) {
            return Err(format!(
                "features must be listed once each, in the order {}",
                FEATURE_NAMES.join(", ")
            ));
        }
        columns.push(j);
    }
    if columns.is_empty() {
        return Err("no features to cluster on".into());
    }
    Ok(columns)
}

/// Which features were clustered on, and which were left out and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureChoice {
    pub clustered: Vec<String>,
    /// Features left out automatically: (name, spread) where the spread
    /// (interquartile range over the median) was below the minimum.
    pub left_out: Vec<(String, f64)>,
}

/// The features a user asked to cluster on, in the table's order: each
/// known, none named twice (most likely a slip for another feature, so
/// said rather than clustered on fewer than were listed). Checked before
/// a job reads its log.
pub fn asked_features(asked: &[String]) -> std::result::Result<Vec<String>, String> {
    if let Some(unknown) = asked.iter().find(|a| !FEATURE_NAMES.contains(&a.as_str())) {
        return Err(format!(
            "unknown feature {unknown:?}; choose from {}",
            FEATURE_NAMES.join(", ")
        ));
    }
    let sorted: Vec<String> = FEATURE_NAMES
        .iter()
        .filter(|f| asked.iter().any(|a| a == *f))
        .map(|f| f.to_string())
        .collect();
    if let Some(twice) = sorted
        .iter()
        .find(|f| asked.iter().filter(|a| a == f).count() > 1)
    {
        return Err(format!("feature {twice:?} is named more than once"));
    }
    Ok(sorted)
}

/// The clustered features: the ones asked for, else every feature whose
/// spread across the base is at least [`super::profile::MIN_SPREAD`] (at
/// least the two with the most spread).
fn choose_features(
    x: ArrayView2<f32>,
    asked: Option<&[String]>,
) -> Result<(Vec<usize>, FeatureChoice)> {
    let names = |c: &[usize]| c.iter().map(|&j| FEATURE_NAMES[j].to_owned()).collect();
    if let Some(asked) = asked {
        let sorted = asked_features(asked).map_err(SegmentationError::BadFeatures)?;
        let c = feature_columns(&sorted).map_err(SegmentationError::BadFeatures)?;
        return Ok((
            c.clone(),
            FeatureChoice {
                clustered: names(&c),
                left_out: Vec::new(),
            },
        ));
    }
    let base = super::profile::BaseStats::of(x);
    let spread: Vec<f64> = (0..FEATURE_NAMES.len()).map(|j| base.spread(j)).collect();
    let mut c: Vec<usize> = (0..FEATURE_NAMES.len())
        .filter(|&j| spread[j] >= super::profile::MIN_SPREAD)
        .collect();
    if c.len() < 2 {
        let mut by: Vec<usize> = (0..FEATURE_NAMES.len()).collect();
        by.sort_by(|&a, &b| spread[b].total_cmp(&spread[a]));
        c = by[..2].to_vec();
        c.sort();
    }
    let left_out = (0..FEATURE_NAMES.len())
        .filter(|j| !c.contains(j))
        .map(|j| (FEATURE_NAMES[j].to_owned(), spread[j]))
        .collect();
    Ok((
        c.clone(),
        FeatureChoice {
            clustered: names(&c),
            left_out,
        },
    ))
}

/// Unreadable rows tolerated by default: 1 %.
pub const DEFAULT_MAX_BAD_ROWS: f64 = 0.01;

/// Options of the segment job; `Default` is what the CLI uses.
#[derive(Debug, Clone)]
pub struct SegmentParams {
    pub columns: TransactionColumns,
    /// Delimiter, decimal comma and date format of a text log.
    pub format: TextFormat,
    pub bad_rows: BadRowPolicy,
    /// With [`BadRowPolicy::Skip`], the largest fraction of rows that may be
    /// unreadable before the job fails with a summary (default 0.01).
    pub max_bad_rows: f64,
    /// Default: the day after the latest transaction.
    pub as_of: Option<NaiveDate>,
    /// Default: the previous model's k on a refresh, else [`DEFAULT_K_RANGE`].
    pub k: Option<KChoice>,
    /// Members farther from their centroid than this percentile (0–100) of
    /// their segment are flagged as outliers.
    pub outlier_percentile: f64,
    pub seed: u64,
    /// k-means runs per k (best inertia kept).
    pub n_init: usize,
    /// Rows sampled for the silhouette (it costs `O(s²)`).
    pub silhouette_sample: usize,
    /// Features to cluster on (names from [`FEATURE_NAMES`]); `None`: every
    /// feature with spread across the base (a refresh keeps the previous).
    pub features: Option<Vec<String>>,
    /// The smallest segment a recommended k may have (share of customers).
    pub min_share: f64,
    /// Also predict each customer's value (BG/NBD and Gamma-Gamma as of
    /// the as-of date) and profile the segments by it.
    pub clv: Option<ValueOptions>,
    /// Also put every customer in a campaign's treatment or control group,
    /// stratified by segment.
    pub experiment: Option<ExperimentOptions>,
}

/// A campaign's control share and salt (see [`crate::experiment::groups`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentOptions {
    pub holdout_share: f64,
    pub salt: String,
}

/// The groups drawn, per segment and overall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub holdout_share: f64,
    pub salt: String,
    pub treatment: usize,
    pub control: usize,
    /// (segment id, control customers, segment size).
    pub control_by_segment: Vec<(u32, usize, usize)>,
}

impl ExperimentSummary {
    /// What the groups drawn cannot measure, said before the campaign
    /// rather than after it: uplift needs two customers in each group.
    pub fn warning(&self) -> Option<String> {
        let thin: Vec<String> = self
            .control_by_segment
            .iter()
            .filter(|&&(_, c, n)| c < 2 || n.saturating_sub(c) < 2)
            .map(|(s, c, _)| format!("{s} ({c})"))
            .collect();
        if self.control < 2 || self.treatment < 2 {
            Some(format!(
                "{} in control and {} treated: uplift needs at least two customers in each \
                 group; raise the holdout share (or segment more customers)",
                self.control, self.treatment
            ))
        } else if !thin.is_empty() {
            Some(format!(
                "segments {} have fewer than two customers in a group (control counts in \
                 brackets): their uplift cannot be measured, only the overall one",
                thin.join(", ")
            ))
        } else {
            None
        }
    }
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            columns: TransactionColumns::default(),
            format: TextFormat::default(),
            bad_rows: BadRowPolicy::Skip,
            max_bad_rows: DEFAULT_MAX_BAD_ROWS,
            as_of: None,
            k: None,
            outlier_percentile: 99.0,
            seed: 0,
            n_init: 3,
            silhouette_sample: 4000,
            features: None,
            clv: None,
            experiment: None,
            min_share: DEFAULT_MIN_SHARE,
        }
    }
}

/// What a later refresh needs: the fitted model with its preprocessing, and
/// who was in which segment. Saved as `model.json`, a model file of kind
/// `segments` ([`crate::model_file`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentModel {
    #[serde(default = "model_format")]
    pub format: String,
    #[serde(default = "model_version")]
    pub version: u32,
    #[serde(default = "segments_kind")]
    pub kind: String,
    pub as_of: NaiveDate,
    pub features: Vec<String>,
    /// What frequency counted when the model was fitted: scoring or
    /// refreshing with the other basis would silently move customers.
    /// Absent in files from before it was recorded (then unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_basis: Option<FrequencyBasis>,
    /// Clusters on `log1p` (where the features are skewed) then
    /// standardised features; the preprocessing is stored inside.
    pub kmeans: KMeansModel,
    /// One per cluster (centroid row).
    pub descriptions: Vec<String>,
    /// The segment id of each cluster (centroid row), ascending. Ids are
    /// kept across refreshes while a segment is the same group, and never
    /// reused; empty in files from before ids were carried (then `0..k`).
    #[serde(default)]
    pub segment_ids: Vec<u32>,
    /// The id the next new segment gets.
    #[serde(default)]
    pub next_segment_id: u32,
    pub customer_ids: Vec<String>,
    /// Per customer: the cluster (centroid row), not the segment id.
    pub labels: Vec<u32>,
}

fn model_format() -> String {
    crate::model_file::FORMAT.into()
}
fn model_version() -> u32 {
    crate::model_file::VERSION
}
fn segments_kind() -> String {
    "segments".into()
}

impl SegmentModel {
    /// Refuses customers whose frequency counts something else than the
    /// model's did (a log read with or without its order column).
    pub fn check_basis(&self, basis: FrequencyBasis) -> Result<()> {
        match self.frequency_basis {
            Some(fitted) if fitted != basis => {
                Err(SegmentationError::BasisMismatch { fitted, basis }.into())
            }
            _ => Ok(()),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| SegmentationError::PreviousModel {
            path: name.clone(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, &name)
    }

    /// [`Self::load`] from bytes; `name` names them in errors.
    pub fn from_json(text: &[u8], name: &str) -> Result<Self> {
        let bad = |message: String| SegmentationError::PreviousModel {
            path: name.to_owned(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        // A k-means or PCA model file would otherwise fail on the first
        // field it lacks ("missing field as_of"), which says nothing useful.
        match value.get("kind").and_then(|k| k.as_str()) {
            None | Some("segments") => {}
            Some(kind) => {
                return Err(bad(format!(
                    "a {kind} model file, not a segment model: give the model.json a \
                     segment run wrote"
                ))
                .into())
            }
        }
        let model: Self = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if model.version > crate::model_file::VERSION {
            return Err(bad(format!(
                "a version {} model file; this build reads up to version {}",
                model.version,
                crate::model_file::VERSION
            ))
            .into());
        }
        let columns = feature_columns(&model.features).map_err(bad)?;
        if model.kmeans.n_features() != columns.len() {
            return Err(bad(format!(
                "{} features listed for a model of {}",
                columns.len(),
                model.kmeans.n_features()
            ))
            .into());
        }
        model.kmeans.check_consistent().map_err(bad)?;
        if model.descriptions.len() != model.kmeans.k() {
            return Err(bad(format!(
                "{} segment descriptions for k = {}",
                model.descriptions.len(),
                model.kmeans.k()
            ))
            .into());
        }
        let ids = &model.segment_ids;
        if !ids.is_empty() && ids.len() != model.kmeans.k() {
            return Err(bad(format!(
                "{} segment ids for k = {}",
                ids.len(),
                model.kmeans.k()
            ))
            .into());
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if !ids.iter().all(|id| seen.insert(*id)) {
            return Err(bad("a segment id is listed twice".into()).into());
        }
        if model.labels.len() != model.customer_ids.len()
            || model.labels.iter().any(|&l| l as usize >= model.kmeans.k())
        {
            return Err(bad("customer labels do not match the model".into()).into());
        }
        Ok(model)
    }

    /// Assigns customers (all five features in original units, `n × 5`):
    /// the clustered features are picked, the stored log1p and scaling
    /// applied.
    pub fn assign(&self, backend: &dyn Backend, features: ArrayView2<f32>) -> Result<Prediction> {
        let columns = feature_columns(&self.features).map_err(|message| {
            SegmentationError::PreviousModel {
                path: "model".into(),
                message,
            }
        })?;
        self.kmeans
            .predict(backend, features.select(Axis(1), &columns).view())
    }

    pub fn k(&self) -> usize {
        self.kmeans.k()
    }

    /// The segment id of each cluster.
    pub fn ids(&self) -> Vec<u32> {
        if self.segment_ids.len() == self.k() {
            self.segment_ids.clone()
        } else {
            (0..self.k() as u32).collect()
        }
    }

    /// The segment id of cluster `label`.
    pub fn id_of(&self, label: u32) -> u32 {
        self.segment_ids
            .get(label as usize)
            .copied()
            .unwrap_or(label)
    }
}

/// Reading the log: what was used and what was not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSummary {
    pub rows_read: usize,
    pub bad_rows: BadRows,
    /// The field separator of a text log (sniffed or given).
    #[serde(default)]
    pub delimiter: Option<Delimiter>,
    /// How dates were read, e.g. "ISO 8601" or "%d/%m/%Y (detected)".
    #[serde(default)]
    pub date_format: String,
    pub notes: FeatureNotes,
    pub frequency_basis: FrequencyBasis,
    pub n_customers: usize,
}

/// A refresh against a previous model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refresh {
    pub previous_as_of: NaiveDate,
    pub transitions: Transitions,
    pub size_drift: Vec<SizeDrift>,
    /// Splits, merges, new and retired segments.
    #[serde(default)]
    pub changes: Vec<SegmentChange>,
    /// The previous run's description of each of its segments, in the
    /// order of `transitions.previous_ids`.
    #[serde(default)]
    pub previous_descriptions: Vec<String>,
}

/// A 2-D PCA view of (a sample of) the customers, for the scatter plot.
#[derive(Debug, Clone, Serialize)]
pub struct Scatter {
    pub points: Vec<[f32; 2]>,
    /// Cluster index (position in the profiles) of each point.
    pub labels: Vec<u32>,
    pub explained_variance_ratio: [f64; 2],
    /// What drives each axis in words, e.g. "frequency and monetary": the
    /// features with the largest loadings.
    pub drivers: [String; 2],
}

/// Everything the segment job produces.
#[derive(Debug, Clone)]
pub struct SegmentRun {
    pub model: SegmentModel,
    pub customers: CustomerFeatures,
    pub rfm: Vec<RfmScore>,
    pub rfm_segments: Vec<RfmSegment>,
    pub prediction: Prediction,
    pub outliers: Vec<bool>,
    pub profiles: Vec<SegmentProfile>,
    pub sweep: Option<KSweep>,
    pub refresh: Option<Refresh>,
    pub feature_choice: FeatureChoice,
    pub scatter: Scatter,
    pub input: InputSummary,
    pub backend: BackendInfo,
    /// With [`SegmentParams::clv`].
    pub value: Option<CustomerValue>,
    /// With [`SegmentParams::clv`], when the value models cannot be fitted
    /// on this log: why. The segments are whole without them.
    pub value_unavailable: Option<String>,
    /// With [`SegmentParams::experiment`]: per customer, and the summary.
    pub groups: Option<(Vec<Group>, ExperimentSummary)>,
}

/// Every customer's predicted value, aligned with the run's customers.
#[derive(Debug, Clone)]
pub struct CustomerValue {
    pub summary: ClvSummary,
    pub scores: Scores,
}

impl SegmentRun {
    pub fn margins(&self) -> Vec<f32> {
        self.prediction
            .margins
            .clone()
            .unwrap_or_else(|| vec![0.0; self.prediction.labels.len()])
    }
}

/// Called with a phase's name and the job's overall fraction done (0–1).
pub type PhaseFn = Arc<dyn Fn(&str, f64) + Send + Sync>;

/// Observation and cancellation of a segment job.
#[derive(Clone, Default)]
pub struct SegmentControl {
    /// Per Lloyd iteration; cancellation is checked there too.
    pub fit: FitControl,
    /// Called at each phase with the job's overall fraction done (0–1).
    pub on_phase: Option<PhaseFn>,
}

impl SegmentControl {
    fn phase(&self, name: &str, fraction: f64) {
        tracing::info!(phase = name, "segment job");
        if let Some(f) = &self.on_phase {
            f(name, fraction);
        }
    }
}

/// Runs the whole job on `transactions` (CSV or Parquet). With `previous`,
/// re-fits warm-started from it, keeps its segment ids and reports who moved.
pub fn run_segmentation(
    backend: &dyn Backend,
    transactions: &Path,
    params: &SegmentParams,
    previous: Option<&SegmentModel>,
    control: &SegmentControl,
) -> Result<SegmentRun> {
    if !(params.outlier_percentile > 0.0 && params.outlier_percentile < 100.0) {
        return Err(SegmentationError::BadPercentile(params.outlier_percentile).into());
    }
    if let Some(asked) = &params.features {
        asked_features(asked).map_err(SegmentationError::BadFeatures)?;
    }
    control.phase("reading transactions", 0.0);
    let log = read_checked_log(
        transactions,
        &params.columns,
        &params.format,
        params.bad_rows,
        params.max_bad_rows,
        params.as_of,
    )?;
    control.phase("computing features", 0.1);
    let customers = customer_features(&log, params.as_of)?;
    let input = InputSummary {
        rows_read: log.rows_read,
        bad_rows: log.bad_rows.clone(),
        delimiter: log.delimiter,
        date_format: log.date_format.clone(),
        notes: customers.notes.clone(),
        frequency_basis: customers.frequency_basis,
        n_customers: customers.ids.len(),
    };
    let mut value_unavailable = None;
    let value = match &params.clv {
        Some(options) => {
            control.phase("predicting customer value", 0.12);
            match value_as_of(&log, customers.as_of, options, control.fit.cancel.clone()) {
                Ok(v) => Some(v),
                // What the log cannot support costs the value columns, not
                // the segments.
                Err(
                    e @ (ValueError::NotConverged { .. }
                    | ValueError::InfiniteSpend { .. }
                    | ValueError::Hyp2f1(_)
                    | ValueError::NoRepeatCustomers),
                ) => {
                    tracing::warn!("no customer value: {e}");
                    value_unavailable = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    drop(log);
    let mut run = segment_customers(backend, customers, input, params, previous, control)?;
    run.value_unavailable = value_unavailable;
    if let Some(v) = value {
        attach_value(&mut run, v)?;
    }
    if let Some(e) = &params.experiment {
        run.groups = Some(draw_groups(&run, e)?);
    }
    Ok(run)
}

/// Treatment and control per segment (by stable segment id).
fn draw_groups(run: &SegmentRun, e: &ExperimentOptions) -> Result<(Vec<Group>, ExperimentSummary)> {
    let strata: Vec<u32> = run
        .prediction
        .labels
        .iter()
        .map(|&l| run.model.id_of(l))
        .collect();
    let groups = assign_groups(&run.customers.ids, &strata, e.holdout_share, &e.salt)
        .map_err(crate::experiment::ExperimentError::from)?;
    let mut by: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    for (&s, g) in strata.iter().zip(&groups) {
        let entry = by.entry(s).or_default();
        entry.0 += usize::from(*g == Group::Control);
        entry.1 += 1;
    }
    let control = groups.iter().filter(|&&g| g == Group::Control).count();
    let summary = ExperimentSummary {
        holdout_share: e.holdout_share,
        salt: e.salt.clone(),
        treatment: groups.len() - control,
        control,
        control_by_segment: by.into_iter().map(|(s, (c, n))| (s, c, n)).collect(),
    };
    Ok((groups, summary))
}

/// Aligns the value job's scores with the run's customers (the same
/// customers: both read every line up to the as-of date) and profiles the
/// segments by them.
fn attach_value(run: &mut SegmentRun, value: ClvRun) -> Result<()> {
    let at: HashMap<&str, usize> = value
        .customer_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let s = &value.scores;
    let mut aligned = Scores::default();
    for (row, id) in run.customers.ids.iter().enumerate() {
        let Some(&i) = at.get(id.as_str()) else {
            return Err(crate::value::ValueError::BadCustomer {
                index: row,
                what: "a segmented customer without a value row (the two jobs read different customers)".into(),
            }
            .into());
        };
        aligned.p_alive.push(s.p_alive[i]);
        aligned.expected_purchases.push(s.expected_purchases[i]);
        aligned.expected_spend.push(s.expected_spend[i]);
        aligned.clv.push(s.clv[i]);
        aligned.value_tier.push(s.value_tier[i]);
        aligned.churn_risk.push(s.churn_risk[i]);
    }
    let total: f64 = aligned.clv.iter().sum();
    let k = run.profiles.len();
    let mut acc = vec![(0usize, 0.0f64, 0.0f64, 0usize); k];
    for (i, &l) in run.prediction.labels.iter().enumerate() {
        let a = &mut acc[l as usize];
        a.0 += 1;
        a.1 += aligned.clv[i];
        a.2 += aligned.p_alive[i];
        a.3 += usize::from(aligned.churn_risk[i] == ChurnRisk::High);
    }
    for (p, &(n, clv, alive, high)) in run.profiles.iter_mut().zip(&acc) {
        let n_f = n.max(1) as f64;
        p.value = Some(ValueProfile {
            mean_clv: clv / n_f,
            total_clv: clv,
            value_share: if total > 0.0 { clv / total } else { 0.0 },
            mean_p_alive: alive / n_f,
            high_churn_risk: high,
        });
    }
    // The summary's totals are the segmented customers' (the value job may
    // also score customers the segmentation leaves out).
    let mut summary = value.summary;
    summary.n_customers = aligned.clv.len();
    summary.total_clv = total;
    run.value = Some(CustomerValue {
        summary,
        scores: aligned,
    });
    Ok(())
}

/// The job from customer features on (for callers that build features
/// themselves).
pub fn segment_customers(
    backend: &dyn Backend,
    customers: CustomerFeatures,
    input: InputSummary,
    params: &SegmentParams,
    previous: Option<&SegmentModel>,
    control: &SegmentControl,
) -> Result<SegmentRun> {
    let all32 = customers.values_f32();
    let all = all32.view();
    let n = all.nrows();
    let col = |j: usize| all.column(j).to_vec();
    let rfm = rfm_scores(&col(RECENCY), &col(FREQUENCY), &col(MONETARY));
    if !(0.0..1.0).contains(&params.min_share) {
        return Err(SegmentationError::BadMinShare(params.min_share).into());
    }
    let (columns, feature_choice) = match previous {
        Some(p) => {
            if p.customer_ids.is_empty() {
                // A model exported for scoring: matching segments by their
                // customers would call every segment new.
                return Err(SegmentationError::PreviousWithoutCustomers.into());
            }
            p.check_basis(customers.frequency_basis)?;
            let c = feature_columns(&p.features).map_err(SegmentationError::BadFeatures)?;
            if let Some(asked) = &params.features {
                // Asked in any order; a refresh clusters in the table's.
                let asked = asked_features(asked).map_err(SegmentationError::BadFeatures)?;
                if asked != p.features {
                    return Err(SegmentationError::FeaturesMismatch {
                        previous: p.features.join(", "),
                        requested: asked.join(", "),
                    }
                    .into());
                }
            }
            let choice = FeatureChoice {
                clustered: p.features.clone(),
                left_out: Vec::new(),
            };
            (c, choice)
        }
        None => choose_features(all, params.features.as_deref())?,
    };
    let clustered = all.select(Axis(1), &columns);
    let x = clustered.view();
    let feature_list = || {
        columns
            .iter()
            .map(|&j| FEATURE_NAMES[j])
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Segments beyond the distinct profiles would be empty, whatever k-means
    // does; counted up to the largest k that could be asked for.
    let largest_k = match &params.k {
        Some(KChoice::Fixed(k)) => *k,
        Some(KChoice::Range(r)) => *r.end(),
        None => *DEFAULT_K_RANGE.end(),
    };
    let distinct = distinct_rows(x, largest_k + 1);
    if distinct == 1 && n > 1 {
        return Err(SegmentationError::AllAlike {
            n_customers: n,
            features: feature_list(),
        }
        .into());
    }
    let rfm_segments: Vec<RfmSegment> = rfm.iter().map(RfmScore::segment).collect();

    let log1p = previous.map_or_else(|| skewed_columns(x), |p| p.kmeans.scaler().log1p.clone());
    let base = KMeansParams::new(1)
        .standardize(true)
        .log1p(log1p)
        .n_init(params.n_init)
        .seed(params.seed);
    control.phase("clustering", 0.2);
    let (mut kmeans, sweep) = match (previous, &params.k) {
        (Some(p), k) => {
            if let Some(requested) = match k {
                Some(KChoice::Fixed(r)) if *r != p.k() => Some(*r),
                Some(KChoice::Range(r)) if r.clone().ne(p.k()..=p.k()) => Some(*r.end()),
                _ => None,
            } {
                return Err(SegmentationError::KMismatch {
                    previous: p.k(),
                    requested,
                }
                .into());
            }
            check_enough(n, p.k())?;
            let warm = base
                .with_k(p.k())
                .n_init(1)
                .init(Init::Given(p.kmeans.centroids().clone()));
            let fit = warm.fit_with(backend, x, None, &control.fit)?;
            // Data the previous centroids already fit (one step, within
            // tolerance: identical data, say) keep them, so the refresh
            // reproduces the previous assignment instead of nudging
            // customers on a border across it.
            if fit.n_iter() == 1 && fit.converged() && fit.scaler().scales_alike(p.kmeans.scaler())
            {
                (p.kmeans.clone(), None)
            } else {
                (fit, None)
            }
        }
        (None, Some(KChoice::Fixed(k))) => {
            check_enough(n, *k)?;
            if *k > distinct {
                return Err(SegmentationError::FewProfiles {
                    distinct,
                    k: *k,
                    features: feature_list(),
                }
                .into());
            }
            (
                base.with_k(*k).fit_with(backend, x, None, &control.fit)?,
                None,
            )
        }
        (None, range) => {
            let range = match range {
                Some(KChoice::Range(r)) => r.clone(),
                _ => DEFAULT_K_RANGE,
            };
            check_enough(n, *range.start())?;
            // A range asked for is refused as a --k would be; the default
            // one shrinks to what the customers allow.
            if params.k.is_some() && *range.start() > distinct {
                return Err(SegmentationError::FewProfiles {
                    distinct,
                    k: *range.start(),
                    features: feature_list(),
                }
                .into());
            }
            let end = (*range.end()).min(n).min(distinct);
            let range = (*range.start()).min(end)..=end;
            let on_fit = |i: usize, total: usize| {
                control.phase(
                    &format!("choosing k: {i}/{total} fitted"),
                    0.2 + 0.6 * i as f64 / total as f64,
                )
            };
            let (sweep, models) = sweep_k(
                backend,
                x,
                range.clone(),
                &base,
                Criteria {
                    silhouette_sample: params.silhouette_sample,
                    min_share: params.min_share,
                },
                &control.fit,
                &on_fit,
            )?;
            let best = models
                .into_iter()
                .nth(sweep.recommended_k - range.start())
                .expect("recommended k is in the range");
            let mut sweep = sweep;
            if distinct < largest_k {
                sweep.reason = format!(
                    "{}; no k above {distinct} was tried: the customers have only {distinct} \
                     distinct profiles",
                    sweep.reason
                );
            }
            (best, Some(sweep))
        }
    };
    control.phase("profiling segments", 0.85);
    let mut prediction = kmeans.predict(backend, x)?;
    let k = kmeans.k();
    let carry = previous.map(|p| {
        let overlap = transitions(
            (&p.ids(), &vec![0; k]),
            (&p.customer_ids, &p.labels),
            (&customers.ids, &prediction.labels),
        );
        carry_ids(&overlap, &p.ids(), p.next_segment_id)
    });
    let (segment_ids, next_segment_id, changes) = match carry {
        Some(c) => {
            // Clusters in ascending id order.
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by_key(|&c_| c.ids[c_]);
            let mut new_index = vec![0; k];
            for (position, &cluster) in order.iter().enumerate() {
                new_index[cluster] = position;
            }
            kmeans.renumber(&new_index);
            for l in &mut prediction.labels {
                *l = new_index[*l as usize] as u32;
            }
            let ids: Vec<u32> = order.iter().map(|&c_| c.ids[c_]).collect();
            (ids, c.next_id, c.changes)
        }
        None => ((0..k as u32).collect(), k as u32, Vec::new()),
    };
    let margins = prediction.margins.clone().unwrap_or_else(|| vec![0.0; n]);
    let (mut profiles, outliers) = profile(&ProfileInput {
        values: customers.values.view(),
        labels: &prediction.labels,
        distances: &prediction.distances,
        margins: &margins,
        rfm: &rfm_segments,
        k,
        outlier_percentile: params.outlier_percentile,
    });
    for (p, &id) in profiles.iter_mut().zip(&segment_ids) {
        p.id = id as usize;
    }
    let refresh = previous.map(|p| Refresh {
        previous_as_of: p.as_of,
        transitions: transitions(
            (&p.ids(), &segment_ids),
            (&p.customer_ids, &p.labels),
            (&customers.ids, &prediction.labels),
        ),
        size_drift: size_drift((&p.ids(), &segment_ids), &p.labels, &prediction.labels),
        changes: changes.clone(),
        previous_descriptions: p.descriptions.clone(),
    });
    control.phase("projecting for the report", 0.9);
    let names: Vec<&str> = columns.iter().map(|&j| FEATURE_NAMES[j]).collect();
    let scatter = scatter(backend, &kmeans, x, &names, &prediction.labels, params.seed)?;
    let backend_info = kmeans.backend().clone();
    let model = SegmentModel {
        format: model_format(),
        version: model_version(),
        kind: segments_kind(),
        as_of: customers.as_of,
        features: feature_choice.clustered.clone(),
        frequency_basis: Some(customers.frequency_basis),
        descriptions: profiles.iter().map(|p| p.description.clone()).collect(),
        segment_ids,
        next_segment_id,
        customer_ids: customers.ids.clone(),
        labels: prediction.labels.clone(),
        kmeans,
    };
    Ok(SegmentRun {
        model,
        customers,
        rfm,
        rfm_segments,
        prediction,
        outliers,
        profiles,
        sweep,
        refresh,
        feature_choice,
        scatter,
        input,
        backend: backend_info,
        value: None,
        value_unavailable: None,
        groups: None,
    })
}

/// Reads a log for a job: checks `max_bad_rows` first, then fails when
/// more than that share of the rows could not be read (see
/// [`check_bad_rows`]) or when there are no rows at all, and leaves out
/// the lines dated after today (or after `asked_until`, a later date the
/// job names itself, such as `--as-of`).
pub(crate) fn read_checked_log(
    path: &Path,
    columns: &TransactionColumns,
    format: &TextFormat,
    policy: BadRowPolicy,
    max_bad_rows: f64,
    asked_until: Option<NaiveDate>,
) -> Result<TransactionLog> {
    if !(0.0..=1.0).contains(&max_bad_rows) {
        return Err(SegmentationError::BadMaxBadRows(max_bad_rows).into());
    }
    let mut log = read_transactions_as(path, columns, format, policy)?;
    check_bad_rows(
        &log.bad_rows,
        log.rows_read,
        log.lines.is_empty(),
        max_bad_rows,
    )?;
    if log.lines.is_empty() {
        return Err(SegmentationError::NoTransactions.into());
    }
    log.leave_out_future(chrono::Utc::now().date_naive(), asked_until)?;
    Ok(log)
}

/// Fails when more than `allowed` of the rows (or every row) could not be
/// read: a job on what is left would describe a different customer base.
fn check_bad_rows(bad: &BadRows, rows: usize, nothing_read: bool, allowed: f64) -> Result<()> {
    if bad.total > 0 && (nothing_read || bad.total as f64 > allowed * rows as f64) {
        return Err(SegmentationError::TooManyBadRows {
            bad: bad.total,
            rows,
            allowed,
            summary: bad.summary(true),
            summary_without_values: bad.summary(false),
        }
        .into());
    }
    Ok(())
}

/// How many distinct rows `x` has, counting up to `cap`.
fn distinct_rows(x: ArrayView2<f32>, cap: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    for row in x.rows() {
        seen.insert(row.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
        if seen.len() >= cap {
            break;
        }
    }
    seen.len()
}

fn check_enough(n_customers: usize, k: usize) -> Result<()> {
    if n_customers < k.max(2) {
        return Err(SegmentationError::TooFewCustomers { n_customers, k }.into());
    }
    Ok(())
}

/// Sample skewness above which a non-negative feature is clustered on
/// `ln(1 + x)`: spend and order counts typically sit far above it.
pub const SKEW_THRESHOLD: f64 = 1.0;

/// Flags the non-negative columns whose sample skewness exceeds
/// [`SKEW_THRESHOLD`].
pub fn skewed_columns(x: ArrayView2<f32>) -> Vec<bool> {
    x.axis_iter(Axis(1))
        .map(|c| {
            let n = c.len() as f64;
            let mean = c.iter().map(|&v| v as f64).sum::<f64>() / n;
            let (m2, m3) = c.iter().fold((0.0, 0.0), |(m2, m3), &v| {
                let d = v as f64 - mean;
                (m2 + d * d, m3 + d * d * d)
            });
            let (m2, m3) = (m2 / n, m3 / n);
            let skew = if m2 > 0.0 { m3 / m2.powf(1.5) } else { 0.0 };
            c.iter().all(|&v| v >= 0.0) && skew > SKEW_THRESHOLD
        })
        .collect()
}

/// Points shown in the scatter plot at most.
const SCATTER_POINTS: usize = 5000;

fn scatter(
    backend: &dyn Backend,
    kmeans: &KMeansModel,
    x: ArrayView2<f32>,
    names: &[&str],
    labels: &[u32],
    seed: u64,
) -> Result<Scatter> {
    let scaled = kmeans.scaler().transform(x);
    let n = x.nrows();
    let pca = PcaParams::new(2.min(x.ncols())).fit(backend, scaled.view())?;
    // An evenly spaced sample, offset by the seed: deterministic and
    // representative of segment sizes.
    let step = n.div_ceil(SCATTER_POINTS).max(1);
    let rows: Vec<usize> = (seed as usize % step..n).step_by(step).collect();
    let sample: Array2<f32> = scaled.select(Axis(0), &rows);
    let projected = pca.transform(backend, sample.view())?;
    let ratio = pca.explained_variance_ratio();
    let drivers = |c: usize| -> String {
        let Some(row) = pca.components().outer_iter().nth(c) else {
            return "nothing (one feature)".into();
        };
        let mut by: Vec<(usize, f32)> = row.iter().map(|v| v.abs()).enumerate().collect();
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The features carrying most of the axis: the top one, and the
        // next while it is at least half as large.
        let names: Vec<&str> = by
            .iter()
            .take_while(|&&(_, v)| v >= by[0].1 * 0.5)
            .take(3)
            .map(|&(j, _)| names[j])
            .collect();
        names.join(", ")
    };
    Ok(Scatter {
        drivers: [drivers(0), drivers(1)],
        points: projected
            .rows()
            .into_iter()
            .map(|r| [r[0], r.get(1).copied().unwrap_or(0.0)])
            .collect(),
        labels: rows.iter().map(|&i| labels[i]).collect(),
        explained_variance_ratio: [ratio[0], ratio.get(1).copied().unwrap_or(0.0)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(by: &[(u32, usize, usize)]) -> ExperimentSummary {
        let control = by.iter().map(|b| b.1).sum();
        let n: usize = by.iter().map(|b| b.2).sum();
        ExperimentSummary {
            holdout_share: 0.1,
            salt: "s".into(),
            treatment: n - control,
            control,
            control_by_segment: by.to_vec(),
        }
    }

    #[test]
    fn groups_too_thin_to_measure_are_said_before_the_campaign() {
        let w = summary(&[(0, 1, 6), (1, 0, 4)]).warning().unwrap();
        assert!(w.starts_with("1 in control and 9 treated"), "{w}");
        let w = summary(&[(0, 5, 50), (1, 1, 40), (2, 4, 5)])
            .warning()
            .unwrap();
        assert!(
            w.starts_with("segments 1 (1), 2 (4) have fewer than two"),
            "{w}"
        );
        assert_eq!(summary(&[(0, 5, 50), (1, 4, 40)]).warning(), None);
    }
}
