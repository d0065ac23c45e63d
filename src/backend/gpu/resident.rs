//! A matrix resident on the GPU, chunked to fit storage bindings, and the
//! kernel chains that run on it.

use std::ops::Range;

use bytemuck::Pod;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::buffers::{grid, read_back, read_back_after, storage, uniform};
use super::params::*;
use super::pipelines::Kernel;
use super::GpuBackend;
use crate::backend::{
    check_rows, check_seed_trials, check_seed_width, Assignment, BackendError, ClusterSums,
    ColumnSums, GpuError, Potential, Resident, MAX_SEED_CANDIDATES,
};

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

/// Buffers that depend on k (rebuilt when k changes), sized for a step
/// over every row, and the bind groups of the last row range stepped.
struct Clusters {
    k: usize,
    centroids: wgpu::Buffer,
    norms: wgpu::Buffer,
    partials: wgpu::Buffer,
    totals: wgpu::Buffer,
    binds: Option<RangeBinds>,
}

/// A step's kernels over one row range: per chunk part, a bind group and
/// its workgroup count.
struct RangeBinds {
    rows: Range<usize>,
    assign: Vec<(wgpu::BindGroup, u32)>,
    accumulate: Vec<(wgpu::BindGroup, u32)>,
    reduce: wgpu::BindGroup,
    groups: usize,
}

/// The most groups the device adds segment partials into; the host adds
/// the groups in f64 ([`add_groups`]).
const REDUCE_GROUPS: usize = 64;

/// At most this many group totals are read back per reduction (4 MiB).
const MAX_GROUP_VALUES: usize = 1 << 20;

/// How many groups `segments` partials of `width` values reduce into.
fn reduce_groups(segments: usize, width: usize) -> usize {
    segments
        .min(REDUCE_GROUPS)
        .min(MAX_GROUP_VALUES / width.max(1))
        .max(1)
}

/// Adds `groups × width` f32 group totals in f64, in group order.
fn add_groups(totals: &[f32], width: usize) -> Vec<f64> {
    let mut out = vec![0.0; width];
    for group in totals.chunks_exact(width.max(1)) {
        for (o, &v) in out.iter_mut().zip(group) {
            *o += v as f64;
        }
    }
    out
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
    /// Seeding's per-row state, from [`Resident::seed_start`] on.
    seed: Option<Seed>,
}

/// Rows per block of the seeding potential: one workgroup of
/// `seed_keep.wgsl`, and what `seed_pick.wgsl` scans.
const SEED_BLOCK: usize = 256;

/// The most rows k-means|| keeps in one round on the device (4 MiB of
/// indices); the expected number is ℓ = 2k, so more is a bug.
const MAX_OVERSAMPLE: usize = 1 << 20;

/// Every row's `D²`, per chunk, and the buffers the seeding kernels share.
struct Seed {
    closest: Vec<wgpu::Buffer>,
    /// Σ w·D² per block of [`SEED_BLOCK`] rows, every chunk's blocks in
    /// row order.
    blocks: wgpu::Buffer,
    /// Each chunk's first block.
    block_offsets: Vec<usize>,
    n_blocks: usize,
    /// Up to [`MAX_SEED_CANDIDATES`] rows of `d`: the trials last scored.
    candidates: wgpu::Buffer,
    trials: usize,
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
            seed: None,
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

    /// Adds the `segments × width` partials into `groups × width` totals in
    /// one pass (see `reduce.wgsl`).
    fn reduce_bind(
        &self,
        partials: &wgpu::Buffer,
        totals: &wgpu::Buffer,
        segments: usize,
        width: usize,
        groups: usize,
    ) -> wgpu::BindGroup {
        let params = uniform(
            &self.gpu.ctx,
            "reduce params",
            &ReduceParams {
                segments: segments as u32,
                width: width as u32,
                groups: groups as u32,
                _pad: 0,
            },
        );
        self.gpu
            .pipelines
            .bind(&self.gpu.ctx, Kernel::Reduce, &[partials, totals, &params])
    }

    fn dispatch_reduce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bind: &wgpu::BindGroup,
        width: usize,
        groups: usize,
    ) {
        self.dispatch(
            encoder,
            Kernel::Reduce,
            bind,
            (width * groups).div_ceil(256) as u32,
        );
    }

    /// The chunks that hold rows of `rows`, with the part of each (as rows
    /// of the chunk) that lies in it.
    fn parts(&self, rows: &Range<usize>) -> Vec<(&Chunk, Range<usize>)> {
        self.chunks
            .iter()
            .filter_map(|c| {
                let first = rows.start.max(c.start);
                let end = rows.end.min(c.start + c.rows);
                (first < end).then(|| (c, first - c.start..end - c.start))
            })
            .collect()
    }

    /// Segment length for partials of `width` values: depends only on the
    /// matrix, so a range's segments are a subset of the whole's.
    fn seg_rows(&self, width: usize) -> usize {
        segment_rows(self.n, width, self.gpu.partials_budget())
    }

    /// Builds (or reuses) the buffers that depend on k, and the bind
    /// groups for a step over `rows`.
    fn clusters(&mut self, k: usize, rows: Range<usize>) -> Result<&Clusters, GpuError> {
        let (d, width) = (self.d, k * (self.d + 2));
        let seg_rows = self.seg_rows(width);
        if self.clusters.as_ref().is_none_or(|c| c.k != k) {
            let ctx = &self.gpu.ctx;
            let segments: usize = self.chunks.iter().map(|c| c.rows.div_ceil(seg_rows)).sum();
            let groups = reduce_groups(segments, width);
            self.clusters = Some(Clusters {
                k,
                centroids: storage(ctx, "centroids", (4 * k * d) as u64, None)?,
                norms: storage(ctx, "centroid norms", (4 * k) as u64, None)?,
                partials: storage(ctx, "cluster partials", (4 * segments * width) as u64, None)?,
                totals: storage(ctx, "cluster totals", (4 * groups * width) as u64, None)?,
                binds: None,
            });
        }
        let cl = self.clusters.as_ref().expect("built above");
        if cl.binds.as_ref().is_some_and(|b| b.rows == rows) {
            return Ok(self.clusters.as_ref().expect("built above"));
        }
        let (ctx, pipes) = (&self.gpu.ctx, &self.gpu.pipelines);
        let mut assign = Vec::new();
        let mut accumulate = Vec::new();
        let mut seg_offset = 0;
        for (c, part) in self.parts(&rows) {
            let p = uniform(
                ctx,
                "assign params",
                &AssignParams {
                    rows: part.end as u32,
                    d: d as u32,
                    k: k as u32,
                    first: part.start as u32,
                },
            );
            let bind = pipes.bind(
                ctx,
                Kernel::Assign,
                &[
                    &c.x,
                    &cl.centroids,
                    &cl.norms,
                    &c.labels,
                    &c.dists,
                    &c.second,
                    &p,
                ],
            );
            assign.push((bind, part.len().div_ceil(256) as u32));
            let part_segments = part.len().div_ceil(seg_rows);
            let p = uniform(
                ctx,
                "accumulate params",
                &AccumulateParams {
                    rows: part.end as u32,
                    d: d as u32,
                    k: k as u32,
                    seg_rows: seg_rows as u32,
                    seg_offset: seg_offset as u32,
                    first: part.start as u32,
                    _pad: [0; 2],
                },
            );
            let bind = pipes.bind(
                ctx,
                Kernel::Accumulate,
                &[&c.x, &c.labels, &c.dists, &c.weights, &cl.partials, &p],
            );
            accumulate.push((bind, part_segments as u32));
            seg_offset += part_segments;
        }
        let groups = reduce_groups(seg_offset, width);
        let reduce = self.reduce_bind(&cl.partials, &cl.totals, seg_offset, width, groups);
        let cl = self.clusters.as_mut().expect("built above");
        cl.binds = Some(RangeBinds {
            rows,
            assign,
            accumulate,
            reduce,
            groups,
        });
        Ok(self.clusters.as_ref().expect("built above"))
    }

    /// Records the assignment of `rows` against `centroids`.
    fn record_assign(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        centroids: ArrayView2<f32>,
        rows: Range<usize>,
    ) -> Result<(), GpuError> {
        let k = centroids.nrows();
        let centroids = centroids.as_standard_layout();
        // Same f32 sums, in the same order, as the CPU kernel's norms.
        let norms: Vec<f32> = centroids
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| v * v).sum())
            .collect();
        self.clusters(k, rows)?;
        let cl = self.clusters.as_ref().expect("built above");
        let q = &self.gpu.ctx.queue;
        q.write_buffer(
            &cl.centroids,
            0,
            bytemuck::cast_slice(centroids.as_slice().expect("standard layout")),
        );
        q.write_buffer(&cl.norms, 0, bytemuck::cast_slice(&norms));
        let binds = cl.binds.as_ref().expect("built with the clusters");
        for (bind, groups) in &binds.assign {
            self.dispatch(encoder, Kernel::Assign, bind, *groups);
        }
        Ok(())
    }

    /// Records the partial sums and their reduction for the rows the last
    /// [`record_assign`](Self::record_assign) assigned.
    fn record_accumulate(&self, encoder: &mut wgpu::CommandEncoder) {
        let cl = self.clusters.as_ref().expect("recorded after an assign");
        let binds = cl.binds.as_ref().expect("built with the clusters");
        for (bind, segments) in &binds.accumulate {
            self.dispatch(encoder, Kernel::Accumulate, bind, *segments);
        }
        let width = cl.k * (self.d + 2);
        self.dispatch_reduce(encoder, &binds.reduce, width, binds.groups);
    }

    /// Submits `encoder`, reads the group totals and adds them in f64.
    fn finish_accumulate(&self, encoder: wgpu::CommandEncoder) -> Result<ClusterSums, GpuError> {
        let cl = self.clusters.as_ref().expect("recorded before");
        let groups = cl.binds.as_ref().expect("recorded before").groups;
        let (k, d) = (cl.k, self.d);
        let width = k * (d + 2);
        let totals: Vec<f32> =
            read_back_after(&self.gpu.ctx, Some(encoder), &cl.totals, 0, groups * width)?;
        let totals = add_groups(&totals, width);
        let mut sums = Array2::<f64>::zeros((k, d));
        let mut weights = vec![0.0; k];
        let mut inertia = 0.0;
        for (c, row) in totals.chunks_exact(d + 2).enumerate() {
            sums.row_mut(c).assign(&ArrayView1::from(&row[..d]));
            weights[c] = row[d];
            inertia += row[d + 1];
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

    /// Runs a per-segment kernel over every chunk, reduces the segments
    /// into groups on the device, and adds the groups' `width` totals in
    /// f64.
    fn segmented<'b, P: Pod>(
        &self,
        kernel: Kernel,
        width: usize,
        groups_per_segment: usize,
        inputs: impl Fn(usize) -> Vec<&'b wgpu::Buffer>,
        params: impl Fn(&Chunk, usize, usize) -> P,
    ) -> Result<Vec<f64>, GpuError> {
        let ctx = &self.gpu.ctx;
        let seg_rows = self.seg_rows(width);
        let segments: usize = self.chunks.iter().map(|c| c.rows.div_ceil(seg_rows)).sum();
        let groups = reduce_groups(segments, width);
        let partials = storage(ctx, "partials", (4 * segments * width) as u64, None)?;
        let totals = storage(ctx, "totals", (4 * groups * width) as u64, None)?;
        let mut encoder = self.encoder("segmented");
        let mut seg_offset = 0;
        let mut keep = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            let p = uniform(ctx, "params", &params(c, seg_rows, seg_offset));
            let mut buffers = vec![&c.x];
            buffers.extend(inputs(i));
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
        let reduce = self.reduce_bind(&partials, &totals, segments, width, groups);
        self.dispatch_reduce(&mut encoder, &reduce, width, groups);
        let totals: Vec<f32> = read_back_after(ctx, Some(encoder), &totals, 0, groups * width)?;
        Ok(add_groups(&totals, width))
    }
}

impl GpuResident<'_> {
    /// Builds the seeding buffers (once per resident).
    fn seed_state(&mut self) -> Result<&Seed, GpuError> {
        if self.seed.is_none() {
            let ctx = &self.gpu.ctx;
            let mut block_offsets = Vec::with_capacity(self.chunks.len());
            let mut n_blocks = 0;
            let mut closest = Vec::with_capacity(self.chunks.len());
            for c in &self.chunks {
                block_offsets.push(n_blocks);
                n_blocks += c.rows.div_ceil(SEED_BLOCK);
                closest.push(storage(ctx, "seed D²", 4 * c.rows as u64, None)?);
            }
            self.seed = Some(Seed {
                closest,
                blocks: storage(ctx, "seed blocks", 4 * n_blocks as u64, None)?,
                block_offsets,
                n_blocks,
                candidates: storage(
                    ctx,
                    "seed candidates",
                    (4 * MAX_SEED_CANDIDATES * self.d) as u64,
                    None,
                )?,
                trials: 0,
            });
        }
        Ok(self.seed.as_ref().expect("built above"))
    }

    fn started_seed(&self) -> Result<&Seed, BackendError> {
        self.seed
            .as_ref()
            .filter(|s| s.trials > 0)
            .ok_or(BackendError::SeedNotStarted)
    }

    /// Runs `seed_keep.wgsl` in `mode` over every chunk and reads the block
    /// sums back (one submission after whatever `encoder` holds).
    fn seed_update(
        &self,
        mut encoder: wgpu::CommandEncoder,
        mode: u32,
        j: usize,
    ) -> Result<Potential, GpuError> {
        let (ctx, seed) = (&self.gpu.ctx, self.seed.as_ref().expect("seed state built"));
        let mut keep = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            let p = uniform(
                ctx,
                "seed keep params",
                &SeedKeepParams {
                    rows: c.rows as u32,
                    d: self.d as u32,
                    j: j as u32,
                    mode,
                    block_offset: seed.block_offsets[i] as u32,
                    _pad: [0; 3],
                },
            );
            let bind = self.gpu.pipelines.bind(
                ctx,
                Kernel::SeedKeep,
                &[
                    &c.x,
                    &c.weights,
                    &seed.candidates,
                    &c.dists,
                    &seed.closest[i],
                    &seed.blocks,
                    &p,
                ],
            );
            self.dispatch(
                &mut encoder,
                Kernel::SeedKeep,
                &bind,
                c.rows.div_ceil(SEED_BLOCK) as u32,
            );
            keep.push((bind, p));
        }
        self.potential_after(encoder)
    }

    /// Submits `encoder` and reads the block sums of `D²`.
    fn potential_after(&self, encoder: wgpu::CommandEncoder) -> Result<Potential, GpuError> {
        let seed = self.seed.as_ref().expect("seed state built");
        let sums: Vec<f32> =
            read_back_after(&self.gpu.ctx, Some(encoder), &seed.blocks, 0, seed.n_blocks)?;
        let mut starts = Vec::with_capacity(seed.n_blocks);
        for c in &self.chunks {
            starts.extend((0..c.rows).step_by(SEED_BLOCK).map(|r| c.start + r));
        }
        Ok(Potential {
            starts,
            sums: sums.iter().map(|&v| v as f64).collect(),
        })
    }

    fn write_candidates(&self, centres: ArrayView2<f32>) {
        let centres = centres.as_standard_layout();
        let seed = self.seed.as_ref().expect("seed state built");
        self.gpu.ctx.queue.write_buffer(
            &seed.candidates,
            0,
            bytemuck::cast_slice(centres.as_slice().expect("standard layout")),
        );
    }

    /// The chunk holding seeding block `block`, and the block's first row
    /// within it.
    fn seed_block(&self, block: usize) -> Option<(usize, usize)> {
        let seed = self.seed.as_ref()?;
        let chunk = seed
            .block_offsets
            .partition_point(|&o| o <= block)
            .checked_sub(1)?;
        let local = (block - seed.block_offsets[chunk]) * SEED_BLOCK;
        (local < self.chunks[chunk].rows).then_some((chunk, local))
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
        self.record_assign(&mut encoder, centroids, 0..self.n)?;
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

    /// Assignment, partial sums and reduction into groups in one
    /// submission; reads back only the groups' `k × (d + 2)` totals.
    fn step_rows(
        &mut self,
        rows: Range<usize>,
        centroids: ArrayView2<f32>,
    ) -> Result<ClusterSums, BackendError> {
        check_rows(&rows, self.n)?;
        if rows.is_empty() {
            return Ok(ClusterSums::zeros(centroids.nrows(), self.d));
        }
        let mut encoder = self.encoder("lloyd step");
        self.timestamp(&mut encoder, 0);
        self.record_assign(&mut encoder, centroids, rows)?;
        self.record_accumulate(&mut encoder);
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

    fn seed_start(&mut self, centre: &[f32]) -> Result<Potential, BackendError> {
        check_seed_width(self.d, centre.len())?;
        self.seed_state()?;
        let centre = ArrayView2::from_shape((1, self.d), centre).expect("one row");
        self.write_candidates(centre);
        let potential = self.seed_update(self.encoder("seed start"), SEED_START, 0)?;
        self.seed.as_mut().expect("built").trials = 1;
        Ok(potential)
    }

    /// The assignment kernel's nearest distances (exact for the winner)
    /// against the new centres, then a minimum with `D²`, in one
    /// submission.
    fn seed_lower(&mut self, centres: ArrayView2<f32>) -> Result<Potential, BackendError> {
        self.started_seed()?;
        check_seed_width(self.d, centres.ncols())?;
        let mut encoder = self.encoder("seed lower");
        if centres.nrows() == 0 {
            // Nothing changes: the block sums on the device are current.
            return Ok(self.potential_after(encoder)?);
        }
        self.record_assign(&mut encoder, centres, 0..self.n)?;
        Ok(self.seed_update(encoder, SEED_LOWER, 0)?)
    }

    fn seed_score(&mut self, candidates: ArrayView2<f32>) -> Result<Vec<f64>, BackendError> {
        self.started_seed()?;
        check_seed_width(self.d, candidates.ncols())?;
        let t = candidates.nrows();
        check_seed_trials(t)?;
        self.write_candidates(candidates);
        let d = self.d;
        let seed = self.seed.as_ref().expect("started");
        let totals = self.segmented(
            Kernel::SeedScore,
            t,
            1,
            |i| vec![&self.chunks[i].weights, &seed.closest[i], &seed.candidates],
            |c, seg_rows, seg_offset| SeedScoreParams {
                rows: c.rows as u32,
                d: d as u32,
                t: t as u32,
                seg_rows: seg_rows as u32,
                seg_offset: seg_offset as u32,
                _pad: [0; 3],
            },
        )?;
        self.seed.as_mut().expect("started").trials = t;
        Ok(totals)
    }

    /// Recomputes the kept trial's distances (one pass): cheaper on a GPU
    /// than storing every trial's minima.
    fn seed_keep(&mut self, j: usize) -> Result<Potential, BackendError> {
        let trials = self.started_seed()?.trials;
        if j >= trials {
            return Err(BackendError::SeedNotStarted);
        }
        Ok(self.seed_update(self.encoder("seed keep"), SEED_KEEP, j)?)
    }

    fn seed_pick(&mut self, draws: &[(usize, f64)]) -> Result<Vec<usize>, BackendError> {
        self.started_seed()?;
        let ctx = &self.gpu.ctx;
        let mut out = vec![0usize; draws.len()];
        for (ci, c) in self.chunks.iter().enumerate() {
            let mine: Vec<(usize, SeedDraw)> = draws
                .iter()
                .enumerate()
                .filter_map(|(i, &(block, offset))| {
                    let (chunk, local) = self.seed_block(block)?;
                    (chunk == ci).then_some((
                        i,
                        SeedDraw {
                            start: local as u32,
                            offset: offset as f32,
                        },
                    ))
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let list: Vec<SeedDraw> = mine.iter().map(|(_, d)| *d).collect();
            let buf = storage(
                ctx,
                "seed draws",
                (8 * list.len()) as u64,
                Some(bytemuck::cast_slice(&list)),
            )?;
            let picked = storage(ctx, "seed picked", (4 * list.len()) as u64, None)?;
            let p = uniform(
                ctx,
                "seed pick params",
                &SeedPickParams {
                    rows: c.rows as u32,
                    count: list.len() as u32,
                    _pad: [0; 2],
                },
            );
            let seed = self.seed.as_ref().expect("started");
            let bind = self.gpu.pipelines.bind(
                ctx,
                Kernel::SeedPick,
                &[&c.weights, &seed.closest[ci], &buf, &picked, &p],
            );
            let mut encoder = self.encoder("seed pick");
            self.dispatch(&mut encoder, Kernel::SeedPick, &bind, list.len() as u32);
            let rows: Vec<u32> = read_back_after(ctx, Some(encoder), &picked, 0, list.len())?;
            for ((i, _), r) in mine.iter().zip(rows) {
                out[*i] = c.start + r as usize;
            }
        }
        if let Some(&(block, _)) = draws.iter().find(|(b, _)| self.seed_block(*b).is_none()) {
            return Err(BackendError::RowRange {
                start: block * SEED_BLOCK,
                end: block * SEED_BLOCK + 1,
                n: self.n,
            });
        }
        Ok(out)
    }

    fn seed_finish(&mut self) {
        self.seed = None;
    }

    fn seed_oversample(&mut self, factor: f64, salt: u32) -> Result<Vec<usize>, BackendError> {
        self.started_seed()?;
        let ctx = &self.gpu.ctx;
        let capacity = self.n.min(MAX_OVERSAMPLE);
        // A count, then room for `capacity` row indices.
        let picked = storage(ctx, "seed oversample", 4 * (capacity as u64 + 1), None)?;
        ctx.queue.write_buffer(&picked, 0, &[0u8; 4]);
        let seed = self.seed.as_ref().expect("started");
        let mut encoder = self.encoder("seed oversample");
        let mut keep = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            let p = uniform(
                ctx,
                "seed sample params",
                &SeedSampleParams {
                    rows: c.rows as u32,
                    first: c.start as u32,
                    salt,
                    capacity: capacity as u32,
                    factor: factor as f32,
                    _pad: [0; 3],
                },
            );
            let bind = self.gpu.pipelines.bind(
                ctx,
                Kernel::SeedSample,
                &[&c.weights, &seed.closest[i], &picked, &p],
            );
            self.dispatch(
                &mut encoder,
                Kernel::SeedSample,
                &bind,
                c.rows.div_ceil(256) as u32,
            );
            keep.push((bind, p));
        }
        let count: Vec<u32> = read_back_after(ctx, Some(encoder), &picked, 0, 1)?;
        let count = count[0] as usize;
        if count > capacity {
            return Err(GpuError::Other(format!(
                "k-means|| kept {count} rows in one round, more than the {capacity} it has room for"
            ))
            .into());
        }
        let mut rows: Vec<usize> = read_back::<u32>(ctx, &picked, 4, count)?
            .into_iter()
            .map(|r| r as usize)
            .collect();
        rows.sort_unstable();
        Ok(rows)
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
            |_| vec![&pivot],
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
            sum: totals[..d].to_vec(),
            sum_sq: totals[d..].to_vec(),
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
            |_| vec![&mean],
            |c, seg_rows, seg_offset| GramParams {
                rows: c.rows as u32,
                d: d as u32,
                seg_rows: seg_rows as u32,
                seg_offset: seg_offset as u32,
                tiles: tiles as u32,
                _pad: [0; 3],
            },
        )?;
        Ok(Array2::from_shape_vec((d, d), totals).expect("d × d totals"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_bounded_and_added_in_f64() {
        assert_eq!(reduce_groups(0, 10), 1);
        assert_eq!(reduce_groups(12, 10), 12);
        assert_eq!(reduce_groups(1000, 10), REDUCE_GROUPS);
        // Wide partials (a large Gram) read back at most MAX_GROUP_VALUES.
        assert_eq!(reduce_groups(1000, 1 << 19), 2);
        assert_eq!(reduce_groups(1000, 1 << 21), 1);
        // 2^24 + 1 is not an f32; the f64 sum of the groups keeps the 1.
        let totals = [16_777_216.0f32, 2.0, 1.0, 3.0];
        assert_eq!(add_groups(&totals, 2), vec![16_777_217.0, 5.0]);
    }
}
