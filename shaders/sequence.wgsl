// A run of timesteps of one recurrent direction in one dispatch of one workgroup, for small
// layers (B·H <= 1024): the wgpu analogue of cuDNN's persistent small-hidden kernel. h lives
// in workgroup memory, c and the last output in registers; a workgroup barrier separates the
// steps instead of a dispatch boundary. Same math and mask rule as step.wgsl (the cells of
// cell.wgsl, chosen by CELL; a GRU without reset_after computes r·h for every unit into `rh`
// first, behind a barrier, where step.wgsl takes a second dispatch); CPU twins: `run` in
// src/cpu/reference.rs (LSTM) and src/cpu/cells.rs (GRU, SimpleRNN).
//
// One dispatch covers steps [s_begin, s_end) (processing order) of one projection chunk
// (rows b·tc + t - t_lo of `proj`). It reads h, c from `state_in` and the last output from
// `last`, and leaves them in `state_out` and `last`, so that a time loop can be split into
// several dispatches: some drivers (Mesa's llvmpipe) stop an invocation's loops after a fixed
// number of iterations, and the host keeps each dispatch within that (src/gpu/loops.rs
// models the loops below; keep it in step with them).
//
// Thread `tid` owns elements e = tid + WG q (q < nq) of the B·H state, e = b·H + j.

struct SeqParams {
    batch: u32,
    units: u32,
    tc: u32,           // timesteps in the projection chunk
    t_lo: u32,         // first timestep of the projection chunk
    s_begin: u32,      // first step of this dispatch (processing order)
    s_end: u32,        // one past its last step
    seq_len: u32,      // T
    go_backwards: u32,
}

@group(0) @binding(0) var<uniform> p: SeqParams;

const WG: u32 = 64u;
const PER: u32 = 16u;

var<workgroup> hs: array<f32, 1024>;
// r·h of a GRU without reset_after.
var<workgroup> rh: array<f32, 1024>;

fn h_at(i: u32, from_rh: bool) -> f32 {
    if (from_rh) {
        return rh[i];
    }
    return hs[i];
}

// The recurrent product of unit j for batch row hb / H: (h or r·h) · R, all gates.
fn recurrent(hb: u32, j: u32, from_rh: bool) -> vec4<f32> {
    let H = p.units;
    var acc = vec4<f32>(0.0);
    if (H % 4u == 0u) {
        for (var k = 0u; k < H; k += 4u) {
            acc = fma(vec4<f32>(h_at(hb + k, from_rh)), rk_at(k, j), acc);
            acc = fma(vec4<f32>(h_at(hb + k + 1u, from_rh)), rk_at(k + 1u, j), acc);
            acc = fma(vec4<f32>(h_at(hb + k + 2u, from_rh)), rk_at(k + 2u, j), acc);
            acc = fma(vec4<f32>(h_at(hb + k + 3u, from_rh)), rk_at(k + 3u, j), acc);
        }
    } else {
        for (var k = 0u; k < H; k++) {
            acc = fma(vec4<f32>(h_at(hb + k, from_rh)), rk_at(k, j), acc);
        }
    }
    return acc;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32) {
    let H = p.units;
    let BH = p.batch * H;
    let T = p.seq_len;
    let nq = (BH + WG - 1u) / WG;
    var c: array<f32, PER>;
    var out: array<f32, PER>;
    var h_next: array<f32, PER>;
    var rec_z: array<f32, PER>;
    for (var q = 0u; q < nq; q++) {
        let e = tid + q * WG;
        if (e < BH) {
            hs[e] = state_in[e];
            c[q] = state_in[BH + e];
            out[q] = last[e];
        }
    }
    workgroupBarrier();
    for (var s = p.s_begin; s < p.s_end; s++) {
        var t = s;
        if (p.go_backwards != 0u) {
            t = T - 1u - s;
        }
        if (CELL == CELL_GRU_RESET) {
            // A GRU without reset_after: r·h of every unit before any candidate.
            for (var q = 0u; q < nq; q++) {
                let e = tid + q * WG;
                if (e >= BH) {
                    continue;
                }
                let b = e / H;
                let j = e % H;
                let acc = recurrent(b * H, j, false);
                let row = (b * p.tc + t - p.t_lo) * GATES * H + j;
                rec_z[q] = acc.x;
                rh[e] = gru_reset_gate(proj[row + H], acc.y, hs[e]);
            }
            workgroupBarrier();
        }
        for (var q = 0u; q < nq; q++) {
            let e = tid + q * WG;
            if (e >= BH) {
                continue;
            }
            let b = e / H;
            let j = e % H;
            let acc = recurrent(b * H, j, CELL == CELL_GRU_RESET);
            let row = (b * p.tc + t - p.t_lo) * GATES * H + j;
            var h_new = 0.0;
            var c_new = 0.0;
            if (CELL == CELL_LSTM) {
                let z = acc + vec4<f32>(proj[row], proj[row + H], proj[row + 2u * H], proj[row + 3u * H]);
                let hc = lstm_cell(z, c[q]);
                h_new = hc.x;
                c_new = hc.y;
            } else if (CELL == CELL_GRU) {
                let x = vec3<f32>(proj[row], proj[row + H], proj[row + 2u * H]);
                h_new = gru_cell(x, acc.xyz + rk_at(H, j).xyz, hs[e]);
            } else if (CELL == CELL_GRU_RESET) {
                h_new = gru_candidate(proj[row], proj[row + 2u * H], rec_z[q], acc.z, hs[e]);
            } else {
                h_new = rnn_cell(proj[row], acc.x);
            }
            var present = true;
            if (HAS_MASK) {
                present = mask[b * T + t] != 0u;
            }
            if (present) {
                h_next[q] = h_new;
                c[q] = c_new;
                out[q] = h_new;
            } else {
                h_next[q] = hs[e];
                out[q] = select(out[q], 0.0, ZERO_OUTPUT_FOR_MASK);
            }
            if (WRITE_SEQUENCE) {
                seq[(b * T + s) * H + j] = out[q];
            }
        }
        workgroupBarrier();
        for (var q = 0u; q < nq; q++) {
            let e = tid + q * WG;
            if (e < BH) {
                hs[e] = h_next[q];
            }
        }
        workgroupBarrier();
    }
    for (var q = 0u; q < nq; q++) {
        let e = tid + q * WG;
        if (e < BH) {
            state_out[e] = hs[e];
            state_out[BH + e] = c[q];
            last[e] = out[q];
        }
    }
}
