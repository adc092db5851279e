// Keras `Attention`, `AdditiveAttention` and `Dot`, in three dispatches (MODE):
//   0 scores, one thread per (b, i, j): s[b, i, j] from q[b, i, :] and k[b, j, :] (strided,
//     so that the Dot layer reads any axis): SCORE 0 dot (times scale when has_scale),
//     1 concat (concat_weight * sum tanh(scale * (q + k))), 2 additive
//     (sum scale[d] * tanh(q + k)), 3 Dot (with normalize, given as has_scale: over the l2 norms, their squares
//     floored at scale: 1e-12 as Keras 2's l2_normalize, 1e-14 for Keras 3's factor capped at 1e7)
//   1 softmax over j, one thread per (b, i): scores of value steps masked out (mask[b, j] == 0,
//     or j > i with causal) lowered by 1e9 first (Keras's padding mask), the max ignoring NaN
//   2 out[b, i, d] = sum_j w[b, i, j] * v[b, j, d], one thread per (b, i, d); 0 where the
//     query mask is 0.
// CPU twins: `Attention` in src/graph/attention.rs, `Dot` in src/graph/combine.rs.

override MODE: u32 = 0u;
override SCORE: u32 = 0u;

struct AttentionParams {
    batch: u32,
    tq: u32,
    tv: u32,
    dim: u32,
    vdim: u32,
    q_b: u32,
    q_i: u32,
    q_k: u32,
    k_b: u32,
    k_j: u32,
    k_k: u32,
    has_scale: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    concat_weight: f32,
}

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> scale: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<f32>;
@group(0) @binding(6) var<storage, read_write> w: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

fn tanh_f(x: f32) -> f32 {
    return select(safe_tanh(x), x, is_nan(x));
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (MODE == 0u) {
        if (idx >= p.batch * p.tq * p.tv) {
            return;
        }
        let j = idx % p.tv;
        let i = (idx / p.tv) % p.tq;
        let b = idx / (p.tv * p.tq);
        let qb = b * p.q_b + i * p.q_i;
        let kb = b * p.k_b + j * p.k_j;
        var s = 0.0;
        var sq = 0.0;
        var sk = 0.0;
        for (var d = 0u; d < p.dim; d++) {
            let a = q[qb + d * p.q_k];
            let c = k[kb + d * p.k_k];
            switch SCORE {
                case 0u: { s += a * c; }
                case 1u: {
                    let x = select(a + c, p.scale * (a + c), p.has_scale != 0u);
                    s += tanh_f(x);
                }
                case 2u: {
                    let sd = select(1.0, scale[d], p.has_scale != 0u);
                    s += sd * tanh_f(a + c);
                }
                default: {
                    s += a * c;
                    sq += a * a;
                    sk += c * c;
                }
            }
        }
        if (SCORE == 0u && p.has_scale != 0u) {
            s = s * p.scale;
        }
        if (SCORE == 1u) {
            s = p.concat_weight * s;
        }
        if (SCORE == 3u && p.has_scale != 0u) {
            s = s * (1.0 / sqrt(max(sq, p.scale))) * (1.0 / sqrt(max(sk, p.scale)));
        }
        w[idx] = s;
        return;
    }
    if (MODE == 1u) {
        if (idx >= p.batch * p.tq) {
            return;
        }
        let i = idx % p.tq;
        let b = idx / p.tq;
        let base = idx * p.tv;
        var m = -f32_inf();
        for (var j = 0u; j < p.tv; j++) {
            var s = w[base + j];
            let present = (p.has_mask == 0u || mask[b * p.tv + j] != 0.0) && (p.causal == 0u || j <= i);
            if (!present) {
                s = s - 1.0e9;
                w[base + j] = s;
            }
            m = select(select(max(m, s), m, is_nan(s)), s, is_nan(m));
        }
        var sum = 0.0;
        for (var j = 0u; j < p.tv; j++) {
            let d = w[base + j] - m;
            let e = select(exp_f32(d), d, is_nan(d));
            w[base + j] = e;
            sum += e;
        }
        for (var j = 0u; j < p.tv; j++) {
            w[base + j] = w[base + j] / sum;
        }
        return;
    }
    if (idx >= p.batch * p.tq * p.vdim) {
        return;
    }
    let d = idx % p.vdim;
    let bi = idx / p.vdim;
    let b = bi / p.tq;
    var acc = 0.0;
    for (var j = 0u; j < p.tv; j++) {
        acc += w[bi * p.tv + j] * v[(b * p.tv + j) * p.vdim + d];
    }
    if (p.has_mask != 0u && mask[bi] == 0.0) {
        acc = 0.0;
    }
    out[idx] = acc;
}
