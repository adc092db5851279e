// The products of GPU training (src/gpu/train.rs): C[m, n] (+)= Σ_k A[m, k] · B[k, n] on
// strided views of A and B (element (r, c) at off + r·rs + c·cs, so a transposed operand is
// the same buffer with its strides swapped). C is row-major from c_off, n values a row.
// Used for the input projection of all timesteps ([X | 1]·[W; b]), and after the backward
// steps for every weight gradient over all timesteps at once ([X | 1]ᵀ·dZx,
// [H_prev | 1]ᵀ·dZh: the biases' gradients as last rows) and dX = dZx·Wᵀ.
// CPU twin: `cpu::reference::matmul` as `train::recurrent::backward` calls it.
//
// A workgroup of 16 x 16 threads computes a 64 x 64 tile of C, 4 x 4 per thread in
// registers, staging 64 x 16 of A and 16 x 64 of B per round of TK reduction values in
// workgroup memory (as conv.wgsl does). Each operand is staged along its contiguous axis
// (consecutive threads read consecutive addresses whether or not it is transposed). A
// long reduction is split by the host into several dispatches that accumulate (a software
// rasterizer's loop limit; see src/gpu/loops.rs `gemm_iterations`). Reduction indices past
// k are zeros in both operands, so no padded product is 0 · inf.

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TILE]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TILE]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * 16u + lid.x;
    // A is read along m when its rows are adjacent (a transposed operand), else along k;
    // B along n when its columns are adjacent, else along k
    let a_along_m = p.a_rs == 1u && p.a_cs != 1u;
    let b_along_k = p.b_rs == 1u && p.b_cs != 1u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = flat + e * 256u;
            var m = idx / TK;
            var kk = idx % TK;
            if (a_along_m) {
                m = idx % TILE;
                kk = idx / TILE;
            }
            var av = 0.0;
            if (row0 + m < p.m && k0 + kk < p.k) {
                av = a[p.a_off + (row0 + m) * p.a_rs + (k0 + kk) * p.a_cs];
            }
            a_tile[kk * TILE + m] = av;
            var nn = idx % TILE;
            var bk = idx / TILE;
            if (b_along_k) {
                nn = idx / TK;
                bk = idx % TK;
            }
            var bv = 0.0;
            if (k0 + bk < p.k && col0 + nn < p.n) {
                bv = b[p.b_off + (k0 + bk) * p.b_rs + (col0 + nn) * p.b_cs];
            }
            b_tile[bk * TILE + nn] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TILE + lid.y * 4u;
            let bb = kk * TILE + lid.x * 4u;
            let b4 = vec4<f32>(b_tile[bb], b_tile[bb + 1u], b_tile[bb + 2u], b_tile[bb + 3u]);
            acc0 += a_tile[ab] * b4;
            acc1 += a_tile[ab + 1u] * b4;
            acc2 += a_tile[ab + 2u] * b4;
            acc3 += a_tile[ab + 3u] * b4;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        var row_acc = acc0;
        switch i {
            case 1u: { row_acc = acc1; }
            case 2u: { row_acc = acc2; }
            case 3u: { row_acc = acc3; }
            default: {}
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (r < p.m && col < p.n) {
                let e = p.c_off + r * p.n + col;
                if (p.accumulate != 0u) {
                    c[e] = c[e] + row_acc[j];
                } else {
                    c[e] = row_acc[j];
                }
            }
        }
    }
}
