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
}

impl RowProblem {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::MissingCustomerId => "missing customer id",
            Self::BadDate => "unparsable date",
            Self::BadAmount => "amount is not a finite number",
            Self::BadQuantity => "quantity is not a finite number",
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
    #[error("{n_customers} customers are too few to form {k} segments")]
    TooFewCustomers { n_customers: usize, k: usize },
    #[error("invalid k range {0:?}: expected MIN..MAX with 1 <= MIN <= MAX, e.g. 2..12")]
    BadKRange(String),
    #[error("invalid date {0:?}: expected YYYY-MM-DD")]
    BadDate(String),
    #[error("outlier percentile must be in (0, 100), got {0}")]
    BadPercentile(f64),
    #[error("previous model {path}: {message}")]
    PreviousModel { path: String, message: String },
    #[error("a refresh keeps the previous model's k = {previous}; got k = {requested} (fit without a previous model to change k)")]
    KMismatch { previous: usize, requested: usize },
    #[error("cannot write {path}: {message}")]
    Output { path: PathBuf, message: String },
}

impl SegmentationError {
    pub(crate) fn output(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Output {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}
