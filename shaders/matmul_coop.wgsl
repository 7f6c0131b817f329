// Batched GEMM on cooperative matrices (tensor cores): C[z] = op(A[z]) · op(B[z]) (+ bias
// per column, then ReLU), A and B f16, or one of them f32 (a gradient: the backward of a
// linear layer under mixed precision), staged as f16 after coop_tile.wgsl's per-tensor scale
// and the sums scaled back; products accumulated in f32, C f32. The parameter
// block and batch decomposition are matmul.wgsl's (matmul_params.wgsl, in front); the
// module is compiled only on adapters with cooperative matrices (16x16x16, f16 inputs, f32
// accumulators) and shader f16 (src/gpu/shaders.rs puts the `enable` directives in front of
// common.wgsl), on adapters whose subgroups are all 32 wide (the host checks: the quarters
// below are per subgroup of 32).
//
// gemm_coop: coop_tile.wgsl's 64 x 64 tile. Per K-slice of 32 the workgroup stages op(A)'s
// 64 x 32 and op(B)'s 32 x 64 f16 values in workgroup memory, fetched a slice ahead (zero outside the matrices; the
// transposes live in the staging index, so the fragments are always loaded row-major), then
// runs coop_slice. The accumulators go through workgroup memory to a guarded store that adds
// the bias and applies ReLU, so edge tiles need no special case.
//
// Not yet: vector loads, split-K; operand scales (AIM's masks run
// the f32-arithmetic kernels); two f32 operands.

// Each operand is bound as f16 and as f32 (the same buffer; the view of its dtype is read),
// with the bits of the f32 operand's max |value| (binding 7; a placeholder otherwise).
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> a32: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f16>;
@group(0) @binding(4) var<storage, read> b32: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> c: array<f32>;
@group(0) @binding(7) var<storage, read> amax: array<u32>;

override TRANS_A: bool = false; // A is stored [K, M]
override TRANS_B: bool = false; // B is stored [N, K]
override BIAS: bool = false;
override RELU: bool = false;
override F32_A: bool = false; // A is f32, staged scaled (at most one of F32_A, F32_B)
override F32_B: bool = false;

var<private> scale: f32; // the f32 operand's per-tensor scale (1 without one)


// op(A)[m, k] and op(B)[k, n], zero outside the matrices.
fn load_a(off: u32, m: u32, k: u32) -> f16 {
    if (m >= p.m || k >= p.k) {
        return f16(0.0);
    }
    var i = off + m * p.k + k;
    if (TRANS_A) {
        i = off + k * p.m + m;
    }
    if (F32_A) {
        return f16(a32[i] * scale);
    }
    return a[i];
}

fn load_b(off: u32, k: u32, n: u32) -> f16 {
    if (k >= p.k || n >= p.n) {
        return f16(0.0);
    }
    var i = off + k * p.n + n;
    if (TRANS_B) {
        i = off + n * p.k + k;
    }
    if (F32_B) {
        return f16(b32[i] * scale);
    }
    return b[i];
}

// A slice's 2048 values of each operand, 16 per thread, into the registers; consecutive
// threads take consecutive k of A's rows (contiguous when A is [M, K]) and consecutive n of B.
// Value r of a thread is element e = 128 r + lid of the slice's tiles.
fn fetch(offs: vec2<u32>, m0: u32, n0: u32, k0: u32, lid: u32) {
    for (var r = 0u; r < 16u; r = r + 1u) {
        let e = r * 128u + lid;
        ra[r] = load_a(offs.x, m0 + e / KS, k0 + e % KS);
        rb[r] = load_b(offs.y, k0 + e / TN, n0 + e % TN);
    }
}

// The fetched registers into As and Bs.
fn stage(lid: u32) {
    for (var r = 0u; r < 16u; r = r + 1u) {
        let e = r * 128u + lid;
        As[(e / KS) * AS_STRIDE + e % KS] = ra[r];
        Bs[(e / TN) * BS_STRIDE + e % TN] = rb[r];
    }
}

@compute @workgroup_size(128)
fn gemm_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wg.z + p.z0;
    let offs = batch_offsets(z);
    let m0 = (wg.y + p.y0) * TM;
    let n0 = (wg.x + p.x0) * TN;
    let coff = z * p.m * p.n;
    scale = 1.0;
    if (F32_A || F32_B) {
        scale = coop_scale(amax[0]);
    }
    let q = coop_quarter(lid);
    coop_zero();
    let slices = (p.k + KS - 1u) / KS;
    fetch(offs, m0, n0, 0u, lid);
    for (var t = 0u; t < slices; t = t + 1u) {
        stage(lid);
        workgroupBarrier();
        if (t + 1u < slices) {
            fetch(offs, m0, n0, (t + 1u) * KS, lid);
        }
        coop_slice(q);
        workgroupBarrier();
    }
    coop_store(q);
    workgroupBarrier();
    // guarded store of the 64x64 tile: 32 values per thread, consecutive threads on
    // consecutive columns
    for (var r = 0u; r < 32u; r = r + 1u) {
        let e = r * 128u + lid;
        let lm = e / TN;
        let ln = e % TN;
        let m = m0 + lm;
        let n = n0 + ln;
        if (m < p.m && n < p.n) {
            var v = Cs[lm * CS_STRIDE + ln] / scale; // exact: a power of two
            if (BIAS) {
                v = v + bias[n];
            }
            if (RELU) {
                v = max(v, 0.0);
            }
            c[coff + m * p.n + n] = v;
        }
    }
}
