// The forward timestep of GPU training (after common.wgsl and train_step.wgsl, which say
// the layouts). CPU twin: the step loop of `train::recurrent::forward`.
// A thread per (batch row b, unit j), WG units a workgroup; h_prev is read directly (the
// same address across the workgroup), U by rows (neighbouring threads, neighbouring
// columns).

@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> tape: array<f32>;
@group(0) @binding(6) var<storage, read_write> seq: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let H = p.units;
    let B = p.batch;
    let T = p.steps;
    let j = gid.x;
    let b = gid.y;
    if (j >= H || b >= B) {
        return;
    }
    let BH = B * H;
    let GH = GATES * H;
    let half = p.s % 2u;
    let h_in = half * BH;
    let h_out = (1u - half) * BH;
    let e = b * H + j;
    let h_prev = state[h_in + e];
    let c_prev = state[2u * BH + e];
    // h_prev · U for unit j's gates (+ a GRU's recurrent bias)
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < H; k++) {
        let hk = state[h_in + b * H + k];
        let r = k * GH + j;
        acc.x += hk * rk[r];
        if (GATES > 1u) {
            acc.y += hk * rk[r + H];
            acc.z += hk * rk[r + 2u * H];
        }
        if (GATES > 3u) {
            acc.w += hk * rk[r + 3u * H];
        }
    }
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
    tape[hp_base + te * H + j] = h_prev;
    if (CELL == CELL_LSTM) {
        tape[hp_base + B * T * H + te * H + j] = c_prev;
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
