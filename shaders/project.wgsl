// Projection onto principal components: out = (x − mean) · componentsᵀ,
// one thread per output value (row-major, rows × c).

struct Params {
    rows: u32,
    d: u32,
    c: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mean: array<f32>;
@group(0) @binding(2) var<storage, read> components: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= params.rows * params.c) {
        return;
    }
    let r = i / params.c;
    let comp = i % params.c;
    let d = params.d;
    var acc = 0.0;
    for (var j = 0u; j < d; j++) {
        acc = fma(x[r * d + j] - mean[j], components[comp * d + j], acc);
    }
    out[i] = acc;
}
