//! Greedy: balanced multi-modal learning (Wu, Jastrzębski, Cho, Geras, ICML 2022), following
//! the official nyukat/greedy_multimodal_learning (`src/model.py`, `src/balanced_mmtm.py`,
//! `src/callbacks.py: Bias_Mitigation_Strong`, `configs/training_guided.gin`);
//! docs/methods/greedy.md.
//!
//! The model: one convolutional encoder per modality, an MMTM ([`Mmtm`]) after each of the
//! last three depths (never the first: the official ResNet18 pair has them after layer2,
//! layer3 and layer4), each modality's own linear head on its pooled features; the loss is
//! Σ_m CE(logits_m), the prediction the mean of the logits.
//!
//! The re-balancing: after every backward, each modality's conditional learning speed is
//! accumulated, for its "bypass" parameters (every MMTM's shared squeeze layer and its own
//! excite layers) and its "main" ones (its encoder and head), as
//! M_b,m += Σ‖g‖² / Σ‖w‖² over the group (likewise M_main,m), and
//! BDR_m = log10(M_b,m / M_main,m). From `start_epoch` on, when max_m BDR − min_m BDR >
//! `epsilon` (for two modalities: |d_BDR| > ε) the next `window` steps are re-balancing steps
//! for the modality with the largest BDR: its MMTM gates are replaced by their running
//! averages, so no information from the other modalities reaches its branch. The speeds are
//! not accumulated during those steps. The whole decision runs on the GPU (0/1 tensors select
//! between the two branches of the official `if`s), so a step reads nothing back;
//! `end_epoch` reads the state once for the log.
use super::config::MethodSetup;
use super::{stats_from_sums, view_stats, Accum, DeviceBatch, EncoderKind, EpochStats, Method, Prediction};
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Linear, Mmtm, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;

/// `[method.greedy]`; the defaults are the official `configs/training_guided.gin` and
/// `src/model.py`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreedyConfig {
    /// Threshold ε on the spread of the BDRs (`Bias_Mitigation_Strong.epsilon = 0.01`).
    pub epsilon: f32,
    /// Re-balancing steps per decision (`curation_windowsize = 5`).
    pub window: usize,
    /// First epoch (counted from 0) of re-balancing decisions; the official `starting_epoch
    /// = 2` over epochs counted from 1 is the second epoch: 1 here.
    pub start_epoch: usize,
    /// MMTM reduction ratio: bottleneck ⌊2·ΣC / ratio⌋ (`MMTM(128, 128, 4)` in model.py).
    pub ratio: usize,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        GreedyConfig { epsilon: 0.01, window: 5, start_epoch: 1, ratio: 4 }
    }
}

impl GreedyConfig {
    /// Check every value; errors name the field (`method.greedy.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.greedy.{n}");
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::config(f("epsilon"), format!("must be a finite value >= 0, got {}", self.epsilon)));
        }
        if self.window == 0 || self.window > 1 << 20 {
            return Err(Error::config(f("window"), format!("must be in 1..=1048576 steps, got {}", self.window)));
        }
        if self.ratio == 0 {
            return Err(Error::config(f("ratio"), "must be at least 1"));
        }
        Ok(())
    }
}

/// The depths after which an MMTM sits, for encoders of `depths` depths: the last three,
/// never the first (ResNet18's 5 depths: layer2..layer4, as the official model; the small
/// CNN's 4 blocks: blocks 1..3). Needs at least two depths.
pub fn mmtm_depths(depths: usize) -> Vec<usize> {
    (depths.saturating_sub(3).max(1)..depths).collect()
}

/// The re-balancing state of `Bias_Mitigation_Strong`, all on the GPU and saved with the
/// checkpoints (0/1 values as f32).
pub struct RebalanceState {
    /// 1 while in re-balancing steps (the official `curation_mode`), `[1]`.
    pub curation: Tensor,
    /// Re-balancing steps taken in the current window (`curation_step`), `[1]`.
    pub step: Tensor,
    /// 1 for the modality being re-balanced (`caring_modality`), `[M]`.
    pub caring: Tensor,
    /// Σ over steps of each modality's bypass speed (`M_bypass_modal_m`), `[M]`.
    pub bypass: Tensor,
    /// Σ over steps of each modality's main speed (`M_main_modal_m`), `[M]`.
    pub main: Tensor,
}

impl RebalanceState {
    /// The state at the start of training: no window, no speeds, for `m` modalities.
    pub fn zeros(gpu: &Gpu, m: usize) -> Result<RebalanceState> {
        Ok(RebalanceState {
            curation: Tensor::zeros(gpu, &[1])?,
            step: Tensor::zeros(gpu, &[1])?,
            caring: Tensor::zeros(gpu, &[m])?,
            bypass: Tensor::zeros(gpu, &[m])?,
            main: Tensor::zeros(gpu, &[m])?,
        })
    }

    /// Each tensor with its buffer name (`greedy.<name>` in checkpoints).
    pub fn tensors(&self) -> [(&'static str, &Tensor); 5] {
        [("curation", &self.curation), ("curation_step", &self.step), ("caring", &self.caring), ("bypass_speed", &self.bypass), ("main_speed", &self.main)]
    }

    /// The official `on_backward_end`, one step: from this state and the step's speeds `rb`,
    /// `rm` `[M]`, the state for the next step. `unlocked`: the epoch is at or past
    /// `start_epoch`.
    pub fn advance(&self, rb: &Tensor, rm: &Tensor, unlocked: bool, eps: f32, window: usize) -> Result<RebalanceState> {
        advance(self, rb, rm, unlocked, eps, window)
    }
}

/// [`RebalanceState::advance`] with 0/1 tensors selecting between the two branches of each
/// official `if` (no readback).
fn advance(s: &RebalanceState, rb: &Tensor, rm: &Tensor, unlocked: bool, eps: f32, window: usize) -> Result<RebalanceState> {
    let _ng = crate::autograd::no_grad();
    let not_cur = ops::affine(&s.curation, -1.0, 1.0)?;
    // the speeds count only outside re-balancing steps (compute_BDR is not called then)
    let bypass = ops::add(&s.bypass, &ops::mul(rb, &not_cur)?)?;
    let main = ops::add(&s.main, &ops::mul(rm, &not_cur)?)?;
    if !unlocked {
        return Ok(RebalanceState { curation: s.curation.clone(), step: s.step.clone(), caring: s.caring.clone(), bypass, main });
    }
    let m = rb.numel();
    let bdr = ops::scale(&ops::log(&ops::div(&bypass, &main)?)?, std::f32::consts::LOG10_E)?;
    let hi = ops::max(&bdr, &[0], false)?.reshape(&[1])?;
    let spread = ops::sub(&hi, &ops::min(&bdr, &[0], false)?.reshape(&[1])?)?;
    // spread > ε strictly (a NaN spread never triggers, as Python's abs(nan) > ε)
    let trigger = ops::ge_scalar(&ops::add_scalar(&spread, -eps)?, f32::MIN_POSITIVE)?;
    let top = ops::ge_scalar(&ops::sub(&bdr, &hi)?, 0.0)?;
    let next = ops::add_scalar(&s.step, 1.0)?;
    let stay = ops::affine(&ops::ge_scalar(&next, window as f32 - 0.5)?, -1.0, 1.0)?;
    // in curation: step + 1, leave when it reaches the window; otherwise start one on a trigger
    let select = |c: &Tensor, a: &Tensor, b: &Tensor| -> Result<Tensor> { ops::add(&ops::mul(a, c)?, &ops::mul(b, &ops::affine(c, -1.0, 1.0)?)?) };
    let curation = select(&s.curation, &stay, &trigger)?;
    let step = ops::mul(&next, &s.curation)?;
    let chosen = ops::mul(&top, &trigger)?;
    let caring = select(&ops::expand(&s.curation, &[m])?, &s.caring, &chosen)?;
    Ok(RebalanceState { curation, step, caring, bypass, main })
}

/// Greedy: MMTM-connected encoders, per-modality heads, and re-balancing steps chosen by the
/// conditional learning speeds.
pub struct Greedy {
    encoders: Vec<Box<dyn Encoder>>,
    heads: Vec<Linear>,
    /// (depth, module), in depth order.
    mmtms: Vec<(usize, Mmtm)>,
    /// Running mean of each MMTM's gate per modality over every training step, `[C_m]`.
    running: Vec<Vec<Tensor>>,
    /// Training forwards so far (the official `MMTM_mitigate.step`).
    steps: u64,
    state: RebalanceState,
    cfg: GreedyConfig,
    names: Vec<String>,
    acc: Accum,
    m: usize,
}

/// The channel count of `encoder`'s depth `d` output for these settings (SmallCnn: width·2^d;
/// ResNet18: the stem and layer1 base, then base·2^(d−1)).
fn depth_channels(kind: EncoderKind, width: usize, d: usize) -> usize {
    match kind {
        EncoderKind::Resnet18 => width << d.saturating_sub(1),
        _ => width << d,
    }
}

impl Greedy {
    /// Build the model for these modalities and `classes` outputs; errors name the config
    /// field: at least two modalities, small_cnn or resnet18 encoders (MMTM acts on feature
    /// maps between depths) with the same number of depths.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Greedy> {
        let m = specs.len();
        if m < 2 {
            return Err(Error::config("data.modalities", format!("greedy connects the encoders of two or more modalities, the data has {m}")));
        }
        let mut kinds = Vec::new();
        for s in specs {
            let mc = cfg.model.for_modality(&s.name);
            if !matches!(mc.encoder, EncoderKind::SmallCnn | EncoderKind::Resnet18) {
                let field = if cfg.model.modalities.get(&s.name).and_then(|o| o.encoder).is_some() { format!("model.modalities.{}.encoder", s.name) } else { "model.encoder".to_string() };
                return Err(Error::config(field, format!("greedy puts MMTM modules between encoder depths: use small_cnn or resnet18 (modality `{}` has {:?})", s.name, mc.encoder)));
            }
            kinds.push((mc.encoder, mc.width));
        }
        let encoders = super::build_encoders(gpu, cfg, specs, rng)?;
        let depths = encoders[0].num_depths();
        if let Some(i) = encoders.iter().position(|e| e.num_depths() != depths) {
            return Err(Error::config("model.depth", format!("greedy pairs encoder depths: modality `{}` has {} depths, `{}` has {depths}", specs[i].name, encoders[i].num_depths(), specs[0].name)));
        }
        if depths < 2 {
            return Err(Error::config("model.depth", "greedy needs encoders of at least two depths (its MMTMs never follow the first)"));
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let mut mmtms = Vec::new();
        let mut running = Vec::new();
        for d in mmtm_depths(depths) {
            let ch: Vec<usize> = kinds.iter().map(|&(k, w)| depth_channels(k, w, d)).collect();
            mmtms.push((d, Mmtm::new(gpu, &format!("mmtm{d}"), &ch, &names, cfg.method.greedy.ratio, rng)?));
            running.push(ch.iter().map(|&c| Tensor::zeros(gpu, &[c])).collect::<Result<Vec<_>>>()?);
        }
        let heads = specs
            .iter()
            .zip(&encoders)
            .map(|(s, e)| Linear::new(gpu, &format!("head.{}", s.name), e.out_dim(), classes, true, rng))
            .collect::<Result<Vec<_>>>()?;
        let state = RebalanceState::zeros(gpu, m)?;
        Ok(Greedy { encoders, heads, mmtms, running, steps: 0, state, cfg: cfg.method.greedy.clone(), names, acc: Accum::new(1 + 3 * m), m })
    }

    /// Pooled features `[N, C_m]` of every modality through the MMTM-connected encoders. In
    /// training (`replace` = the `[M]` 0/1 mask of re-balanced modalities) the running gate
    /// averages are updated first, then a masked modality's gates are the averages, as the
    /// official `curation_mode` forward.
    fn encode(&self, inputs: &[Tensor], ctx: &Ctx, replace: Option<&Tensor>) -> Result<Vec<Tensor>> {
        if inputs.len() != self.m {
            return Err(Error::shape("greedy", format!("{} modalities in the batch, the model has {}", inputs.len(), self.m)));
        }
        let mut h: Vec<Tensor> = inputs.to_vec();
        let mut next = self.mmtms.iter().zip(&self.running).peekable();
        for d in 0..self.encoders[0].num_depths() {
            for (e, x) in self.encoders.iter().zip(h.iter_mut()) {
                *x = e.forward_depth(x, d, ctx)?;
            }
            let Some(((_, mmtm), running)) = next.next_if(|((md, _), _)| *md == d) else { continue };
            let gates = mmtm.gates(&h, ctx)?;
            for (i, (x, g)) in h.iter_mut().zip(&gates).enumerate() {
                let g = match replace {
                    Some(mask) => self.replaced_gate(g, &running[i], &ops::narrow(mask, 0, i, 1)?)?,
                    None => g.clone(),
                };
                *x = Mmtm::rescale(x, &g)?;
            }
        }
        h.iter().map(ops::global_avg_pool).collect()
    }

    /// Update `running` with this batch's mean gate, then g·(1 − r) + running·r: exactly the
    /// gate (r = 0) or exactly the running average without gradient to the gate (r = 1).
    fn replaced_gate(&self, g: &Tensor, running: &Tensor, r: &Tensor) -> Result<Tensor> {
        {
            let _ng = crate::autograd::no_grad();
            let i = self.steps as f64;
            let mean = ops::mean(&g.detach(), &[0], false)?;
            running.assign(&ops::lerp(running, &mean, (i / (i + 1.0)) as f32, (1.0 / (i + 1.0)) as f32)?)?;
        }
        let avg = running.reshape(&[1, running.numel()])?;
        let keep = ops::affine(r, -1.0, 1.0)?;
        ops::add(&ops::mul(g, &keep)?, &ops::mul(&avg, r)?)
    }

    /// Each modality's logits `[N, K]` from its pooled features.
    fn logits(&self, feats: &[Tensor], ctx: &Ctx) -> Result<Vec<Tensor>> {
        self.heads.iter().zip(feats).map(|(h, f)| h.forward(f, ctx)).collect()
    }

    /// The bypass and main parameter groups of modality `i`.
    fn groups(&self, i: usize) -> (Vec<Param>, Vec<Param>) {
        let mut bypass = Vec::new();
        for (_, t) in &self.mmtms {
            bypass.extend(t.squeeze.params());
            bypass.extend(t.excite[i].params());
        }
        let mut main = self.encoders[i].params();
        main.extend(self.heads[i].params());
        (bypass, main)
    }

    /// This step's speeds `[M]` of each group: Σ‖g‖² / Σ‖w‖² (`compute_BDR`'s gn/wn).
    fn speeds(&self, grads: &crate::autograd::Gradients) -> Result<(Tensor, Tensor)> {
        let _ng = crate::autograd::no_grad();
        let ratio = |ps: &[Param]| -> Result<Tensor> {
            let (mut gn, mut wn): (Option<Tensor>, Option<Tensor>) = (None, None);
            for p in ps {
                let w = ops::sum_all(&ops::square(&p.tensor.detach())?)?;
                wn = Some(match wn { Some(a) => ops::add(&a, &w)?, None => w });
                if let Some(g) = grads.get(&p.tensor) {
                    let g = ops::sum_all(&ops::square(g)?)?;
                    gn = Some(match gn { Some(a) => ops::add(&a, &g)?, None => g });
                }
            }
            let wn = wn.ok_or_else(|| Error::shape("greedy", "a parameter group is empty"))?;
            let gn = match gn { Some(g) => g, None => Tensor::zeros(wn.gpu(), &[1])? };
            ops::div(&gn.reshape(&[1])?, &wn.reshape(&[1])?)
        };
        let (mut rb, mut rm) = (Vec::new(), Vec::new());
        for i in 0..self.m {
            let (b, mn) = self.groups(i);
            rb.push(ratio(&b)?);
            rm.push(ratio(&mn)?);
        }
        let cat = |v: &[Tensor]| ops::concat(&v.iter().collect::<Vec<_>>(), 0);
        Ok((cat(&rb)?, cat(&rm)?))
    }

    fn state_tensors(&self) -> [(&'static str, &Tensor); 5] {
        self.state.tensors()
    }
}

impl Method for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        for (_, t) in &self.mmtms {
            v.extend(t.params());
        }
        for h in &self.heads {
            v.extend(h.params());
        }
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.encoders.iter().flat_map(|e| e.buffers()).collect();
        for ((d, _), run) in self.mmtms.iter().zip(&self.running) {
            for (name, t) in self.names.iter().zip(run) {
                v.push((format!("mmtm{d}.running_gate.{name}"), t.clone()));
            }
        }
        v.extend(self.state_tensors().iter().map(|(n, t)| (format!("greedy.{n}"), (*t).clone())));
        v
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let replace = ops::mul(&self.state.caring, &self.state.curation)?;
        let feats = self.encode(&batch.inputs, &ctx, Some(&replace))?;
        self.steps += 1;
        let views = self.logits(&feats, &ctx)?;
        let mut loss: Option<Tensor> = None;
        for v in &views {
            let ce = ops::cross_entropy(v, ops::Target::Hard(&batch.labels), None)?;
            loss = Some(match loss { Some(l) => ops::add(&l, &ce)?, None => ce });
        }
        let loss = loss.expect("at least two modalities");
        let grads = loss.backward()?;
        let (rb, rm) = self.speeds(&grads)?;
        let next = self.state.advance(&rb, &rm, epoch >= self.cfg.start_epoch, self.cfg.epsilon, self.cfg.window)?;
        // in place, so that the buffers keep their identity (checkpoints write into them)
        for ((_, t), (_, n)) in self.state_tensors().iter().zip(next.tensors()) {
            if !std::sync::Arc::ptr_eq(t.storage(), n.storage()) {
                t.assign(n)?;
            }
        }
        opt.step(&grads)?;
        let _ng = crate::autograd::no_grad();
        let detached: Vec<Tensor> = views.iter().map(Tensor::detach).collect();
        let total = ops::scale(&loss.detach(), batch.n as f32)?.reshape(&[1])?;
        self.acc.record(&[&total, &view_stats(&detached, &batch.labels)?, &replace], batch.n)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let views = self.logits(&self.encode(inputs, &ctx, None)?, &ctx)?;
        let mut sum = views[0].clone();
        for v in &views[1..] {
            sum = ops::add(&sum, v)?;
        }
        let fused = ops::scale(&sum, 1.0 / self.m as f32)?;
        Ok(Prediction { fused, per_modality: views.into_iter().map(Some).collect() })
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let _ng = crate::autograd::no_grad();
        Ok(self.encode(inputs, &Ctx::eval(), None)?.into_iter().map(Some).collect())
    }
    fn end_epoch(&mut self, epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let m = self.m;
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let mut st = stats_from_sums(&sums, m, samples);
        let (b, mn) = (self.state.bypass.to_vec()?, self.state.main.to_vec()?);
        let bdr: Vec<f64> = b.iter().zip(&mn).map(|(x, y)| (*x as f64 / *y as f64).log10()).collect();
        let per = |v: &[f64]| super::per_modality_json(&self.names, v);
        st.extra.push((
            "greedy".into(),
            serde_json::json!({
                "unlocked": epoch >= self.cfg.start_epoch,
                "rebalance_steps": per(&sums[1 + 2 * m..1 + 3 * m]),
                "bdr": per(&bdr),
                "in_window": self.state.curation.to_vec()?[0] > 0.5,
            }),
        ));
        Ok(st)
    }
    fn state(&self) -> serde_json::Value {
        super::counter_state("steps", self.steps)
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        super::restore_counter(state, "steps", &mut self.steps);
        Ok(())
    }
}
