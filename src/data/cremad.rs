//! CREMA-D in the layout prepared by the OGM-GE scripts:
//! ```text
//! ROOT/AudioWAV/<clip_id>.wav            mono WAV (16 kHz in the original)
//! ROOT/Image-01-FPS/<clip_id>/*.jpg      frames extracted at 1 fps
//! ROOT/annotations/train.csv, test.csv   clip_id,EMOTION (no header; \r\n accepted)
//! ```
//! Emotions NEU HAP SAD FEA DIS ANG → 0..5 (OGM-GE's `class_dict`).
//!
//! Audio (as OGM-GE's `CramedDataset`): resampled to `sample_rate` (22,050 Hz, windowed-sinc,
//! see [`super::resample`]), tiled (repeated) and cut to `seconds`, clipped to [-1, 1],
//! `ln(|STFT| + 1e-7)` with n_fft 512, hop 353, periodic Hann, centred with reflect padding
//! (librosa < 0.10's `stft` defaults) → `[1, 257, 1 + ⌊seconds·sr / 353⌋]` = 257×188 for 3 s,
//! 257×1250 for 20 s.
//!
//! Visual: one frame, `[3, image_size, image_size]`, ImageNet normalisation. Training with
//! augmentation: `RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3)` + horizontal flip;
//! evaluation: `Resize((size, size))`. Frame choice (`frame`): `random` (default) takes a
//! uniformly random frame when augmenting and the middle frame (sorted by name) otherwise;
//! `middle` always the middle one; `first` always the first in name order. OGM-GE itself
//! draws random indices but then (a known quirk) opens `image_samples[i]` for `i < fps`, i.e.
//! the first file of `os.listdir` order in both train and test; `first` is the closest
//! deterministic equivalent.
//!
//! Files are read lazily in `sample` (so in the loader's worker threads).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::Rng;
use serde::Deserialize;

use super::image_ops::{
    load_rgb, random_resized_crop_flip, resize, to_chw_normalized, IMAGENET_MEAN, IMAGENET_STD,
};
use super::resample::Resampler;
use super::stft::{PadMode, Stft, StftConfig, WindowKind};
use super::wav::read_wav_mono;
use super::{check_index, Dataset, ModalitySpec, Split};
use crate::error::{Error, Result};

/// Emotion codes in label order (0..5), as in OGM-GE's `class_dict`.
pub const EMOTIONS: [&str; 6] = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"];

/// The `[data]` table for `kind = "cremad"`; defaults follow OGM-GE (see the module docs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CremadConfig {
    /// Dataset root (required).
    pub root: Option<String>,
    /// Rate the audio is resampled to, Hz (1000..=192000).
    pub sample_rate: u32,
    /// Audio length after tiling, seconds (OGM-GE 3, AUG 20).
    pub seconds: f64,
    /// STFT frame length in samples (bins = `n_fft / 2 + 1`).
    pub n_fft: usize,
    /// STFT hop in samples.
    pub hop: usize,
    /// STFT analysis window.
    pub window: WindowKind,
    /// STFT padding at both ends.
    pub pad_mode: PadMode,
    /// `ε` in `ln(|STFT| + ε)`, > 0.
    pub log_eps: f32,
    /// Clip the tiled waveform to [-1, 1] (OGM-GE does).
    pub clip_audio: bool,
    /// Output frame size (square).
    pub image_size: usize,
    /// `random`, `middle` or `first`.
    pub frame: String,
    /// RandomResizedCrop + flip when the loader augments (training).
    pub augment: bool,
    /// WAV folder, relative to `root` (or absolute).
    pub audio_dir: String,
    /// Frame folders (one per clip), relative to `root` (or absolute).
    pub frames_dir: String,
    /// Training list `clip_id,EMOTION`, relative to `root` (or absolute).
    pub train_csv: String,
    /// Test list, same format.
    pub test_csv: String,
    /// Optional validation list (same format); empty = no val split.
    pub val_csv: String,
    /// `ogm_ge`: the splits are the lists above as they are (OGM-GE's lists share all 91
    /// actors between train and test); `actor`: every listed clip, re-split by actor so no
    /// speaker is in two splits (see [`actor_split`]).
    pub split: CremadSplit,
    /// `actor` split: fraction of the actors held out for test ...
    pub test_fraction: f64,
    /// ... and for validation (0: no validation split) ...
    pub val_fraction: f64,
    /// ... chosen by this seed (independent of the training seed, so runs with different
    /// seeds share one split).
    pub split_seed: u64,
}

/// How CREMA-D's clips are split (`data.split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CremadSplit {
    /// The lists as they are (`ogm_ge`).
    OgmGe,
    /// Every listed clip re-split by actor (`actor`).
    Actor,
}

impl Default for CremadConfig {
    fn default() -> Self {
        CremadConfig {
            root: None,
            sample_rate: 22050,
            seconds: 3.0,
            n_fft: 512,
            hop: 353,
            window: WindowKind::Hann,
            pad_mode: PadMode::Reflect,
            log_eps: 1e-7,
            clip_audio: true,
            image_size: 224,
            frame: "random".into(),
            augment: true,
            audio_dir: "AudioWAV".into(),
            frames_dir: "Image-01-FPS".into(),
            train_csv: "annotations/train.csv".into(),
            test_csv: "annotations/test.csv".into(),
            val_csv: String::new(),
            split: CremadSplit::OgmGe,
            test_fraction: 0.1,
            val_fraction: 0.0,
            split_seed: 0,
        }
    }
}

impl CremadConfig {
    /// Check every value; errors name the field (`data.<field>`).
    pub fn validate(&self) -> Result<()> {
        if self.root.as_deref().unwrap_or("").is_empty() {
            return Err(Error::config(
                "data.root",
                "required: the CREMA-D directory (AudioWAV, Image-01-FPS, annotations)",
            ));
        }
        if !(1000..=192_000).contains(&self.sample_rate) {
            return Err(Error::config(
                "data.sample_rate",
                format!("must be in 1000..=192000 Hz, got {}", self.sample_rate),
            ));
        }
        if !(self.seconds > 0.0 && self.seconds <= 120.0) {
            return Err(Error::config(
                "data.seconds",
                format!("must be in (0, 120], got {}", self.seconds),
            ));
        }
        let n = (self.seconds * self.sample_rate as f64).round() as usize;
        if self.n_fft < 2 || self.n_fft / 2 >= n {
            return Err(Error::config(
                "data.n_fft",
                format!("must be >= 2 and n_fft/2 < {n} samples, got {}", self.n_fft),
            ));
        }
        if self.hop == 0 {
            return Err(Error::config("data.hop", "must be >= 1"));
        }
        if !(self.log_eps > 0.0 && self.log_eps.is_finite()) {
            return Err(Error::config(
                "data.log_eps",
                format!("must be a finite number > 0, got {}", self.log_eps),
            ));
        }
        if !(8..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "data.image_size",
                format!("must be in 8..=4096, got {}", self.image_size),
            ));
        }
        for (field, v) in [("data.test_fraction", self.test_fraction), ("data.val_fraction", self.val_fraction)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(field, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(self.test_fraction + self.val_fraction < 1.0) {
            return Err(Error::config("data.val_fraction", "test_fraction + val_fraction must leave actors for training"));
        }
        if !["random", "middle", "first"].contains(&self.frame.as_str()) {
            return Err(Error::config(
                "data.frame",
                format!("allowed: random, middle, first; got `{}`", self.frame),
            ));
        }
        Ok(())
    }
}

struct ClipEntry {
    id: String,
    label: u32,
    frames: Vec<PathBuf>,
}

/// CREMA-D: `new` reads the lists and finds each clip's frames; `sample` reads the WAV and
/// a frame, giving `audio` `[1, bins, frames]` and `visual` `[3, image_size, image_size]`.
pub struct CremadDataset {
    cfg: CremadConfig,
    root: PathBuf,
    specs: Vec<ModalitySpec>,
    stft: Stft,
    n_samples: usize,
    train: Vec<ClipEntry>,
    val: Vec<ClipEntry>,
    test: Vec<ClipEntry>,
}

/// Parse an annotation list `clip_id,EMOTION` (no header, `\n` or `\r\n`).
pub fn read_annotations(path: &Path) -> Result<Vec<(String, u32)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line
            .trim_end_matches('\r')
            .trim()
            .trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(',');
        let (id, emo) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.trim().is_empty() => (a.trim(), b.trim()),
            _ => {
                return Err(Error::data(
                    name,
                    format!("line {}: expected `clip_id,EMOTION`, got `{line}`", ln + 1),
                ))
            }
        };
        let label = EMOTIONS.iter().position(|e| *e == emo).ok_or_else(|| {
            Error::data(
                name.clone(),
                format!(
                    "line {}: unknown emotion `{emo}`; allowed: {}",
                    ln + 1,
                    EMOTIONS.join(" ")
                ),
            )
        })?;
        out.push((id.to_string(), label as u32));
    }
    if out.is_empty() {
        return Err(Error::data(name, "annotation list is empty"));
    }
    Ok(out)
}

/// The actor of a CREMA-D clip: the number before the first `_` (`1001_DFA_ANG_XX` → 1001).
pub fn actor_of(clip: &str) -> Result<u32> {
    clip.split('_')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::data(clip, "clip id does not start with a numeric actor id (`1001_DFA_ANG_XX`)"))
}

type Clips = Vec<(String, u32)>;

/// An actor-disjoint split of `clips` (duplicates dropped, first occurrence kept): the
/// actors, sorted and shuffled by `seed`, give round(`test_fraction`·A) (at least one) to
/// test, then round(`val_fraction`·A) (at least one when the fraction is positive) to
/// validation, the rest to training. Returns (train, val, test), each in `clips` order.
pub fn actor_split(clips: &[(String, u32)], test_fraction: f64, val_fraction: f64, seed: u64) -> Result<(Clips, Clips, Clips)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::new();
    for (id, label) in clips {
        if seen.insert(id.clone()) {
            unique.push((id.clone(), *label, actor_of(id)?));
        }
    }
    let mut actors: Vec<u32> = unique.iter().map(|c| c.2).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    actors.shuffle(&mut StdRng::seed_from_u64(seed));
    let a = actors.len();
    let share = |f: f64| if f > 0.0 { ((f * a as f64).round() as usize).max(1) } else { 0 };
    let (n_test, n_val) = (share(test_fraction).max(1), share(val_fraction));
    if n_test + n_val >= a {
        return Err(Error::config(
            "data.test_fraction",
            format!("{a} actors cannot give {n_test} to test and {n_val} to validation and keep one for training"),
        ));
    }
    let test: std::collections::HashSet<u32> = actors[..n_test].iter().copied().collect();
    let val: std::collections::HashSet<u32> = actors[n_test..n_test + n_val].iter().copied().collect();
    let (mut tr, mut va, mut te) = (Vec::new(), Vec::new(), Vec::new());
    for (id, label, actor) in unique {
        let dst = if test.contains(&actor) {
            &mut te
        } else if val.contains(&actor) {
            &mut va
        } else {
            &mut tr
        };
        dst.push((id, label));
    }
    Ok((tr, va, te))
}

/// The (clip id, label) lists in the order train, test, val: the annotation files as
/// given, or with `split = "actor"` all of them pooled and split by actor.
fn split_lists(cfg: &CremadConfig, root: &Path) -> Result<Vec<Vec<(String, u32)>>> {
    let mut lists = vec![
        read_annotations(&root.join(&cfg.train_csv))?,
        read_annotations(&root.join(&cfg.test_csv))?,
    ];
    if !cfg.val_csv.is_empty() {
        lists.push(read_annotations(&root.join(&cfg.val_csv))?);
    }
    if cfg.split == CremadSplit::Actor {
        let all: Vec<(String, u32)> = lists.concat();
        let (train, val, test) = actor_split(&all, cfg.test_fraction, cfg.val_fraction, cfg.split_seed)?;
        lists = vec![train, test, val];
    }
    Ok(lists)
}

/// A listed clip with its audio file checked and its frames found.
fn clip_entry(cfg: &CremadConfig, root: &Path, id: String, label: u32) -> Result<ClipEntry> {
    let wav = root.join(&cfg.audio_dir).join(format!("{id}.wav"));
    if !wav.is_file() {
        return Err(Error::io(
            &wav,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "audio file of listed clip not found",
            ),
        ));
    }
    let frames = list_frames(&root.join(&cfg.frames_dir).join(&id))?;
    Ok(ClipEntry { id, label, frames })
}

/// The image files (`.jpg`, `.jpeg`, `.png`) of a clip's frame folder, sorted; at least one.
fn list_frames(fdir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(fdir).map_err(|e| Error::io(fdir, e))?;
    let mut frames = Vec::new();
    for e in rd {
        let p = e.map_err(|e| Error::io(fdir, e))?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
            frames.push(p);
        }
    }
    frames.sort();
    if frames.is_empty() {
        return Err(Error::data(
            fdir.display().to_string(),
            "no .jpg frames for this clip",
        ));
    }
    Ok(frames)
}

impl CremadDataset {
    /// Read the lists and find each clip's frames; errors name a missing file or folder, a bad
/// line or a bad config field.
    pub fn new(cfg: &CremadConfig) -> Result<Self> {
        cfg.validate()?;
        let root = PathBuf::from(cfg.root.clone().unwrap_or_default());
        if !root.is_dir() {
            return Err(Error::io(
                &root,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "CREMA-D root directory not found",
                ),
            ));
        }
        let lists = split_lists(cfg, &root)?;
        let mut resolved = lists
            .into_iter()
            .map(|l| l.into_iter().map(|(id, label)| clip_entry(cfg, &root, id, label)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let train = resolved.next().unwrap_or_default();
        let test = resolved.next().unwrap_or_default();
        let val = resolved.next().unwrap_or_default();
        let stft = Stft::new(StftConfig {
            n_fft: cfg.n_fft,
            hop: cfg.hop,
            window: cfg.window,
            center: true,
            pad_mode: cfg.pad_mode,
        })?;
        let n_samples = (cfg.seconds * cfg.sample_rate as f64).round() as usize;
        let s = cfg.image_size;
        let specs = vec![
            ModalitySpec::new(
                "audio",
                vec![1, stft.num_bins(), stft.num_frames(n_samples)],
            ),
            ModalitySpec::new("visual", vec![3, s, s]),
        ];
        Ok(CremadDataset {
            cfg: cfg.clone(),
            root,
            specs,
            stft,
            n_samples,
            train,
            val,
            test,
        })
    }

    fn entries(&self, split: Split) -> &[ClipEntry] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Clip id and label of a sample.
    pub fn clip(&self, split: Split, index: usize) -> Option<(&str, u32)> {
        self.entries(split)
            .get(index)
            .map(|e| (e.id.as_str(), e.label))
    }

    /// Tiled, resampled waveform of a clip (before the STFT).
    pub fn waveform(&self, id: &str) -> Result<Vec<f32>> {
        let path = self
            .root
            .join(&self.cfg.audio_dir)
            .join(format!("{id}.wav"));
        let w = read_wav_mono(&path)?;
        let x = if w.sample_rate != self.cfg.sample_rate {
            Resampler::new(w.sample_rate, self.cfg.sample_rate).process(&w.samples)
        } else {
            w.samples
        };
        if x.is_empty() {
            return Err(Error::data(
                path.display().to_string(),
                "no samples after resampling",
            ));
        }
        let mut out: Vec<f32> = x.iter().copied().cycle().take(self.n_samples).collect();
        if self.cfg.clip_audio {
            out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        }
        Ok(out)
    }
}

impl Dataset for CremadDataset {
    fn name(&self) -> &str {
        "cremad"
    }
    fn num_classes(&self) -> usize {
        EMOTIONS.len()
    }
    fn modalities(&self) -> &[ModalitySpec] {
        &self.specs
    }
    fn len(&self, split: Split) -> usize {
        self.entries(split).len()
    }
    fn sample(
        &self,
        split: Split,
        index: usize,
        aug: Option<&mut StdRng>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        check_index("cremad", split, index, self.len(split))?;
        let e = &self.entries(split)[index];
        let wave = self.waveform(&e.id)?;
        let spec = self.stft.log_magnitude(&wave, self.cfg.log_eps)?;
        let nf = e.frames.len();
        let mut aug = aug;
        let fi = match (self.cfg.frame.as_str(), aug.as_deref_mut()) {
            ("random", Some(rng)) => rng.random_range(0..nf),
            ("first", _) => 0,
            _ => nf / 2,
        };
        let img = load_rgb(&e.frames[fi])?;
        let s = self.cfg.image_size as u32;
        let img = match aug {
            Some(rng) if self.cfg.augment => random_resized_crop_flip(&img, s, s, rng),
            _ => resize(&img, s, s),
        };
        Ok((
            vec![spec, to_chw_normalized(&img, IMAGENET_MEAN, IMAGENET_STD)],
            e.label,
        ))
    }
}
