// LayerNorm over the last dimension of x [R, D] (R rows, D features), with
// affine gamma, beta [D]:
//   x̂ = (x - mean_row) / sqrt(var_row + eps),  y = gamma * x̂ + beta.
// stats [R, 2]: per row the mean and the inverse standard deviation, saved by
// the forward for the backward.
//
// forward, backward_input: one invocation per row, looping over D (D = 128 is
// short and R = B·T is large, so rows give the parallelism). Two passes for
// the variance (no E[x²] - E[x]² cancellation in f32).
// backward_params: one invocation per feature d, summing over the rows, so
// dgamma and dbeta are written without atomics.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> dbeta: array<f32>;
var<immediate> p: Params;

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var d = 0u; d < p.cols; d = d + 1u) {
        s = s + x[base + d];
    }
    let mean = s / f32(p.cols);
    var v = 0.0;
    for (var d = 0u; d < p.cols; d = d + 1u) {
        let e = x[base + d] - mean;
        v = v + e * e;
    }
    // 1/sqrt, not inverseSqrt (a low-precision approximation on some drivers).
    let inv = 1.0 / sqrt(v / f32(p.cols) + p.eps);
    stats[2u * r] = mean;
    stats[2u * r + 1u] = inv;
    for (var d = 0u; d < p.cols; d = d + 1u) {
        y[base + d] = gamma[d] * (x[base + d] - mean) * inv + beta[d];
    }
}

// dx = inv/D · (D·g − Σg − x̂·Σ(g·x̂)) with g = dy·gamma.
@compute @workgroup_size(64)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let mean = stats[2u * r];
    let inv = stats[2u * r + 1u];
    var sg = 0.0;
    var sgx = 0.0;
    for (var d = 0u; d < p.cols; d = d + 1u) {
        let g = dy[base + d] * gamma[d];
        sg = sg + g;
        sgx = sgx + g * (x[base + d] - mean) * inv;
    }
    let n = f32(p.cols);
    for (var d = 0u; d < p.cols; d = d + 1u) {
        let g = dy[base + d] * gamma[d];
        let xh = (x[base + d] - mean) * inv;
        dx[base + d] = inv / n * (n * g - sg - xh * sgx);
    }
}

@compute @workgroup_size(64)
fn backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let d = linear(wid, nwg, lid);
    if (d >= p.cols) { return; }
    var sg = 0.0;
    var sb = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let i = r * p.cols + d;
        sb = sb + dy[i];
        sg = sg + dy[i] * (x[i] - stats[2u * r]) * stats[2u * r + 1u];
    }
    dgamma[d] = sg;
    dbeta[d] = sb;
}
