// Softmax cross-entropy with integer labels, mean over the batch.
//
// logits [B, C]; labels [B] hold class indices as f32 (the runtime has only
// f32 tensors; integers up to 2^24 are exact). A label outside [0, C) or not
// an integer makes that row's loss and gradient NaN, so a bad label shows up
// instead of silently training on the wrong class.
//
// forward: a single workgroup of 64 invocations; each sums the losses of rows
// r ≡ lid (mod 64), then a tree in workgroup memory adds the 64 partials and
// invocation 0 writes loss = Σ / B. One dispatch, no host readback.
// backward: one invocation per row; dlogits = up[0] · (softmax − onehot) / B,
// where up is the upstream gradient of the loss, read on the GPU so the op
// composes inside a recorded step.

struct Params {
    batch: u32,
    classes: u32,
    // f32::NAN from the host. A NaN constant in WGSL is a compile error, and
    // drivers need not propagate NaN through arithmetic, so invalid labels
    // store this value directly.
    nan: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, 64>;
var<workgroup> invalid: atomic<u32>;

// The label of row r as an index, or C (invalid) if it is not an integer in [0, C).
fn label_of(r: u32) -> u32 {
    let l = labels[r];
    if (l >= 0.0 && l < f32(p.classes) && floor(l) == l) {
        return u32(l);
    }
    return p.classes;
}

// (row max, log Σ exp(z − max)) of row r.
fn row_stats(r: u32) -> vec2<f32> {
    let base = r * p.classes;
    var m = logits[base];
    for (var c = 1u; c < p.classes; c = c + 1u) {
        m = max(m, logits[base + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < p.classes; c = c + 1u) {
        s = s + exp(logits[base + c] - m);
    }
    return vec2<f32>(m, log(s));
}

@compute @workgroup_size(64)
fn forward(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        atomicStore(&invalid, 0u);
    }
    // The flag is cleared before any invocation may set it.
    workgroupBarrier();
    var acc = 0.0;
    for (var r = lid; r < p.batch; r = r + 64u) {
        let st = row_stats(r);
        let y = label_of(r);
        if (y >= p.classes) {
            atomicStore(&invalid, 1u);
        } else {
            // −log softmax(z)_y = log Σ exp(z − m) − (z_y − m)
            acc = acc + st.y - (logits[r * p.classes + y] - st.x);
        }
    }
    partial[lid] = acc;
    // Every partial must be written before the tree reads them.
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        // The next level reads what this level wrote.
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[0] = select(partial[0] / f32(p.batch), p.nan, atomicLoad(&invalid) != 0u);
    }
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= p.batch) { return; }
    let st = row_stats(r);
    let y = label_of(r);
    let k = up[0] / f32(p.batch);
    let base = r * p.classes;
    for (var c = 0u; c < p.classes; c = c + 1u) {
        var d = exp(logits[base + c] - st.x - st.y);
        if (c == y) { d = d - 1.0; }
        out[base + c] = select(k * d, p.nan, y >= p.classes);
    }
}
