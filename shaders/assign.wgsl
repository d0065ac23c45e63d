// Assignment: nearest and second-nearest centroid of the rows first..rows
// of one chunk (a whole chunk, or the part of it in a step's row range).
//
// Tiled: each workgroup takes WG·P rows (P per thread). Centroids are staged
// through workgroup memory in tiles of TK centroids × TD dimensions, stored
// dimension-major so that one dimension's TK values are four vec4 loads;
// each thread keeps a P × TK block of dot products in registers (as vec4s)
// and loads a dimension's centroid values once for its P rows, so a
// workgroup-memory load feeds P·4 FMA lanes instead of one. The sums are
// the same FMAs in the same order as a scalar loop: parity is unchanged. The argmin uses
// the score ‖c‖² − 2·x·c (‖x‖² does not change it); the winner's distance is
// then recomputed exactly as Σ (x − c)², as the CPU kernel does.

struct Params {
    // One past the last row; the first row is `first`.
    rows: u32,
    d: u32,
    k: u32,
    first: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> centroids: array<f32>;
@group(0) @binding(2) var<storage, read> norms: array<f32>;
@group(0) @binding(3) var<storage, read_write> labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> dists: array<f32>;
@group(0) @binding(5) var<storage, read_write> second_dists: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

const WG: u32 = 64u;
const P: u32 = 4u;
const TK: u32 = 16u;
const TD: u32 = 16u;
const BIG: f32 = 3.0e38;

var<workgroup> tile_c: array<vec4<f32>, 64>; // TD × TK, as TK / 4 vec4s per dimension
var<workgroup> tile_norm: array<f32, 16>; // TK

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let base = params.first + (wid.x + wid.y * nwg.x) * WG * P;
    let d = params.d;
    let k = params.k;
    var row: array<u32, 4>;
    var best: array<f32, 4>;
    var best_i: array<u32, 4>;
    var second: array<f32, 4>;
    var second_i: array<u32, 4>;
    for (var p = 0u; p < P; p++) {
        // Rows past the end read a valid row; their results are not written.
        row[p] = min(base + lid + p * WG, params.rows - 1u);
        best[p] = BIG;
        second[p] = BIG;
    }
    for (var c0 = 0u; c0 < k; c0 += TK) {
        var acc: array<array<vec4<f32>, 4>, 4>;
        for (var d0 = 0u; d0 < d; d0 += TD) {
            workgroupBarrier();
            // One vec4 (four centroids of one dimension) per step; reads of
            // a centroid's dimensions are consecutive across threads.
            for (var t = lid; t < TK * TD / 4u; t += WG) {
                let j = t / (TK / 4u);
                let q = t % (TK / 4u);
                var v = vec4<f32>(0.0);
                for (var e = 0u; e < 4u; e++) {
                    let c = c0 + q * 4u + e;
                    if (c < k && d0 + j < d) {
                        v[e] = centroids[c * d + d0 + j];
                    }
                }
                tile_c[t] = v;
            }
            if (lid < TK) {
                tile_norm[lid] = select(BIG, norms[min(c0 + lid, k - 1u)], c0 + lid < k);
            }
            workgroupBarrier();
            let width = min(TD, d - d0);
            for (var j = 0u; j < width; j++) {
                var c4 = array<vec4<f32>, 4>(
                    tile_c[j * 4u],
                    tile_c[j * 4u + 1u],
                    tile_c[j * 4u + 2u],
                    tile_c[j * 4u + 3u],
                );
                for (var p = 0u; p < P; p++) {
                    let xv = vec4<f32>(x[row[p] * d + d0 + j]);
                    for (var q = 0u; q < 4u; q++) {
                        acc[p][q] = fma(xv, c4[q], acc[p][q]);
                    }
                }
            }
        }
        for (var p = 0u; p < P; p++) {
            for (var c = 0u; c < TK; c++) {
                if (c0 + c < k) {
                    let s = tile_norm[c] - 2.0 * acc[p][c / 4u][c % 4u];
                    if (s < best[p]) {
                        second[p] = best[p];
                        second_i[p] = best_i[p];
                        best[p] = s;
                        best_i[p] = c0 + c;
                    } else if (s < second[p]) {
                        second[p] = s;
                        second_i[p] = c0 + c;
                    }
                }
            }
        }
    }
    for (var p = 0u; p < P; p++) {
        let r = base + lid + p * WG;
        if (r < params.rows) {
            var db = 0.0;
            var ds = 0.0;
            for (var j = 0u; j < d; j++) {
                let xv = x[r * d + j];
                let a = xv - centroids[best_i[p] * d + j];
                db = fma(a, a, db);
                if (k > 1u) {
                    let b = xv - centroids[second_i[p] * d + j];
                    ds = fma(b, b, ds);
                }
            }
            labels[r] = best_i[p];
            dists[r] = db;
            second_dists[r] = select(BIG, ds, k > 1u);
        }
    }
}
