//! The wgpu backend: WGSL kernels in `shaders/`, one self-contained module
//! with one file per concept.
//!
//! A [`GpuBackend`] owns one device and its pipelines (built once). Uploading
//! a matrix splits it into chunks that each fit one storage binding; every
//! kernel then runs chunk by chunk inside one command encoder.

mod buffers;
mod context;
mod params;
mod peak;
mod pipelines;
mod resident;

use std::sync::Arc;

use ndarray::{ArrayView1, ArrayView2};

pub use context::AdapterPolicy;
pub use pipelines::Kernel;

use super::{Backend, BackendError, BackendInfo, BackendKind, GpuError, Resident};
use context::GpuContext;
use pipelines::Pipelines;

/// Tuning knobs, mainly so tests can force several chunks on small data.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Upper bound on rows per chunk (default: what fits one storage binding).
    pub max_chunk_rows: Option<usize>,
    /// Upper bound on workgroups per dispatch dimension (default: the
    /// device's, 65,535); small values force the 2-D dispatch path.
    pub max_workgroups_per_dim: Option<u32>,
}

/// The GPU backend. Cheap to clone; clones share the device.
///
/// Submissions from several threads are serialised by wgpu's queue; each
/// fit's resident data is its own.
#[derive(Clone)]
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    pipelines: Arc<Pipelines>,
    options: GpuOptions,
}

impl GpuBackend {
    pub fn new(policy: AdapterPolicy) -> Result<Self, GpuError> {
        Self::with_options(policy, GpuOptions::default())
    }

    pub fn with_options(policy: AdapterPolicy, options: GpuOptions) -> Result<Self, GpuError> {
        let ctx = GpuContext::new(policy)?;
        let pipelines = Pipelines::new(&ctx);
        ctx.wait()?;
        Ok(Self {
            ctx: Arc::new(ctx),
            pipelines: Arc::new(pipelines),
            options,
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_name
    }

    /// A discrete or integrated GPU (not a software rasteriser).
    pub fn is_hardware(&self) -> bool {
        matches!(
            self.ctx.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
        )
    }

    /// Whether Lloyd steps are timed on the device (timestamp queries).
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamp_period_ns.is_some()
    }

    /// Rows per chunk for width `d`: one chunk must fit one storage binding.
    fn chunk_rows(&self, d: usize) -> usize {
        let fit = (self.ctx.max_binding_bytes() / (4 * d.max(1)) as u64) as usize;
        let rows = self.options.max_chunk_rows.map_or(fit, |m| m.min(fit));
        rows.max(1)
    }

    fn max_workgroups_per_dim(&self) -> u32 {
        let device = self.ctx.limits.max_compute_workgroups_per_dimension;
        self.options
            .max_workgroups_per_dim
            .map_or(device, |m| m.min(device))
            .max(1)
    }

    /// Partial-sum buffers hold at most this many f32 (and one binding).
    fn partials_budget(&self) -> usize {
        ((self.ctx.max_binding_bytes() / 4) as usize).min(32 << 20)
    }
}

impl Backend for GpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BackendKind::Gpu,
            adapter: self.ctx.adapter_name.clone(),
        }
    }

    fn upload<'a>(
        &'a self,
        x: ArrayView2<'a, f32>,
        weights: Option<ArrayView1<'a, f32>>,
    ) -> Result<Box<dyn Resident + 'a>, BackendError> {
        Ok(Box::new(resident::GpuResident::upload(self, x, weights)?))
    }
}
