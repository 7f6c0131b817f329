// coop_tile.wgsl's accumulators on cooperative matrices (tensor cores): each subgroup's
// quarter as 2 x 2 accumulators of 16 x 16, f16 inputs, f32 sums, in the order the hardware
// adds them.
//
// naga's SPIR-V writer panics when the pointer index of coopLoadT / coopStoreT is computed
// inside the call, so every index is bound with `let` first (tests/gpu/kernels.rs translates
// both modules to guard this).

var<private> c00: coop_mat16x16<f32, C>;
var<private> c01: coop_mat16x16<f32, C>;
var<private> c10: coop_mat16x16<f32, C>;
var<private> c11: coop_mat16x16<f32, C>;

fn coop_zero() {
    c00 = coop_mat16x16<f32, C>();
    c01 = coop_mat16x16<f32, C>();
    c10 = coop_mat16x16<f32, C>();
    c11 = coop_mat16x16<f32, C>();
}

// c += the staged slice's products for quarter q: 2 x 2 x 2 multiply-adds of 16 x 16 x 16.
fn coop_slice(q: vec3<u32>) {
    for (var kk = 0u; kk < KS; kk = kk + 16u) {
        let ia0 = q.x * AS_STRIDE + kk;
        let ia1 = (q.x + 16u) * AS_STRIDE + kk;
        let ib0 = kk * BS_STRIDE + q.y;
        let ib1 = kk * BS_STRIDE + q.y + 16u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia0], AS_STRIDE);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia1], AS_STRIDE);
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib0], BS_STRIDE);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib1], BS_STRIDE);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
}

// The accumulators of quarter q into Cs (the caller meets a barrier before reading Cs).
fn coop_store(q: vec3<u32>) {
    let i00 = q.x * CS_STRIDE + q.y;
    let i01 = q.x * CS_STRIDE + q.y + 16u;
    let i10 = (q.x + 16u) * CS_STRIDE + q.y;
    let i11 = (q.x + 16u) * CS_STRIDE + q.y + 16u;
    coopStoreT(c00, &Cs[i00], CS_STRIDE);
    coopStoreT(c01, &Cs[i01], CS_STRIDE);
    coopStoreT(c10, &Cs[i10], CS_STRIDE);
    coopStoreT(c11, &Cs[i11], CS_STRIDE);
}
