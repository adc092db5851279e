// Input projection for a range of timesteps: proj[B*tc, 4H] = x[rows, I] * kernel[I, 4H] + bias.
// CPU twin: `project_inputs` in src/cpu.rs.
//
// A tiled GEMM in workgroup memory: each workgroup computes a 64 x 64 tile of proj with
// 16 x 16 threads, each thread a 4 x 4 block; K advances in steps of 16.
// Rows of proj are batch-major within the chunk (row = b * tc + local step); row r reads
// x row b * seq_len + t_lo + local step. Kernel, bias and proj keep Keras's column order.
// Thread (x, y) computes rows y + 16 i and columns x + 16 j (i, j < 4), so neighbouring
// threads read and write neighbouring addresses.

struct ProjParams {
    rows: u32,     // B * tc
    k: u32,        // I
    n: u32,        // 4H
    tc: u32,       // timesteps in this chunk
    seq_len: u32,  // T: x rows per batch row
    t_lo: u32,     // first timestep of the chunk
    has_bias: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: ProjParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> proj: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TILE]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TILE]

fn x_row(r: u32) -> u32 {
    return (r / p.tc) * p.seq_len + p.t_lo + r % p.tc;
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            // A: 64 rows x 16 k, consecutive threads read consecutive k of one row.
            let mm = idx / TK;
            let kk = idx % TK;
            let row = m0 + mm;
            let col = k0 + kk;
            var av = 0.0;
            if (row < p.rows && col < p.k) {
                av = x[x_row(row) * p.k + col];
            }
            a_tile[kk * TILE + mm] = av;
            // B: 16 k x 64 columns, consecutive threads read consecutive columns.
            let kb = idx / TILE;
            let nb = idx % TILE;
            var bv = 0.0;
            if (k0 + kb < p.k && n0 + nb < p.n) {
                bv = w[(k0 + kb) * p.n + n0 + nb];
            }
            b_tile[kb * TILE + nb] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let b = vec4<f32>(
                b_tile[kk * TILE + lid.x],
                b_tile[kk * TILE + lid.x + 16u],
                b_tile[kk * TILE + lid.x + 32u],
                b_tile[kk * TILE + lid.x + 48u],
            );
            acc0 = fma(vec4<f32>(a_tile[kk * TILE + lid.y]), b, acc0);
            acc1 = fma(vec4<f32>(a_tile[kk * TILE + lid.y + 16u]), b, acc1);
            acc2 = fma(vec4<f32>(a_tile[kk * TILE + lid.y + 32u]), b, acc2);
            acc3 = fma(vec4<f32>(a_tile[kk * TILE + lid.y + 48u]), b, acc3);
        }
        workgroupBarrier();
    }
    var bias4 = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let col = n0 + lid.x + 16u * j;
        if (p.has_bias != 0u && col < p.n) {
            bias4[j] = bias[col];
        }
    }
    store_row(m0 + lid.y, n0 + lid.x, acc0 + bias4);
    store_row(m0 + lid.y + 16u, n0 + lid.x, acc1 + bias4);
    store_row(m0 + lid.y + 32u, n0 + lid.x, acc2 + bias4);
    store_row(m0 + lid.y + 48u, n0 + lid.x, acc3 + bias4);
}

// Stores columns col + 16 j of one row.
fn store_row(row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.rows) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + 16u * j < p.n) {
            proj[row * p.n + col + 16u * j] = v[j];
        }
    }
}
