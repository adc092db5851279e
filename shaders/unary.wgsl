// One value in, one value out, over a whole tensor (MODE, an override constant):
//   0 an activation (ACTIVATION, the ids of common.wgsl): Activation, ReLU, ELU
//   1 ReLU(negative_slope a, threshold b, max_value c if has_max), as Keras 3 computes it
//     (see keras_relu)
//   2 PReLU: v < 0 ? v * alpha[i % period] : v
//   3 NotEqual(x, a): 1.0 where v != a, else 0.0
//   4 fill with a (an all-present mask)
//   5 v / a (Average)
// and per row of `width` values (count = rows):
//   6 softmax over the row (the max ignores NaN, as f32::max)
//   7 Any over the row: 1.0 when some value is not 0.0
// CPU twins: `Activate`, `Leaky`, `PRelu` (src/graph/activations.rs), `FillLike`
// (src/graph/core.rs), `NotEqual`, `AnyOp`, `Merge` (Average) (src/graph/combine.rs),
// `apply_act` (src/graph/ops.rs).

override MODE: u32 = 0u;
override ACTIVATION: u32 = 5u;

struct UnaryParams {
    count: u32,
    width: u32,
    period: u32,
    has_max: u32,
    a: f32,
    b: f32,
    c: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: UnaryParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> alpha: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// max that ignores a NaN operand, as Rust's f32::max
fn max_ignoring_nan(m: f32, v: f32) -> f32 {
    return select(select(max(m, v), m, is_nan(v)), v, is_nan(m));
}

fn relu_keeping_nan(u: f32) -> f32 {
    return select(0.0, u, u > 0.0 || is_nan(u));
}

// Keras 3's relu(x, negative_slope, max_value, threshold) on TensorFlow, NaN included.
// CPU twin: `keras_relu` in src/graph/activations.rs.
fn keras_relu(v: f32) -> f32 {
    if (p.a != 0.0 && p.has_max == 0u && p.b == 0.0) {
        return select(p.a * v, v, v >= 0.0 || is_nan(v));
    }
    var y = relu_keeping_nan(v);
    if (p.b != 0.0) {
        y = select(0.0, v, v > p.b);
    }
    if (p.has_max != 0u && !is_nan(y)) {
        y = min(max(y, 0.0), p.c);
    }
    if (p.a != 0.0) {
        y = y - p.a * relu_keeping_nan(p.b - v);
    }
    return y;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.count) {
        return;
    }
    switch MODE {
        case 0u: {
            out[i] = act(ACTIVATION, x[i]);
        }
        case 1u: {
            out[i] = keras_relu(x[i]);
        }
        case 2u: {
            let v = x[i];
            out[i] = select(v, v * alpha[i % p.period], v < 0.0);
        }
        case 3u: {
            out[i] = select(0.0, 1.0, x[i] != p.a || is_nan(x[i]));
        }
        case 4u: {
            out[i] = p.a;
        }
        case 5u: {
            out[i] = x[i] / p.a;
        }
        case 6u: {
            let base = i * p.width;
            var m = -f32_inf();
            for (var j = 0u; j < p.width; j++) {
                m = max_ignoring_nan(m, x[base + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < p.width; j++) {
                let d = x[base + j] - m;
                let e = select(exp_f32(d), d, is_nan(d));
                out[base + j] = e;
                sum += e;
            }
            for (var j = 0u; j < p.width; j++) {
                out[base + j] = out[base + j] / sum;
            }
        }
        default: {
            let base = i * p.width;
            var any = false;
            for (var j = 0u; j < p.width; j++) {
                let v = x[base + j];
                any = any || v != 0.0 || is_nan(v);
            }
            out[i] = select(0.0, 1.0, any);
        }
    }
}
