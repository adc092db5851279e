// One recurrent timestep for every (batch row, unit): the recurrent product h_{t-1} * R, plus
// the input projection, the gates, the cell update and Keras's mask rule, in one dispatch
// (two for a GRU without reset_after). The cell is the CELL constant of cell.wgsl.
// CPU twins: the `h · R` product and `cell_update` in src/cpu/reference.rs (`run`) for the
// LSTM, the loop and cells of src/cpu/cells.rs for GRU and SimpleRNN.
// For small layers, sequence.wgsl runs many timesteps per dispatch instead.
//
// A workgroup covers WG = 64 units of BT = 4 batch rows; each thread computes one unit of 4
// rows, so every recurrent weight it loads serves 4 rows. h_{t-1} is read directly (the same
// address in every thread of a workgroup: a broadcast); a version staging h through workgroup
// memory with barriers measured 30% slower on lavapipe. The recurrent kernel is the H x H
// texture of cell.wgsl: each thread fetches its unit's gates for one k as one vec4 texel,
// and neighbouring threads fetch neighbouring texels. `proj` keeps Keras's gate-block order
// (GATES blocks of H columns per row: i, f, c, o for an LSTM, z, r, h for a GRU).
// h and c ping-pong: the step reads `state_in` and writes `state_out` (h at [0, BH), c at
// [BH, 2BH)). The cell, activation choice and flags are the overridable constants of
// cell.wgsl.


struct StepParams {
    batch: u32,
    units: u32,
    tc: u32,       // timesteps in the projection chunk
    t_local: u32,  // this step's row within the chunk
    t_abs: u32,    // this step's timestep (mask column)
    s_out: u32,    // this step's position in the output sequence (processing order)
    seq_len: u32,  // T
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: StepParams;
// state_in again, four values per element (bound to the same buffer; read only when H is a
// multiple of 4, so that every row of h starts on a vec4).
@group(0) @binding(8) var<storage, read> state4: array<vec4<f32>>;

const WG: u32 = 64u;
const BT: u32 = 4u;

fn update(b: u32, j: u32, acc: vec4<f32>) {
    let H = p.units;
    let BH = p.batch * H;
    let e = b * H + j;
    let row = (b * p.tc + p.t_local) * GATES * H + j;
    let h_prev = state_in[e];
    var h_new = 0.0;
    var c_new = 0.0;
    if (CELL == CELL_LSTM) {
        let z = acc + vec4<f32>(proj[row], proj[row + H], proj[row + 2u * H], proj[row + 3u * H]);
        let hc = lstm_cell(z, state_in[BH + e]);
        h_new = hc.x;
        c_new = hc.y;
    } else if (CELL == CELL_GRU) {
        let rec = acc.xyz + rk_at(H, j).xyz;
        h_new = gru_cell(vec3<f32>(proj[row], proj[row + H], proj[row + 2u * H]), rec, h_prev);
    } else if (CELL == CELL_GRU_RESET) {
        state_out[BH + e] = gru_reset_gate(proj[row + H], acc.y, h_prev);
        return;
    } else if (CELL == CELL_GRU_CANDIDATE) {
        h_new = gru_candidate(proj[row], proj[row + 2u * H], acc.x, acc.z, h_prev);
    } else {
        h_new = rnn_cell(proj[row], acc.x);
    }
    var present = true;
    if (HAS_MASK) {
        present = mask[b * p.seq_len + p.t_abs] != 0u;
    }
    var out = h_new;
    if (present) {
        state_out[e] = h_new;
        if (CELL == CELL_LSTM) {
            state_out[BH + e] = c_new;
        }
    } else {
        state_out[e] = h_prev;
        if (CELL == CELL_LSTM) {
            state_out[BH + e] = state_in[BH + e];
        }
        out = select(last[e], 0.0, ZERO_OUTPUT_FOR_MASK);
    }
    last[e] = out;
    if (WRITE_SEQUENCE) {
        seq[(b * p.seq_len + p.s_out) * H + j] = out;
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let H = p.units;
    let B = p.batch;
    let j = wid.x * WG + lid.x;
    let b0 = wid.y * BT;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    if (j >= H) {
        return;
    }
    let r0 = min(b0, B - 1u) * H;
    let r1 = min(b0 + 1u, B - 1u) * H;
    let r2 = min(b0 + 2u, B - 1u) * H;
    let r3 = min(b0 + 3u, B - 1u) * H;
    if (CELL == CELL_GRU_CANDIDATE) {
        // z from h · R_z (.x), the candidate from (r · h) · R_h (.z), r · h being what the
        // reset dispatch left in the c half of state_out.
        let BH = B * H;
        for (var k = 0u; k < H; k++) {
            let r = rk_at(k, j);
            acc0 = fma(vec4<f32>(state_in[r0 + k], 0.0, state_out[BH + r0 + k], 0.0), r, acc0);
            acc1 = fma(vec4<f32>(state_in[r1 + k], 0.0, state_out[BH + r1 + k], 0.0), r, acc1);
            acc2 = fma(vec4<f32>(state_in[r2 + k], 0.0, state_out[BH + r2 + k], 0.0), r, acc2);
            acc3 = fma(vec4<f32>(state_in[r3 + k], 0.0, state_out[BH + r3 + k], 0.0), r, acc3);
        }
    } else if (H % 4u == 0u) {
        // Four k at a time: one vec4 of h per row and four of the kernel serve 64 products
        // (storage loads are what a SIMD rasterizer such as lavapipe pays most for).
        for (var k = 0u; k < H; k += 4u) {
            let w0 = rk_at(k, j);
            let w1 = rk_at(k + 1u, j);
            let w2 = rk_at(k + 2u, j);
            let w3 = rk_at(k + 3u, j);
            let h0 = state4[(r0 + k) / 4u];
            let h1 = state4[(r1 + k) / 4u];
            let h2 = state4[(r2 + k) / 4u];
            let h3 = state4[(r3 + k) / 4u];
            acc0 = fma(vec4<f32>(h0.x), w0, fma(vec4<f32>(h0.y), w1, fma(vec4<f32>(h0.z), w2, fma(vec4<f32>(h0.w), w3, acc0))));
            acc1 = fma(vec4<f32>(h1.x), w0, fma(vec4<f32>(h1.y), w1, fma(vec4<f32>(h1.z), w2, fma(vec4<f32>(h1.w), w3, acc1))));
            acc2 = fma(vec4<f32>(h2.x), w0, fma(vec4<f32>(h2.y), w1, fma(vec4<f32>(h2.z), w2, fma(vec4<f32>(h2.w), w3, acc2))));
            acc3 = fma(vec4<f32>(h3.x), w0, fma(vec4<f32>(h3.y), w1, fma(vec4<f32>(h3.z), w2, fma(vec4<f32>(h3.w), w3, acc3))));
        }
    } else {
        for (var k = 0u; k < H; k++) {
            let r = rk_at(k, j);
            acc0 = fma(vec4<f32>(state_in[r0 + k]), r, acc0);
            acc1 = fma(vec4<f32>(state_in[r1 + k]), r, acc1);
            acc2 = fma(vec4<f32>(state_in[r2 + k]), r, acc2);
            acc3 = fma(vec4<f32>(state_in[r3 + k]), r, acc3);
        }
    }

    if (b0 < B) { update(b0, j, acc0); }
    if (b0 + 1u < B) { update(b0 + 1u, j, acc1); }
    if (b0 + 2u < B) { update(b0 + 2u, j, acc2); }
    if (b0 + 3u < B) { update(b0 + 3u, j, acc3); }
}
