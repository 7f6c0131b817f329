//! AV-MNIST-style benchmark from FSDD spoken digits and MNIST images, the protocol of
//! `bench/torch/avmnist_protocol.py` (the files: `equimodal data list`; the protocol and
//! its PyTorch figures: docs/gpu.md):
//!
//! 1. WAVs `fsdd/recordings/{digit}_{speaker}_{take}.wav` in sorted file-name order; split
//!    `take` (takes `< test_takes` = test, others train) or `speaker` (held-out speakers).
//! 2. Each clip: peak-normalised (`x / (max|x| + 1e-6)` on the integer scale), padded with
//!    zeros / cropped to `duration_s` (1 s); optionally white noise at `audio_snr_db`
//!    (`σ² = mean(x²) / 10^(snr/10)`); `ln(|STFT| + 1e-6)`, n_fft 256, hop 64, periodic Hann,
//!    centred with reflect padding (torch.stft defaults) → `[1, 129, 126]`.
//! 3. Standardised with one scalar mean and (unbiased) std over the training spectrograms
//!    (`standardize = "train"`, the documented protocol; `"all"` uses every clip like the
//!    reference script's code, `"none"` skips it).
//! 4. Images `/255`; optional PCA degradation (each image rebuilt from the leading principal
//!    components of the training pool holding `image_pca_energy` of its variance) and
//!    Gaussian `image_noise`; each clip paired with a uniformly drawn image of the same digit,
//!    train clips from `train_pool`, test clips from `test_pool`.
//!    One RNG seeded by `seed` draws, in the reference's order, image noise, audio noise, then
//!    the pairing. `val_fraction` of the training clips (seeded) become the `val` split.
//!
//! Everything is preprocessed in `new`; `sample` only copies.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::idx::{read_mnist, Mnist};
use super::pca::Pca;
use super::stft::{Stft, StftConfig, WindowKind};
use super::wav::{peak_normalize, read_wav_mono};
use super::{catalog, check_index, default_data_root, derive_seed, gauss, Dataset, ModalitySpec, Split};
use crate::error::{Error, Result};

/// The `[data]` table for `kind = "avmnist"`; defaults follow the protocol above.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AvmnistConfig {
    /// Data root holding `fsdd/recordings` and `mnist/`; default `$EQUIMODAL_DATA`, else the
    /// per-user data directory (`data::catalog::default_data_root`).
    pub root: Option<String>,
    /// Seed of the image noise, audio noise, pairing and val draws.
    pub seed: u64,
    /// `take` or `speaker`.
    pub split: String,
    /// With `split = "take"`: takes `0..test_takes` are the test set.
    pub test_takes: u32,
    /// With `split = "speaker"`: speakers held out for test.
    pub test_speakers: Vec<String>,
    /// Fraction of the training clips moved to a `val` split, in [0, 1).
    pub val_fraction: f64,
    /// MNIST index range `[start, end)` for training (and val) images.
    pub train_pool: [usize; 2],
    /// MNIST index range `[start, end)` for test images.
    pub test_pool: [usize; 2],
    /// Fraction of the training pool's variance kept by PCA, in (0, 1]; 1 disables.
    pub image_pca_energy: f64,
    /// Std of Gaussian noise added to the images (pixel scale 0..1).
    pub image_noise: f32,
    /// SNR in dB of white noise added to the audio; absent = none.
    pub audio_snr_db: Option<f32>,
    /// Rate the clips are resampled to, Hz (1000..=192000; FSDD is 8000).
    pub sample_rate: u32,
    /// Clip length after padding or cropping, seconds.
    pub duration_s: f64,
    /// STFT frame length in samples (bins = `n_fft / 2 + 1`).
    pub n_fft: usize,
    /// STFT hop in samples.
    pub hop: usize,
    /// STFT analysis window.
    pub window: WindowKind,
    /// `ε` in `ln(|STFT| + ε)`, > 0.
    pub log_eps: f32,
    /// `train`, `all` or `none`.
    pub standardize: String,
    /// Paths relative to `root` (or absolute).
    pub fsdd_dir: String,
    /// MNIST images file (IDX, gzipped or plain).
    pub mnist_images: String,
    /// MNIST labels file (IDX, gzipped or plain).
    pub mnist_labels: String,
}

impl Default for AvmnistConfig {
    fn default() -> Self {
        AvmnistConfig {
            root: None,
            seed: 0,
            split: "take".into(),
            test_takes: 5,
            test_speakers: vec!["george".into()],
            val_fraction: 0.0,
            train_pool: [0, 6000],
            test_pool: [6000, 8000],
            image_pca_energy: 1.0,
            image_noise: 0.0,
            audio_snr_db: None,
            sample_rate: 8000,
            duration_s: 1.0,
            n_fft: 256,
            hop: 64,
            window: WindowKind::Hann,
            log_eps: 1e-6,
            standardize: "train".into(),
            fsdd_dir: catalog::FSDD_RECORDINGS.into(),
            mnist_images: catalog::MNIST_IMAGES.into(),
            mnist_labels: catalog::MNIST_LABELS.into(),
        }
    }
}

impl AvmnistConfig {
    /// Check every value; errors name the field (`data.<field>`).
    pub fn validate(&self) -> Result<()> {
        self.validate_split()?;
        self.validate_images()?;
        self.validate_audio()
    }

    /// The split (by take or speaker), the validation share and the image pools.
    fn validate_split(&self) -> Result<()> {
        if !["take", "speaker"].contains(&self.split.as_str()) {
            return Err(Error::config(
                "data.split",
                format!("allowed: take, speaker; got `{}`", self.split),
            ));
        }
        if self.split == "take" && self.test_takes == 0 {
            return Err(Error::config("data.test_takes", "must be >= 1"));
        }
        if self.split == "speaker" && self.test_speakers.is_empty() {
            return Err(Error::config(
                "data.test_speakers",
                "list at least one speaker to hold out",
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::config(
                "data.val_fraction",
                format!("must be in [0, 1), got {}", self.val_fraction),
            ));
        }
        for (f, p) in [
            ("data.train_pool", self.train_pool),
            ("data.test_pool", self.test_pool),
        ] {
            if p[0] >= p[1] {
                return Err(Error::config(
                    f,
                    format!("must be a non-empty range [start, end), got {p:?}"),
                ));
            }
        }
        if self.train_pool[0] < self.test_pool[1] && self.test_pool[0] < self.train_pool[1] {
            return Err(Error::config(
                "data.test_pool",
                format!(
                    "overlaps data.train_pool: {:?} vs {:?}; pools must be disjoint",
                    self.test_pool, self.train_pool
                ),
            ));
        }
        Ok(())
    }

    /// The image degradations (PCA energy kept, noise).
    fn validate_images(&self) -> Result<()> {
        if !(self.image_pca_energy > 0.0 && self.image_pca_energy <= 1.0) {
            return Err(Error::config(
                "data.image_pca_energy",
                format!("must be in (0, 1], got {}", self.image_pca_energy),
            ));
        }
        if !(self.image_noise.is_finite() && self.image_noise >= 0.0) {
            return Err(Error::config(
                "data.image_noise",
                format!("must be finite and >= 0, got {}", self.image_noise),
            ));
        }
        Ok(())
    }

    /// Audio noise, resampling, the STFT and the standardisation of the spectrograms.
    fn validate_audio(&self) -> Result<()> {
        if let Some(s) = self.audio_snr_db {
            if !s.is_finite() || !(-60.0..=120.0).contains(&s) {
                return Err(Error::config(
                    "data.audio_snr_db",
                    format!("must be in [-60, 120] dB, got {s}"),
                ));
            }
        }
        if !(1000..=192_000).contains(&self.sample_rate) {
            return Err(Error::config(
                "data.sample_rate",
                format!("must be in 1000..=192000 Hz, got {}", self.sample_rate),
            ));
        }
        if !(self.duration_s > 0.0 && self.duration_s <= 60.0) {
            return Err(Error::config(
                "data.duration_s",
                format!("must be in (0, 60], got {}", self.duration_s),
            ));
        }
        let samples = (self.duration_s * self.sample_rate as f64).round() as usize;
        if self.n_fft < 2 || self.n_fft / 2 >= samples {
            return Err(Error::config(
                "data.n_fft",
                format!(
                    "must be >= 2 and n_fft/2 < {samples} samples, got {}",
                    self.n_fft
                ),
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
        if !["train", "all", "none"].contains(&self.standardize.as_str()) {
            return Err(Error::config(
                "data.standardize",
                format!("allowed: train, all, none; got `{}`", self.standardize),
            ));
        }
        Ok(())
    }

    /// `root`, else the default data root.
    pub fn root_dir(&self) -> PathBuf {
        self.root
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(default_data_root)
    }
}

/// One FSDD clip's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    /// The WAV file.
    pub path: PathBuf,
    /// Spoken digit, 0..=9 (the label).
    pub digit: u32,
    /// Speaker name from the file name.
    pub speaker: String,
    /// Take number from the file name.
    pub take: u32,
}

/// Parse `{digit}_{speaker}_{take}.wav`.
pub fn parse_fsdd_name(path: &Path) -> Result<Clip> {
    let bad = || {
        Error::data(
            path.display().to_string(),
            "file name must be {digit}_{speaker}_{take}.wav",
        )
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(bad)?;
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() < 3 {
        return Err(bad());
    }
    let digit: u32 = parts[0].parse().map_err(|_| bad())?;
    let take: u32 = parts[parts.len() - 1].parse().map_err(|_| bad())?;
    if digit > 9 {
        return Err(bad());
    }
    Ok(Clip {
        path: path.to_path_buf(),
        digit,
        speaker: parts[1..parts.len() - 1].join("_"),
        take,
    })
}

/// All `*.wav` files of `dir`, sorted by file name.
pub fn list_fsdd(dir: &Path) -> Result<Vec<Clip>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for ent in rd {
        let p = ent.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("wav") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::data(
            dir.display().to_string(),
            "no .wav files found",
        ));
    }
    files.iter().map(|p| parse_fsdd_name(p)).collect()
}

struct Item {
    clip: usize,
    image: usize,
    label: u32,
}

/// AV-MNIST with every split preprocessed in memory: `audio` `[1, bins, frames]` and
/// `image` `[1, 28, 28]`.
pub struct AvmnistDataset {
    cfg: AvmnistConfig,
    specs: Vec<ModalitySpec>,
    clips: Vec<Clip>,
    /// Per clip, standardised spectrogram `[bins, frames]`.
    spectra: Vec<Vec<f32>>,
    mnist: Mnist,
    pca: Option<Pca>,
    train: Vec<Item>,
    val: Vec<Item>,
    test: Vec<Item>,
    /// (mean, std) used for standardisation.
    pub spec_stats: (f64, f64),
}

fn par_map<T: Send, U: Send>(items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let n = items.len();
    if threads == 1 || n < 64 {
        return items.into_iter().map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut it = items.into_iter();
    loop {
        let c: Vec<T> = it.by_ref().take(chunk).collect();
        if c.is_empty() {
            break;
        }
        chunks.push(c);
    }
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(f).collect::<Vec<U>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("preprocessing thread panicked"))
            .collect()
    })
}

/// The image pools must lie inside the MNIST file (`img_name`).
fn check_pools(cfg: &AvmnistConfig, mnist: &Mnist, img_name: &str) -> Result<()> {
    for (f, p) in [
        ("data.train_pool", cfg.train_pool),
        ("data.test_pool", cfg.test_pool),
    ] {
        if p[1] > mnist.len() {
            return Err(Error::config(
                f,
                format!(
                    "range {p:?} exceeds the {} images of {img_name}",
                    mnist.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Per clip, whether it is a test clip (by take or by held-out speaker); both sides of the
/// split must keep at least one clip.
fn test_membership(cfg: &AvmnistConfig, clips: &[Clip], fsdd_dir: &Path) -> Result<Vec<bool>> {
    let is_test: Vec<bool> = match cfg.split.as_str() {
        "take" => clips.iter().map(|c| c.take < cfg.test_takes).collect(),
        _ => {
            for s in &cfg.test_speakers {
                if !clips.iter().any(|c| &c.speaker == s) {
                    let mut known: Vec<&str> =
                        clips.iter().map(|c| c.speaker.as_str()).collect();
                    known.sort();
                    known.dedup();
                    return Err(Error::config(
                        "data.test_speakers",
                        format!(
                            "speaker `{s}` not found in {}; known: {}",
                            fsdd_dir.display(),
                            known.join(", ")
                        ),
                    ));
                }
            }
            clips
                .iter()
                .map(|c| cfg.test_speakers.contains(&c.speaker))
                .collect()
        }
    };
    let n_test = is_test.iter().filter(|&&t| t).count();
    if n_test == 0 || n_test == clips.len() {
        return Err(Error::config(
            "data.split",
            format!("split leaves {n_test} of {} clips for test", clips.len()),
        ));
    }
    Ok(is_test)
}

/// PCA degradation (fit on the training pool) then Gaussian noise, in place; returns the
/// fitted PCA when `image_pca_energy < 1`. Draws the image noise from `rng`.
fn degrade_images(cfg: &AvmnistConfig, mnist: &mut Mnist, rng: &mut StdRng) -> Result<Option<Pca>> {
    let pix = mnist.rows * mnist.cols;
    let pca = if cfg.image_pca_energy < 1.0 {
        let [a, b] = cfg.train_pool;
        let p = Pca::fit(
            &mnist.images[a * pix..b * pix],
            b - a,
            pix,
            cfg.image_pca_energy,
        )?;
        for img in mnist.images.chunks_exact_mut(pix) {
            p.reconstruct(img);
        }
        Some(p)
    } else {
        None
    };
    if cfg.image_noise > 0.0 {
        for v in mnist.images.iter_mut() {
            *v += cfg.image_noise * gauss(rng);
        }
    }
    Ok(pca)
}

/// Every clip read, resampled to `sample_rate`, peak-normalised and padded or cropped to
/// `n_samples`, then with white noise at `audio_snr_db` (drawn from `rng`, clip by clip).
fn load_waves(cfg: &AvmnistConfig, clips: &[Clip], n_samples: usize, rng: &mut StdRng) -> Result<Vec<Vec<f32>>> {
    let target_sr = cfg.sample_rate;
    let mut waves: Vec<Vec<f32>> =
        par_map(clips.iter().collect(), |c: &Clip| -> Result<Vec<f32>> {
            let w = read_wav_mono(&c.path)?;
            let mut x = if w.sample_rate != target_sr {
                super::resample::resample(&w.samples, w.sample_rate, target_sr)
            } else {
                w.samples
            };
            peak_normalize(&mut x, 1e-6 / w.full_scale);
            x.resize(n_samples, 0.0);
            Ok(x)
        })
        .into_iter()
        .collect::<Result<_>>()?;
    if let Some(snr) = cfg.audio_snr_db {
        for w in waves.iter_mut() {
            let p = w.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / w.len() as f64;
            let sd = (p / 10f64.powf(snr as f64 / 10.0)).sqrt() as f32;
            for v in w.iter_mut() {
                *v += sd * gauss(rng);
            }
        }
    }
    Ok(waves)
}

/// Log-magnitude spectrograms of the waves; returns them and their (bins, frames).
fn spectrograms(cfg: &AvmnistConfig, waves: Vec<Vec<f32>>, n_samples: usize) -> Result<(Vec<Vec<f32>>, usize, usize)> {
    let stft = Stft::new(StftConfig {
        window: cfg.window,
        ..StftConfig::new(cfg.n_fft, cfg.hop)
    })?;
    let (bins, frames) = (stft.num_bins(), stft.num_frames(n_samples));
    let eps = cfg.log_eps;
    let spectra: Vec<Vec<f32>> = par_map(waves, |w| stft.log_magnitude(&w, eps))
        .into_iter()
        .collect::<Result<_>>()?;
    Ok((spectra, bins, frames))
}

/// The waveforms and their spectrograms of every clip live in host memory together while
/// the spectrograms are computed: sizes within the validated ranges (192 kHz, 60 s, hop 1)
/// can still ask for terabytes, which is an error naming the fields before any is read.
fn check_audio_fits(cfg: &AvmnistConfig, clips: usize, n_samples: usize) -> Result<()> {
    let stft = Stft::new(StftConfig { window: cfg.window, ..StftConfig::new(cfg.n_fft, cfg.hop) })?;
    let per_clip = (n_samples as u64).saturating_add((stft.num_bins() as u64).saturating_mul(stft.num_frames(n_samples) as u64));
    let bytes = per_clip.saturating_mul(clips as u64).saturating_mul(4);
    crate::limits::check_host_fits(bytes, &format!("the audio of {clips} clips (waveforms and spectrograms)"), "data.sample_rate, data.duration_s, data.n_fft, data.hop")
}

/// Pairs each clip on one side of the split (`want_test`) with a uniformly drawn image of
/// its digit from `pool`, in file order.
fn pair_images(
    mnist: &Mnist,
    clips: &[Clip],
    is_test: &[bool],
    want_test: bool,
    pool: [usize; 2],
    img_name: &str,
    rng: &mut StdRng,
) -> Result<Vec<Item>> {
    let mut cands: Vec<Vec<usize>> = vec![Vec::new(); 10];
    for i in pool[0]..pool[1] {
        cands[mnist.labels[i] as usize].push(i);
    }
    let mut out = Vec::new();
    for (ci, c) in clips.iter().enumerate() {
        if is_test[ci] != want_test {
            continue;
        }
        let cs = &cands[c.digit as usize];
        if cs.is_empty() {
            return Err(Error::data(
                img_name.to_string(),
                format!("no image of digit {} in pool {pool:?}", c.digit),
            ));
        }
        out.push(Item {
            clip: ci,
            image: cs[rng.random_range(0..cs.len())],
            label: c.digit,
        });
    }
    Ok(out)
}

/// Moves a seeded `val_fraction` of the training items to the validation split; returns
/// (train, val).
fn split_val(cfg: &AvmnistConfig, train: Vec<Item>) -> (Vec<Item>, Vec<Item>) {
    if !(cfg.val_fraction > 0.0) {
        return (train, Vec::new());
    }
    let n_val = ((train.len() as f64) * cfg.val_fraction).round() as usize;
    let mut perm: Vec<usize> = (0..train.len()).collect();
    perm.shuffle(&mut StdRng::seed_from_u64(derive_seed(&[cfg.seed, 0x7A1])));
    let mut is_val = vec![false; train.len()];
    for &i in &perm[..n_val] {
        is_val[i] = true;
    }
    let (v, t): (Vec<(usize, Item)>, Vec<(usize, Item)>) =
        train.into_iter().enumerate().partition(|(i, _)| is_val[*i]);
    (t.into_iter().map(|x| x.1).collect(), v.into_iter().map(|x| x.1).collect())
}

/// Standardises every spectrogram in place with one scalar mean and (unbiased) std over the
/// clips `standardize` names (the training clips, or all); returns (mean, std), (0, 1) for
/// `none`.
fn standardize(cfg: &AvmnistConfig, train: &[Item], n_clips: usize, spectra: &mut [Vec<f32>]) -> (f64, f64) {
    let stats_clips: Vec<usize> = match cfg.standardize.as_str() {
        "train" => train.iter().map(|it| it.clip).collect(),
        "all" => (0..n_clips).collect(),
        _ => vec![],
    };
    if stats_clips.is_empty() {
        (0.0, 1.0)
    } else {
        let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
        for &c in &stats_clips {
            for &v in &spectra[c] {
                s += v as f64;
                s2 += (v as f64) * (v as f64);
            }
            n += spectra[c].len();
        }
        let mean = s / n as f64;
        let var = ((s2 - n as f64 * mean * mean) / (n as f64 - 1.0)).max(1e-24);
        let (m, sd) = (mean as f32, var.sqrt() as f32);
        for sp in spectra.iter_mut() {
            sp.iter_mut().for_each(|v| *v = (*v - m) / sd);
        }
        (mean, var.sqrt())
    }
}

impl AvmnistDataset {
    /// Read, preprocess and pair everything; errors name a missing file, a bad WAV or IDX,
    /// or a bad config field.
    pub fn new(cfg: &AvmnistConfig) -> Result<Self> {
        cfg.validate()?;
        let root = cfg.root_dir();
        let resolve = |p: &str| catalog::resolve(&root, p);
        let fsdd_dir = resolve(&cfg.fsdd_dir);
        if !fsdd_dir.is_dir() {
            return Err(catalog::missing("FSDD recordings folder", &fsdd_dir, &root, "avmnist"));
        }
        let clips = list_fsdd(&fsdd_dir)?;
        let (img_path, lab_path) = (resolve(&cfg.mnist_images), resolve(&cfg.mnist_labels));
        for p in [&img_path, &lab_path] {
            if !p.exists() {
                return Err(catalog::missing("MNIST file", p, &root, "avmnist"));
            }
        }
        let mut mnist = read_mnist(&img_path, &lab_path)?;
        mnist.truncate(catalog::MNIST_PROTOCOL_IMAGES);
        let img_name = img_path.display().to_string();
        check_pools(cfg, &mnist, &img_name)?;
        let is_test = test_membership(cfg, &clips, &fsdd_dir)?;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let pca = degrade_images(cfg, &mut mnist, &mut rng)?;
        let n_samples = (cfg.duration_s * cfg.sample_rate as f64).round() as usize;
        check_audio_fits(cfg, clips.len(), n_samples)?;
        let waves = load_waves(cfg, &clips, n_samples, &mut rng)?;
        let (mut spectra, bins, frames) = spectrograms(cfg, waves, n_samples)?;
        // Pairing (reference order: train clips then test clips, in file order).
        let train = pair_images(&mnist, &clips, &is_test, false, cfg.train_pool, &img_name, &mut rng)?;
        let test = pair_images(&mnist, &clips, &is_test, true, cfg.test_pool, &img_name, &mut rng)?;
        let (train, val) = split_val(cfg, train);
        let spec_stats = standardize(cfg, &train, clips.len(), &mut spectra);
        let specs = vec![
            ModalitySpec::new("audio", vec![1, bins, frames]),
            ModalitySpec::new("image", vec![1, mnist.rows, mnist.cols]),
        ];
        Ok(AvmnistDataset {
            cfg: cfg.clone(),
            specs,
            clips,
            spectra,
            mnist,
            pca,
            train,
            val,
            test,
            spec_stats,
        })
    }

    fn items(&self, split: Split) -> &[Item] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// The FSDD clip, MNIST image index and label of a sample.
    pub fn pair_info(&self, split: Split, index: usize) -> Option<(&Clip, usize, u32)> {
        self.items(split)
            .get(index)
            .map(|it| (&self.clips[it.clip], it.image, it.label))
    }

    /// Every sample's pairing as CSV, `split,index,clip,image,label` (train, val, then test,
    /// each in sample order; `clip` the FSDD file name, `image` the MNIST index): for a script
    /// outside the engine to train on the same pairs (`equimodal data pairs`;
    /// `bench/torch/avmnist_protocol.py --pairs`).
    pub fn pairs_csv(&self) -> String {
        let mut s = String::from("split,index,clip,image,label\n");
        for split in [Split::Train, Split::Val, Split::Test] {
            for (i, it) in self.items(split).iter().enumerate() {
                let name = self.clips[it.clip].path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
                s.push_str(&format!("{},{i},{},{},{}\n", split.as_str(), crate::csv::field(&name), it.image, it.label));
            }
        }
        s
    }

    /// MNIST label of image `i`.
    pub fn image_label(&self, i: usize) -> u32 {
        self.mnist.labels[i] as u32
    }

    /// The fitted PCA when `image_pca_energy < 1`.
    pub fn pca(&self) -> Option<&Pca> {
        self.pca.as_ref()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &AvmnistConfig {
        &self.cfg
    }
}

impl Dataset for AvmnistDataset {
    fn name(&self) -> &str {
        "avmnist"
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn modalities(&self) -> &[ModalitySpec] {
        &self.specs
    }
    fn len(&self, split: Split) -> usize {
        self.items(split).len()
    }
    fn sample(
        &self,
        split: Split,
        index: usize,
        _aug: Option<&mut StdRng>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        check_index("avmnist", split, index, self.len(split))?;
        let it = &self.items(split)[index];
        Ok((
            vec![
                self.spectra[it.clip].clone(),
                self.mnist.image(it.image).to_vec(),
            ],
            it.label,
        ))
    }
}
