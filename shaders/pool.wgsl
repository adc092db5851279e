// Pooling on x[B, H, W, C] (a 1-D layer's x[B, T, C] is [B, 1, T, C]), one thread per output
// value out[b, oy, ox, c]: the taps (oy * stride_h + ky - top, ox * stride_w + kx - left)
// (ky < size_h, kx < size_w) inside the input; MAX takes their maximum (ignoring NaN, as
// f32::max, from -inf), else their mean over the taps present (with MASKED, only the steps
// whose mask is not 0: GlobalAveragePooling1D's masked mean; H = 1 there).
// MaxPooling1D/2D / AveragePooling1D/2D (size, stride, padding before from the padding) and
// the global pools (size = the whole input, one output). CPU twins: `Pool` in
// src/graph/conv.rs, `GlobalPool` in src/graph/combine.rs.

override MAX: bool = false;
override MASKED: bool = false;

struct PoolParams {
    batch: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    size_h: u32,
    size_w: u32,
    stride_h: u32,
    stride_w: u32,
    top: u32,
    left: u32,
}

@group(0) @binding(0) var<uniform> p: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.out_h * p.out_w * p.channels) {
        return;
    }
    let c = i % p.channels;
    let ox = (i / p.channels) % p.out_w;
    let oy = (i / (p.channels * p.out_w)) % p.out_h;
    let b = i / (p.channels * p.out_w * p.out_h);
    var acc = 0.0;
    if (MAX) {
        acc = -bitcast<f32>(0x7f800000u);
    }
    var n = 0.0;
    for (var ky = 0u; ky < p.size_h; ky++) {
        let py = i32(oy * p.stride_h + ky) - i32(p.top);
        if (py < 0 || py >= i32(p.in_h)) {
            continue;
        }
        for (var kx = 0u; kx < p.size_w; kx++) {
            let px = i32(ox * p.stride_w + kx) - i32(p.left);
            if (px < 0 || px >= i32(p.in_w)) {
                continue;
            }
            let pixel = (b * p.in_h + u32(py)) * p.in_w + u32(px);
            let v = x[pixel * p.channels + c];
            if (MAX) {
                let v_nan = (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
                let a_nan = (bitcast<u32>(acc) & 0x7fffffffu) > 0x7f800000u;
                acc = select(select(max(acc, v), acc, v_nan), v, a_nan);
            } else {
                if (MASKED && mask[pixel] == 0.0) {
                    continue;
                }
                acc += v;
                n += 1.0;
            }
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
