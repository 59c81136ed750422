// Axis swaps. The input is viewed as [A, R, C, I] and written as [A, C, R, I]:
// I = 1 is the batched transpose of the last two dimensions ([.., R, C] →
// [.., C, R]); I > 1 swaps two middle axes (e.g. [B, T, N, F] ↔ [B, N, T, F]
// with A = B, R = T, C = N, I = F). The backward of a swap is the swap back,
// the same entry point with R and C exchanged.
//
// One invocation per output element, 256 per workgroup, linear index folded
// over a 2-D grid (Gpu::launch_linear).

struct Params {
    n: u32,     // elements
    rows: u32,  // R
    cols: u32,  // C
    inner: u32, // I
    // Element offset of this launch's first [R, C, I] slice inside the bound
    // ranges (launchers split tensors over A when they exceed one binding and
    // bind from 256-byte-aligned offsets; input and output share the remainder).
    off: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn swap_axes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (o >= p.n) { return; }
    // o = ((a * C + c) * R + r) * I + i
    let i = o % p.inner;
    let q = o / p.inner;
    let r = q % p.rows;
    let q2 = q / p.rows;
    let c = q2 % p.cols;
    let a = q2 / p.cols;
    out[p.off + o] = x[p.off + ((a * p.rows + r) * p.cols + c) * p.inner + i];
}
