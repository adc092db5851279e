// Bidirectional merge: out[b, t, :] = merge(fwd[b, t, :], bwd[b, t', :]) with t' = steps-1-t
// when the backward sequence is flipped back to input order (return_sequences), else t' = t.
// CPU twin: `merge_directions` in src/network.rs.

override MERGE_MODE: u32 = 0u; // 0 concat, 1 sum, 2 mul, 3 ave

struct MergeParams {
    batch: u32,
    steps: u32,
    units_fwd: u32,
    units_bwd: u32,
    flip: u32,
    width: u32,    // units_fwd + units_bwd for concat, else units_fwd
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MergeParams;
@group(0) @binding(1) var<storage, read> fwd: array<f32>;
@group(0) @binding(2) var<storage, read> bwd: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let total = p.batch * p.steps * p.width;
    if (idx >= total) {
        return;
    }
    let u = idx % p.width;
    let bt = idx / p.width;
    let t = bt % p.steps;
    let b = bt / p.steps;
    var tb = t;
    if (p.flip != 0u) {
        tb = p.steps - 1u - t;
    }
    let rb = (b * p.steps + tb) * p.units_bwd;
    let rf = (b * p.steps + t) * p.units_fwd;
    if (MERGE_MODE == 0u) {
        if (u < p.units_fwd) {
            out[idx] = fwd[rf + u];
        } else {
            out[idx] = bwd[rb + u - p.units_fwd];
        }
        return;
    }
    let a = fwd[rf + u];
    let c = bwd[rb + u];
    switch MERGE_MODE {
        case 1u: { out[idx] = a + c; }
        case 2u: { out[idx] = a * c; }
        default: { out[idx] = (a + c) * 0.5; }
    }
}
