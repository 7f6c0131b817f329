// The parameter block and batch decomposition shared by the GEMM modules (matmul.wgsl and
// matmul_coop.wgsl, each compiled after this fragment: src/gpu/shaders.rs). One definition,
// checked against the Rust `Params` of src/ops/matmul/launch.rs by tests/gpu/kernels.rs.

struct Params {
    m: u32,        // rows of op(A) and C (batch-folded when B is shared and A untransposed)
    n: u32,        // columns of op(B) and C
    k: u32,        // inner dimension
    batch: u32,    // number of output matrices
    _p0: u32,
    _p1: u32,
    _p2: u32,
    nbd: u32,      // batch dims in bshape/bsa/bsb
    z0: u32,       // batch index of workgroup z = 0 (launches split over z chunks)
    x0: u32,       // column tile of workgroup x = 0 (launches split over x chunks)
    y0: u32,       // row tile of workgroup y = 0 (launches split over y chunks)
    k_chunk: u32,  // split-K: K-slices per split, grid z = split, C = partials [splits, M, N]; 0: off
    bshape: array<vec4<u32>, 2>, // output batch shape (dims of size 1 dropped)
    bsa: array<vec4<u32>, 2>,    // A element stride per batch dim (0: broadcast)
    bsb: array<vec4<u32>, 2>,    // B element stride per batch dim (0: broadcast)
}

@group(0) @binding(0) var<uniform> p: Params;

// Element offsets of batch z's A and B matrices (per-operand strides, 0 on broadcast dims).
fn batch_offsets(z: u32) -> vec2<u32> {
    var r = z;
    var oa = 0u;
    var ob = 0u;
    for (var i = 0u; i < p.nbd; i = i + 1u) {
        let d = p.nbd - 1u - i;
        let s = p.bshape[d / 4u][d % 4u];
        let ci = r % s;
        r = r / s;
        oa = oa + ci * p.bsa[d / 4u][d % 4u];
        ob = ob + ci * p.bsb[d / 4u][d % 4u];
    }
    return vec2<u32>(oa, ob);
}
