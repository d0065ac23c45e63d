//! Compute pipelines, built once per device with explicit bind-group layouts.

use super::context::GpuContext;

/// The WGSL kernels, one entry point (`main`) per file in `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Assign,
    Accumulate,
    Reduce,
    ColSums,
    Gram,
    Project,
    Peak,
    SeedScore,
    SeedKeep,
    SeedPick,
    SeedSample,
}

/// Binding kinds in binding order: `R` read-only storage, `W` read-write
/// storage, `U` uniform.
#[derive(Clone, Copy)]
enum Slot {
    R,
    W,
    U,
}

impl Kernel {
    pub const ALL: [Kernel; 11] = [
        Kernel::Assign,
        Kernel::Accumulate,
        Kernel::Reduce,
        Kernel::ColSums,
        Kernel::Gram,
        Kernel::Project,
        Kernel::Peak,
        Kernel::SeedScore,
        Kernel::SeedKeep,
        Kernel::SeedPick,
        Kernel::SeedSample,
    ];

    pub fn source(self) -> &'static str {
        match self {
            Kernel::Assign => include_str!("../../../shaders/assign.wgsl"),
            Kernel::Accumulate => include_str!("../../../shaders/accumulate.wgsl"),
            Kernel::Reduce => include_str!("../../../shaders/reduce.wgsl"),
            Kernel::ColSums => include_str!("../../../shaders/colsums.wgsl"),
            Kernel::Gram => include_str!("../../../shaders/gram.wgsl"),
            Kernel::Project => include_str!("../../../shaders/project.wgsl"),
            Kernel::Peak => include_str!("../../../shaders/peak.wgsl"),
            Kernel::SeedScore => include_str!("../../../shaders/seed_score.wgsl"),
            Kernel::SeedKeep => include_str!("../../../shaders/seed_keep.wgsl"),
            Kernel::SeedPick => include_str!("../../../shaders/seed_pick.wgsl"),
            Kernel::SeedSample => include_str!("../../../shaders/seed_sample.wgsl"),
        }
    }

    fn slots(self) -> &'static [Slot] {
        use Slot::*;
        match self {
            Kernel::Assign => &[R, R, R, W, W, W, U],
            Kernel::Accumulate => &[R, R, R, R, W, U],
            Kernel::Reduce => &[R, W, U],
            Kernel::ColSums => &[R, R, W, U],
            Kernel::Gram => &[R, R, W, U],
            Kernel::Project => &[R, R, R, W, U],
            Kernel::Peak => &[W, U],
            Kernel::SeedScore => &[R, R, R, R, W, U],
            Kernel::SeedKeep => &[R, R, R, R, W, W, U],
            Kernel::SeedPick => &[R, R, R, W, U],
            Kernel::SeedSample => &[R, R, W, U],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kernel::Assign => "assign",
            Kernel::Accumulate => "accumulate",
            Kernel::Reduce => "reduce",
            Kernel::ColSums => "colsums",
            Kernel::Gram => "gram",
            Kernel::Project => "project",
            Kernel::Peak => "peak",
            Kernel::SeedScore => "seed score",
            Kernel::SeedKeep => "seed keep",
            Kernel::SeedPick => "seed pick",
            Kernel::SeedSample => "seed sample",
        }
    }
}

pub struct Pipeline {
    pub layout: wgpu::BindGroupLayout,
    pub pipeline: wgpu::ComputePipeline,
}

/// Every kernel's pipeline, indexed by [`Kernel`].
pub struct Pipelines {
    pipelines: Vec<Pipeline>,
}

impl Pipelines {
    pub fn new(ctx: &GpuContext) -> Self {
        let pipelines = Kernel::ALL.iter().map(|&k| build(ctx, k)).collect();
        Self { pipelines }
    }

    pub fn get(&self, kernel: Kernel) -> &Pipeline {
        &self.pipelines[kernel as usize]
    }

    /// A bind group for `kernel` with `buffers` in binding order.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        kernel: Kernel,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.label()),
            layout: &self.get(kernel).layout,
            entries: &entries,
        })
    }
}

fn build(ctx: &GpuContext, kernel: Kernel) -> Pipeline {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .slots()
        .iter()
        .enumerate()
        .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match slot {
                Slot::U => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::R | Slot::W => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(slot, Slot::R),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    let label = Some(kernel.label());
    let layout = ctx
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label,
            entries: &entries,
        });
    let pipeline_layout = ctx
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
    let module = ctx
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label,
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
    let pipeline = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label,
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    Pipeline { layout, pipeline }
}
