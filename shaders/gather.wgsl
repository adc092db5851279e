// A strided copy of a box of values (up to 4 axes, the last fastest) from x to out:
//   out[out_base + sum_d c_d * out_stride_d] = x[in_base + sum_d j_d * in_stride_d]
//   with j_d = c_d / div_d - pad_d, and 0.0 where some j_d lies outside [0, in_dims_d).
// One kernel for the layers that move values without arithmetic: RepeatVector (stride 0),
// Permute (permuted strides), ZeroPadding1D / Cropping1D (pad), UpSampling1D (div),
// Concatenate (each input into its slice of the output), a Bidirectional layer's halves,
// a recurrent layer's state into and out of its state buffer, masks.
// CPU twins: `RepeatVector`, `Permute`, `Pad` and `Merge` (Concatenate) in src/graph/.

struct GatherParams {
    count: u32,
    out_base: u32,
    in_base: u32,
    _pad0: u32,
    box_dims: vec4<u32>,
    out_stride: vec4<u32>,
    in_stride: vec4<u32>,
    in_dims: vec4<u32>,
    pad: vec4<i32>,
    div: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.count) {
        return;
    }
    var rest = i;
    var dst = p.out_base;
    var src = p.in_base;
    var inside = true;
    for (var d = 3; d >= 0; d--) {
        let c = rest % p.box_dims[d];
        rest = rest / p.box_dims[d];
        dst += c * p.out_stride[d];
        let j = i32(c / p.div[d]) - p.pad[d];
        inside = inside && j >= 0 && j < i32(p.in_dims[d]);
        src += u32(max(j, 0)) * p.in_stride[d];
    }
    let v = x[min(src, arrayLength(&x) - 1u)];
    out[dst] = select(0.0, v, inside);
}
