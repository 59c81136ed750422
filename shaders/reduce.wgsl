// Reductions along one axis of a tensor viewed as [outer, axis, inner]
// (any axis of any rank), and their backwards.
//
// Forward: one invocation per output element (o, i), looping over the axis.
// Adjacent invocations read adjacent `inner` elements, so the loads coalesce
// when inner > 1; on lavapipe a sequential loop per invocation beats a
// workgroup tree with barriers (docs/design.md §6).
//
// Accuracy: a plain f32 running sum over 5000 terms loses up to ~5000 ulps in
// the worst case. We sum in blocks of BLOCK terms and add each block's
// partial to the total (two-level summation), so the error grows like
// BLOCK + axis/BLOCK instead of axis. No compensated (Kahan) trick: a driver
// may legally reassociate it away, while the blocked form is just two sums.
//
// Backward of sum/mean: one invocation per input element, broadcasting the
// output gradient. Backward of max: one invocation per output element, which
// recomputes the argmax (first index on ties, like the forward) and writes
// the whole axis column, so no index tensor has to be saved.

struct Params {
    outer: u32, // outer slices in this launch
    axis: u32,
    inner: u32,
    _pad: u32,
    scale: f32, // 1 for sum, 1/axis for mean
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

const BLOCK: u32 = 64u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// out[o, i] = scale * sum_a x[o, a, i]
@compute @workgroup_size(256)
fn sum_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= p.outer * p.inner) { return; }
    let o = j / p.inner;
    let i = j % p.inner;
    let base = o * p.axis * p.inner + i;
    var total = 0.0;
    var a = 0u;
    while (a < p.axis) {
        let end = min(a + BLOCK, p.axis);
        var part = 0.0;
        for (; a < end; a = a + 1u) {
            part = part + x[base + a * p.inner];
        }
        total = total + part;
    }
    out[j] = p.scale * total;
}

// out[o, i] = max_a x[o, a, i]
@compute @workgroup_size(256)
fn max_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= p.outer * p.inner) { return; }
    let o = j / p.inner;
    let i = j % p.inner;
    let base = o * p.axis * p.inner + i;
    var best = x[base];
    for (var a = 1u; a < p.axis; a = a + 1u) {
        best = max(best, x[base + a * p.inner]);
    }
    out[j] = best;
}

// dx[o, a, i] = scale * g[o, i]
@compute @workgroup_size(256)
fn broadcast_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = index(wid, nwg, lid);
    if (k >= p.outer * p.axis * p.inner) { return; }
    let o = k / (p.axis * p.inner);
    let i = k % p.inner;
    out[k] = p.scale * g[o * p.inner + i];
}

// dx[o, a, i] = g[o, i] if a is the first argmax of x[o, :, i], else 0.
@compute @workgroup_size(256)
fn max_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= p.outer * p.inner) { return; }
    let o = j / p.inner;
    let i = j % p.inner;
    let base = o * p.axis * p.inner + i;
    var best = x[base];
    var arg = 0u;
    for (var a = 1u; a < p.axis; a = a + 1u) {
        let v = x[base + a * p.inner];
        // Strictly greater: the first maximum keeps the gradient on ties.
        if (v > best) {
            best = v;
            arg = a;
        }
    }
    let grad = g[j];
    for (var a = 0u; a < p.axis; a = a + 1u) {
        out[base + a * p.inner] = select(0.0, grad, a == arg);
    }
}
