//! The customer segmentation workflow: from a transaction log to named,
//! profiled segments whose ids stay stable when they are refreshed.
//!
//! [`run_segmentation`] is the whole job; [`write_outputs`] writes the
//! per-customer table, `segments.json`, `model.json` and the HTML report.
//! The steps are public for callers that need one of them:
//! [`transactions`] → [`features`] → [`rfm`] → k-means (choosing k with
//! [`sweep`]) → [`profile`] → [`refresh`] → [`report`].

pub mod demo;
mod error;
pub mod features;
pub(crate) mod job;
pub(crate) mod output;
pub mod profile;
pub mod refresh;
pub mod report;
pub mod rfm;
pub mod sweep;
pub mod transactions;

pub use error::{RowProblem, SegmentationError};
pub use job::{
    asked_features, feature_columns, run_segmentation, segment_customers, skewed_columns,
    ExperimentOptions, ExperimentSummary, FeatureChoice, InputSummary, KChoice, Refresh, Scatter,
    SegmentControl, SegmentModel, SegmentParams, SegmentRun, DEFAULT_K_RANGE, DEFAULT_MAX_BAD_ROWS,
    DEFAULT_MIN_SHARE,
};
pub(crate) use output::replace_atomically;
pub use output::{
    create_private_dir_all, write_outputs, OutputFiles, Preprocessing, SegmentsDocument,
    CUSTOMER_COLUMNS,
};
