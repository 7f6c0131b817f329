//! Multi-head self-attention on the fused attention kernel, and a pre-norm transformer
//! encoder over patches (images, spectrograms) or feature sequences; depths are its blocks.
use super::{expect_depth, join, normal_init, param, Ctx, Encoder, LayerNorm, Linear, Module};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use super::Param;
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// Multi-head self-attention: one fused QKV projection, the fused attention kernel with scale
/// 1/√Dh, an output projection. Parameters `<name>.qkv.*`, `<name>.out.*`.
pub struct MultiHeadAttention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    width: usize,
}

impl MultiHeadAttention {
    /// `width` must be a multiple of `heads` (a config error naming `model.heads` otherwise); Dh =
    /// width / heads.
    pub fn new(gpu: &Gpu, name: &str, width: usize, heads: usize, rng: &mut StdRng) -> Result<MultiHeadAttention> {
        if heads == 0 || width % heads != 0 {
            return Err(Error::config("model.heads", format!("width {width} must be a multiple of heads {heads}")));
        }
        Ok(MultiHeadAttention {
            qkv: Linear::new(gpu, &join(name, "qkv"), width, 3 * width, true, rng)?,
            out: Linear::new(gpu, &join(name, "out"), width, width, true, rng)?,
            heads,
            width,
        })
    }

    /// x [N, L, D]; key_padding_mask [N, L] (1.0 = padded).
    pub fn forward(&self, x: &Tensor, key_padding_mask: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        if x.dims() != 3 || x.dim(2) != self.width {
            return Err(Error::shape("attention", format!("expects [N, L, {}], got {:?}", self.width, x.shape())));
        }
        let (n, l, h) = (x.dim(0), x.dim(1), self.heads);
        let dh = self.width / h;
        let qkv = self.qkv.forward(x, ctx)?.reshape(&[n, l, 3, h, dh])?;
        let qkv = ops::permute(&qkv, &[2, 0, 3, 1, 4])?; // [3, N, H, L, Dh]
        let parts = ops::split(&qkv, &[1, 1, 1], 0)?;
        let q = parts[0].reshape(&[n, h, l, dh])?;
        let k = parts[1].reshape(&[n, h, l, dh])?;
        let v = parts[2].reshape(&[n, h, l, dh])?;
        // under mixed precision the products take f16 copies (as the linear layers' do)
        let (q, k, v) = (super::gemm_operand(&q)?, super::gemm_operand(&k)?, super::gemm_operand(&v)?);
        let o = ops::attention(&q, &k, &v, key_padding_mask, 1.0 / (dh as f32).sqrt())?;
        let o = ops::permute(&o, &[0, 2, 1, 3])?.reshape(&[n, l, self.width])?;
        self.out.forward(&o, ctx)
    }
}

impl Module for MultiHeadAttention {
    fn params(&self) -> Vec<Param> {
        let mut v = self.qkv.params();
        v.extend(self.out.params());
        v
    }
}

/// Pre-norm block: x + MHA(LN(x)); x + MLP(LN(x)) with GELU.
pub struct TransformerLayer {
    ln1: LayerNorm,
    attn: MultiHeadAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl TransformerLayer {
    /// `mlp_ratio`: the MLP's hidden width as a multiple of `width`.
    pub fn new(gpu: &Gpu, name: &str, width: usize, heads: usize, mlp_ratio: usize, rng: &mut StdRng) -> Result<TransformerLayer> {
        Ok(TransformerLayer {
            ln1: LayerNorm::new(gpu, &join(name, "ln1"), width)?,
            attn: MultiHeadAttention::new(gpu, &join(name, "attn"), width, heads, rng)?,
            ln2: LayerNorm::new(gpu, &join(name, "ln2"), width)?,
            fc1: Linear::new(gpu, &join(name, "fc1"), width, width * mlp_ratio, true, rng)?,
            fc2: Linear::new(gpu, &join(name, "fc2"), width * mlp_ratio, width, true, rng)?,
        })
    }
    /// x `[N, L, width]` → `[N, L, width]`; `mask` as in [`MultiHeadAttention::forward`].
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let x = ops::add(x, &self.attn.forward(&self.ln1.forward(x)?, mask, ctx)?)?;
        let m = self.fc2.forward(&ops::gelu(&self.fc1.forward(&self.ln2.forward(&x)?, ctx)?)?, ctx)?;
        ops::add(&x, &m)
    }
}

impl Module for TransformerLayer {
    fn params(&self) -> Vec<Param> {
        let mut v = self.ln1.params();
        v.extend(self.attn.params());
        v.extend(self.ln2.params());
        v.extend(self.fc1.params());
        v.extend(self.fc2.params());
        v
    }
}

#[derive(Clone, Debug)]
/// Shape of a [`TransformerEncoder`] (the `[model]` section's transformer settings).
pub struct TransformerConfig {
    /// Number of blocks (the encoder's depths), >= 1.
    pub layers: usize,
    /// Token width D (also the encoder's output width).
    pub width: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
    /// Patch size for [N, C, H, W] inputs.
    pub patch: (usize, usize),
    /// Per-sample input shape: [C, H, W] (patched) or [L, F] (a feature sequence).
    pub input_shape: Vec<usize>,
}

/// Transformer encoder: tokens (patches of `[N, C, H, W]` or the rows of `[N, L, F]`) are embedded
/// linearly, a learned position embedding is added, pre-norm blocks follow, and the final layer
/// norm's output is mean-pooled over tokens to `[N, width]`. Depths are the blocks.
pub struct TransformerEncoder {
    name: String,
    cfg: TransformerConfig,
    embed: Linear,
    pos: Param,
    blocks: Vec<TransformerLayer>,
    ln: LayerNorm,
    tokens: usize,
}

impl TransformerEncoder {
    /// Errors name the `model.*` field: a patch that does not divide the image, an input shape that
    /// is neither `[C, H, W]` nor `[L, F]`, zero layers, a width not divisible by the heads.
    pub fn new(gpu: &Gpu, name: &str, cfg: TransformerConfig, rng: &mut StdRng) -> Result<TransformerEncoder> {
        let (tokens, feat) = match cfg.input_shape.as_slice() {
            [c, h, w] => {
                let (ph, pw) = cfg.patch;
                if ph == 0 || pw == 0 || h % ph != 0 || w % pw != 0 {
                    return Err(Error::config(
                        "model.patch",
                        format!("patch {:?} must divide the input's {h}x{w}", cfg.patch),
                    ));
                }
                ((h / ph) * (w / pw), c * ph * pw)
            }
            [l, f] => (*l, *f),
            s => return Err(Error::config("model", format!("transformer input must be [C,H,W] or [L,F], got {s:?}"))),
        };
        if cfg.layers == 0 {
            return Err(Error::config("model.layers", "needs at least 1"));
        }
        let embed = Linear::new(gpu, &join(name, "embed"), feat, cfg.width, true, rng)?;
        let pos = param(gpu, join(name, "pos"), &normal_init(rng, tokens * cfg.width, 0.02), &[tokens, cfg.width])?;
        let blocks = (0..cfg.layers)
            .map(|i| TransformerLayer::new(gpu, &join(name, &format!("blocks.{i}")), cfg.width, cfg.heads, cfg.mlp_ratio, rng))
            .collect::<Result<Vec<_>>>()?;
        let ln = LayerNorm::new(gpu, &join(name, "ln"), cfg.width)?;
        Ok(TransformerEncoder { name: name.to_string(), cfg, embed, pos, blocks, ln, tokens })
    }

    fn tokens_of(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let seq = match x.dims() {
            4 => ops::patchify(x, self.cfg.patch)?,
            3 => x.clone(),
            _ => return Err(Error::shape("transformer", format!("expects [N,C,H,W] or [N,L,F], got {:?}", x.shape()))),
        };
        if seq.dim(1) != self.tokens {
            return Err(Error::shape("transformer", format!("expects {} tokens, input {:?} gives {}", self.tokens, x.shape(), seq.dim(1))));
        }
        ops::add(&self.embed.forward(&seq, ctx)?, &self.pos.tensor)
    }

    fn pool(&self, h: &Tensor) -> Result<Tensor> {
        ops::mean(&self.ln.forward(h)?, &[1], false)
    }
}

impl Module for TransformerEncoder {
    fn params(&self) -> Vec<Param> {
        let mut v = self.embed.params();
        v.push(self.pos.clone());
        for b in &self.blocks {
            v.extend(b.params());
        }
        v.extend(self.ln.params());
        v
    }
}

impl Encoder for TransformerEncoder {
    fn out_dim(&self) -> usize {
        self.cfg.width
    }
    fn num_depths(&self) -> usize {
        self.blocks.len()
    }
    fn forward_depths(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = self.tokens_of(x, ctx)?;
        let mut outs = Vec::new();
        for b in &self.blocks {
            h = b.forward(&h, None, ctx)?;
            outs.push(h.clone());
        }
        Ok((self.pool(&h)?, outs))
    }
    fn forward_from(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("transformer", depth, self.num_depths())?;
        let mut h = h.clone();
        for b in &self.blocks[depth + 1..] {
            h = b.forward(&h, None, ctx)?;
        }
        self.pool(&h)
    }
    fn depth_of(&self, param_name: &str) -> Option<usize> {
        let rest = param_name.strip_prefix(&self.name)?.trim_start_matches('.');
        if rest.starts_with("embed") || rest.starts_with("pos") {
            return Some(0);
        }
        if rest.starts_with("ln.") {
            return Some(self.blocks.len() - 1);
        }
        rest.strip_prefix("blocks.")?.split('.').next()?.parse().ok()
    }
}
