// LayerNormalization (LAYER: each row's mean and variance) and BatchNormalization (the
// moving statistics per feature) over the last axis, one thread per row:
//   out = (x - mean) * (1 / sqrt(var + eps)) * gamma + beta
// gamma and beta optional (scale / center). CPU twin: `Norm` in src/graph/combine.rs.

override LAYER: bool = true;

struct NormParams {
    rows: u32,
    width: u32,
    eps: f32,
    has_gamma: u32,
    has_beta: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> mean_in: array<f32>;
@group(0) @binding(5) var<storage, read> var_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var m = 0.0;
    var v = 0.0;
    if (LAYER) {
        for (var j = 0u; j < p.width; j++) {
            m += x[base + j];
        }
        m = m / f32(p.width);
        for (var j = 0u; j < p.width; j++) {
            let d = x[base + j] - m;
            v += d * d;
        }
        v = v / f32(p.width);
    }
    for (var j = 0u; j < p.width; j++) {
        var mj = m;
        var vj = v;
        if (!LAYER) {
            mj = mean_in[j];
            vj = var_in[j];
        }
        let inv = 1.0 / sqrt(vj + p.eps);
        let g = select(1.0, gamma[min(j, arrayLength(&gamma) - 1u)], p.has_gamma != 0u);
        let b = select(0.0, beta[min(j, arrayLength(&beta) - 1u)], p.has_beta != 0u);
        out[base + j] = (x[base + j] - mj) * inv * g + b;
    }
}
