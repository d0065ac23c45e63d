// Column statistics: per-segment sums of (x − pivot) and (x − pivot)², where
// the pivot (the first row) keeps f32 sums accurate for data far from 0.
// Output per segment: d sums, then d sums of squares.

struct Params {
    rows: u32,
    d: u32,
    seg_rows: u32,
    seg_offset: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> pivot: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(64)
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
    let out = (params.seg_offset + seg) * 2u * d;
    for (var col = lid; col < d; col += 64u) {
        var s = 0.0;
        var q = 0.0;
        for (var r = start; r < end; r++) {
            let v = x[r * d + col] - pivot[col];
            s += v;
            q = fma(v, v, q);
        }
        partials[out + col] = s;
        partials[out + d + col] = q;
    }
}
