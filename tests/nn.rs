//! The module layer (`src/nn`): ResNet18 / transformer forwards against an independent f64
//! CPU reference (tests/common/cpu_nn.rs), batch-norm running-stat updates, per-depth
//! continuation (`forward_from`), depth bookkeeping (`depth_of`), AIM weight scales,
//! initialisation statistics, fusion heads and their unimodal views, gradient flow.
mod common;

use common::*;
use cpu_nn::{Named, T};
use equimodal::nn::{
    self, BatchNorm2d, Conv2d, Ctx, Encoder, Fusion, FusionKind, LayerNorm, Linear, MlpEncoder, Module, ResNet18, SmallCnn,
    TransformerConfig, TransformerEncoder,
};
use equimodal::ops::{self, Target};
use equimodal::{Error, Gradients, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

fn srng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn host(t: &Tensor) -> T {
    T::new(t.shape(), t.to_vec().unwrap().into_iter().map(f64::from).collect())
}

fn params_of(m: &dyn Module) -> Named {
    m.params().iter().map(|p| (p.name.clone(), host(&p.tensor))).collect()
}

fn buffers_of(m: &dyn Module) -> Named {
    m.buffers().iter().map(|(n, t)| (n.clone(), host(t))).collect()
}

/// Random input: uploaded tensor and its f32-rounded f64 copy.
fn input(rng: &mut Rng, shape: &[usize]) -> (Tensor, T) {
    let x = round_f32(&rng.uniforms(numel(shape), -1.0, 1.0));
    (upload(&gpu(), &x, shape), T::new(shape, x))
}

/// Make the affine parameters non-trivial (init is weight 1 / bias 0, which would hide a
/// missing bias or a swapped scale): every 1-d weight (norm scales) uniform in [0.5, 1.5],
/// every bias uniform in [-0.3, 0.3].
fn randomize_affine(m: &dyn Module, rng: &mut Rng) {
    for p in m.params() {
        if p.name.ends_with(".bias") {
            p.tensor.write(&to_f32(&rng.uniforms(p.tensor.numel(), -0.3, 0.3))).unwrap();
        } else if p.name.ends_with(".weight") && p.tensor.dims() == 1 {
            p.tensor.write(&to_f32(&rng.uniforms(p.tensor.numel(), 0.5, 1.5))).unwrap();
        }
    }
}

/// Running statistics away from their 0 / 1 init (so eval mode is not a near-identity).
fn randomize_running_stats(m: &dyn Module, rng: &mut Rng) {
    for (name, t) in m.buffers() {
        let v = if name.ends_with("running_mean") { rng.uniforms(t.numel(), -0.3, 0.3) } else { rng.uniforms(t.numel(), 0.5, 2.0) };
        t.write(&to_f32(&v)).unwrap();
    }
}

/// |got - want| <= rel * (|want| + max|want|): relative to the tensor's own scale.
fn close(what: &str, got: &Tensor, want: &T, rel: f64) {
    assert_eq!(got.shape(), want.shape.as_slice(), "{what}: shape");
    let scale = want.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    assert_close(what, &got.to_vec().unwrap(), &want.data, rel, rel * scale);
}

fn close_t(what: &str, got: &Tensor, want: &Tensor, rel: f64) {
    close(what, got, &host(want), rel);
}

fn resnet(in_ch: usize, base: usize, seed: u64) -> ResNet18 {
    ResNet18::new(&gpu(), "enc", in_ch, base, &mut srng(seed)).unwrap()
}

fn tf_cfg(input_shape: &[usize]) -> TransformerConfig {
    TransformerConfig { layers: 2, width: 8, heads: 2, mlp_ratio: 2, patch: (2, 2), input_shape: input_shape.to_vec() }
}

fn transformer(input_shape: &[usize], seed: u64) -> TransformerEncoder {
    TransformerEncoder::new(&gpu(), "tf", tf_cfg(input_shape), &mut srng(seed)).unwrap()
}

/// Backward of sum(w ⊙ y) with a fixed random w; returns the leaf gradients.
fn backward_weighted(y: &Tensor, seed: u64) -> Gradients {
    let mut rng = Rng::new(seed);
    let w = rng.uniforms(y.numel(), -1.0, 1.0);
    let mut g = Gradients::new();
    y.backward_with(upload(y.gpu(), &w, y.shape()), &mut g).unwrap();
    g
}

/// Every parameter got a gradient of its own shape, all finite, not all zero.
fn assert_grads_flow(what: &str, m: &dyn Module, grads: &Gradients) {
    for p in m.params() {
        let g = grads.get(&p.tensor).unwrap_or_else(|| panic!("{what}: no gradient for {}", p.name));
        assert_eq!(g.shape(), p.tensor.shape(), "{what}: gradient shape of {}", p.name);
        let v = g.to_vec().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite gradient for {}", p.name);
        assert!(v.iter().any(|&x| x != 0.0), "{what}: all-zero gradient for {}", p.name);
    }
}

// ---- 1. ResNet18 forward vs the CPU reference ----------------------------------------------

const RESNET_CASES: [(usize, [usize; 4]); 2] = [(1, [2, 1, 32, 40]), (3, [2, 3, 33, 29])];

fn check_resnet_depth_shapes(outs: &[Tensor], n: usize, base: usize) {
    assert_eq!(outs.len(), 5);
    for (d, o) in outs.iter().enumerate() {
        let c = if d == 0 { base } else { base << (d - 1) };
        assert_eq!(o.dims(), 4, "depth {d}");
        assert_eq!(&o.shape()[..2], &[n, c], "depth {d} shape {:?}", o.shape());
    }
}

#[test]
fn resnet18_eval_matches_cpu_reference() {
    let base = 4;
    for (case, &(in_ch, shape)) in RESNET_CASES.iter().enumerate() {
        let mut rng = Rng::new(100 + case as u64);
        let net = resnet(in_ch, base, 7 + case as u64);
        randomize_affine(&net, &mut rng);
        randomize_running_stats(&net, &mut rng);
        let p = params_of(&net);
        let mut bufs = buffers_of(&net);
        let before = bufs.clone();
        let (x, xh) = input(&mut rng, &shape);
        let (pooled, outs) = net.forward_depths(&x, &Ctx::eval()).unwrap();
        let (want_pooled, want_outs) = cpu_nn::resnet18(&p, &mut bufs, "enc", &xh, false);
        assert_eq!(pooled.shape(), &[shape[0], 8 * base]);
        assert_eq!(net.out_dim(), 8 * base);
        check_resnet_depth_shapes(&outs, shape[0], base);
        for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
            // 17 conv layers deep (sums of up to 1,152 products each): 1e-4 of the tensor's scale
            close(&format!("resnet eval {shape:?} depth {d}"), o, w, 1e-4);
        }
        close(&format!("resnet eval {shape:?} pooled"), &pooled, &want_pooled, 1e-4);
        // eval never touches the running statistics
        for (name, t) in net.buffers() {
            close(&format!("eval leaves {name}"), &t, &before[&name], 0.0);
        }
    }
}

#[test]
fn resnet18_train_matches_cpu_reference_and_updates_running_stats() {
    let base = 4;
    for (case, &(in_ch, shape)) in RESNET_CASES.iter().enumerate() {
        let mut rng = Rng::new(200 + case as u64);
        let net = resnet(in_ch, base, 17 + case as u64);
        randomize_affine(&net, &mut rng);
        randomize_running_stats(&net, &mut rng);
        let p = params_of(&net);
        let mut bufs = buffers_of(&net);
        let before = bufs.clone();
        let (x, xh) = input(&mut rng, &shape);

        // batch statistics without updating the running ones: same outputs, buffers kept
        let frozen = Ctx { training: true, update_stats: false, ..Default::default() };
        let (pooled_f, outs_f) = net.forward_depths(&x, &frozen).unwrap();
        for (name, t) in net.buffers() {
            close(&format!("update_stats=false leaves {name}"), &t, &before[&name], 0.0);
        }

        let (pooled, outs) = net.forward_depths(&x, &Ctx::train()).unwrap();
        let (want_pooled, want_outs) = cpu_nn::resnet18(&p, &mut bufs, "enc", &xh, true);
        check_resnet_depth_shapes(&outs, shape[0], base);
        for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
            // training-mode batch norms over as few as 4 values (layer4: 2 samples at 1x2 or
            // 2x1) divide by small batch deviations, which amplifies f32 errors ~10x over eval
            close(&format!("resnet train {shape:?} depth {d}"), o, w, 1e-3);
            close_t(&format!("resnet train (frozen stats) {shape:?} depth {d}"), &outs_f[d], o, 1e-6);
        }
        close(&format!("resnet train {shape:?} pooled"), &pooled, &want_pooled, 1e-3);
        close_t(&format!("resnet train (frozen stats) {shape:?} pooled"), &pooled_f, &pooled, 1e-6);

        // running stats: updated once, in place, with momentum 0.1 and the unbiased variance
        let got = net.buffers();
        assert_eq!(got.len(), bufs.len());
        for (name, t) in got {
            close(&format!("running stat {name} after one training step"), &t, &bufs[&name], 1e-4);
            let moved = t.to_vec().unwrap().iter().zip(&before[&name].data).any(|(a, b)| (*a as f64 - b).abs() > 1e-6);
            assert!(moved, "{name} was not updated");
        }
    }
}

// ---- 2. forward_from ---------------------------------------------------------------------

fn check_forward_from(what: &str, enc: &dyn Encoder, x: &Tensor, ctx: &Ctx) {
    let (pooled, outs) = enc.forward_depths(x, ctx).unwrap();
    assert_eq!(outs.len(), enc.num_depths(), "{what}: one output per depth");
    assert_eq!(pooled.shape(), &[x.dim(0), enc.out_dim()], "{what}: pooled shape");
    close_t(&format!("{what}: forward == forward_depths.0"), &enc.forward(x, ctx).unwrap(), &pooled, 1e-6);
    for (d, h) in outs.iter().enumerate() {
        let y = enc.forward_from(h, d, ctx).unwrap();
        close_t(&format!("{what}: forward_from(h_{d}, {d})"), &y, &pooled, 1e-5);
    }
    let last = outs.last().unwrap();
    let r = enc.forward_from(last, enc.num_depths(), ctx);
    assert!(matches!(r, Err(Error::Shape { .. })), "{what}: forward_from past the last depth must be a shape error");
}

/// forward_depth(·, d) chained from the input gives every depth's output of forward_depths.
fn check_forward_depth(what: &str, enc: &dyn Encoder, x: &Tensor, ctx: &Ctx) {
    let (_, outs) = enc.forward_depths(x, ctx).unwrap();
    let mut h = x.clone();
    for (d, want) in outs.iter().enumerate() {
        h = enc.forward_depth(&h, d, ctx).unwrap();
        close_t(&format!("{what}: forward_depth {d}"), &h, want, 1e-6);
    }
    let r = enc.forward_depth(&h, enc.num_depths(), ctx);
    assert!(matches!(r, Err(Error::Shape { .. })), "{what}: forward_depth past the last depth must be a shape error");
}

#[test]
fn forward_from_every_depth_equals_pooled_output() {
    let g = gpu();
    let mut rng = Rng::new(300);
    let frozen_train = Ctx { training: true, update_stats: false, ..Default::default() };

    let net = resnet(3, 4, 31);
    randomize_running_stats(&net, &mut rng);
    let (x, _) = input(&mut rng, &[2, 3, 33, 29]);
    check_forward_from("resnet18 eval", &net, &x, &Ctx::eval());
    check_forward_from("resnet18 train", &net, &x, &frozen_train);
    check_forward_depth("resnet18 train", &net, &x, &frozen_train);

    let cnn = SmallCnn::new(&g, "cnn", 1, 3, 4, &mut srng(32)).unwrap();
    let (x, _) = input(&mut rng, &[2, 1, 20, 18]);
    check_forward_from("small_cnn eval", &cnn, &x, &Ctx::eval());
    check_forward_from("small_cnn train", &cnn, &x, &frozen_train);
    check_forward_depth("small_cnn eval", &cnn, &x, &Ctx::eval());

    let mlp = MlpEncoder::new(&g, "mlp", 12, &[7, 9, 5], &mut srng(33)).unwrap();
    randomize_affine(&mlp, &mut rng);
    let (x, _) = input(&mut rng, &[3, 3, 4]);
    check_forward_from("mlp", &mlp, &x, &Ctx::eval());
    // only the convolutional encoders run one depth at a time (Greedy's MMTMs need it)
    let e = mlp.forward_depth(&x, 0, &Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("model.encoder"), "{e}");

    let tf = transformer(&[2, 4, 6], 34);
    randomize_affine(&tf, &mut rng);
    let (x, _) = input(&mut rng, &[2, 2, 4, 6]);
    check_forward_from("transformer", &tf, &x, &Ctx::eval());
}

// ---- 3. depth_of -----------------------------------------------------------------------------

fn check_depths(what: &str, enc: &dyn Encoder, other_prefixes: &[&str]) {
    let mut seen = BTreeSet::new();
    for p in enc.params() {
        let d = enc.depth_of(&p.name).unwrap_or_else(|| panic!("{what}: {} has no depth", p.name));
        assert!(d < enc.num_depths(), "{what}: {} -> depth {d} >= {}", p.name, enc.num_depths());
        seen.insert(d);
        // a parameter of another module whose name merely shares a prefix is not ours
        for other in other_prefixes {
            let (_, rest) = p.name.split_once('.').unwrap();
            let foreign = format!("{other}.{rest}");
            assert_eq!(enc.depth_of(&foreign), None, "{what}: foreign parameter {foreign} got a depth");
        }
    }
    assert_eq!(seen, (0..enc.num_depths()).collect::<BTreeSet<_>>(), "{what}: depths covered");
}

#[test]
fn depth_of_maps_every_parameter_and_covers_all_depths() {
    let g = gpu();
    let net = resnet(1, 2, 41);
    check_depths("resnet18", &net, &["enc2", "encoder", "x"]);
    // torchvision's grouping: the stem (conv1, bn1) is depth 0, layer{i} is depth i
    assert_eq!(net.depth_of("enc.conv1.weight"), Some(0));
    assert_eq!(net.depth_of("enc.bn1.bias"), Some(0));
    assert_eq!(net.depth_of("enc.layer1.0.conv1.weight"), Some(1));
    assert_eq!(net.depth_of("enc.layer3.0.downsample.0.weight"), Some(3));
    assert_eq!(net.depth_of("enc.layer4.1.bn2.weight"), Some(4));

    let cnn = SmallCnn::new(&g, "cnn", 1, 3, 4, &mut srng(42)).unwrap();
    check_depths("small_cnn", &cnn, &["cnn2", "x"]);
    assert_eq!(cnn.depth_of("cnn.block2.conv.weight"), Some(2));

    let mlp = MlpEncoder::new(&g, "mlp", 12, &[7, 9, 5], &mut srng(43)).unwrap();
    check_depths("mlp", &mlp, &["mlp2", "x"]);
    assert_eq!(mlp.depth_of("mlp.fc1.bias"), Some(1));

    let tf = transformer(&[2, 4, 6], 44);
    check_depths("transformer", &tf, &["tf2", "x"]);
    assert_eq!(tf.depth_of("tf.embed.weight"), Some(0));
    assert_eq!(tf.depth_of("tf.pos"), Some(0));
    assert_eq!(tf.depth_of("tf.blocks.1.attn.qkv.weight"), Some(1));
}

// ---- 4. AIM weight scales ----------------------------------------------------------------------

/// `make()` twice gives identical modules (seeded init). Module A runs with weight scales
/// on `names`; module B has those weights multiplied by the scales on the host. Forwards
/// must agree; dL/dW_A = scale ⊙ dL/dW_B (exactly 0 where the scale is 0), and every other
/// parameter's gradient is the same in both.
fn check_weight_scales(what: &str, make: &dyn Fn() -> Box<dyn Encoder>, x: &Tensor, names: &[&str], base: Ctx, seed: u64) {
    let g = gpu();
    let (a, b) = (make(), make());
    let mut rng = Rng::new(seed);
    let pa: HashMap<String, Tensor> = a.params().into_iter().map(|p| (p.name, p.tensor)).collect();
    let pb: HashMap<String, Tensor> = b.params().into_iter().map(|p| (p.name, p.tensor)).collect();
    let mut scales = HashMap::new();
    let mut host_scales = HashMap::new();
    for &name in names {
        let w = pa.get(name).unwrap_or_else(|| panic!("{what}: no parameter {name}"));
        let s: Vec<f64> = (0..w.numel()).map(|_| if rng.uniform() < 0.3 { 0.0 } else { rng.range(0.25, 1.75) }).collect();
        let s = round_f32(&s);
        assert!(s.contains(&0.0) && s.iter().any(|&v| v != 0.0), "{what}: {name} scale needs zeros and non-zeros");
        let wv = w.to_vec().unwrap();
        let scaled: Vec<f32> = wv.iter().zip(&s).map(|(&w, &s)| (w as f64 * s) as f32).collect();
        pb[name].write(&scaled).unwrap();
        scales.insert(name.to_string(), upload(&g, &s, w.shape()));
        host_scales.insert(name.to_string(), s);
    }
    let ctx_a = Ctx { weight_scales: Some(Arc::new(scales)), ..base.clone() };
    let ya = a.forward(x, &ctx_a).unwrap();
    let yb = b.forward(x, &base).unwrap();
    close_t(&format!("{what}: scaled forward == forward of host-scaled copy"), &ya, &yb, 1e-5);

    let ga = backward_weighted(&ya, seed + 1);
    let gb = backward_weighted(&yb, seed + 1);
    for (name, ta) in &pa {
        let da = ga.get(ta).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let db = gb.get(&pb[name]).unwrap_or_else(|| panic!("{what}: no gradient for copy's {name}"));
        match host_scales.get(name) {
            Some(s) => {
                let dav = da.to_vec().unwrap();
                for (i, (&gv, &sv)) in dav.iter().zip(s).enumerate() {
                    if sv == 0.0 {
                        assert_eq!(gv, 0.0, "{what}: {name}[{i}] gradient must be 0 where the scale is 0");
                    }
                }
                let dbv = db.to_vec().unwrap();
                let want: Vec<f64> = dbv.iter().zip(s).map(|(&g, &s)| g as f64 * s).collect();
                assert!(want.iter().any(|&v| v != 0.0), "{what}: {name}: degenerate gradient");
                close(&format!("{what}: d/d{name} == scale ⊙ unmasked gradient"), da, &T::new(da.shape(), want), 1e-4);
            }
            None => close_t(&format!("{what}: d/d{name} unchanged"), da, db, 1e-4),
        }
    }
}

#[test]
fn weight_scales_equal_host_scaled_weights_and_mask_gradients() {
    let g = gpu();
    let mut rng = Rng::new(400);
    let (x, _) = input(&mut rng, &[2, 1, 32, 40]);
    // in training, batch norm normalises with the batch's statistics, which the scaled
    // convolution's epilogue computes (`Conv2d::forward_partials`): AIM's auxiliary forward
    // with aux_bn = "own"
    let scaled = ["enc.conv1.weight", "enc.layer2.0.conv1.weight", "enc.layer3.0.downsample.0.weight", "enc.layer4.1.conv2.weight"];
    for (what, ctx, seed) in [("resnet18", Ctx::eval(), 401), ("resnet18 training", Ctx::train(), 404)] {
        check_weight_scales(what, &|| Box::new(resnet(1, 4, 51)) as Box<dyn Encoder>, &x, &scaled, ctx, seed);
    }
    let (x, _) = input(&mut rng, &[3, 12]);
    let g2 = g.clone();
    check_weight_scales(
        "mlp",
        &move || Box::new(MlpEncoder::new(&g2, "mlp", 12, &[7, 5], &mut srng(52)).unwrap()) as Box<dyn Encoder>,
        &x,
        &["mlp.fc0.weight", "mlp.fc1.weight"],
        Ctx::eval(),
        402,
    );
    let (x, _) = input(&mut rng, &[2, 2, 4, 6]);
    check_weight_scales(
        "transformer",
        &|| Box::new(transformer(&[2, 4, 6], 53)) as Box<dyn Encoder>,
        &x,
        &["tf.embed.weight", "tf.blocks.0.attn.qkv.weight", "tf.blocks.1.attn.out.weight", "tf.blocks.1.fc1.weight"],
        Ctx::eval(),
        403,
    );
}

// ---- 5. initialisation statistics ------------------------------------------------------------

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

fn check_normal(what: &str, t: &Tensor, std: f64) {
    let v = t.to_vec().unwrap();
    let (m, s) = mean_std(&v);
    assert!((s / std - 1.0).abs() < 0.03, "{what}: sample std {s} vs {std} ({} values)", v.len());
    assert!(m.abs() < 5.0 * std / (v.len() as f64).sqrt(), "{what}: sample mean {m} (std {std}, {} values)", v.len());
    // normal, not uniform: ~68.3% within one std
    let within = v.iter().filter(|&&x| (x as f64).abs() < std).count() as f64 / v.len() as f64;
    assert!((within - 0.6827).abs() < 0.01, "{what}: {within} of the values within one std");
}

fn check_const(what: &str, t: &Tensor, value: f32) {
    assert!(t.to_vec().unwrap().iter().all(|&x| x == value), "{what}: expected all {value}");
}

#[test]
fn initialisation_statistics() {
    let g = gpu();
    let mut r = srng(61);
    // kaiming-normal, fan_out mode: std = sqrt(2 / (out * k * k))
    let c = Conv2d::new(&g, "c", 48, 96, 3, 1, 1, false, &mut r).unwrap();
    assert_eq!(c.weight.tensor.shape(), &[96, 48, 3, 3]);
    check_normal("conv3x3 weight", &c.weight.tensor, (2.0 / (96.0 * 9.0f64)).sqrt());
    let c = Conv2d::new(&g, "c1", 160, 320, 1, 2, 0, true, &mut r).unwrap();
    check_normal("conv1x1 weight", &c.weight.tensor, (2.0f64 / 320.0).sqrt());
    check_const("conv bias", &c.bias.as_ref().unwrap().tensor, 0.0);
    let c = Conv2d::new(&g, "c7", 3, 64, 7, 2, 3, false, &mut r).unwrap();
    check_normal("conv7x7 (3 in) weight", &c.weight.tensor, (2.0 / (64.0 * 49.0f64)).sqrt());
    // xavier-normal: std = sqrt(2 / (in + out))
    let l = Linear::new(&g, "l", 300, 200, true, &mut r).unwrap();
    assert_eq!(l.weight.tensor.shape(), &[200, 300]);
    check_normal("linear weight", &l.weight.tensor, (2.0f64 / 500.0).sqrt());
    check_const("linear bias", &l.bias.as_ref().unwrap().tensor, 0.0);
    let bn = BatchNorm2d::new(&g, "bn", 37).unwrap();
    check_const("bn weight", &bn.weight.tensor, 1.0);
    check_const("bn bias", &bn.bias.tensor, 0.0);
    check_const("bn running_mean", &bn.state.running_mean, 0.0);
    check_const("bn running_var", &bn.state.running_var, 1.0);
    assert!((bn.state.momentum - 0.1).abs() < 1e-7 && (bn.state.eps - 1e-5).abs() < 1e-12);
    let ln = LayerNorm::new(&g, "ln", 37).unwrap();
    check_const("ln weight", &ln.weight.tensor, 1.0);
    check_const("ln bias", &ln.bias.tensor, 0.0);

    // the full-size ResNet18 trunk has torchvision's layout: 60 parameter tensors,
    // 11,176,512 values (11,689,512 minus the 512x1000 fc), 20 batch norms
    let net = ResNet18::new(&g, "r", 3, 64, &mut r).unwrap();
    let ps = net.params();
    assert_eq!(ps.len(), 60);
    assert_eq!(ps.iter().map(|p| p.tensor.numel()).sum::<usize>(), 11_176_512);
    assert_eq!(net.buffers().len(), 40);
    assert_eq!(net.out_dim(), 512);
    let shapes: HashMap<String, Vec<usize>> = ps.iter().map(|p| (p.name.clone(), p.tensor.shape().to_vec())).collect();
    assert_eq!(shapes["r.conv1.weight"], [64, 3, 7, 7]);
    assert_eq!(shapes["r.layer2.0.downsample.0.weight"], [128, 64, 1, 1]);
    assert_eq!(shapes["r.layer4.1.conv2.weight"], [512, 512, 3, 3]);
    assert_eq!(shapes["r.layer4.1.bn2.bias"], [512]);
    assert!(!shapes.contains_key("r.layer1.0.downsample.0.weight"));
    for p in &ps {
        if p.tensor.dims() == 4 && p.tensor.numel() >= 30_000 {
            let s = p.tensor.shape();
            check_normal(&p.name, &p.tensor, (2.0 / (s[0] * s[2] * s[3]) as f64).sqrt());
        } else if p.tensor.dims() == 1 {
            check_const(&p.name, &p.tensor, if p.name.ends_with("weight") { 1.0 } else { 0.0 });
        }
    }
}

// ---- 6. transformer vs the CPU reference ---------------------------------------------------

#[test]
fn transformer_matches_cpu_reference_and_gradients_flow() {
    let cfg = tf_cfg(&[1, 1]);
    for (case, (sample, n)) in [(vec![2usize, 4, 6], 2usize), (vec![5, 3], 3)].into_iter().enumerate() {
        let mut rng = Rng::new(600 + case as u64);
        let tf = transformer(&sample, 60 + case as u64);
        randomize_affine(&tf, &mut rng);
        let p = params_of(&tf);
        let mut shape = vec![n];
        shape.extend(&sample);
        let (x, xh) = input(&mut rng, &shape);
        let (pooled, outs) = tf.forward_depths(&x, &Ctx::eval()).unwrap();
        let (want, want_outs) = cpu_nn::transformer(&p, "tf", &xh, cfg.layers, cfg.heads, cfg.patch);
        assert_eq!(outs.len(), 2);
        for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
            // attention, layer norms and GELU MLPs twice over: 1e-4 of the tensor's scale
            close(&format!("transformer {shape:?} block {d}"), o, w, 1e-4);
        }
        close(&format!("transformer {shape:?} pooled"), &pooled, &want, 1e-4);
        let grads = backward_weighted(&pooled, 610 + case as u64);
        assert_grads_flow(&format!("transformer {shape:?}"), &tf, &grads);
    }
    // typed errors: wrong token count, bad head split, bad patch
    let tf = transformer(&[2, 4, 6], 62);
    let (x, _) = input(&mut Rng::new(620), &[2, 2, 4, 8]);
    assert!(matches!(tf.forward(&x, &Ctx::eval()), Err(Error::Shape { .. })));
    let (x, _) = input(&mut Rng::new(621), &[2, 2, 4]);
    assert!(matches!(tf.forward(&x, &Ctx::eval()), Err(Error::Shape { .. })));
    let bad_heads = TransformerConfig { heads: 3, ..tf_cfg(&[2, 4, 6]) };
    assert!(matches!(TransformerEncoder::new(&gpu(), "t", bad_heads, &mut srng(1)), Err(Error::Config { .. })));
    let bad_patch = TransformerConfig { patch: (3, 2), ..tf_cfg(&[2, 4, 6]) };
    assert!(matches!(TransformerEncoder::new(&gpu(), "t", bad_patch, &mut srng(1)), Err(Error::Config { .. })));
}

// ---- 7. fusion heads ------------------------------------------------------------------------

fn fusion_ref(kind: FusionKind, p: &Named, feats: &[T], d1: usize) -> T {
    let g = |s: &str| cpu_nn::get(p, &format!("head.{s}"));
    match kind {
        FusionKind::Sum => {
            let mut acc = cpu_nn::linear(&feats[0], g("fc.0.weight"), Some(g("fc.0.bias")));
            for (m, f) in feats.iter().enumerate().skip(1) {
                acc = cpu_nn::add(&acc, &cpu_nn::linear(f, g(&format!("fc.{m}.weight")), Some(g(&format!("fc.{m}.bias")))));
            }
            acc
        }
        FusionKind::Concat => {
            let n = feats[0].dim(0);
            let total: usize = feats.iter().map(|f| f.dim(1)).sum();
            let mut cat = T::zeros(&[n, total]);
            for r in 0..n {
                let mut off = 0;
                for f in feats {
                    let d = f.dim(1);
                    cat.data[r * total + off..r * total + off + d].copy_from_slice(&f.data[r * d..(r + 1) * d]);
                    off += d;
                }
            }
            cpu_nn::linear(&cat, g("fc_out.weight"), Some(g("fc_out.bias")))
        }
        FusionKind::Film => {
            let gb = cpu_nn::linear(&feats[0], g("fc.weight"), Some(g("fc.bias")));
            let n = feats[0].dim(0);
            let mut h = T::zeros(&[n, d1]);
            for r in 0..n {
                for i in 0..d1 {
                    h.data[r * d1 + i] = gb.data[r * 2 * d1 + i] * feats[1].data[r * d1 + i] + gb.data[r * 2 * d1 + d1 + i];
                }
            }
            cpu_nn::linear(&h, g("fc_out.weight"), Some(g("fc_out.bias")))
        }
        FusionKind::Gated => {
            let gate = cpu_nn::sigmoid(&cpu_nn::linear(&feats[0], g("fc_x.weight"), Some(g("fc_x.bias"))));
            let v = cpu_nn::linear(&feats[1], g("fc_y.weight"), Some(g("fc_y.bias")));
            cpu_nn::linear(&cpu_nn::mul(&gate, &v), g("fc_out.weight"), Some(g("fc_out.bias")))
        }
    }
}

/// The spec's unimodal view of modality m (README, Methods: joint).
fn unimodal_ref(kind: FusionKind, p: &Named, feats: &[T], m: usize, d1: usize) -> T {
    let g = |s: &str| cpu_nn::get(p, &format!("head.{s}"));
    match kind {
        FusionKind::Sum => cpu_nn::linear(&feats[m], g(&format!("fc.{m}.weight")), Some(g(&format!("fc.{m}.bias")))),
        FusionKind::Concat => {
            // x_m · W[:, slice]ᵀ + b / M
            let w = g("fc_out.weight");
            let (k, total) = (w.dim(0), w.dim(1));
            let off: usize = feats[..m].iter().map(|f| f.dim(1)).sum();
            let d = feats[m].dim(1);
            let ws = T::new(&[k, d], (0..k).flat_map(|o| (0..d).map(move |i| (o, i))).map(|(o, i)| w.data[o * total + off + i]).collect());
            let b = g("fc_out.bias").map(|v| v / feats.len() as f64);
            cpu_nn::linear(&feats[m], &ws, Some(&b))
        }
        FusionKind::Film | FusionKind::Gated => {
            let zeroed: Vec<T> = feats.iter().enumerate().map(|(i, f)| if i == m { f.clone() } else { T::zeros(&f.shape) }).collect();
            fusion_ref(kind, p, &zeroed, d1)
        }
    }
}

#[test]
fn fusion_heads_match_reference_and_unimodal_views() {
    let g = gpu();
    let classes = 4;
    let cases: [(FusionKind, &[usize], usize); 8] = [
        (FusionKind::Sum, &[5, 7], 6),
        (FusionKind::Sum, &[5, 7, 3], 6),
        (FusionKind::Concat, &[5, 7], 6),
        (FusionKind::Concat, &[5, 7, 3], 6),
        // FiLM's inner width is dims[1] whatever `hidden` says (it modulates y in place)
        (FusionKind::Film, &[5, 7], 7),
        (FusionKind::Film, &[5, 7], 3),
        (FusionKind::Film, &[6, 6], 4),
        (FusionKind::Gated, &[5, 7], 6),
    ];
    for (case, &(kind, dims, hidden)) in cases.iter().enumerate() {
        let what = format!("{kind:?} fusion {dims:?}");
        let mut rng = Rng::new(700 + case as u64);
        let head = Fusion::new(&g, "head", kind, dims, classes, hidden, &mut srng(70 + case as u64)).unwrap();
        assert_eq!(head.kind, kind);
        randomize_affine(&head, &mut rng);
        let p = params_of(&head);
        let n = 3;
        let (ts, hs): (Vec<Tensor>, Vec<T>) = dims.iter().map(|&d| input(&mut rng, &[n, d])).unzip();
        let y = head.forward(&ts, &Ctx::eval()).unwrap();
        close(&format!("{what} forward"), &y, &fusion_ref(kind, &p, &hs, dims[1]), 1e-5);
        for (m, t) in ts.iter().enumerate() {
            let u = head.unimodal(m, t, &Ctx::eval()).unwrap();
            close(&format!("{what} unimodal({m})"), &u, &unimodal_ref(kind, &p, &hs, m, dims[1]), 1e-5);
        }
        // gradients reach every parameter of the head and every modality's features
        let tracked: Vec<Tensor> = ts.iter().map(|t| t.requires_grad()).collect();
        let grads = backward_weighted(&head.forward(&tracked, &Ctx::eval()).unwrap(), 710 + case as u64);
        assert_grads_flow(&what, &head, &grads);
        for (m, t) in tracked.iter().enumerate() {
            assert!(grads.get(t).is_some(), "{what}: no gradient for modality {m}'s features");
        }
        // wrong feature width / count: typed shape errors
        let wrong = Tensor::zeros(&g, &[n, dims[0] + 1]).unwrap();
        let mut bad = ts.clone();
        bad[0] = wrong;
        assert!(matches!(head.forward(&bad, &Ctx::eval()), Err(Error::Shape { .. })), "{what}: wrong width");
        assert!(matches!(head.forward(&ts[..1], &Ctx::eval()), Err(Error::Shape { .. })), "{what}: one modality");
        let r = head.unimodal(dims.len(), &ts[0], &Ctx::eval());
        assert!(matches!(r, Err(Error::Shape { .. })), "{what}: unimodal view of a modality the head does not have");
        let r = head.unimodal(0, &bad[0], &Ctx::eval());
        assert!(matches!(r, Err(Error::Shape { .. })), "{what}: unimodal view with the wrong width");
    }
    // FiLM and gated are defined for exactly two modalities: a typed config error
    for kind in [FusionKind::Film, FusionKind::Gated] {
        let r = Fusion::new(&g, "head", kind, &[4, 4, 4], classes, 4, &mut srng(79));
        assert!(matches!(r, Err(Error::Config { .. })), "{kind:?} with 3 modalities must be a config error");
    }
    assert!(matches!(Fusion::new(&g, "head", FusionKind::Sum, &[4], classes, 4, &mut srng(79)), Err(Error::Config { .. })));
    assert!(matches!("mean".parse::<FusionKind>(), Err(Error::Config { .. })));
    assert_eq!("gated".parse::<FusionKind>().unwrap(), FusionKind::Gated);
}

// ---- 8. small encoders: shapes and gradients ----------------------------------------------------

#[test]
fn small_cnn_and_mlp_shapes_and_gradients() {
    let g = gpu();
    let mut rng = Rng::new(800);

    // SmallCnn: widths w·2^i, 2x2 max pool per block while the map allows it
    let cnn = SmallCnn::new(&g, "cnn", 1, 3, 4, &mut srng(81)).unwrap();
    assert_eq!(cnn.out_dim(), 24);
    assert_eq!(cnn.num_depths(), 4);
    let (x, _) = input(&mut rng, &[2, 1, 20, 18]);
    let (pooled, outs) = cnn.forward_depths(&x, &Ctx::train()).unwrap();
    assert_eq!(pooled.shape(), &[2, 24]);
    let want: [[usize; 4]; 4] = [[2, 3, 10, 9], [2, 6, 5, 4], [2, 12, 2, 2], [2, 24, 1, 1]];
    for (d, o) in outs.iter().enumerate() {
        assert_eq!(o.shape(), &want[d], "small_cnn depth {d}");
    }
    let labels = ops::labels(&g, &[3, 17], 24).unwrap();
    let loss = ops::cross_entropy(&pooled, Target::Hard(&labels), None).unwrap();
    assert!(loss.item().unwrap().is_finite());
    assert_grads_flow("small_cnn", &cnn, &loss.backward().unwrap());
    assert!(matches!(SmallCnn::new(&g, "cnn", 1, 3, 0, &mut srng(1)), Err(Error::Config { .. })));
    assert!(matches!(cnn.forward(&Tensor::zeros(&g, &[2, 20, 18]).unwrap(), &Ctx::eval()), Err(Error::Shape { .. })));

    // MlpEncoder: flattens per-sample input, Linear -> ReLU per hidden width
    let mlp = MlpEncoder::new(&g, "mlp", 12, &[7, 5], &mut srng(82)).unwrap();
    randomize_affine(&mlp, &mut rng);
    assert_eq!(mlp.out_dim(), 5);
    assert_eq!(mlp.num_depths(), 2);
    let (x, _) = input(&mut rng, &[6, 3, 4]);
    let (pooled, outs) = mlp.forward_depths(&x, &Ctx::train()).unwrap();
    assert_eq!(pooled.shape(), &[6, 5]);
    assert_eq!(outs[0].shape(), &[6, 7]);
    assert_eq!(outs[1].shape(), &[6, 5]);
    let labels = ops::labels(&g, &[0, 1, 2, 3, 4, 0], 5).unwrap();
    let loss = ops::cross_entropy(&pooled, Target::Hard(&labels), None).unwrap();
    assert!(loss.item().unwrap().is_finite());
    assert_grads_flow("mlp", &mlp, &loss.backward().unwrap());
    assert!(matches!(MlpEncoder::new(&g, "mlp", 12, &[], &mut srng(1)), Err(Error::Config { .. })));
    assert!(matches!(mlp.forward(&Tensor::zeros(&g, &[6, 13]).unwrap(), &Ctx::eval()), Err(Error::Shape { .. })));

    // the generic constructors are reachable through the module's public paths
    let _ = nn::normal_init(&mut srng(1), 4, 1.0);
}

/// U(−bound, bound): every value inside, variance bound²/3, half of the values within bound/2.
fn check_uniform(what: &str, t: &Tensor, bound: f64) {
    let v = t.to_vec().unwrap();
    let n = v.len() as f64;
    assert!(v.iter().all(|&x| (x as f64).abs() <= bound), "{what}: a value outside ±{bound}");
    let var = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / n;
    // the sample variance of U(−b, b) has relative standard error 2/sqrt(5n)
    let rse = 2.0 / (5.0 * n).sqrt();
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 5.0 * rse, "{what}: variance {var} vs {} (n {n})", bound * bound / 3.0);
    let half = v.iter().filter(|&&x| (x as f64).abs() < bound / 2.0).count() as f64 / n;
    assert!((half - 0.5).abs() < 5.0 * (0.25 / n).sqrt(), "{what}: {half} of the values within half the bound");
}

#[test]
fn torch_initialisation_statistics() {
    use equimodal::nn::{init, Init};
    let g = gpu();
    let mut r = srng(62);
    let c = Conv2d::new(&g, "c", 48, 96, 3, 1, 1, true, &mut r).unwrap();
    let l = Linear::new(&g, "l", 300, 200, true, &mut r).unwrap();
    let bn = BatchNorm2d::new(&g, "bn", 37).unwrap();
    let mut ps = c.params();
    ps.extend(l.params());
    ps.extend(bn.params());
    let before: Vec<Vec<f32>> = ps.iter().map(|p| p.tensor.to_vec().unwrap()).collect();
    init::reinit(Init::Official, &ps, &mut r).unwrap();
    for (p, b) in ps.iter().zip(&before) {
        assert_eq!(&p.tensor.to_vec().unwrap(), b, "official leaves {} as built", p.name);
    }
    init::reinit(Init::Torch, &ps, &mut r).unwrap();
    // PyTorch: weight and bias U(−1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in·k·k or in
    check_uniform("conv weight", &c.weight.tensor, 1.0 / (48.0 * 9.0f64).sqrt());
    check_uniform("conv bias", &c.bias.as_ref().unwrap().tensor, 1.0 / (48.0 * 9.0f64).sqrt());
    check_uniform("linear weight", &l.weight.tensor, 1.0 / 300.0f64.sqrt());
    check_uniform("linear bias", &l.bias.as_ref().unwrap().tensor, 1.0 / 300.0f64.sqrt());
    check_const("bn weight", &bn.weight.tensor, 1.0);
    check_const("bn bias", &bn.bias.tensor, 0.0);
}

#[test]
fn model_init_reaches_every_layer_of_a_method() {
    // `model.init = "torch"` redraws every conv and linear weight of the built method (the
    // encoders and AUG's head), each inside its own ±1/sqrt(fan_in); AUG's learners, those
    // built and those a check adds (restored here), stay xavier-normal with zero bias, as the
    // AUG code and the PyTorch reference script make them
    let sets: Vec<String> = ["model.init=torch", "model.encoder=small_cnn", "method.name=aug", "method.aug.hidden=16"].iter().map(|s| s.to_string()).collect();
    let (cfg, _) = equimodal::config::load(None, &sets).unwrap();
    let specs = vec![equimodal::data::ModalitySpec::new("audio", vec![1, 8, 8]), equimodal::data::ModalitySpec::new("visual", vec![1, 8, 8])];
    let mut m = equimodal::methods::build(&gpu(), &cfg.method_setup(), &specs, 10, &mut srng(63)).unwrap();
    let mut opt = equimodal::train::build_optimizer(&cfg, m.trainable()).unwrap();
    m.restore(&serde_json::json!({"learners": [3, 2]}), opt.as_mut()).unwrap();
    let (mut layers, mut learners) = (0, 0);
    for p in m.params() {
        let shape = p.tensor.shape().to_vec();
        let v = p.tensor.to_vec().unwrap();
        if p.name.starts_with("aug.learner.") {
            if p.name.ends_with(".bias") {
                assert!(v.iter().all(|&x| x == 0.0), "{}: a learner's bias starts at 0", p.name);
            } else {
                let want = (2.0 / (shape[0] + shape[1]) as f64).sqrt();
                let std = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
                assert!((std / want - 1.0).abs() < 0.15, "{}: std {std}, xavier-normal {want}", p.name);
                learners += 1;
            }
            continue;
        }
        if p.name.ends_with(".weight") && shape.len() >= 2 {
            let bound = 1.0 / (shape[1..].iter().product::<usize>() as f64).sqrt();
            assert!(v.iter().all(|&x| (x as f64).abs() <= bound), "{}: outside ±{bound}", p.name);
            // and spread up to it, as a uniform draw is
            let max = v.iter().fold(0f64, |a, &x| a.max((x as f64).abs()));
            assert!(max > 0.8 * bound, "{}: max |w| {max} for bound {bound}", p.name);
            layers += 1;
        }
    }
    assert!(layers >= 5, "{layers} layers");
    assert_eq!(learners, 5, "three learners of audio, two of visual");
}

// ---- 9. module backward against finite differences of the CPU reference ----------------------

/// GPU gradients of L = sum(w ⊙ f(x; θ)) (w fixed, random) for a few random entries of every
/// parameter tensor of `m`, against central differences of the f64 CPU reference `cpu`
/// (which gets the parameters by name, one entry moved by ±eps). Training mode: batch norms
/// use batch statistics, as in a training step.
///
/// Tolerance: |gpu - fd| <= 2e-5 |fd| + 2e-5 max|gpu grad of that tensor| (see below). The
/// worst entry of these seeds sits at 0.56 of it (a ResNet batch-norm bias); a gradient
/// rounded through f16 (relative error up to 4.9e-4) or scaled wrongly fails it, where the
/// older "finite and not all zero" checks pass both.
fn check_module_grads_fd(what: &str, m: &dyn Module, y: &Tensor, cpu: &dyn Fn(&Named) -> T, fwd_rel: f64, per_tensor: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let w = round_f32(&rng.uniforms(y.numel(), -1.0, 1.0));
    let mut grads = Gradients::new();
    y.backward_with(upload(&gpu(), &w, y.shape()), &mut grads).unwrap();
    assert_canaries(&format!("{what} backward"));
    let base = params_of(m);
    let loss = |p: &Named| cpu(p).data.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
    // the CPU forward at the unperturbed parameters is the GPU forward (checked elsewhere):
    // a mismatch here would make the comparison below meaningless
    let want_y = cpu(&base);
    close(&format!("{what} forward"), y, &want_y, fwd_rel);
    let eps = 1e-6;
    let mut checked = 0;
    for p in m.params() {
        let g = grads.get(&p.tensor).unwrap_or_else(|| panic!("{what}: no gradient for {}", p.name)).to_vec().unwrap();
        assert_eq!(g.len(), p.tensor.numel(), "{what}: gradient size of {}", p.name);
        let scale = g.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64));
        let mut picks: Vec<usize> = (0..per_tensor).map(|_| rng.below(g.len())).collect();
        // always include the entry with the largest gradient: it cannot hide under atol
        picks.push(g.iter().enumerate().fold(0, |b, (i, v)| if v.abs() > g[b].abs() { i } else { b }));
        for i in picks {
            let mut pp = base.clone();
            let t = pp.get_mut(&p.name).unwrap();
            let x0 = t.data[i];
            t.data[i] = x0 + eps;
            let lp = loss(&pp);
            pp.get_mut(&p.name).unwrap().data[i] = x0 - eps;
            let lm = loss(&pp);
            let fd = (lp - lm) / (2.0 * eps);
            let err = (g[i] as f64 - fd).abs();
            // 2e-5: f32 sums of up to a few thousand terms in the convs and batch-norm
            // reductions (sqrt(K) * 6e-8 ~ 4e-6) plus the batch norm's cancellation
            // (its input gradient is a difference of sums); FD error ~1e-10.
            let tol = 2e-5 * fd.abs() + 2e-5 * scale;
            assert!(err <= tol, "{what}: d/d{}[{i}]: gpu {} vs finite difference {fd} (err {err:.3e} > tol {tol:.3e}, tensor scale {scale:.3e})", p.name, g[i]);
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: no parameters checked");
}

#[test]
fn resnet18_backward_matches_finite_differences_of_cpu_reference() {
    // tiny width (base 2), odd image: every stage, both stride-2 shortcuts, the 7x7/2 stem
    let mut rng = Rng::new(900);
    let net = resnet(3, 2, 91);
    randomize_affine(&net, &mut rng);
    let bufs = buffers_of(&net);
    // 45 x 41: layer4 still has 2 x 2 positions, so its batch norms see 12 values each
    let shape = [3, 3, 45, 41];
    let (x, xh) = input(&mut rng, &shape);
    let (pooled, _) = net.forward_depths(&x, &Ctx::train()).unwrap();
    let cpu = |p: &Named| cpu_nn::resnet18(p, &mut bufs.clone(), "enc", &xh, true).0;
    check_module_grads_fd("resnet18", &net, &pooled, &cpu, 1e-4, 2, 901);
}

#[test]
fn small_cnn_forward_and_backward_match_cpu_reference() {
    let g = gpu();
    let mut rng = Rng::new(910);
    let cnn = SmallCnn::new(&g, "cnn", 2, 3, 4, &mut srng(92)).unwrap();
    randomize_affine(&cnn, &mut rng);
    randomize_running_stats(&cnn, &mut rng);
    let (x, xh) = input(&mut rng, &[3, 2, 19, 17]);
    // eval forward per depth (running statistics)
    let mut bufs = buffers_of(&cnn);
    let (pooled, outs) = cnn.forward_depths(&x, &Ctx::eval()).unwrap();
    let (want, want_outs) = cpu_nn::small_cnn(&params_of(&cnn), &mut bufs, "cnn", &xh, 4, false);
    for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
        close(&format!("small_cnn eval depth {d}"), o, w, 1e-5);
    }
    close("small_cnn eval pooled", &pooled, &want, 1e-5);
    // training forward and backward
    let bufs = buffers_of(&cnn);
    let (pooled, outs) = cnn.forward_depths(&x, &Ctx::train()).unwrap();
    let (_, want_outs) = cpu_nn::small_cnn(&params_of(&cnn), &mut bufs.clone(), "cnn", &xh, 4, true);
    for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
        close(&format!("small_cnn train depth {d}"), o, w, 1e-4);
    }
    let cpu = |p: &Named| cpu_nn::small_cnn(p, &mut bufs.clone(), "cnn", &xh, 4, true).0;
    check_module_grads_fd("small_cnn", &cnn, &pooled, &cpu, 1e-4, 4, 911);
}

#[test]
fn mlp_forward_and_backward_match_cpu_reference() {
    let g = gpu();
    let mut rng = Rng::new(920);
    let mlp = MlpEncoder::new(&g, "mlp", 35, &[19, 11, 6], &mut srng(93)).unwrap();
    randomize_affine(&mlp, &mut rng);
    let (x, xh) = input(&mut rng, &[7, 5, 7]);
    let (out, outs) = mlp.forward_depths(&x, &Ctx::train()).unwrap();
    let (want, want_outs) = cpu_nn::mlp(&params_of(&mlp), "mlp", &xh, 3);
    for (d, (o, w)) in outs.iter().zip(&want_outs).enumerate() {
        close(&format!("mlp depth {d}"), o, w, 1e-5);
    }
    close("mlp output", &out, &want, 1e-5);
    let cpu = |p: &Named| cpu_nn::mlp(p, "mlp", &xh, 3).0;
    check_module_grads_fd("mlp", &mlp, &out, &cpu, 1e-5, 6, 921);
}

#[test]
fn transformer_backward_matches_finite_differences_of_cpu_reference() {
    // patches of a [2, 4, 6] sample (6 tokens of 8 features), 2 blocks, 2 heads
    let cfg = tf_cfg(&[1, 1]);
    let mut rng = Rng::new(930);
    let tf = transformer(&[2, 4, 6], 94);
    randomize_affine(&tf, &mut rng);
    let (x, xh) = input(&mut rng, &[3, 2, 4, 6]);
    let (pooled, _) = tf.forward_depths(&x, &Ctx::train()).unwrap();
    let cpu = |p: &Named| cpu_nn::transformer(p, "tf", &xh, cfg.layers, cfg.heads, cfg.patch).0;
    check_module_grads_fd("transformer", &tf, &pooled, &cpu, 1e-4, 2, 931);
}

// ---- recomputation (model.recompute) ------------------------------------------------------

/// ResNet18 with its blocks' inner batch norm + ReLU recomputed in the backward: the same
/// outputs, parameter gradients and running statistics, bit for bit, as without; and between
/// the forward and the backward it holds exactly one activation fewer per basic block (the
/// second convolution's input, of the block's output shape: two blocks per stage). On a
/// context of its own, so no other test's tensors enter the byte counts.
#[test]
fn resnet18_recompute_gives_the_same_bits_and_holds_one_activation_less_per_block() {
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let shape = [2, 3, 33, 29];
    let x = upload(&g, &Rng::new(301).normals(numel(&shape)), &shape);
    let run = |recompute: bool| {
        let net = ResNet18::new(&g, "enc", 3, 4, &mut srng(302)).unwrap().with_recompute(recompute);
        let before = g.memory().allocated;
        let (pooled, outs) = net.forward_depths(&x, &Ctx::train()).unwrap();
        let held = g.memory().allocated - before;
        let stage_bytes: u64 = outs[1..].iter().map(|o| 2 * 4 * o.numel() as u64).sum();
        let seed = upload(&g, &Rng::new(303).uniforms(pooled.numel(), -1.0, 1.0), pooled.shape());
        let mut grads = Gradients::new();
        pooled.backward_with(seed, &mut grads).unwrap();
        let mut bits = vec![("pooled".to_string(), pooled.to_vec().unwrap())];
        for p in net.params() {
            bits.push((p.name.clone(), grads.get(&p.tensor).unwrap_or_else(|| panic!("no gradient for {}", p.name)).to_vec().unwrap()));
        }
        for (name, t) in net.buffers() {
            bits.push((name, t.to_vec().unwrap()));
        }
        (bits, held, stage_bytes)
    };
    let (plain, held_plain, stage_bytes) = run(false);
    let (recomputed, held_recomputed, _) = run(true);
    assert_eq!(plain.len(), recomputed.len());
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        assert_eq!(a, b, "{name} differs with recompute");
    }
    assert_eq!(held_plain - held_recomputed, stage_bytes, "bytes held after the forward: {held_plain} without, {held_recomputed} with recompute");
}

// ---- mixed precision (train.precision = "mixed") -------------------------------------------

/// Under `autocast` a linear layer gives its GEMM f16 copies of x and W: its output is, bit
/// for bit, the f32 layer's on the f16-rounded values (the kernels widen f16 exactly and
/// multiply in f32), for `forward` and `forward_relu`; the gradients reach the f32 input and
/// weight as f32 tensors, equal to the f32 layer's at the rounded values; without the guard
/// (or after it drops) the layer is the f32 one.
#[test]
fn linear_under_autocast_multiplies_f16_operands_and_returns_f32_gradients() {
    let g = gpu();
    let mut rng = Rng::new(501);
    let layer = Linear::new(&g, "lin", 37, 21, true, &mut srng(502)).unwrap();
    let x = upload(&g, &rng.normals(6 * 37), &[6, 37]);
    let round = |t: &Tensor| ops::cast(&ops::cast(t, equimodal::DType::F16).unwrap(), equimodal::DType::F32).unwrap();
    // the f32 layer on rounded operands
    let rounded = Linear { weight: nn::Param { name: "lin.weight".into(), tensor: round(&layer.weight.tensor) }, bias: layer.bias.clone(), in_dim: 37, out_dim: 21 };
    let run = |l: &Linear, x: &Tensor, mixed: bool, relu: bool| {
        let _ac = equimodal::autograd::autocast(mixed);
        let (x, w) = (x.detach().requires_grad(), l.weight.tensor.detach().requires_grad());
        let l = Linear { weight: nn::Param { name: l.weight.name.clone(), tensor: w.clone() }, ..l.frozen() };
        let y = if relu { l.forward_relu(&x, &Ctx::train()) } else { l.forward(&x, &Ctx::train()) }.unwrap();
        assert_eq!(y.dtype(), equimodal::DType::F32);
        let grads = backward_weighted(&y, 503);
        let (dx, dw) = (grads.get(&x).expect("dx"), grads.get(&w).expect("dW"));
        assert_eq!((dx.dtype(), dw.dtype()), (equimodal::DType::F32, equimodal::DType::F32));
        [y.to_vec().unwrap(), dx.to_vec().unwrap(), dw.to_vec().unwrap()]
    };
    for relu in [false, true] {
        let mixed = run(&layer, &x, true, relu);
        let want = run(&rounded, &round(&x), false, relu);
        for (i, what) in ["output", "dx", "dW"].iter().enumerate() {
            assert_eq!(mixed[i], want[i], "relu={relu}: {what}");
        }
        assert_ne!(mixed[0], run(&layer, &x, false, relu)[0], "relu={relu}: rounding changed nothing: not f16");
    }
    assert!(!equimodal::autograd::autocast_enabled(), "the guard restores the mode");
}

/// ResNet18 (with and without recomputation) under `autocast`: every convolution and the
/// linear layers get f16 operands, and the network still computes what the f32 one does to
/// f16 precision, and every parameter gets a finite, non-zero f32 gradient. The bound: each of
/// the ~21 products rounds both operands to f16 (relative error u = 2^-11 each), and those
/// errors add along the depth, 2 · 21 · u ≈ 2 % of the features' scale; lavapipe shows
/// 0.4–0.6 %.
#[test]
fn resnet18_trains_under_autocast() {
    let g = gpu();
    let shape = [2, 3, 33, 29];
    let x = upload(&g, &Rng::new(511).normals(numel(&shape)), &shape);
    for recompute in [false, true] {
        let net = ResNet18::new(&g, "enc", 3, 4, &mut srng(512)).unwrap().with_recompute(recompute);
        let f32_pooled = net.forward(&x, &Ctx { update_stats: false, ..Ctx::train() }).unwrap().to_vec().unwrap();
        let _ac = equimodal::autograd::autocast(true);
        let pooled = net.forward(&x, &Ctx { update_stats: false, ..Ctx::train() }).unwrap();
        let got = pooled.to_vec().unwrap();
        let scale = f32_pooled.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&f32_pooled).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 0.02 * scale, "recompute={recompute}: worst difference {worst} at scale {scale}");
        assert!(got != f32_pooled, "recompute={recompute}: no f16 rounding seen");
        assert_grads_flow(&format!("autocast recompute={recompute}"), &net, &backward_weighted(&pooled, 513));
    }
}

/// What ResNet18 keeps for its backward, mixed against f32 (bytes allocated on a context of
/// this test alone, between before the forward and after it, the pooled output aside). Per
/// convolution → batch norm → ReLU → convolution, f32 keeps the convolution's output y (4
/// bytes a value, for batch norm) and the ReLU's output (4, for the ReLU and the next
/// convolution's weight gradient); mixed keeps y as f16 (2), the ReLU's bit mask (1/8) and
/// the next convolution's f16 operand (2): 4.125 of 8, 52 %, and 55 % allows for the small
/// f32 tensors (statistics, partial sums, max pooling's indices) that do not shrink. Mixed
/// also keeps what f32 does not allocate at all: the f16 copy of the network's input for the
/// stem's weight gradient (f32 keeps the input itself, which the caller holds anyway), 2 bytes
/// a value, and the f16 copies of the weights for the input gradients, half their bytes.
#[test]
fn resnet18_under_autocast_keeps_about_half_the_bytes_for_its_backward() {
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let shape = [4, 3, 96, 80];
    let x = upload(&g, &Rng::new(515).normals(numel(&shape)), &shape);
    for recompute in [false, true] {
        let net = ResNet18::new(&g, "enc", 3, 4, &mut srng(516)).unwrap().with_recompute(recompute);
        let weights: u64 = net.params().iter().map(|p| 4 * p.tensor.numel() as u64).sum();
        let held = |mixed: bool| {
            let _ac = equimodal::autograd::autocast(mixed);
            let before = g.memory().allocated;
            let pooled = net.forward(&x, &Ctx { update_stats: false, ..Ctx::train() }).unwrap();
            let held = g.memory().allocated - before - 4 * pooled.numel() as u64;
            drop(backward_weighted(&pooled, 517));
            held
        };
        let (f32_held, mixed_held) = (held(false), held(true));
        eprintln!("recompute={recompute}: f32 {f32_held} mixed {mixed_held} ({:.3}), weights {weights}", mixed_held as f64 / f32_held as f64);
        let bound = 0.55 * f32_held as f64 + 0.5 * weights as f64 + 2.0 * x.numel() as f64;
        assert!((mixed_held as f64) <= bound, "recompute={recompute}: mixed keeps {mixed_held} bytes, f32 {f32_held} (bound {bound})");
    }
}

/// ResNet18 under `autocast` on the cooperative-matrix convolutions (`ops::prefer_coop`;
/// emulated where the adapter has no tensor cores), with and without recomputation, against
/// the same network on the f32-arithmetic tiles:
/// - forwards on them (training, and evaluation's fused epilogue) give the same features to
///   f16 precision: they differ in the order of f32 additions, which can tip a convolution
///   output's rounding to f16 (kept for batch norm) by one f16 ulp, 2^-11 relative, and such
///   flips add along the ~21 convolutions: 21 · 2^-11 ≈ 1 % of the features' scale;
/// - gradients on them, after the same forward on the tiles, agree to the f16 rounding of
///   dy (2^-12 relative per term) added along the backward's ~21 products: 2 · 21 · 2^-11
///   ≈ 2 % of each gradient's scale. (Gradients after different forwards are not comparable
///   this way: a flip of a ReLU mask or a max-pool tie between the two forwards moves a
///   gradient by a whole term.)
/// - everything on them at once runs, and every gradient is finite.
#[test]
fn resnet18_runs_on_the_cooperative_matrix_convolutions() {
    let g = gpu();
    if equimodal::gpu::Coop::on(&g.capabilities()).is_none() {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    }
    let shape = [4, 3, 64, 56];
    let x = upload(&g, &Rng::new(518).normals(numel(&shape)), &shape);
    for recompute in [false, true] {
        let net = ResNet18::new(&g, "enc", 3, 4, &mut srng(519)).unwrap().with_recompute(recompute);
        let _ac = equimodal::autograd::autocast(true);
        let run = |forward: bool, gradients: bool| {
            let _c = ops::prefer_coop(forward, gradients);
            let pooled = net.forward(&x, &Ctx { update_stats: false, ..Ctx::train() }).unwrap();
            let grads = backward_weighted(&pooled, 520);
            let eval = {
                let _ng = equimodal::autograd::no_grad();
                net.forward(&x, &Ctx::eval()).unwrap().to_vec().unwrap()
            };
            let gs: Vec<Vec<f32>> = net.params().iter().map(|p| grads.get(&p.tensor).expect("a gradient").to_vec().unwrap()).collect();
            (pooled.to_vec().unwrap(), eval, gs)
        };
        let close = |what: &str, a: &[f32], b: &[f32], rel: f32| {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
            assert!(worst <= rel * scale, "recompute={recompute}: {what}: worst difference {worst} at scale {scale}");
        };
        let tiles = run(false, false);
        let forward = run(true, false);
        close("training forward", &tiles.0, &forward.0, 0.01);
        close("evaluation forward", &tiles.1, &forward.1, 0.01);
        let gradients = run(false, true);
        assert_eq!(tiles.0, gradients.0, "recompute={recompute}: the forward moved");
        for (i, (a, b)) in tiles.2.iter().zip(&gradients.2).enumerate() {
            close(&format!("gradient of {}", net.params()[i].name), a, b, 0.02);
        }
        assert_ne!(tiles.2, gradients.2, "recompute={recompute}: the gradients took no f16 staging: coop did not run");
        let all = run(true, true);
        assert!(all.2.iter().flatten().all(|v| v.is_finite()), "recompute={recompute}: a non-finite gradient");
    }
}

/// A transformer encoder under `autocast` on the cooperative-matrix attention, forward and
/// backward (`ops::prefer_coop`; emulated where the adapter has no tensor cores), against the
/// same network on the f32-arithmetic tiles. The attention kernels agree to f32 rounding
/// (`tests/ops/attention.rs`), which can tip the f16 rounding of a later layer's input by one
/// f16 ulp (2^-11 relative); over two layers, forward and back, at most ~0.2 % of a
/// feature's or gradient's scale (0.5 % allowed; measured: 9e-6). The kernels' precision is
/// the op test's to pin; this one checks that the layers reach them (81 tokens: two key
/// tiles of 64) and that every feature and gradient comes out right.
#[test]
fn a_transformer_runs_on_the_cooperative_matrix_attention() {
    let g = gpu();
    if equimodal::gpu::Coop::on(&g.capabilities()).is_none() {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    }
    let shape = [3, 2, 18, 18];
    let x = upload(&g, &Rng::new(601).normals(numel(&shape)), &shape);
    let net = transformer(&shape[1..], 602);
    let _ac = equimodal::autograd::autocast(true);
    let run = |coop: bool| {
        let _c = ops::prefer_coop(coop, coop);
        let y = net.forward(&x, &Ctx::train()).unwrap();
        let grads = backward_weighted(&y, 603);
        let gs: Vec<Vec<f32>> = net.params().iter().map(|p| grads.get(&p.tensor).expect("a gradient").to_vec().unwrap()).collect();
        (y.to_vec().unwrap(), gs)
    };
    let (tiles, coop) = (run(false), run(true));
    let close = |what: &str, a: &[f32], b: &[f32]| {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 0.005 * scale, "{what}: worst difference {worst} at scale {scale}");
    };
    close("features", &tiles.0, &coop.0);
    for (i, (a, b)) in tiles.1.iter().zip(&coop.1).enumerate() {
        close(&format!("gradient of {}", net.params()[i].name), a, b);
    }
    assert_ne!(tiles, coop, "the cooperative-matrix attention did not run");
}
