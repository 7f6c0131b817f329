//! Built-in synthetic multimodal dataset (no files).
//!
//! Each modality `m` has a fixed random pattern per class (zero mean, unit RMS), made of
//! Gaussian blobs over the last two axes: `bands` (narrow in the first axis, long in the
//! second: frequency bands of a `[1, F, T]` spectrogram) or `blobs` (round spatial
//! templates of a `[C, H, W]` image). A sample of class `y` is
//! `signal[m] · roll(pattern[m][y'], dy, dx) + noise[m] · N(0, 1)`, where the circular shift
//! `(dy, dx)` is uniform in `±max_shift`, and `y' = y` with probability `informative[m]`,
//! else a uniformly random class. Everything is a pure function of `(seed, split, index)`;
//! labels cycle through the classes (`index mod K`), so splits are balanced.
//!
//! Defaults: `audio` 1×32×32 is weak (signal 0.06) and `visual` 1×28×28 is strong
//! (signal 0.5), both with noise 1: the visual branch learns fast and dominates joint
//! training while audio alone still classifies well above chance.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::{check_index, derive_seed, gauss, Dataset, ModalitySpec, Split};
use crate::error::{Error, Result};

/// One generated modality: class patterns plus noise, shifted at random.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticModality {
    /// Modality name.
    pub name: String,
    /// Per-sample shape, rank 1 to 4 (e.g. `[1, 32, 32]`).
    pub shape: Vec<usize>,
    /// Pattern amplitude (≥ 0).
    pub signal: f32,
    /// Standard deviation of the additive Gaussian noise (≥ 0).
    pub noise: f32,
    /// Maximum circular shift of the pattern along each of the last two axes.
    pub max_shift: usize,
    /// Probability that the pattern shown is the true class's (in [0, 1]).
    pub informative: f32,
    /// `bands`, `blobs`, or `auto` (bands when the name contains "audio").
    pub style: String,
}

impl Default for SyntheticModality {
    fn default() -> Self {
        SyntheticModality {
            name: "modality".into(),
            shape: vec![1, 28, 28],
            signal: 0.5,
            noise: 1.0,
            max_shift: 2,
            informative: 1.0,
            style: "auto".into(),
        }
    }
}

/// The `[data]` table for `kind = "synthetic"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seed of the patterns and of every sample.
    pub seed: u64,
    /// Number of classes.
    pub num_classes: usize,
    /// Training samples.
    pub n_train: usize,
    /// Validation samples (0: no val split).
    pub n_val: usize,
    /// Test samples.
    pub n_test: usize,
    /// Two or more modalities.
    pub modalities: Vec<SyntheticModality>,
    /// Optional per-modality overrides of `modalities[i].signal` (same length).
    pub signal: Vec<f32>,
    /// Optional per-modality overrides of `modalities[i].noise` (same length).
    pub noise: Vec<f32>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            num_classes: 10,
            n_train: 1200,
            n_val: 0,
            n_test: 400,
            modalities: vec![
                SyntheticModality {
                    name: "audio".into(),
                    shape: vec![1, 16, 16],
                    signal: 0.35,
                    noise: 1.0,
                    max_shift: 2,
                    informative: 1.0,
                    style: "bands".into(),
                },
                SyntheticModality {
                    name: "visual".into(),
                    shape: vec![1, 16, 16],
                    signal: 0.5,
                    noise: 1.0,
                    max_shift: 2,
                    informative: 1.0,
                    style: "blobs".into(),
                },
            ],
            signal: vec![],
            noise: vec![],
        }
    }
}

/// Most samples per split of a synthetic dataset.
const MAX_SAMPLES: usize = 100_000_000;
/// Most values of the class patterns of one modality (1 GiB of f32).
const MAX_PATTERN_VALUES: usize = 1 << 28;

impl SyntheticConfig {
    /// Check every value; errors name the field (`data.<field>`).
    pub fn validate(&self) -> Result<()> {
        self.validate_sizes()?;
        self.validate_gains()?;
        let mut names = std::collections::HashSet::new();
        for (i, md) in self.modalities.iter().enumerate() {
            let f = |k: &str| format!("data.modalities[{i}].{k}");
            if md.name.is_empty() || !names.insert(md.name.as_str()) {
                return Err(Error::config(
                    f("name"),
                    format!("must be non-empty and unique, got `{}`", md.name),
                ));
            }
            md.validate(i, self.num_classes)?;
        }
        Ok(())
    }

    /// Class, sample and modality counts.
    fn validate_sizes(&self) -> Result<()> {
        if self.num_classes < 2 || self.num_classes > 100_000 {
            return Err(Error::config(
                "data.num_classes",
                format!("must be in 2..=100000, got {}", self.num_classes),
            ));
        }
        if self.n_train == 0 {
            return Err(Error::config("data.n_train", "must be >= 1"));
        }
        // the loader keeps a shuffled index per sample: cap the counts before anything
        // allocates them
        for (f, n) in [("data.n_train", self.n_train), ("data.n_val", self.n_val), ("data.n_test", self.n_test)] {
            if n > MAX_SAMPLES {
                return Err(Error::config(f, format!("must be at most {MAX_SAMPLES}, got {n}")));
            }
        }
        if self.modalities.len() < 2 {
            return Err(Error::config(
                "data.modalities",
                format!("need at least 2 modalities, got {}", self.modalities.len()),
            ));
        }
        Ok(())
    }

    /// The per-modality `signal` and `noise` lists: one finite, non-negative value per
    /// modality, or empty.
    fn validate_gains(&self) -> Result<()> {
        let m = self.modalities.len();
        if !self.signal.is_empty() && self.signal.len() != m {
            return Err(Error::config(
                "data.signal",
                format!(
                    "needs one value per modality ({m}), got {}",
                    self.signal.len()
                ),
            ));
        }
        if !self.noise.is_empty() && self.noise.len() != m {
            return Err(Error::config(
                "data.noise",
                format!(
                    "needs one value per modality ({m}), got {}",
                    self.noise.len()
                ),
            ));
        }
        if let Some(v) = self.signal.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::config(
                "data.signal",
                format!("values must be finite and >= 0, got {v}"),
            ));
        }
        if let Some(v) = self.noise.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::config(
                "data.noise",
                format!("values must be finite and >= 0, got {v}"),
            ));
        }
        Ok(())
    }
}

impl SyntheticModality {
    /// Checks the `i`-th `[[data.modalities]]` entry (all but its name, whose uniqueness
    /// [`SyntheticConfig::validate`] checks).
    fn validate(&self, i: usize, num_classes: usize) -> Result<()> {
        let f = |k: &str| format!("data.modalities[{i}].{k}");
        if self.shape.is_empty() || self.shape.len() > 4 || self.shape.contains(&0) {
            return Err(Error::config(
                f("shape"),
                format!("rank 1..=4 with all sizes >= 1, got {:?}", self.shape),
            ));
        }
        // checked: a wrapped product (e.g. 2^32 x 2^32 = 0) must not pass as small
        if crate::limits::checked_numel(&self.shape, "shape").map_or(true, |n| n > 1 << 24) {
            return Err(Error::config(
                f("shape"),
                format!("{:?} is too large (max 2^24 values)", self.shape),
            ));
        }
        // one pattern per class is kept in memory
        let patterns = crate::limits::checked_numel(&self.shape, "shape").ok().and_then(|n| n.checked_mul(num_classes));
        if patterns.is_none_or(|p| p > MAX_PATTERN_VALUES) {
            return Err(Error::config(
                f("shape"),
                format!("{:?} x {} classes of class patterns is more than {MAX_PATTERN_VALUES} values", self.shape, num_classes),
            ));
        }
        if !(self.signal.is_finite() && self.signal >= 0.0) {
            return Err(Error::config(
                f("signal"),
                format!("must be finite and >= 0, got {}", self.signal),
            ));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(Error::config(
                f("noise"),
                format!("must be finite and >= 0, got {}", self.noise),
            ));
        }
        if !(0.0..=1.0).contains(&self.informative) {
            return Err(Error::config(
                f("informative"),
                format!("must be in [0, 1], got {}", self.informative),
            ));
        }
        if !["auto", "bands", "blobs"].contains(&self.style.as_str()) {
            return Err(Error::config(
                f("style"),
                format!("allowed: auto, bands, blobs; got `{}`", self.style),
            ));
        }
        Ok(())
    }
}

struct ModalityGen {
    signal: f32,
    noise: f32,
    max_shift: usize,
    informative: f32,
    /// (lead, h, w) view of the shape.
    dims: (usize, usize, usize),
    /// `num_classes` patterns of `numel` values.
    patterns: Vec<Vec<f32>>,
}

/// A synthetic dataset; samples are generated on demand from `(seed, split, index)`.
pub struct SyntheticDataset {
    cfg: SyntheticConfig,
    specs: Vec<ModalitySpec>,
    gens: Vec<ModalityGen>,
}

fn view3(shape: &[usize]) -> (usize, usize, usize) {
    match shape.len() {
        1 => (1, 1, shape[0]),
        _ => {
            let r = shape.len();
            (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
        }
    }
}

fn make_pattern(rng: &mut StdRng, dims: (usize, usize, usize), bands: bool) -> Vec<f32> {
    let (c, h, w) = dims;
    let mut p = vec![0.0f32; c * h * w];
    for ch in 0..c {
        let nb = if bands { 3 } else { 4 };
        for _ in 0..nb {
            let cy = rng.random::<f32>() * h as f32;
            let cx = rng.random::<f32>() * w as f32;
            let (sy, sx) = if bands {
                (
                    (0.03 + 0.05 * rng.random::<f32>()) * h as f32,
                    (0.3 + 0.5 * rng.random::<f32>()) * w as f32,
                )
            } else {
                (
                    (0.08 + 0.12 * rng.random::<f32>()) * h as f32,
                    (0.08 + 0.12 * rng.random::<f32>()) * w as f32,
                )
            };
            let (sy, sx) = (sy.max(0.5), sx.max(0.5));
            let amp = if rng.random::<bool>() { 1.0 } else { -1.0 } * (0.5 + rng.random::<f32>());
            for y in 0..h {
                let dy = (y as f32 - cy) / sy;
                for x in 0..w {
                    let dx = (x as f32 - cx) / sx;
                    p[(ch * h + y) * w + x] += amp * (-0.5 * (dy * dy + dx * dx)).exp();
                }
            }
        }
    }
    let n = p.len() as f32;
    let mean = p.iter().sum::<f32>() / n;
    let rms = (p.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n)
        .sqrt()
        .max(1e-12);
    p.iter_mut().for_each(|v| *v = (*v - mean) / rms);
    p
}

impl SyntheticDataset {
    /// Build the class patterns; errors name a bad config field.
    pub fn new(cfg: &SyntheticConfig) -> Result<Self> {
        cfg.validate()?;
        let mut specs = Vec::new();
        let mut gens = Vec::new();
        for (mi, md) in cfg.modalities.iter().enumerate() {
            let dims = view3(&md.shape);
            let bands = match md.style.as_str() {
                "bands" => true,
                "blobs" => false,
                _ => md.name.to_lowercase().contains("audio"),
            };
            let patterns = (0..cfg.num_classes)
                .map(|c| {
                    let mut rng = StdRng::seed_from_u64(derive_seed(&[
                        cfg.seed, mi as u64, c as u64, 0xBA77,
                    ]));
                    make_pattern(&mut rng, dims, bands)
                })
                .collect();
            gens.push(ModalityGen {
                signal: cfg.signal.get(mi).copied().unwrap_or(md.signal),
                noise: cfg.noise.get(mi).copied().unwrap_or(md.noise),
                max_shift: md.max_shift,
                informative: md.informative,
                dims,
                patterns,
            });
            specs.push(ModalitySpec::new(md.name.clone(), md.shape.clone()));
        }
        Ok(SyntheticDataset {
            cfg: cfg.clone(),
            specs,
            gens,
        })
    }

    /// The clean class pattern of modality `m` (unit RMS).
    pub fn pattern(&self, m: usize, class: usize) -> &[f32] {
        &self.gens[m].patterns[class]
    }
}

impl Dataset for SyntheticDataset {
    fn name(&self) -> &str {
        "synthetic"
    }
    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
    fn modalities(&self) -> &[ModalitySpec] {
        &self.specs
    }
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.cfg.n_train,
            Split::Val => self.cfg.n_val,
            Split::Test => self.cfg.n_test,
        }
    }
    fn sample(
        &self,
        split: Split,
        index: usize,
        _aug: Option<&mut StdRng>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        check_index("synthetic", split, index, self.len(split))?;
        let k = self.cfg.num_classes;
        let label = index % k;
        let mut rng = StdRng::seed_from_u64(derive_seed(&[
            self.cfg.seed,
            split.id(),
            index as u64,
            0x5A,
        ]));
        let xs = self
            .gens
            .iter()
            .map(|g| {
                let shown = if g.informative >= 1.0 || rng.random::<f32>() < g.informative {
                    label
                } else {
                    rng.random_range(0..k)
                };
                let s = g.max_shift as i64;
                let dy = if s > 0 { rng.random_range(-s..=s) } else { 0 };
                let dx = if s > 0 { rng.random_range(-s..=s) } else { 0 };
                let (c, h, w) = g.dims;
                let pat = &g.patterns[shown];
                let mut out = vec![0.0f32; c * h * w];
                for ch in 0..c {
                    for y in 0..h {
                        let sy = (y as i64 - dy).rem_euclid(h as i64) as usize;
                        for x in 0..w {
                            let sx = (x as i64 - dx).rem_euclid(w as i64) as usize;
                            out[(ch * h + y) * w + x] =
                                g.signal * pat[(ch * h + sy) * w + sx] + g.noise * gauss(&mut rng);
                        }
                    }
                }
                out
            })
            .collect();
        Ok((xs, label as u32))
    }
}
