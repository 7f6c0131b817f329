//! Small encoders: the AV-MNIST reference CNN (4 × conv3×3 → BN → ReLU → max pool 2, widths
//! w-2w-4w-8w, global average pool) and an MLP for flat inputs.
use super::{expect_depth, expect_input, join, BatchNorm2d, Conv2d, Ctx, Encoder, Linear, Module};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use super::Param;
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// The AV-MNIST reference CNN (see the module docs); depths are its conv blocks, output width
/// `width · 2^(depth−1)`.
pub struct SmallCnn {
    name: String,
    blocks: Vec<(Conv2d, BatchNorm2d)>,
    dim: usize,
}

impl SmallCnn {
    /// `depth` blocks (4 in the reference) of widths `width · 2^i`.
    pub fn new(gpu: &Gpu, name: &str, in_channels: usize, width: usize, depth: usize, rng: &mut StdRng) -> Result<SmallCnn> {
        if depth == 0 {
            return Err(Error::config("model.depth", "needs at least 1 block"));
        }
        let mut blocks = Vec::new();
        let mut cin = in_channels;
        for i in 0..depth {
            let w = width << i;
            let bname = join(name, &format!("block{i}"));
            blocks.push((
                Conv2d::new(gpu, &join(&bname, "conv"), cin, w, 3, 1, 1, false, rng)?,
                BatchNorm2d::new(gpu, &join(&bname, "bn"), w)?,
            ));
            cin = w;
        }
        Ok(SmallCnn { name: name.to_string(), blocks, dim: cin })
    }

    fn block(&self, i: usize, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (c, b) = &self.blocks[i];
        let h = c.forward_bn(x, b, None, true, false, ctx)?;
        if h.dim(2) >= 2 && h.dim(3) >= 2 {
            ops::max_pool2d(&h, (2, 2), (2, 2), (0, 0))
        } else {
            Ok(h)
        }
    }
}

impl Module for SmallCnn {
    fn params(&self) -> Vec<Param> {
        self.blocks.iter().flat_map(|(c, b)| c.params().into_iter().chain(b.params())).collect()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.blocks.iter().flat_map(|(_, b)| b.buffers()).collect()
    }
}

impl Encoder for SmallCnn {
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn num_depths(&self) -> usize {
        self.blocks.len()
    }
    fn forward_depths(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)> {
        expect_input("small_cnn", x, 4)?;
        let mut outs: Vec<Tensor> = Vec::new();
        let mut h = x.clone();
        for i in 0..self.blocks.len() {
            h = self.block(i, &h, ctx)?;
            outs.push(h.clone());
        }
        Ok((ops::global_avg_pool(&h)?, outs))
    }
    fn forward_from(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("small_cnn", depth, self.num_depths())?;
        let mut h = h.clone();
        for i in depth + 1..self.blocks.len() {
            h = self.block(i, &h, ctx)?;
        }
        ops::global_avg_pool(&h)
    }
    fn forward_depth(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("small_cnn", depth, self.num_depths())?;
        if depth == 0 {
            expect_input("small_cnn", h, 4)?;
        }
        self.block(depth, h, ctx)
    }
    fn depth_of(&self, param_name: &str) -> Option<usize> {
        let rest = param_name.strip_prefix(&self.name)?.trim_start_matches('.');
        let rest = rest.strip_prefix("block")?;
        rest.split('.').next()?.parse().ok()
    }
}

/// MLP encoder for flat (or flattened) inputs: Linear → ReLU per hidden layer.
pub struct MlpEncoder {
    name: String,
    layers: Vec<Linear>,
    in_dim: usize,
}

impl MlpEncoder {
    /// `hidden`: the width of each Linear → ReLU layer (at least one, a config error naming
    /// `model.hidden` otherwise); the last is the output width.
    pub fn new(gpu: &Gpu, name: &str, in_dim: usize, hidden: &[usize], rng: &mut StdRng) -> Result<MlpEncoder> {
        if hidden.is_empty() {
            return Err(Error::config("model.hidden", "needs at least one hidden width"));
        }
        let mut layers = Vec::new();
        let mut d = in_dim;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(gpu, &join(name, &format!("fc{i}")), d, h, true, rng)?);
            d = h;
        }
        Ok(MlpEncoder { name: name.to_string(), layers, in_dim })
    }
}

impl Module for MlpEncoder {
    fn params(&self) -> Vec<Param> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }
}

impl Encoder for MlpEncoder {
    fn out_dim(&self) -> usize {
        self.layers.last().map(|l| l.out_dim).unwrap_or(self.in_dim)
    }
    fn num_depths(&self) -> usize {
        self.layers.len()
    }
    fn forward_depths(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)> {
        let n = x.dim(0);
        let mut h = x.reshape(&[n, x.numel() / n.max(1)])?;
        if h.dim(1) != self.in_dim {
            return Err(Error::shape("mlp_encoder", format!("expects {} features per sample, got shape {:?}", self.in_dim, x.shape())));
        }
        let mut outs = Vec::new();
        for l in &self.layers {
            h = l.forward_relu(&h, ctx)?;
            outs.push(h.clone());
        }
        Ok((h, outs))
    }
    fn forward_from(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("mlp_encoder", depth, self.num_depths())?;
        let mut h = h.clone();
        for l in &self.layers[depth + 1..] {
            h = l.forward_relu(&h, ctx)?;
        }
        Ok(h)
    }
    fn depth_of(&self, param_name: &str) -> Option<usize> {
        let rest = param_name.strip_prefix(&self.name)?.trim_start_matches('.');
        rest.strip_prefix("fc")?.split('.').next()?.parse().ok()
    }
}
