// Sliding windows for the dynamic graph: x [B, N, T] → out [B, W, N, L] with
// out[b, w, n, l] = x[b, n, w·S + l]. Input data only: no backward.
// One invocation per output element, linear index folded over a 2-D grid.

struct Params {
    n: u32,       // output elements
    nodes: u32,   // N
    frames: u32,  // T
    len: u32,     // L
    stride: u32,  // S
    windows: u32, // W
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn unfold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (o >= p.n) { return; }
    let l = o % p.len;
    let q = o / p.len;
    let node = q % p.nodes;
    let q2 = q / p.nodes;
    let w = q2 % p.windows;
    let b = q2 / p.windows;
    out[o] = x[(b * p.nodes + node) * p.frames + w * p.stride + l];
}
