// The forward timestep of GPU training (after common.wgsl and train_step.wgsl, which say
// the layouts). CPU twin: the step loop of `train::recurrent::forward`.
// A thread per (unit j, RB batch rows), WG units a workgroup: every recurrent weight it
// loads serves RB rows. h_prev is read directly (the same address across the workgroup), U
// by rows (neighbouring threads, neighbouring columns).

@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> tape: array<f32>;
@group(0) @binding(6) var<storage, read_write> seq: array<f32>;

// Row b of unit j after the recurrent product `acc` (its gates' h_prev · U).
fn forward_row(b: u32, j: u32, acc_in: vec4<f32>) {
    let H = p.units;
    let B = p.batch;
    let T = p.steps;
    let BH = B * H;
    let GH = GATES * H;
    let half = p.s % 2u;
    let h_in = half * BH;
    let h_out = (1u - half) * BH;
    let e = b * H + j;
    let h_prev = state[h_in + e];
    let c_prev = state[2u * BH + e];
    var acc = acc_in;
    if (HAS_RECURRENT_BIAS) {
        let r = H * GH + j;
        acc += vec4<f32>(rk[r], rk[r + H], rk[r + 2u * H], 0.0);
    }
    // the tape
    let te = b * T + p.t;
    let z = te * GH + j;
    tape[z] = acc.x;
    if (GATES > 1u) {
        tape[z + H] = acc.y;
        tape[z + 2u * H] = acc.z;
    }
    if (GATES > 3u) {
        tape[z + 3u * H] = acc.w;
    }
    let hp_base = B * T * GH;
    let hp = hp_stride();
    tape[hp_base + te * hp + j] = h_prev;
    if (HAS_RECURRENT_BIAS && j == 0u) {
        tape[hp_base + te * hp + H] = 1.0;
    }
    if (CELL == CELL_LSTM) {
        tape[hp_base + B * T * hp + te * H + j] = c_prev;
    }
    // the cell and the mask rule
    let last = 3u * BH + e;
    if (!present_at(b, p.t)) {
        state[h_out + e] = h_prev;
        if (ZERO_OUTPUT_FOR_MASK) {
            state[last] = 0.0;
        }
    } else {
        var h_new = 0.0;
        if (CELL == CELL_LSTM) {
            let i = act(RECURRENT_ACTIVATION, proj[z] + acc.x);
            let f = act(RECURRENT_ACTIVATION, proj[z + H] + acc.y);
            let g = act(ACTIVATION, proj[z + 2u * H] + acc.z);
            let o = act(RECURRENT_ACTIVATION, proj[z + 3u * H] + acc.w);
            let c_new = f * c_prev + i * g;
            state[2u * BH + e] = c_new;
            h_new = o * act(ACTIVATION, c_new);
        } else if (CELL == CELL_GRU) {
            let zg = act(RECURRENT_ACTIVATION, proj[z] + acc.x);
            let r = act(RECURRENT_ACTIVATION, proj[z + H] + acc.y);
            let hh = act(ACTIVATION, proj[z + 2u * H] + r * acc.z);
            h_new = zg * h_prev + (1.0 - zg) * hh;
        } else {
            h_new = act(ACTIVATION, proj[z] + acc.x);
        }
        state[h_out + e] = h_new;
        state[last] = h_new;
    }
    if (RETURN_SEQUENCES) {
        seq[(b * T + p.s) * H + j] = state[last];
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let H = p.units;
    let B = p.batch;
    let j = gid.x;
    let b0 = gid.y * RB;
    if (j >= H || b0 >= B) {
        return;
    }
    let GH = GATES * H;
    let h_in = (p.s % 2u) * B * H;
    // the rows past the batch read the last row (their results are not stored)
    let r1 = min(b0 + 1u, B - 1u) * H;
    let r2 = min(b0 + 2u, B - 1u) * H;
    let r3 = min(b0 + 3u, B - 1u) * H;
    let r0 = b0 * H;
    // h_prev · U for unit j's gates, RB rows at once
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = 0u; k < H; k++) {
        let r = k * GH + j;
        var w = vec4<f32>(rk[r], 0.0, 0.0, 0.0);
        if (GATES > 1u) {
            w.y = rk[r + H];
            w.z = rk[r + 2u * H];
        }
        if (GATES > 3u) {
            w.w = rk[r + 3u * H];
        }
        acc0 += state[h_in + r0 + k] * w;
        acc1 += state[h_in + r1 + k] * w;
        acc2 += state[h_in + r2 + k] * w;
        acc3 += state[h_in + r3 + k] * w;
    }
    // one row at a time (the cell written once: a software rasterizer compiles it once)
    for (var q = 0u; q < RB; q++) {
        if (b0 + q < B) {
            var acc = acc0;
            switch q {
                case 1u: { acc = acc1; }
                case 2u: { acc = acc2; }
                case 3u: { acc = acc3; }
                default: {}
            }
            forward_row(b0 + q, j, acc);
        }
    }
}
