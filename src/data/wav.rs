//! WAV reading (hound): any PCM integer width (8–32 bit) or 32-bit float.

use std::path::Path;

use crate::error::{Error, Result};

/// Decoded mono audio.
#[derive(Debug, Clone)]
pub struct WavData {
    /// Samples per second, Hz.
    pub sample_rate: u32,
    /// Samples scaled to [-1, 1] (integer PCM divided by 2^(bits-1)).
    pub samples: Vec<f32>,
    /// The scale integer samples were divided by (1.0 for float files).
    pub full_scale: f32,
}

fn herr(path: &Path, e: hound::Error) -> Error {
    match e {
        hound::Error::IoError(io) => {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::data(
                    path.display().to_string(),
                    format!("truncated WAV file: {io}"),
                )
            } else {
                Error::io(path, io)
            }
        }
        other => Error::data(
            path.display().to_string(),
            format!("not a readable WAV file: {other}"),
        ),
    }
}

/// Read a mono WAV file. Rejects multi-channel and zero-length files with typed errors.
pub fn read_wav_mono(path: impl AsRef<Path>) -> Result<WavData> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    let reader = hound::WavReader::open(path).map_err(|e| herr(path, e))?;
    let spec = reader.spec();
    let pname = || path.display().to_string();
    if spec.channels != 1 {
        return Err(Error::data(
            pname(),
            format!("expected mono audio, found {} channels", spec.channels),
        ));
    }
    if spec.sample_rate == 0 || spec.sample_rate > crate::limits::MAX_SAMPLE_RATE {
        return Err(Error::data(
            pname(),
            format!("header claims a sample rate of {} Hz; allowed 1..={} Hz", spec.sample_rate, crate::limits::MAX_SAMPLE_RATE),
        ));
    }
    let (samples, full_scale) = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(Error::data(
                    pname(),
                    format!("unsupported float width {} bits", spec.bits_per_sample),
                ));
            }
            let v: std::result::Result<Vec<f32>, _> = reader.into_samples::<f32>().collect();
            (v.map_err(|e| herr(path, e))?, 1.0f32)
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(Error::data(
                    pname(),
                    format!("unsupported integer width {bits} bits"),
                ));
            }
            let scale = (1u64 << (bits - 1)) as f32;
            let v: std::result::Result<Vec<i32>, _> = reader.into_samples::<i32>().collect();
            let v = v.map_err(|e| herr(path, e))?;
            (v.into_iter().map(|s| s as f32 / scale).collect(), scale)
        }
    };
    if samples.is_empty() {
        return Err(Error::data(
            pname(),
            "WAV file has no samples (zero length)",
        ));
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(Error::data(
            pname(),
            format!("non-finite sample at index {i}"),
        ));
    }
    Ok(WavData {
        sample_rate: spec.sample_rate,
        samples,
        full_scale,
    })
}

/// Write 16-bit mono PCM (used by fixtures and tests). Values are clipped to [-1, 1].
pub fn write_wav_i16(path: impl AsRef<Path>, sample_rate: u32, samples: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| herr(path, e))?;
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        w.write_sample(v).map_err(|e| herr(path, e))?;
    }
    w.finalize().map_err(|e| herr(path, e))?;
    Ok(())
}

/// Peak normalisation as in the AV-MNIST reference: `x / (max|x| + eps)`.
pub fn peak_normalize(x: &mut [f32], eps: f32) {
    let m = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = m + eps;
    for v in x.iter_mut() {
        *v /= d;
    }
}
