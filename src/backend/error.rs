/// GPU failures, typed so callers can decide whether a CPU retry makes sense.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GpuError {
    #[error("no GPU adapter found (install a Vulkan, Metal or DX12 driver; on Linux without a GPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers)")]
    NoAdapter,
    #[error("no hardware GPU adapter found")]
    NoHardwareAdapter,
    #[error("GPU device request failed: {0}")]
    RequestDevice(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU limit exceeded: {0}")]
    NotSupported(String),
    #[error("GPU error: {0}")]
    Other(String),
}

impl GpuError {
    /// Failures after which retrying the same work on the CPU is worthwhile.
    pub fn is_recoverable_on_cpu(&self) -> bool {
        matches!(
            self,
            Self::OutOfMemory(_) | Self::DeviceLost(_) | Self::NotSupported(_) | Self::Other(_)
        )
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BackendError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("the fit was cancelled")]
    Cancelled,
    /// A kernel called with rows the resident does not hold: a caller's
    /// bug, never the data's.
    #[error("rows {start}..{end} asked of a matrix of {n} rows")]
    RowRange { start: usize, end: usize, n: usize },
    /// A seeding kernel called before [`seed_start`](super::Resident::seed_start),
    /// or a trial kept that was not scored: a caller's bug.
    #[error("seeding kernel called out of order (seed_start first, seed_keep after seed_score)")]
    SeedNotStarted,
    /// Centres or trials of the wrong width or number: a caller's bug.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A kernel this backend does not implement (callers check first).
    #[error("this backend has no {0} kernel")]
    Unsupported(&'static str),
}
