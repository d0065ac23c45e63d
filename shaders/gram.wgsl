// Gram matrix of centred rows, Σ (x − mean)(x − mean)ᵀ, per segment.
//
// A workgroup computes one 16 × 16 output tile for one segment: batches of
// 16 rows are staged in workgroup memory (the tile's two column blocks) and
// multiplied there. Segments are added by reduce.wgsl.

struct Params {
    rows: u32,
    d: u32,
    seg_rows: u32,
    seg_offset: u32,
    tiles: u32, // tiles per side: ceil(d / 16)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mean: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> a: array<array<f32, 16>, 16>;
var<workgroup> b: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let group = wid.x + wid.y * nwg.x;
    let per_seg = params.tiles * params.tiles;
    let seg = group / per_seg;
    let tile = group % per_seg;
    let start = seg * params.seg_rows;
    if (start >= params.rows) {
        return;
    }
    let end = min(start + params.seg_rows, params.rows);
    let d = params.d;
    let ci = (tile / params.tiles) * 16u;
    let cj = (tile % params.tiles) * 16u;
    var acc = 0.0;
    for (var r0 = start; r0 < end; r0 += 16u) {
        let r = r0 + lid.y;
        let col_a = ci + lid.x;
        let col_b = cj + lid.x;
        var va = 0.0;
        var vb = 0.0;
        if (r < end && col_a < d) {
            va = x[r * d + col_a] - mean[col_a];
        }
        if (r < end && col_b < d) {
            vb = x[r * d + col_b] - mean[col_b];
        }
        a[lid.y][lid.x] = va;
        b[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var t = 0u; t < 16u; t++) {
            acc = fma(a[t][lid.y], b[t][lid.x], acc);
        }
        workgroupBarrier();
    }
    let i = ci + lid.y;
    let j = cj + lid.x;
    if (i < d && j < d) {
        partials[(params.seg_offset + seg) * d * d + i * d + j] = acc;
    }
}
