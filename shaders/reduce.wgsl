// Adds `segments` rows of `width` partial values column by column, in
// segment order, with Neumaier compensation (f32 on every adapter).

struct Params {
    segments: u32,
    width: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> totals: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= params.width) {
        return;
    }
    var sum = 0.0;
    var comp = 0.0;
    for (var s = 0u; s < params.segments; s++) {
        let v = partials[s * params.width + i];
        let t = sum + v;
        if (abs(sum) >= abs(v)) {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    totals[i] = sum + comp;
}
