// The activation of a Keras `Dense` layer, applied in place to y[rows, n] after the
// projection kernel computed y = x * kernel + bias: an element-wise activation (ACTIVATION,
// ids of common.wgsl) or, with SOFTMAX, exp(y - max) / sum over each row.
// CPU twin: `dense_forward` in src/model.rs.

override ACTIVATION: u32 = 5u;
override SOFTMAX: bool = false;

struct DenseParams {
    rows: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
}

@group(0) @binding(0) var<uniform> p: DenseParams;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    if (!SOFTMAX) {
        for (var j = 0u; j < p.n; j++) {
            y[base + j] = act(ACTIVATION, y[base + j]);
        }
        return;
    }
    // the max ignores NaN (as f32::max); exp of a NaN difference stays NaN (WGSL leaves
    // max and exp of NaN to the implementation, so both are spelled out)
    var m = -f32_inf();
    for (var j = 0u; j < p.n; j++) {
        let v = y[base + j];
        m = select(select(max(m, v), m, is_nan(v)), v, is_nan(m));
    }
    var sum = 0.0;
    for (var j = 0u; j < p.n; j++) {
        let d = y[base + j] - m;
        let e = select(exp_f32(d), d, is_nan(d));
        y[base + j] = e;
        sum += e;
    }
    for (var j = 0u; j < p.n; j++) {
        y[base + j] = y[base + j] / sum;
    }
}
