// Element-wise kernels: unary maps, broadcasting binary ops, unary backward rules,
// f32 <-> f16 casts. The launch folds the workgroup index over the grid dimensions so any
// size fits the per-dimension workgroup limit.
//
// The operation is an override constant (OP, set by ops/elementwise.rs): each op is its own
// pipeline, and the switch on it folds to one case when the driver compiles it.
//
// Two forms of the map, mul-add and copy kernels:
// - scalar (`unary`, `binary`, ...): one thread per element; any length, broadcasting;
// - vec4 (`unary_vec4`, ...): contiguous operands whose length is a multiple of 4 and whose
//   bindings start on 16 bytes (the host checks both): each thread moves VEC vec4s, strided
//   by the workgroup size so a warp's loads are consecutive 16-byte words. Four times fewer
//   threads, 16-byte memory transactions: the bandwidth-bound form.
// - broadcast vec4 (`binary_bcast_vec4`): a broadcasting binary op whose output's last dim
//   is a multiple of 4 (the output binding on 16 bytes): four consecutive outputs share every
//   coordinate but the last, so each thread decodes the broadcast index once per vec4 of
//   output (the div/mod loop is the scalar form's cost), reads its operands as scalars at
//   their last-dim stride (0 or 1) and stores one vec4.

struct Params {
    n: u32,        // output elements
    _op: u32,
    ndim: u32,     // dims of the output (broadcasting binary ops)
    bcast: u32,    // 1: use strides below; 0: operands have the output's shape
    a: f32,        // scalar operands
    b: f32,
    _p0: u32,
    _p1: u32,
    shape: array<vec4<u32>, 2>, // output shape, up to 8 dims
    sa: array<vec4<u32>, 2>,    // element strides of operand a (0 on broadcast dims)
    sb: array<vec4<u32>, 2>,    // element strides of operand b
}

@group(0) @binding(0) var<uniform> p: Params;

override OP: u32 = 0u; // the operation's code (UNARY_* or BINARY_* below)

const VEC: u32 = 4u; // vec4s per thread in the vec4 forms

// Index of vec4 j (0..VEC) of this thread in a vec4 form.
fn vec4_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, j: u32) -> u32 {
    return flat_group(wg, nwg) * (WG * VEC) + j * WG + lid;
}



const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_C: f32 = 0.044715;

fn gelu(x: f32) -> f32 {
    // tanh approximation (PyTorch's approximate="tanh")
    let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
    return 0.5 * x * (1.0 + tanh(u));
}

fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
    let t = tanh(u);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}

fn sigmoid(x: f32) -> f32 {
    // stable for large |x|
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// ---- unary: y = f(x) ----------------------------------------------------------------
// Unary op codes (ops::Unary; tests/kernels.rs checks that the two agree).
const UNARY_NEG: u32 = 1u;
const UNARY_EXP: u32 = 2u;
const UNARY_LOG: u32 = 3u;
const UNARY_SQRT: u32 = 4u;
const UNARY_RELU: u32 = 5u;
const UNARY_GELU: u32 = 6u;
const UNARY_SIGMOID: u32 = 7u;
const UNARY_TANH: u32 = 8u;
const UNARY_ABS: u32 = 9u;
const UNARY_SQUARE: u32 = 10u;
const UNARY_AFFINE: u32 = 11u;
const UNARY_RECIP: u32 = 13u;
const UNARY_POW: u32 = 14u;
const UNARY_CLAMP: u32 = 15u;
const UNARY_SIGN: u32 = 16u;

// affine: a*x + b; pow: x^a (x > 0); clamp: clamp(x, a, b)
fn unary_op(x: f32) -> f32 {
    switch OP {
        case UNARY_NEG: { return -x; }
        case UNARY_EXP: { return exp(x); }
        case UNARY_LOG: { return log(x); }
        case UNARY_SQRT: { return sqrt(x); }
        case UNARY_RELU: { return max(x, 0.0); }
        case UNARY_GELU: { return gelu(x); }
        case UNARY_SIGMOID: { return sigmoid(x); }
        case UNARY_TANH: { return tanh(x); }
        case UNARY_ABS: { return abs(x); }
        case UNARY_SQUARE: { return x * x; }
        case UNARY_AFFINE: { return p.a * x + p.b; }
        case UNARY_RECIP: { return 1.0 / x; }
        case UNARY_POW: { return pow(x, p.a); }
        case UNARY_CLAMP: { return clamp(x, p.a, p.b); }
        case UNARY_SIGN: { return sign(x); }
        default: { return x; }
    }
}

@group(0) @binding(1) var<storage, read> ux: array<f32>;
@group(0) @binding(2) var<storage, read_write> uy: array<f32>;

@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    uy[i] = unary_op(ux[i]);
}

// broadcast x (strides p.sa) to the output shape p.shape
@compute @workgroup_size(256)
fn expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    var ia = 0u;
    var rem = i;
    for (var d: i32 = i32(p.ndim) - 1; d >= 0; d = d - 1) {
        let du = u32(d);
        let extent = p.shape[du / 4u][du % 4u];
        ia = ia + (rem % extent) * p.sa[du / 4u][du % 4u];
        rem = rem / extent;
    }
    uy[i] = ux[ia];
}

// fill needs no input: binding 1 is the output
@group(0) @binding(1) var<storage, read_write> fy: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    fy[i] = p.a;
}

// ---- in-place accumulate: y = y + x (gradient accumulation into a uniquely owned sum) ---
@group(0) @binding(1) var<storage, read> acc_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> acc_y: array<f32>;

@compute @workgroup_size(256)
fn add_into(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    acc_y[i] = acc_y[i] + acc_x[i];
}

// ---- binary with broadcasting: y = a (op) b ------------------------------------------
// Binary op codes (ops::Binary; tests/kernels.rs checks that the two agree).
const BINARY_ADD: u32 = 0u;
const BINARY_SUB: u32 = 1u;
const BINARY_MUL: u32 = 2u;
const BINARY_DIV: u32 = 3u;
const BINARY_MAX: u32 = 4u;
const BINARY_MIN: u32 = 5u;
const BINARY_LERP: u32 = 6u;
const BINARY_EQ: u32 = 7u;
const BINARY_GE: u32 = 8u;
// lerp: a*s + b*t (p.a = s, p.b = t); eq, ge: 1.0 or 0.0
fn binary_op(x: f32, y: f32) -> f32 {
    switch OP {
        case BINARY_ADD: { return x + y; }
        case BINARY_SUB: { return x - y; }
        case BINARY_MUL: { return x * y; }
        case BINARY_DIV: { return x / y; }
        case BINARY_MAX: { return max(x, y); }
        case BINARY_MIN: { return min(x, y); }
        case BINARY_LERP: { return p.a * x + p.b * y; }
        case BINARY_EQ: { return select(0.0, 1.0, x == y); }
        case BINARY_GE: { return select(0.0, 1.0, x >= y); }
        default: { return x; }
    }
}

@group(0) @binding(1) var<storage, read> ba: array<f32>;
@group(0) @binding(2) var<storage, read> bb: array<f32>;
@group(0) @binding(3) var<storage, read_write> by: array<f32>;

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    var o = vec2<u32>(i, i);
    if (p.bcast != 0u) {
        o = bcast_offsets(i);
    }
    by[i] = binary_op(ba[o.x], bb[o.y]);
}

// Element offsets in a and b of output element i (broadcasting: p.bcast is 1).
fn bcast_offsets(i: u32) -> vec2<u32> {
    var ia = 0u;
    var ib = 0u;
    var rem = i;
    for (var d: i32 = i32(p.ndim) - 1; d >= 0; d = d - 1) {
        let du = u32(d);
        let extent = p.shape[du / 4u][du % 4u];
        let c = rem % extent;
        rem = rem / extent;
        ia = ia + c * p.sa[du / 4u][du % 4u];
        ib = ib + c * p.sb[du / 4u][du % 4u];
    }
    return vec2<u32>(ia, ib);
}

// ---- unary backward: dx = g * f'(saved) ------------------------------------------------
// saved is x for: log, gelu, abs, square, reciprocal, pow
// saved is y for: exp, sqrt, relu (y > 0 exactly where x > 0), sigmoid, tanh
fn unary_grad(s: f32) -> f32 {
    switch OP {
        case UNARY_EXP: { return s; }
        case UNARY_LOG: { return 1.0 / s; }
        case UNARY_SQRT: { return 0.5 / s; }
        case UNARY_RELU: { return select(0.0, 1.0, s > 0.0); }
        case UNARY_GELU: { return gelu_grad(s); }
        case UNARY_SIGMOID: { return s * (1.0 - s); }
        case UNARY_TANH: { return 1.0 - s * s; }
        case UNARY_ABS: { return sign(s); }
        case UNARY_SQUARE: { return 2.0 * s; }
        case UNARY_RECIP: { return -1.0 / (s * s); }
        case UNARY_POW: { return p.a * pow(s, p.a - 1.0); }
        default: { return 1.0; }
    }
}

@group(0) @binding(1) var<storage, read> gs: array<f32>;
@group(0) @binding(2) var<storage, read> gg: array<f32>;
@group(0) @binding(3) var<storage, read_write> gdx: array<f32>;

@compute @workgroup_size(256)
fn unary_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    gdx[i] = gg[i] * unary_grad(gs[i]);
}

// ---- vec4 forms (see the top of the file) ---------------------------------------------
@group(0) @binding(1) var<storage, read> ux4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> uy4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn unary_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            let x = ux4[i];
            uy4[i] = vec4<f32>(unary_op(x.x), unary_op(x.y), unary_op(x.z), unary_op(x.w));
        }
    }
}

@group(0) @binding(1) var<storage, read> ba4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bb4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> by4: array<vec4<f32>>;

// operands of the output's shape (no broadcasting)
@compute @workgroup_size(256)
fn binary_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            let x = ba4[i];
            let y = bb4[i];
            by4[i] = vec4<f32>(binary_op(x.x, y.x), binary_op(x.y, y.y), binary_op(x.z, y.z), binary_op(x.w, y.w));
        }
    }
}

// a and b as scalars (bindings 1 and 2 of `binary`), the output as vec4s
@compute @workgroup_size(256)
fn binary_bcast_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let last = p.ndim - 1u;
    let sa = p.sa[last / 4u][last % 4u];
    let sb = p.sb[last / 4u][last % 4u];
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            let o = bcast_offsets(4u * i);
            var r: vec4<f32>;
            for (var k = 0u; k < 4u; k = k + 1u) {
                r[k] = binary_op(ba[o.x + k * sa], bb[o.y + k * sb]);
            }
            by4[i] = r;
        }
    }
}

@group(0) @binding(1) var<storage, read> gs4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gg4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> gdx4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn unary_backward_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            let s = gs4[i];
            gdx4[i] = gg4[i] * vec4<f32>(unary_grad(s.x), unary_grad(s.y), unary_grad(s.z), unary_grad(s.w));
        }
    }
}

@group(0) @binding(1) var<storage, read> acc_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> acc_y4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn add_into_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            acc_y4[i] = acc_y4[i] + acc_x4[i];
        }
    }
}

@group(0) @binding(1) var<storage, read_write> fy4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn fill_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < VEC; j = j + 1u) {
        let i = vec4_index(wg, nwg, lid, j);
        if (i < p.n / 4u) {
            fy4[i] = vec4<f32>(p.a);
        }
    }
}

// ---- casts: f16 storage is packed two halves per u32 ------------------------------------
@group(0) @binding(1) var<storage, read> cf: array<f32>;
@group(0) @binding(2) var<storage, read_write> ch: array<u32>;

// one thread per output word (two elements)
@compute @workgroup_size(256)
fn to_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let w = flat_index(wg, nwg, lid);
    let i = 2u * w;
    if (i >= p.n) { return; }
    let lo = cf[i];
    var hi = 0.0;
    if (i + 1u < p.n) { hi = cf[i + 1u]; }
    ch[w] = pack2x16float(vec2<f32>(lo, hi));
}

@group(0) @binding(1) var<storage, read> hh: array<u32>;
@group(0) @binding(2) var<storage, read_write> hf: array<f32>;

@compute @workgroup_size(256)
fn from_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let v = unpack2x16float(hh[i / 2u]);
    hf[i] = select(v.x, v.y, (i & 1u) == 1u);
}

// ReLU's mask as mixed precision keeps it for the backward: bit i of word i / 32 is y[i] > 0
// (1/32 of the output's bytes; the gradient needs nothing else). One thread per word.
@group(0) @binding(1) var<storage, read> mk_y: array<f32>;
@group(0) @binding(2) var<storage, read_write> mk_bits: array<u32>;

@compute @workgroup_size(256)
fn relu_mask(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let w = flat_index(wg, nwg, lid);
    let i0 = 32u * w;
    if (i0 >= p.n) { return; }
    let end = min(32u, p.n - i0);
    var bits = 0u;
    for (var b = 0u; b < end; b = b + 1u) {
        bits = bits | (select(0u, 1u, mk_y[i0 + b] > 0.0) << b);
    }
    mk_bits[w] = bits;
}

// dx = g where the mask's bit is set, else 0 (the values of unary_backward's ReLU).
@group(0) @binding(1) var<storage, read> mb_bits: array<u32>;
@group(0) @binding(2) var<storage, read> mb_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

@compute @workgroup_size(256)
fn relu_backward_mask(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let on = ((mb_bits[i >> 5u] >> (i & 31u)) & 1u) != 0u;
    mb_dx[i] = mb_g[i] * select(0.0, 1.0, on); // g * 0 as unary_backward: -0 and NaN alike
}

// dx = g where the f16 output y (two values per word) is > 0, else 0: ReLU's backward from an
// output batch norm's fused kernel stored as f16 (norm.wgsl's bn_apply, HALF_Y).
@group(0) @binding(1) var<storage, read> mh_y: array<u32>;
@group(0) @binding(2) var<storage, read> mh_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> mh_dx: array<f32>;

@compute @workgroup_size(256)
fn relu_backward_half(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    mh_dx[i] = mh_g[i] * select(0.0, 1.0, relu_on(mh_y[i >> 1u], i, 2u));
}

// g *= (y > 0) in place, from what the ReLU kept (KEPT: 0 its f32 output, 1 the bit mask of
// relu_mask, 2 its f16 output, two values per word): the same values as the kernels above,
// without a second gradient buffer beside g.
override KEPT: u32 = 0u;
@group(0) @binding(1) var<storage, read> mi_kept: array<u32>;
@group(0) @binding(2) var<storage, read_write> mi_g: array<f32>;

// Whether value i of the output is > 0, from `word`, the word of the kept tensor holding it.
fn relu_on(word: u32, i: u32, kept: u32) -> bool {
    switch kept {
        case 1u: { return ((word >> (i & 31u)) & 1u) != 0u; }
        case 2u: { return unpack2x16float(word)[i & 1u] > 0.0; }
        default: { return bitcast<f32>(word) > 0.0; }
    }
}

@compute @workgroup_size(256)
fn relu_mask_into(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let shift = select(select(0u, 5u, KEPT == 1u), 1u, KEPT == 2u);
    mi_g[i] = mi_g[i] * select(0.0, 1.0, relu_on(mi_kept[i >> shift], i, KEPT));
}

// max |x| as f32 bits, into amax[0] (which starts at 0): non-negative floats order as their bit
// patterns, so an integer atomicMax is the float max, in any order (deterministic); NaN's
// bits exceed infinity's, so a NaN wins. A workgroup reduces its values in workgroup memory
// first, then one atomic; a grid-stride loop covers any n. For the per-tensor scale of an
// f32 operand the tensor-core kernels stage as f16 (coop_tile.wgsl's coop_scale).
@group(0) @binding(1) var<storage, read> am_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> am_out: array<atomic<u32>>;
var<workgroup> am_red: array<u32, 256>;

@compute @workgroup_size(256)
fn abs_max_bits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let stride = 256u * nwg.x * nwg.y;
    var m = 0u;
    for (var i = flat_index(wg, nwg, lid); i < p.n; i = i + stride) {
        // |x| by clearing the sign bit, not abs(): the bits of inf and NaN survive any
        // float optimisation the driver may apply (the loss scale's check reads them)
        m = max(m, bitcast<u32>(am_x[i]) & 0x7fffffffu);
    }
    am_red[lid] = m;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h = h >> 1u) {
        if (lid < h) {
            am_red[lid] = max(am_red[lid], am_red[lid + h]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        atomicMax(&am_out[0], am_red[0]);
    }
}

