// Peak f32 throughput probe: every invocation runs four independent chains
// of vec4 fused multiply-adds (16 FMAs = 32 FLOP per loop trip). The loop
// count is a uniform, so the compiler cannot fold it; the results are
// written so it cannot drop them.

struct Params {
    iters: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> sink: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = f32(gid.x) * 1.0e-9;
    var a = vec4<f32>(s, s + 0.001, s + 0.002, s + 0.003);
    var b = a + vec4<f32>(0.5);
    var c = a + vec4<f32>(0.25);
    var d = a + vec4<f32>(0.125);
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(0.0001);
    for (var i = 0u; i < params.iters; i = i + 1u) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
    }
    sink[gid.x] = dot(a + b + c + d, vec4<f32>(1.0));
}
