// The whole time loop of one LSTM direction in one dispatch of one workgroup, for small layers
// (B·H <= 1024): the wgpu analogue of cuDNN's persistent small-hidden kernel. h lives in
// workgroup memory, c and the last output in registers; a workgroup barrier separates the
// steps instead of a dispatch boundary. Same math and mask rule as step.wgsl (`lstm_cell`);
// CPU twin: `run` in src/cpu.rs. The projection for all T steps is computed before it
// (projection.wgsl, one chunk: row b·T + t).
//
// Thread `tid` owns elements e = tid + 256 q (q < 4) of the B·H state, e = b·H + j.


struct SeqParams {
    batch: u32,
    units: u32,
    steps: u32,
    go_backwards: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: SeqParams;

const WG: u32 = 64u;
const PER: u32 = 16u;

var<workgroup> hs: array<f32, 1024>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32) {
    let H = p.units;
    let BH = p.batch * H;
    let T = p.steps;
    var c: array<f32, 16>;
    var out: array<f32, 16>;
    var h_next: array<f32, 16>;
    for (var q = 0u; q < PER; q++) {
        let e = tid + q * WG;
        if (e < BH) {
            hs[e] = state_in[e];
            c[q] = state_in[BH + e];
        }
        out[q] = 0.0;
    }
    workgroupBarrier();
    for (var s = 0u; s < T; s++) {
        var t = s;
        if (p.go_backwards != 0u) {
            t = T - 1u - s;
        }
        for (var q = 0u; q < PER; q++) {
            let e = tid + q * WG;
            if (e >= BH) {
                continue;
            }
            let b = e / H;
            let j = e % H;
            var acc = vec4<f32>(0.0);
            for (var k = 0u; k < H; k++) {
                let r = rk_at(k, j);
                acc = fma(vec4<f32>(hs[b * H + k]), r, acc);
            }
            let row = (b * T + t) * 4u * H + j;
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
        for (var q = 0u; q < PER; q++) {
            let e = tid + q * WG;
            if (e < BH) {
                hs[e] = h_next[q];
            }
        }
        workgroupBarrier();
    }
    for (var q = 0u; q < PER; q++) {
        let e = tid + q * WG;
        if (e < BH) {
            state_out[e] = hs[e];
            state_out[BH + e] = c[q];
            last[e] = out[q];
        }
    }
}
