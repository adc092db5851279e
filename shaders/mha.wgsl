// Keras `MultiHeadAttention`'s attention, one thread per (b, head, i): over the projected
// q [B, T, N*H], k [B, S, N*H] and v [B, S, N*Hv] (head n's columns n*H .. n*H + H),
//   logit[j] = (q . k) scaled (scores path: q scaled first, as Keras's; else the product),
//   replaced by FILL where the combined mask is 0 (query mask at i, value and key masks at
//   j, j > i with causal), then a softmax over j (NaN anywhere in the row gives a NaN row,
//   as the CPU twin; the scores path then zeroes the masked weights), written to
//   scores [B, N, T, S], and
//   out[b, i, n*Hv + d] = sum_j scores[b, n, i, j] * v[b, j, n*Hv + d].
// CPU twin: `Mha` in src/graph/mha.rs.

struct MhaParams {
    batch: u32,
    tq: u32,
    tv: u32,
    heads: u32,
    key_dim: u32,
    value_dim: u32,
    causal: u32,
    has_qmask: u32,
    has_vmask: u32,
    has_kmask: u32,
    scores_path: u32,
    masked: u32,
    scale: f32,
    fill: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MhaParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> qmask: array<f32>;
@group(0) @binding(5) var<storage, read> vmask: array<f32>;
@group(0) @binding(6) var<storage, read> kmask: array<f32>;
@group(0) @binding(7) var<storage, read_write> scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

fn allowed(b: u32, i: u32, j: u32) -> bool {
    var ok = true;
    if (p.has_qmask == 1u) { ok = ok && qmask[b * p.tq + i] != 0.0; }
    if (p.has_vmask == 1u) { ok = ok && vmask[b * p.tv + j] != 0.0; }
    if (p.has_kmask == 1u) { ok = ok && kmask[b * p.tv + j] != 0.0; }
    if (p.causal == 1u) { ok = ok && j <= i; }
    return ok;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = idx % p.tq;
    let n = (idx / p.tq) % p.heads;
    let b = idx / (p.tq * p.heads);
    let h = p.key_dim;
    let width = p.heads * h;
    let qb = (b * p.tq + i) * width + n * h;
    let row = ((b * p.heads + n) * p.tq + i) * p.tv;
    var m = -3.4028235e38;
    var nan = false;
    for (var j = 0u; j < p.tv; j++) {
        let kb = (b * p.tv + j) * width + n * h;
        var s = 0.0;
        for (var d = 0u; d < h; d++) {
            var qv = q[qb + d];
            if (p.scores_path == 1u) { qv = qv * p.scale; }
            s += qv * k[kb + d];
        }
        if (p.scores_path == 0u) { s = s * p.scale; }
        if (p.masked == 1u && !allowed(b, i, j)) { s = p.fill; }
        nan = nan || (s != s);
        m = max(m, s);
        scores[row + j] = s;
    }
    var sum = 0.0;
    for (var j = 0u; j < p.tv; j++) {
        let e = exp(scores[row + j] - m);
        scores[row + j] = e;
        sum += e;
    }
    for (var j = 0u; j < p.tv; j++) {
        var w = scores[row + j] / sum;
        if (nan) { w = bitcast<f32>(0x7fc00000u); }
        // the scores path zeroes masked weights after the softmax (Keras's Softmax layer)
        if (p.scores_path == 1u && p.masked == 1u && !allowed(b, i, j)) { w = 0.0; }
        scores[row + j] = w;
    }
    let hv = p.value_dim;
    let vw = p.heads * hv;
    let ob = (b * p.tq + i) * vw + n * hv;
    for (var d = 0u; d < hv; d++) {
        var acc = 0.0;
        for (var j = 0u; j < p.tv; j++) {
            acc += scores[row + j] * v[(b * p.tv + j) * vw + n * hv + d];
        }
        out[ob + d] = acc;
    }
}
