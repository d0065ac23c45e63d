//! Getting a device: adapter choice, limits, and turning wgpu's asynchronous
//! errors into [`GpuError`] values instead of panics.

use std::sync::{Arc, Mutex};

use super::super::GpuError;

/// Which adapters a backend may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterPolicy {
    /// Discrete or integrated GPUs only (what `--backend auto` wants).
    HardwareOnly,
    /// Any adapter, software rasterisers such as lavapipe included.
    Any,
}

/// A device and queue, with the first error wgpu reported on them.
///
/// wgpu reports validation and out-of-memory errors asynchronously through a
/// handler, and device loss through a callback; both record into `fault`,
/// which every submission checks, so a failure becomes an `Err` for the fit
/// that caused it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_name: String,
    pub device_type: wgpu::DeviceType,
    pub limits: wgpu::Limits,
    /// Nanoseconds per timestamp tick, where the adapter supports timestamp
    /// queries (then requested on the device); `None` otherwise.
    pub timestamp_period_ns: Option<f32>,
    fault: Arc<Mutex<Option<GpuError>>>,
}

impl GpuContext {
    pub fn new(policy: AdapterPolicy) -> Result<Self, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            // GL has no usable compute path here; prefer Vulkan/Metal/DX12.
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let adapter = pick_adapter(adapters, policy)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("segmenta"),
            // Timestamps only time kernels; nothing depends on them.
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            // The adapter's own limits: the defaults cap buffers at 256 MiB.
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let fault = Arc::new(Mutex::new(None));
        let sink = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
                other => GpuError::Other(other.to_string()),
            };
            tracing::error!("{err}");
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(err);
        }));
        let sink = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                let err = GpuError::DeviceLost(message);
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(err);
            }
        });
        let timestamp_period_ns = timestamps.then(|| queue.get_timestamp_period());
        let adapter_name = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
        tracing::info!(adapter = %adapter_name, "GPU device ready");
        Ok(Self {
            device,
            queue,
            adapter_name,
            device_type: info.device_type,
            limits,
            timestamp_period_ns,
            fault,
        })
    }

    /// The first error recorded on the device, if any.
    pub fn check(&self) -> Result<(), GpuError> {
        match self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Largest buffer one binding may see, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Blocks until submitted work finishes, then reports any recorded error.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        self.check()
    }
}

/// Prefers discrete over integrated over virtual over software adapters.
fn pick_adapter(
    adapters: Vec<wgpu::Adapter>,
    policy: AdapterPolicy,
) -> Result<wgpu::Adapter, GpuError> {
    use wgpu::DeviceType::*;
    let rank = |t: wgpu::DeviceType| match t {
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Cpu => 3,
        Other => 4,
    };
    let usable = |a: &wgpu::Adapter| {
        let t = a.get_info().device_type;
        policy == AdapterPolicy::Any || matches!(t, DiscreteGpu | IntegratedGpu)
    };
    let any = !adapters.is_empty();
    adapters
        .into_iter()
        .filter(usable)
        .min_by_key(|a| rank(a.get_info().device_type))
        .ok_or(match (policy, any) {
            (AdapterPolicy::HardwareOnly, true) => GpuError::NoHardwareAdapter,
            _ => GpuError::NoAdapter,
        })
}
