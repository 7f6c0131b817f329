// coop_tile.wgsl's accumulators in plain f32 arithmetic, for adapters with shader f16 but no
// cooperative matrices (lavapipe): lane l of a subgroup owns row q.x + l of its quarter, 32
// accumulators across its columns. The products of f16 values are exact in f32 and the sums
// run over k in order, so the results are the tensor cores' up to the order of the f32
// additions. Not a fast path (the tuner never offers it): it exists so that the tensor-core
// kernels' staging, indexing and epilogues run, and are tested, everywhere f16 does.

var<private> acc: array<f32, 32>;

fn coop_zero() {
    for (var j = 0u; j < 32u; j = j + 1u) {
        acc[j] = 0.0;
    }
}

// acc += the staged slice's products for this lane's row of quarter q.
fn coop_slice(q: vec3<u32>) {
    let row = q.x + q.z;
    for (var kk = 0u; kk < KS; kk = kk + 1u) {
        let a = f32(As[row * AS_STRIDE + kk]);
        let b0 = kk * BS_STRIDE + q.y;
        for (var j = 0u; j < 32u; j = j + 1u) {
            acc[j] = fma(a, f32(Bs[b0 + j]), acc[j]);
        }
    }
}

// The accumulators of this lane's row of quarter q into Cs.
fn coop_store(q: vec3<u32>) {
    let at = (q.x + q.z) * CS_STRIDE + q.y;
    for (var j = 0u; j < 32u; j = j + 1u) {
        Cs[at + j] = acc[j];
    }
}
