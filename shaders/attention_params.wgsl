// What attention's two modules share (attention.wgsl's tiles, attention_coop.wgsl's forward
// on tensor cores): the parameters (src/ops/attention.rs's Params), the key-padding mask,
// the masked score, and the end of a row's online softmax.

struct Params {
    bh: u32,       // batch * heads
    heads: u32,
    l: u32,        // query rows
    s: u32,        // keys
    dh: u32,       // true head dim
    has_mask: u32, // 1: binding 4 is the [B, S] key-padding mask
    nblk: u32,     // row (or key) blocks per bh
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The [B, S] key-padding mask (> 0.5 = padded), at binding 4 of every entry that reads it.
@group(0) @binding(4) var<storage, read> mask: array<f32>;

const MASKED: f32 = -3.0e38;     // score of a masked / padded key
const MASKED_CUT: f32 = -1.0e38; // scores at or below this are masked

// Whether key `key` of batch element b takes part.
fn key_on(b: u32, key: u32) -> bool {
    if (key >= p.s) { return false; }
    if (p.has_mask != 0u) {
        return mask[b * p.s + key] <= 0.5;
    }
    return true;
}

// A finished row's (1 / l, logsumexp) from its running max m and sum l: (0, 0) for a row
// whose keys are all masked (its output zeros, never NaN).
fn row_end(m: f32, l: f32) -> vec2<f32> {
    if (l > 0.0) {
        return vec2<f32>(1.0 / l, m + log(l));
    }
    return vec2<f32>(0.0, 0.0);
}
