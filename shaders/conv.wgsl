// Keras `Conv2D` and `Conv1D` (channels_last; a 1-D layer is the 2-D one on [B, 1, T, C]) as
// a tiled implicit GEMM, one dispatch per group:
//   out[r, f0 + n] = act(bias[f0 + n] + sum_q A[r, q] * W[q, f0 + n])
// with r = (b, oy, ox) over B * out_h * out_w rows and q = (ky, kx, c) over
// kh * kw * channels-per-group,
// A[r, q] = x[b, oy * stride_h + ky * dil_h - top, ox * stride_w + kx * dil_w - left, c0 + c]
// (0 outside [0, in_h) x [0, in_w): the padding), W = the Keras kernel
// [kh, kw, in/groups, filters] read as [q, filters].
// A workgroup of 16 x 16 threads computes a 64 x 64 tile of the output, 4 x 4 per thread in
// registers, staging 64 x 16 of A and 16 x 64 of W per round in workgroup memory (each value
// loaded once per tile instead of once per output).
// CPU twin: `Conv` in src/graph/conv.rs.

override ACTIVATION: u32 = 5u;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

struct ConvParams {
    rows: u32,
    out_h: u32,
    out_w: u32,
    in_h: u32,
    in_w: u32,
    cin: u32,
    k: u32,
    kw: u32,
    cg: u32,
    n: u32,
    filters: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    top: u32,
    left: u32,
    c0: u32,
    f0: u32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TM]
var<workgroup> w_tile: array<f32, 1024>; // [TK][TN]

// Per tile row: the input pixel offset of its image and its first tap's position
// (o * stride - padding; far below 0 for rows past the end). Per round: each reduction
// index's tap offsets (k * dilation; far past the input when past the end) and channel.
// Computed once, so the staging loop has no division.
var<workgroup> row_base: array<u32, 64>;
var<workgroup> row_y: array<i32, 64>;
var<workgroup> row_x: array<i32, 64>;
var<workgroup> q_ty: array<i32, 16>;
var<workgroup> q_tx: array<i32, 16>;
var<workgroup> q_ch: array<u32, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let flat = lid.y * 16u + lid.x;
    if (flat < TM) {
        let r = row0 + flat;
        let per_image = p.out_h * p.out_w;
        let rem = r % per_image;
        row_base[flat] = (r / per_image) * p.in_h * p.in_w;
        row_y[flat] = select(-0x3fffffff, i32((rem / p.out_w) * p.stride_h) - i32(p.top), r < p.rows);
        row_x[flat] = select(-0x3fffffff, i32((rem % p.out_w) * p.stride_w) - i32(p.left), r < p.rows);
    }
    // rows lid.y * 4 + 0..3 of the tile, each 4 columns (lid.x * 4 + 0..3)
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var q0 = 0u; q0 < p.k; q0 += TK) {
        if (flat < TK) {
            let q = q0 + flat;
            let tap = q / p.cg;
            q_ty[flat] = select(0x3fffffff, i32((tap / p.kw) * p.dil_h), q < p.k);
            q_tx[flat] = select(0x3fffffff, i32((tap % p.kw) * p.dil_w), q < p.k);
            q_ch[flat] = p.c0 + q % p.cg;
        }
        workgroupBarrier();
        for (var e = 0u; e < 4u; e++) {
            let idx = flat + e * 256u;
            // A: idx = m * TK + kk (consecutive threads read consecutive channels)
            let m = idx / TK;
            let kk = idx % TK;
            let py = row_y[m] + q_ty[kk];
            let px = row_x[m] + q_tx[kk];
            var av = 0.0;
            if (py >= 0 && py < i32(p.in_h) && px >= 0 && px < i32(p.in_w)) {
                av = x[(row_base[m] + u32(py) * p.in_w + u32(px)) * p.cin + q_ch[kk]];
            }
            a_tile[kk * TM + m] = av;
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
            let ab = kk * TM + lid.y * 4u;
            let wb = kk * TN + lid.x * 4u;
            let w4 = vec4<f32>(w_tile[wb], w_tile[wb + 1u], w_tile[wb + 2u], w_tile[wb + 3u]);
            acc0 += a_tile[ab] * w4;
            acc1 += a_tile[ab + 1u] * w4;
            acc2 += a_tile[ab + 2u] * w4;
            acc3 += a_tile[ab + 3u] * w4;
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
            let c = col0 + lid.x * 4u + j;
            if (r < p.rows && c < p.n) {
                let f = p.f0 + c;
                var v = row_acc[j];
                if (p.has_bias != 0u) {
                    v = bias[f] + v;
                }
                out[r * p.filters + f] = act(ACTIVATION, v);
            }
        }
    }
}
