// The cooperative-matrix tile both tensor-core modules share (matmul_coop.wgsl,
// conv_coop.wgsl): a 64 x 64 output tile per workgroup of 128 threads, 4 subgroups of 32 in a
// 2 x 2 grid, each owning a 32 x 32 quarter (rows qm.., columns qn..) as 2 x 2 accumulators of
// 16 x 16. Each module stages a K-slice of its operands as f16 in As (64 rows x 32) and Bs
// (32 x 64 columns), zero outside the matrices, then calls coop_slice; after the last slice
// coop_store puts the accumulators in Cs for its own guarded store.
//
// naga's SPIR-V writer panics when the pointer index of coopLoadT / coopStoreT is computed
// inside the call, so every index is bound with `let` first (tests/gpu/kernels.rs translates
// both modules to guard this).

const TM: u32 = 64u; // output rows per workgroup
const TN: u32 = 64u; // output columns per workgroup
const KS: u32 = 32u; // K-slice
const AS_STRIDE: u32 = KS + 8u; // padded rows (f16): 40 halves, 80 bytes, a multiple of 16
const BS_STRIDE: u32 = TN + 8u;
const CS_STRIDE: u32 = TN + 4u;
var<workgroup> As: array<f16, 2560>; // [TM][AS_STRIDE]
var<workgroup> Bs: array<f16, 2304>; // [KS][BS_STRIDE]
var<workgroup> Cs: array<f32, 4352>; // [TM][CS_STRIDE]

// The quarter (qm, qn) of this thread's subgroup (the adapter's subgroups are 32 wide).
fn coop_quarter(lid: u32) -> vec2<u32> {
    let sg = lid / 32u;
    return vec2<u32>((sg / 2u) * 32u, (sg % 2u) * 32u);
}

// c += the staged slice's products for quarter q: 2 x 2 x 2 multiply-adds of 16 x 16 x 16.
fn coop_slice(q: vec2<u32>, c00: ptr<function, coop_mat16x16<f32, C>>, c01: ptr<function, coop_mat16x16<f32, C>>,
              c10: ptr<function, coop_mat16x16<f32, C>>, c11: ptr<function, coop_mat16x16<f32, C>>) {
    for (var kk = 0u; kk < KS; kk = kk + 16u) {
        let ia0 = q.x * AS_STRIDE + kk;
        let ia1 = (q.x + 16u) * AS_STRIDE + kk;
        let ib0 = kk * BS_STRIDE + q.y;
        let ib1 = kk * BS_STRIDE + q.y + 16u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia0], AS_STRIDE);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia1], AS_STRIDE);
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib0], BS_STRIDE);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib1], BS_STRIDE);
        *c00 = coopMultiplyAdd(a0, b0, *c00);
        *c01 = coopMultiplyAdd(a0, b1, *c01);
        *c10 = coopMultiplyAdd(a1, b0, *c10);
        *c11 = coopMultiplyAdd(a1, b1, *c11);
    }
}

// The accumulators of quarter q into Cs (the caller meets a barrier before reading Cs).
fn coop_store(q: vec2<u32>, c00: coop_mat16x16<f32, C>, c01: coop_mat16x16<f32, C>, c10: coop_mat16x16<f32, C>, c11: coop_mat16x16<f32, C>) {
    let i00 = q.x * CS_STRIDE + q.y;
    let i01 = q.x * CS_STRIDE + q.y + 16u;
    let i10 = (q.x + 16u) * CS_STRIDE + q.y;
    let i11 = (q.x + 16u) * CS_STRIDE + q.y + 16u;
    coopStoreT(c00, &Cs[i00], CS_STRIDE);
    coopStoreT(c01, &Cs[i01], CS_STRIDE);
    coopStoreT(c10, &Cs[i10], CS_STRIDE);
    coopStoreT(c11, &Cs[i11], CS_STRIDE);
}
