//! Short-time Fourier transform on the CPU (realfft), matching `torch.stft` /
//! `librosa.stft` conventions:
//! * `center = true` pads `n_fft / 2` samples on both sides (mode [`PadMode`]: `reflect`,
//!   torch's default and librosa < 0.10's, mirrors without repeating the edge sample;
//!   `constant` pads zeros, librosa ≥ 0.10's default);
//! * frame `t` covers padded samples `[t·hop, t·hop + n_fft)`, frame count
//!   `1 + (len_padded − n_fft) / hop` (so `1 + len / hop` when centred);
//! * windows are periodic (`torch.hann_window`, `scipy.signal.get_window(..., fftbins=True)`);
//! * output is one-sided, `n_fft / 2 + 1` bins, unnormalised.
//!
//! Results are laid out `[bins, frames]` row-major (frequency rows, time columns), the
//! layout of a `[1, F, T]` spectrogram.

use std::sync::Arc;

use realfft::{num_complex::Complex, RealFftPlanner, RealToComplex};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Analysis window (periodic form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// `0.5 − 0.5 cos(2πi/n)`.
    #[default]
    Hann,
    /// `0.54 − 0.46 cos(2πi/n)`.
    Hamming,
    /// All ones.
    Rectangular,
}

impl WindowKind {
    /// Periodic window of length `n` (`w[i] = 0.5 − 0.5 cos(2πi/n)` for Hann).
    pub fn periodic(self, n: usize) -> Vec<f32> {
        let two_pi = 2.0 * std::f64::consts::PI;
        (0..n)
            .map(|i| {
                let p = two_pi * i as f64 / n as f64;
                (match self {
                    WindowKind::Hann => 0.5 - 0.5 * p.cos(),
                    WindowKind::Hamming => 0.54 - 0.46 * p.cos(),
                    WindowKind::Rectangular => 1.0,
                }) as f32
            })
            .collect()
    }
}

/// Padding applied at both ends when `center` is true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Mirror the signal without repeating the edge sample (torch/librosa `reflect`).
    #[default]
    Reflect,
    /// Zeros.
    Constant,
}

/// STFT parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct StftConfig {
    /// Frame length in samples, ≥ 2.
    pub n_fft: usize,
    /// Hop between frames in samples, ≥ 1.
    pub hop: usize,
    /// Analysis window.
    pub window: WindowKind,
    /// Pad `n_fft / 2` samples at both ends so frame `t` is centred on sample `t · hop`.
    pub center: bool,
    /// How `center` pads.
    pub pad_mode: PadMode,
}

impl StftConfig {
    /// Hann window, centred, reflect padding (torch.stft defaults).
    pub fn new(n_fft: usize, hop: usize) -> Self {
        StftConfig {
            n_fft,
            hop,
            window: WindowKind::Hann,
            center: true,
            pad_mode: PadMode::Reflect,
        }
    }
}

/// A planned STFT; cheap to share between threads.
#[derive(Clone)]
pub struct Stft {
    cfg: StftConfig,
    window: Vec<f32>,
    plan: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for Stft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stft").field("cfg", &self.cfg).finish()
    }
}

impl Stft {
    /// Plan the FFT; config errors for `n_fft < 2` or `hop = 0`.
    pub fn new(cfg: StftConfig) -> Result<Self> {
        if cfg.n_fft < 2 {
            return Err(Error::config(
                "data.n_fft",
                format!("must be >= 2, got {}", cfg.n_fft),
            ));
        }
        if cfg.hop == 0 {
            return Err(Error::config("data.hop", "must be >= 1"));
        }
        let plan = RealFftPlanner::<f32>::new().plan_fft_forward(cfg.n_fft);
        let window = cfg.window.periodic(cfg.n_fft);
        Ok(Stft { cfg, window, plan })
    }

    /// Its parameters.
    pub fn config(&self) -> &StftConfig {
        &self.cfg
    }

    /// Frequency bins per frame, `n_fft / 2 + 1`.
    pub fn num_bins(&self) -> usize {
        self.cfg.n_fft / 2 + 1
    }

    /// Number of frames for a signal of `len` samples (0 if it is too short).
    pub fn num_frames(&self, len: usize) -> usize {
        let padded = if self.cfg.center {
            len + 2 * (self.cfg.n_fft / 2)
        } else {
            len
        };
        if padded < self.cfg.n_fft {
            0
        } else {
            1 + (padded - self.cfg.n_fft) / self.cfg.hop
        }
    }

    fn padded(&self, x: &[f32]) -> Result<Vec<f32>> {
        if !self.cfg.center {
            return Ok(x.to_vec());
        }
        let p = self.cfg.n_fft / 2;
        let n = x.len();
        if n == 0 {
            return Err(Error::shape("stft", "empty signal"));
        }
        let mut out = Vec::with_capacity(n + 2 * p);
        match self.cfg.pad_mode {
            PadMode::Constant => {
                out.extend(std::iter::repeat_n(0.0, p));
                out.extend_from_slice(x);
                out.extend(std::iter::repeat_n(0.0, p));
            }
            PadMode::Reflect => {
                if n <= p {
                    return Err(Error::shape(
                        "stft",
                        format!("reflect padding of {p} needs a signal longer than {p} samples, got {n}"),
                    ));
                }
                out.extend((1..=p).rev().map(|i| x[i]));
                out.extend_from_slice(x);
                out.extend((1..=p).map(|i| x[n - 1 - i]));
            }
        }
        Ok(out)
    }

    /// Complex one-sided STFT, `[bins, frames]` row-major.
    pub fn complex(&self, x: &[f32]) -> Result<Vec<Complex<f32>>> {
        let xp = self.padded(x)?;
        let n_fft = self.cfg.n_fft;
        let frames = self.num_frames(x.len());
        if frames == 0 {
            return Err(Error::shape(
                "stft",
                format!(
                    "signal of {} samples is shorter than n_fft {n_fft}",
                    x.len()
                ),
            ));
        }
        let bins = self.num_bins();
        let mut out = vec![Complex::new(0.0f32, 0.0); bins * frames];
        let mut inbuf = self.plan.make_input_vec();
        let mut spec = self.plan.make_output_vec();
        let mut scratch = self.plan.make_scratch_vec();
        for t in 0..frames {
            let start = t * self.cfg.hop;
            for (i, v) in inbuf.iter_mut().enumerate() {
                *v = xp[start + i] * self.window[i];
            }
            self.plan
                .process_with_scratch(&mut inbuf, &mut spec, &mut scratch)
                .map_err(|e| Error::Other(format!("stft: realfft failed: {e}")))?;
            for (f, c) in spec.iter().enumerate() {
                out[f * frames + t] = *c;
            }
        }
        Ok(out)
    }

    /// `|STFT|`, `[bins, frames]` row-major.
    pub fn magnitude(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.complex(x)?.iter().map(|c| c.norm()).collect())
    }

    /// `ln(|STFT| + eps)`, `[bins, frames]` row-major.
    pub fn log_magnitude(&self, x: &[f32], eps: f32) -> Result<Vec<f32>> {
        Ok(self
            .complex(x)?
            .iter()
            .map(|c| (c.norm() + eps).ln())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts() {
        let s = Stft::new(StftConfig::new(256, 64)).unwrap();
        assert_eq!((s.num_bins(), s.num_frames(8000)), (129, 126));
        let s = Stft::new(StftConfig::new(512, 353)).unwrap();
        assert_eq!((s.num_bins(), s.num_frames(22050 * 3)), (257, 188));
        assert_eq!(s.num_frames(22050 * 20), 1250);
    }

    #[test]
    fn reflect_padding() {
        let mut c = StftConfig::new(4, 1);
        c.window = WindowKind::Rectangular;
        let s = Stft::new(c).unwrap();
        let p = s.padded(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(p, vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
    }
}
