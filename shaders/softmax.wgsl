// Row softmax over the last dimension, y = softmax(scale * x), and its
// backward dx = scale * y ⊙ (g − Σ g⊙y).
//
// One invocation per row, looping over the row. Rows are B·T rows of length
// T or [B,W,N,N] rows of N = 200: many rows, so one invocation each keeps a
// real GPU busy, and on lavapipe a sequential loop beats a workgroup tree
// with barriers (docs/design.md §6).
//
// Numerics: the row maximum of scale·x is subtracted before exp (so exp never
// overflows, whatever the sign of scale), and the sums use the same blocked
// two-level summation as reduce.wgsl, which keeps rows of a few thousand
// within Tolerance::Accumulation.

struct Params {
    rows: u32, // rows in this launch
    len: u32,  // row length
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>; // forward: x; backward: y
@group(0) @binding(1) var<storage, read> g: array<f32>; // backward: upstream gradient
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

const BLOCK: u32 = 64u;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.len;
    var m = p.scale * x[base];
    for (var j = 1u; j < p.len; j = j + 1u) {
        m = max(m, p.scale * x[base + j]);
    }
    // Write the unnormalized exponentials first and rescale in a second pass:
    // one exp per element instead of two.
    var total = 0.0;
    var j = 0u;
    while (j < p.len) {
        let end = min(j + BLOCK, p.len);
        var part = 0.0;
        for (; j < end; j = j + 1u) {
            let e = exp(p.scale * x[base + j] - m);
            out[base + j] = e;
            part = part + e;
        }
        total = total + part;
    }
    // total >= 1: the maximum's term is exp(0).
    let inv = 1.0 / total;
    for (var k = 0u; k < p.len; k = k + 1u) {
        out[base + k] = out[base + k] * inv;
    }
}

// x holds the forward output y.
@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.len;
    var dot = 0.0;
    var j = 0u;
    while (j < p.len) {
        let end = min(j + BLOCK, p.len);
        var part = 0.0;
        for (; j < end; j = j + 1u) {
            part = part + g[base + j] * x[base + j];
        }
        dot = dot + part;
    }
    for (var k = 0u; k < p.len; k = k + 1u) {
        out[base + k] = p.scale * x[base + k] * (g[base + k] - dot);
    }
}
