// k-means++ scoring: for each of t trial centres, the segment's
// Σ w·min(D², ‖x − c‖²), the potential the trial would leave. D² is
// not changed (seed_keep.wgsl keeps the winner). Distances are exact,
// Σ (x − c)² with even and odd dimensions in two sums, as on the CPU.
// Output per segment: t sums (reduced by reduce.wgsl, added in f64 on
// the host).

struct Params {
    rows: u32,
    d: u32,
    t: u32,
    seg_rows: u32,
    seg_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> closest: array<f32>;
@group(0) @binding(3) var<storage, read> candidates: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

const WG: u32 = 256u;
const MAX_T: u32 = 32u;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seg = wid.x + wid.y * nwg.x;
    let start = seg * params.seg_rows;
    if (start >= params.rows) {
        return;
    }
    let end = min(start + params.seg_rows, params.rows);
    let d = params.d;
    let t = params.t;
    var sums: array<f32, 32>;
    for (var r = start + lid; r < end; r += WG) {
        let near = closest[r];
        let w = weights[r];
        for (var j = 0u; j < t; j++) {
            var even = 0.0;
            var odd = 0.0;
            var c = 0u;
            for (; c + 1u < d; c += 2u) {
                let a = x[r * d + c] - candidates[j * d + c];
                even = fma(a, a, even);
                let b = x[r * d + c + 1u] - candidates[j * d + c + 1u];
                odd = fma(b, b, odd);
            }
            if (c < d) {
                let a = x[r * d + c] - candidates[j * d + c];
                even = fma(a, a, even);
            }
            sums[j] = fma(w, min(near, even + odd), sums[j]);
        }
    }
    for (var j = 0u; j < t; j++) {
        part[lid] = sums[j];
        workgroupBarrier();
        for (var half = WG / 2u; half > 0u; half /= 2u) {
            if (lid < half) {
                part[lid] += part[lid + half];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            partials[(params.seg_offset + seg) * t + j] = part[0];
        }
        workgroupBarrier();
    }
}
