// Fused optimizer updates, one pass over each parameter tensor: the gradient's clipping
// scale (a one-element tensor computed on the GPU: no readback), weight decay, momentum /
// Nesterov (SGD) or Adam moments with bias correction (AMSGrad optional), the parameter
// update itself, and the optional AIM/PAM optimisation-state score
//     score = m * score + (1 - m) * |g * theta|      (theta before the update, raw g)
// Every buffer is read once and written once per element: the update is memory bound, so
// fusing everything into one kernel is what makes it fast (one launch per parameter, no
// temporaries). One thread per element, consecutive threads on consecutive elements
// (coalesced). Parameter and state buffers are bound once each, read_write (wgpu forbids
// binding a buffer twice with different access); the gradient is bound read-only.
//
// Configuration that is fixed for an optimizer (momentum on/off, Nesterov, decoupled
// decay, AMSGrad, score on/off) is a bit set in the uniform block: the branches are
// uniform across the whole dispatch (no divergence) and skip the loads and stores of
// unused state. Step-dependent scalars (learning rate, bias corrections, first-step flag)
// are computed on the host and passed in the same block: nothing is ever read back.
// Unused optional bindings get a small dummy buffer and are never touched.
//
// Buffers may be longer than the tensor (pooled storage): the element count is p.n and
// every access is guarded by `i < p.n` (no arrayLength, no reliance on runtime checks).



// flag bits
const SGD_MOMENTUM: u32 = 1u;    // momentum != 0
const SGD_NESTEROV: u32 = 2u;    // Nesterov momentum
const ADAM_DECOUPLED: u32 = 1u;  // AdamW-style decoupled weight decay
const ADAM_AMSGRAD: u32 = 2u;    // keep the running max of exp_avg_sq
const SCORE: u32 = 4u;           // maintain the |g * theta| EMA score
const GRAD_SCALE: u32 = 8u;      // g = g * gscale[0] first (gradient-norm clipping's coefficient)

// ---- SGD (PyTorch semantics) ---------------------------------------------------------
//   d = g + wd * theta                        (if wd != 0)
//   buf = d (first step) | mom * buf + (1 - dampening) * d
//   d = d + mom * buf (Nesterov) | buf
//   theta = theta - lr * d
struct SgdParams {
    n: u32,
    first: u32,      // 1 on the first step of this parameter (momentum buffer = d)
    flags: u32,      // SGD_MOMENTUM | SGD_NESTEROV | SCORE
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    score_m: f32,
}

@group(0) @binding(0) var<uniform> sp: SgdParams;
@group(0) @binding(1) var<storage, read_write> s_param: array<f32>;
@group(0) @binding(2) var<storage, read> s_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> s_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> s_score: array<f32>;
@group(0) @binding(5) var<storage, read> s_gscale: array<f32>;

@compute @workgroup_size(256)
fn sgd_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= sp.n) { return; }
    let theta = s_param[i];
    var g = s_grad[i];
    if ((sp.flags & GRAD_SCALE) != 0u) {
        g = g * s_gscale[0];
    }
    var d = g;
    if (sp.weight_decay != 0.0) {
        d = d + sp.weight_decay * theta;
    }
    if ((sp.flags & SGD_MOMENTUM) != 0u) {
        var b = d;
        if (sp.first == 0u) {
            b = sp.momentum * s_buf[i] + sp.one_minus_dampening * d;
        }
        s_buf[i] = b;
        if ((sp.flags & SGD_NESTEROV) != 0u) {
            d = d + sp.momentum * b;
        } else {
            d = b;
        }
    }
    s_param[i] = theta - sp.lr * d;
    if ((sp.flags & SCORE) != 0u) {
        s_score[i] = sp.score_m * s_score[i] + (1.0 - sp.score_m) * abs(g * theta);
    }
}

// ---- Adam / AdamW (PyTorch semantics) -----------------------------------------------
//   AdamW: theta = theta * (1 - lr * wd)      Adam: g = g + wd * theta    (if wd != 0)
//   m = b1 * m + (1 - b1) * g
//   v = b2 * v + (1 - b2) * g * g
//   vmax = max(vmax, v) (AMSGrad; the denominator then uses vmax)
//   theta = theta - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t computed on the host in f64.
struct AdamParams {
    n: u32,
    flags: u32,          // ADAM_DECOUPLED | ADAM_AMSGRAD | SCORE
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,          // 1 - lr * wd (decoupled)
    step_size: f32,      // lr / bc1
    inv_bc2_sqrt: f32,   // 1 / sqrt(bc2)
    score_m: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> ap: AdamParams;
@group(0) @binding(1) var<storage, read_write> a_param: array<f32>;
@group(0) @binding(2) var<storage, read> a_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> a_m: array<f32>;
@group(0) @binding(4) var<storage, read_write> a_v: array<f32>;
@group(0) @binding(5) var<storage, read_write> a_vmax: array<f32>;
@group(0) @binding(6) var<storage, read_write> a_score: array<f32>;
@group(0) @binding(7) var<storage, read> a_gscale: array<f32>;

@compute @workgroup_size(256)
fn adam_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= ap.n) { return; }
    let theta = a_param[i];
    var g0 = a_grad[i];
    if ((ap.flags & GRAD_SCALE) != 0u) {
        g0 = g0 * a_gscale[0];
    }
    var g = g0;
    var t = theta;
    if (ap.weight_decay != 0.0) {
        if ((ap.flags & ADAM_DECOUPLED) != 0u) {
            t = theta * ap.decay;
        } else {
            g = g + ap.weight_decay * theta;
        }
    }
    let m = ap.beta1 * a_m[i] + (1.0 - ap.beta1) * g;
    let v = ap.beta2 * a_v[i] + (1.0 - ap.beta2) * g * g;
    a_m[i] = m;
    a_v[i] = v;
    var vd = v;
    if ((ap.flags & ADAM_AMSGRAD) != 0u) {
        vd = max(a_vmax[i], v);
        a_vmax[i] = vd;
    }
    let denom = sqrt(vd) * ap.inv_bc2_sqrt + ap.eps;
    a_param[i] = t - ap.step_size * (m / denom);
    if ((ap.flags & SCORE) != 0u) {
        a_score[i] = ap.score_m * a_score[i] + (1.0 - ap.score_m) * abs(g0 * theta);
    }
}
