// 1-D convolution along time with "same" zero padding, stride 1, odd kernel:
//   y[b, o, t] = bias[o] + Σ_c Σ_j w[o, c, j] · x[b, c, t + j − h],  h = k / 2
// x [B, Cin, T], w [Cout, Cin, k], bias [Cout], y [B, Cout, T].
//
// Register tiles like matmul.wgsl: each invocation computes 4 channels × 4
// time steps, an 8×8 workgroup a 32×32 tile, no workgroup memory or barriers
// (faster on lavapipe, docs/design.md §6). The input gradient is the same loop with
// the weight transposed over channels and flipped in time, so `forward` and
// `backward_input` share `conv_tile`.
//
// Grids: forward / backward_input: x = ceil(T/32), y = ceil(channels out/32),
// z = batch items in this launch. backward_weight: x = ceil(Cin/32),
// y = ceil(Cout/32), z = k. backward_bias: linear over Cout, 64 per group.
//
// These direct kernels are the fallback: shapes the matmul path (the layout
// kernels at the end of this file plus matmul.wgsl) does not take.
//
// Weight and bias gradients sum over batch and time (up to 64 × 316 terms):
// blocked two-level sums (per 64 time steps, then into the total) keep them
// within Tolerance::Accumulation. With ACCUMULATE they add into `out`, which
// is how a launcher splitting the batch over several launches sums the parts
// (each launch is its own compute pass, and wgpu orders a pass's storage
// writes before the next pass's reads of the same buffer).

struct Params {
    batch: u32,  // batch items in this launch
    cin: u32,
    cout: u32,
    t: u32,
    k: u32,
    flags: u32,  // bit 0: accumulate into out (weight and bias gradients)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;  // x (forward, weight grad) or dy (input grad)
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;   // weight and bias grads
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

const BLOCK: u32 = 64u;

// The tile shape of the three tiled entry points, read by the launcher
// through naga reflection to size the grid: a WG x WG workgroup, each
// invocation a PER_INVOCATION x PER_INVOCATION block (the accumulators below
// are written out for 4).
const WG: u32 = 8u;
const PER_INVOCATION: u32 = 4u;

// src[b, ch, pos] with zero padding outside [0, T); `pos` is signed.
fn src_at(b: u32, channels: u32, ch: u32, pos: i32) -> f32 {
    if (pos < 0 || pos >= i32(p.t)) {
        return 0.0;
    }
    return src[(b * channels + ch) * p.t + u32(pos)];
}

// One 4×4 tile of output channels [n0, n0+4) × times [t0, t0+4) of item b.
// Forward: output channel o, source channel c, tap j at time t + j − h.
// Input gradient (transposed): output channel c, source channel o (of dy),
// tap j at time t + h − j, weight still indexed w[o, c, j].
fn conv_tile(b: u32, n0: u32, t0: u32, transposed: bool) -> array<vec4<f32>, 4> {
    let h = i32(p.k / 2u);
    let n_out = select(p.cout, p.cin, transposed);
    let n_src = select(p.cin, p.cout, transposed);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Output channels past the edge are clamped to a valid one; their
    // results are discarded at the store.
    let n1 = min(n0 + 1u, n_out - 1u);
    let n2 = min(n0 + 2u, n_out - 1u);
    let n3 = min(n0 + 3u, n_out - 1u);
    for (var s = 0u; s < n_src; s = s + 1u) {
        for (var j = 0u; j < p.k; j = j + 1u) {
            let shift = select(i32(j) - h, h - i32(j), transposed);
            let base = i32(t0) + shift;
            let xv = vec4<f32>(src_at(b, n_src, s, base), src_at(b, n_src, s, base + 1),
                               src_at(b, n_src, s, base + 2), src_at(b, n_src, s, base + 3));
            // w[o, c, j] = w[(o * Cin + c) * k + j]
            var w0: f32;
            var w1: f32;
            var w2: f32;
            var w3: f32;
            if (transposed) {
                w0 = w[(s * p.cin + n0) * p.k + j];
                w1 = w[(s * p.cin + n1) * p.k + j];
                w2 = w[(s * p.cin + n2) * p.k + j];
                w3 = w[(s * p.cin + n3) * p.k + j];
            } else {
                w0 = w[(n0 * p.cin + s) * p.k + j];
                w1 = w[(n1 * p.cin + s) * p.k + j];
                w2 = w[(n2 * p.cin + s) * p.k + j];
                w3 = w[(n3 * p.cin + s) * p.k + j];
            }
            acc0 = acc0 + w0 * xv;
            acc1 = acc1 + w1 * xv;
            acc2 = acc2 + w2 * xv;
            acc3 = acc3 + w3 * xv;
        }
    }
    return array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
}

// Stores a tile of [B, n_out, T]; `add[r]` is added to row r (the bias).
fn store_tile(b: u32, n0: u32, t0: u32, n_out: u32, rows: array<vec4<f32>, 4>, add: vec4<f32>) {
    for (var r = 0u; r < 4u; r = r + 1u) {
        let n = n0 + r;
        if (n >= n_out) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let t = t0 + q;
            if (t >= p.t) { break; }
            out[(b * n_out + n) * p.t + t] = rows[r][q] + add[r];
        }
    }
}

@compute @workgroup_size(WG, WG, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = (wid.x * WG + lid.x) * PER_INVOCATION;
    let o0 = (wid.y * WG + lid.y) * PER_INVOCATION;
    if (t0 >= p.t || o0 >= p.cout) { return; }
    let last = p.cout - 1u;
    let add = vec4<f32>(bias[o0], bias[min(o0 + 1u, last)], bias[min(o0 + 2u, last)], bias[min(o0 + 3u, last)]);
    store_tile(wid.z, o0, t0, p.cout, conv_tile(wid.z, o0, t0, false), add);
}

// dx[b, c, t] = Σ_o Σ_j w[o, c, j] · dy[b, o, t + h − j]; src = dy.
@compute @workgroup_size(WG, WG, 1)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = (wid.x * WG + lid.x) * PER_INVOCATION;
    let c0 = (wid.y * WG + lid.y) * PER_INVOCATION;
    if (t0 >= p.t || c0 >= p.cin) { return; }
    store_tile(wid.z, c0, t0, p.cin, conv_tile(wid.z, c0, t0, true), vec4<f32>(0.0));
}

// dw[o, c, j] = Σ_b Σ_t dy[b, o, t] · x[b, c, t + j − h]; src = x.
// Each invocation: 4 output channels × 4 input channels for one tap j.
@compute @workgroup_size(WG, WG, 1)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c0 = (wid.x * WG + lid.x) * PER_INVOCATION;
    let o0 = (wid.y * WG + lid.y) * PER_INVOCATION;
    let j = wid.z;
    if (c0 >= p.cin || o0 >= p.cout) { return; }
    let h = i32(p.k / 2u);
    let c1 = min(c0 + 1u, p.cin - 1u);
    let c2 = min(c0 + 2u, p.cin - 1u);
    let c3 = min(c0 + 3u, p.cin - 1u);
    let o1 = min(o0 + 1u, p.cout - 1u);
    let o2 = min(o0 + 2u, p.cout - 1u);
    let o3 = min(o0 + 3u, p.cout - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var b = 0u; b < p.batch; b = b + 1u) {
        var t = 0u;
        while (t < p.t) {
            let end = min(t + BLOCK, p.t);
            var part0 = vec4<f32>(0.0);
            var part1 = vec4<f32>(0.0);
            var part2 = vec4<f32>(0.0);
            var part3 = vec4<f32>(0.0);
            for (; t < end; t = t + 1u) {
                let pos = i32(t) + i32(j) - h;
                let xv = vec4<f32>(src_at(b, p.cin, c0, pos), src_at(b, p.cin, c1, pos),
                                   src_at(b, p.cin, c2, pos), src_at(b, p.cin, c3, pos));
                let dbase = b * p.cout * p.t + t;
                part0 = part0 + dy[dbase + o0 * p.t] * xv;
                part1 = part1 + dy[dbase + o1 * p.t] * xv;
                part2 = part2 + dy[dbase + o2 * p.t] * xv;
                part3 = part3 + dy[dbase + o3 * p.t] * xv;
            }
            acc0 = acc0 + part0;
            acc1 = acc1 + part1;
            acc2 = acc2 + part2;
            acc3 = acc3 + part3;
        }
    }
    let accumulate = (p.flags & 1u) != 0u;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let o = o0 + r;
        if (o >= p.cout) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let c = c0 + q;
            if (c >= p.cin) { break; }
            let idx = (o * p.cin + c) * p.k + j;
            var v = rows[r][q];
            if (accumulate) { v = v + out[idx]; }
            out[idx] = v;
        }
    }
}

// db[o] = Σ_b Σ_t dy[b, o, t]
@compute @workgroup_size(64)
fn backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (o >= p.cout) { return; }
    var total = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        let base = (b * p.cout + o) * p.t;
        var t = 0u;
        while (t < p.t) {
            let end = min(t + BLOCK, p.t);
            var part = 0.0;
            for (; t < end; t = t + 1u) {
                part = part + dy[base + t];
            }
            total = total + part;
        }
    }
    if ((p.flags & 1u) != 0u) {
        total = total + out[o];
    }
    out[o] = total;
}

// ---------------------------------------------------------------------------
// Layout kernels of the matmul path (src/ops/conv1d.rs): with kk = c·k + j
// (w's own row-major layout, so w is a [Cout, Cin·k] matrix as stored),
//   y[b] (Cout x T) = w (Cout x Cin·k) · X_b (Cin·k x T),
//   X_b[kk, t] = x[b, c, t + j − h]  (zero outside [0, T): the padding),
// the input gradient is the same product of dy with the weight flipped
// (`flip_weight`), and dw = Σ_b dy[b] · X_bᵀ, a single Aᵀ·B product over the
// B·T rows of dy and X transposed (`im2col_t`). The products run on
// matmul.wgsl's vec4 kernels; these entry points only rearrange data.
// All are linear over their output, 64 per group (grid folded into y).
// Their p.cin / p.cout are the channels of the tensor they read (`src`).

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// out [B, Cin·k, T]: out[b, kk, t] = src[b, c, t + j − h].
@compute @workgroup_size(64)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let ck = p.cin * p.k;
    if (i >= p.batch * ck * p.t) { return; }
    let t = i % p.t;
    let kk = (i / p.t) % ck;
    let b = i / (p.t * ck);
    let c = kk / p.k;
    let j = kk % p.k;
    out[i] = src_at(b, p.cin, c, i32(t) + i32(j) - i32(p.k / 2u));
}

// out [B, T, Cin·k]: out[b, t, kk] = src[b, c, t + j − h] (X_b transposed,
// so the weight gradient's contraction over b and t is along rows).
@compute @workgroup_size(64)
fn im2col_t(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let ck = p.cin * p.k;
    if (i >= p.batch * ck * p.t) { return; }
    let kk = i % ck;
    let t = (i / ck) % p.t;
    let b = i / (ck * p.t);
    let c = kk / p.k;
    let j = kk % p.k;
    out[i] = src_at(b, p.cin, c, i32(t) + i32(j) - i32(p.k / 2u));
}

// out[c, o, j] = w[o, c, k − 1 − j] (p.cin, p.cout: the convolution's own):
// dx[b, c, t] = Σ_o Σ_j w[o, c, j] · dy[b, o, t + h − j] is, with
// j' = k − 1 − j, the forward of dy with this weight (t + h − j = t + j' − h).
@compute @workgroup_size(64)
fn flip_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.cout * p.cin * p.k) { return; }
    let j = i % p.k;
    let o = (i / p.k) % p.cout;
    let c = i / (p.k * p.cout);
    out[i] = w[(o * p.cin + c) * p.k + (p.k - 1u - j)];
}

// out [B, Cout, T] = bias[o]: the forward's product then accumulates onto it.
@compute @workgroup_size(64)
fn bias_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.batch * p.cout * p.t) { return; }
    out[i] = bias[(i / p.t) % p.cout];
}
