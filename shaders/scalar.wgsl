// Ops with a scalar that lives on the GPU, s[index] of a small tensor (the
// fusion weights β, the calibration's c₀, c₁, c_b), so nothing is read back:
//   mul_scalar: out = x · s[index]      backward: dx = g · s[index], ds[index] += Σ g ⊙ x
//   add_scalar: out = x + s[index]      backward: dx = g,           ds[index] += Σ g
// The Σ runs over up to ~10^7 elements as a two-pass tree reduction:
// partial_sum / partial_dot write one partial per workgroup of 256
// invocations (16 elements each, then a tree in workgroup memory), and
// finish reduces the partials in one workgroup and adds into ds[index].

struct Params {
    n: u32,            // elements in this launch
    index: u32,        // which element of s
    partial_base: u32, // partial_*: where this launch's partials start; finish: number of partials
    _pad: u32,
}

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> ds: array<f32>;
var<immediate> p: Params;

var<workgroup> tree: array<f32, 256>;

fn linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(WG)
fn mul_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = x[i] * s[p.index];
}

@compute @workgroup_size(WG)
fn add_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = x[i] + s[p.index];
}

// Sums tree[0..256] into tree[0]. Every invocation of the workgroup must call it.
fn reduce_tree(lid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            tree[lid] = tree[lid] + tree[lid + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn partial_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear(wid, nwg);
    let start = g * WG * PER_THREAD + lid;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let i = start + k * WG;
        if (i < p.n) { acc = acc + x[i]; }
    }
    tree[lid] = acc;
    reduce_tree(lid);
    // The folded grid may round up: a workgroup past the end writes nothing.
    if (lid == 0u && g * WG * PER_THREAD < p.n) {
        partials[p.partial_base + g] = tree[0];
    }
}

@compute @workgroup_size(WG)
fn partial_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = linear(wid, nwg);
    let start = g * WG * PER_THREAD + lid;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let i = start + k * WG;
        if (i < p.n) { acc = acc + x[i] * y[i]; }
    }
    tree[lid] = acc;
    reduce_tree(lid);
    if (lid == 0u && g * WG * PER_THREAD < p.n) {
        partials[p.partial_base + g] = tree[0];
    }
}

// One workgroup: ds[index] += Σ partials[0 .. partial_base].
@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.partial_base; i = i + WG) {
        acc = acc + partials[i];
    }
    tree[lid] = acc;
    reduce_tree(lid);
    if (lid == 0u) {
        ds[p.index] = ds[p.index] + tree[0];
    }
}
