use std::sync::Arc;

use super::cpu::CpuBackend;
use super::gpu::{AdapterPolicy, GpuBackend};
use super::{Backend, BackendError};

/// `--backend auto|gpu|cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A hardware GPU (discrete or integrated) if there is one, else the CPU.
    #[default]
    Auto,
    /// Any GPU adapter, software drivers included; an error if there is none.
    Gpu,
    /// The native multi-threaded CPU kernels.
    Cpu,
}

/// Builds the backend for `choice`. Under `auto`, a missing or failing GPU
/// quietly (at info level) gives the CPU backend.
pub fn select(choice: BackendChoice) -> Result<Arc<dyn Backend>, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(Arc::new(CpuBackend::new())),
        BackendChoice::Gpu => Ok(Arc::new(GpuBackend::new(AdapterPolicy::Any)?)),
        BackendChoice::Auto => match GpuBackend::new(AdapterPolicy::HardwareOnly) {
            Ok(gpu) => Ok(Arc::new(gpu)),
            Err(e) => {
                tracing::info!("no usable hardware GPU ({e}); using the CPU backend");
                Ok(Arc::new(CpuBackend::new()))
            }
        },
    }
}

/// Whether [`with_cpu_fallback`] may run its work a second time: only a
/// GPU under `auto` can fail over to the CPU. When it cannot, the work may
/// consume its input (a fit may scale the rows in place).
pub fn may_fall_back(choice: BackendChoice, primary: &dyn Backend) -> bool {
    choice == BackendChoice::Auto && primary.info().backend == super::BackendKind::Gpu
}

/// Runs `work` on `primary`; under `auto`, a recoverable GPU failure (device
/// lost, out of memory) retries the whole work on the CPU with a warning.
pub fn with_cpu_fallback<T>(
    choice: BackendChoice,
    primary: &dyn Backend,
    mut work: impl FnMut(&dyn Backend) -> crate::Result<T>,
) -> crate::Result<T> {
    match work(primary) {
        Err(crate::Error::Backend(BackendError::Gpu(e)))
            if choice == BackendChoice::Auto && e.is_recoverable_on_cpu() =>
        {
            tracing::warn!("GPU failed during the fit ({e}); falling back to the CPU");
            work(&CpuBackend::new())
        }
        other => other,
    }
}
