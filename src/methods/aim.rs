//! AIM (Shen, Chen, Zhang, arXiv 2508.19769): adaptive intra-network modulation, as
//! designed in docs/aim.md (which says what is the paper's and what is ours).
//!
//! - **DAP**: per modality m and depth d, K prototypes (one per class) with the shape of one
//!   sample's depth-d feature map, optimised (Adam, network frozen, batch norm in eval mode)
//!   so that the rest of the network + the fusion head's unimodal view classifies prototype
//!   k as class k. Initialised once (random, scaled to the features' RMS), refreshed every
//!   `prototype_every` epochs, warm-started.
//! - **Per-depth scores**: each batch's depth-d features are classified by distance to the
//!   prototypes (`ops::proto_scores`); `S[m][d]` = EMA over the epoch of the mean true-class
//!   probability, kept on the GPU and read back once in `end_epoch`.
//! - **DAM**: dominant = highest final-depth score, weak = lowest; r_d = `S[dom][d] / S[weak][d]`,
//!   s_d = clamp(tanh(β(r_d − 1)), 0, s_max), used during the next epoch.
//! - **PAM**: the optimizer keeps u = EMA(|g ⊙ θ|) per weight element (fused in its update
//!   kernel); every `mask_every` epochs the lowest fraction ρ of each conv/linear weight
//!   becomes the mask M (exact GPU radix select, `ops::select_lowest`).
//! - **Auxiliary block**: the dominant encoder evaluated with per-layer weight scales
//!   1 − s_d·(1 − M) applied inside the conv/matmul kernels (`Ctx::weight_scales`).
//!   Loss L = CE(fuse(E_dom, E_weak)) + γ·CE(fuse(AB_dom, E_weak)), one backward.
//!   `v3`: also an auxiliary block of the weak encoder at the depths where it leads.
use super::{build_encoders, stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Method, Prediction};
use super::config::MethodSetup;
use crate::data::{derive_seed, ModalitySpec};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{BnStats, Ctx, Encoder, Fusion, Module};
use crate::ops;
use crate::optim::{Adam, AdamConfig, Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

// ---- configuration (`[method.aim]`) ----

/// AIM (adaptive intra-network modulation); see docs/aim.md, whose design values are the
/// defaults (except where it says a measurement chose otherwise).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimConfig {
    /// DAP: refresh the prototypes every N epochs (warm-started).
    pub prototype_every: usize,
    /// DAP: Adam steps per refresh.
    pub prototype_steps: usize,
    /// DAP: Adam learning rate of the prototypes.
    pub prototype_lr: f32,
    /// Prototype classification temperature T in exp(−‖h − P‖² / (T·dim)).
    pub temperature: f32,
    /// EMA momentum of the per-depth scores within an epoch.
    pub score_momentum: f32,
    /// DAM: s_d = clamp(tanh(β·(r_d − 1)), 0, s_max).
    pub beta: f32,
    /// DAM: upper bound of the per-depth modulation strength s_d.
    pub s_max: f32,
    /// PAM: fraction of each layer's elements marked under-optimized.
    pub rho: f32,
    /// PAM: EMA momentum of the optimization-state score |g ⊙ θ|.
    pub pam_momentum: f32,
    /// PAM: refresh the masks every N epochs.
    pub mask_every: usize,
    /// Weight of the auxiliary-block loss.
    pub gamma: f32,
    /// Also give the weak modality an auxiliary block at depths where it leads (paper v3).
    pub v3: bool,
    /// The auxiliary loss also trains the fusion head (the spec's plain sum of losses). With
    /// `false` the head is frozen inside the auxiliary term: it trains the encoders only, so
    /// the head is not taught to expect a damped dominant modality that test time never shows.
    pub aux_trains_head: bool,
    /// Which statistics the auxiliary forward's batch norm uses (docs/aim.md#batch-norm).
    pub aux_bn: AuxBn,
}

/// Batch-norm statistics of AIM's auxiliary forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxBn {
    /// The main forward's batch statistics of the same step, as constants: the damping of the
    /// weights reaches the auxiliary block's output instead of being normalised away.
    Main,
    /// The running statistics (eval-mode normalisation), as constants: the default, best on
    /// validation on CPU-sized AV-MNIST (docs/aim.md#batch-norm-of-the-auxiliary-block).
    Running,
    /// The auxiliary forward's own batch statistics (normalises most of the per-channel
    /// damping away; the behaviour before this option existed).
    Own,
}

impl Default for AimConfig {
    fn default() -> Self {
        AimConfig {
            prototype_every: 1,
            prototype_steps: 50,
            prototype_lr: 0.05,
            temperature: 1.0,
            score_momentum: 0.9,
            beta: 1.0,
            s_max: 0.9,
            rho: 0.5,
            pam_momentum: 0.9,
            mask_every: 1,
            gamma: 1.0,
            v3: false,
            aux_trains_head: true,
            // measured: docs/aim.md#batch-norm-of-the-auxiliary-block
            aux_bn: AuxBn::Running,
        }
    }
}

impl AimConfig {
    /// Check every value; errors name the field (`method.aim.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.aim.{n}");
        if self.prototype_every == 0 {
            return Err(Error::config(f("prototype_every"), "must be at least 1"));
        }
        if self.prototype_steps > 1_000_000 {
            // a typo guard: a value this large is never meant and would run for ages
            return Err(Error::config(f("prototype_steps"), format!("must be at most 1000000, got {}", self.prototype_steps)));
        }
        if self.mask_every == 0 {
            return Err(Error::config(f("mask_every"), "must be at least 1"));
        }
        if !(self.prototype_lr.is_finite() && self.prototype_lr > 0.0) {
            return Err(Error::config(f("prototype_lr"), format!("must be > 0, got {}", self.prototype_lr)));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(f("temperature"), format!("must be > 0, got {}", self.temperature)));
        }
        for (n, v) in [("score_momentum", self.score_momentum), ("pam_momentum", self.pam_momentum)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(f(n), format!("must be in [0, 1), got {v}")));
            }
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::config(f("beta"), format!("must be >= 0, got {}", self.beta)));
        }
        if !(0.0..=1.0).contains(&self.s_max) {
            return Err(Error::config(f("s_max"), format!("must be in [0, 1], got {}", self.s_max)));
        }
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::config(f("rho"), format!("must be in [0, 1], got {}", self.rho)));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(Error::config(f("gamma"), format!("must be >= 0, got {}", self.gamma)));
        }
        Ok(())
    }
}

/// A conv/linear weight that PAM scores and masks.
struct Layer {
    name: String,
    modality: usize,
    depth: usize,
    shape: Vec<usize>,
}

/// AIM: encoders and fusion head with depth-wise prototypes (DAP) and intra-network
/// modulation (DAM, PAM).
pub struct Aim {
    encoders: Vec<Box<dyn Encoder>>,
    fusion: Fusion,
    cfg: AimConfig,
    gpu: Gpu,
    names: Vec<String>,
    m: usize,
    seed: u64,
    /// depths of each encoder
    depths: Vec<usize>,
    /// prototypes[m][d]: [K, depth-d sample shape], leaf tensors that require a gradient
    protos: Vec<Vec<Tensor>>,
    proto_ready: bool,
    /// labels 0..K (DAP targets)
    proto_labels: Tensor,
    /// EMA of the per-depth scores this epoch, [Σ_m depths[m]]
    score_ema: Option<Tensor>,
    /// [loss·N, view CE·N × M, view score × M, main CE·N, aux CE·N]
    acc: Accum,
    layers: Vec<Layer>,
    scores_enabled: bool,
    /// packed masks by layer name, and their densities
    masks: HashMap<String, Tensor>,
    densities: BTreeMap<String, f64>,
    /// masks must be rebuilt from the optimizer's scores (after a restore)
    masks_stale: bool,
    /// modulation in force: dominant, weak, strengths per depth of dom (and of weak for v3)
    dom: Option<usize>,
    weak: usize,
    strength: Vec<f32>,
    strength_weak: Vec<f32>,
    ratio: Vec<f64>,
    /// v3: r_d of the weak encoder's depths (S_weak[d] / S_dom at the mapped depth)
    ratio_weak: Vec<f64>,
    scales_dom: Option<Arc<HashMap<String, Tensor>>>,
    scales_weak: Option<Arc<HashMap<String, Tensor>>>,
    /// DAP cross-entropy after the latest refresh, per modality and depth
    proto_ce: Vec<Vec<f32>>,
}

/// Depth of `from`'s depth `d` (of `n_from`) on an encoder with `n_to` depths (proportional, rounded; d < n_from keeps it ≤ n_to − 1).
fn map_depth(d: usize, n_from: usize, n_to: usize) -> usize {
    if n_from == n_to {
        return d;
    }
    if n_from <= 1 {
        return n_to - 1;
    }
    (d as f64 * (n_to - 1) as f64 / (n_from - 1) as f64).round() as usize
}

/// s = clamp(tanh(β(r − 1)), 0, s_max).
pub fn strength(r: f64, beta: f32, s_max: f32) -> f32 {
    let s = (beta as f64 * (r - 1.0)).tanh();
    if s.is_finite() {
        s.clamp(0.0, s_max as f64) as f32
    } else {
        0.0
    }
}

/// DAP for one (modality, depth): `steps` Adam steps (learning rate `lr`) on the prototypes
/// `protos` `[K, depth-d sample shape]` (a leaf that requires a gradient), minimising
/// mean_k CE(unimodal view of `fusion`(rest of `encoder` from depth `depth`(P_k)), `labels`_k)
/// with the network frozen and batch norm in eval mode. Only `protos` is updated; the network
/// parameters receive gradients in the backward but are never stepped. Returns the CE after
/// the last step (one readback; with `steps = 0`, the CE of `protos` as they are).
#[allow(clippy::too_many_arguments)]
pub fn fit_prototypes(
    encoder: &dyn Encoder,
    fusion: &Fusion,
    modality: usize,
    depth: usize,
    protos: &Tensor,
    labels: &Tensor,
    steps: usize,
    lr: f32,
) -> Result<f32> {
    let ctx = Ctx::eval();
    let ce = |p: &Tensor| -> Result<Tensor> {
        let f = encoder.forward_from(p, depth, &ctx)?;
        let logits = fusion.unimodal(modality, &f, &ctx)?;
        ops::cross_entropy(&logits, ops::Target::Hard(labels), None)
    };
    let mut adam = Adam::new(&[Param::new(format!("aim.proto.{modality}.{depth}"), protos.clone())], AdamConfig { lr, ..Default::default() })?;
    for _ in 0..steps {
        let grads = ce(protos)?.backward()?;
        adam.step(&grads)?;
    }
    let _ng = crate::autograd::no_grad();
    Ok(ce(protos)?.to_vec()?[0])
}

impl Aim {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Aim> {
        let a = cfg.method.aim.clone();
        a.validate()?;
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
        let fusion = Fusion::new(gpu, "fusion", cfg.method.fusion, &dims, classes, cfg.model.fusion_hidden, rng)?;
        let m = specs.len();
        // depth shapes from one eval forward of a zero sample
        let mut depths = Vec::new();
        let mut protos = Vec::new();
        {
            let _ng = crate::autograd::no_grad();
            for (i, e) in encoders.iter().enumerate() {
                let x = Tensor::zeros(gpu, &[&[1usize][..], &specs[i].shape[..]].concat())?;
                let (_, outs) = e.forward_depths(&x, &Ctx::eval())?;
                if outs.len() != e.num_depths() || outs.is_empty() {
                    return Err(Error::Other(format!("aim: encoder of `{}` reports {} depths but returns {}", specs[i].name, e.num_depths(), outs.len())));
                }
                depths.push(outs.len());
                let ps = outs
                    .iter()
                    .map(|h| Ok(Tensor::zeros(gpu, &[&[classes][..], &h.shape()[1..]].concat())?.requires_grad()))
                    .collect::<Result<Vec<_>>>()?;
                protos.push(ps);
            }
        }
        let mut layers = Vec::new();
        for (i, e) in encoders.iter().enumerate() {
            for p in e.params() {
                if p.name.ends_with(".weight") && p.tensor.dims() >= 2 {
                    if let Some(d) = e.depth_of(&p.name) {
                        layers.push(Layer { name: p.name.clone(), modality: i, depth: d.min(depths[i] - 1), shape: p.tensor.shape().to_vec() });
                    }
                }
            }
        }
        let labels: Vec<u32> = (0..classes as u32).collect();
        Ok(Aim {
            encoders,
            fusion,
            gpu: gpu.clone(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            m,
            seed: cfg.seed,
            depths,
            protos,
            proto_ready: false,
            proto_labels: ops::labels(gpu, &labels, classes)?,
            score_ema: None,
            acc: Accum::new(3 + 2 * m),
            layers,
            scores_enabled: false,
            masks: HashMap::new(),
            densities: BTreeMap::new(),
            masks_stale: false,
            dom: None,
            weak: 0,
            strength: Vec::new(),
            strength_weak: Vec::new(),
            ratio: Vec::new(),
            ratio_weak: Vec::new(),
            scales_dom: None,
            scales_weak: None,
            proto_ce: Vec::new(),
            cfg: a,
        })
    }

    /// Random prototypes scaled to the RMS of each depth's features on `inputs`.
    fn init_prototypes(&mut self, inputs: &[Tensor]) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        for (m, (e, x)) in self.encoders.iter().zip(inputs).enumerate() {
            let (_, outs) = e.forward_depths(x, &ctx)?;
            for (d, h) in outs.iter().enumerate() {
                let rms = ops::sqrt(&ops::mean_all(&ops::square(h)?)?)?;
                let p = &self.protos[m][d];
                let z = ops::randn(&self.gpu, p.shape(), derive_seed(&[self.seed, 0xA1A1, m as u64, d as u64]), 0)?; // own stream per (m, d)
                p.assign(&ops::mul(&z, &ops::add_scalar(&rms, 1e-6)?)?)?;
            }
        }
        self.proto_ready = true;
        Ok(())
    }

    /// DAP: `prototype_steps` Adam steps per (modality, depth), warm-started from the
    /// current values (see [`fit_prototypes`]).
    fn refresh_prototypes(&mut self) -> Result<()> {
        let mut all = Vec::with_capacity(self.m);
        for m in 0..self.m {
            let mut ces = Vec::with_capacity(self.depths[m]);
            for d in 0..self.depths[m] {
                let last = fit_prototypes(
                    self.encoders[m].as_ref(),
                    &self.fusion,
                    m,
                    d,
                    &self.protos[m][d],
                    &self.proto_labels,
                    self.cfg.prototype_steps,
                    self.cfg.prototype_lr,
                )?;
                ces.push(last);
            }
            all.push(ces);
        }
        self.proto_ce = all;
        Ok(())
    }

    /// Rebuild every layer's mask from the optimizer's scores (GPU selection).
    fn refresh_masks(&mut self, opt: &dyn Optimizer) -> Result<()> {
        let mut names = Vec::new();
        let mut scores = Vec::new();
        for l in &self.layers {
            if let Some(s) = opt.scores(&l.name) {
                names.push(l.name.clone());
                scores.push(s.clone());
            }
        }
        self.masks.clear();
        self.densities.clear();
        if scores.is_empty() {
            return Ok(());
        }
        let refs: Vec<&Tensor> = scores.iter().collect();
        let sel = ops::select_lowest(&refs, self.cfg.rho)?;
        let dens = sel.densities()?;
        for ((n, mask), d) in names.into_iter().zip(sel.masks).zip(dens) {
            self.densities.insert(n.clone(), d);
            self.masks.insert(n, mask);
        }
        self.masks_stale = false;
        Ok(())
    }

    /// Scale tensors for the layers of encoder `m` given per-depth strengths (None when all
    /// strengths are 0: the auxiliary block would equal the full encoder).
    fn build_scales(&self, m: usize, strengths: &[f32]) -> Result<Option<Arc<HashMap<String, Tensor>>>> {
        if !strengths.iter().any(|&s| s > 0.0) {
            return Ok(None);
        }
        let mut map = HashMap::new();
        for l in self.layers.iter().filter(|l| l.modality == m) {
            let s = strengths.get(l.depth).copied().unwrap_or(0.0);
            if s <= 0.0 {
                continue;
            }
            if let Some(mask) = self.masks.get(&l.name) {
                map.insert(l.name.clone(), ops::mask_scale(mask, &l.shape, s)?);
            }
        }
        Ok(if map.is_empty() { None } else { Some(Arc::new(map)) })
    }

    fn rebuild_scales(&mut self) -> Result<()> {
        self.scales_dom = match self.dom {
            Some(d) => self.build_scales(d, &self.strength)?,
            None => None,
        };
        self.scales_weak = match self.dom {
            Some(_) if self.cfg.v3 => self.build_scales(self.weak, &self.strength_weak)?,
            _ => None,
        };
        Ok(())
    }

    /// Conv/linear weight names of every encoder (PAM scores are kept for all of them, so a
    /// change of dominant modality finds scores ready).
    fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name.as_str()).collect()
    }

    /// Per-depth prototype scores of one batch, [Σ depths] (no gradient).
    fn depth_scores(&self, outs: &[Vec<Tensor>], labels: &Tensor) -> Result<Tensor> {
        let _ng = crate::autograd::no_grad();
        let mut parts = Vec::new();
        for (m, o) in outs.iter().enumerate() {
            for (d, h) in o.iter().enumerate() {
                let p = ops::proto_scores(&h.detach(), &self.protos[m][d], labels, self.cfg.temperature)?;
                parts.push(ops::mean_all(&p)?);
            }
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        ops::concat(&refs, 0)
    }

    /// Fused CE with modality `i`'s features replaced by `f`, through `head` (the fusion
    /// itself, or its frozen copy when `aux_trains_head` is off).
    fn ce_with(&self, head: &Fusion, feats: &[Tensor], i: usize, f: Tensor, labels: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut fs = feats.to_vec();
        fs[i] = f;
        let logits = head.forward(&fs, ctx)?;
        ops::cross_entropy(&logits, ops::Target::Hard(labels), None)
    }

    /// Work a step needs done first, once or after the epoch decided it: PAM scores
    /// switched on in the optimizer, masks and weight scales refreshed, prototypes made.
    fn prepare_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer) -> Result<()> {
        if !self.scores_enabled {
            let names = self.layer_names();
            if !names.is_empty() {
                opt.enable_scores(&names, self.cfg.pam_momentum)?;
            }
            self.scores_enabled = true;
        }
        if self.masks_stale {
            self.refresh_masks(opt)?;
            self.rebuild_scales()?;
        }
        if !self.proto_ready {
            self.init_prototypes(&batch.inputs)?;
            self.refresh_prototypes()?;
        }
        Ok(())
    }

    /// The auxiliary term (with `gamma > 0`): the fused CE with the dominant modality's
    /// features from its auxiliary block (and with `v3` the weak one's too), summed.
    /// `recorded` holds the batch-norm statistics of the main forward (`aux_bn = "main"`).
    fn aux_loss(&self, batch: &DeviceBatch, feats: &[Tensor], ce: &Tensor, ctx: &Ctx, recorded: &Mutex<HashMap<String, Tensor>>) -> Result<Option<Tensor>> {
        let mut aux_total: Option<Tensor> = None;
        // the auxiliary forwards never update the running statistics a second time; their
        // batch norm normalises with the statistics `aux_bn` names
        let bn = match self.cfg.aux_bn {
            AuxBn::Main => BnStats::Given(Arc::new(std::mem::take(&mut *recorded.lock().map_err(|_| Error::Other("aim: batch-norm record lock poisoned".into()))?))),
            AuxBn::Running => BnStats::Running,
            AuxBn::Own => BnStats::Mode,
        };
        let aux_ctx = |scales: &Arc<HashMap<String, Tensor>>| Ctx {
            training: true,
            update_stats: false,
            weight_scales: Some(scales.clone()),
            seed: ctx.seed,
            bn: bn.clone(),
            bn_record: None,
        };
        let frozen;
        let head = if self.cfg.aux_trains_head {
            &self.fusion
        } else {
            frozen = self.fusion.frozen();
            &frozen
        };
        // an auxiliary block equal to its full encoder (strength 0 everywhere): the term is
        // the main CE itself, or with a frozen head the same logits without head gradient
        let plain = || -> Result<Tensor> {
            if self.cfg.aux_trains_head {
                Ok(ce.clone())
            } else {
                let logits = head.forward(feats, ctx)?;
                ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)
            }
        };
        let mut terms = Vec::new();
        if let Some(dom) = self.dom {
            match &self.scales_dom {
                Some(sc) => {
                    let f = self.encoders[dom].forward(&batch.inputs[dom], &aux_ctx(sc))?;
                    terms.push(self.ce_with(head, feats, dom, f, &batch.labels, ctx)?);
                }
                // all strengths 0: AB_dom is E_dom
                None => terms.push(plain()?),
            }
            if self.cfg.v3 {
                match &self.scales_weak {
                    Some(sc) => {
                        let w = self.weak;
                        let f = self.encoders[w].forward(&batch.inputs[w], &aux_ctx(sc))?;
                        terms.push(self.ce_with(head, feats, w, f, &batch.labels, ctx)?);
                    }
                    None => terms.push(plain()?),
                }
            }
        } else {
            // no measurement yet (first epoch): every auxiliary block is the full encoder
            terms.push(plain()?);
            if self.cfg.v3 {
                terms.push(plain()?);
            }
        }
        for t in terms {
            aux_total = Some(match aux_total {
                Some(a) => ops::add(&a, &t)?,
                None => t,
            });
        }
        Ok(aux_total)
    }

    /// The step's statistics, kept on the GPU (no readback): loss sums for the epoch's means
    /// and the moving average of the per-depth prototype scores.
    #[allow(clippy::too_many_arguments)]
    fn record_step(&mut self, batch: &DeviceBatch, feats: &[Tensor], outs: &[Vec<Tensor>], loss: &Tensor, ce: &Tensor, aux_total: Option<&Tensor>, ctx: &Ctx) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let views = (0..self.m).map(|i| self.fusion.unimodal(i, &feats[i].detach(), ctx)).collect::<Result<Vec<_>>>()?;
        let vs = view_stats(&views, &batch.labels)?;
        let n = batch.n as f32;
        let aux = match aux_total {
            Some(a) => ops::scale(&a.detach(), n)?,
            None => Tensor::zeros(&self.gpu, &[1])?,
        };
        let step = ops::concat(
            &[&ops::scale(&loss.detach(), n)?.reshape(&[1])?, &vs, &ops::scale(&ce.detach(), n)?.reshape(&[1])?, &aux.reshape(&[1])?],
            0,
        )?;
        self.acc.add(&step)?;
        self.acc.samples += batch.n;
        let v = self.depth_scores(outs, &batch.labels)?;
        let mo = self.cfg.score_momentum;
        self.score_ema = Some(match &self.score_ema {
            Some(s) => ops::lerp(s, &v, mo, 1.0 - mo)?,
            None => v,
        });
        Ok(())
    }
}

impl Method for Aim {
    fn name(&self) -> &'static str {
        "aim"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.fusion.params());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.encoders.iter().flat_map(|e| e.buffers()).collect();
        for (m, ps) in self.protos.iter().enumerate() {
            for (d, p) in ps.iter().enumerate() {
                v.push((format!("aim.proto.{}.{d}", self.names[m]), p.clone()));
            }
        }
        v
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        if batch.inputs.len() != self.m {
            return Err(Error::shape("aim", format!("{} modalities in the batch, the model has {}", batch.inputs.len(), self.m)));
        }
        self.prepare_step(batch, opt)?;
        let mut ctx = Ctx::train();
        // the auxiliary forward may normalise with the statistics this forward records
        let recorded = Arc::new(Mutex::new(HashMap::new()));
        if self.cfg.aux_bn == AuxBn::Main {
            ctx.bn_record = Some(recorded.clone());
        }
        let mut feats = Vec::with_capacity(self.m);
        let mut outs = Vec::with_capacity(self.m);
        for (e, x) in self.encoders.iter().zip(&batch.inputs) {
            let (f, o) = e.forward_depths(x, &ctx)?;
            feats.push(f);
            outs.push(o);
        }
        let logits = self.fusion.forward(&feats, &ctx)?;
        let ce = ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)?;
        let gamma = self.cfg.gamma;
        let aux_total = if gamma > 0.0 { self.aux_loss(batch, &feats, &ce, &ctx, &recorded)? } else { None };
        let loss = match &aux_total {
            Some(a) => ops::lerp(&ce, a, 1.0, gamma)?,
            None => ce.clone(),
        };
        let grads = loss.backward()?;
        opt.step(&grads)?;
        self.record_step(batch, &feats, &outs, &loss, &ce, aux_total.as_ref(), &ctx)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let feats = super::encode_all(&self.encoders, inputs, &ctx)?;
        let fused = self.fusion.forward(&feats, &ctx)?;
        let per_modality = (0..self.m).map(|i| self.fusion.unimodal(i, &feats[i], &ctx).map(Some)).collect::<Result<_>>()?;
        Ok(Prediction { fused, per_modality })
    }
    fn end_epoch(&mut self, epoch: usize, opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let mut stats = stats_from_sums(&sums, self.m, samples);
        let nn = samples.max(1) as f64;
        let (main_ce, aux_ce) = (sums[1 + 2 * self.m] / nn, sums[2 + 2 * self.m] / nn);

        // per-depth scores of this epoch
        let flat = match self.score_ema.take() {
            Some(t) => t.to_vec()?.into_iter().map(|v| v as f64).collect::<Vec<_>>(),
            None => vec![f64::NAN; self.depths.iter().sum()],
        };
        let mut s: Vec<Vec<f64>> = Vec::new();
        let mut off = 0;
        for &d in &self.depths {
            s.push(flat[off..off + d].to_vec());
            off += d;
        }
        // DAM: dominant / weak by final-depth score, strengths per depth for the next epoch
        let last = |m: usize| s[m][self.depths[m] - 1];
        let measured = (0..self.m).all(|m| last(m).is_finite());
        if measured {
            let dom = (0..self.m).max_by(|&a, &b| last(a).total_cmp(&last(b))).unwrap_or(0);
            let weak = (0..self.m).filter(|&i| i != dom).min_by(|&a, &b| last(a).total_cmp(&last(b))).unwrap_or(0);
            let (dd, dw) = (self.depths[dom], self.depths[weak]);
            self.ratio = (0..dd).map(|d| s[dom][d] / s[weak][map_depth(d, dd, dw)].max(1e-12)).collect();
            self.strength = self.ratio.iter().map(|&r| strength(r, self.cfg.beta, self.cfg.s_max)).collect();
            self.ratio_weak = if self.cfg.v3 { (0..dw).map(|d| s[weak][d] / s[dom][map_depth(d, dw, dd)].max(1e-12)).collect() } else { Vec::new() };
            self.strength_weak = self.ratio_weak.iter().map(|&r| strength(r, self.cfg.beta, self.cfg.s_max)).collect();
            self.dom = Some(dom);
            self.weak = weak;
        }
        // PAM masks from the optimizer's scores
        let masks_refreshed = (epoch + 1).is_multiple_of(self.cfg.mask_every) || self.masks.is_empty();
        if masks_refreshed {
            self.refresh_masks(opt)?;
        }
        self.rebuild_scales()?;
        // DAP refresh for the next epoch's scoring
        if (epoch + 1).is_multiple_of(self.cfg.prototype_every) && self.proto_ready {
            self.refresh_prototypes()?;
        }

        let scores: serde_json::Map<String, serde_json::Value> =
            self.names.iter().zip(&s).map(|(n, v)| (n.clone(), json!(v.iter().map(|x| if x.is_finite() { json!(x) } else { serde_json::Value::Null }).collect::<Vec<_>>()))).collect();
        let depths = self.dom.map_or(self.depths[0], |d| self.depths[d]);
        let mut section = json!({
            "depths": depths,
            "scores": scores,
            "ratio": self.ratio,
            "strength": self.strength,
            "mask_density": self.densities,
            "masks_refreshed": masks_refreshed,
            // whether next epoch's auxiliary blocks differ from the full encoders (some layer scaled)
            "damped": {"dominant": self.scales_dom.is_some(), "weak": self.scales_weak.is_some()},
            "dominant": self.dom.map(|d| self.names[d].clone()),
            "weak": self.dom.map(|_| self.names[self.weak].clone()),
            "main_loss": main_ce,
            "aux_loss": aux_ce,
            "prototype_ce": self.names.iter().zip(&self.proto_ce).map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        if self.cfg.v3 {
            section["ratio_weak"] = json!(self.ratio_weak);
            section["strength_weak"] = json!(self.strength_weak);
        }
        stats.extra.push(("aim".into(), section));
        Ok(stats)
    }
    fn state(&self) -> serde_json::Value {
        json!({
            "proto_ready": self.proto_ready,
            "dominant": self.dom,
            "weak": self.weak,
            "strength": self.strength,
            "strength_weak": self.strength_weak,
            "ratio": self.ratio,
            "ratio_weak": self.ratio_weak,
        })
    }
    /// Each modality dominant in turn, every depth damped at strength 0.5 (and the weak
    /// encoder's under v3): the auxiliary forwards with their weight-scaled products.
    fn pretune_states(&self) -> Vec<serde_json::Value> {
        let depths = |m: usize| self.layers.iter().filter(|l| l.modality == m).map(|l| l.depth + 1).max().unwrap_or(0);
        (0..self.m)
            .filter(|_| self.m >= 2)
            .map(|dom| {
                let weak = usize::from(dom == 0);
                json!({
                    "proto_ready": false, "dominant": dom, "weak": weak,
                    "strength": vec![0.5; depths(dom)], "ratio": vec![1.0; depths(dom)],
                    "strength_weak": vec![0.5; depths(weak)], "ratio_weak": vec![1.0; depths(weak)],
                })
            })
            .collect()
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let f32s = |k: &str| -> Vec<f32> { state.get(k).and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default() };
        self.proto_ready = state.get("proto_ready").and_then(|v| v.as_bool()).unwrap_or(false);
        self.dom = state.get("dominant").and_then(|v| v.as_u64()).map(|v| v as usize).filter(|&d| d < self.m);
        self.weak = state.get("weak").and_then(|v| v.as_u64()).map(|v| v as usize).filter(|&d| d < self.m).unwrap_or(0);
        self.strength = f32s("strength");
        self.strength_weak = f32s("strength_weak");
        self.ratio = f32s("ratio").into_iter().map(|v| v as f64).collect();
        self.ratio_weak = f32s("ratio_weak").into_iter().map(|v| v as f64).collect();
        // the masks come back from the optimizer's restored scores at the next step
        self.masks_stale = self.dom.is_some();
        Ok(())
    }
}
