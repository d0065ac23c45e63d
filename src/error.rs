//! Domain errors. Two levels, as in linfa: [`ParamsError`] for options that can
//! never work, [`Error`] for everything that goes wrong while loading or fitting.

use crate::backend::BackendError;
use crate::data::DataError;

/// Invalid hyperparameters, caught before any data is touched.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} is larger than the number of rows ({n_rows})")]
    KExceedsRows { k: usize, n_rows: usize },
    #[error("n_init must be at least 1")]
    ZeroNInit,
    #[error("max_iter must be at least 1")]
    ZeroMaxIter,
    #[error("tol must be finite and >= 0, got {0}")]
    BadTol(f64),
    #[error("initial centroids have shape {got_rows}×{got_cols}, expected {k}×{d}")]
    InitShape {
        got_rows: usize,
        got_cols: usize,
        k: usize,
        d: usize,
    },
    #[error("initial centroids contain a non-finite value at row {row}, column {col}")]
    InitNotFinite { row: usize, col: usize },
    #[error("an initialisation sample of {rows} rows cannot give k = {k} centres")]
    InitSampleTooSmall { rows: usize, k: usize },
    #[error("n_components must be at least 1")]
    ZeroComponents,
    #[error("n_components = {n_components} is larger than the number of features ({n_features})")]
    ComponentsExceedFeatures {
        n_components: usize,
        n_features: usize,
    },
    #[error(
        "PCA needs at least 2 rows and n_components ({n_components}) <= rows, got {n_rows} rows"
    )]
    TooFewRows { n_components: usize, n_rows: usize },
    #[error("sample weights: expected {expected} values, got {got}")]
    WeightsLength { expected: usize, got: usize },
    #[error("sample weight at row {row} is {value}: weights must be finite and >= 0")]
    BadWeight { row: usize, value: f32 },
    #[error("sample weights sum to zero")]
    ZeroWeightSum,
    #[error("rows have {got} features, the model expects {expected}")]
    WidthMismatch { expected: usize, got: usize },
    #[error("log1p flags: expected one per feature ({expected}), got {got}")]
    Log1pLength { expected: usize, got: usize },
    #[error("row {row}, feature {col} is {value}: ln(1 + x) needs values above -1")]
    Log1pDomain { row: usize, col: usize, value: f32 },
}

impl ParamsError {
    /// The request field this error is about (for error details over gRPC).
    pub fn field(&self) -> &'static str {
        match self {
            Self::ZeroK | Self::KExceedsRows { .. } => "k",
            Self::ZeroNInit => "n_init",
            Self::ZeroMaxIter => "max_iter",
            Self::BadTol(_) => "tol",
            Self::InitShape { .. } | Self::InitNotFinite { .. } => "initial_centroids",
            Self::InitSampleTooSmall { .. } => "init_sample_rows",
            Self::ZeroComponents
            | Self::ComponentsExceedFeatures { .. }
            | Self::TooFewRows { .. } => "n_components",
            Self::WeightsLength { .. } | Self::BadWeight { .. } | Self::ZeroWeightSum => "weights",
            Self::WidthMismatch { .. } | Self::Log1pDomain { .. } => "rows",
            Self::Log1pLength { .. } => "log1p",
        }
    }
}

/// Any failure of the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// A GPU failure (cancellation inside a kernel becomes [`Error::Cancelled`]).
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Segmentation(#[from] crate::segmentation::SegmentationError),
    #[error(transparent)]
    Value(#[from] crate::value::ValueError),
    #[error(transparent)]
    Experiment(#[from] crate::experiment::ExperimentError),
    #[error("the fit was cancelled")]
    Cancelled,
}

/// One cancellation error, wherever the flag was seen: between iterations
/// or inside a kernel.
impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Cancelled => Self::Cancelled,
            other => Self::Backend(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
