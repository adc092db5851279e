// The backward timestep of GPU training (after common.wgsl and train_step.wgsl, which say
// the layouts and formulas). CPU twin: the step loop of `train::recurrent::backward`.
// A thread per (unit j, RB batch rows), WG units a workgroup: every weight of the
// transposed recurrent kernel Uᵀ it loads serves RB rows; Uᵀ is read by rows (neighbouring
// threads, neighbouring units), the previous step's dZh rows directly (the same address
// across the workgroup).

@group(0) @binding(4) var<storage, read> tape: array<f32>;
@group(0) @binding(5) var<storage, read> cot: array<f32>;
@group(0) @binding(6) var<storage, read_write> bstate: array<f32>;
@group(0) @binding(7) var<storage, read_write> dz: array<f32>;

// Row b of unit j, with `acc` the previous dispatch's step's dZh[b] · Uᵀ[:, j].
fn backward_row(b: u32, j: u32, acc: f32) {
    let H = p.units;
    let B = p.batch;
    let T = p.steps;
    let BH = B * H;
    let GH = GATES * H;
    let e = b * H + j;
    // the previous dispatch's step: its dh_prev = dZh · Uᵀ
    if (p.has_prev != 0u && present_at(b, p.t_prev)) {
        bstate[e] += acc;
    }
    if (p.finish != 0u) {
        return;
    }
    var dy = bstate[BH + e];
    if (RETURN_SEQUENCES) {
        dy += cot[(b * T + p.s) * H + j];
    }
    let te = b * T + p.t;
    let z = te * GH + j;
    let dzx = B * T * GH;
    if (!present_at(b, p.t)) {
        if (ZERO_OUTPUT_FOR_MASK) {
            dy = 0.0;
        }
        bstate[BH + e] = dy;
        for (var q = 0u; q < GATES; q++) {
            dz[z + q * H] = 0.0;
            if (CELL == CELL_GRU) {
                dz[dzx + z + q * H] = 0.0;
            }
        }
        return;
    }
    let dh = bstate[e] + dy;
    bstate[BH + e] = 0.0;
    let hp_base = B * T * GH;
    if (CELL == CELL_LSTM) {
        let v = vec4<f32>(proj[z] + tape[z], proj[z + H] + tape[z + H],
                          proj[z + 2u * H] + tape[z + 2u * H], proj[z + 3u * H] + tape[z + 3u * H]);
        let i = act(RECURRENT_ACTIVATION, v.x);
        let f = act(RECURRENT_ACTIVATION, v.y);
        let g = act(ACTIVATION, v.z);
        let o = act(RECURRENT_ACTIVATION, v.w);
        let c_prev = tape[hp_base + B * T * hp_stride() + te * H + j];
        let c = f * c_prev + i * g;
        let ac = act(ACTIVATION, c);
        let d_o = dh * ac;
        let dc = bstate[2u * BH + e] + dh * o * dact(ACTIVATION, c, ac);
        bstate[2u * BH + e] = dc * f;
        dz[z] = dc * g * dact(RECURRENT_ACTIVATION, v.x, i);
        dz[z + H] = dc * c_prev * dact(RECURRENT_ACTIVATION, v.y, f);
        dz[z + 2u * H] = dc * i * dact(ACTIVATION, v.z, g);
        dz[z + 3u * H] = d_o * dact(RECURRENT_ACTIVATION, v.w, o);
        bstate[e] = 0.0;
    } else if (CELL == CELL_GRU) {
        let vz = proj[z] + tape[z];
        let vr = proj[z + H] + tape[z + H];
        let zh_h = tape[z + 2u * H];
        let zg = act(RECURRENT_ACTIVATION, vz);
        let r = act(RECURRENT_ACTIVATION, vr);
        let ph = proj[z + 2u * H] + r * zh_h;
        let hh = act(ACTIVATION, ph);
        let h_prev = tape[hp_base + te * hp_stride() + j];
        let dzg = dh * (h_prev - hh) * dact(RECURRENT_ACTIVATION, vz, zg);
        let dph = dh * (1.0 - zg) * dact(ACTIVATION, ph, hh);
        let dr = dph * zh_h * dact(RECURRENT_ACTIVATION, vr, r);
        dz[z] = dzg;
        dz[z + H] = dr;
        dz[z + 2u * H] = dph * r;
        dz[dzx + z] = dzg;
        dz[dzx + z + H] = dr;
        dz[dzx + z + 2u * H] = dph;
        bstate[e] = dh * zg;
    } else {
        let a = proj[z] + tape[z];
        dz[z] = dh * dact(ACTIVATION, a, act(ACTIVATION, a));
        bstate[e] = 0.0;
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let H = p.units;
    let B = p.batch;
    let T = p.steps;
    let j = gid.x;
    let b0 = gid.y * RB;
    if (j >= H || b0 >= B) {
        return;
    }
    let GH = GATES * H;
    var acc = vec4<f32>(0.0);
    if (p.has_prev != 0u) {
        // the rows past the batch read the last row (their results are not stored)
        let d0 = (b0 * T + p.t_prev) * GH;
        let d1 = (min(b0 + 1u, B - 1u) * T + p.t_prev) * GH;
        let d2 = (min(b0 + 2u, B - 1u) * T + p.t_prev) * GH;
        let d3 = (min(b0 + 3u, B - 1u) * T + p.t_prev) * GH;
        for (var k = 0u; k < GH; k++) {
            let w = rk[k * H + j];
            acc += vec4<f32>(dz[d0 + k], dz[d1 + k], dz[d2 + k], dz[d3 + k]) * w;
        }
    }
    // one row at a time (the cell written once: a software rasterizer compiles it once)
    for (var q = 0u; q < RB; q++) {
        if (b0 + q < B) {
            backward_row(b0 + q, j, acc[q]);
        }
    }
}
