//! A matrix resident on the GPU, chunked to fit storage bindings, and the
//! kernel chains that run on it.

use bytemuck::Pod;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::buffers::{grid, read_back, read_back_after, storage, uniform};
use super::params::*;
use super::pipelines::Kernel;
use super::GpuBackend;
use crate::backend::{Assignment, BackendError, ClusterSums, ColumnSums, GpuError, Resident};

/// Values at or above this in `second_dists` mean "no second centroid" (k = 1).
const BIG: f32 = 3.0e38;

/// Rows `start..start + rows` of the matrix, with their per-row outputs.
struct Chunk {
    start: usize,
    rows: usize,
    x: wgpu::Buffer,
    weights: wgpu::Buffer,
    labels: wgpu::Buffer,
    dists: wgpu::Buffer,
    second: wgpu::Buffer,
}

/// Buffers and bind groups that depend on k; rebuilt when k changes.
struct Clusters {
    k: usize,
    centroids: wgpu::Buffer,
    norms: wgpu::Buffer,
    totals: wgpu::Buffer,
    assign: Vec<wgpu::BindGroup>,
    accumulate: Vec<(wgpu::BindGroup, u32)>,
    reduce: wgpu::BindGroup,
}

pub struct GpuResident<'a> {
    gpu: &'a GpuBackend,
    n: usize,
    d: usize,
    pivot: Vec<f32>,
    chunks: Vec<Chunk>,
    clusters: Option<Clusters>,
    /// Set up on the first Lloyd step when the device has timestamps.
    timer: Option<Timer>,
}

/// Two timestamps around a Lloyd step's kernels, resolved on the device and
/// read only when asked for.
struct Timer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    period_ns: f32,
}

fn bytes_of_rows<T: Pod>(values: &[T]) -> Option<&[u8]> {
    Some(bytemuck::cast_slice(values))
}

/// Segment length so that `segments × width` partials fit `budget` values.
fn segment_rows(n: usize, width: usize, budget: usize) -> usize {
    (n * width).div_ceil(budget.max(1)).max(256)
}

impl<'a> GpuResident<'a> {
    pub fn upload(
        gpu: &'a GpuBackend,
        x: ArrayView2<f32>,
        weights: Option<ArrayView1<f32>>,
    ) -> Result<Self, GpuError> {
        let (n, d) = x.dim();
        let x = x.as_standard_layout();
        let per_chunk = gpu.chunk_rows(d);
        let mut chunks = Vec::new();
        for (i, block) in x.axis_chunks_iter(Axis(0), per_chunk).enumerate() {
            let start = i * per_chunk;
            let rows = block.nrows();
            let ctx = &gpu.ctx;
            let w: Vec<f32> = match &weights {
                Some(w) => w.slice(ndarray::s![start..start + rows]).to_vec(),
                None => vec![1.0; rows],
            };
            let label = |what: &str| format!("{what} [{start}..{}]", start + rows);
            let row_bytes = 4 * rows as u64;
            chunks.push(Chunk {
                start,
                rows,
                x: storage(
                    ctx,
                    &label("x"),
                    row_bytes * d as u64,
                    bytes_of_rows(block.as_slice().expect("standard layout")),
                )?,
                weights: storage(ctx, &label("weights"), row_bytes, bytes_of_rows(&w))?,
                labels: storage(ctx, &label("labels"), row_bytes, None)?,
                dists: storage(ctx, &label("dists"), row_bytes, None)?,
                second: storage(ctx, &label("second"), row_bytes, None)?,
            });
        }
        Ok(Self {
            gpu,
            n,
            d,
            pivot: x.row(0).to_vec(),
            chunks,
            clusters: None,
            timer: None,
        })
    }

    /// Writes timestamp `index` (0: start, 1: end) from an empty compute
    /// pass, so the pair brackets every kernel recorded in between. Does
    /// nothing without timestamp support.
    fn timestamp(&mut self, encoder: &mut wgpu::CommandEncoder, index: u32) {
        let Some(period_ns) = self.gpu.ctx.timestamp_period_ns else {
            return;
        };
        let device = &self.gpu.ctx.device;
        let timer = self.timer.get_or_insert_with(|| Timer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("step timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("resolved timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period_ns,
        });
        let writes = wgpu::ComputePassTimestampWrites {
            query_set: &timer.queries,
            beginning_of_pass_write_index: (index == 0).then_some(0),
            end_of_pass_write_index: (index == 1).then_some(1),
        };
        drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timestamp"),
            timestamp_writes: Some(writes),
        }));
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.gpu
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        bind: &wgpu::BindGroup,
        groups: u32,
    ) {
        let pipeline = self.gpu.pipelines.get(kernel);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, bind, &[]);
        let (gx, gy) = grid(groups, self.gpu.max_workgroups_per_dim());
        pass.dispatch_workgroups(gx, gy, 1);
    }

    /// Adds the `segments × width` partials in one pass into `width` totals.
    fn reduce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        partials: &wgpu::Buffer,
        totals: &wgpu::Buffer,
        segments: usize,
        width: usize,
    ) -> wgpu::BindGroup {
        let params = uniform(
            &self.gpu.ctx,
            "reduce params",
            &ReduceParams {
                segments: segments as u32,
                width: width as u32,
                _pad: [0; 2],
            },
        );
        let bind =
            self.gpu
                .pipelines
                .bind(&self.gpu.ctx, Kernel::Reduce, &[partials, totals, &params]);
        self.dispatch(encoder, Kernel::Reduce, &bind, width.div_ceil(256) as u32);
        bind
    }

    /// Builds (or reuses) the buffers that depend on k.
    fn clusters(&mut self, k: usize) -> Result<&Clusters, GpuError> {
        if self.clusters.as_ref().is_some_and(|c| c.k == k) {
            return Ok(self.clusters.as_ref().expect("checked"));
        }
        let (ctx, pipes) = (&self.gpu.ctx, &self.gpu.pipelines);
        let (d, width) = (self.d, k * (self.d + 2));
        let seg_rows = segment_rows(self.n, width, self.gpu.partials_budget());
        let segments: usize = self.chunks.iter().map(|c| c.rows.div_ceil(seg_rows)).sum();
        let centroids = storage(ctx, "centroids", (4 * k * d) as u64, None)?;
        let norms = storage(ctx, "centroid norms", (4 * k) as u64, None)?;
        let partials = storage(ctx, "cluster partials", (4 * segments * width) as u64, None)?;
        let totals = storage(ctx, "cluster totals", (4 * width) as u64, None)?;
        let mut assign = Vec::new();
        let mut accumulate = Vec::new();
        let mut seg_offset = 0;
        for c in &self.chunks {
            let p = uniform(
                ctx,
                "assign params",
                &AssignParams {
                    rows: c.rows as u32,
                    d: d as u32,
                    k: k as u32,
                    _pad: 0,
                },
            );
            assign.push(pipes.bind(
                ctx,
                Kernel::Assign,
                &[&c.x, &centroids, &norms, &c.labels, &c.dists, &c.second, &p],
            ));
            let chunk_segments = c.rows.div_ceil(seg_rows);
            let p = uniform(
                ctx,
                "accumulate params",
                &AccumulateParams {
                    rows: c.rows as u32,
                    d: d as u32,
                    k: k as u32,
                    seg_rows: seg_rows as u32,
                    seg_offset: seg_offset as u32,
                    _pad: [0; 3],
                },
            );
            let bind = pipes.bind(
                ctx,
                Kernel::Accumulate,
                &[&c.x, &c.labels, &c.dists, &c.weights, &partials, &p],
            );
            accumulate.push((bind, chunk_segments as u32));
            seg_offset += chunk_segments;
        }
        let p = uniform(
            ctx,
            "reduce params",
            &ReduceParams {
                segments: segments as u32,
                width: width as u32,
                _pad: [0; 2],
            },
        );
        let reduce = pipes.bind(ctx, Kernel::Reduce, &[&partials, &totals, &p]);
        self.clusters = Some(Clusters {
            k,
            centroids,
            norms,
            totals,
            assign,
            accumulate,
            reduce,
        });
        Ok(self.clusters.as_ref().expect("just set"))
    }

    fn record_assign(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        centroids: ArrayView2<f32>,
    ) -> Result<(), GpuError> {
        let k = centroids.nrows();
        let centroids = centroids.as_standard_layout();
        // Same f32 sums, in the same order, as the CPU kernel's norms.
        let norms: Vec<f32> = centroids
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| v * v).sum())
            .collect();
        self.clusters(k)?;
        let cl = self.clusters.as_ref().expect("built above");
        let q = &self.gpu.ctx.queue;
        q.write_buffer(
            &cl.centroids,
            0,
            bytemuck::cast_slice(centroids.as_slice().expect("standard layout")),
        );
        q.write_buffer(&cl.norms, 0, bytemuck::cast_slice(&norms));
        for (chunk, bind) in self.chunks.iter().zip(&cl.assign) {
            self.dispatch(
                encoder,
                Kernel::Assign,
                bind,
                chunk.rows.div_ceil(256) as u32,
            );
        }
        Ok(())
    }

    fn record_accumulate(&self, encoder: &mut wgpu::CommandEncoder) -> Result<(), GpuError> {
        let cl = self
            .clusters
            .as_ref()
            .ok_or_else(|| GpuError::Other("accumulate before assign".into()))?;
        for (bind, segments) in &cl.accumulate {
            self.dispatch(encoder, Kernel::Accumulate, bind, *segments);
        }
        let width = cl.k * (self.d + 2);
        self.dispatch(
            encoder,
            Kernel::Reduce,
            &cl.reduce,
            width.div_ceil(256) as u32,
        );
        Ok(())
    }

    /// Submits `encoder` and reads the k × (d + 2) totals.
    fn finish_accumulate(&self, encoder: wgpu::CommandEncoder) -> Result<ClusterSums, GpuError> {
        let cl = self.clusters.as_ref().expect("recorded before");
        let (k, d) = (cl.k, self.d);
        let totals: Vec<f32> =
            read_back_after(&self.gpu.ctx, Some(encoder), &cl.totals, 0, k * (d + 2))?;
        let mut sums = Array2::<f64>::zeros((k, d));
        let mut weights = vec![0.0; k];
        let mut inertia = 0.0;
        for (c, row) in totals.chunks_exact(d + 2).enumerate() {
            for (s, &v) in sums.row_mut(c).iter_mut().zip(&row[..d]) {
                *s = v as f64;
            }
            weights[c] = row[d] as f64;
            inertia += row[d + 1] as f64;
        }
        Ok(ClusterSums {
            sums,
            weights,
            inertia,
        })
    }

    fn read_rows<T: Pod>(
        &self,
        pick: impl Fn(&Chunk) -> &wgpu::Buffer,
    ) -> Result<Vec<T>, GpuError> {
        let mut out = Vec::with_capacity(self.n);
        for c in &self.chunks {
            out.extend(read_back::<T>(&self.gpu.ctx, pick(c), 0, c.rows)?);
        }
        Ok(out)
    }

    /// Runs a per-segment kernel over every chunk, reduces, reads `width` totals.
    fn segmented<P: Pod>(
        &self,
        kernel: Kernel,
        width: usize,
        groups_per_segment: usize,
        inputs: &[&wgpu::Buffer],
        params: impl Fn(&Chunk, usize, usize) -> P,
    ) -> Result<Vec<f32>, GpuError> {
        let ctx = &self.gpu.ctx;
        let seg_rows = segment_rows(self.n, width, self.gpu.partials_budget());
        let segments: usize = self.chunks.iter().map(|c| c.rows.div_ceil(seg_rows)).sum();
        let partials = storage(ctx, "partials", (4 * segments * width) as u64, None)?;
        let totals = storage(ctx, "totals", (4 * width) as u64, None)?;
        let mut encoder = self.encoder("segmented");
        let mut seg_offset = 0;
        let mut keep = Vec::new();
        for c in &self.chunks {
            let p = uniform(ctx, "params", &params(c, seg_rows, seg_offset));
            let mut buffers = vec![&c.x];
            buffers.extend_from_slice(inputs);
            buffers.extend([&partials, &p]);
            let bind = self.gpu.pipelines.bind(ctx, kernel, &buffers);
            let chunk_segments = c.rows.div_ceil(seg_rows);
            self.dispatch(
                &mut encoder,
                kernel,
                &bind,
                (chunk_segments * groups_per_segment) as u32,
            );
            seg_offset += chunk_segments;
            keep.push((bind, p));
        }
        let _reduce = self.reduce(&mut encoder, &partials, &totals, segments, width);
        read_back_after(ctx, Some(encoder), &totals, 0, width)
    }
}

impl Resident for GpuResident<'_> {
    fn n_rows(&self) -> usize {
        self.n
    }

    fn n_cols(&self) -> usize {
        self.d
    }

    fn assign(&mut self, centroids: ArrayView2<f32>) -> Result<Assignment, BackendError> {
        let k = centroids.nrows();
        let mut encoder = self.encoder("assign");
        self.record_assign(&mut encoder, centroids)?;
        self.gpu.ctx.queue.submit([encoder.finish()]);
        self.gpu.ctx.check()?;
        let mut second: Vec<f32> = self.read_rows(|c| &c.second)?;
        if k == 1 {
            second.fill(f32::INFINITY);
        } else {
            second
                .iter_mut()
                .filter(|v| **v >= BIG)
                .for_each(|v| *v = f32::INFINITY);
        }
        Ok(Assignment {
            labels: self.read_rows(|c| &c.labels)?,
            distances: self.read_rows(|c| &c.dists)?,
            second_distances: second,
        })
    }

    /// Assignment, partial sums and reduction in one submission; reads back
    /// only the `k × (d + 2)` totals.
    fn lloyd_step(&mut self, centroids: ArrayView2<f32>) -> Result<ClusterSums, BackendError> {
        let mut encoder = self.encoder("lloyd step");
        self.timestamp(&mut encoder, 0);
        self.record_assign(&mut encoder, centroids)?;
        self.record_accumulate(&mut encoder)?;
        self.timestamp(&mut encoder, 1);
        if let Some(t) = &self.timer {
            encoder.resolve_query_set(&t.queries, 0..2, &t.resolved, 0);
        }
        Ok(self.finish_accumulate(encoder)?)
    }

    fn last_step_device_ms(&mut self) -> Option<f64> {
        let t = self.timer.as_ref()?;
        let ticks: Vec<u64> = read_back(&self.gpu.ctx, &t.resolved, 0, 2).ok()?;
        let elapsed = ticks[1].checked_sub(ticks[0])?;
        Some(elapsed as f64 * t.period_ns as f64 * 1e-6)
    }

    fn column_sums(&mut self) -> Result<ColumnSums, BackendError> {
        let d = self.d;
        let pivot = storage(
            &self.gpu.ctx,
            "pivot",
            (4 * d) as u64,
            bytes_of_rows(&self.pivot),
        )?;
        let totals = self.segmented(
            Kernel::ColSums,
            2 * d,
            1,
            &[&pivot],
            |c, seg_rows, seg_offset| ColSumsParams {
                rows: c.rows as u32,
                d: d as u32,
                seg_rows: seg_rows as u32,
                seg_offset: seg_offset as u32,
            },
        )?;
        Ok(ColumnSums {
            n: self.n,
            pivot: self.pivot.clone(),
            sum: totals[..d].iter().map(|&v| v as f64).collect(),
            sum_sq: totals[d..].iter().map(|&v| v as f64).collect(),
        })
    }

    fn gram(&mut self, mean: &[f32]) -> Result<Array2<f64>, BackendError> {
        let d = self.d;
        let tiles = d.div_ceil(16);
        let mean = storage(&self.gpu.ctx, "mean", (4 * d) as u64, bytes_of_rows(mean))?;
        let totals = self.segmented(
            Kernel::Gram,
            d * d,
            tiles * tiles,
            &[&mean],
            |c, seg_rows, seg_offset| GramParams {
                rows: c.rows as u32,
                d: d as u32,
                seg_rows: seg_rows as u32,
                seg_offset: seg_offset as u32,
                tiles: tiles as u32,
                _pad: [0; 3],
            },
        )?;
        Ok(Array2::from_shape_fn((d, d), |(i, j)| {
            totals[i * d + j] as f64
        }))
    }

    fn project(
        &mut self,
        mean: &[f32],
        components: ArrayView2<f32>,
    ) -> Result<Array2<f32>, BackendError> {
        let (ctx, d, nc) = (&self.gpu.ctx, self.d, components.nrows());
        let components = components.as_standard_layout();
        let mean = storage(ctx, "mean", (4 * d) as u64, bytes_of_rows(mean))?;
        let comps = storage(
            ctx,
            "components",
            (4 * nc * d) as u64,
            bytes_of_rows(components.as_slice().expect("standard layout")),
        )?;
        let mut out = Array2::<f32>::zeros((self.n, nc));
        for c in &self.chunks {
            let y = storage(ctx, "projection", (4 * c.rows * nc) as u64, None)?;
            let p = uniform(
                ctx,
                "project params",
                &ProjectParams {
                    rows: c.rows as u32,
                    d: d as u32,
                    c: nc as u32,
                    _pad: 0,
                },
            );
            let bind =
                self.gpu
                    .pipelines
                    .bind(ctx, Kernel::Project, &[&c.x, &mean, &comps, &y, &p]);
            let mut encoder = self.encoder("project");
            self.dispatch(
                &mut encoder,
                Kernel::Project,
                &bind,
                (c.rows * nc).div_ceil(256) as u32,
            );
            let values: Vec<f32> = read_back_after(ctx, Some(encoder), &y, 0, c.rows * nc)?;
            out.slice_mut(ndarray::s![c.start..c.start + c.rows, ..])
                .assign(&ArrayView2::from_shape((c.rows, nc), &values).expect("rows × c values"));
        }
        Ok(out)
    }
}
