// AIM / PAM kernels: per-layer selection of the fraction ρ of elements with the lowest
// optimisation-state score, as an exact radix select on the GPU (no host sort), and the
// auxiliary-block weight scales built from the resulting bit masks.
//
// Selection. Every element i of a layer gets a unique 64-bit key (hi, lo):
//   hi = the score's f32 bits mapped to an order-preserving u32, lo = i.
// Ties in the score are broken by the index, so exactly k = round(ρ·n) keys are ≤ the k-th
// smallest key: the density is exactly k/n whatever the duplicates. The k-th key is found
// digit by digit (8 bits per pass, most significant first): `select_hist` builds a 256-bin
// histogram of the next digit over the elements whose determined digits match the prefix
// found so far (workgroup-local atomics, then one global atomic per bin and workgroup);
// `select_scan` (one workgroup) picks the bin where the running count reaches the rank
// still wanted, appends it to the prefix, and clears the histogram for the next pass. As
// soon as a bin holds exactly the remaining rank, every element under that prefix is
// selected: the remaining bits become ones and the later passes skip their work (`done`).
// At most 4 value passes + ceil(log2(n)/8) index passes, each one coalesced read of n.
//
// Per-layer state lives in one u32 buffer `sel`, STRIDE words per layer at `p.base`:
//   [0, 256) histogram, 256 k_rem, 257 prefix_hi, 258 prefix_lo, 259 done,
//   260 selected count (written by `select_mask`), 261 k, 262 mask_hi, 263 mask_lo.

struct Params {
    n: u32,
    base: u32,
    shift: u32,
    word: u32,
    k: u32,
    s: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// elements per thread in `select_hist` (a workgroup covers WG * PER consecutive elements)
const PER: u32 = 16u;
// elements per thread in `select_mask` (a workgroup covers WG * MPER = 2048 elements = 64 words)
const MPER: u32 = 8u;

const K_REM: u32 = 256u;
const P_HI: u32 = 257u;
const P_LO: u32 = 258u;
const DONE: u32 = 259u;
const COUNT: u32 = 260u;
const K_TOT: u32 = 261u;
const M_HI: u32 = 262u;
const M_LO: u32 = 263u;

// Order-preserving map of f32 bits to u32 (negatives reversed below positives; NaN with the
// sign bit clear sorts above +inf, so it is never among the lowest).
fn ordered(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// ---- init: one thread per layer slot ---------------------------------------------------

@group(0) @binding(1) var<storage, read_write> sel_init: array<u32>;

@compute @workgroup_size(256)
fn select_init(@builtin(local_invocation_index) lid: u32) {
    let b = p.base;
    sel_init[b + lid] = 0u;
    if (lid != 0u) { return; }
    sel_init[b + K_REM] = p.k;
    sel_init[b + K_TOT] = p.k;
    sel_init[b + COUNT] = 0u;
    sel_init[b + M_HI] = 0u;
    sel_init[b + M_LO] = 0u;
    if (p.k == 0u || p.k >= p.n) {
        // nothing or everything: no passes needed (k == 0 is handled by select_mask)
        sel_init[b + P_HI] = 0xffffffffu;
        sel_init[b + P_LO] = 0xffffffffu;
        sel_init[b + DONE] = 1u;
    } else {
        sel_init[b + P_HI] = 0u;
        sel_init[b + P_LO] = 0u;
        sel_init[b + DONE] = 0u;
    }
}

// ---- histogram pass --------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> sel_atomic: array<atomic<u32>>;

var<workgroup> whist: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn select_hist(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let b = p.base;
    atomicStore(&whist[lid], 0u);
    workgroupBarrier();
    let done = atomicLoad(&sel_atomic[b + DONE]);
    if (done == 0u) {
        let ph = atomicLoad(&sel_atomic[b + P_HI]);
        let pl = atomicLoad(&sel_atomic[b + P_LO]);
        let mh = atomicLoad(&sel_atomic[b + M_HI]);
        let ml = atomicLoad(&sel_atomic[b + M_LO]);
        let start = flat_group(wg, nwg) * (WG * PER);
        for (var j = 0u; j < PER; j = j + 1u) {
            let i = start + j * WG + lid;
            if (i < p.n) {
                let hi = ordered(scores[i]);
                if ((hi & mh) == ph && (i & ml) == pl) {
                    var w = hi;
                    if (p.word == 1u) { w = i; }
                    atomicAdd(&whist[(w >> p.shift) & 0xffu], 1u);
                }
            }
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&whist[lid]);
    if (c != 0u) {
        atomicAdd(&sel_atomic[b + lid], c);
    }
}

// ---- scan: pick the digit, extend the prefix, clear the histogram ------------------------

@group(0) @binding(1) var<storage, read_write> sel_scan: array<u32>;

var<workgroup> shist: array<u32, 256>;

@compute @workgroup_size(256)
fn select_scan(@builtin(local_invocation_index) lid: u32) {
    let b = p.base;
    shist[lid] = sel_scan[b + lid];
    sel_scan[b + lid] = 0u;
    workgroupBarrier();
    if (lid != 0u) { return; }
    if (sel_scan[b + DONE] != 0u) { return; }
    var k_rem = sel_scan[b + K_REM];
    var cum = 0u;
    var digit = 256u;
    for (var d = 0u; d < 256u; d = d + 1u) {
        let h = shist[d];
        if (cum + h >= k_rem) {
            digit = d;
            break;
        }
        cum = cum + h;
    }
    let below = (1u << p.shift) - 1u; // bits of this word below the digit
    let dmask = 0xffu << p.shift;
    if (digit == 256u) {
        // inconsistent counts (cannot happen with a consistent histogram): select the prefix
        sel_scan[b + DONE] = 1u;
        if (p.word == 0u) {
            sel_scan[b + P_HI] = sel_scan[b + P_HI] | dmask | below;
            sel_scan[b + P_LO] = 0xffffffffu;
        } else {
            sel_scan[b + P_LO] = sel_scan[b + P_LO] | dmask | below;
        }
        return;
    }
    k_rem = k_rem - cum;
    sel_scan[b + K_REM] = k_rem;
    let all = shist[digit] == k_rem;
    if (p.word == 0u) {
        var ph = sel_scan[b + P_HI] | (digit << p.shift);
        sel_scan[b + M_HI] = sel_scan[b + M_HI] | dmask;
        if (all) {
            ph = ph | below;
            sel_scan[b + P_LO] = 0xffffffffu;
            sel_scan[b + DONE] = 1u;
        }
        sel_scan[b + P_HI] = ph;
    } else {
        var pl = sel_scan[b + P_LO] | (digit << p.shift);
        sel_scan[b + M_LO] = sel_scan[b + M_LO] | dmask;
        if (all) {
            pl = pl | below;
            sel_scan[b + DONE] = 1u;
        }
        sel_scan[b + P_LO] = pl;
    }
}

// ---- mask: bit i of the packed mask = key_i <= threshold key; count the selected ---------

@group(0) @binding(1) var<storage, read> mscores: array<f32>;
@group(0) @binding(2) var<storage, read_write> sel_m: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> mask_out: array<u32>;

var<workgroup> wmask: array<atomic<u32>, 64>;
var<workgroup> wcount: atomic<u32>;

@compute @workgroup_size(256)
fn select_mask(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let b = p.base;
    if (lid < 64u) {
        atomicStore(&wmask[lid], 0u);
    }
    if (lid == 0u) {
        atomicStore(&wcount, 0u);
    }
    workgroupBarrier();
    let k = atomicLoad(&sel_m[b + K_TOT]);
    let th = atomicLoad(&sel_m[b + P_HI]);
    let tl = atomicLoad(&sel_m[b + P_LO]);
    let start = flat_group(wg, nwg) * (WG * MPER);
    if (k != 0u) {
        for (var j = 0u; j < MPER; j = j + 1u) {
            let i = start + j * WG + lid;
            if (i < p.n) {
                let hi = ordered(mscores[i]);
                if (hi < th || (hi == th && i <= tl)) {
                    atomicOr(&wmask[j * (WG / 32u) + lid / 32u], 1u << (lid % 32u));
                }
            }
        }
    }
    workgroupBarrier();
    if (lid < 64u) {
        let w = start / 32u + lid;
        if (w * 32u < p.n) {
            let bits = atomicLoad(&wmask[lid]);
            mask_out[w] = bits;
            let c = countOneBits(bits);
            if (c != 0u) {
                atomicAdd(&wcount, c);
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let c = atomicLoad(&wcount);
        if (c != 0u) {
            atomicAdd(&sel_m[b + COUNT], c);
        }
    }
}

// ---- scale: scale_i = 1 − s·(1 − M_i) ------------------------------------------------------

@group(0) @binding(1) var<storage, read> smask: array<u32>;
@group(0) @binding(2) var<storage, read_write> scale_out: array<f32>;

@compute @workgroup_size(256)
fn mask_scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wg, nwg) * WG + lid;
    if (i >= p.n) { return; }
    let m = (smask[i / 32u] >> (i % 32u)) & 1u;
    scale_out[i] = 1.0 - p.s * (1.0 - f32(m));
}
