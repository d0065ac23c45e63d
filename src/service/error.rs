//! Service errors and the one place they become gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::backend::{BackendError, GpuError};
use crate::data::DataError;
use crate::error::ParamsError;
use crate::experiment::ExperimentError;
use crate::segmentation::SegmentationError;
use crate::service::auth::clip;
use crate::value::ValueError;
use crate::Error;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// `id` is already clipped to a short prefix (see [`ServiceError::not_found`]).
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} not found; available: {available}")]
    NotFoundIn {
        what: &'static str,
        id: String,
        available: String,
    },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("limit {limit} exceeded: {message}")]
    ResourceExhausted {
        limit: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    /// Something stored on the server's disk (a dataset, a model, a log's
    /// record) is damaged: not the request's fault, and retrying will not
    /// help until it is deleted or restored.
    #[error("{0}")]
    DataLoss(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A stored object that cannot be read back as it was written. `what`
    /// and `id` are the server's own (never client text), `why` says what
    /// is wrong with it.
    pub fn damaged(what: &str, id: &str, why: impl std::fmt::Display) -> Self {
        Self::DataLoss(format!(
            "{what} {id} is damaged on the server's disk ({why}): delete it, or restore it \
             from a backup"
        ))
    }

    /// Client input echoed in a message is clipped to a short prefix.
    pub fn not_found(what: &'static str, id: &str) -> Self {
        Self::NotFound { what, id: clip(id) }
    }

    /// A storage failure. A full disk or quota is RESOURCE_EXHAUSTED (the
    /// client may retry once space is freed); anything else is INTERNAL.
    pub fn io(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::ResourceExhausted {
                limit: "disk space",
                message: format!("the data directory's disk is full ({e}); nothing was stored"),
            },
            _ => Self::Internal(format!("storage: {e}")),
        }
    }
}

/// A server-side list (column names) shortened to what a message needs.
fn clip_list(s: &str) -> String {
    if s.len() <= 512 {
        s.to_owned()
    } else {
        let mut end = 512;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}, …", &s[..end])
    }
}

impl From<Error> for ServiceError {
    fn from(e: Error) -> Self {
        match e {
            // Job errors are kept and readable by every read key: the
            // weight's kind, never its value.
            Error::Params(ParamsError::BadWeight { row, value }) => Self::invalid(
                "weights",
                format!(
                    "sample weight at row {row} is {}: weights must be finite and >= 0",
                    if value.is_nan() {
                        "not a number"
                    } else if value.is_infinite() {
                        "infinite"
                    } else {
                        "negative"
                    }
                ),
            ),
            Error::Params(p) => Self::invalid(p.field(), p.to_string()),
            Error::Data(DataError::UnknownColumn {
                name,
                available,
                hint,
            }) => Self::invalid(
                "columns",
                format!(
                    "unknown column {:?}; available columns: {}{}",
                    clip(&name),
                    clip_list(&available),
                    hint
                ),
            ),
            Error::Data(DataError::RepeatedColumn { name }) => Self::invalid(
                "columns",
                DataError::RepeatedColumn { name: clip(&name) }.to_string(),
            ),
            Error::Segmentation(SegmentationError::BadDate(d)) => Self::invalid(
                "as_of",
                format!("invalid date {:?}: expected YYYY-MM-DD", clip(&d)),
            ),
            Error::Data(d) => {
                let field = match &d {
                    DataError::UnknownColumn { .. }
                    | DataError::RepeatedColumn { .. }
                    | DataError::UnnamedColumn { .. }
                    | DataError::NonNumericColumn { .. } => "columns",
                    DataError::Io { .. }
                    | DataError::UnknownFormat { .. }
                    | DataError::Malformed { .. } => "path",
                    DataError::TooLarge { limit, .. } => {
                        return Self::ResourceExhausted {
                            limit,
                            message: d.to_string(),
                        }
                    }
                    DataError::NotNumeric { .. }
                    | DataError::NoRows
                    | DataError::NoHeader
                    | DataError::NoColumns
                    | DataError::NotFinite { .. }
                    | DataError::Shape { .. } => "rows",
                };
                Self::invalid(field, d.to_string())
            }
            Error::Segmentation(s) => {
                let field = match &s {
                    SegmentationError::BadRow { .. }
                    | SegmentationError::TooManyBadRows { .. }
                    | SegmentationError::OnlyFutureLines { .. }
                    | SegmentationError::AmbiguousDates { .. } => {
                        // Job records never quote a cell of the log.
                        return Self::invalid("transactions", s.without_values());
                    }
                    SegmentationError::NoCustomers { .. } | SegmentationError::NoTransactions => {
                        "transactions"
                    }
                    SegmentationError::BadMaxBadRows(_) => "max_bad_rows",
                    SegmentationError::BadMinShare(_) => "min_share",
                    SegmentationError::BadFeatures(_)
                    | SegmentationError::FeaturesMismatch { .. } => "features",
                    SegmentationError::BasisMismatch { .. } => "columns.order",
                    SegmentationError::AllAlike { .. } => "features",
                    SegmentationError::TooFewCustomers { .. }
                    | SegmentationError::FewProfiles { .. }
                    | SegmentationError::BadKRange(_)
                    | SegmentationError::KMismatch { .. } => "k",
                    SegmentationError::BadDate(_) => "as_of",
                    SegmentationError::BadPercentile(_) => "outlier_percentile",
                    SegmentationError::PreviousModel { .. }
                    | SegmentationError::PreviousWithoutCustomers => "previous_model_id",
                    SegmentationError::Output { .. } => return Self::Internal(s.to_string()),
                };
                Self::invalid(field, s.to_string())
            }
            Error::Backend(BackendError::Gpu(g)) => match g {
                GpuError::OutOfMemory(_) | GpuError::NotSupported(_) => Self::ResourceExhausted {
                    limit: "GPU memory",
                    message: g.to_string(),
                },
                GpuError::NoAdapter
                | GpuError::NoHardwareAdapter
                | GpuError::RequestDevice(_)
                | GpuError::DeviceLost(_) => Self::Unavailable(g.to_string()),
                GpuError::Other(_) => Self::Internal(g.to_string()),
            },
            Error::Value(v) => {
                let field = match &v {
                    ValueError::NoRepeatCustomers | ValueError::NoCustomers => "transactions",
                    ValueError::BadCustomer { .. } => "customers",
                    ValueError::Invalid { field, .. } => field,
                    ValueError::NotConverged { .. } | ValueError::InfiniteSpend { .. } => {
                        return Self::FailedPrecondition(v.to_string())
                    }
                    ValueError::Hyp2f1(_) => return Self::Internal(v.to_string()),
                    ValueError::Cancelled => return Self::Cancelled,
                };
                Self::invalid(field, v.to_string())
            }
            Error::Experiment(x) => {
                let field = match &x {
                    ExperimentError::Io { .. } | ExperimentError::NotCsv { .. } => "path",
                    ExperimentError::NoOutcomes { .. } => "outcomes",
                    ExperimentError::MissingColumn { .. }
                    | ExperimentError::RepeatedColumn { .. }
                    | ExperimentError::BadValue { .. }
                    | ExperimentError::DuplicateId { .. }
                    | ExperimentError::EmptyGroup(_) => "rows",
                    ExperimentError::Groups(_) => "holdout_share",
                };
                Self::invalid(field, x.to_string())
            }
            Error::Backend(BackendError::Cancelled) | Error::Cancelled => Self::Cancelled,
            Error::Backend(
                e @ (BackendError::RowRange { .. }
                | BackendError::Unsupported(_)
                | BackendError::SeedNotStarted
                | BackendError::Shape { .. }),
            ) => Self::Internal(e.to_string()),
        }
    }
}

/// Longest status message sent: error texts can quote client input (column
/// names, paths), and a status must never echo megabytes back.
const MAX_MESSAGE_BYTES: usize = 1024;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("… (truncated)");
    }
    message
}

impl ServiceError {
    /// The gRPC code of this error: of a call's status, and of a failed
    /// job's record (`Job.error_code`).
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
            ServiceError::NotFound { .. } | ServiceError::NotFoundIn { .. } => Code::NotFound,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Cancelled => Code::Cancelled,
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::DataLoss(_) => Code::DataLoss,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = bounded(e.to_string());
        let code = e.code();
        match e {
            ServiceError::InvalidArgument {
                field,
                message: why,
            } => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_bad_request_violation(field, bounded(why)),
            ),
            _ => Status::new(code, message),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
