// The runtime's own fill (`Gpu::full`, and the NaN poison of new tensors in
// tests). Kept apart from the kernel library so that src/gpu depends on no op.
// One element per invocation, linear index folded over a 2-D grid (see
// Gpu::launch_linear); launches are split by the binding planner.

struct Params {
    n: u32,     // elements in this launch
    value: f32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = p.value;
}
