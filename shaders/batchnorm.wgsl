// Batch standardization in training mode over the batch dimension of x [B, C]
// (B = rows, C = columns): per column, mean and biased variance over the rows,
//   x̂ = (x - mean) / sqrt(var + eps),  y = gamma * x̂ + beta.
// The `*_plain` entry points are the same without the affine (gamma = 1,
// beta = 0): the FGCO loss's standardization. They are separate entry points,
// not a flag, so they never bind gamma/beta buffers they do not use.
//
// One invocation per column, looping over the rows: B is small (a batch of
// 64) while C is wide (256), and consecutive invocations read consecutive
// addresses of each row. Two passes (mean, then squared deviations) rather
// than E[x²] - E[x]², which cancels catastrophically in f32.
//
// stats [2, C]: row 0 the mean, row 1 the inverse standard deviation, saved
// by the forward for the backward.
//
// Running statistics (the head's BatchNorm, `model.head_norm = "batch"`):
// `update_running` folds a training batch into running_mean / running_var
// [C] with PyTorch's convention (momentum m: r = (1 - m)·r + m·batch, the
// variance unbiased, ÷ (B − 1)); `forward_running` standardizes with them
// (evaluation mode: every scan sees the same statistics, whatever its batch).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    eps: f32,
    // `update_running` only: the weight of the new batch.
    momentum: f32,
    _pad2: u32,
    _pad3: u32,
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
@group(0) @binding(9) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_var: array<f32>;
var<immediate> p: Params;

fn column(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// Computes and saves the column's mean and inverse standard deviation.
fn column_stats(c: u32) -> vec2<f32> {
    var s = 0.0;
    for (var b = 0u; b < p.rows; b = b + 1u) {
        s = s + x[b * p.cols + c];
    }
    let mean = s / f32(p.rows);
    var v = 0.0;
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let d = x[b * p.cols + c] - mean;
        v = v + d * d;
    }
    // 1/sqrt rather than inverseSqrt: the latter is a low-precision
    // approximation on some drivers.
    let inv = 1.0 / sqrt(v / f32(p.rows) + p.eps);
    stats[c] = mean;
    stats[p.cols + c] = inv;
    return vec2<f32>(mean, inv);
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    let st = column_stats(c);
    let g = gamma[c];
    let bt = beta[c];
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let i = b * p.cols + c;
        y[i] = g * (x[i] - st.x) * st.y + bt;
    }
}

@compute @workgroup_size(64)
fn forward_plain(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    let st = column_stats(c);
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let i = b * p.cols + c;
        y[i] = (x[i] - st.x) * st.y;
    }
}

// Σ dy and Σ dy·x̂ over the column, from the saved statistics.
fn column_sums(c: u32) -> vec2<f32> {
    let mean = stats[c];
    let inv = stats[p.cols + c];
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let i = b * p.cols + c;
        sdy = sdy + dy[i];
        sdyx = sdyx + dy[i] * (x[i] - mean) * inv;
    }
    return vec2<f32>(sdy, sdyx);
}

// dx = g·inv/B · (B·dy − Σdy − x̂·Σ(dy·x̂)), with g = gamma (1 when plain).
fn write_dx(c: u32, g: f32, sums: vec2<f32>) {
    let mean = stats[c];
    let inv = stats[p.cols + c];
    let nb = f32(p.rows);
    let k = g * inv / nb;
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let i = b * p.cols + c;
        let xh = (x[i] - mean) * inv;
        dx[i] = k * (nb * dy[i] - sums.x - xh * sums.y);
    }
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    let sums = column_sums(c);
    dbeta[c] = sums.x;
    dgamma[c] = sums.y;
    write_dx(c, gamma[c], sums);
}

@compute @workgroup_size(64)
fn backward_plain(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    write_dx(c, 1.0, column_sums(c));
}

// Two passes over the column as in column_stats. With one row there is no
// variance estimate (÷ (B − 1) = ÷ 0; PyTorch refuses such a batch): the
// running variance is kept and only the mean moves.
@compute @workgroup_size(64)
fn update_running(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var b = 0u; b < p.rows; b = b + 1u) {
        s = s + x[b * p.cols + c];
    }
    let mean = s / f32(p.rows);
    running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean;
    if (p.rows > 1u) {
        var v = 0.0;
        for (var b = 0u; b < p.rows; b = b + 1u) {
            let d = x[b * p.cols + c] - mean;
            v = v + d * d;
        }
        let unbiased = v / f32(p.rows - 1u);
        running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * unbiased;
    }
}

@compute @workgroup_size(64)
fn forward_running(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = column(wid, nwg, lid);
    if (c >= p.cols) { return; }
    let mean = running_mean[c];
    let inv = 1.0 / sqrt(running_var[c] + p.eps);
    for (var b = 0u; b < p.rows; b = b + 1u) {
        let i = b * p.cols + c;
        y[i] = (x[i] - mean) * inv;
    }
}
