// Single-layer LSTM recurrence (PyTorch gate order i, f, g, o), zero initial
// state, and its backward through time.
//
// The input projection xp = x·W_ihᵀ [B, T, 4H] is one big matmul done before
// the forward kernel (ops::matmul); the bias b = b_ih + b_hh [4H] is added
// here. Per step and batch item b, hidden unit j:
//   a_q  = xp[b,t,qH+j] + bias[qH+j] + Σ_k W_hh[qH+j, k] h[b,t-1,k]   (q = i,f,g,o)
//   i,f,o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
//   c[b,t,j] = f c[b,t-1,j] + i g;   h[b,t,j] = o tanh(c[b,t,j])
// The activated gates and cell states are saved for the backward.
//
// Two schedules with the same cell code:
//  * `forward_seq` / `backward_seq`: one workgroup per batch item loops over
//    all time steps inside the shader. Hidden unit j belongs to invocation
//    j mod 64, so the only cross-invocation data is h (forward) or the gate
//    gradients (backward) of the previous step, read from the storage buffer
//    they were written to, after a storageBarrier. No workgroup array, so no
//    cap on H.
//  * `forward_step` / `backward_step`: one dispatch per time step, one
//    invocation per (b, j); the launcher records T dispatches.
// ops/lstm.rs says which is faster on lavapipe and uses it by default.

struct Params {
    batch: u32,
    steps: u32,  // T
    hidden: u32, // H
    t: u32,      // the step of a per-step dispatch (unused by the _seq entries)
}

// Forward bindings.
@group(0) @binding(0) var<storage, read> xp: array<f32>;          // [B, T, 4H]
@group(0) @binding(1) var<storage, read> w_hh: array<f32>;        // [4H, H]
@group(0) @binding(2) var<storage, read> bias: array<f32>;        // [4H] = b_ih + b_hh
@group(0) @binding(3) var<storage, read_write> h_out: array<f32>; // [B, T, H]
@group(0) @binding(4) var<storage, read_write> c_out: array<f32>; // [B, T, H]
@group(0) @binding(5) var<storage, read_write> gates_out: array<f32>; // [B, T, 4H]

// Backward bindings (binding 1 is W_hh again).
@group(0) @binding(0) var<storage, read> gates: array<f32>;         // [B, T, 4H]
@group(0) @binding(2) var<storage, read> c_in: array<f32>;          // [B, T, H]
@group(0) @binding(3) var<storage, read> h_in: array<f32>;          // [B, T, H]
@group(0) @binding(4) var<storage, read> dh: array<f32>;            // [B, T, H] upstream
@group(0) @binding(5) var<storage, read_write> dgates: array<f32>;  // [B, T, 4H] pre-activation
@group(0) @binding(6) var<storage, read_write> h_prev: array<f32>;  // [B, T, H] h shifted by one step
@group(0) @binding(7) var<storage, read_write> dc_carry: array<f32>; // [B, H] scratch

var<immediate> p: Params;

const WG: u32 = 64u;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -30.0, 30.0)));
}

fn tanh_safe(x: f32) -> f32 {
    // tanh() of large |x| can be NaN on some drivers (exp overflow).
    return tanh(clamp(x, -15.0, 15.0));
}

// One cell update of hidden unit j of batch item b at step t.
fn cell_forward(b: u32, t: u32, j: u32) {
    let hh = p.hidden;
    let g4 = 4u * hh;
    let row = (b * p.steps + t) * g4;
    var a = vec4<f32>(
        xp[row + j] + bias[j],
        xp[row + hh + j] + bias[hh + j],
        xp[row + 2u * hh + j] + bias[2u * hh + j],
        xp[row + 3u * hh + j] + bias[3u * hh + j],
    );
    var c_prev = 0.0;
    if (t > 0u) {
        let hbase = (b * p.steps + t - 1u) * hh;
        c_prev = c_out[hbase + j];
        let w0 = j * hh;
        let w1 = (hh + j) * hh;
        let w2 = (2u * hh + j) * hh;
        let w3 = (3u * hh + j) * hh;
        var acc = vec4<f32>(0.0);
        for (var k = 0u; k < hh; k = k + 1u) {
            let hk = h_out[hbase + k];
            acc = acc + hk * vec4<f32>(w_hh[w0 + k], w_hh[w1 + k], w_hh[w2 + k], w_hh[w3 + k]);
        }
        a = a + acc;
    }
    let ig = sigmoid(a.x);
    let fg = sigmoid(a.y);
    let gg = tanh_safe(a.z);
    let og = sigmoid(a.w);
    let c = fg * c_prev + ig * gg;
    let hbase_t = (b * p.steps + t) * hh;
    c_out[hbase_t + j] = c;
    h_out[hbase_t + j] = og * tanh_safe(c);
    gates_out[row + j] = ig;
    gates_out[row + hh + j] = fg;
    gates_out[row + 2u * hh + j] = gg;
    gates_out[row + 3u * hh + j] = og;
}

// Grid: x = B (one workgroup per batch item).
@compute @workgroup_size(WG)
fn forward_seq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    for (var t = 0u; t < p.steps; t = t + 1u) {
        for (var j = lid; j < p.hidden; j = j + WG) {
            cell_forward(b, t, j);
        }
        // h[b, t, :] written above is read by every invocation at t + 1.
        storageBarrier();
    }
}

// Linear grid over B·H invocations; step p.t.
@compute @workgroup_size(WG)
fn forward_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if (idx >= p.batch * p.hidden) { return; }
    cell_forward(idx / p.hidden, p.t, idx % p.hidden);
}

// Backward of one cell: hidden unit j, batch item b, step t. Reads the gate
// gradients of step t + 1 (all 4H of them: the recurrent term of dh), keeps
// the cell-state gradient of unit j in dc_carry, writes the pre-activation
// gate gradients of step t and h[b, t-1, j] (zero at t = 0) for dW_hh.
fn cell_backward(b: u32, t: u32, j: u32) {
    let hh = p.hidden;
    let g4 = 4u * hh;
    let hbase = (b * p.steps + t) * hh;
    let row = (b * p.steps + t) * g4;
    var dht = dh[hbase + j];
    var dc = 0.0;
    if (t + 1u < p.steps) {
        // dh += W_hhᵀ · dgates[b, t+1, :] (column j of W_hh) and the carried
        // dc_{t+1} ⊙ f_{t+1}.
        let nrow = row + g4;
        var acc = 0.0;
        for (var r = 0u; r < g4; r = r + 1u) {
            acc = acc + w_hh[r * hh + j] * dgates[nrow + r];
        }
        dht = dht + acc;
        dc = dc_carry[b * hh + j] * gates[nrow + hh + j];
    }
    let ig = gates[row + j];
    let fg = gates[row + hh + j];
    let gg = gates[row + 2u * hh + j];
    let og = gates[row + 3u * hh + j];
    let tc = tanh_safe(c_in[hbase + j]);
    dc = dc + dht * og * (1.0 - tc * tc);
    var c_prev = 0.0;
    var hp = 0.0;
    if (t > 0u) {
        c_prev = c_in[hbase - hh + j];
        hp = h_in[hbase - hh + j];
    }
    dgates[row + j] = dc * gg * ig * (1.0 - ig);
    dgates[row + hh + j] = dc * c_prev * fg * (1.0 - fg);
    dgates[row + 2u * hh + j] = dc * ig * (1.0 - gg * gg);
    dgates[row + 3u * hh + j] = dht * tc * og * (1.0 - og);
    h_prev[hbase + j] = hp;
    dc_carry[b * hh + j] = dc;
}

// Grid: x = B. Reverse loop over time.
@compute @workgroup_size(WG)
fn backward_seq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    for (var s = 0u; s < p.steps; s = s + 1u) {
        let t = p.steps - 1u - s;
        for (var j = lid; j < p.hidden; j = j + WG) {
            cell_backward(b, t, j);
        }
        // dgates[b, t, :] written above is read by every invocation at t - 1.
        storageBarrier();
    }
}

// Linear grid over B·H invocations; step p.t (dispatched for t = T-1 .. 0).
@compute @workgroup_size(WG)
fn backward_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if (idx >= p.batch * p.hidden) { return; }
    cell_backward(idx / p.hidden, p.t, idx % p.hidden);
}
