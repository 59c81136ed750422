// Partial correlation from a Ledoit–Wolf shrunk covariance, batched
// (docs/design.md §3, static branch), matching nilearn's
// ConnectivityMeasure(kind="partial correlation"): sklearn's LedoitWolf on the
// centered series (no standardization), Θ = Σ̂⁻¹, P_ij = −Θ_ij/√(Θ_ii Θ_jj),
// diagonal 1.
//
// Launched in order by the host (dispatches of one encoder sharing a buffer
// are ordered by wgpu):
//   center   one invocation per (b, n): xc = x − mean over time.
//   (matmul) a = xc·xcᵀ / T, the biased empirical covariance [B, N, N].
//   shrink   one workgroup per batch item: the Ledoit–Wolf shrinkage s, then
//            a ← (1 − s)·a + s·μ·I in place, μ = tr(a)/N.
//   invert   one workgroup per batch item: Gauss–Jordan inversion of a in
//            place, without pivoting.
//   partial  one invocation per output element.
//
// When T < N (ABIDE's 200 regions with crops of 48 or 128 frames) the host
// takes the low-rank path instead, which never forms or inverts an N×N
// matrix. Σ̂ = s·μ·I + ((1 − s)/T)·xc·xcᵀ is the identity plus a rank-T term,
// so by Woodbury
//   Σ̂⁻¹ ∝ I − (1 − s)·xc·M⁻¹·xcᵀ,   M = (1 − s)·G + s·μ·T·I,   G = xcᵀ·xc [T, T],
// and P is invariant to the positive scale that ∝ drops. Every Ledoit–Wolf
// statistic comes from G as well: tr S = tr G / T, ‖S‖²_F = ‖G‖²_F / T² (S and
// G share their nonzero eigenvalues) and Σ_t (Σ_i xc_it²)² = Σ_t G_tt².
//   center        as above.
//   (matmul)      a = G = xcᵀ·xc [B, T, T].
//   shrink_gram   one workgroup per item: s from G, then a ← M in place.
//   invert        as above, with n = T: a ← M⁻¹.
//   (matmul ×2)   k = (xc·M⁻¹)·xcᵀ [B, N, N].
//   partial_low_rank  one invocation per output element:
//                 P_ij = (1 − s)·k_ij / √((1 − (1 − s)·k_ii)(1 − (1 − s)·k_jj)).
// M has every eigenvalue ≥ s·μ·T and the same condition number as Σ̂ (its
// eigenvalues are T times Σ̂'s nonzero-signal ones), so Gauss–Jordan without
// pivoting is as safe here as on Σ̂; the scale (1 − s) is applied at the end,
// so s = 1 (Σ̂ = μI) gives P = 0 without dividing by zero. A zero region has
// a zero row of xc, hence of k: its partial correlations are exactly 0.
//
// Conditioning: the shrunk matrix is symmetric positive definite with every
// eigenvalue ≥ s·μ, so Gauss–Jordan without pivoting is stable (the pivots are
// Schur complements of an SPD matrix, all ≥ the smallest eigenvalue) and its
// f32 error grows with the condition number (largest eigenvalue / s·μ), which
// the shrinkage keeps moderate. An all-zero region has a zero row and column
// in the covariance and s·μ on the diagonal: invertible, no NaN. (A batch
// item that is entirely zero has μ = 0 and stays singular, as in sklearn.)

struct Params {
    b: u32, // batch items
    n: u32, // regions
    t: u32, // frames
}

@group(0) @binding(0) var<storage, read> x: array<f32>;           // [B, N, T]
@group(0) @binding(1) var<storage, read_write> xc: array<f32>;    // [B, N, T]
@group(0) @binding(2) var<storage, read_write> a: array<f32>;     // [B, N, N]
@group(0) @binding(3) var<storage, read_write> shrink_out: array<f32>; // [B]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // [B, N, N]
var<immediate> p: Params;

// Largest N the inversion's workgroup rows hold (8 KiB of workgroup memory).
const MAX_N: u32 = 1024u;

var<workgroup> sums: array<vec4<f32>, 256>;
var<workgroup> pivot_row: array<f32, MAX_N>;
var<workgroup> pivot_col: array<f32, MAX_N>;

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * size + lid;
}

@compute @workgroup_size(64)
fn center(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear(wid, nwg, lid, 64u);
    if (r >= p.b * p.n) { return; }
    let base = r * p.t;
    var s = 0.0;
    for (var k = 0u; k < p.t; k = k + 1u) {
        s = s + x[base + k];
    }
    let mean = s / f32(p.t);
    for (var k = 0u; k < p.t; k = k + 1u) {
        xc[base + k] = x[base + k] - mean;
    }
}

// sklearn's ledoit_wolf_shrinkage with n = T samples and p = N features:
//   μ = tr(S)/p, δ_ = ‖S‖²_F, β_ = Σ_t (Σ_i xc_it²)²,
//   β = (β_/n − δ_)/(p·n), δ = (δ_ − 2μ·tr(S) + p·μ²)/p,
//   s = min(β, δ)/δ (0 when that is 0; 0 for p = 1).
@compute @workgroup_size(256)
fn shrink(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x + wid.y * nwg.x;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if (b >= p.b) { return; }
    let nn = p.n * p.n;
    let abase = b * nn;
    var tr = 0.0;
    var fro = 0.0;
    for (var idx = lid; idx < nn; idx = idx + 256u) {
        let v = a[abase + idx];
        fro = fro + v * v;
        if (idx % (p.n + 1u) == 0u) { tr = tr + v; }
    }
    var beta_ = 0.0;
    for (var k = lid; k < p.t; k = k + 256u) {
        var q = 0.0;
        for (var i = 0u; i < p.n; i = i + 1u) {
            let v = xc[(b * p.n + i) * p.t + k];
            q = q + v * v;
        }
        beta_ = beta_ + q * q;
    }
    sums[lid] = vec4<f32>(tr, fro, beta_, 0.0);
    // All partial sums are in workgroup memory (and every read of `a` above
    // is done) before the reduction reads them.
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            sums[lid] = sums[lid] + sums[lid + stride];
        }
        // One level's sums land before the next level reads them.
        workgroupBarrier();
    }
    let total = sums[0];
    let pf = f32(p.n);
    let nf = f32(p.t);
    let mu = total.x / pf;
    let beta = (total.z / nf - total.y) / (pf * nf);
    let delta = (total.y - 2.0 * mu * total.x + pf * mu * mu) / pf;
    // β ≥ 0 in exact arithmetic (Cauchy–Schwarz); clamp its f32 rounding.
    var s = 0.0;
    if (p.n > 1u && delta > 0.0) {
        s = clamp(min(beta, delta) / delta, 0.0, 1.0);
    }
    if (lid == 0u) {
        shrink_out[b] = s;
    }
    // Each element is rewritten by the invocation that read it above, after
    // the barriers, so no invocation sees a half-shrunk matrix.
    for (var idx = lid; idx < nn; idx = idx + 256u) {
        var v = (1.0 - s) * a[abase + idx];
        if (idx % (p.n + 1u) == 0u) { v = v + s * mu; }
        a[abase + idx] = v;
    }
}

// In-place Gauss–Jordan: for each pivot k,
//   row k  ← row k / a_kk, with a_kk ← 1/a_kk,
//   row i  ← row i − a_ik·(new row k) for i ≠ k, with a_ik ← −a_ik/a_kk.
// Invocation lid owns elements lid, lid + 256, ... for the whole inversion;
// the pivot row and column are copied to workgroup memory first, so an
// invocation never reads an element another one is rewriting in this step.
@compute @workgroup_size(256)
fn invert(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x + wid.y * nwg.x;
    if (b >= p.b) { return; }
    let n = p.n;
    let nn = n * n;
    let abase = b * nn;
    for (var k = 0u; k < n; k = k + 1u) {
        for (var idx = lid; idx < n; idx = idx + 256u) {
            pivot_row[idx] = a[abase + k * n + idx];
            pivot_col[idx] = a[abase + idx * n + k];
        }
        // The pivot row and column are copied before anyone overwrites them.
        workgroupBarrier();
        let inv_p = 1.0 / pivot_row[k];
        for (var idx = lid; idx < nn; idx = idx + 256u) {
            let i = idx / n;
            let j = idx % n;
            // New row k: a_kj / a_kk, and 1/a_kk at j = k.
            let rk = select(pivot_row[j], 1.0, j == k) * inv_p;
            if (i == k) {
                a[abase + idx] = rk;
            } else {
                let old = select(a[abase + idx], 0.0, j == k);
                a[abase + idx] = old - pivot_col[i] * rk;
            }
        }
        // This step's writes to `a` are visible to the whole workgroup before
        // the next step copies its pivot row and column out of it, and every
        // read of this step's pivot row/column in workgroup memory is done
        // before the next step overwrites them.
        storageBarrier();
        workgroupBarrier();
    }
}

// The low-rank path's shrinkage from G = xcᵀ·xc [T, T] (in `a`, with n = N
// and t = T as everywhere else), then G ← (1 − s)·G + s·μ·T·I in place.
@compute @workgroup_size(256)
fn shrink_gram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x + wid.y * nwg.x;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if (b >= p.b) { return; }
    let tt = p.t * p.t;
    let gbase = b * tt;
    var tr = 0.0;
    var fro = 0.0;
    var beta_ = 0.0;
    for (var idx = lid; idx < tt; idx = idx + 256u) {
        let v = a[gbase + idx];
        fro = fro + v * v;
        if (idx % (p.t + 1u) == 0u) {
            tr = tr + v;
            beta_ = beta_ + v * v;
        }
    }
    sums[lid] = vec4<f32>(tr, fro, beta_, 0.0);
    // All partial sums are in workgroup memory (and every read of `a` above
    // is done) before the reduction reads them.
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            sums[lid] = sums[lid] + sums[lid + stride];
        }
        // One level's sums land before the next level reads them.
        workgroupBarrier();
    }
    let total = sums[0];
    let pf = f32(p.n);
    let nf = f32(p.t);
    let tr_s = total.x / nf;
    let fro_s = total.y / (nf * nf);
    let mu = tr_s / pf;
    let beta = (total.z / nf - fro_s) / (pf * nf);
    let delta = (fro_s - 2.0 * mu * tr_s + pf * mu * mu) / pf;
    var s = 0.0;
    if (p.n > 1u && delta > 0.0) {
        s = clamp(min(beta, delta) / delta, 0.0, 1.0);
    }
    if (lid == 0u) {
        shrink_out[b] = s;
    }
    // Each element is rewritten by the invocation that read it above.
    for (var idx = lid; idx < tt; idx = idx + 256u) {
        var v = (1.0 - s) * a[gbase + idx];
        if (idx % (p.t + 1u) == 0u) { v = v + s * mu * nf; }
        a[gbase + idx] = v;
    }
}

// The low-rank path's output from k = xc·M⁻¹·xcᵀ [B, N, N] (in `a`) and s.
@compute @workgroup_size(256)
fn partial_low_rank(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid, 256u);
    let nn = p.n * p.n;
    if (idx >= p.b * nn) { return; }
    let b = idx / nn;
    let i = (idx % nn) / p.n;
    let j = idx % p.n;
    if (i == j) {
        out[idx] = 1.0;
        return;
    }
    let base = b * nn;
    let keep = 1.0 - shrink_out[b];
    let d = sqrt((1.0 - keep * a[base + i * p.n + i]) * (1.0 - keep * a[base + j * p.n + j]));
    out[idx] = keep * a[idx] / d;
}

@compute @workgroup_size(256)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = linear(wid, nwg, lid, 256u);
    let nn = p.n * p.n;
    if (idx >= p.b * nn) { return; }
    let b = idx / nn;
    let i = (idx % nn) / p.n;
    let j = idx % p.n;
    if (i == j) {
        out[idx] = 1.0;
        return;
    }
    let base = b * nn;
    let d = sqrt(a[base + i * p.n + i] * a[base + j * p.n + j]);
    out[idx] = -a[idx] / d;
}
