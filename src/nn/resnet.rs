//! ResNet18 without its classifier (512-d pooled output), torchvision layout; depths are
//! the stem (after max pool) and layer1..layer4.
use super::{expect_depth, expect_input, join, BatchNorm2d, Conv2d, Ctx, Encoder, Module};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops;
use super::Param;
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// ResNet's basic block: two 3×3 conv–BN pairs with a residual connection (a 1×1 conv–BN projection
/// when the stride or width changes), ReLU after the sum.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    down: Option<(Conv2d, BatchNorm2d)>,
    /// rebuild conv2's input from conv1's output in the backward instead of saving it
    recompute: bool,
}

impl BasicBlock {
    /// `cin` → `cout` channels, downsampling by `stride` in the first conv.
    pub fn new(gpu: &Gpu, name: &str, cin: usize, cout: usize, stride: usize, rng: &mut StdRng) -> Result<BasicBlock> {
        let down = if stride != 1 || cin != cout {
            Some((
                Conv2d::new(gpu, &join(name, "downsample.0"), cin, cout, 1, stride, 0, false, rng)?,
                BatchNorm2d::new(gpu, &join(name, "downsample.1"), cout)?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: Conv2d::new(gpu, &join(name, "conv1"), cin, cout, 3, stride, 1, false, rng)?,
            bn1: BatchNorm2d::new(gpu, &join(name, "bn1"), cout)?,
            conv2: Conv2d::new(gpu, &join(name, "conv2"), cout, cout, 3, 1, 1, false, rng)?,
            bn2: BatchNorm2d::new(gpu, &join(name, "bn2"), cout)?,
            down,
            recompute: false,
        })
    }
    /// x `[N, cin, H, W]` → `[N, cout, ⌈H/stride⌉, ⌈W/stride⌉]`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let Some((c, b)) = &self.down else {
            return self.body(x, x.clone(), ctx);
        };
        // both convolutions read x: under mixed precision one f16 copy serves both (and is
        // what both keep for their weight gradients)
        let x = super::gemm_operand(x)?;
        let skip = c.forward_bn(&x, b, None, false, false, ctx)?;
        self.body(&x, skip, ctx)
    }

    /// The two convolutions on x, plus `skip`, then ReLU.
    fn body(&self, x: &Tensor, skip: Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.recompute && crate::autograd::grad_enabled() {
            let (y, partials) = self.conv1.forward_partials(x, &self.bn1, ctx)?;
            let (h, partials) = self.conv2.forward_after_bn_relu(&y, partials.as_ref(), &self.bn1, &self.bn2, ctx)?;
            let act = ops::BnAct { residual: Some(&skip), relu: true, out: crate::DType::F32 };
            return self.bn2.forward_act(&h, partials.as_ref(), act, ctx);
        }
        // h feeds only conv2: f16 under mixed precision
        let h = self.conv1.forward_bn(x, &self.bn1, None, true, true, ctx)?;
        self.conv2.forward_bn(&h, &self.bn2, Some(&skip), true, false, ctx)
    }
}

impl Module for BasicBlock {
    fn params(&self) -> Vec<Param> {
        let mut v = self.conv1.params();
        v.extend(self.bn1.params());
        v.extend(self.conv2.params());
        v.extend(self.bn2.params());
        if let Some((c, b)) = &self.down {
            v.extend(c.params());
            v.extend(b.params());
        }
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.bn1.buffers();
        v.extend(self.bn2.buffers());
        if let Some((_, b)) = &self.down {
            v.extend(b.buffers());
        }
        v
    }
}

/// ResNet18 encoder (see the module docs): pooled features `[N, 8·base]`, depths stem and
/// layer1..layer4.
pub struct ResNet18 {
    name: String,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<BasicBlock>>,
    /// Channel widths of layer1..layer4 (64, 128, 256, 512 by default).
    widths: [usize; 4],
}

impl ResNet18 {
    /// `in_channels`: 1 for spectrograms, 3 for RGB frames. `base` = 64 gives the standard
    /// network; smaller values scale every width (for tests and small machines).
    pub fn new(gpu: &Gpu, name: &str, in_channels: usize, base: usize, rng: &mut StdRng) -> Result<ResNet18> {
        let widths = [base, base * 2, base * 4, base * 8];
        let conv1 = Conv2d::new(gpu, &join(name, "conv1"), in_channels, base, 7, 2, 3, false, rng)?;
        let bn1 = BatchNorm2d::new(gpu, &join(name, "bn1"), base)?;
        let mut layers = Vec::new();
        let mut cin = base;
        for (i, &w) in widths.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let lname = join(name, &format!("layer{}", i + 1));
            layers.push(vec![
                BasicBlock::new(gpu, &join(&lname, "0"), cin, w, stride, rng)?,
                BasicBlock::new(gpu, &join(&lname, "1"), w, w, 1, rng)?,
            ]);
            cin = w;
        }
        Ok(ResNet18 { name: name.to_string(), conv1, bn1, layers, widths })
    }

    /// With `on`, every basic block recomputes its inner batch norm + ReLU in the backward
    /// instead of holding the second convolution's input (`model.recompute`): one activation
    /// fewer per block between forward and backward, the same values and gradients.
    pub fn with_recompute(mut self, on: bool) -> ResNet18 {
        for b in self.layers.iter_mut().flatten() {
            b.recompute = on;
        }
        self
    }

    fn stem(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = self.conv1.forward_bn(x, &self.bn1, None, true, false, ctx)?;
        ops::max_pool2d(&h, (3, 3), (2, 2), (1, 1))
    }

    fn stage(&self, i: usize, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.layers[i] {
            h = b.forward(&h, ctx)?;
        }
        Ok(h)
    }
}

impl Module for ResNet18 {
    fn params(&self) -> Vec<Param> {
        let mut v = self.conv1.params();
        v.extend(self.bn1.params());
        for l in &self.layers {
            for b in l {
                v.extend(b.params());
            }
        }
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.bn1.buffers();
        for l in &self.layers {
            for b in l {
                v.extend(b.buffers());
            }
        }
        v
    }
}

impl Encoder for ResNet18 {
    fn out_dim(&self) -> usize {
        self.widths[3]
    }
    fn num_depths(&self) -> usize {
        5
    }
    fn forward_depths(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)> {
        expect_input("resnet18", x, 4)?;
        let mut outs = vec![self.stem(x, ctx)?];
        for i in 0..4 {
            let h = self.stage(i, outs.last().expect("stem"), ctx)?;
            outs.push(h);
        }
        let pooled = ops::global_avg_pool(outs.last().expect("layer4"))?;
        Ok((pooled, outs))
    }
    fn forward_from(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("resnet18", depth, self.num_depths())?;
        let mut h = h.clone();
        for i in depth..4 {
            h = self.stage(i, &h, ctx)?;
        }
        ops::global_avg_pool(&h)
    }
    fn forward_depth(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor> {
        expect_depth("resnet18", depth, self.num_depths())?;
        if depth == 0 {
            expect_input("resnet18", h, 4)?;
            return self.stem(h, ctx);
        }
        self.stage(depth - 1, h, ctx)
    }
    fn depth_of(&self, param_name: &str) -> Option<usize> {
        let rest = param_name.strip_prefix(&self.name)?.trim_start_matches('.');
        if rest.starts_with("conv1") || rest.starts_with("bn1") {
            return Some(0);
        }
        (1..=4).find(|i| rest.starts_with(&format!("layer{i}.")))
    }
}
