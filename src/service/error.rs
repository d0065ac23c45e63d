//! Service errors and the one place they become gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::backend::BackendError;
use crate::data::DataError;
use crate::segmentation::SegmentationError;
use crate::Error;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("limit {limit} exceeded: {message}")]
    ResourceExhausted {
        limit: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(e: std::io::Error) -> Self {
        Self::Internal(format!("storage: {e}"))
    }
}

impl From<Error> for ServiceError {
    fn from(e: Error) -> Self {
        match e {
            Error::Params(p) => Self::invalid(p.field(), p.to_string()),
            Error::Data(d) => {
                let field = match &d {
                    DataError::UnknownColumn { .. } | DataError::NonNumericColumn { .. } => {
                        "columns"
                    }
                    DataError::Io { .. }
                    | DataError::UnknownFormat { .. }
                    | DataError::Malformed { .. } => "path",
                    _ => "rows",
                };
                Self::invalid(field, d.to_string())
            }
            Error::Segmentation(s) => {
                let field = match &s {
                    SegmentationError::BadRow { .. } | SegmentationError::NoCustomers { .. } => {
                        "transactions"
                    }
                    SegmentationError::TooFewCustomers { .. }
                    | SegmentationError::BadKRange(_)
                    | SegmentationError::KMismatch { .. } => "k",
                    SegmentationError::BadDate(_) => "as_of",
                    SegmentationError::BadPercentile(_) => "outlier_percentile",
                    SegmentationError::PreviousModel { .. } => "previous_model_id",
                    SegmentationError::Output { .. } => return Self::Internal(s.to_string()),
                };
                Self::invalid(field, s.to_string())
            }
            Error::Backend(BackendError::Gpu(g)) => Self::Unavailable(g.to_string()),
            Error::Backend(BackendError::Cancelled) | Error::Cancelled => Self::Cancelled,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::InvalidArgument {
                field,
                message: why,
            } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, why),
            ),
            ServiceError::NotFound { .. } => Status::not_found(message),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(message),
            ServiceError::ResourceExhausted { .. } => Status::resource_exhausted(message),
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::Cancelled => Status::cancelled(message),
            ServiceError::Internal(_) => Status::internal(message),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
