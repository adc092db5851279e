// One value in, one value out, over a whole tensor (MODE, an override constant):
//   0 an activation (ACTIVATION, the ids of common.wgsl): Activation, ReLU, ELU
//   1 ReLU with slope/threshold/max: v >= b ? v : a * (v - b), then f32::min(., c) if has_max
//   2 PReLU: v < 0 ? v * alpha[i % period] : v
//   3 NotEqual(x, a): 1.0 where v != a, else 0.0
//   4 fill with a (an all-present mask)
//   5 v / a (Average)
// and per row of `width` values (count = rows):
//   6 softmax over the row (the max ignores NaN, as f32::max)
//   7 Any over the row: 1.0 when some value is not 0.0
// CPU twins: `Activate`, `Leaky`, `PRelu` (src/graph/core.rs), `NotEqual`, `AnyOp`,
// `Merge` (Average) (src/graph/combine.rs), `apply_act` (src/graph/ops.rs).

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
            let v = x[i];
            var y = select(p.a * (v - p.b), v, v >= p.b);
            // min(y, c) as Rust's f32::min: a NaN y gives c
            if (p.has_max != 0u && (y > p.c || is_nan(y))) {
                y = p.c;
            }
            out[i] = y;
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
