// The products of GPU training (src/gpu/train.rs): C[m, n] (+)= Σ_k A[m, k] · B[k, n] on
// strided views of A and B (element (r, c) at off + r·rs + c·cs, so a transposed operand is
// the same buffer with its strides swapped; a stride of 0 repeats a value, e.g. a single 1
// as a ones vector for bias sums). C is row-major from c_off, n values a row.
// Used for the input projection of all timesteps (X·W, the bias), and after the backward
// steps for every weight gradient over all timesteps at once (Xᵀ·dZx, H_prevᵀ·dZh, the
// bias sums) and dX = dZx·Wᵀ.
// CPU twin: `cpu::reference::matmul` as `train::recurrent::backward` calls it.
//
// A workgroup computes a TILE x TILE block of C: per round of TILE reduction values every
// thread stages one value of A and one of B in workgroup memory, then accumulates its
// output over the round. A long reduction is split by the host into several dispatches that
// accumulate (a software rasterizer's loop limit; see src/gpu/loops.rs `gemm_iterations`).

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

const TILE: u32 = 16u;

var<workgroup> ta: array<array<f32, 16>, 16>; // [row][k]
var<workgroup> tb: array<array<f32, 16>, 16>; // [k][column]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.y * TILE + l.y;
    let col = wg.x * TILE + l.x;
    var acc = 0.0;
    let rounds = (p.k + TILE - 1u) / TILE;
    for (var t = 0u; t < rounds; t++) {
        let ka = t * TILE + l.x;
        var va = 0.0;
        if (row < p.m && ka < p.k) {
            va = a[p.a_off + row * p.a_rs + ka * p.a_cs];
        }
        ta[l.y][l.x] = va;
        let kb = t * TILE + l.y;
        var vb = 0.0;
        if (kb < p.k && col < p.n) {
            vb = b[p.b_off + kb * p.b_rs + col * p.b_cs];
        }
        tb[l.y][l.x] = vb;
        workgroupBarrier();
        let live = min(TILE, p.k - t * TILE);
        for (var q = 0u; q < live; q++) {
            acc += ta[l.y][q] * tb[q][l.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let e = p.c_off + row * p.n + col;
        if (p.accumulate != 0u) {
            c[e] = c[e] + acc;
        } else {
            c[e] = acc;
        }
    }
}
