// The LSTM cell for one (batch row, unit), shared by step.wgsl and sequence.wgsl (prepended
// to both, after common.wgsl). CPU twin: `cell_update` in src/cpu.rs.
// z: the pre-activations of the gates (i, f, c, o); returns (h_t, c_t).

fn lstm_cell(z: vec4<f32>, c_prev: f32) -> vec2<f32> {
    let i = act(RECURRENT_ACTIVATION, z.x);
    let f = act(RECURRENT_ACTIVATION, z.y);
    let g = act(ACTIVATION, z.z);
    let o = act(RECURRENT_ACTIVATION, z.w);
    let c_new = f * c_prev + i * g;
    return vec2<f32>(o * act(ACTIVATION, c_new), c_new);
}
