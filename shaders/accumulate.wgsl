// Centroid update, step 1: per-segment partial sums per cluster, over the
// rows first..rows of one chunk.
//
// WGSL has no portable float atomics, so each workgroup owns one segment of
// rows and a private slice of the partials buffer: k × (d + 2) values, the
// weighted row sums, then Σw, then Σw·dist. Every value is written by one
// thread in row order: the result is deterministic. reduce.wgsl then adds the
// segments into a few groups, and the host adds the groups in f64.

struct Params {
    rows: u32,
    d: u32,
    k: u32,
    seg_rows: u32,
    seg_offset: u32,
    first: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> dists: array<f32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

// Where a segment's k × (d + 2) partials fit, they are summed in workgroup
// memory and written out once: a row's add is then a workgroup-memory
// read-modify-write, not a global one, with the same additions in the
// same order (the same bits). Each thread owns its columns, so no barrier.
const LOCAL: u32 = 2048u;
var<workgroup> local: array<f32, 2048>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seg = wid.x + wid.y * nwg.x;
    let start = params.first + seg * params.seg_rows;
    if (start >= params.rows) {
        return;
    }
    let end = min(start + params.seg_rows, params.rows);
    let d = params.d;
    let width = d + 2u;
    let out = (params.seg_offset + seg) * params.k * width;
    if (params.k * width <= LOCAL) {
        for (var col = lid; col < width; col += 64u) {
            for (var c = 0u; c < params.k; c++) {
                local[c * width + col] = 0.0;
            }
            for (var r = start; r < end; r++) {
                let w = weights[r];
                var v = w;
                if (col < d) {
                    v = w * x[r * d + col];
                } else if (col > d) {
                    v = w * dists[r];
                }
                let i = labels[r] * width + col;
                local[i] = local[i] + v;
            }
            for (var c = 0u; c < params.k; c++) {
                partials[out + c * width + col] = local[c * width + col];
            }
        }
        return;
    }
    for (var col = lid; col < width; col += 64u) {
        for (var c = 0u; c < params.k; c++) {
            partials[out + c * width + col] = 0.0;
        }
        for (var r = start; r < end; r++) {
            let w = weights[r];
            var v = w;
            if (col < d) {
                v = w * x[r * d + col];
            } else if (col > d) {
                v = w * dists[r];
            }
            let i = out + labels[r] * width + col;
            partials[i] = partials[i] + v;
        }
    }
}
