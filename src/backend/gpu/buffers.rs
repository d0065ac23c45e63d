//! Buffer helpers: labelled allocation under an out-of-memory error scope,
//! uniforms, and the one typed read-back.

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::context::GpuContext;
use crate::backend::GpuError;

pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Allocates (and fills, if `contents` is given) a storage buffer; an
/// allocation failure is an `Err`, not a panic.
pub fn storage(
    ctx: &GpuContext,
    label: &str,
    size_bytes: u64,
    contents: Option<&[u8]>,
) -> Result<wgpu::Buffer, GpuError> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    // wgpu rejects zero-sized bindings; keep at least one element.
    let size = size_bytes.max(4);
    let buffer = match contents {
        Some(data) if !data.is_empty() => {
            ctx.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: data,
                    usage: STORAGE,
                })
        }
        _ => ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        }),
    };
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::OutOfMemory(format!(
            "{label} ({size} bytes): {e}"
        )));
    }
    ctx.check()?;
    Ok(buffer)
}

pub fn uniform<T: Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
}

/// Copies `count` values of `T` from `src` (at `offset` bytes) to the host,
/// after everything already submitted. Blocks.
pub fn read_back<T: Pod>(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<T>, GpuError> {
    read_back_after(ctx, None, src, offset, count)
}

/// As [`read_back`], first submitting `encoder` with the copy appended, so a
/// kernel chain and its read-back go in one submission.
pub fn read_back_after<T: Pod>(
    ctx: &GpuContext,
    encoder: Option<wgpu::CommandEncoder>,
    src: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<T>, GpuError> {
    let bytes = (count * std::mem::size_of::<T>()) as u64;
    let mut encoder = encoder.unwrap_or_else(|| {
        ctx.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read back"),
            })
    });
    if bytes == 0 {
        ctx.queue.submit([encoder.finish()]);
        ctx.wait()?;
        return Ok(Vec::new());
    }
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
    ctx.queue.submit([encoder.finish()]);
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    rx.recv()
        .map_err(|_| GpuError::DeviceLost("read-back never completed".into()))?
        .map_err(|e| GpuError::Other(format!("mapping a read-back buffer: {e}")))?;
    let view = slice
        .get_mapped_range()
        .map_err(|e| GpuError::Other(format!("mapped range: {e}")))?;
    let out = bytemuck::cast_slice::<u8, T>(&view).to_vec();
    drop(view);
    staging.unmap();
    Ok(out)
}

/// A 1-D count of workgroups as a 2-D grid: at most `max_per_dim` along x
/// (65,535 in WebGPU; tests force less), the rest along y. Shaders index
/// groups as `x + y · nx` and skip the overshoot.
pub fn grid(groups: u32, max_per_dim: u32) -> (u32, u32) {
    if groups <= max_per_dim {
        (groups.max(1), 1)
    } else {
        (max_per_dim, groups.div_ceil(max_per_dim))
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_covers_every_group_within_the_limit() {
        for (groups, max) in [
            (1, 65_535),
            (65_535, 65_535),
            (65_536, 65_535),
            (1_000_000, 65_535),
            (10, 3),
        ] {
            let (x, y) = grid(groups, max);
            assert!(x <= max && y <= 65_535);
            assert!(
                x * y >= groups && x * (y - 1) < groups,
                "{groups}: {x} × {y}"
            );
        }
    }
}
