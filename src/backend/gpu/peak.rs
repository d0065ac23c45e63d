//! The device's measured f32 throughput, the ceiling that `segmenta bench`
//! reports "% of peak" against (as it does for the CPU with a GEMM).

use std::time::Instant;

use super::buffers::{storage, uniform};
use super::params::PeakParams;
use super::pipelines::Kernel;
use super::GpuBackend;
use crate::backend::GpuError;

/// Workgroups of 256 invocations: enough to fill a large GPU.
const GROUPS: u32 = 4096;
/// FLOP per invocation per loop trip (16 FMAs).
const FLOP_PER_TRIP: f64 = 32.0;

impl GpuBackend {
    /// GFLOP/s of independent FMA chains over the whole device, best of
    /// three runs of at least 20 ms (the loop count doubles until a run is
    /// that long, so a software rasteriser and an H100 both finish quickly).
    pub fn peak_gflops(&self) -> Result<f64, GpuError> {
        let ctx = &self.ctx;
        let invocations = GROUPS as usize * 256;
        let sink = storage(ctx, "peak sink", 4 * invocations as u64, None)?;
        let mut iters = 1u32;
        loop {
            let params = uniform(ctx, "peak params", &PeakParams::new(iters));
            let bind = self.pipelines.bind(ctx, Kernel::Peak, &[&sink, &params]);
            let run = || -> Result<f64, GpuError> {
                let mut encoder =
                    ctx.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("peak"),
                        });
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("peak"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&self.pipelines.get(Kernel::Peak).pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    pass.dispatch_workgroups(GROUPS, 1, 1);
                }
                let t = Instant::now();
                ctx.queue.submit([encoder.finish()]);
                ctx.wait()?;
                Ok(t.elapsed().as_secs_f64())
            };
            let first = run()?;
            if first >= 0.02 || iters >= 1 << 22 {
                let best = [first, run()?, run()?]
                    .into_iter()
                    .fold(f64::INFINITY, f64::min);
                let flop = invocations as f64 * iters as f64 * FLOP_PER_TRIP;
                return Ok(flop / best / 1e9);
            }
            iters *= 2;
        }
    }
}
