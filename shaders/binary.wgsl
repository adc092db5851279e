// Two tensors of one shape in, one out, value by value (MODE, an override constant):
//   0 a + b   1 a - b   2 a * b   3 max(a, b)   4 min(a, b)
//   5 a or b   6 a and b   (as 1.0/0.0, a value being true when it is not 0.0: the
//     LogicalOr/LogicalAnd op layers Keras saves for merged masks)   7 a / b
// max and min ignore a NaN operand, as Rust's f32::max/min. The merge layers (Add,
// Subtract, Multiply, Average, Maximum, Minimum), the OR of two masks (max of 0/1), and the
// divide of `Normalization`. CPU twins: `Merge` in src/graph/combine.rs, `Normalize` in
// src/graph/preprocessing.rs.

override MODE: u32 = 0u;

struct BinaryParams {
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
    _pad6: u32,
}

@group(0) @binding(0) var<uniform> p: BinaryParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.count) {
        return;
    }
    let u = a[i];
    let v = b[i];
    var y: f32;
    switch MODE {
        case 0u: { y = u + v; }
        case 1u: { y = u - v; }
        case 2u: { y = u * v; }
        case 3u: { y = select(select(max(u, v), u, is_nan(v)), v, is_nan(u)); }
        case 4u: { y = select(select(min(u, v), u, is_nan(v)), v, is_nan(u)); }
        // logical or / and of "not 0" (NaN is true)
        case 5u: { y = select(0.0, 1.0, u != 0.0 || v != 0.0 || is_nan(u) || is_nan(v)); }
        case 6u: { y = select(0.0, 1.0, (u != 0.0 || is_nan(u)) && (v != 0.0 || is_nan(v))); }
        default: { y = u / v; }
    }
    out[i] = y;
}
