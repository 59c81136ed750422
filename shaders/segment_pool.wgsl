// Attention pooling over segments (progressive temporal aggregation).
// h [B, T, D], scores e [B, T], valid [B, T] (1 real frame, 0 padding),
// segment length P, K = ⌈T/P⌉ segments (the last may be shorter):
//   weights: a_t = softmax of e over the segment's valid frames (0 elsewhere;
//            a segment without a valid frame gets all zeros, never NaN)
//   pool:    g[b,k,:] = Σ_{t in k} a_t h[b,t,:]
// Backward from dg [B, K, D]:
//   backward_dh: dh[b,t,:] = a_t dg[b,k(t),:]
//   backward_de: q_t = dg[b,k,:]·h[b,t,:], de_t = a_t (q_t − Σ_s a_s q_s)
// The second stage (softmax over segments) is the same op with T = P = K.
// One invocation per (b, k) for the softmax-like passes, per element for the
// others; 64 per workgroup, linear index folded over a 2-D grid.

struct Params {
    batch: u32,
    frames: u32, // T
    dim: u32,    // D
    seg: u32,    // P
    segs: u32,   // K
    total: u32,  // invocations with work
}

@group(0) @binding(0) var<storage, read> h: array<f32>;
@group(0) @binding(1) var<storage, read> e: array<f32>;
@group(0) @binding(2) var<storage, read> valid: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> dg: array<f32>;
@group(0) @binding(6) var<storage, read_write> dh: array<f32>;
@group(0) @binding(7) var<storage, read_write> de: array<f32>;
var<immediate> p: Params;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// Frames [first, last) of segment k (as flat indices into [B, T]).
fn span(b: u32, k: u32) -> vec2<u32> {
    let first = k * p.seg;
    let last = min(first + p.seg, p.frames);
    return vec2<u32>(b * p.frames + first, b * p.frames + last);
}

@compute @workgroup_size(64)
fn weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let s = span(id / p.segs, id % p.segs);
    var top = -3.0e38;
    var any = false;
    for (var t = s.x; t < s.y; t = t + 1u) {
        if (valid[t] > 0.5) {
            top = max(top, e[t]);
            any = true;
        }
    }
    var sum = 0.0;
    for (var t = s.x; t < s.y; t = t + 1u) {
        var w = 0.0;
        if (any && valid[t] > 0.5) { w = exp(e[t] - top); }
        a[t] = w;
        sum = sum + w;
    }
    // sum ≥ 1 when any frame is valid (the maximum contributes exp(0)).
    let inv = select(0.0, 1.0 / sum, any);
    for (var t = s.x; t < s.y; t = t + 1u) {
        a[t] = a[t] * inv;
    }
}

// g[b,k,d]; one invocation per output element.
@compute @workgroup_size(64)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let d = id % p.dim;
    let bk = id / p.dim;
    let s = span(bk / p.segs, bk % p.segs);
    var acc = 0.0;
    for (var t = s.x; t < s.y; t = t + 1u) {
        acc = acc + a[t] * h[t * p.dim + d];
    }
    out[id] = acc;
}

// seg_valid[b,k] = 1 when segment k has a valid frame (the valid mask of the
// second stage).
@compute @workgroup_size(64)
fn segment_valid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let s = span(id / p.segs, id % p.segs);
    var any = 0.0;
    for (var t = s.x; t < s.y; t = t + 1u) {
        if (valid[t] > 0.5) { any = 1.0; }
    }
    out[id] = any;
}

// dh[b,t,d]; one invocation per element of h.
@compute @workgroup_size(64)
fn backward_dh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let d = id % p.dim;
    let bt = id / p.dim;
    let b = bt / p.frames;
    let k = (bt % p.frames) / p.seg;
    dh[id] = a[bt] * dg[(b * p.segs + k) * p.dim + d];
}

// de over one segment per invocation.
@compute @workgroup_size(64)
fn backward_de(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let s = span(id / p.segs, id % p.segs);
    let gk = id * p.dim; // dg row of (b, k): id = b·K + k
    var mean = 0.0;
    for (var t = s.x; t < s.y; t = t + 1u) {
        var q = 0.0;
        for (var d = 0u; d < p.dim; d = d + 1u) {
            q = q + dg[gk + d] * h[t * p.dim + d];
        }
        de[t] = q;
        mean = mean + a[t] * q;
    }
    for (var t = s.x; t < s.y; t = t + 1u) {
        de[t] = a[t] * (de[t] - mean);
    }
}
