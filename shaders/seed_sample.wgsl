// k-means||'s draw: keeps row i when unit(salt, i) < factor · w·D², both
// in f32, with unit() the same 32-bit hash as the host's `seed_unit`.
// Kept rows are appended (in any order; the host sorts them) after a
// counter at picked[0]; past `capacity` only the count grows.

struct Params {
    rows: u32,
    first: u32,
    salt: u32,
    capacity: u32,
    factor: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> weights: array<f32>;
@group(0) @binding(1) var<storage, read> closest: array<f32>;
@group(0) @binding(2) var<storage, read_write> picked: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> params: Params;

fn hash_mix(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (r >= params.rows) {
        return;
    }
    let global = params.first + r;
    let u = f32(hash_mix(global ^ hash_mix(params.salt)) >> 8u) / 16777216.0;
    if (u < params.factor * weights[r] * closest[r]) {
        let slot = atomicAdd(&picked[0], 1u);
        if (slot < params.capacity) {
            atomicStore(&picked[1u + slot], global);
        }
    }
}
