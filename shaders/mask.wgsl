// Keras `Masking(mask_value)`: mask[b, t] = any_i(x[b, t, i] != mask_value); the output is x
// with the masked timesteps zeroed. The mask feeds the recurrent kernels (HAS_MASK).
// CPU twin: the `ModelLayer::Masking` arm of `KerasModel::predict` in src/model.rs.

struct MaskParams {
    batch: u32,
    steps: u32,
    width: u32,
    value: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: MaskParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.batch * p.steps) {
        return;
    }
    let base = row * p.width;
    var present = false;
    for (var i = 0u; i < p.width; i++) {
        present = present || x[base + i] != p.value;
    }
    mask[row] = select(0u, 0x3f800000u, present); // 1.0: masks are 0.0/1.0 floats
    for (var i = 0u; i < p.width; i++) {
        out[base + i] = select(0.0, x[base + i], present);
    }
}
