// What step.wgsl and sequence.wgsl share (prepended to both, after common.wgsl): the
// pipeline-overridable constants that select the cell, activations and flags, the buffers
// (binding 0, the parameter block, is each kernel's own), and the cells: LSTM, GRU (both
// forms) and SimpleRNN.

// Which cell step.wgsl and sequence.wgsl run, and its gate blocks per row of the projection
// (4, 3 or 1). A GRU without reset_after takes two dispatches a step in step.wgsl: the reset
// gate (CELL_GRU_RESET: r·h into the c half of state_out, which a GRU does not use), then the
// candidate (CELL_GRU_CANDIDATE); sequence.wgsl runs both halves for CELL_GRU_RESET.
const CELL_LSTM: u32 = 0u;
const CELL_GRU: u32 = 1u;
const CELL_GRU_RESET: u32 = 2u;
const CELL_GRU_CANDIDATE: u32 = 3u;
const CELL_SIMPLE_RNN: u32 = 4u;
override CELL: u32 = 0u;
override GATES: u32 = 4u;
override ACTIVATION: u32 = 0u;
override RECURRENT_ACTIVATION: u32 = 1u;
override ZERO_OUTPUT_FOR_MASK: bool = false;
override HAS_MASK: bool = false;
override WRITE_SEQUENCE: bool = false;

// The recurrent kernel with each unit's gates side by side, as an H x H texture:
// texel (j, k) holds (R[k, j], R[k, H + j], R[k, 2H + j], R[k, 3H + j]) (zero past the
// cell's gates). A GRU with reset_after has one row more: texel (j, H) holds its recurrent
// bias (z, r, h; zero without a bias). One fetch per
// (k, unit); lavapipe builds texel fetches as vector gathers, where it runs each storage load
// as a loop over its SIMD lanes.
@group(0) @binding(1) var rk: texture_2d<f32>;

fn rk_at(k: u32, j: u32) -> vec4<f32> {
    return textureLoad(rk, vec2<u32>(j, k), 0);
}
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read> state_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> state_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> last: array<f32>;
@group(0) @binding(7) var<storage, read_write> seq: array<f32>;

// The LSTM cell for one (batch row, unit). CPU twin: `cell_update` in src/cpu/reference.rs.
// z: the pre-activations of the gates (i, f, c, o); returns (h_t, c_t).

fn lstm_cell(z: vec4<f32>, c_prev: f32) -> vec2<f32> {
    let i = act(RECURRENT_ACTIVATION, z.x);
    let f = act(RECURRENT_ACTIVATION, z.y);
    let g = act(ACTIVATION, z.z);
    let o = act(RECURRENT_ACTIVATION, z.w);
    let c_new = f * c_prev + i * g;
    return vec2<f32>(o * act(ACTIVATION, c_new), c_new);
}

// The GRU cell with reset_after for one (batch row, unit). CPU twin: `gru_cell` in
// src/cpu/cells.rs. x: the input projection's z, r, h blocks; rec: h · R + recurrent bias.
fn gru_cell(x: vec3<f32>, rec: vec3<f32>, h_prev: f32) -> f32 {
    let z = act(RECURRENT_ACTIVATION, x.x + rec.x);
    let r = act(RECURRENT_ACTIVATION, x.y + rec.y);
    let hh = act(ACTIVATION, x.z + r * rec.z);
    return z * h_prev + (1.0 - z) * hh;
}

// A GRU without reset_after, first dispatch: r · h. CPU twin: `gru_reset_gate`.
fn gru_reset_gate(xr: f32, rec_r: f32, h_prev: f32) -> f32 {
    return act(RECURRENT_ACTIVATION, xr + rec_r) * h_prev;
}

// A GRU without reset_after, second dispatch: rec_z = h · R_z, rec_h = (r · h) · R_h. CPU
// twin: `gru_candidate`.
fn gru_candidate(xz: f32, xh: f32, rec_z: f32, rec_h: f32, h_prev: f32) -> f32 {
    let z = act(RECURRENT_ACTIVATION, xz + rec_z);
    let hh = act(ACTIVATION, xh + rec_h);
    return z * h_prev + (1.0 - z) * hh;
}

// SimpleRNN. CPU twin: `rnn_cell`.
fn rnn_cell(x: f32, rec: f32) -> f32 {
    return act(ACTIVATION, x + rec);
}
