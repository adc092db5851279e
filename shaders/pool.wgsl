// Pooling over time on x[B, T, C], one thread per output value out[b, o, c]:
// the taps pos = o * stride + k - left (k < size) inside [0, T); MAX takes their maximum
// (ignoring NaN, as f32::max, from -inf), else their mean over the taps present (with
// MASKED, only the steps whose mask is not 0: GlobalAveragePooling1D's masked mean).
// MaxPooling1D / AveragePooling1D (size, stride, left from the padding) and the global
// pools (size = T, one output step). CPU twins: `Pool` in src/graph/conv.rs, `GlobalPool`
// in src/graph/combine.rs.

override MAX: bool = false;
override MASKED: bool = false;

struct PoolParams {
    batch: u32,
    steps: u32,
    channels: u32,
    out_len: u32,
    size: u32,
    stride: u32,
    left: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.out_len * p.channels) {
        return;
    }
    let c = i % p.channels;
    let o = (i / p.channels) % p.out_len;
    let b = i / (p.channels * p.out_len);
    var acc = 0.0;
    if (MAX) {
        acc = -bitcast<f32>(0x7f800000u);
    }
    var n = 0.0;
    for (var k = 0u; k < p.size; k++) {
        let pos = i32(o * p.stride + k) - i32(p.left);
        if (pos < 0 || pos >= i32(p.steps)) {
            continue;
        }
        let v = x[(b * p.steps + u32(pos)) * p.channels + c];
        if (MAX) {
            let v_nan = (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
            let a_nan = (bitcast<u32>(acc) & 0x7fffffffu) > 0x7f800000u;
            acc = select(select(max(acc, v), acc, v_nan), v, a_nan);
        } else {
            if (MASKED && mask[b * p.steps + u32(pos)] == 0.0) {
                continue;
            }
            acc += v;
            n += 1.0;
        }
    }
    if (!MAX) {
        if (MASKED) {
            acc = acc / n;
        } else {
            acc = acc / max(n, 1.0);
        }
    }
    out[i] = acc;
}
