// STIGA masking probabilities (docs/design.md §3, SCA and TCA). No gradient.
//   sca_score: s_i = log(d_i + ε), d_i = Σ_{j≠i} |r_ij| over regions j that are
//              not all zero in the crop (r [B, N, N] |Pearson|, zero [B, N]).
//   tca_score: s_t = log(r_t + ε), r_t = ‖x[:,t] − x[:,t−1]‖₂, r_0 = r_1
//              (x [B, N, T]; r_0 = 0 when T = 1).
//   map_scores: over the eligible items of each scan (regions not all zero /
//              valid frames): w_i = (s_i − s_min)/(s_mean − s_min + ε),
//              p_i = min(p_s · w_i / mean(w), p_max); ineligible items, and all
//              items when there is no eligible one or mean(w) = 0, get p = 0.
//   uniform_mean: the random-augmentation ablation: every eligible item gets the
//              mean of p over the eligible items, the others 0.
// Scores: one invocation per item; map and uniform: one invocation per scan
// (a serial pass over at most a few hundred items). 64 per workgroup, linear
// index folded over a 2-D grid.

struct Params {
    batch: u32,
    items: u32,   // M: N for SCA, T for TCA
    nodes: u32,   // N
    frames: u32,  // T
    invert: u32,  // 1: mask marks excluded items (SCA's zero flags); 0: eligible (valid)
    total: u32,
    p_scale: f32,
    p_max: f32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> score: array<f32>;
@group(0) @binding(3) var<storage, read_write> prob: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

fn eligible(i: u32) -> bool {
    if (p.invert != 0u) {
        return mask[i] < 0.5;
    }
    return mask[i] > 0.5;
}

@compute @workgroup_size(64)
fn sca_score(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = invocation(wid, nwg, lid);
    if (row >= p.total) { return; }
    let i = row % p.nodes;
    let b = row / p.nodes;
    var d = 0.0;
    for (var j = 0u; j < p.nodes; j = j + 1u) {
        // A zero region's correlations are undefined (0 or NaN by convention): skip them.
        if (j != i && mask[b * p.nodes + j] < 0.5) {
            d = d + abs(data[row * p.nodes + j]);
        }
    }
    score[row] = log(d + p.eps);
}

@compute @workgroup_size(64)
fn tca_score(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bt = invocation(wid, nwg, lid);
    if (bt >= p.total) { return; }
    var t = bt % p.frames;
    let b = bt / p.frames;
    if (t == 0u) { t = 1u; } // r_0 = r_1
    var r2 = 0.0;
    if (t < p.frames) {
        for (var n = 0u; n < p.nodes; n = n + 1u) {
            let base = (b * p.nodes + n) * p.frames;
            let diff = data[base + t] - data[base + t - 1u];
            r2 = r2 + diff * diff;
        }
    }
    score[bt] = log(sqrt(r2) + p.eps);
}

@compute @workgroup_size(64)
fn map_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = invocation(wid, nwg, lid);
    if (b >= p.total) { return; }
    let first = b * p.items;
    let last = first + p.items;
    var count = 0.0;
    var lo = 3.0e38;
    var sum = 0.0;
    for (var i = first; i < last; i = i + 1u) {
        if (eligible(i)) {
            count = count + 1.0;
            lo = min(lo, score[i]);
            sum = sum + score[i];
        }
    }
    var wsum = 0.0;
    var denom = 1.0;
    if (count > 0.0) {
        denom = sum / count - lo + p.eps;
        for (var i = first; i < last; i = i + 1u) {
            if (eligible(i)) { wsum = wsum + (score[i] - lo) / denom; }
        }
    }
    let wmean = select(0.0, wsum / max(count, 1.0), count > 0.0);
    for (var i = first; i < last; i = i + 1u) {
        var q = 0.0;
        if (eligible(i) && wmean > 0.0) {
            q = min(p.p_scale * ((score[i] - lo) / denom) / wmean, p.p_max);
        }
        prob[i] = q;
    }
}

@compute @workgroup_size(64)
fn uniform_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = invocation(wid, nwg, lid);
    if (b >= p.total) { return; }
    let first = b * p.items;
    let last = first + p.items;
    var count = 0.0;
    var sum = 0.0;
    for (var i = first; i < last; i = i + 1u) {
        if (eligible(i)) {
            count = count + 1.0;
            sum = sum + prob[i];
        }
    }
    let mean = sum / max(count, 1.0);
    for (var i = first; i < last; i = i + 1u) {
        out[i] = select(0.0, mean, eligible(i));
    }
}
