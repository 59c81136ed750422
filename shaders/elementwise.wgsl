// Elementwise kernels and their backwards. 256 invocations per workgroup,
// ELEMS_PER_THREAD elements each, linear index folded over a 2-D grid (see Gpu::launch_linear).
//
// `base` is the index of this launch's first element in the whole tensor:
// launchers split tensors larger than one storage binding into ranges and
// bias_add needs the global index to find the channel.

struct Params {
    n: u32,        // elements in this launch
    base: u32,     // global index of element 0 of this launch
    channels: u32, // bias_add: size of the last dimension; mul_broadcast: inner size
    mid: u32,      // mul_broadcast: size of the dimension y skips
    alpha: f32,    // scale / axpy factor
    beta: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

// Each workgroup covers ELEMS_PER_THREAD * 256 consecutive elements, 256 at
// a time (so neighbouring invocations touch neighbouring elements). Fewer,
// fatter workgroups: on lavapipe each workgroup has a fixed scheduling cost
// that dominated one-element-per-thread launches (0.9 GB/s before, measured).
const ELEMS_PER_THREAD: u32 = 8u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, j: u32) -> u32 {
    return ((wid.x + wid.y * nwg.x) * ELEMS_PER_THREAD + j) * 256u + lid;
}

// out = x + y
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = x[i] + y[i];
    }
}

// out = x * y (backward: dx = g * y, dy = g * x, both via this kernel)
@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = x[i] * y[i];
    }
}

// out = alpha * x + beta
@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = p.alpha * x[i] + p.beta;
    }
}

// out += alpha * x   (gradient accumulation)
@compute @workgroup_size(256)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = out[i] + p.alpha * x[i];
    }
}

// out[.., c] = x[.., c] + y[c]; y is the bias over the last dimension.
@compute @workgroup_size(256)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = x[i] + y[(p.base + i) % p.channels];
    }
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = max(x[i], 0.0);
    }
}

// dx = g * (y > 0), with x = g (upstream gradient) and y = the forward output.
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = select(0.0, x[i], y[i] > 0.0);
    }
}

@compute @workgroup_size(256)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        // tanh() of large |x| can be NaN on some drivers (exp overflow); clamp first.
        out[i] = tanh(clamp(x[i], -15.0, 15.0));
    }
}

// dx = g * (1 - y^2), x = g, y = tanh output.
@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = x[i] * (1.0 - y[i] * y[i]);
    }
}

@compute @workgroup_size(256)
fn exp_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = exp(x[i]);
    }
}

// out[i] = x[base + i]: copies a range that may start at an unaligned offset
// (binding offsets must be 256-byte aligned; this reads through the whole x).
@compute @workgroup_size(256)
fn copy_from(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        out[i] = x[p.base + i];
    }
}

// out[i] = x[i] * y[j] with y broadcast over one middle dimension: for x
// viewed as [outer, mid, inner], j = outer_index * inner + inner_index. A
// region mask [B, N] over x [B, N, T] is (inner 1, mid T); a frame mask
// [B, T] is (inner T, mid N).
@compute @workgroup_size(256)
fn mul_broadcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = index(wid, nwg, lid, j);
        if (i >= p.n) { return; }
        let g = p.base + i;
        out[i] = x[i] * y[(g / (p.channels * p.mid)) * p.channels + g % p.channels];
    }
}
