// Counter-based random numbers: Philox-4x32-10 (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC'11; the generator PyTorch's CUDA backend uses).
//
//   key     = (seed_lo, seed_hi)                          (the 64-bit seed)
//   counter = (block, 0, offset_lo, offset_hi)            (block = element / 4)
//   element e of a call takes word e % 4 of philox(counter(e / 4), key).
//
// Every output is a pure function of (seed, offset, element index): the same on every
// device and independent of the launch shape. Distinct offsets give disjoint counter
// ranges (the offset lives in the upper counter words), so callers use the offset as a
// per-call stream number. The 32x32 -> 64 bit products are built from 16-bit halves
// (WGSL has no mulhi); all arithmetic is exact integer arithmetic.
//
//   uniform:  (w >> 8) * 2^-24 in [0, 1) (exact in f32)
//   normal:   Box-Muller on word pairs (w0, w1) and (w2, w3):
//             u1 = ((w0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (w1 >> 8) * 2^-24,
//             z0 = sqrt(-2 ln u1) cos(2 pi u2), z1 = sqrt(-2 ln u1) sin(2 pi u2)
//             (bit-identical inputs; log/cos/sin rounding may differ between devices)
//   dropout:  keep element e iff uniform(e) >= p; y = x / (1 - p) where kept, else 0.
//
// One thread per block of 4 elements.

struct Params {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    off_lo: u32,
    off_hi: u32,
    _p: u32,
    prob: f32,   // dropout probability
    scale: f32,  // 1 / (1 - p)
}

@group(0) @binding(0) var<uniform> p: Params;

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;
const TWO_NEG24: f32 = 5.9604644775390625e-8;
const TWO_PI: f32 = 6.283185307179586;

// (hi, lo) words of the 64-bit product a * b
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl;
    let hl = ah * bl;
    let lh = al * bh;
    let hh = ah * bh;
    let cross = (ll >> 16u) + (hl & 0xFFFFu) + lh; // < 2^32
    let hi = hh + (hl >> 16u) + (cross >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(ctr_in: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var c = ctr_in;
    var k = key_in;
    for (var r = 0u; r < 10u; r = r + 1u) {
        if (r > 0u) {
            k = k + vec2<u32>(W0, W1);
        }
        let a = mulhilo(M0, c.x);
        let b = mulhilo(M1, c.z);
        c = vec4<u32>(b.x ^ c.y ^ k.x, b.y, a.x ^ c.w ^ k.y, a.y);
    }
    return c;
}

fn block_words(block: u32) -> vec4<u32> {
    return philox(vec4<u32>(block, 0u, p.off_lo, p.off_hi), vec2<u32>(p.seed_lo, p.seed_hi));
}

fn to_unit(w: u32) -> f32 {
    return f32(w >> 8u) * TWO_NEG24;
}

@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn rand_uniform(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let b = flat_index(wg, nwg, lid);
    let e0 = b * 4u;
    if (e0 >= p.n) { return; }
    let w = block_words(b);
    let u = vec4<f32>(to_unit(w.x), to_unit(w.y), to_unit(w.z), to_unit(w.w));
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (e0 + j < p.n) {
            out[e0 + j] = u[j];
        }
    }
}

fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let u1 = (f32(a >> 8u) + 1.0) * TWO_NEG24;
    let u2 = f32(b >> 8u) * TWO_NEG24;
    let r = sqrt(-2.0 * log(u1));
    let t = TWO_PI * u2;
    return vec2<f32>(r * cos(t), r * sin(t));
}

@compute @workgroup_size(256)
fn rand_normal(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let b = flat_index(wg, nwg, lid);
    let e0 = b * 4u;
    if (e0 >= p.n) { return; }
    let w = block_words(b);
    let z01 = box_muller(w.x, w.y);
    let z23 = box_muller(w.z, w.w);
    let z = vec4<f32>(z01.x, z01.y, z23.x, z23.y);
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (e0 + j < p.n) {
            out[e0 + j] = z[j];
        }
    }
}

@group(0) @binding(1) var<storage, read> dx_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx_out: array<f32>;

// y = x * keep / (1 - p); the backward calls it on the output gradient with the same
// (seed, offset), which regenerates the same mask.
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let b = flat_index(wg, nwg, lid);
    let e0 = b * 4u;
    if (e0 >= p.n) { return; }
    let w = block_words(b);
    let u = vec4<f32>(to_unit(w.x), to_unit(w.y), to_unit(w.z), to_unit(w.w));
    for (var j = 0u; j < 4u; j = j + 1u) {
        let e = e0 + j;
        if (e < p.n) {
            dx_out[e] = select(0.0, dx_in[e] * p.scale, u[j] >= p.prob);
        }
    }
}
