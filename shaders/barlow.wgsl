// Barlow Twins cross-correlation loss (FGCO, docs/design.md §3) on C [d, d], the
// cross-correlation of two standardized embeddings (computed with matmul):
//   L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij².
// The standardization and the products around C are batchnorm and matmul
// kernels; this file holds only the parts specific to the loss.

struct Params {
    d: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    lambda: f32,
}

@group(0) @binding(0) var<storage, read> c: array<f32>;
@group(0) @binding(1) var<storage, read> upstream: array<f32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_c: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, 256>;

fn term(idx: u32) -> f32 {
    let i = idx / p.d;
    let j = idx % p.d;
    let v = c[idx];
    if (i == j) {
        return (1.0 - v) * (1.0 - v);
    }
    return p.lambda * v * v;
}

// One workgroup sums the d² terms: strided per-invocation partial sums, then
// a tree reduction in workgroup memory. d² is at most 65,536 here, so one
// workgroup is enough and needs no second pass or atomics.
@compute @workgroup_size(256)
fn forward(@builtin(local_invocation_index) lid: u32) {
    let total = p.d * p.d;
    var s = 0.0;
    for (var idx = lid; idx < total; idx = idx + 256u) {
        s = s + term(idx);
    }
    partial[lid] = s;
    // Every partial sum is written before any invocation reads another's.
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        // This level's sums land before the next level reads them.
        workgroupBarrier();
    }
    if (lid == 0u) {
        loss[0] = partial[0];
    }
}

// dL/dC times the upstream scalar g (read on the GPU, so the backward composes
// without a readback): −2(1 − C_ii)·g on the diagonal, 2λ·C_ij·g off it.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (idx >= p.d * p.d) { return; }
    let g = upstream[0];
    let i = idx / p.d;
    let j = idx % p.d;
    let v = c[idx];
    if (i == j) {
        grad_c[idx] = -2.0 * (1.0 - v) * g;
    } else {
        grad_c[idx] = 2.0 * p.lambda * v * g;
    }
}
