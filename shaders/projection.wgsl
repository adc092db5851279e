// Input projection for a range of timesteps: proj[B*tc, 4H] = x[rows, I] * kernel[I, 4H] + bias.
// CPU twin: `project_inputs` in src/cpu/reference.rs.
//
// Rows of proj are batch-major within the chunk (row = b * tc + local step); row r reads
// x row b * seq_len + t_lo + local step. Kernel, bias and proj keep Keras's column order.
// A workgroup of 64 threads covers 256 columns and RB = 8 rows: thread x owns columns
// n0 + x + 64 q (q < 4) of those 8 rows, 32 accumulators, so every kernel value it loads
// serves 8 rows and every x value (the same address across the workgroup) serves 4 columns.
// (8 rows ran the projection about 20% faster than 4 on lavapipe; 16 was no better.)
// Neighbouring threads read and write neighbouring addresses. No workgroup memory and no
// barriers: a version tiled through workgroup memory ran at less than half this speed on
// lavapipe (timestamp queries: 2.4 against 5.8 GFLOP/s for the step kernel of this form).

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
// The kernel as this shader reads it: each thread's four columns side by side, one vec4
// per (k, thread): w[k * S + g * 64 + x] = (W[k, c], W[k, c + 64], W[k, c + 128],
// W[k, c + 192]) with c = 256 g + x and S = 64 * ceil(n / 256); zero past column n. One
// vec4 load instead of four scalar ones (lavapipe runs every storage load as a loop over its
// SIMD lanes).
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> proj: array<f32>;
// x again, four values per element (the same buffer; read only when k is a multiple of 4,
// so that every row of x starts on a vec4).
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;

const WG: u32 = 64u;

fn x_row(r: u32) -> u32 {
    return (r / p.tc) * p.seq_len + p.t_lo + r % p.tc;
}

fn store(row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.rows) {
        return;
    }
    for (var q = 0u; q < 4u; q++) {
        if (col + q * WG < p.n) {
            proj[row * p.n + col + q * WG] = v[q];
        }
    }
}

const RB: u32 = 8u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x * 4u * WG + lid.x;
    let r0 = wid.y * RB;
    let last = p.rows - 1u;
    // Rows past the end read the last row (always valid) and are not stored.
    var xo: array<u32, RB>;
    for (var r = 0u; r < RB; r++) {
        xo[r] = x_row(min(r0 + r, last)) * p.k;
    }
    // Columns past the end read column 0 (always valid) and are not stored.
    var c = vec4<u32>(col, col + WG, col + 2u * WG, col + 3u * WG);
    c = select(vec4<u32>(0u), c, c < vec4<u32>(p.n));
    var acc: array<vec4<f32>, RB>;
    for (var r = 0u; r < RB; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    let stride = (p.n + 4u * WG - 1u) / (4u * WG) * WG;
    let wi = wid.x * WG + lid.x;
    if (p.k % 4u == 0u) {
        // Four k at a time: one vec4 of x per row and four of the kernel.
        for (var k = 0u; k < p.k; k += 4u) {
            let w0 = w[k * stride + wi];
            let w1 = w[(k + 1u) * stride + wi];
            let w2 = w[(k + 2u) * stride + wi];
            let w3 = w[(k + 3u) * stride + wi];
            for (var r = 0u; r < RB; r++) {
                let xv = x4[(xo[r] + k) / 4u];
                acc[r] = fma(vec4<f32>(xv.x), w0, fma(vec4<f32>(xv.y), w1,
                    fma(vec4<f32>(xv.z), w2, fma(vec4<f32>(xv.w), w3, acc[r]))));
            }
        }
    } else {
        for (var k = 0u; k < p.k; k++) {
            let wk = w[k * stride + wi];
            for (var r = 0u; r < RB; r++) {
                acc[r] = fma(vec4<f32>(x[xo[r] + k]), wk, acc[r]);
            }
        }
    }
    var b = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        b = vec4<f32>(bias[c.x], bias[c.y], bias[c.z], bias[c.w]);
    }
    for (var r = 0u; r < RB; r++) {
        store(r0 + r, col, acc[r] + b);
    }
}
