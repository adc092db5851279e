// Keras `Conv1D` (channels_last) as a tiled implicit GEMM, one dispatch per group:
//   out[r, f0 + n] = act(bias[f0 + n] + sum_q A[r, q] * W[q, f0 + n])
// with r = (b, o) over B * out_len rows and q = (k, c) over kernel_size * channels-per-group,
// A[r, q] = x[b, o * stride + k * dilation - left, c0 + c] (0 outside [0, T): the padding),
// W = the Keras kernel [kernel_size, in/groups, filters] read as [q, filters].
// A workgroup of 16 x 16 threads computes a 64 x 64 tile of the output, 4 x 4 per thread in
// registers, staging 64 x 16 of A and 16 x 64 of W per round in workgroup memory (each value
// loaded once per tile instead of once per output).
// CPU twin: `Conv1D` in src/graph/conv.rs.

override ACTIVATION: u32 = 5u;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

struct ConvParams {
    rows: u32,
    out_len: u32,
    steps: u32,
    cin: u32,
    k: u32,
    cg: u32,
    n: u32,
    filters: u32,
    stride: u32,
    dilation: u32,
    left: u32,
    c0: u32,
    f0: u32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TM]
var<workgroup> w_tile: array<f32, 1024>; // [TK][TN]

fn a_value(r: u32, q: u32) -> f32 {
    if (r >= p.rows || q >= p.k) {
        return 0.0;
    }
    let b = r / p.out_len;
    let o = r % p.out_len;
    let kk = q / p.cg;
    let c = q % p.cg;
    let pos = i32(o * p.stride + kk * p.dilation) - i32(p.left);
    if (pos < 0 || pos >= i32(p.steps)) {
        return 0.0;
    }
    return x[(b * p.steps + u32(pos)) * p.cin + p.c0 + c];
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let flat = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var q0 = 0u; q0 < p.k; q0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = flat + e * 256u;
            // A: idx = m * TK + kk (consecutive threads read consecutive channels)
            let m = idx / TK;
            let kk = idx % TK;
            a_tile[kk * TM + m] = a_value(row0 + m, q0 + kk);
            // W: idx = kk * TN + nn (consecutive threads read consecutive filters)
            let wk = idx / TN;
            let nn = idx % TN;
            var wv = 0.0;
            if (q0 + wk < p.k && col0 + nn < p.n) {
                wv = w[(q0 + wk) * p.filters + p.f0 + col0 + nn];
            }
            w_tile[wk * TN + nn] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var wv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[kk * TM + lid.y * 4u + i];
                wv[i] = w_tile[kk * TN + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = acc[i][j] + av[i] * wv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (r < p.rows && c < p.n) {
                let f = p.f0 + c;
                var v = acc[i][j];
                if (p.has_bias != 0u) {
                    v = bias[f] + v;
                }
                out[r * p.filters + f] = act(ACTIVATION, v);
            }
        }
    }
}
