// k-means++'s draw within a block: one workgroup per draw scans the
// block's 256 values of w·D² (inclusive prefix sum in workgroup memory)
// and returns the first row with a positive value whose running sum passes
// the draw's offset; past the block's sum (rounding), its last positive
// row; with none positive, the block's first row. As the CPU's pick.

struct Draw {
    start: u32,
    offset: f32,
}

struct Params {
    rows: u32,
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> weights: array<f32>;
@group(0) @binding(1) var<storage, read> closest: array<f32>;
@group(0) @binding(2) var<storage, read> draws: array<Draw>;
@group(0) @binding(3) var<storage, read_write> picked: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> scan: array<f32, 256>;
var<workgroup> hit: atomic<u32>;
var<workgroup> last: atomic<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= params.count) {
        return;
    }
    let draw = draws[i];
    let r = draw.start + lid;
    var v = 0.0;
    if (r < params.rows) {
        v = weights[r] * closest[r];
    }
    if (lid == 0u) {
        atomicStore(&hit, NONE);
        atomicStore(&last, 0u);
    }
    scan[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off *= 2u) {
        var add = 0.0;
        if (lid >= off) {
            add = scan[lid - off];
        }
        workgroupBarrier();
        scan[lid] += add;
        workgroupBarrier();
    }
    if (v > 0.0) {
        if (scan[lid] > draw.offset) {
            atomicMin(&hit, lid);
        }
        atomicMax(&last, lid + 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        let h = atomicLoad(&hit);
        let l = atomicLoad(&last);
        var out = draw.start;
        if (h != NONE) {
            out = draw.start + h;
        } else if (l > 0u) {
            out = draw.start + l - 1u;
        }
        picked[i] = out;
    }
}
