// A run of timesteps of one LSTM direction in one dispatch of one workgroup, for small layers
// (B·H <= 1024): the wgpu analogue of cuDNN's persistent small-hidden kernel. h lives in
// workgroup memory, c and the last output in registers; a workgroup barrier separates the
// steps instead of a dispatch boundary. Same math and mask rule as step.wgsl (`lstm_cell`);
// CPU twin: `run` in src/cpu/reference.rs.
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

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32) {
    let H = p.units;
    let BH = p.batch * H;
    let T = p.seq_len;
    let nq = (BH + WG - 1u) / WG;
    var c: array<f32, PER>;
    var out: array<f32, PER>;
    var h_next: array<f32, PER>;
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
        for (var q = 0u; q < nq; q++) {
            let e = tid + q * WG;
            if (e >= BH) {
                continue;
            }
            let b = e / H;
            let j = e % H;
            let hb = b * H;
            var acc = vec4<f32>(0.0);
            if (H % 4u == 0u) {
                for (var k = 0u; k < H; k += 4u) {
                    acc = fma(vec4<f32>(hs[hb + k]), rk_at(k, j), acc);
                    acc = fma(vec4<f32>(hs[hb + k + 1u]), rk_at(k + 1u, j), acc);
                    acc = fma(vec4<f32>(hs[hb + k + 2u]), rk_at(k + 2u, j), acc);
                    acc = fma(vec4<f32>(hs[hb + k + 3u]), rk_at(k + 3u, j), acc);
                }
            } else {
                for (var k = 0u; k < H; k++) {
                    acc = fma(vec4<f32>(hs[hb + k]), rk_at(k, j), acc);
                }
            }
            let row = (b * p.tc + t - p.t_lo) * 4u * H + j;
            let z = acc + vec4<f32>(proj[row], proj[row + H], proj[row + 2u * H], proj[row + 3u * H]);
            let hc = lstm_cell(z, c[q]);
            var present = true;
            if (HAS_MASK) {
                present = mask[b * T + t] != 0u;
            }
            if (present) {
                h_next[q] = hc.x;
                c[q] = hc.y;
                out[q] = hc.x;
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
