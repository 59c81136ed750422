// Counter-based random numbers: Threefry-2x32 with 20 rounds (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the generator JAX
// uses). Element i of a draw is a pure function of (seed, stream, step, i):
//   (x0, _) = threefry2x32(counter = (i, step), key = (seed, stream))
// so a run is reproducible from its seed, resumable from a step count, and
// bit-identical to the Rust implementation in src/ops/random.rs (only u32
// add/xor/rotate here; the float conversion is exact).
//
// u32 → f32 in [0, 1): the top 24 bits times 2^-24 (exact in f32).
//
// One invocation per element, 256 per workgroup, linear index folded over a
// 2-D grid; `base` is the global index of this launch's first element when
// the launcher splits a tensor larger than one storage binding.

struct Params {
    n: u32,       // elements in this launch
    base: u32,    // global index of element 0 of this launch
    seed: u32,
    stream: u32,
    step: u32,
    cols: u32,    // bernoulli: length of the last dimension
    prob_layout: u32,  // bernoulli: 0 prob per element, 1 per row, 2 per column
    first: u32,   // counter of element 0 of the whole draw: a rank's shard of a
                  // batch draws the numbers the whole batch's rows would get

}

@group(0) @binding(0) var<storage, read> src: array<f32>; // prob, or crop max offsets
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

fn rotl(x: u32, r: u32) -> u32 {
    return (x << r) | (x >> (32u - r));
}

// Four Threefry rounds with rotation constants r.
fn rounds(x: vec2<u32>, r: vec4<u32>) -> vec2<u32> {
    var a = x.x;
    var b = x.y;
    a = a + b; b = rotl(b, r.x); b = b ^ a;
    a = a + b; b = rotl(b, r.y); b = b ^ a;
    a = a + b; b = rotl(b, r.z); b = b ^ a;
    a = a + b; b = rotl(b, r.w); b = b ^ a;
    return vec2<u32>(a, b);
}

fn threefry2x32(ctr: vec2<u32>, key: vec2<u32>) -> vec2<u32> {
    let ks = array<u32, 3>(key.x, key.y, 0x1BD11BDAu ^ key.x ^ key.y);
    let ra = vec4<u32>(13u, 15u, 26u, 6u);
    let rb = vec4<u32>(17u, 29u, 16u, 24u);
    var x = ctr + key;
    // Five groups of four rounds, a key injection after each.
    x = rounds(x, ra); x = x + vec2<u32>(ks[1], ks[2] + 1u);
    x = rounds(x, rb); x = x + vec2<u32>(ks[2], ks[0] + 2u);
    x = rounds(x, ra); x = x + vec2<u32>(ks[0], ks[1] + 3u);
    x = rounds(x, rb); x = x + vec2<u32>(ks[1], ks[2] + 4u);
    x = rounds(x, ra); x = x + vec2<u32>(ks[2], ks[0] + 5u);
    return x;
}

fn uniform_at(i: u32) -> f32 {
    let bits = threefry2x32(vec2<u32>(i, p.step), vec2<u32>(p.seed, p.stream)).x;
    return f32(bits >> 8u) * 5.9604644775390625e-8; // 2^-24
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn uniform(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = uniform_at(p.first + p.base + i);
}

// out = 1 (keep) if u ≥ prob, else 0 (masked): masked with probability prob.
// Per element, prob is bound at the same range as out; per row or column it
// is bound whole and indexed by the global element index.
@compute @workgroup_size(256)
fn bernoulli(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let gi = p.base + i;
    var prob: f32;
    switch p.prob_layout {
        case 1u: { prob = src[gi / p.cols]; }
        case 2u: { prob = src[gi % p.cols]; }
        default: { prob = src[i]; }
    }
    out[i] = select(0.0, 1.0, uniform_at(p.first + gi) >= prob);
}

// offset[b] = min(floor(u_b · (max[b] + 1)), max[b]): uniform over 0..=max[b].
// The min guards the rounding of the product at huge max values.
@compute @workgroup_size(256)
fn crop_offsets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let mx = src[i];
    out[i] = min(floor(uniform_at(p.first + p.base + i) * (mx + 1.0)), mx);
}
