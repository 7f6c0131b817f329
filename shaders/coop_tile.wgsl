// The tile both tensor-core modules share (matmul_coop.wgsl, conv_coop.wgsl): a 64 x 64
// output tile per workgroup of 128 threads, 4 subgroups of 32 in a 2 x 2 grid, each owning a
// 32 x 32 quarter (rows q.x.., columns q.y..; `coop_quarter`). Each module calls coop_zero, then per K-slice
// stages its operands as f16 in As (64 rows x 32) and Bs (32 x 64 columns), zero outside the
// matrices (through the registers ra, rb: below), and calls coop_slice; after the last slice coop_store puts the accumulators in
// Cs for its own guarded store. Those three come from coop_mma.wgsl (cooperative matrices)
// or coop_mma_emulated.wgsl (plain f32 arithmetic, the same sums: the kernels' staging and
// epilogues then run, and are tested, on adapters without cooperative matrices).

const TM: u32 = 64u; // output rows per workgroup
const TN: u32 = 64u; // output columns per workgroup
const KS: u32 = 32u; // K-slice
const AS_STRIDE: u32 = KS + 8u; // padded rows (f16): 40 halves, 80 bytes, a multiple of 16
const BS_STRIDE: u32 = TN + 8u;
const CS_STRIDE: u32 = TN + 4u;
var<workgroup> As: array<f16, 2560>; // [TM][AS_STRIDE]
var<workgroup> Bs: array<f16, 2304>; // [KS][BS_STRIDE]
var<workgroup> Cs: array<f32, 4352>; // [TM][CS_STRIDE]
// A thread's 16 values of each operand for a slice, fetched from global memory one slice
// ahead (register prefetch): each module fetches slice t + 1 into these between staging
// slice t into As / Bs and multiplying it, so the loads are in flight during the multiply;
// two barriers per slice keep the single As / Bs (and a module's K-index table) consistent.
var<private> ra: array<f16, 16>;
var<private> rb: array<f16, 16>;

// The quarter of this thread's subgroup (the adapter's subgroups are 32 wide): its first row
// and column in the tile, and the thread's lane in the subgroup.
fn coop_quarter(lid: u32) -> vec3<u32> {
    let sg = lid / 32u;
    return vec3<u32>((sg / 2u) * 32u, (sg % 2u) * 32u, lid % 32u);
}

// The scale s of an f32 operand (a gradient) staged as f16, from the bits of its max |value|
// (elementwise.wgsl's abs_max_bits): s = 2^(15 - e) where max < 2^e, so the largest scaled
// value lies in [2^14, 2^15), below f16's 65504, and the small ones keep f16's precision
// instead of falling into its subnormal range (a gradient of 1e-6 would keep 4 bits). The
// sums are multiplied by 1/s afterwards (exact: a power of two). A zero, infinite or NaN
// maximum leaves s = 1 (infinity and NaN propagate as in f32). Loss scaling per tensor,
// where the data are: no global scale to grow and back off, no skipped steps.
fn coop_scale(bits: u32) -> f32 {
    let mx = bitcast<f32>(bits);
    if (!(mx > 0.0) || bits >= 0x7f800000u) {
        return 1.0;
    }
    // clamped so that s stays finite for the tiniest maxima (an f32 subnormal has e near -149)
    return ldexp(1.0, clamp(15 - frexp(mx).exp, -126, 126));
}

