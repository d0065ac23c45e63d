//! One handler per gRPC service: validate → convert → call the engine → convert back.

mod clustering;
mod datasets;
mod decomposition;
mod jobs;
mod models;
mod privacy;
mod resume;
mod segmentations;
mod server_info;
mod value;

pub use clustering::ClusteringService;
pub use datasets::DatasetsService;
pub use decomposition::DecompositionService;
pub use jobs::JobsService;
pub use models::ModelsService;
pub use privacy::PrivacyService;
pub use resume::resume_jobs;
pub use segmentations::SegmentationsService;
pub use server_info::ServerService;

use std::time::Duration;

use tonic::Streaming;

use super::error::ServiceError;

/// Page size when a list request gives none, and the largest allowed.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// A list request's page: how many items, and after which id.
struct PageRequest {
    size: usize,
    after: Option<String>,
}

/// `kinds`: the id prefixes of the listed objects (`ds`, `km`, …).
fn page_request(size: u32, token: String, kinds: &[&str]) -> Result<PageRequest, ServiceError> {
    let size = match size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    // Tokens are the last id of the previous page: an id of the listed
    // kind, whether or not that object still exists.
    let valid = token.is_empty() || super::storage::is_id_of(kinds, &token);
    if !valid {
        return Err(ServiceError::invalid(
            "page_token",
            "not a token from a previous response",
        ));
    }
    Ok(PageRequest {
        size,
        after: (!token.is_empty()).then_some(token),
    })
}

/// Takes items (sorted by id) after the page's token until the page is full
/// or the next item would take the encoded page past `budget` bytes (a page
/// holds at least one item). Returns the page and the next page's token.
fn paginate<T: prost::Message>(
    items: impl IntoIterator<Item = (String, T)>,
    page: &PageRequest,
    budget: usize,
) -> (Vec<T>, String) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = String::new();
    let mut items = items
        .into_iter()
        .filter(|(id, _)| page.after.as_ref().is_none_or(|a| id > a))
        .peekable();
    while let Some((id, item)) = items.next_if(|(_, item)| {
        out.is_empty() || (out.len() < page.size && bytes + item.encoded_len() + 8 <= budget)
    }) {
        bytes += item.encoded_len() + 8;
        out.push(item);
        last = id;
    }
    let next = if items.peek().is_some() {
        last
    } else {
        String::new()
    };
    (out, next)
}

/// The next message of an upload stream, or an error once it has been idle
/// for `idle` (the caller's writer is dropped, which removes its files).
async fn next_message<T>(
    stream: &mut Streaming<T>,
    idle: Duration,
) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(m) => m,
        Err(_) => Err(ServiceError::DeadlineExceeded(format!(
            "the upload sent nothing for {} s (the server's idle timeout); nothing was stored",
            idle.as_secs_f64()
        ))
        .into()),
    }
}

/// Refuses an upload header that does not say how much follows: tonic ends
/// a client stream the client cancelled (RST_STREAM) as if it had finished,
/// so only the declared count tells a truncated upload from a whole one.
fn require_declared(field: &str, unit: &str, declared: u64) -> Result<(), tonic::Status> {
    if declared == 0 {
        return Err(ServiceError::invalid(
            field,
            format!(
                "required: the number of {unit} that follow (an empty upload is refused \
                 anyway), so that a stream cut short or cancelled is never stored as if whole"
            ),
        )
        .into());
    }
    Ok(())
}

/// Refuses an upload that ended with another size than its header
/// declared (see [`require_declared`]).
fn check_declared(
    field: &str,
    unit: &str,
    declared: u64,
    received: u64,
) -> Result<(), tonic::Status> {
    if declared != received {
        return Err(ServiceError::invalid(
            field,
            format!(
                "the header declared {declared} {unit} and the upload ended after {received} \
                 (cancelled or cut short?); nothing was stored"
            ),
        )
        .into());
    }
    Ok(())
}

/// The slowest average an upload stream may keep up once it has run past
/// the idle timeout, in bytes per second: a trickle (a few bytes now and
/// then, each resetting the idle timer) would otherwise hold an upload
/// slot for ever.
const MIN_UPLOAD_RATE: f64 = 64.0 * 1024.0;

/// Watches an upload stream's average rate (see [`MIN_UPLOAD_RATE`]).
struct UploadPace {
    started: std::time::Instant,
    idle: Duration,
}

impl UploadPace {
    fn new(idle: Duration) -> Self {
        Self {
            started: std::time::Instant::now(),
            idle,
        }
    }

    /// An error once past the idle timeout with fewer than
    /// `MIN_UPLOAD_RATE` bytes a second received on average.
    fn check(&self, received: u64) -> Result<(), tonic::Status> {
        let elapsed = self.started.elapsed();
        let rate = received as f64 / elapsed.as_secs_f64().max(1e-9);
        if elapsed > self.idle && rate < MIN_UPLOAD_RATE {
            return Err(ServiceError::DeadlineExceeded(format!(
                "the upload averaged {rate:.0} bytes/s, under the server's minimum of \
                 {MIN_UPLOAD_RATE} bytes/s; nothing was stored"
            ))
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_the_count_or_the_byte_budget() {
        let id = |i: usize| format!("ds-{i:032x}");
        let items = |n: usize| {
            (0..n).map(move |i| {
                (
                    id(i),
                    super::super::proto::GetDatasetRequest {
                        id: "x".repeat(100),
                    },
                )
            })
        };
        let ds = &["ds"];
        let page = page_request(3, String::new(), ds).unwrap();
        let (got, next) = paginate(items(10), &page, 1 << 20);
        assert_eq!((got.len(), next.clone()), (3, id(2)));
        let page = page_request(3, next, ds).unwrap();
        let (got, next) = paginate(items(10), &page, 1 << 20);
        assert_eq!((got.len(), next), (3, id(5)));
        let page = page_request(100, String::new(), ds).unwrap();
        let (got, next) = paginate(items(10), &page, 250);
        assert_eq!((got.len(), next), (2, id(1)));
        let (got, next) = paginate(items(10), &page, 10);
        assert_eq!(got.len(), 1, "a page holds at least one item");
        assert_eq!(next, id(0));
        let (got, next) = paginate(items(2), &page, 1 << 20);
        assert_eq!((got.len(), next.as_str()), (2, ""));
        // Only an id of the listed kind is a token.
        let upper = format!("ds-{:032X}", 0xabc);
        for bad in ["../x", "garbage", "AAAA", "ds-", "ds-123", &upper] {
            assert!(page_request(1, bad.into(), ds).is_err(), "{bad}");
        }
        assert!(page_request(1, format!("km-{:032x}", 7), ds).is_err());
        assert!(page_request(1, format!("km-{:032x}", 7), &["km", "pca"]).is_ok());
    }
}
