//! Benchmark cases for every kernel family beyond element-wise and reductions: matmul,
//! conv2d (every distinct ResNet18 shape of the CREMA-D model), attention, softmax and
//! cross-entropy, layer / batch norm, max pooling, optimizer steps, concat and permute.
//!
//! FLOP and byte counts are the *minimal* work of the operation (what an ideal kernel must
//! do), not what our kernels happen to do, so the rate columns compare implementations:
//! - GEMM-like (matmul, conv, attention): 2 flops per multiply-add. Forward+backward counts
//!   the two backward GEMMs (dX, dW) as 2x the forward; attention's backward as 2.5x.
//! - Bytes: every input read once and every output written once (f32, 4 bytes), intermediates
//!   that a fused kernel keeps on chip not counted.
use super::{sets_for, Case, Runner};
use crate::autograd::Gradients;
use crate::error::Result;
use crate::gpu::{ConvTile, Gpu};
use crate::ops::{self, AttentionKernel, Conv2dParams, ConvKernel, MatmulKernel, MatmulOpts};
use crate::optim::{Adam, AdamConfig, Optimizer, Param, Sgd, SgdConfig};
use crate::tensor::Tensor;

/// Random normal data generated on the GPU (seeded; large inputs cost no host time).
fn rnd(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    ops::randn(gpu, shape, 0xBE5C_0000 + seed, 0)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

fn case(name: impl Into<String>, shape: impl Into<String>, flops: f64, bytes: f64, grad: bool, setup: impl Fn(&Gpu) -> Result<Runner> + 'static) -> Case {
    Case { name: name.into(), shape: shape.into(), flops, bytes, grad, runs_on: Box::new(|_| true), setup: Box::new(setup) }
}

/// `k` input sets of tensors with the given shapes (`sets[i][j]` has `shapes[j]`).
fn input_sets(gpu: &Gpu, shapes: &[Vec<usize>], k: usize, track: bool) -> Result<Vec<Vec<Tensor>>> {
    (0..k)
        .map(|i| {
            shapes
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let t = rnd(gpu, s, (i * 16 + j) as u64)?;
                    Ok(if track { t.requires_grad() } else { t })
                })
                .collect()
        })
        .collect()
}

/// One convolution of a network: input `[batch, cin, h, w]`, weight `[cout, cin, k, k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Layer name in ResNet18 terms (`conv1`, `l1`, `l2.0`, `l2.down`, `l2`, ...).
    pub layer: String,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size (square).
    pub k: usize,
    /// Stride (both dims).
    pub stride: usize,
    /// Zero padding (each side).
    pub pad: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

impl ConvShape {
    /// Output size (HO, WO), by [`ops::conv2d_output_size`].
    pub fn out_hw(&self) -> (usize, usize) {
        let p = Conv2dParams { stride: (self.stride, self.stride), padding: (self.pad, self.pad), dilation: (1, 1) };
        ops::conv2d_output_size(self.h, self.w, self.k, self.k, &p)
    }
    /// Forward flops at this batch: 2·M·N·K with M = batch·HO·WO, N = cout, K = cin·k·k.
    pub fn fwd_flops(&self, batch: usize) -> f64 {
        let (ho, wo) = self.out_hw();
        2.0 * (batch * ho * wo) as f64 * self.cout as f64 * (self.cin * self.k * self.k) as f64
    }
    /// Forward bytes: x and w read, y written.
    pub fn fwd_bytes(&self, batch: usize) -> f64 {
        let (ho, wo) = self.out_hw();
        4.0 * (batch * self.cin * self.h * self.w + self.cout * self.cin * self.k * self.k + batch * self.cout * ho * wo) as f64
    }
}

/// Every distinct convolution shape of a ResNet18 (torchvision layout: 7×7/2 stem, 3×3/2
/// max pool, four stages of two basic blocks, 1×1/2 downsample) on a `cin`×`h`×`w` input
/// with base width `base`: stem, layer1's 3×3, and per later stage its strided 3×3
/// (`lN.0`), its 1×1 downsample (`lN.down`) and its unstrided 3×3 (`lN`, three convs).
pub fn resnet18_conv_shapes(cin: usize, h: usize, w: usize, base: usize) -> Vec<ConvShape> {
    let sh = |layer: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize, h: usize, w: usize| ConvShape {
        layer: layer.to_string(),
        cin,
        cout,
        k,
        stride,
        pad,
        h,
        w,
    };
    let mut v = vec![sh("conv1", cin, base, 7, 2, 3, h, w)];
    let (h1, w1) = v[0].out_hw();
    // max pool 3×3, stride 2, padding 1
    let (mut hh, mut ww) = ((h1 + 2 - 3) / 2 + 1, (w1 + 2 - 3) / 2 + 1);
    let mut c = base;
    for i in 0..4 {
        let cout = base << i;
        if i == 0 {
            v.push(sh("l1", c, cout, 3, 1, 1, hh, ww));
        } else {
            let strided = sh(&format!("l{}.0", i + 1), c, cout, 3, 2, 1, hh, ww);
            let (ho, wo) = strided.out_hw();
            v.push(strided);
            v.push(sh(&format!("l{}.down", i + 1), c, cout, 1, 2, 0, hh, ww));
            hh = ho;
            ww = wo;
            v.push(sh(&format!("l{}", i + 1), cout, cout, 3, 1, 1, hh, ww));
        }
        c = cout;
    }
    v
}

/// Forward (`fb = false`) or forward + backward to x and w (`fb = true`) of one conv, its
/// GEMMs on `kernel` (`name:kernel`), or each on its tuned kernel (None; the size rule's tile
/// with tuning off).
fn conv_case(name: String, s: &ConvShape, batch: usize, fb: bool, kernel: Option<ConvKernel>) -> Case {
    let name = match kernel {
        Some(k) => format!("{name}:{}", k.name()),
        None => name,
    };
    let (ho, wo) = s.out_hw();
    let shape = format!("{}x{}x{}x{} *{}k{}s{}", batch, s.cin, s.h, s.w, s.cout, s.k, s.stride);
    let (flops, bytes) = if fb {
        // dX and dW are each a GEMM of the forward's size; traffic: x, w, y read/written
        // three times in all (fwd: x, w -> y; dX: dy, w -> dx; dW: dy, x -> dw).
        (3.0 * s.fwd_flops(batch), 3.0 * s.fwd_bytes(batch))
    } else {
        (s.fwd_flops(batch), s.fwd_bytes(batch))
    };
    let s = s.clone();
    case(name, shape, flops, bytes, fb, move |gpu| {
        let xs = vec![batch, s.cin, s.h, s.w];
        let ws = vec![s.cout, s.cin, s.k, s.k];
        let mut shapes = vec![xs, ws];
        if fb {
            shapes.push(vec![batch, s.cout, ho, wo]); // the output gradient
        }
        let k = sets_for(s.fwd_bytes(batch));
        let sets = input_sets(gpu, &shapes, k, fb)?;
        let p = Conv2dParams { stride: (s.stride, s.stride), padding: (s.pad, s.pad), dilation: (1, 1) };
        Ok(Box::new(move |i| {
            let set = &sets[i % k];
            let y = match kernel {
                Some(k) => ops::conv2d_on_kernel(&set[0], &set[1], None, p, None, k)?,
                None => ops::conv2d(&set[0], &set[1], None, p, None)?,
            };
            if fb {
                let mut g = Gradients::new();
                y.backward_with(set[2].detach(), &mut g)?;
            }
            Ok(())
        }))
    })
}

/// The forward (`fb = false`) or forward + backward to x and w of one conv on f16 x and w
/// (mixed precision's operands; dy f32), every GEMM on `kernel` (`name:kernel`): the
/// cooperative-matrix kernels' rows beside the 128 x 64 tile's on the same operands; a row
/// runs only where its kernel does (tensor cores, not their emulation).
fn conv_half_case(name: String, s: &ConvShape, batch: usize, fb: bool, kernel: ConvKernel) -> Case {
    let name = format!("{name}:{}", kernel.name());
    let shape = format!("{}x{}x{}x{} *{}k{}s{} f16", batch, s.cin, s.h, s.w, s.cout, s.k, s.stride);
    // the operands' traffic at 2 bytes a value, y's (and dy's, dx's) at 4
    let (ho, wo) = s.out_hw();
    let (xb, wb, yb) = ((batch * s.cin * s.h * s.w) as f64, (s.cout * s.cin * s.k * s.k) as f64, (batch * s.cout * ho * wo) as f64);
    let fwd_bytes = 2.0 * (xb + wb) + 4.0 * yb;
    let (flops, bytes) = if fb { (3.0 * s.fwd_flops(batch), fwd_bytes + (4.0 * yb + 2.0 * wb + 4.0 * xb) + (4.0 * yb + 2.0 * xb + 4.0 * wb)) } else { (s.fwd_flops(batch), fwd_bytes) };
    let s = s.clone();
    let mut c = case(name, shape, flops, bytes, fb, move |gpu| {
        let k = sets_for(fwd_bytes);
        let mut shapes = vec![vec![batch, s.cin, s.h, s.w], vec![s.cout, s.cin, s.k, s.k]];
        if fb {
            shapes.push(vec![batch, s.cout, ho, wo]); // the output gradient
        }
        let sets = input_sets(gpu, &shapes, k, fb)?;
        let p = Conv2dParams { stride: (s.stride, s.stride), padding: (s.pad, s.pad), dilation: (1, 1) };
        Ok(Box::new(move |i| {
            let set = &sets[i % k];
            // the casts are part of mixed precision's step, as here
            let (x, w) = (ops::cast(&set[0], crate::DType::F16)?, ops::cast(&set[1], crate::DType::F16)?);
            let y = ops::conv2d_on_kernel(&x, &w, None, p, None, kernel)?;
            if fb {
                let mut g = Gradients::new();
                y.backward_with(set[2].detach(), &mut g)?;
            }
            Ok(())
        }))
    });
    c.runs_on = Box::new(move |gpu| kernel != ConvKernel::Coop || gpu.capabilities().cooperative_matrix);
    c
}

/// One matmul row: `kernel` Auto is what `matmul_ex` runs (the tuner's choice); the others
/// force a variant, so every variant the tuner may pick has its own row (`name:variant`).
fn matmul_case(name: String, m: usize, n: usize, kdim: usize, ta: bool, tb: bool, kernel: MatmulKernel) -> Case {
    let a_shape = if ta { vec![kdim, m] } else { vec![m, kdim] };
    let b_shape = if tb { vec![n, kdim] } else { vec![kdim, n] };
    let flops = 2.0 * (m * n * kdim) as f64;
    let bytes = 4.0 * (m * kdim + kdim * n + m * n) as f64;
    let shape = format!("{}{} . {}{}", dims(&a_shape), if ta { "^T" } else { "" }, dims(&b_shape), if tb { "^T" } else { "" });
    let name = if kernel == MatmulKernel::Auto { name } else { format!("{name}:{}", kernel.name()) };
    let mut c = case(name, shape, flops, bytes, false, move |gpu| {
        let k = sets_for(bytes);
        let sets = input_sets(gpu, &[a_shape.clone(), b_shape.clone()], k, false)?;
        // the cooperative-matrix kernel multiplies f16 matrices
        let dtype = if kernel == MatmulKernel::Coop { crate::DType::F16 } else { crate::DType::F32 };
        let sets = sets.iter().map(|s| s.iter().map(|t| ops::cast(t, dtype)).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
        Ok(Box::new(move |i| {
            let s = &sets[i % k];
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
            ops::matmul_with_kernel(&s[0], &s[1], opts, kernel).map(|_| ())
        }))
    });
    // the cooperative-matrix rows on tensor cores only (not their emulation, a test vehicle)
    c.runs_on = Box::new(move |gpu| kernel.runs_on(gpu) && (kernel != MatmulKernel::Coop || gpu.capabilities().cooperative_matrix));
    c
}

/// The forward (`fb = false`) or forward + backward of attention on f16 q, k and v (mixed
/// precision's operands; dO f32) on `kernel` (`name:kernel`): the cooperative-matrix rows
/// beside the tiles' on the same operands, where the adapter has tensor cores.
fn attention_half_case(b: usize, h: usize, l: usize, dh: usize, fb: bool, kernel: AttentionKernel) -> Case {
    let q = vec![b, h, l, dh];
    let fwd = 4.0 * (b * h * l * l * dh) as f64;
    let t = (b * h * l * dh) as f64; // values of one [B, H, L, Dh] tensor
    // fwd: q, k, v (f16) -> o; bwd: q, k, v, o, dO -> dq, dk, dv
    let (flops, bytes) = if fb { (3.5 * fwd, 6.0 * t + 4.0 * 6.0 * t) } else { (fwd, 6.0 * t + 4.0 * t) };
    let name = format!("attn_L{l}_d{dh}_{}_f16:{}", if fb { "fb" } else { "fwd" }, kernel.name());
    let mut c = case(name, format!("B{b} H{h} L=S{l} Dh{dh} f16"), flops, bytes, fb, move |gpu| {
        let k = sets_for(bytes);
        // q, k, v as f16 leaves (tracked for fb), then dO
        let sets = input_sets(gpu, &vec![q.clone(); if fb { 4 } else { 3 }], k, false)?;
        let leaf = |t: &Tensor| ops::cast(t, crate::DType::F16).map(|h| if fb { h.requires_grad() } else { h });
        let sets = sets.iter().map(|s| s.iter().enumerate().map(|(j, t)| if j < 3 { leaf(t) } else { Ok(t.clone()) }).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
        let scale = 1.0 / (dh as f32).sqrt();
        Ok(Box::new(move |i| {
            let s = &sets[i % k];
            let o = ops::attention_on_kernel(&s[0], &s[1], &s[2], None, scale, kernel)?;
            if fb {
                let mut g = Gradients::new();
                o.backward_with(s[3].detach(), &mut g)?;
            }
            Ok(())
        }))
    });
    c.runs_on = Box::new(move |gpu| kernel == AttentionKernel::Tile || gpu.capabilities().cooperative_matrix);
    c
}

fn attention_case(b: usize, h: usize, l: usize, dh: usize, fb: bool) -> Case {
    let q = vec![b, h, l, dh];
    let fwd = 4.0 * (b * h * l * l * dh) as f64;
    let t = 4.0 * (b * h * l * dh) as f64; // bytes of one [B, H, L, Dh] tensor
    // fwd: q, k, v -> o; bwd: q, k, v, o, do -> dq, dk, dv
    let (flops, bytes) = if fb { (3.5 * fwd, 12.0 * t) } else { (fwd, 4.0 * t) };
    let dtag = if dh == 64 { String::new() } else { format!("d{dh}_") };
    let name = format!("attn_L{l}_{dtag}{}", if fb { "fb" } else { "fwd" });
    let shape = format!("B{b} H{h} L=S{l} Dh{dh}");
    case(name, shape, flops, bytes, fb, move |gpu| {
        let k = sets_for(4.0 * t);
        let sets = input_sets(gpu, &vec![q.clone(); if fb { 4 } else { 3 }], k, fb)?;
        let scale = 1.0 / (dh as f32).sqrt();
        Ok(Box::new(move |i| {
            let s = &sets[i % k];
            let o = ops::attention(&s[0], &s[1], &s[2], None, scale)?;
            if fb {
                let mut g = Gradients::new();
                o.backward_with(s[3].detach(), &mut g)?;
            }
            Ok(())
        }))
    })
}

/// Matmul, conv2d, attention, softmax / cross-entropy, norms, pooling, optimizer steps,
/// concat and permute. `quick`: small sizes that run on a software rasteriser in seconds.
pub fn extra_cases(quick: bool) -> Vec<Case> {
    let families: [fn(bool) -> Vec<Case>; 9] = [matmul_cases, conv_cases, attention_cases, softmax_cases, layer_norm_cases, batch_norm_cases, max_pool_cases, optimizer_cases, movement_cases];
    families.iter().flat_map(|f| f(quick)).collect()
}

/// Benchmark cases: matmul.
fn matmul_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let sizes: &[usize] = if quick { &[128, 256] } else { &[1024, 2048, 4096, 8192] };
    // each size as `matmul_ex` runs it (tuned) and on every variant the tuner may pick
    let kernels = std::iter::once(MatmulKernel::Auto).chain(MatmulKernel::TUNED);
    // (the grouped tile order is the row-by-row one up to 8 row tiles: its rows at n <= 1024
    // and on the weight gradient time the same launch twice)
    for &n in sizes {
        for kernel in kernels.clone() {
            v.push(matmul_case(format!("matmul_n{n}"), n, n, n, false, false, kernel));
        }
    }
    let nt = if quick { 256 } else { 4096 };
    // C = Aᵀ·B (the weight-gradient form dW = Xᵀ·dY) and C = A·Bᵀ (dX = dY·W)
    v.push(matmul_case(format!("matmul_ta_n{nt}"), nt, nt, nt, true, false, MatmulKernel::Auto));
    v.push(matmul_case(format!("matmul_tb_n{nt}"), nt, nt, nt, false, true, MatmulKernel::Auto));
    // a weight gradient whose 256 x 256 output cannot fill a large GPU but whose K (batch x
    // positions) is long: where split-K pays
    let (sq, kk) = if quick { (64, 2048) } else { (256, 65536) };
    for kernel in kernels {
        v.push(matmul_case(format!("matmul_dw_{sq}x{sq}_k{kk}"), sq, sq, kk, true, false, kernel));
    }
    // the AUG model's linear layers at batch 64: learner 512→256, head 256→6 (y = x·Wᵀ + b)
    for (din, dout) in [(512usize, 256usize), (256, 6)] {
        let b = 64;
        let flops = 2.0 * (b * din * dout) as f64;
        let bytes = 4.0 * (b * din + dout * din + dout + b * dout) as f64;
        v.push(case(format!("linear_b{b}_{din}to{dout}"), format!("{b}x{din} . ({dout}x{din})^T + b"), flops, bytes, false, move |gpu| {
            let k = sets_for(bytes);
            let sets = input_sets(gpu, &[vec![b, din], vec![dout, din], vec![dout]], k, false)?;
            Ok(Box::new(move |i| {
                let s = &sets[i % k];
                ops::linear(&s[0], &s[1], Some(&s[2]), None).map(|_| ())
            }))
        }));
    }

    v
}

/// Benchmark cases: conv2d: every distinct ResNet18 shape, both modalities.
fn conv_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let (batch, div) = if quick { (1, 4) } else { (64, 1) };
    for (tag, cin, h, w) in [("v", 3usize, 224usize, 224usize), ("a", 1, 257, 188)] {
        for s in resnet18_conv_shapes(cin, h / div, w / div, 64) {
            v.push(conv_case(format!("conv_{tag}_{}_fwd", s.layer), &s, batch, false, None));
            v.push(conv_case(format!("conv_{tag}_{}_fb", s.layer), &s, batch, true, None));
        }
    }
    // performance.md's reference shape (cuDNN f32 warm: 0.84 ms fwd+bwd on the H100), and
    // the first two layers of the small CNN on AV-MNIST's 65x63 spectrograms (few channels:
    // what the narrow tiles are for); each also on every tile, guarded and in its interior
    // form (`name:tile` and `name:tilei`)
    let r = ConvShape { layer: "ref".into(), cin: 128, cout: 128, k: 3, stride: 1, pad: 1, h: 28 / div, w: 28 / div };
    let c1 = ConvShape { layer: "c1".into(), cin: 1, cout: 8, k: 3, stride: 1, pad: 1, h: 65 / div, w: 63 / div };
    let c2 = ConvShape { layer: "c2".into(), cin: 8, cout: 16, k: 3, stride: 1, pad: 1, h: 32 / div, w: 31 / div };
    for (name, s) in [("conv_ref_3x3_128_fb", &r), ("conv_narrow_1to8_fb", &c1), ("conv_narrow_8to16_fb", &c2)] {
        for kernel in std::iter::once(None).chain(ConvKernel::tiled().map(Some)) {
            v.push(conv_case(name.into(), s, batch, true, kernel));
        }
    }
    // mixed precision's convolutions on f16 operands, forward and forward + backward:
    // tensor cores against the 128 x 64 tile, on the reference shape and the visual
    // ResNet18's first and last stages
    let visual = resnet18_conv_shapes(3, 224 / div, 224 / div, 64);
    let stages = visual.iter().filter(|s| s.layer == "l1" || s.layer == "l4");
    for (name, s) in std::iter::once(("conv_ref_3x3_128".to_string(), &r)).chain(stages.map(|s| (format!("conv_v_{}", s.layer), s))) {
        for (fb, pass) in [(false, "fwd"), (true, "fb")] {
            for kernel in [ConvKernel::Tile(ConvTile::T128x64), ConvKernel::Coop] {
                v.push(conv_half_case(format!("{name}_{pass}_f16"), s, batch, fb, kernel));
            }
        }
    }

    v
}

/// Benchmark cases: attention.
fn attention_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let (ab, ah, lens): (usize, usize, &[usize]) = if quick { (1, 2, &[64]) } else { (64, 8, &[128, 512, 1024, 2048]) };
    for &l in lens {
        v.push(attention_case(ab, ah, l, 64, false));
        v.push(attention_case(ab, ah, l, 64, true));
    }
    // other head sizes (the kernel takes Dh up to 128) at one length
    let (lh, dhs): (usize, &[usize]) = if quick { (64, &[32]) } else { (1024, &[32, 128]) };
    for &dh in dhs {
        v.push(attention_case(ab, ah, lh, dh, false));
        v.push(attention_case(ab, ah, lh, dh, true));
    }
    // f16 operands: the tiles and the tensor cores on the same forward
    if !quick {
        for dh in [64, 128] {
            for fb in [false, true] {
                for kernel in [AttentionKernel::Tile, AttentionKernel::Coop] {
                    v.push(attention_half_case(ab, ah, lh, dh, fb, kernel));
                }
            }
        }
    }

    v
}

/// Benchmark cases: softmax / cross-entropy.
fn softmax_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let big_rows = if quick { 256 } else { 4096 };
    for (rows, cols) in [(64usize, 1000usize), (big_rows, 1024)] {
        let n = (rows * cols) as f64;
        v.push(case(format!("softmax_{rows}x{cols}"), format!("{rows}x{cols}"), 0.0, 8.0 * n, false, move |gpu| {
            let k = sets_for(8.0 * n);
            let sets = input_sets(gpu, &[vec![rows, cols]], k, false)?;
            Ok(Box::new(move |i| ops::softmax(&sets[i % k][0]).map(|_| ())))
        }));
        for fb in [false, true] {
            // fwd reads the logits (+ labels); bwd reads them again and writes dlogits
            let bytes = if fb { 12.0 * n } else { 4.0 * n } + 4.0 * rows as f64;
            let name = format!("xent_{}_{rows}x{cols}", if fb { "fb" } else { "fwd" });
            v.push(case(name, format!("{rows}x{cols}, hard labels"), 0.0, bytes, fb, move |gpu| {
                let k = sets_for(4.0 * n);
                let sets = input_sets(gpu, &[vec![rows, cols]], k, fb)?;
                let lab: Vec<u32> = (0..rows).map(|r| ((r * 7919) % cols) as u32).collect();
                let labels = ops::labels(gpu, &lab, cols)?;
                Ok(Box::new(move |i| {
                    let loss = ops::cross_entropy(&sets[i % k][0], ops::Target::Hard(&labels), None)?;
                    if fb {
                        loss.backward()?;
                    }
                    Ok(())
                }))
            }));
        }
    }

    v
}

/// Benchmark cases: layer norm.
fn layer_norm_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let big_rows = if quick { 256 } else { 4096 };
    let (rows, d) = (big_rows, 1024usize);
    for fb in [false, true] {
        let n = (rows * d) as f64;
        // fwd: x -> y; bwd: x, dy -> dx (+ tiny dweight, dbias)
        let bytes = if fb { 20.0 * n } else { 8.0 * n };
        let name = format!("layer_norm_{}_{rows}x{d}", if fb { "fb" } else { "fwd" });
        v.push(case(name, format!("{rows}x{d}"), 0.0, bytes, fb, move |gpu| {
            let k = sets_for(8.0 * n);
            let sets = input_sets(gpu, &[vec![rows, d], vec![d], vec![d], vec![rows, d]], k, fb)?;
            Ok(Box::new(move |i| {
                let s = &sets[i % k];
                let y = ops::layer_norm(&s[0], &s[1], &s[2], 1e-5)?;
                if fb {
                    let mut g = Gradients::new();
                    y.backward_with(s[3].detach(), &mut g)?;
                }
                Ok(())
            }))
        }));
    }

    v
}

/// Benchmark cases: batch norm (training: batch statistics, running-stat update).
fn batch_norm_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let bn: [usize; 4] = if quick { [4, 32, 14, 14] } else { [64, 128, 28, 28] };
    {
        let n = numel(&bn) as f64;
        v.push(case("batch_norm_train_fb", dims(&bn), 0.0, 20.0 * n, true, move |gpu| {
            let c = bn[1];
            let k = sets_for(8.0 * n);
            let sets = input_sets(gpu, &[bn.to_vec(), vec![c], vec![c], bn.to_vec()], k, true)?;
            let state = ops::BatchNormState::new(gpu, c, 0.1, 1e-5)?;
            Ok(Box::new(move |i| {
                let s = &sets[i % k];
                let y = ops::batch_norm(&s[0], &s[1], &s[2], &state, true)?;
                let mut g = Gradients::new();
                y.backward_with(s[3].detach(), &mut g)
            }))
        }));
    }
    // A residual block's end, batch norm (batch statistics given) + shortcut + ReLU: the one
    // kernel of `ops::batch_norm_act` against the three ops it replaced. `bytes` is what the
    // result needs (x and the shortcut read, y written; the backward's x, g read twice, dx
    // written) for both forms, so their rates compare as their times do (the fb rows also
    // copy their seed).
    for fb in [false, true] {
        for fused in [true, false] {
            let n = numel(&bn) as f64;
            let name = format!("bn_add_relu_{}:{}", if fb { "fb" } else { "fwd" }, if fused { "fused" } else { "separate" });
            v.push(case(name, dims(&bn), 0.0, if fb { 32.0 * n } else { 12.0 * n }, fb, move |gpu| {
                let c = bn[1];
                let k = sets_for(8.0 * n);
                let sets = input_sets(gpu, &[bn.to_vec(), vec![c], vec![c], bn.to_vec(), bn.to_vec()], k, fb)?;
                let state = ops::BatchNormState::new(gpu, c, 0.1, 1e-5)?;
                let stats: Vec<Tensor> = sets.iter().map(|s| ops::batch_norm_stats(&s[0], &state, true)).collect::<Result<_>>()?;
                Ok(Box::new(move |i| {
                    let s = &sets[i % k];
                    let y = if fused {
                        let act = ops::BnAct { residual: Some(&s[3]), relu: true, out: crate::DType::F32 };
                        ops::batch_norm_act(&s[0], &s[1], &s[2], &stats[i % k], true, act)?
                    } else {
                        ops::relu(&ops::add(&ops::batch_norm_apply(&s[0], &s[1], &s[2], &stats[i % k], true)?, &s[3])?)?
                    };
                    if fb {
                        // a gradient of its own, as a later layer's backward hands it over (a
                        // shared one would not be masked in place)
                        let mut g = Gradients::new();
                        y.backward_with(s[4].deep_copy()?, &mut g)?;
                    }
                    Ok(())
                }))
            }));
        }
    }

    v
}

/// Benchmark cases: max pool 3×3 / 2, padding 1 (the ResNet stem).
fn max_pool_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let mp: [usize; 4] = if quick { [2, 16, 56, 56] } else { [64, 64, 112, 112] };
    for fb in [false, true] {
        let n = numel(&mp) as f64;
        let out = [mp[0], mp[1], (mp[2] - 1) / 2 + 1, (mp[3] - 1) / 2 + 1];
        let no = numel(&out) as f64;
        // fwd: x -> y (+ argmax); bwd: dy (+ argmax) -> dx
        let bytes = if fb { 4.0 * (n + 2.0 * no) + 4.0 * (2.0 * no + n) } else { 4.0 * (n + 2.0 * no) };
        let name = format!("max_pool_3x3s2_{}", if fb { "fb" } else { "fwd" });
        v.push(case(name, dims(&mp), 0.0, bytes, fb, move |gpu| {
            let k = sets_for(4.0 * n);
            let sets = input_sets(gpu, &[mp.to_vec(), out.to_vec()], k, fb)?;
            Ok(Box::new(move |i| {
                let s = &sets[i % k];
                let y = ops::max_pool2d(&s[0], (3, 3), (2, 2), (1, 1))?;
                if fb {
                    let mut g = Gradients::new();
                    y.backward_with(s[1].detach(), &mut g)?;
                }
                Ok(())
            }))
        }));
    }

    v
}

/// Benchmark cases: optimizer steps over a ResNet18-sized parameter.
fn optimizer_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let np: usize = if quick { 1 << 18 } else { 11_176_512 }; // ResNet18 without its fc
    for adam in [false, true] {
        // SGD momentum + wd: θ, g, buf read; θ, buf written. Adam: θ, g, m, v read; θ, m, v written.
        let bytes = if adam { 28.0 } else { 20.0 } * np as f64;
        let name = if adam { "adam_step" } else { "sgd_step" };
        let shape = format!("{np} params{}", if adam { "" } else { ", momentum 0.9, wd 1e-4" });
        v.push(case(name, shape, 0.0, bytes, false, move |gpu| {
            let k = sets_for(bytes);
            let mut steps: Vec<(Box<dyn Optimizer>, Gradients)> = Vec::new();
            for i in 0..k {
                let p = Param::new(format!("p{i}"), rnd(gpu, &[np], 100 + i as u64)?.requires_grad());
                let mut g = Gradients::new();
                g.insert(&p.tensor, rnd(gpu, &[np], 200 + i as u64)?);
                let opt: Box<dyn Optimizer> = if adam {
                    Box::new(Adam::new(&[p], AdamConfig::default())?)
                } else {
                    Box::new(Sgd::new(&[p], SgdConfig { lr: 1e-3, momentum: 0.9, weight_decay: 1e-4, ..Default::default() })?)
                };
                steps.push((opt, g));
            }
            Ok(Box::new(move |i| {
                let (opt, g) = &mut steps[i % k];
                opt.step(g)
            }))
        }));
    }

    v
}

/// Benchmark cases: concat / permute (pure data movement).
fn movement_cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let n_elem: usize = if quick { 1 << 20 } else { 1 << 26 };
    {
        let rows = if quick { 256 } else { 4096 };
        let half = n_elem / rows / 2;
        let bytes = 8.0 * n_elem as f64;
        v.push(case("concat_axis1", format!("2 x {rows}x{half} -> {rows}x{}", 2 * half), 0.0, bytes, false, move |gpu| {
            let k = sets_for(bytes);
            let sets = input_sets(gpu, &[vec![rows, half], vec![rows, half]], k, false)?;
            Ok(Box::new(move |i| {
                let s = &sets[i % k];
                ops::concat(&[&s[0], &s[1]], 1).map(|_| ())
            }))
        }));
    }
    let heads: Vec<usize> = if quick { vec![4, 16, 256, 64] } else { vec![64, 16, 1024, 64] };
    let nchw: Vec<usize> = if quick { vec![4, 64, 64, 64] } else { vec![64, 256, 64, 64] };
    for (name, shape, perm) in [("permute_bhld_blhd", heads, [0usize, 2, 1, 3]), ("permute_nchw_nhwc", nchw, [0, 2, 3, 1])] {
        let bytes = 8.0 * numel(&shape) as f64;
        v.push(case(name, format!("{} perm {perm:?}", dims(&shape)), 0.0, bytes, false, move |gpu| {
            let k = sets_for(bytes);
            let sets = input_sets(gpu, std::slice::from_ref(&shape), k, false)?;
            Ok(Box::new(move |i| ops::permute(&sets[i % k][0], &perm).map(|_| ())))
        }));
    }
    v
}
