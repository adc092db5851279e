// One step of Keras `ConvLSTM1D`/`ConvLSTM2D`: the LSTM cell update on each output pixel,
// one thread per state value (row r = (b, p) over B * P pixels, unit j < F):
//   z = zx[b, t, p, :] + zh[r, :]   (the input convolution of frame t, bias included, and
//                                     the recurrent convolution of h_{t-1}; 4F values:
//                                     the i, f, c, o blocks)
//   c = rec_act(f) * c + rec_act(i) * act(g);  h = rec_act(o) * act(c)
// A masked step (mask[b, t] == 0) keeps h and c and repeats the last output (zeros with
// ZERO_OUTPUT). The plan runs conv.wgsl for zh, then this, per step; h and c are updated in
// place (each thread reads and writes only its own values).
// CPU twin: `ConvLstm::call` in src/graph/conv_lstm.rs (`cpu::reference::cell_update`).

override ACTIVATION: u32 = 0u;
override RECURRENT_ACTIVATION: u32 = 1u;
override ZERO_OUTPUT: bool = false;

struct ConvLstmParams {
    rows: u32,
    pixels: u32,
    filters: u32,
    steps: u32,
    t: u32,
    s_out: u32,
    has_mask: u32,
    write_sequence: u32,
}

@group(0) @binding(0) var<uniform> p: ConvLstmParams;
@group(0) @binding(1) var<storage, read> zx: array<f32>;
@group(0) @binding(2) var<storage, read> zh: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(6) var<storage, read_write> last: array<f32>;
@group(0) @binding(7) var<storage, read_write> sequence: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.filters) {
        return;
    }
    let f = p.filters;
    let r = i / f;
    let j = i % f;
    let b = r / p.pixels;
    let px = r % p.pixels;
    let present = p.has_mask == 0u || mask[b * p.steps + p.t] != 0.0;
    if (present) {
        let xb = ((b * p.steps + p.t) * p.pixels + px) * 4u * f;
        let hb = r * 4u * f;
        let zi = act(RECURRENT_ACTIVATION, zx[xb + j] + zh[hb + j]);
        let zf = act(RECURRENT_ACTIVATION, zx[xb + f + j] + zh[hb + f + j]);
        let zg = act(ACTIVATION, zx[xb + 2u * f + j] + zh[hb + 2u * f + j]);
        let zo = act(RECURRENT_ACTIVATION, zx[xb + 3u * f + j] + zh[hb + 3u * f + j]);
        let cn = zf * c[i] + zi * zg;
        c[i] = cn;
        let hn = zo * act(ACTIVATION, cn);
        h[i] = hn;
        last[i] = hn;
    } else if (ZERO_OUTPUT) {
        last[i] = 0.0;
    }
    if (p.write_sequence != 0u) {
        sequence[((b * p.steps + p.s_out) * p.pixels + px) * f + j] = last[i];
    }
}
