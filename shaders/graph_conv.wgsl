// Graph propagation for the GCNs. Activations H [B, T, N, F]; adjacency
// A [B, W, N, N]; frame t uses window w(t) = min(⌊t/S⌋, W − 1) (static: W = 1).
//   propagate:        out[b,t,n,f] = Σ_m op(A)[b,w(t),n,m] · H[b,t,m,f]
//                     with op(A) = A (forward) or Aᵀ (flag bit 0: the backward
//                     dH[b,t,m,f] = Σ_n A[b,w(t),n,m] · dOut[b,t,n,f]).
//   adjacency_grad:   dA[b,w,n,m] = Σ_{t: w(t)=w} Σ_f dOut[b,t,n,f] · H[b,t,m,f]
//   degree, normalize: Â = D^{-1/2}(|P| with zero diagonal + I)D^{-1/2}.
//
// Register tiling (docs/design.md §6): each invocation computes a 4x4 block of the
// output in registers, with no workgroup memory and no barriers. Invocations
// are indexed linearly (64 per workgroup, grid folded by Gpu::launch_linear),
// the f tile fastest, so every invocation does useful work for any F.

struct Params {
    batch: u32,
    frames: u32,  // T
    nodes: u32,   // N
    feats: u32,   // F
    windows: u32, // W
    stride: u32,  // S
    flags: u32,   // bit 0: use Aᵀ
    total: u32,   // invocations that have work
    // Element offsets of this launch's first batch item inside the bound
    // ranges: launchers split large batches into binding-sized ranges bound
    // from 256-byte-aligned offsets and pass the remainders here. a_off
    // applies to the adjacency and dA, h_off to H, dOut and out (all of
    // which share one layout and so one remainder).
    a_off: u32,
    h_off: u32,
}

@group(0) @binding(0) var<storage, read> adj: array<f32>;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// Vector views of the same bindings, for the fast paths (no entry point uses both).
@group(0) @binding(0) var<storage, read> adj4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> h4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;
// adjacency_grad: the upstream gradient in place of the adjacency.
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> g4: array<vec4<f32>>;
var<immediate> p: Params;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

fn window_of(t: u32) -> u32 {
    return min(t / p.stride, p.windows - 1u);
}

// op(A)[i, k] of the adjacency at `base`, row clamped (edge tiles compute
// garbage rows that are never stored).
fn a_at(base: u32, i: u32, k: u32) -> f32 {
    let r = min(i, p.nodes - 1u);
    if ((p.flags & 1u) != 0u) {
        return adj[base + k * p.nodes + r];
    }
    return adj[base + r * p.nodes + k];
}

fn h_at(base: u32, m: u32, f: u32) -> f32 {
    return h[base + m * p.feats + min(f, p.feats - 1u)];
}

@compute @workgroup_size(64)
fn propagate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let tiles_f = (p.feats + 3u) / 4u;
    let tiles_n = (p.nodes + 3u) / 4u;
    let per_frame = tiles_f * tiles_n;
    let bt = id / per_frame;
    let rem = id % per_frame;
    let n0 = (rem / tiles_f) * 4u;
    let f0 = (rem % tiles_f) * 4u;
    let b = bt / p.frames;
    let t = bt % p.frames;
    let a_base = p.a_off + (b * p.windows + window_of(t)) * p.nodes * p.nodes;
    let h_base = p.h_off + bt * p.nodes * p.feats;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var m = 0u; m < p.nodes; m = m + 1u) {
        let hv = vec4<f32>(h_at(h_base, m, f0), h_at(h_base, m, f0 + 1u),
                           h_at(h_base, m, f0 + 2u), h_at(h_base, m, f0 + 3u));
        acc0 = acc0 + a_at(a_base, n0, m) * hv;
        acc1 = acc1 + a_at(a_base, n0 + 1u, m) * hv;
        acc2 = acc2 + a_at(a_base, n0 + 2u, m) * hv;
        acc3 = acc3 + a_at(a_base, n0 + 3u, m) * hv;
    }
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let n = n0 + r;
        if (n >= p.nodes) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let f = f0 + q;
            if (f >= p.feats) { break; }
            out[h_base + n * p.feats + f] = rows[r][q];
        }
    }
}

// Fast path for N and F multiples of 4: the same 4x4 tile, A and H read as
// vec4 (8 vector loads per 64 multiply-adds), four values of m per step.
@compute @workgroup_size(64)
fn propagate_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let f4 = p.feats / 4u;
    let n4 = p.nodes / 4u;
    let per_frame = f4 * n4;
    let bt = id / per_frame;
    let rem = id % per_frame;
    let nt = rem / f4;
    let ft = rem % f4;
    let b = bt / p.frames;
    let t = bt % p.frames;
    // In vec4s; the offsets are multiples of 4 when N and F are.
    let a_base = p.a_off / 4u + (b * p.windows + window_of(t)) * p.nodes * n4;
    let h_base = p.h_off / 4u + bt * p.nodes * f4 + ft;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    if ((p.flags & 1u) == 0u) {
        // Rows n0..n0+3 of A, four columns m at a time.
        let r0 = a_base + (nt * 4u) * n4;
        for (var mq = 0u; mq < n4; mq = mq + 1u) {
            let hk = h_base + mq * 4u * f4;
            let h0 = h4[hk];
            let h1 = h4[hk + f4];
            let h2 = h4[hk + 2u * f4];
            let h3 = h4[hk + 3u * f4];
            let a0 = adj4[r0 + mq];
            let a1 = adj4[r0 + n4 + mq];
            let a2 = adj4[r0 + 2u * n4 + mq];
            let a3 = adj4[r0 + 3u * n4 + mq];
            acc0 = acc0 + a0.x * h0 + a0.y * h1 + a0.z * h2 + a0.w * h3;
            acc1 = acc1 + a1.x * h0 + a1.y * h1 + a1.z * h2 + a1.w * h3;
            acc2 = acc2 + a2.x * h0 + a2.y * h1 + a2.z * h2 + a2.w * h3;
            acc3 = acc3 + a3.x * h0 + a3.y * h1 + a3.z * h2 + a3.w * h3;
        }
    } else {
        // op(A) = Aᵀ: A[m, n0..n0+3] is one vec4 holding op(A)[n0..n0+3, m].
        let c0 = a_base + nt;
        for (var mq = 0u; mq < n4; mq = mq + 1u) {
            let hk = h_base + mq * 4u * f4;
            let h0 = h4[hk];
            let h1 = h4[hk + f4];
            let h2 = h4[hk + 2u * f4];
            let h3 = h4[hk + 3u * f4];
            let ak = c0 + mq * 4u * n4;
            let a0 = adj4[ak];
            let a1 = adj4[ak + n4];
            let a2 = adj4[ak + 2u * n4];
            let a3 = adj4[ak + 3u * n4];
            acc0 = acc0 + a0.x * h0 + a1.x * h1 + a2.x * h2 + a3.x * h3;
            acc1 = acc1 + a0.y * h0 + a1.y * h1 + a2.y * h2 + a3.y * h3;
            acc2 = acc2 + a0.z * h0 + a1.z * h1 + a2.z * h2 + a3.z * h3;
            acc3 = acc3 + a0.w * h0 + a1.w * h1 + a2.w * h2 + a3.w * h3;
        }
    }
    let o = p.h_off / 4u + bt * p.nodes * f4 + nt * 4u * f4 + ft;
    out4[o] = acc0;
    out4[o + f4] = acc1;
    out4[o + 2u * f4] = acc2;
    out4[o + 3u * f4] = acc3;
}

// Workgroup-memory tiling, the variant for GPUs (`Tiling::Workgroup`, as in
// matmul.wgsl; the entry points above are for CPU adapters). A workgroup of
// 64 computes a 64 (n) x 16 (f) tile of one frame's output, each invocation
// a 4x4 block. The contraction over m advances in slices of 16: op(A)[64 n,
// 16 m] and H[16 m, 16 f] are staged in workgroup memory (5 KiB), so each
// adjacency element read from device memory serves 16 multiply-adds and
// each activation 64. Any N and F: out-of-range elements are staged as 0 and
// never stored. Workgroups are indexed linearly (grid folded by
// Gpu::launch_linear); p.total is the number of workgroups with work, so
// the early exit is uniform and every barrier is reached by the whole group.
const PROP_TILE_N: u32 = 64u;
const PROP_TILE_F: u32 = 16u;
const PROP_TILE_M: u32 = 16u;
// a_stage[k * 64 + i] = op(A)[n0 + i, m0 + k]; h_stage[k * 16 + j] = H[m0 + k, f0 + j].
var<workgroup> a_stage: array<f32, 1024>;
var<workgroup> h_stage: array<f32, 256>;

@compute @workgroup_size(64)
fn propagate_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * nwg.x;
    if (group >= p.total) { return; }
    let tiles_f = (p.feats + PROP_TILE_F - 1u) / PROP_TILE_F;
    let tiles_n = (p.nodes + PROP_TILE_N - 1u) / PROP_TILE_N;
    let per_frame = tiles_f * tiles_n;
    let bt = group / per_frame;
    let rem = group % per_frame;
    let n0 = (rem / tiles_f) * PROP_TILE_N;
    let f0 = (rem % tiles_f) * PROP_TILE_F;
    let b = bt / p.frames;
    let t = bt % p.frames;
    let a_base = p.a_off + (b * p.windows + window_of(t)) * p.nodes * p.nodes;
    let h_base = p.h_off + bt * p.nodes * p.feats;
    let transposed = (p.flags & 1u) != 0u;
    let rn = (lid / 4u) * 4u;
    let cf = (lid % 4u) * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    for (var m0 = 0u; m0 < p.nodes; m0 = m0 + PROP_TILE_M) {
        // The adjacency slice, 16 elements per invocation, walking the
        // stored rows: along m for A, along n for Aᵀ.
        for (var e = 0u; e < 16u; e = e + 1u) {
            let idx = lid + e * 64u;
            var i = idx / PROP_TILE_M;
            var k = idx % PROP_TILE_M;
            if (transposed) {
                i = idx % PROP_TILE_N;
                k = idx / PROP_TILE_N;
            }
            let n = n0 + i;
            let m = m0 + k;
            var v = 0.0;
            if (n < p.nodes && m < p.nodes) {
                if (transposed) { v = adj[a_base + m * p.nodes + n]; } else { v = adj[a_base + n * p.nodes + m]; }
            }
            a_stage[k * PROP_TILE_N + i] = v;
        }
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = lid + e * 64u;
            let k = idx / PROP_TILE_F;
            let j = idx % PROP_TILE_F;
            let m = m0 + k;
            let f = f0 + j;
            var v = 0.0;
            if (m < p.nodes && f < p.feats) { v = h[h_base + m * p.feats + f]; }
            h_stage[k * PROP_TILE_F + j] = v;
        }
        // The slices are complete before anyone reads them.
        workgroupBarrier();
        for (var k = 0u; k < PROP_TILE_M; k = k + 1u) {
            let hr = k * PROP_TILE_F + cf;
            let hv = vec4<f32>(h_stage[hr], h_stage[hr + 1u], h_stage[hr + 2u], h_stage[hr + 3u]);
            let ar = k * PROP_TILE_N + rn;
            acc[0] = acc[0] + a_stage[ar] * hv;
            acc[1] = acc[1] + a_stage[ar + 1u] * hv;
            acc[2] = acc[2] + a_stage[ar + 2u] * hv;
            acc[3] = acc[3] + a_stage[ar + 3u] * hv;
        }
        // Everyone is done reading before the next slice overwrites them.
        workgroupBarrier();
    }
    for (var q = 0u; q < 4u; q = q + 1u) {
        let n = n0 + rn + q;
        if (n >= p.nodes) { break; }
        for (var jj = 0u; jj < 4u; jj = jj + 1u) {
            let f = f0 + cf + jj;
            if (f >= p.feats) { break; }
            out[h_base + n * p.feats + f] = acc[q][jj];
        }
    }
}

// Frames [first, last) that use window w.
fn frames_of(w: u32) -> vec2<u32> {
    let first = min(w * p.stride, p.frames);
    var last = min((w + 1u) * p.stride, p.frames);
    if (w == p.windows - 1u) { last = p.frames; }
    return vec2<u32>(first, last);
}

// dA, 4x4 tile of (n, m) per invocation; g = dOut at binding 3.
@compute @workgroup_size(64)
fn adjacency_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let tiles = (p.nodes + 3u) / 4u;
    let per_window = tiles * tiles;
    let bw = id / per_window;
    let rem = id % per_window;
    let n0 = (rem / tiles) * 4u;
    let m0 = (rem % tiles) * 4u;
    let b = bw / p.windows;
    let w = bw % p.windows;
    let span = frames_of(w);
    let last = p.nodes - 1u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t = span.x; t < span.y; t = t + 1u) {
        let base = p.h_off + (b * p.frames + t) * p.nodes * p.feats;
        let gn0 = base + min(n0, last) * p.feats;
        let gn1 = base + min(n0 + 1u, last) * p.feats;
        let gn2 = base + min(n0 + 2u, last) * p.feats;
        let gn3 = base + min(n0 + 3u, last) * p.feats;
        let hm0 = base + min(m0, last) * p.feats;
        let hm1 = base + min(m0 + 1u, last) * p.feats;
        let hm2 = base + min(m0 + 2u, last) * p.feats;
        let hm3 = base + min(m0 + 3u, last) * p.feats;
        for (var f = 0u; f < p.feats; f = f + 1u) {
            let hv = vec4<f32>(h[hm0 + f], h[hm1 + f], h[hm2 + f], h[hm3 + f]);
            acc0 = acc0 + g[gn0 + f] * hv;
            acc1 = acc1 + g[gn1 + f] * hv;
            acc2 = acc2 + g[gn2 + f] * hv;
            acc3 = acc3 + g[gn3 + f] * hv;
        }
    }
    let o = p.a_off + bw * p.nodes * p.nodes;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let n = n0 + r;
        if (n >= p.nodes) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let m = m0 + q;
            if (m >= p.nodes) { break; }
            out[o + n * p.nodes + m] = rows[r][q];
        }
    }
}

// The same for F a multiple of 4: dOut and H rows read as vec4.
@compute @workgroup_size(64)
fn adjacency_grad_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = invocation(wid, nwg, lid);
    if (id >= p.total) { return; }
    let tiles = (p.nodes + 3u) / 4u;
    let per_window = tiles * tiles;
    let bw = id / per_window;
    let rem = id % per_window;
    let n0 = (rem / tiles) * 4u;
    let m0 = (rem % tiles) * 4u;
    let b = bw / p.windows;
    let w = bw % p.windows;
    let span = frames_of(w);
    let last = p.nodes - 1u;
    let f4 = p.feats / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t = span.x; t < span.y; t = t + 1u) {
        let base = p.h_off / 4u + (b * p.frames + t) * p.nodes * f4;
        let gn0 = base + min(n0, last) * f4;
        let gn1 = base + min(n0 + 1u, last) * f4;
        let gn2 = base + min(n0 + 2u, last) * f4;
        let gn3 = base + min(n0 + 3u, last) * f4;
        let hm0 = base + min(m0, last) * f4;
        let hm1 = base + min(m0 + 1u, last) * f4;
        let hm2 = base + min(m0 + 2u, last) * f4;
        let hm3 = base + min(m0 + 3u, last) * f4;
        for (var fq = 0u; fq < f4; fq = fq + 1u) {
            let h0 = h4[hm0 + fq];
            let h1 = h4[hm1 + fq];
            let h2 = h4[hm2 + fq];
            let h3 = h4[hm3 + fq];
            let g0 = g4[gn0 + fq];
            let g1 = g4[gn1 + fq];
            let g2 = g4[gn2 + fq];
            let g3 = g4[gn3 + fq];
            acc0 = acc0 + vec4<f32>(dot(g0, h0), dot(g0, h1), dot(g0, h2), dot(g0, h3));
            acc1 = acc1 + vec4<f32>(dot(g1, h0), dot(g1, h1), dot(g1, h2), dot(g1, h3));
            acc2 = acc2 + vec4<f32>(dot(g2, h0), dot(g2, h1), dot(g2, h2), dot(g2, h3));
            acc3 = acc3 + vec4<f32>(dot(g3, h0), dot(g3, h1), dot(g3, h2), dot(g3, h3));
        }
    }
    let o = p.a_off + bw * p.nodes * p.nodes;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let n = n0 + r;
        if (n >= p.nodes) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let m = m0 + q;
            if (m >= p.nodes) { break; }
            out[o + n * p.nodes + m] = rows[r][q];
        }
    }
}

// normalize_adjacency, pass 1: dinv[b, i] = (1 + Σ_{j≠i} |P[b,i,j]|)^{-1/2}
// (the row sum of |P| with zero diagonal, plus the identity). One invocation
// per row; P at binding 0, dinv written to binding 2; total = B·N.
@compute @workgroup_size(64)
fn degree(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = invocation(wid, nwg, lid);
    if (row >= p.total) { return; }
    let i = row % p.nodes;
    let base = row * p.nodes;
    var d = 1.0;
    for (var j = 0u; j < p.nodes; j = j + 1u) {
        if (j != i) { d = d + abs(adj[base + j]); }
    }
    out[row] = inverseSqrt(d);
}

// Pass 2: Â[b,i,j] = (|P[b,i,j]| for j ≠ i, 1 on the diagonal) · dinv[b,i] · dinv[b,j].
// P at binding 0, dinv at binding 1, Â to binding 2; one invocation per
// element, total = B·N·N.
@compute @workgroup_size(64)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if (e >= p.total) { return; }
    let j = e % p.nodes;
    let row = e / p.nodes;
    let i = row % p.nodes;
    let b = row / p.nodes;
    var a = abs(adj[e]);
    if (i == j) { a = 1.0; }
    out[e] = a * h[row] * h[b * p.nodes + j];
}

// dA with workgroup-memory tiling, the variant for GPUs (as propagate_workgroup).
// A workgroup of 64 computes a 32x32 tile of one window's dA, each invocation
// a 4x4 block. The contraction runs over the window's (frame, feature) pairs,
// flattened, in slices of 16: dOut[32 n, 16] and H[32 m, 16] are staged in
// workgroup memory (4 KiB). A window that no frame uses contracts over
// nothing and is written as 0. p.total is the number of workgroups with work
// (the early exit is uniform); the slice count depends only on the window,
// which is the same for the whole workgroup, so every barrier is reached by all.
const GRAD_TILE: u32 = 32u;
const GRAD_TILE_K: u32 = 16u;
// g_stage[k * 32 + i] = dOut at (n0 + i, pair k0 + k); hm_stage likewise H at m0 + i.
var<workgroup> g_stage: array<f32, 512>;
var<workgroup> hm_stage: array<f32, 512>;

@compute @workgroup_size(64)
fn adjacency_grad_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * nwg.x;
    if (group >= p.total) { return; }
    let tiles = (p.nodes + GRAD_TILE - 1u) / GRAD_TILE;
    let per_window = tiles * tiles;
    let bw = group / per_window;
    let rem = group % per_window;
    let n0 = (rem / tiles) * GRAD_TILE;
    let m0 = (rem % tiles) * GRAD_TILE;
    let b = bw / p.windows;
    let w = bw % p.windows;
    let span = frames_of(w);
    let pairs = (span.y - span.x) * p.feats;
    let rn = (lid / 8u) * 4u;
    let cm = (lid % 8u) * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    for (var k0 = 0u; k0 < pairs; k0 = k0 + GRAD_TILE_K) {
        // 512 elements of each, 8 per invocation, the feature fastest (the
        // stored order of a region's row).
        for (var e = 0u; e < 8u; e = e + 1u) {
            let idx = lid + e * 64u;
            let i = idx / GRAD_TILE_K;
            let k = idx % GRAD_TILE_K;
            let pair = k0 + k;
            var gv = 0.0;
            var hv = 0.0;
            if (pair < pairs) {
                let t = span.x + pair / p.feats;
                let f = pair % p.feats;
                let base = p.h_off + (b * p.frames + t) * p.nodes * p.feats;
                if (n0 + i < p.nodes) { gv = g[base + (n0 + i) * p.feats + f]; }
                if (m0 + i < p.nodes) { hv = h[base + (m0 + i) * p.feats + f]; }
            }
            g_stage[k * GRAD_TILE + i] = gv;
            hm_stage[k * GRAD_TILE + i] = hv;
        }
        // The slices are complete before anyone reads them.
        workgroupBarrier();
        for (var k = 0u; k < GRAD_TILE_K; k = k + 1u) {
            let hr = k * GRAD_TILE + cm;
            let hv = vec4<f32>(hm_stage[hr], hm_stage[hr + 1u], hm_stage[hr + 2u], hm_stage[hr + 3u]);
            let gr = k * GRAD_TILE + rn;
            acc[0] = acc[0] + g_stage[gr] * hv;
            acc[1] = acc[1] + g_stage[gr + 1u] * hv;
            acc[2] = acc[2] + g_stage[gr + 2u] * hv;
            acc[3] = acc[3] + g_stage[gr + 3u] * hv;
        }
        // Everyone is done reading before the next slice overwrites them.
        workgroupBarrier();
    }
    let o = p.a_off + bw * p.nodes * p.nodes;
    for (var q = 0u; q < 4u; q = q + 1u) {
        let n = n0 + rn + q;
        if (n >= p.nodes) { break; }
        for (var jj = 0u; jj < 4u; jj = jj + 1u) {
            let m = m0 + cm + jj;
            if (m >= p.nodes) { break; }
            out[o + n * p.nodes + m] = acc[q][jj];
        }
    }
}
