// What step.wgsl and sequence.wgsl share (prepended to both, after common.wgsl): the
// pipeline-overridable constants that select activations and flags, the buffers (binding 0,
// the parameter block, is each kernel's own), and the LSTM cell.

override ACTIVATION: u32 = 0u;
override RECURRENT_ACTIVATION: u32 = 1u;
override ZERO_OUTPUT_FOR_MASK: bool = false;
override HAS_MASK: bool = false;
override WRITE_SEQUENCE: bool = false;

// The recurrent kernel with each unit's four gates side by side, as an H x H texture:
// texel (j, k) holds (R[k, j], R[k, H + j], R[k, 2H + j], R[k, 3H + j]). One fetch per
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
