//! The memory estimate checked before the first tensor is built: the model's parameters,
//! optimizer state and activations against the device's buffer limits and the host's
//! available memory.
use crate::config::Config;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::limits::{checked_numel, mul, MAX_WIDTH};
use crate::methods::{EncoderKind, MethodName, ModelConfig};

/// Parameter and activation sizes of a model, in f32 elements.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    /// Parameter elements, summed over the weight tensors this estimate counts.
    pub params: u64,
    /// Activations of one training step (forward values; the backward doubles them).
    pub activations: u64,
    /// The largest single parameter tensor: description, config field, elements.
    pub largest: (String, String, u64),
    /// The largest single activation tensor of one batch: description, elements.
    pub largest_activation: (String, u64),
}

impl Estimate {
    fn tensor(&mut self, what: String, field: &str, elements: u64) -> Result<()> {
        self.params =
            self.params.checked_add(elements).ok_or_else(|| Error::shape("size check", format!("{what}: parameter count overflows")))?;
        if elements > self.largest.2 {
            self.largest = (what, field.to_string(), elements);
        }
        Ok(())
    }
    /// `copies` activation tensors of `elements` each, described by `what`.
    fn acts(&mut self, what: impl FnOnce() -> String, elements: u64, copies: u64) {
        self.add_activations(elements.saturating_mul(copies));
        self.activation(what, elements);
    }
    /// Activation values of one step, in tensors counted apart ([`Self::activation`]).
    fn add_activations(&mut self, elements: u64) {
        self.activations = self.activations.saturating_add(elements);
    }
    /// One activation tensor of `elements`, described by `what`, for the largest one.
    fn activation(&mut self, what: impl FnOnce() -> String, elements: u64) {
        if elements > self.largest_activation.1 {
            self.largest_activation = (what(), elements);
        }
    }
    /// Bytes of one training step: weights, gradients and two optimizer moments per
    /// parameter, activations and their gradients.
    pub fn training_bytes(&self) -> u64 {
        self.params.saturating_mul(4 * 4).saturating_add(self.activations.saturating_mul(4 * 2))
    }
}

/// Estimate the configured model's sizes for these modalities and classes.
pub fn estimate(cfg: &Config, specs: &[ModalitySpec], classes: usize) -> Result<Estimate> {
    // training batches hold activations for the backward; evaluation (no graph) needs less
    let batch = cfg.train.batch_size as u64;
    let mut est = Estimate::default();
    let mut dims = Vec::new();
    for s in specs {
        let mc = cfg.model.for_modality(&s.name);
        dims.push(encoder(&mut est, &s.name, s, &mc, batch)?);
    }
    let c = classes as u64;
    let feat: u64 = dims.iter().sum();
    est.tensor(format!("fusion head [{c}, {feat}]"), "data.num_classes", mul(feat, c, "fusion head")?)?;
    if cfg.method.name == MethodName::Aug {
        let h = cfg.method.aug.hidden as u64;
        for (s, d) in specs.iter().zip(&dims) {
            est.tensor(format!("aug learner of `{}` [{h}, {d}]", s.name), "method.aug.hidden", mul(*d, h, "aug learner")?)?;
        }
        est.tensor(format!("aug head [{c}, {h}]"), "method.aug.hidden", mul(h, c, "aug head")?)?;
    }
    if cfg.method.name == MethodName::Reconboost {
        let h = cfg.method.reconboost.head_hidden as u64;
        let d = dims.first().copied().unwrap_or(0);
        est.tensor(format!("reconboost head [{h}, {d}]"), "method.reconboost.head_hidden", mul(d, h, "reconboost head")?)?;
        est.tensor(format!("reconboost head [{c}, {h}]"), "method.reconboost.head_hidden", mul(h, c, "reconboost head")?)?;
    }
    est.acts(|| format!("logits [{batch}, {c}]"), mul(batch, c, "logits")?, 1);
    Ok(est)
}

/// Add one encoder's sizes; returns its output width.
fn encoder(est: &mut Estimate, name: &str, spec: &ModalitySpec, mc: &ModelConfig, batch: u64) -> Result<u64> {
    let field = |f: &str| format!("model.{f} (modality `{name}`)");
    let input = checked_numel(&spec.shape, &format!("modality `{name}` shape"))? as u64;
    est.acts(|| format!("`{name}` input batch [{batch}, {:?}]", spec.shape), mul(batch, input, "input batch")?, 1);
    let (h, w) = match spec.shape.as_slice() {
        [_, h, w] => (*h as u64, *w as u64),
        _ => (1, 1),
    };
    let cin = spec.shape.first().copied().unwrap_or(1) as u64;
    match mc.encoder {
        EncoderKind::Mlp => {
            let mut d = input;
            for (i, &hw) in mc.hidden.iter().enumerate() {
                let hw = hw as u64;
                est.tensor(format!("`{name}` layer {i} [{hw}, {d}]"), &field("hidden"), mul(d, hw, "mlp layer")?)?;
                est.acts(|| format!("`{name}` layer {i} output [{batch}, {hw}]"), mul(batch, hw, "mlp activations")?, 2);
                d = hw;
            }
            Ok(d)
        }
        EncoderKind::SmallCnn => {
            let (mut c, mut hh, mut ww) = (cin, h, w);
            for i in 0..mc.depth {
                let out = (mc.width as u64).checked_shl(i as u32).filter(|v| *v <= MAX_WIDTH as u64).ok_or_else(|| {
                    Error::config(
                        field("depth"),
                        format!("width {} doubled over {} blocks exceeds {MAX_WIDTH} channels", mc.width, mc.depth),
                    )
                })?;
                est.tensor(format!("`{name}` block {i} conv [{out}, {c}, 3, 3]"), &field("width"), mul(mul(out, c, "conv")?, 9, "conv")?)?;
                let map = mul(mul(batch, out, "conv activations")?, hh.saturating_mul(ww), "conv activations")?;
                est.acts(|| format!("`{name}` block {i} conv output [{batch}, {out}, {hh}, {ww}]"), map, 3);
                (c, hh, ww) = (out, (hh / 2).max(1), (ww / 2).max(1));
            }
            Ok(c)
        }
        EncoderKind::Resnet18 => {
            let base = mc.width as u64;
            est.tensor(format!("`{name}` stem conv [{base}, {cin}, 7, 7]"), &field("width"), mul(mul(base, cin, "stem")?, 49, "stem")?)?;
            for k in [1u64, 2, 4, 8] {
                let c = mul(base, k, "resnet width")?;
                let conv = mul(mul(c, c, "resnet conv")?, 9, "resnet conv")?;
                for j in 0..4 {
                    est.tensor(format!("`{name}` stage x{k} conv {j} [{c}, {c}, 3, 3]"), &field("width"), conv)?;
                }
            }
            // the stem's maps at half resolution; the whole net keeps about 12 times that
            // (a deliberate underestimate: refusing a run that fits is worse than letting
            // the allocator report one that does not)
            let (h2, w2) = ((h / 2).max(1), (w / 2).max(1));
            let maps = mul(mul(batch, base, "resnet activations")?, h2.saturating_mul(w2), "resnet activations")?;
            est.acts(|| format!("`{name}` stem output [{batch}, {base}, {h2}, {w2}]"), maps, 12);
            mul(base, 8, "resnet width")
        }
        EncoderKind::Transformer => {
            let d = mc.width as u64;
            let patch = (mc.patch[0] as u64).saturating_mul(mc.patch[1] as u64).max(1);
            let tokens =
                if spec.shape.len() == 3 { (h / (mc.patch[0] as u64).max(1)).saturating_mul(w / (mc.patch[1] as u64).max(1)) } else { cin };
            let feat = if spec.shape.len() == 3 { cin.saturating_mul(patch) } else { input / cin.max(1) };
            est.tensor(format!("`{name}` patch embedding [{d}, {feat}]"), &field("width"), mul(feat, d, "embedding")?)?;
            est.tensor(format!("`{name}` positions [{tokens}, {d}]"), &field("patch"), mul(tokens, d, "positions")?)?;
            let ratio = mc.mlp_ratio as u64;
            let block = mul(mul(d, d, "attention")?, 4 + 2 * ratio, "transformer block")?;
            for l in 0..mc.layers {
                est.tensor(format!("`{name}` block {l} [{d}x{d} x{}]", 4 + 2 * ratio), &field("width"), block)?;
            }
            let per_layer = mul(mul(batch, tokens, "tokens")?, d, "tokens")?.saturating_mul(6 + ratio);
            let attn = mul(mul(batch, mc.heads as u64, "attention")?, tokens.saturating_mul(tokens), "attention scores")?;
            est.add_activations(per_layer.saturating_add(attn).saturating_mul(mc.layers as u64));
            // the widest single tensor of a block: the MLP's hidden layer
            let hidden = d.saturating_mul(ratio);
            est.activation(|| format!("`{name}` MLP hidden [{batch}, {tokens}, {hidden}]"), mul(mul(batch, tokens, "tokens")?, hidden, "mlp hidden")?);
            Ok(d)
        }
    }
}

pub use crate::limits::host_available_bytes;

/// Refuse a model whose largest parameter or activation tensor exceeds the device's buffer
/// limits (a tensor is one binding), or whose estimated training footprint exceeds the host's
/// available memory (host memory bounds software adapters, and every parameter is
/// initialised on the host first).
pub fn check_model_fits(limits: &wgpu::Limits, cfg: &Config, specs: &[ModalitySpec], classes: usize) -> Result<Estimate> {
    let est = estimate(cfg, specs, classes)?;
    let max_buffer = limits.max_buffer_size.min(limits.max_storage_buffer_binding_size);
    let (what, field, n) = &est.largest;
    let bytes = n.saturating_mul(4);
    if bytes > max_buffer {
        return Err(Error::config(
            field.clone(),
            format!("{what} needs {} but the device's largest buffer is {}", human(bytes), human(max_buffer)),
        ));
    }
    // under mixed precision a convolution's output may be stored f16: count 2 bytes a value
    // there (an underestimate for the f32 tensors, as everywhere here: refusing a run that
    // fits is worse than letting the allocator report one that does not)
    let (what, n) = &est.largest_activation;
    let bytes = n.saturating_mul(if cfg.train.precision == crate::config::Precision::Mixed { 2 } else { 4 });
    if bytes > max_buffer {
        return Err(Error::config(
            "train.batch_size",
            format!(
                "the {what} of one batch needs {} but the device's largest buffer is {}; use a smaller train.batch_size",
                human(bytes),
                human(max_buffer)
            ),
        ));
    }
    let total = est.training_bytes();
    if let Some(avail) = host_available_bytes() {
        if total > avail {
            return Err(Error::config(
                "model",
                format!(
                    "the model needs about {} to train ({} parameters, {} activation values at batch {}), but the host has {} available; use a smaller model or train.batch_size",
                    human(total),
                    est.params,
                    est.activations,
                    cfg.train.batch_size,
                    human(avail)
                ),
            ));
        }
    }
    Ok(est)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}
