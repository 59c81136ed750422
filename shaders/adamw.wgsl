// In-place AdamW update (decoupled weight decay, the PyTorch formula):
//   m ← β1·m + (1−β1)·g
//   v ← β2·v + (1−β2)·g²
//   p ← p − lr·( m̂ / (√v̂ + ε) + wd·p ),  m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)
// with the old p in the decay term. One invocation per element, 256 per
// workgroup, linear index folded over a 2-D grid (Gpu::launch_linear).
//
// The bias corrections are computed on the host in f64 from the step t and
// passed in: pow(0.999, t) in f32 on the GPU would lose digits that
// 1 − β2^t (≈ 0.001 at t = 1) then magnifies.

struct Params {
    n: u32,        // elements in this launch
    step: u32,     // t (informational; the corrections below derive from it)
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    inv_bc1: f32,  // 1 / (1 − β1^t)
    inv_sqrt_bc2: f32, // 1 / √(1 − β2^t)
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    let g = grad[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let m_hat = mi * p.inv_bc1;
    let denom = sqrt(vi) * p.inv_sqrt_bc2 + p.eps;
    let old = param[i];
    param[i] = old - p.lr * (m_hat / denom + p.weight_decay * old);
}
