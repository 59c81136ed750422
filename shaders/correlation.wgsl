// Per-window Pearson correlation of ROI time series:
//   x [B, N, T] → out [B, W, N, N], window w covering frames w·S .. w·S + L − 1.
// The whole-crop |Pearson| of SCA is the case L = T, W = 1.
//
// Two entry points, launched in order (the second reads what the first wrote;
// wgpu orders dispatches of one encoder that share a buffer):
//   window_stats: one invocation per (b, w, n): the window mean and the
//     inverse root of the sum of squared deviations (two passes, no
//     E[x²] − E[x]² cancellation), or 0 when the region has no variance in
//     the window, so its correlations come out 0 instead of NaN.
//   correlation: one invocation per output element (b, w, i, j).
//
// The matmul path (the host's choice when y and out fit a binding) replaces
// `correlation` by three launches: `standardize` writes each window's
// deviations times the inverse root, y [B·W, N, L] (a zero row for a region
// without variance); matmul forms y·yᵀ [B·W, N, N] at matmul's rate; and
// `finish` sets the diagonal (1, or 0 without variance) and clamps the
// off-diagonal to [−1, 1], in place.
//
// Launches may cover a range of batch items (the output of a large batch
// exceeds one storage binding): stats and out are bound at that range, so
// indices into them are relative to it; x (small) is bound whole and indexed
// with `first`, which spares its offset the binding alignment rule.

struct Params {
    n: u32,       // regions
    t: u32,       // frames per series
    l: u32,       // window length
    s: u32,       // stride
    w: u32,       // windows
    items: u32,   // batch items in this launch
    first: u32,   // batch index of this launch's first item (x is bound whole)
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>; // [items, W, N, 2]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn window_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid); // (b·W + w)·N + n
    if (idx >= p.items * p.w * p.n) { return; }
    let n = idx % p.n;
    let bw = idx / p.n;
    let b = bw / p.w;
    let w = bw % p.w;
    let base = ((p.first + b) * p.n + n) * p.t + w * p.s;
    var sum = 0.0;
    for (var k = 0u; k < p.l; k = k + 1u) {
        sum = sum + x[base + k];
    }
    let mean = sum / f32(p.l);
    var ss = 0.0;
    for (var k = 0u; k < p.l; k = k + 1u) {
        let d = x[base + k] - mean;
        ss = ss + d * d;
    }
    // No variance: exactly zero (an all-zero or masked region), or a constant
    // series whose deviations are only the rounding of its mean.
    let flat = ss <= 1e-10 * f32(p.l) * mean * mean;
    stats[2u * idx] = mean;
    stats[2u * idx + 1u] = select(1.0 / sqrt(ss), 0.0, flat);
}

@compute @workgroup_size(256)
fn correlation(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid); // ((b·W + w)·N + i)·N + j
    if (idx >= p.items * p.w * p.n * p.n) { return; }
    let j = idx % p.n;
    let row = idx / p.n;       // (b·W + w)·N + i: also the stats index of i
    let i = row % p.n;
    let bw = row / p.n;
    let b = bw / p.w;
    let w = bw % p.w;
    let si = row;
    let sj = bw * p.n + j;
    let inv_i = stats[2u * si + 1u];
    let inv_j = stats[2u * sj + 1u];
    if (i == j) {
        // 1 for a region with variance; a region without any is correlated
        // with nothing, itself included.
        out[idx] = select(0.0, 1.0, inv_i > 0.0);
        return;
    }
    let mi = stats[2u * si];
    let mj = stats[2u * sj];
    let bi = ((p.first + b) * p.n + i) * p.t + w * p.s;
    let bj = ((p.first + b) * p.n + j) * p.t + w * p.s;
    var acc = 0.0;
    for (var k = 0u; k < p.l; k = k + 1u) {
        acc = acc + (x[bi + k] - mi) * (x[bj + k] - mj);
    }
    // Rounding can push |r| a hair over 1; downstream log/abs expect [-1, 1].
    out[idx] = clamp(acc * inv_i * inv_j, -1.0, 1.0);
}

// The matmul path's rows: y[(b·W + w)·N + n, k] = (x − mean)·inv over the
// window (stats as written by window_stats; stats and y cover this launch's
// items, x is bound whole). Binding 2 is y here.
@compute @workgroup_size(256)
fn standardize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid); // ((b·W + w)·N + n)·L + k
    if (idx >= p.items * p.w * p.n * p.l) { return; }
    let k = idx % p.l;
    let row = idx / p.l; // (b·W + w)·N + n: the stats index
    let n = row % p.n;
    let bw = row / p.n;
    let b = bw / p.w;
    let w = bw % p.w;
    let v = x[((p.first + b) * p.n + n) * p.t + w * p.s + k];
    out[idx] = (v - stats[2u * row]) * stats[2u * row + 1u];
}

// The matmul path's last pass over out = y·yᵀ [items·W, N, N], in place.
@compute @workgroup_size(256)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid);
    if (idx >= p.items * p.w * p.n * p.n) { return; }
    let j = idx % p.n;
    let row = idx / p.n;
    let i = row % p.n;
    if (i == j) {
        out[idx] = select(0.0, 1.0, stats[2u * row + 1u] > 0.0);
    } else {
        // Rounding can push |r| a hair over 1; downstream log/abs expect [-1, 1].
        out[idx] = clamp(out[idx], -1.0, 1.0);
    }
}
