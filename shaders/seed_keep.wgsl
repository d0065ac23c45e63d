// Updates every row's D² (squared distance to the nearest chosen centre)
// and writes each block's Σ w·D² (a block: one workgroup's 256 rows).
//   mode 0: D² = min(D², ‖x − candidates[j]‖²)   (k-means++ keeps trial j)
//   mode 1: D² = ‖x − candidates[0]‖²            (seeding starts)
//   mode 2: D² = min(D², dists)                  (k-means||: dists from
//           assign.wgsl against the round's new centres)
// Distances as in seed_score.wgsl.

struct Params {
    rows: u32,
    d: u32,
    j: u32,
    mode: u32,
    block_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> candidates: array<f32>;
@group(0) @binding(3) var<storage, read> dists: array<f32>;
@group(0) @binding(4) var<storage, read_write> closest: array<f32>;
@group(0) @binding(5) var<storage, read_write> blocks: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

const WG: u32 = 256u;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wid.x + wid.y * nwg.x;
    if (block * WG >= params.rows) {
        return;
    }
    let r = block * WG + lid;
    var v = 0.0;
    if (r < params.rows) {
        let d = params.d;
        var near = 0.0;
        if (params.mode == 2u) {
            near = min(closest[r], dists[r]);
        } else {
            let j = select(params.j, 0u, params.mode == 1u);
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
            near = even + odd;
            if (params.mode == 0u) {
                near = min(closest[r], near);
            }
        }
        closest[r] = near;
        v = weights[r] * near;
    }
    part[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            part[lid] += part[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        blocks[params.block_offset + block] = part[0];
    }
}
