//! Test fixtures: a miniature CREMA-D tree (the OGM-GE layout) built from FSDD WAVs and
//! MNIST digits, since real CREMA-D media are not available to tests.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::avmnist::list_fsdd;
use super::cremad::EMOTIONS;
use super::idx::read_mnist;
use super::resample::resample;
use super::wav::{read_wav_mono, write_wav_i16};
use crate::error::{Error, Result};

/// A tiny CREMA-D-layout dataset written for tests, and the clips it holds.
#[derive(Debug, Clone)]
pub struct CremadFixture {
    /// The dataset root (`data.root`).
    pub root: PathBuf,
    /// (clip id, label) per split, in file order.
    pub train: Vec<(String, u32)>,
    /// (clip id, label) of the test split, in file order.
    pub test: Vec<(String, u32)>,
}

/// Build `out/{AudioWAV, Image-01-FPS, annotations}` from `data_root` (a data root holding AV-MNIST's files):
/// `n_train + n_test` FSDD clips (spread over the digits) resampled to 16 kHz, each with
/// `frames_per_clip` JPEG frames (48×40, an MNIST image of the clip's digit, tinted);
/// emotion = digit mod 6; annotation lists use `\r\n` line ends.
pub fn write_cremad_fixture(
    out: &Path,
    data_root: &Path,
    n_train: usize,
    n_test: usize,
    frames_per_clip: usize,
) -> Result<CremadFixture> {
    use super::catalog::{resolve, FSDD_RECORDINGS, MNIST_IMAGES, MNIST_LABELS};
    let clips = list_fsdd(&data_root.join(FSDD_RECORDINGS))?;
    let mnist = read_mnist(resolve(data_root, MNIST_IMAGES), resolve(data_root, MNIST_LABELS))?;
    let total = n_train + n_test;
    if total == 0 || total > clips.len() || frames_per_clip == 0 {
        return Err(Error::config(
            "fixture",
            format!("need 1..={} clips and >= 1 frame", clips.len()),
        ));
    }
    for d in ["AudioWAV", "Image-01-FPS", "annotations"] {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    // stride 251 (coprime with 2500) spreads picks over digits and speakers
    let stride = 251usize;
    let mut rows = Vec::new();
    for k in 0..total {
        let clip = &clips[(k * stride) % clips.len()];
        let label = clip.digit % 6;
        let id = format!(
            "{}_FIX_{}_{:02}",
            1001 + k,
            EMOTIONS[label as usize],
            clip.digit
        );
        let w = read_wav_mono(&clip.path)?;
        let x = resample(&w.samples, w.sample_rate, 16000);
        write_wav_i16(out.join("AudioWAV").join(format!("{id}.wav")), 16000, &x)?;
        let fdir = out.join("Image-01-FPS").join(&id);
        std::fs::create_dir_all(&fdir).map_err(|e| Error::io(&fdir, e))?;
        let cands: Vec<usize> = (0..mnist.len())
            .filter(|&i| mnist.labels[i] as u32 == clip.digit)
            .take(frames_per_clip)
            .collect();
        for (f, &mi) in cands.iter().enumerate() {
            let src = mnist.image(mi);
            let img = RgbImage::from_fn(48, 40, |x, y| {
                let (sx, sy) = ((x as usize * 28) / 48, (y as usize * 28) / 40);
                let v = (src[sy * 28 + sx] * 255.0) as u8;
                Rgb([v, v / 2 + (k as u8).wrapping_mul(20), 255 - v])
            });
            let p = fdir.join(format!("{id}_{f:03}.jpg"));
            img.save(&p).map_err(|e| {
                Error::data(p.display().to_string(), format!("cannot write JPEG: {e}"))
            })?;
        }
        rows.push((id, label));
    }
    let test = rows.split_off(n_train);
    let train = rows;
    for (name, list) in [("train.csv", &train), ("test.csv", &test)] {
        let text: String = list
            .iter()
            .map(|(id, l)| format!("{id},{}\r\n", EMOTIONS[*l as usize]))
            .collect();
        let p = out.join("annotations").join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    }
    Ok(CremadFixture {
        root: out.to_path_buf(),
        train,
        test,
    })
}
