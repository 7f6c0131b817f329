// AUG's residual-boosting loss for one modality, fused: per sample, from the stacked logits
// of its T learners L[n, t, k] (T >= 1) and the label y, one pass computes
//   F_all = sum_t L[n,t,:], F_prev = sum_{t<T-1} L[n,t,:], new = L[n,T-1,:]
//   T == 1: loss = CE(F_all, y)
//   T >= 2: loss = CE(F_all, y) + CE(F_prev, y) + (1 - lambda * p_prev_y) * CE(new, y)
//           with p_prev = softmax(F_prev): the newest learner fits the residual target
//           y - lambda * y * p_prev.
// and the gradient of loss / N with respect to every learner's logits:
//   t <  T-1: (softmax(F_all) - e_y) + (softmax(F_prev) - e_y) [+ paper form: the residual
//             target differentiated through p_prev: lambda * c * p_y * (p_prev - e_y),
//             c = CE(new, y)]
//   t == T-1: (softmax(F_all) - e_y) + (1 - lambda * p_y) * (softmax(new) - e_y)
// It also writes softmax(F_all)[y] (the confidence score) per sample.
// One thread per sample: T * K is small (learners x classes).

struct Params {
    n: u32,
    t: u32,
    k: u32,
    paper: u32,     // 1: paper form (residual target differentiated), 0: code form (detached)
    lambda: f32,
    inv_n: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;   // [N, T, K]
@group(0) @binding(2) var<storage, read> labels: array<u32>;   // [N]
@group(0) @binding(3) var<storage, read_write> grad: array<f32>; // [N, T, K]
@group(0) @binding(4) var<storage, read_write> loss: array<f32>; // [N] per-sample loss
@group(0) @binding(5) var<storage, read_write> conf: array<f32>; // [N] softmax(F_all)[y]

const NEG_INF: f32 = -3.402823466e+38;

// which = 0: F_all, 1: F_prev, 2: newest learner
fn row_value(base: u32, which: u32, j: u32) -> f32 {
    if (which == 2u) {
        return logits[base + (p.t - 1u) * p.k + j];
    }
    let upto = select(p.t, p.t - 1u, which == 1u);
    var s = 0.0;
    for (var t = 0u; t < upto; t = t + 1u) {
        s = s + logits[base + t * p.k + j];
    }
    return s;
}

// returns (max, log-sum-exp) of a row
fn lse(base: u32, which: u32) -> f32 {
    var m = NEG_INF;
    for (var j = 0u; j < p.k; j = j + 1u) {
        m = max(m, row_value(base, which, j));
    }
    var s = 0.0;
    for (var j = 0u; j < p.k; j = j + 1u) {
        s = s + exp(row_value(base, which, j) - m);
    }
    return m + log(s);
}

@compute @workgroup_size(64)
fn boost_loss(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let n = flat_group(wg, nwg) * 64u + lid;
    if (n >= p.n) { return; }
    let base = n * p.t * p.k;
    let y = labels[n];
    if (y >= p.k) {
        // out-of-range label (host validation prevents this): poison the loss, never read OOB
        loss[n] = bitcast<f32>(0x7fc00000u);
        conf[n] = 0.0;
        for (var i = 0u; i < p.t * p.k; i = i + 1u) { grad[base + i] = 0.0; }
        return;
    }
    let lse_all = lse(base, 0u);
    let ce_all = lse_all - row_value(base, 0u, y);
    conf[n] = exp(-ce_all);
    if (p.t == 1u) {
        loss[n] = ce_all;
        for (var j = 0u; j < p.k; j = j + 1u) {
            let s = exp(row_value(base, 0u, j) - lse_all);
            grad[base + j] = (s - select(0.0, 1.0, j == y)) * p.inv_n;
        }
        return;
    }
    let lse_prev = lse(base, 1u);
    let lse_new = lse(base, 2u);
    let ce_prev = lse_prev - row_value(base, 1u, y);
    let ce_new = lse_new - row_value(base, 2u, y);
    let py = exp(-ce_prev);            // p_prev[y]
    let w = 1.0 - p.lambda * py;       // residual target weight
    loss[n] = ce_all + ce_prev + w * ce_new;
    let extra = select(0.0, p.lambda * ce_new * py, p.paper == 1u);
    for (var j = 0u; j < p.k; j = j + 1u) {
        let e = select(0.0, 1.0, j == y);
        let s_all = exp(row_value(base, 0u, j) - lse_all) - e;
        let s_prev = exp(row_value(base, 1u, j) - lse_prev) - e;
        let s_new = exp(row_value(base, 2u, j) - lse_new) - e;
        let g_old = (s_all + s_prev + extra * s_prev) * p.inv_n;
        for (var t = 0u; t < p.t - 1u; t = t + 1u) {
            grad[base + t * p.k + j] = g_old;
        }
        grad[base + (p.t - 1u) * p.k + j] = (s_all + w * s_new) * p.inv_n;
    }
}
