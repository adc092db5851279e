// Two tensors of one shape in, one out, value by value (MODE, an override constant):
//   0 a + b   1 a - b   2 a * b   3 max(a, b)   4 min(a, b)
// max and min ignore a NaN operand, as Rust's f32::max/min. The merge layers (Add,
// Subtract, Multiply, Average, Maximum, Minimum), and the OR of two masks (max of 0/1).
// CPU twin: `Merge` in src/graph/combine.rs.

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
        default: { y = select(select(min(u, v), u, is_nan(v)), v, is_nan(u)); }
    }
    out[i] = y;
}
