//! One handler per gRPC service: validate → convert → call the engine → convert back.

mod clustering;
mod datasets;
mod decomposition;
mod jobs;
mod models;
mod segmentations;
mod server_info;

pub use clustering::ClusteringService;
pub use datasets::DatasetsService;
pub use decomposition::DecompositionService;
pub use jobs::JobsService;
pub use models::ModelsService;
pub use segmentations::SegmentationsService;
pub use server_info::ServerService;
