// Activation functions shared by the step and model kernels; prepended to their sources.
// The ids match `Activation::id()` (src/activation.rs), whose `apply` is the CPU twin.
//
// Non-finite values give what the CPU twin (and Keras) gives. WGSL leaves to the
// implementation what min/max/clamp do with NaN, what exp does on overflow and how exact a
// division by a huge value is, so those cases are spelled out: a NaN argument is returned
// before any clamp, exp overflows to inf past ln(f32::MAX), sigmoid is exactly 0 where
// e^-x overflows, and inf/inf is NaN. NaN is detected on the bits (a compiler may fold
// `x != x` to false).

const EXP_OVERFLOW: f32 = 88.72283; // ln(f32::MAX)
const TANH_MAX: f32 = 15.0;         // tanh(15) rounds to 1 in f32

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

fn f32_inf() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

fn f32_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// e^x as f32's exp: inf past ln(f32::MAX).
fn exp_f32(x: f32) -> f32 {
    return select(exp(min(x, EXP_OVERFLOW)), f32_inf(), x > EXP_OVERFLOW);
}

fn safe_tanh(x: f32) -> f32 {
    return tanh(clamp(x, -TANH_MAX, TANH_MAX));
}

fn sigmoid(x: f32) -> f32 {
    return select(1.0 / (1.0 + exp_f32(-x)), 0.0, -x > EXP_OVERFLOW);
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7); ±1 past |x| = 10, as in f32.
fn erf_approx(x: f32) -> f32 {
    let a = min(abs(x), 10.0);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

fn act(id: u32, x: f32) -> f32 {
    if (is_nan(x)) {
        return x;
    }
    switch id {
        case 0u: { return safe_tanh(x); }                                     // tanh
        case 1u: { return sigmoid(x); }                                       // sigmoid
        case 2u: { return clamp(x + 3.0, 0.0, 6.0) / 6.0; }                   // hard_sigmoid (Keras 3)
        case 3u: { return clamp(0.2 * x + 0.5, 0.0, 1.0); }                   // hard_sigmoid (Keras 2)
        case 4u: { return max(x, 0.0); }                                      // relu
        case 5u: { return x; }                                                // linear
        case 6u: { return select(exp(min(x, 0.0)) - 1.0, x, x > 0.0); }       // elu
        case 7u: {                                                            // selu
            return 1.0507009873554805 * select(1.6732632423543772 * (exp(min(x, 0.0)) - 1.0), x, x > 0.0);
        }
        case 8u: { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }           // softplus
        case 9u: { return select(x / (1.0 + abs(x)), f32_nan(), is_inf(x)); } // softsign (inf/inf)
        case 10u: {                                                           // swish / silu
            // x / (1 + e^-x): -0 where e^-x overflows, NaN at -inf (inf/inf)
            let tiny = select(0.0, f32_nan(), is_inf(x));
            return select(x / (1.0 + exp_f32(-x)), tiny, -x > EXP_OVERFLOW);
        }
        case 11u: {                                                           // gelu
            // NaN at -inf (-inf · 0)
            let g = 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476));
            return select(g, f32_nan(), is_inf(x) && x < 0.0);
        }
        case 12u: { return clamp(x, 0.0, 6.0); }                              // relu6
        case 13u: { return exp_f32(x); }                                      // exponential
        default: { return x; }
    }
}
