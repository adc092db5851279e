// The backward timestep of GPU training (after common.wgsl and train_step.wgsl, which say
// the layouts and formulas). CPU twin: the step loop of `train::recurrent::backward`.
// A thread per (batch row b, unit j), WG units a workgroup; the transposed recurrent kernel
// Uᵀ is read by rows (neighbouring threads, neighbouring units), the previous step's dZh row
// directly (the same address across the workgroup).

@group(0) @binding(4) var<storage, read> tape: array<f32>;
@group(0) @binding(5) var<storage, read> cot: array<f32>;
@group(0) @binding(6) var<storage, read_write> bstate: array<f32>;
@group(0) @binding(7) var<storage, read_write> dz: array<f32>;

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
    let e = b * H + j;
    // the previous dispatch's step: its dh_prev = dZh · Uᵀ
    if (p.has_prev != 0u && present_at(b, p.t_prev)) {
        let base = (b * T + p.t_prev) * GH;
        var acc = 0.0;
        for (var k = 0u; k < GH; k++) {
            acc += dz[base + k] * rk[k * H + j];
        }
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
        let c_prev = tape[hp_base + B * T * H + te * H + j];
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
        let h_prev = tape[hp_base + te * H + j];
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
