// One recurrent timestep of GPU training (src/gpu/train.rs), forward with its tape, or
// backward, for every (batch row, unit): LSTM, GRU with reset_after, SimpleRNN (the CELL
// constant). CPU twin: `train::recurrent::forward` and `backward` (src/train/recurrent.rs),
// written alike: the same tape, the same cell formulas, the same mask rule.
//
// Layouts (b: batch row, t: time index, s: processing step, GH = GATES·H):
//   proj   x W + b of every step, [B, T, GH] (Keras's gate blocks: i, f, c, o / z, r, h)
//   mask   [B, T] (u32, 0 = masked)
//   state  (forward) h ping-pong [2, B, H] (step s reads half s % 2), c [B, H], last [B, H]
//   tape   zh = h U (+ the recurrent bias) [B, T, GH], h_prev [B, T, HP] (HP = H, or H + 1
//          with a recurrent bias: a trailing 1, so that H_prevᵀ·dZh gives its gradient as a
//          last row), c_prev [B, T, H]
//   seq    the output sequence [B, T, H] in processing order
//   bstate (backward) g = dL/dh after the step, without the output's part [B, H];
//          dy = the output cotangent reaching this step [B, H]; dc [B, H]
//   dz     d(recurrent side) [B, T, GH], then (GRU) d(input side) [B, T, GH]; an LSTM's and
//          SimpleRNN's are equal, so only the first is written
//
// forward (thread (j, RB rows)): the recurrent product h_prev · U for unit j's gates, the tape,
// then Keras's cell and mask rule (a masked row keeps its states and repeats the last
// output, or zeros with zero_output_for_mask).
// backward (steps last first): first the transpose of the previous dispatch's recurrent
// product, g += dZh[b, t_prev, :] · U[j, :]ᵀ (the later step's dh_prev; `finish` runs only
// this, for dh0), then the cell backward: the gates recomputed from the tape, dz written,
// dc passed on. Per present step, with dh = g + dy:
//   LSTM:      do = dh·act(c);  dc += dh·o·act'(c);  dz = [dc·g·rec'(i), dc·c_prev·rec'(f),
//              dc·i·act'(g), do·rec'(o)];  dc_prev = dc·f;  g = 0
//   GRU:       dz_z = dh·(h_prev - hh)·rec'(z);  dph = dh·(1 - z)·act'(hh);
//              dr = dph·zh_h·rec'(r);  dZh = [dz_z, dr, dph·r];  dZx = [dz_z, dr, dph];  g = dh·z
//   SimpleRNN: dz = dh·act'(a);  g = 0
// A masked step passes g and dc on; dy passes to the previous output unless
// zero_output_for_mask. The weight gradients are then products over all steps
// (train_gemm.wgsl).

const CELL_LSTM: u32 = 0u;
const CELL_GRU: u32 = 1u;
const CELL_SIMPLE_RNN: u32 = 4u;
override CELL: u32 = 0u;
override GATES: u32 = 4u;
override ACTIVATION: u32 = 0u;
override RECURRENT_ACTIVATION: u32 = 1u;
override ZERO_OUTPUT_FOR_MASK: bool = false;
override HAS_MASK: bool = false;
override RETURN_SEQUENCES: bool = false;
override HAS_RECURRENT_BIAS: bool = false;

struct TrainStepParams {
    batch: u32,
    units: u32,
    steps: u32,
    s: u32,        // the processing step
    t: u32,        // its time index
    t_prev: u32,   // backward: the time index of the step the previous dispatch ran
    has_prev: u32, // backward: 1 when a previous dispatch ran a step
    finish: u32,   // backward: 1 for the last dispatch (dh0 only)
}

@group(0) @binding(0) var<uniform> p: TrainStepParams;

const WG: u32 = 64u;
const RB: u32 = 4u; // batch rows per thread

// d act(x)/dx from the pre-activation x and y = act(x). CPU twin: `derivative_at` (and
// `derivative`) in src/train/activation.rs.
fn dact(id: u32, x: f32, y: f32) -> f32 {
    switch id {
        case 0u: { return 1.0 - y * y; }                                            // tanh
        case 1u: { return y * (1.0 - y); }                                          // sigmoid
        case 2u: { return select(0.0, 1.0 / 6.0, y > 0.0 && y < 1.0); }             // hard_sigmoid
        case 3u: {                                                                  // hard_sigmoid (Keras 2)
            let u = 0.2 * x + 0.5;
            return select(0.0, 0.2, u >= 0.0 && u <= 1.0);
        }
        case 4u: { return select(0.0, 1.0, y > 0.0); }                              // relu
        case 5u: { return 1.0; }                                                    // linear
        case 6u: { return select(exp_f32(x), 1.0, x > 0.0); }                       // elu
        case 7u: {                                                                  // selu
            return select(1.0507009873554805 * 1.6732632423543772 * exp_f32(x), 1.0507009873554805, x > 0.0);
        }
        case 8u: { return sigmoid(x); }                                             // softplus
        case 9u: {                                                                  // softsign
            let d = 1.0 + abs(x);
            return 1.0 / (d * d);
        }
        case 10u: {                                                                 // swish
            let s = sigmoid(x);
            return s + x * s * (1.0 - s);
        }
        case 11u: {                                                                 // gelu
            let phi = exp(-(x * x) * 0.5) * 0.3989422804014327;
            return 0.5 * (1.0 + erf_approx(x * 0.7071067811865476)) + x * phi;
        }
        case 12u: { return select(0.0, 1.0, x > 0.0 && x < 6.0); }                  // relu6
        case 13u: { return exp_f32(x); }                                            // exponential
        default: { return 1.0; }
    }
}

// The stride of h_prev in the tape.
fn hp_stride() -> u32 {
    return p.units + select(0u, 1u, HAS_RECURRENT_BIAS);
}

fn present_at(b: u32, t: u32) -> bool {
    if (HAS_MASK) {
        return mask[b * p.steps + t] != 0u;
    }
    return true;
}

@group(0) @binding(1) var<storage, read> rk: array<f32>;   // forward: U [H, GH] then the recurrent bias [GH]; backward: Uᵀ [GH, H]
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
