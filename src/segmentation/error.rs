use std::path::PathBuf;

/// What is wrong with one transaction row.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RowProblem {
    MissingCustomerId,
    BadDate,
    BadAmount,
    BadQuantity,
    /// A field the job reads holds bytes that are not UTF-8 (an export
    /// saved as Latin-1 or Windows-1252, say).
    NotUtf8,
}

impl RowProblem {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::MissingCustomerId => "no customer id",
            Self::BadDate => "an unreadable date",
            Self::BadAmount => "an unreadable amount",
            Self::BadQuantity => "an unreadable quantity",
            Self::NotUtf8 => "text that is not UTF-8",
        }
    }
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Failures of the segmentation workflow that are not plain data or fit
/// errors. Rows are 1-based data rows (header excluded).
#[derive(Debug, thiserror::Error)]
pub enum SegmentationError {
    #[error("row {row}: {problem} (column {column:?}, value {value:?})")]
    BadRow {
        row: usize,
        problem: RowProblem,
        column: String,
        value: String,
    },
    #[error("no customer has a purchase on or before the as-of date {as_of}")]
    NoCustomers { as_of: chrono::NaiveDate },
    #[error("the transaction log has no rows, only a header (or nothing at all)")]
    NoTransactions,
    #[error("every line of the log is dated after {after} ({lines} lines, the latest {latest}): check the date column and its format")]
    OnlyFutureLines {
        lines: usize,
        latest: chrono::NaiveDate,
        /// "today", or the later date the job asked for.
        after: String,
    },
    /// `summary` says how many by problem, with examples and fixes;
    /// `summary_without_values` the same without quoting any cell.
    #[error("{}: {summary}", too_many(*bad, *rows, *allowed))]
    TooManyBadRows {
        bad: usize,
        rows: usize,
        /// The fraction allowed (`--max-bad-rows`).
        allowed: f64,
        summary: String,
        summary_without_values: String,
    },
    #[error("dates in column {column:?} such as {example:?} can be day-first or month-first, and no date in the file has a day above 12 to tell; pass --date-format {day_first} or --date-format {month_first}")]
    AmbiguousDates {
        column: String,
        example: String,
        day_first: String,
        month_first: String,
    },
    #[error("invalid --max-bad-rows {0}: expected a fraction from 0 to 1 (0.01 is 1 %)")]
    BadMaxBadRows(f64),
    #[error("invalid --min-share {0}: expected a fraction from 0 to 1 (0.05 is 5 %)")]
    BadMinShare(f64),
    #[error("invalid features: {0}")]
    BadFeatures(String),
    #[error("{n_customers} customers are too few to form {k} segments")]
    TooFewCustomers { n_customers: usize, k: usize },
    #[error(
        "all {n_customers} customers are alike in {features}: there is nothing to segment \
         (choose other features, or a log with more history)"
    )]
    AllAlike {
        n_customers: usize,
        features: String,
    },
    #[error(
        "only {distinct} distinct customer profiles in {features}: {k} segments would leave \
         {} empty; ask for k = {distinct} or fewer",
        k - distinct
    )]
    FewProfiles {
        distinct: usize,
        k: usize,
        features: String,
    },
    #[error("invalid k range {0:?}: expected MIN..MAX with 1 <= MIN <= MAX, e.g. 2..12")]
    BadKRange(String),
    #[error("invalid date {0:?}: expected YYYY-MM-DD")]
    BadDate(String),
    #[error("outlier percentile must be in (0, 100), got {0}")]
    BadPercentile(f64),
    #[error("previous model {path}: {message}")]
    PreviousModel { path: String, message: String },
    #[error("the previous model has no customers (a model exported for scoring): a refresh needs the model.json its segment run wrote")]
    PreviousWithoutCustomers,
    #[error("a refresh keeps the previous model's k = {previous}; got k = {requested} (fit without a previous model to change k)")]
    KMismatch { previous: usize, requested: usize },
    #[error("the model's frequency counts {}, and this log's counts {}: {}", fitted.counts(), basis.counts(), basis.advice())]
    BasisMismatch {
        fitted: super::features::FrequencyBasis,
        basis: super::features::FrequencyBasis,
    },
    #[error("a refresh keeps the previous model's features ({previous}); got {requested} (fit without a previous model to change them)")]
    FeaturesMismatch { previous: String, requested: String },
    #[error("cannot write {path}: {message}")]
    Output { path: PathBuf, message: String },
}

fn too_many(bad: usize, rows: usize, allowed: f64) -> String {
    use super::transactions::thousands;
    if bad == rows {
        format!("none of the {} rows could be read", thousands(rows))
    } else {
        format!(
            "{} of {} rows ({:.1} %) could not be read, more than the {} % allowed (--max-bad-rows {allowed})",
            thousands(bad),
            thousands(rows),
            100.0 * bad as f64 / rows.max(1) as f64,
            allowed * 100.0
        )
    }
}

impl SegmentationError {
    /// The message without cell values (for job records a service keeps).
    pub fn without_values(&self) -> String {
        match self {
            Self::TooManyBadRows {
                bad,
                rows,
                allowed,
                summary_without_values,
                ..
            } => format!("{}: {summary_without_values}", too_many(*bad, *rows, *allowed)),
            Self::BadRow { row, problem, column, .. } => {
                format!("row {row}: {problem} (column {column:?})")
            }
            Self::AmbiguousDates { column, day_first, month_first, .. } => format!(
                "dates in column {column:?} can be day-first or month-first, and no date in the file has a day above 12 to tell; pass date_format {day_first} or {month_first}"
            ),
            Self::OnlyFutureLines { lines, after, .. } => format!(
                "every line of the log is dated after {after} ({lines} lines): check the date column and its format"
            ),
            other => other.to_string(),
        }
    }

    pub(crate) fn output(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Output {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}
