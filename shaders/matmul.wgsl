// Batched matrix multiply with optional transposes:
//   C[b] = alpha * op(A[b]) · op(B[b])  (+ C[b] when ACCUMULATE)
// op(A) is M x K, op(B) is K x N, C is M x N, all row-major.
// A batch stride of 0 broadcasts one matrix over the batch (a shared weight).
//
// Register tiling: each invocation computes a 4x4 block of C in registers, an
// 8x8 workgroup a 32x32 tile. No workgroup memory and no barriers: on lavapipe
// (a CPU) that is faster than shared-memory tiling (docs/design.md §6).
// Grid: x = ceil(N/32), y = ceil(M/32), z = batch.
//
// The backward of C = A·B is dA = dC·Bᵀ and dB = Aᵀ·dC: the same kernel with
// the transpose flags set, so this file has a single entry point per layout.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,      // bit 0: A transposed, bit 1: B transposed, bit 2: accumulate into C
    a_stride: u32,   // elements between consecutive batch matrices (0 = broadcast)
    b_stride: u32,
    c_stride: u32,
    alpha: f32,
    // Element offsets of this launch's data inside the bound ranges: bindings
    // must start at 256-byte-aligned offsets, so a launcher that splits work
    // binds from the aligned offset below and passes the remainder here.
    a_off: u32,
    b_off: u32,
    c_off: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<immediate> p: Params;

// The tile shape, read by the launcher through naga reflection to size the
// grid: a WG x WG workgroup, each invocation a block of rows x columns of C.
// (The accumulator arrays below are written out for these block sizes.)
const WG: u32 = 8u;
const ROWS_PER_INVOCATION: u32 = 4u;
const VEC4_ROWS_PER_INVOCATION: u32 = 8u;
const COLS_PER_INVOCATION: u32 = 4u;

// A's element (row i, col kk) of op(A), with i clamped so edge tiles read
// valid memory (their results are discarded at the store).
fn a_at(base: u32, i: u32, kk: u32) -> f32 {
    let r = min(i, p.m - 1u);
    if ((p.flags & 1u) != 0u) {
        return a[base + kk * p.m + r];
    }
    return a[base + r * p.k + kk];
}

fn b_at(base: u32, kk: u32, j: u32) -> f32 {
    let col = min(j, p.n - 1u);
    if ((p.flags & 2u) != 0u) {
        return b[base + col * p.k + kk];
    }
    return b[base + kk * p.n + col];
}

@compute @workgroup_size(WG, WG, 1)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WG + lid.y) * ROWS_PER_INVOCATION;
    let col0 = (wid.x * WG + lid.x) * COLS_PER_INVOCATION;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let a_base = p.a_off + wid.z * p.a_stride;
    let b_base = p.b_off + wid.z * p.b_stride;
    let c_base = p.c_off + wid.z * p.c_stride;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let bv = vec4<f32>(b_at(b_base, kk, col0), b_at(b_base, kk, col0 + 1u),
                           b_at(b_base, kk, col0 + 2u), b_at(b_base, kk, col0 + 3u));
        acc0 = acc0 + a_at(a_base, row0, kk) * bv;
        acc1 = acc1 + a_at(a_base, row0 + 1u, kk) * bv;
        acc2 = acc2 + a_at(a_base, row0 + 2u, kk) * bv;
        acc3 = acc3 + a_at(a_base, row0 + 3u, kk) * bv;
    }
    let accumulate = (p.flags & 4u) != 0u;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let i = row0 + r;
        if (i >= p.m) { break; }
        for (var q = 0u; q < 4u; q = q + 1u) {
            let j = col0 + q;
            if (j >= p.n) { break; }
            let idx = c_base + i * p.n + j;
            var v = p.alpha * rows[r][q];
            if (accumulate) { v = v + c[idx]; }
            c[idx] = v;
        }
    }
}

// Fast path for the common layout: neither operand transposed, K and N
// multiples of 4, every offset a multiple of 4. Each invocation computes an
// 8x4 block (an 8x8 workgroup a 64x32 tile), reading A and B as vec4: 12
// vector loads per 128 multiply-adds instead of 8 scalar loads per 16.
// Measured on lavapipe against the 4x4 vec4 tile in one sitting: 8x4 was
// 1.26x faster, 16x4 2x slower (register spills). (The same buffers, viewed as vec4 arrays; no
// entry point uses both views, so the shared binding numbers never clash.)
@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;

@compute @workgroup_size(WG, WG, 1)
fn matmul_nn_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WG + lid.y) * VEC4_ROWS_PER_INVOCATION;
    let col0 = (wid.x * WG + lid.x) * COLS_PER_INVOCATION;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    let n4 = p.n / 4u;
    let a_base = (p.a_off + wid.z * p.a_stride) / 4u;
    let b_base = (p.b_off + wid.z * p.b_stride) / 4u + col0 / 4u;
    let c_base = p.c_off + wid.z * p.c_stride;
    var r: array<u32, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) {
        r[q] = a_base + min(row0 + q, p.m - 1u) * k4;
    }
    var acc: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let bk = b_base + kq * 4u * n4;
        let b0 = b4[bk];
        let b1 = b4[bk + n4];
        let b2 = b4[bk + 2u * n4];
        let b3 = b4[bk + 3u * n4];
        for (var q = 0u; q < 8u; q = q + 1u) {
            let av = a4[r[q] + kq];
            acc[q] = acc[q] + av.x * b0 + av.y * b1 + av.z * b2 + av.w * b3;
        }
    }
    let accumulate = (p.flags & 4u) != 0u;
    for (var q = 0u; q < 8u; q = q + 1u) {
        let i = row0 + q;
        if (i >= p.m) { break; }
        let idx = c_base + i * p.n + col0;
        var v = p.alpha * acc[q];
        if (accumulate) { v = v + vec4<f32>(c[idx], c[idx + 1u], c[idx + 2u], c[idx + 3u]); }
        c[idx] = v.x;
        c[idx + 1u] = v.y;
        c[idx + 2u] = v.z;
        c[idx + 3u] = v.w;
    }
}

// Fast path for C = A·Bᵀ, B stored [N, K] (every linear layer's input
// gradient dY·Wᵀ, the attention's Q·Kᵀ products): both operands are read
// along K as vec4, so no transpose is materialized and no scalar gather
// runs. Each invocation computes an 8x4 block: per 4 K-steps, 8 A and 4 B
// vector loads for 128 multiply-adds, the NN fast path's ratio. Needs
// K % 4 == 0 and 4-aligned offsets (every offset the launcher passes is a
// multiple of K or of a batch stride); M and N are arbitrary (edge rows and
// columns are clamped on load and skipped on store).
@compute @workgroup_size(WG, WG, 1)
fn matmul_nt_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WG + lid.y) * VEC4_ROWS_PER_INVOCATION;
    let col0 = (wid.x * WG + lid.x) * COLS_PER_INVOCATION;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    let a_base = (p.a_off + wid.z * p.a_stride) / 4u;
    let b_base = (p.b_off + wid.z * p.b_stride) / 4u;
    let c_base = p.c_off + wid.z * p.c_stride;
    var r: array<u32, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) {
        r[q] = a_base + min(row0 + q, p.m - 1u) * k4;
    }
    let j0 = b_base + min(col0, p.n - 1u) * k4;
    let j1 = b_base + min(col0 + 1u, p.n - 1u) * k4;
    let j2 = b_base + min(col0 + 2u, p.n - 1u) * k4;
    let j3 = b_base + min(col0 + 3u, p.n - 1u) * k4;
    var acc: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    for (var kq = 0u; kq < k4; kq = kq + 1u) {
        let b0 = b4[j0 + kq];
        let b1 = b4[j1 + kq];
        let b2 = b4[j2 + kq];
        let b3 = b4[j3 + kq];
        for (var q = 0u; q < 8u; q = q + 1u) {
            let av = a4[r[q] + kq];
            acc[q] = acc[q] + vec4<f32>(dot(av, b0), dot(av, b1), dot(av, b2), dot(av, b3));
        }
    }
    let accumulate = (p.flags & 4u) != 0u;
    for (var q = 0u; q < 8u; q = q + 1u) {
        let i = row0 + q;
        if (i >= p.m) { break; }
        for (var jj = 0u; jj < 4u; jj = jj + 1u) {
            let j = col0 + jj;
            if (j >= p.n) { break; }
            let idx = c_base + i * p.n + j;
            var v = p.alpha * acc[q][jj];
            if (accumulate) { v = v + c[idx]; }
            c[idx] = v;
        }
    }
}

// Fast path for C = Aᵀ·B, A stored [K, M] (weight gradients Xᵀ·dY, the
// calibration's Gram matrices Z_spᵀ·Z_sp): for each k, the invocation's 8
// rows of op(A) are 8 consecutive values of A's row k (two vec4 loads) and
// its 4 columns one vec4 of B's row k, an outer-product update of 32
// multiply-adds per 3 loads. Needs M % 4 == 0, N % 4 == 0 and 4-aligned
// offsets; the second row vector is clamped at the matrix's last one (its
// results are discarded at the store).
@compute @workgroup_size(WG, WG, 1)
fn matmul_tn_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WG + lid.y) * VEC4_ROWS_PER_INVOCATION;
    let col0 = (wid.x * WG + lid.x) * COLS_PER_INVOCATION;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    let a_base = (p.a_off + wid.z * p.a_stride) / 4u + row0 / 4u;
    let b_base = (p.b_off + wid.z * p.b_stride) / 4u + col0 / 4u;
    let c_base = p.c_off + wid.z * p.c_stride;
    let second = min(row0 / 4u + 1u, m4 - 1u) - row0 / 4u;
    var acc: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let bv = b4[b_base + kk * n4];
        let lo = a4[a_base + kk * m4];
        let hi = a4[a_base + kk * m4 + second];
        acc[0] = acc[0] + lo.x * bv;
        acc[1] = acc[1] + lo.y * bv;
        acc[2] = acc[2] + lo.z * bv;
        acc[3] = acc[3] + lo.w * bv;
        acc[4] = acc[4] + hi.x * bv;
        acc[5] = acc[5] + hi.y * bv;
        acc[6] = acc[6] + hi.z * bv;
        acc[7] = acc[7] + hi.w * bv;
    }
    let accumulate = (p.flags & 4u) != 0u;
    for (var q = 0u; q < 8u; q = q + 1u) {
        let i = row0 + q;
        if (i >= p.m) { break; }
        let idx = c_base + i * p.n + col0;
        var v = p.alpha * acc[q];
        if (accumulate) { v = v + vec4<f32>(c[idx], c[idx + 1u], c[idx + 2u], c[idx + 3u]); }
        c[idx] = v.x;
        c[idx + 1u] = v.y;
        c[idx + 2u] = v.z;
        c[idx + 3u] = v.w;
    }
}

// ---------------------------------------------------------------------------
// Workgroup-memory tiling, the variant for GPUs (`Tiling::Workgroup`; the
// register-tiled entry points above are for CPU adapters, docs/design.md §6).
// A 16x16 workgroup computes a 64x64 tile of C, each invocation a 4x4 block.
// K advances in slices of 16: the workgroup stages op(A)[64 rows, 16] and
// op(B)[16, 64 columns] in workgroup memory (8 KiB), so each element read
// from device memory serves 64 multiply-adds instead of 4. One entry point
// serves every layout: the transpose flags only change which way the staging
// loads walk memory (along the stored rows, so neighbouring invocations read
// neighbouring addresses). Any M, N, K: out-of-range elements are staged as 0
// and never stored. Grid: x = ceil(N/64), y = ceil(M/64), z = batch.
const TILED_WG: u32 = 16u;
const TILED_ROWS_PER_INVOCATION: u32 = 4u;
const TILED_COLS_PER_INVOCATION: u32 = 4u;
const TILED_TILE: u32 = 64u;
const TILED_K: u32 = 16u;
// Both staged as [TILED_K][TILED_TILE]: row kk of a_tile holds op(A)[row0.., k0 + kk].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

@compute @workgroup_size(TILED_WG, TILED_WG, 1)
fn matmul_workgroup(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILED_TILE;
    let col0 = wid.x * TILED_TILE;
    let a_base = p.a_off + wid.z * p.a_stride;
    let b_base = p.b_off + wid.z * p.b_stride;
    let c_base = p.c_off + wid.z * p.c_stride;
    let trans_a = (p.flags & 1u) != 0u;
    let trans_b = (p.flags & 2u) != 0u;
    var acc: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q = q + 1u) { acc[q] = vec4<f32>(0.0); }
    // Every invocation runs every slice, in range or not: the barriers below
    // must be reached by the whole workgroup (uniform control flow).
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TILED_K) {
        // 1024 elements of each tile, 4 per invocation.
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = li + e * 256u;
            // A stored [M, K] walks K fastest; stored transposed ([K, M]), M.
            var i = idx / TILED_K;
            var kk = idx % TILED_K;
            if (trans_a) {
                i = idx % TILED_TILE;
                kk = idx / TILED_TILE;
            }
            let r = row0 + i;
            let ka = k0 + kk;
            var av = 0.0;
            if (r < p.m && ka < p.k) {
                if (trans_a) { av = a[a_base + ka * p.m + r]; } else { av = a[a_base + r * p.k + ka]; }
            }
            a_tile[kk * TILED_TILE + i] = av;
            // B stored [K, N] walks N fastest; stored transposed ([N, K]), K.
            var j = idx % TILED_TILE;
            var kb = idx / TILED_TILE;
            if (trans_b) {
                j = idx / TILED_K;
                kb = idx % TILED_K;
            }
            let col = col0 + j;
            let kbk = k0 + kb;
            var bv = 0.0;
            if (col < p.n && kbk < p.k) {
                if (trans_b) { bv = b[b_base + col * p.k + kbk]; } else { bv = b[b_base + kbk * p.n + col]; }
            }
            b_tile[kb * TILED_TILE + j] = bv;
        }
        // The tiles are complete before anyone reads them.
        workgroupBarrier();
        let ti = lid.y * TILED_ROWS_PER_INVOCATION;
        let tj = lid.x * TILED_COLS_PER_INVOCATION;
        for (var kk = 0u; kk < TILED_K; kk = kk + 1u) {
            let ar = kk * TILED_TILE + ti;
            let br = kk * TILED_TILE + tj;
            let bv = vec4<f32>(b_tile[br], b_tile[br + 1u], b_tile[br + 2u], b_tile[br + 3u]);
            acc[0] = acc[0] + a_tile[ar] * bv;
            acc[1] = acc[1] + a_tile[ar + 1u] * bv;
            acc[2] = acc[2] + a_tile[ar + 2u] * bv;
            acc[3] = acc[3] + a_tile[ar + 3u] * bv;
        }
        // Everyone is done reading before the next slice overwrites the tiles.
        workgroupBarrier();
    }
    let accumulate = (p.flags & 4u) != 0u;
    for (var q = 0u; q < 4u; q = q + 1u) {
        let i = row0 + lid.y * TILED_ROWS_PER_INVOCATION + q;
        if (i >= p.m) { break; }
        for (var jj = 0u; jj < 4u; jj = jj + 1u) {
            let j = col0 + lid.x * TILED_COLS_PER_INVOCATION + jj;
            if (j >= p.n) { break; }
            let idx = c_base + i * p.n + j;
            var v = p.alpha * acc[q][jj];
            if (accumulate) { v = v + c[idx]; }
            c[idx] = v;
        }
    }
}
