// Keras `Embedding`: out[n, j] = table[id_n, j] for each token id (uploaded as floats, exact
// below 2^24), and with mask_zero the mask id != 0. An id outside 0..vocab (or not an
// integer) gives NaN, never another row: the host checks ids of model inputs before the
// upload and refuses them; this covers ids computed on the GPU.
// CPU twin: `Embedding` in src/graph/core.rs.

struct EmbeddingParams {
    count: u32,  // tokens * dim
    dim: u32,
    vocab: u32,
    mask_zero: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: EmbeddingParams;
@group(0) @binding(1) var<storage, read> ids: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> mask: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.count) {
        return;
    }
    let n = i / p.dim;
    let j = i % p.dim;
    let id = ids[n];
    let valid = id >= 0.0 && id < f32(p.vocab) && fract(id) == 0.0;
    let row = select(0u, u32(max(id, 0.0)), valid);
    out[i] = select(bitcast<f32>(0x7fc00000u), table[min(row * p.dim + j, arrayLength(&table) - 1u)], valid);
    if (p.mask_zero != 0u && j == 0u) {
        mask[n] = select(0.0, 1.0, id != 0.0);
    }
}
