// Activation functions shared by the step and model kernels; prepended to their sources.
// The ids match `Activation::id()` (src/activation.rs), whose `apply` is the CPU twin.
// Arguments of exp and tanh are clamped: large inputs would otherwise give inf/inf = NaN.

const EXP_MAX: f32 = 88.0;
const TANH_MAX: f32 = 15.0;

fn safe_exp(x: f32) -> f32 {
    return exp(min(x, EXP_MAX));
}

fn safe_tanh(x: f32) -> f32 {
    return tanh(clamp(x, -TANH_MAX, TANH_MAX));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + safe_exp(-x));
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * safe_exp(-x * x);
    return select(y, -y, x < 0.0);
}

fn act(id: u32, x: f32) -> f32 {
    switch id {
        case 0u: { return safe_tanh(x); }                                     // tanh
        case 1u: { return sigmoid(x); }                                       // sigmoid
        case 2u: { return clamp(x + 3.0, 0.0, 6.0) / 6.0; }                   // hard_sigmoid (Keras 3)
        case 3u: { return clamp(0.2 * x + 0.5, 0.0, 1.0); }                   // hard_sigmoid (Keras 2)
        case 4u: { return max(x, 0.0); }                                      // relu
        case 5u: { return x; }                                                // linear
        case 6u: { return select(safe_exp(x) - 1.0, x, x > 0.0); }            // elu
        case 7u: {                                                            // selu
            return 1.0507009873554805 * select(1.6732632423543772 * (safe_exp(x) - 1.0), x, x > 0.0);
        }
        case 8u: { return max(x, 0.0) + log(1.0 + safe_exp(-abs(x))); }      // softplus
        case 9u: { return x / (1.0 + abs(x)); }                               // softsign
        case 10u: { return x * sigmoid(x); }                                  // swish / silu
        case 11u: { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); } // gelu
        case 12u: { return clamp(x, 0.0, 6.0); }                              // relu6
        case 13u: { return safe_exp(x); }                                     // exponential
        default: { return x; }
    }
}
