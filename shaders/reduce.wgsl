// Adds `segments` rows of `width` partial values into `groups` rows: group
// g adds its contiguous share of the segments column by column, in segment
// order, with Neumaier compensation (f32 on every adapter). The host adds
// the groups in f64, so the f32 error is that of one group's sum however
// many rows there are.

struct Params {
    segments: u32,
    width: u32,
    groups: u32,
    _pad: u32,
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
    let slot = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (slot >= params.width * params.groups) {
        return;
    }
    let g = slot / params.width;
    let i = slot % params.width;
    // The group's segments: an even share, in order.
    let first = g * params.segments / params.groups;
    let last = (g + 1u) * params.segments / params.groups;
    var sum = 0.0;
    var comp = 0.0;
    for (var s = first; s < last; s++) {
        let v = partials[s * params.width + i];
        let t = sum + v;
        if (abs(sum) >= abs(v)) {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    totals[slot] = sum + comp;
}
