//! Data layer tests. Real-data tests read the data root (`EQUIMODAL_DATA`, else the
//! per-user default; CI points it at `../shared/data`) and are skipped, saying why, when
//! it lacks what they need.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use equimodal::data::avmnist::{AvmnistConfig, AvmnistDataset};
use equimodal::data::catalog;
use equimodal::data::cremad::{CremadConfig, CremadDataset};
use equimodal::data::fixture::write_cremad_fixture;
use equimodal::data::idx::{read_idx, read_mnist};
use equimodal::data::pca::Pca;
use equimodal::data::stft::{PadMode, Stft, StftConfig, WindowKind};
use equimodal::data::wav::read_wav_mono;
use equimodal::data::{
    build, write_tensors_split, Dataset, DatasetConfig, HostTensor, Loader, LoaderConfig,
    ModalitySpec, Split, SyntheticConfig, SyntheticDataset, TensorsConfig,
};
use equimodal::error::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The data root when it holds everything in `need`; else `None`, after saying so.
fn real_data(need: &[&str]) -> Option<PathBuf> {
    let root = equimodal::data::default_data_root();
    let missing: Vec<&str> = need.iter().copied().filter(|p| !root.join(p).exists()).collect();
    if missing.is_empty() {
        return Some(root);
    }
    eprintln!(
        "skipped: the data root {} lacks {missing:?} (set EQUIMODAL_DATA to a data root that has \
         them; `equimodal data list` says how to get each dataset)",
        root.display()
    );
    None
}

/// A data root with AV-MNIST's files (FSDD recordings and MNIST).
fn avmnist_root() -> Option<PathBuf> {
    real_data(&[catalog::FSDD_RECORDINGS, "mnist"])
}

/// The MNIST image and label files under `root` (the published ones, or the 8,000-image copy).
fn mnist_files(root: &Path) -> (PathBuf, PathBuf) {
    (catalog::resolve(root, catalog::MNIST_IMAGES), catalog::resolve(root, catalog::MNIST_LABELS))
}

pub(crate) struct TempDir(pub(crate) PathBuf);
impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "equimodal-data-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn msg(e: &Error) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- STFT

fn reflect_pad(x: &[f64], p: usize) -> Vec<f64> {
    let n = x.len() as isize;
    (-(p as isize)..n + p as isize)
        .map(|i| {
            let j = if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            };
            x[j as usize]
        })
        .collect()
}

fn direct_stft(
    x: &[f32],
    n_fft: usize,
    hop: usize,
    win: &[f64],
    center: bool,
    pad: PadMode,
) -> (usize, Vec<f64>) {
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let xp = if !center {
        xd
    } else if pad == PadMode::Reflect {
        reflect_pad(&xd, n_fft / 2)
    } else {
        let mut v = vec![0.0; n_fft / 2];
        v.extend(&xd);
        v.extend(vec![0.0; n_fft / 2]);
        v
    };
    let frames = 1 + (xp.len() - n_fft) / hop;
    let bins = n_fft / 2 + 1;
    let mut out = vec![0.0; bins * frames];
    for t in 0..frames {
        for k in 0..bins {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for n in 0..n_fft {
                let a = -2.0 * std::f64::consts::PI * (k * n) as f64 / n_fft as f64;
                let v = xp[t * hop + n] * win[n];
                re += v * a.cos();
                im += v * a.sin();
            }
            out[k * frames + t] = (re * re + im * im).sqrt();
        }
    }
    (frames, out)
}

#[test]
fn stft_matches_direct_dft() {
    let mut rng = StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..1500)
        .map(|i| (i as f32 * 0.05).sin() + rng.random::<f32>() - 0.5)
        .collect();
    let cases = [
        (256, 64, WindowKind::Hann, true, PadMode::Reflect),
        (100, 37, WindowKind::Hann, true, PadMode::Reflect),
        (255, 100, WindowKind::Hamming, true, PadMode::Constant),
        (512, 353, WindowKind::Hann, true, PadMode::Reflect),
        (60, 60, WindowKind::Rectangular, false, PadMode::Reflect),
    ];
    for (n_fft, hop, window, center, pad_mode) in cases {
        let s = Stft::new(StftConfig {
            n_fft,
            hop,
            window,
            center,
            pad_mode,
        })
        .unwrap();
        // periodic windows, computed independently
        let win: Vec<f64> = (0..n_fft)
            .map(|i| {
                let p = 2.0 * std::f64::consts::PI * i as f64 / n_fft as f64;
                match window {
                    WindowKind::Hann => 0.5 - 0.5 * p.cos(),
                    WindowKind::Hamming => 0.54 - 0.46 * p.cos(),
                    WindowKind::Rectangular => 1.0,
                }
            })
            .collect();
        let (frames, want) = direct_stft(&x, n_fft, hop, &win, center, pad_mode);
        assert_eq!(
            s.num_frames(x.len()),
            frames,
            "frames n_fft {n_fft} hop {hop}"
        );
        let got = s.magnitude(&x).unwrap();
        assert_eq!(got.len(), want.len());
        let peak = want.iter().cloned().fold(0.0, f64::max);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(
            err < 1e-5 * peak.max(1.0) * (n_fft as f64).sqrt(),
            "n_fft {n_fft} hop {hop}: max err {err} (peak {peak})"
        );
        let lg = s.log_magnitude(&x, 1e-6).unwrap();
        assert!((lg[5] - (got[5] + 1e-6).ln()).abs() < 1e-6);
    }
    // too-short signal for reflect padding is a typed error, not a panic
    let s = Stft::new(StftConfig::new(256, 64)).unwrap();
    assert!(matches!(s.magnitude(&[0.0; 100]), Err(Error::Shape { .. })));
    assert!(matches!(
        Stft::new(StftConfig::new(256, 0)),
        Err(Error::Config { .. })
    ));
}

// ---------------------------------------------------------------- WAV

#[test]
fn wav_reads_fsdd_file() {
    let Some(root) = avmnist_root() else { return };
    let p = root.join("fsdd/recordings/0_george_0.wav");
    let w = read_wav_mono(&p).unwrap();
    assert_eq!(w.sample_rate, 8000);
    assert_eq!(w.full_scale, 32768.0);
    assert!(w.samples.len() > 1000 && w.samples.len() < 8000 * 3);
    assert!(w.samples.iter().all(|v| v.abs() <= 1.0));
    assert!(w.samples.iter().any(|v| v.abs() > 0.01));
}

#[test]
fn wav_corrupt_files_are_typed_errors() {
    let td = TempDir::new("wav");
    let Some(root) = avmnist_root() else { return };
    let src = std::fs::read(root.join("fsdd/recordings/0_george_0.wav")).unwrap();
    // truncated inside the data chunk
    let trunc = td.0.join("trunc.wav");
    std::fs::write(&trunc, &src[..src.len() / 2 + 1]).unwrap();
    // truncated inside the header
    let hdr = td.0.join("hdr.wav");
    std::fs::write(&hdr, &src[..20]).unwrap();
    // garbage
    let junk = td.0.join("junk.wav");
    std::fs::write(&junk, b"this is not a wav file at all, not even close").unwrap();
    for p in [&trunc, &hdr, &junk] {
        match read_wav_mono(p) {
            Err(e @ (Error::Data { .. } | Error::Io { .. })) => {
                assert!(msg(&e).contains(&p.display().to_string()), "{e}")
            }
            other => panic!(
                "{}: expected a typed error, got {:?}",
                p.display(),
                other.map(|w| w.samples.len())
            ),
        }
    }
    // stereo and empty files
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let st = td.0.join("stereo.wav");
    let mut w = hound::WavWriter::create(&st, spec).unwrap();
    for _ in 0..20 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let e = read_wav_mono(&st).unwrap_err();
    assert!(
        msg(&e).contains("mono") && msg(&e).contains("stereo.wav"),
        "{e}"
    );
    let empty = td.0.join("empty.wav");
    hound::WavWriter::create(
        &empty,
        hound::WavSpec {
            channels: 1,
            ..spec
        },
    )
    .unwrap()
    .finalize()
    .unwrap();
    let e = read_wav_mono(&empty).unwrap_err();
    assert!(
        msg(&e).contains("zero length") && msg(&e).contains("empty.wav"),
        "{e}"
    );
    // 24-bit and float files are read too
    for (bits, fmt) in [
        (24u16, hound::SampleFormat::Int),
        (32, hound::SampleFormat::Float),
        (8, hound::SampleFormat::Int),
    ] {
        let p = td.0.join(format!("f{bits}.wav"));
        let mut w = hound::WavWriter::create(
            &p,
            hound::WavSpec {
                channels: 1,
                sample_rate: 16000,
                bits_per_sample: bits,
                sample_format: fmt,
            },
        )
        .unwrap();
        for i in 0..100 {
            let v = (i as f32 / 100.0) - 0.5;
            match (fmt, bits) {
                (hound::SampleFormat::Float, _) => w.write_sample(v).unwrap(),
                (_, 8) => w.write_sample((v * 127.0) as i8).unwrap(),
                _ => w.write_sample((v * 8_388_607.0) as i32).unwrap(),
            }
        }
        w.finalize().unwrap();
        let r = read_wav_mono(&p).unwrap();
        assert_eq!((r.sample_rate, r.samples.len()), (16000, 100));
        assert!(
            (r.samples[0] + 0.5).abs() < 0.02 && (r.samples[99] - 0.49).abs() < 0.02,
            "{bits}: {:?}",
            &r.samples[..3]
        );
    }
    assert!(matches!(
        read_wav_mono(td.0.join("missing.wav")),
        Err(Error::Io { .. })
    ));
}

// ---------------------------------------------------------------- IDX

#[test]
fn idx_reads_mnist_and_rejects_corrupt_headers() {
    let Some(root) = avmnist_root() else { return };
    let (ip, lp) = mnist_files(&root);
    let m = read_mnist(&ip, &lp).unwrap();
    // 10,000 in the published file, 8,000 in the older copy
    assert!([8000, 10000].contains(&m.len()) && (m.rows, m.cols) == (28, 28), "{} images {}x{}", m.len(), m.rows, m.cols);
    assert_eq!(m.labels[..5], [7, 2, 1, 0, 4]); // the MNIST test set's first labels
    assert!(m.images.iter().all(|v| (0.0..=1.0).contains(v)));
    // plain (un-gzipped) copy reads the same
    let td = TempDir::new("idx");
    let raw = read_idx(&lp).unwrap();
    let mut bytes = vec![0u8, 0, 8, 1];
    bytes.extend((raw.dims[0] as u32).to_be_bytes());
    bytes.extend(&raw.data);
    let plain = td.0.join("labels-idx1-ubyte");
    std::fs::write(&plain, &bytes).unwrap();
    assert_eq!(read_idx(&plain).unwrap().data, raw.data);
    // corrupt magic, bad type, truncated data, truncated header
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic", {
            let mut b = bytes.clone();
            b[0] = 0x42;
            b
        }),
        ("type", {
            let mut b = bytes.clone();
            b[2] = 0x0D;
            b
        }),
        ("trunc", bytes[..bytes.len() - 10].to_vec()),
        ("hdr", bytes[..6].to_vec()),
    ];
    for (name, b) in cases {
        let p = td.0.join(name);
        std::fs::write(&p, b).unwrap();
        let e = read_idx(&p).unwrap_err();
        assert!(
            matches!(e, Error::Data { .. }) && msg(&e).contains(&p.display().to_string()),
            "{name}: {e}"
        );
    }
    // swapped image/label files
    let e = read_mnist(&lp, &ip).unwrap_err();
    assert!(msg(&e).contains("0x803"), "{e}");
}

#[test]
fn an_infinite_log_epsilon_is_refused() {
    for e in [f32::INFINITY, f32::NAN, 0.0] {
        let m = AvmnistConfig { log_eps: e, ..Default::default() }.validate().unwrap_err().to_string();
        let c = equimodal::data::cremad::CremadConfig { root: Some("/nonexistent".into()), log_eps: e, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(m.contains("data.log_eps") && c.contains("data.log_eps"), "{m} / {c}");
    }
}

#[test]
fn avmnist_audio_sizes_beyond_host_memory_are_refused_before_any_clip_is_read() {
    let Some(root) = avmnist_root() else { return };
    // every value inside its validated range, the product terabytes
    let cfg = AvmnistConfig { root: Some(root.display().to_string()), sample_rate: 192_000, duration_s: 60.0, hop: 1, ..Default::default() };
    let e = AvmnistDataset::new(&cfg).err().expect("terabytes of spectrograms accepted").to_string();
    assert!(e.contains("data.hop") && e.contains("GB of host memory"), "{e}");
}

#[test]
fn a_gzip_idx_inflating_past_its_header_is_refused_early() {
    let td = TempDir::new("idx-bomb");
    // a small gzip stream that inflates far beyond what its header says (64 MiB of zeros
    // behind a [10, 28, 28] header) is refused after the 7,840 bytes the header allows plus
    // one, not inflated whole first; a gzipped file as long as its header says still reads
    let bomb = td.0.join("bomb.gz");
    write_idx_gz(&bomb, 0x803, &[10, 28, 28], &vec![0u8; 64 << 20]);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let e = read_idx(&bomb).unwrap_err();
    assert!(msg(&e).contains("7840 data bytes, file has 7841") && msg(&e).contains("bomb.gz"), "{e}");
    let fine = td.0.join("fine.gz");
    write_idx_gz(&fine, 0x803, &[10, 28, 28], &vec![7u8; 7840]);
    assert_eq!(read_idx(&fine).unwrap().data, vec![7u8; 7840]);
}

// ---------------------------------------------------------------- PCA

#[test]
fn pca_keeps_requested_energy() {
    let Some(root) = avmnist_root() else { return };
    let (ip, lp) = mnist_files(&root);
    let m = read_mnist(ip, lp).unwrap();
    let n = 6000;
    let t = Instant::now();
    let pca = Pca::fit(&m.images[..n * 784], n, 784, 0.25).unwrap();
    eprintln!(
        "PCA fit on 6000x784: {:?}, k = {}, kept {:.4}",
        t.elapsed(),
        pca.components.len(),
        pca.energy_kept
    );
    let total: f64 = pca.eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let k = pca.components.len();
    assert!(pca.energy_kept >= 0.25);
    let without_last: f64 = pca.eigenvalues[..k - 1].iter().sum::<f64>() / total;
    assert!(without_last < 0.25, "k is not minimal");
    // measured: variance of the reconstructions about the mean / total variance ≈ energy_kept
    let mut kept = 0.0f64;
    let mut all = 0.0f64;
    for i in 0..n {
        let mut x = m.image(i).to_vec();
        all += x
            .iter()
            .zip(&pca.mean)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        pca.reconstruct(&mut x);
        kept += x
            .iter()
            .zip(&pca.mean)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
    }
    assert!(
        (kept / all - pca.energy_kept).abs() < 2e-3,
        "measured {} vs {}",
        kept / all,
        pca.energy_kept
    );
    // components orthonormal
    for a in 0..k {
        for b in 0..k {
            let d: f32 = pca.components[a]
                .iter()
                .zip(&pca.components[b])
                .map(|(x, y)| x * y)
                .sum();
            assert!((d - if a == b { 1.0 } else { 0.0 }).abs() < 1e-4);
        }
    }
    assert!(t.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------- AV-MNIST

pub(crate) fn avmnist_default() -> Option<&'static AvmnistDataset> {
    static DS: OnceLock<AvmnistDataset> = OnceLock::new();
    let root = avmnist_root()?;
    Some(DS.get_or_init(|| {
        let cfg = AvmnistConfig {
            root: Some(root.display().to_string()),
            ..Default::default()
        };
        let t = Instant::now();
        let ds = AvmnistDataset::new(&cfg).unwrap();
        eprintln!("avmnist preprocessing (2500 WAVs): {:?}", t.elapsed());
        ds
    }))
}

#[test]
fn avmnist_protocol() {
    let Some(ds) = avmnist_default() else { return };
    assert_eq!(ds.name(), "avmnist");
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(
        ds.modalities()[0],
        ModalitySpec::new("audio", vec![1, 129, 126])
    );
    assert_eq!(
        ds.modalities()[1],
        ModalitySpec::new("image", vec![1, 28, 28])
    );
    assert_eq!(
        (
            ds.len(Split::Train),
            ds.len(Split::Val),
            ds.len(Split::Test)
        ),
        (2250, 0, 250)
    );
    for (split, pool) in [(Split::Train, 0..6000), (Split::Test, 6000..8000)] {
        for i in 0..ds.len(split) {
            let (clip, img, label) = ds.pair_info(split, i).unwrap();
            assert_eq!(clip.digit, label);
            assert_eq!(ds.image_label(img), label, "image/digit disagreement");
            assert!(pool.contains(&img), "{split} image {img} outside its pool");
            assert_eq!(clip.take < 5, split == Split::Test);
            let name = clip.path.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(&format!("{label}_")));
        }
    }
    // standardised over the training spectrograms
    let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
    for i in 0..ds.len(Split::Train) {
        let (x, _) = ds.sample(Split::Train, i, None).unwrap();
        assert_eq!((x[0].len(), x[1].len()), (129 * 126, 784));
        for &v in &x[0] {
            assert!(v.is_finite());
            s += v as f64;
            s2 += (v as f64).powi(2);
        }
        n += x[0].len();
    }
    let mean = s / n as f64;
    assert!(mean.abs() < 1e-3 && ((s2 / n as f64 - mean * mean).sqrt() - 1.0).abs() < 1e-3);
    let (x, y) = ds.sample(Split::Test, 0, None).unwrap();
    assert_eq!(y, ds.pair_info(Split::Test, 0).unwrap().2);
    assert!(x[1].iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(ds.sample(Split::Test, 250, None).is_err());
}

#[test]
fn avmnist_seeded_pairing_degradations_and_val() {
    let Some(base) = avmnist_default() else { return };
    let root = Some(base.config().root_dir().display().to_string());
    let cfg = AvmnistConfig {
        root: root.clone(),
        seed: 1,
        image_pca_energy: 0.25,
        image_noise: 0.1,
        audio_snr_db: Some(0.0),
        val_fraction: 0.1,
        ..Default::default()
    };
    let t = Instant::now();
    let ds = AvmnistDataset::new(&cfg).unwrap();
    eprintln!(
        "avmnist build with PCA 0.25 + noise + SNR 0 dB + val: {:?}",
        t.elapsed()
    );
    assert_eq!(
        (
            ds.len(Split::Train),
            ds.len(Split::Val),
            ds.len(Split::Test)
        ),
        (2025, 225, 250)
    );
    assert!(ds.pca().unwrap().energy_kept >= 0.25);
    // different seed: different pairing; pools still respected
    let differs = (0..250)
        .filter(|&i| {
            ds.pair_info(Split::Test, i).unwrap().1 != base.pair_info(Split::Test, i).unwrap().1
        })
        .count();
    assert!(
        differs > 200,
        "pairing should change with the seed ({differs} differ)"
    );
    for i in 0..ds.len(Split::Val) {
        let (_, img, l) = ds.pair_info(Split::Val, i).unwrap();
        assert!(img < 6000 && ds.image_label(img) == l);
    }
    // same seed: identical dataset
    let ds2 = AvmnistDataset::new(&cfg).unwrap();
    for split in [Split::Train, Split::Val, Split::Test] {
        for i in (0..ds.len(split)).step_by(37) {
            assert_eq!(
                ds.sample(split, i, None).unwrap(),
                ds2.sample(split, i, None).unwrap()
            );
        }
    }
    // speaker split
    let sp = AvmnistDataset::new(&AvmnistConfig {
        root: root.clone(),
        split: "speaker".into(),
        test_speakers: vec!["george".into(), "lucas".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!((sp.len(Split::Train), sp.len(Split::Test)), (1500, 1000));
    assert!((0..1000)
        .all(|i| ["george", "lucas"]
            .contains(&sp.pair_info(Split::Test, i).unwrap().0.speaker.as_str())));
    let e = AvmnistDataset::new(&AvmnistConfig {
        root,
        split: "speaker".into(),
        test_speakers: vec!["nobody".into()],
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(
        msg(&e).contains("data.test_speakers") && msg(&e).contains("nobody"),
        "{e}"
    );
}

#[test]
fn avmnist_missing_root_is_clear() {
    let e = AvmnistDataset::new(&AvmnistConfig {
        root: Some("/nonexistent/equimodal".into()),
        ..Default::default()
    })
    .err()
    .unwrap();
    // where it looked, and how to get the data
    assert!(matches!(e, Error::MissingData { .. }), "{e:?}");
    assert!(
        msg(&e).contains("/nonexistent/equimodal/fsdd/recordings")
            && msg(&e).contains("equimodal data fetch avmnist"),
        "{e}"
    );
}

#[test]
fn avmnist_missing_mnist_is_clear() {
    // recordings present (names are all that is read before MNIST is looked for), MNIST not
    let td = TempDir::new("no-mnist");
    let rec = td.0.join(catalog::FSDD_RECORDINGS);
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("0_george_0.wav"), b"").unwrap();
    let e = AvmnistDataset::new(&AvmnistConfig { root: Some(td.0.display().to_string()), ..Default::default() }).err().unwrap();
    assert!(matches!(e, Error::MissingData { .. }), "{e:?}");
    let want = td.0.join(catalog::MNIST_IMAGES).display().to_string();
    assert!(msg(&e).contains(&want) && msg(&e).contains("equimodal data fetch avmnist"), "{e}");
}

/// Gzipped IDX bytes: `magic`, then the dims, then `data`.
fn write_idx_gz(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut raw = magic.to_be_bytes().to_vec();
    for d in dims {
        raw.extend(d.to_be_bytes());
    }
    raw.extend(data);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    std::fs::write(path, enc.finish().unwrap()).unwrap();
}

#[test]
fn avmnist_is_the_same_from_the_published_mnist_file_and_the_8000_image_copy() {
    let Some(root) = avmnist_root() else { return };
    // 100 clips (speaker george, takes 0..9 of each digit) keep the preprocessing short
    let td = TempDir::new("mnist-copies");
    let rec = td.0.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    for d in 0..10 {
        for t in 0..10 {
            let n = format!("{d}_george_{t}.wav");
            std::fs::copy(root.join(catalog::FSDD_RECORDINGS).join(&n), rec.join(&n)).unwrap();
        }
    }
    // a published-layout root: the 8,000 protocol images followed by 2,000 others (blank),
    // as in the 10,000-image file; a copy-layout root: exactly the 8,000
    let (ip, lp) = mnist_files(&root);
    let (im, lb) = (read_idx(&ip).unwrap(), read_idx(&lp).unwrap());
    let (img8k, lab8k) = (&im.data[..8000 * 784], &lb.data[..8000]);
    let (full, copy) = (td.0.join("full"), td.0.join("copy"));
    for d in [&full, &copy] {
        std::fs::create_dir_all(d.join("mnist")).unwrap();
    }
    let pad = |v: &[u8], extra: usize| [v, &vec![0u8; extra][..]].concat();
    write_idx_gz(&full.join(catalog::MNIST_IMAGES), 0x803, &[10000, 28, 28], &pad(img8k, 2000 * 784));
    write_idx_gz(&full.join(catalog::MNIST_LABELS), 0x801, &[10000], &pad(lab8k, 2000));
    write_idx_gz(&copy.join("mnist/t10k-first8000-images-idx3-ubyte.gz"), 0x803, &[8000, 28, 28], img8k);
    write_idx_gz(&copy.join("mnist/t10k-first8000-labels-idx1-ubyte.gz"), 0x801, &[8000], lab8k);
    // image and audio noise: their draws run over every loaded image, so this differs
    // unless the loader reads only the protocol's 8,000 images from the larger file
    let build = |r: &Path| {
        AvmnistDataset::new(&AvmnistConfig {
            root: Some(r.display().to_string()),
            fsdd_dir: rec.display().to_string(),
            seed: 3,
            image_noise: 0.2,
            audio_snr_db: Some(5.0),
            ..Default::default()
        })
        .unwrap()
    };
    let (a, b) = (build(&full), build(&copy));
    for split in [Split::Train, Split::Test] {
        assert!(a.len(split) > 0 && a.len(split) == b.len(split));
        for i in 0..a.len(split) {
            assert_eq!(a.sample(split, i, None).unwrap(), b.sample(split, i, None).unwrap(), "{split} {i}");
        }
    }
}

// ---------------------------------------------------------------- CREMA-D

#[test]
fn cremad_fixture_loads() {
    let td = TempDir::new("cremad");
    let Some(root) = avmnist_root() else { return };
    let fx = write_cremad_fixture(&td.0, &root, 8, 4, 3).unwrap();
    let cfg = CremadConfig {
        root: Some(td.0.display().to_string()),
        image_size: 64,
        ..Default::default()
    };
    let ds = CremadDataset::new(&cfg).unwrap();
    assert_eq!(ds.num_classes(), 6);
    assert_eq!(ds.modalities()[0].shape, vec![1, 257, 188]);
    assert_eq!(ds.modalities()[1].shape, vec![3, 64, 64]);
    assert_eq!(
        (
            ds.len(Split::Train),
            ds.len(Split::Val),
            ds.len(Split::Test)
        ),
        (8, 0, 4)
    );
    for (split, list) in [(Split::Train, &fx.train), (Split::Test, &fx.test)] {
        for (i, (id, label)) in list.iter().enumerate() {
            assert_eq!(ds.clip(split, i).unwrap(), (id.as_str(), *label));
            let digit: u32 = id.rsplit('_').next().unwrap().parse().unwrap();
            assert_eq!(*label, digit % 6);
        }
    }
    let (x, y) = ds.sample(Split::Train, 0, None).unwrap();
    assert_eq!(y, fx.train[0].1);
    assert_eq!((x[0].len(), x[1].len()), (257 * 188, 3 * 64 * 64));
    assert!(x[0].iter().all(|v| v.is_finite()) && x[1].iter().all(|v| v.is_finite()));
    // tiled to 3 s at 22,050 Hz and periodic
    let w = ds.waveform(&fx.train[0].0).unwrap();
    assert_eq!(w.len(), 66150);
    // eval is deterministic, augmentation is seeded
    assert_eq!(ds.sample(Split::Train, 0, None).unwrap(), (x.clone(), y));
    let a1 = ds
        .sample(Split::Train, 0, Some(&mut StdRng::seed_from_u64(5)))
        .unwrap();
    let a2 = ds
        .sample(Split::Train, 0, Some(&mut StdRng::seed_from_u64(5)))
        .unwrap();
    let a3 = ds
        .sample(Split::Train, 0, Some(&mut StdRng::seed_from_u64(6)))
        .unwrap();
    assert_eq!(a1, a2);
    assert_eq!(a1.0[0], x[0], "audio has no augmentation");
    assert!(a1.0[1] != x[1] || a3.0[1] != x[1]);
    // 20 s tiling (AUG) → 257×1250; full-size frames 3×224×224
    let ds20 = CremadDataset::new(&CremadConfig {
        seconds: 20.0,
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(ds20.modalities()[0].shape, vec![1, 257, 1250]);
    let full = CremadDataset::new(&CremadConfig {
        image_size: 224,
        ..cfg.clone()
    })
    .unwrap();
    let (x, _) = full
        .sample(Split::Test, 1, Some(&mut StdRng::seed_from_u64(1)))
        .unwrap();
    assert_eq!(x[1].len(), 3 * 224 * 224);
    // through the generic builder + loader (lazy loading in workers)
    let ds: Arc<dyn Dataset> = Arc::from(build(&DatasetConfig::Cremad(cfg.clone())).unwrap());
    let batches: Vec<_> = Loader::new(
        ds,
        Split::Train,
        LoaderConfig {
            batch_size: 3,
            ..LoaderConfig::train(3, 0, 0)
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].inputs[1].shape, vec![3, 3, 64, 64]);
}

#[test]
fn cremad_errors_name_files() {
    let td = TempDir::new("cremad-bad");
    let Some(root) = avmnist_root() else { return };
    write_cremad_fixture(&td.0, &root, 2, 1, 1).unwrap();
    let cfg = CremadConfig {
        root: Some(td.0.display().to_string()),
        image_size: 32,
        ..Default::default()
    };
    let csv = td.0.join("annotations/test.csv");
    let good = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, good.replace(",", ",XYZ")).unwrap();
    let e = CremadDataset::new(&cfg).err().unwrap();
    assert!(
        msg(&e).contains("test.csv") && msg(&e).contains("XYZ"),
        "{e}"
    );
    std::fs::write(&csv, "9999_NOPE_ANG_XX,ANG\r\n").unwrap();
    let e = CremadDataset::new(&cfg).err().unwrap();
    assert!(msg(&e).contains("9999_NOPE_ANG_XX.wav"), "{e}");
    std::fs::write(&csv, good).unwrap();
    // corrupt frame → typed error at sample time
    let ds = CremadDataset::new(&cfg).unwrap();
    let id = ds.clip(Split::Test, 0).unwrap().0.to_string();
    let fdir = td.0.join("Image-01-FPS").join(&id);
    let frame = std::fs::read_dir(&fdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&frame, b"not a jpeg").unwrap();
    let e = ds.sample(Split::Test, 0, None).unwrap_err();
    assert!(msg(&e).contains(&frame.display().to_string()), "{e}");
    let e = CremadDataset::new(&CremadConfig::default()).err().unwrap();
    assert!(msg(&e).contains("data.root"), "{e}");
    let e = CremadDataset::new(&CremadConfig {
        frame: "last".into(),
        ..cfg
    })
    .err()
    .unwrap();
    assert!(msg(&e).contains("data.frame"), "{e}");
}

// ---------------------------------------------------------------- tensors

fn ht(shape: Vec<usize>, f: impl Fn(usize) -> f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(shape, (0..n).map(f).collect()).unwrap()
}

#[test]
fn tensors_round_trip() {
    let td = TempDir::new("tensors");
    let a = ht(vec![5, 2, 3], |i| i as f32);
    let v = ht(vec![5, 4], |i| -(i as f32));
    write_tensors_split(
        td.0.join("train.safetensors"),
        &[("audio", &a), ("video", &v)],
        &[0, 1, 2, 1, 0],
    )
    .unwrap();
    let a2 = ht(vec![2, 2, 3], |i| 100.0 + i as f32);
    let v2 = ht(vec![2, 4], |i| i as f32 * 0.5);
    write_tensors_split(
        td.0.join("test.safetensors"),
        &[("audio", &a2), ("video", &v2)],
        &[2, 0],
    )
    .unwrap();
    let cfg = TensorsConfig {
        root: Some(td.0.display().to_string()),
        ..Default::default()
    };
    let ds = build(&DatasetConfig::Tensors(cfg.clone())).unwrap();
    assert_eq!(ds.name(), "tensors");
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(
        ds.modalities(),
        &[
            ModalitySpec::new("audio", vec![2, 3]),
            ModalitySpec::new("video", vec![4])
        ]
    );
    assert_eq!(
        (
            ds.len(Split::Train),
            ds.len(Split::Val),
            ds.len(Split::Test)
        ),
        (5, 0, 2)
    );
    let (x, y) = ds.sample(Split::Train, 3, None).unwrap();
    assert_eq!(y, 1);
    assert_eq!(x[0], (18..24).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(x[1], (12..16).map(|i| -(i as f32)).collect::<Vec<_>>());
    let (x, y) = ds.sample(Split::Test, 1, None).unwrap();
    assert_eq!((y, x[1].clone()), (0, vec![2.0, 2.5, 3.0, 3.5]));
    // explicit modality list (order follows the config) and num_classes
    let ds = build(&DatasetConfig::Tensors(TensorsConfig {
        modalities: vec!["video".into(), "audio".into()],
        num_classes: 7,
        ..cfg
    }))
    .unwrap();
    assert_eq!(ds.modalities()[0].name, "video");
    assert_eq!(ds.num_classes(), 7);
}

#[test]
fn tensors_validation_errors() {
    let a = ht(vec![3, 2], |i| i as f32);
    let v = ht(vec![3, 4], |i| i as f32);
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, &str)> = vec![
        (
            "label out of range",
            Box::new(|d: &Path| {
                write_tensors_split(
                    d.join("test.safetensors"),
                    &[("a", &a), ("v", &v)],
                    &[0, 9, 1],
                )
                .unwrap();
            }),
            "label 9",
        ),
        (
            "shape mismatch across splits",
            Box::new(|d: &Path| {
                let v5 = ht(vec![3, 5], |i| i as f32);
                write_tensors_split(
                    d.join("test.safetensors"),
                    &[("a", &a), ("v", &v5)],
                    &[0, 1, 1],
                )
                .unwrap();
            }),
            "per-sample shape [5]",
        ),
        (
            "missing modality",
            Box::new(|d: &Path| {
                let w = ht(vec![3, 4], |i| i as f32);
                write_tensors_split(
                    d.join("test.safetensors"),
                    &[("a", &a), ("w", &w)],
                    &[0, 1, 1],
                )
                .unwrap();
            }),
            "missing modality tensor `v`",
        ),
        (
            "N mismatch",
            Box::new(|d: &Path| {
                // hand-written file: labels [2] but modalities [3, ...]
                let lab: Vec<u8> = [0i64, 1].iter().flat_map(|l| l.to_le_bytes()).collect();
                let ab: Vec<u8> = a.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                let vb: Vec<u8> = v.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_raw(
                    &d.join("test.safetensors"),
                    vec![
                        ("a", safetensors::Dtype::F32, vec![3, 2], ab),
                        ("v", safetensors::Dtype::F32, vec![3, 4], vb),
                        ("labels", safetensors::Dtype::I64, vec![2], lab),
                    ],
                );
            }),
            "first dimension must equal the 2 labels",
        ),
        (
            "bad dtype",
            Box::new(|d: &Path| {
                let lab: Vec<u8> = vec![0, 1, 1];
                let ab: Vec<u8> = vec![0u8; 3 * 2 * 2];
                let vb: Vec<u8> = v.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_raw(
                    &d.join("test.safetensors"),
                    vec![
                        ("a", safetensors::Dtype::F16, vec![3, 2], ab),
                        ("v", safetensors::Dtype::F32, vec![3, 4], vb),
                        ("labels", safetensors::Dtype::U8, vec![3], lab),
                    ],
                );
            }),
            "tensor `a` has dtype F16",
        ),
        (
            "float labels",
            Box::new(|d: &Path| {
                let lab: Vec<u8> = [0f32, 1.0, 1.0]
                    .iter()
                    .flat_map(|l| l.to_le_bytes())
                    .collect();
                let ab: Vec<u8> = a.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                let vb: Vec<u8> = v.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_raw(
                    &d.join("test.safetensors"),
                    vec![
                        ("a", safetensors::Dtype::F32, vec![3, 2], ab),
                        ("v", safetensors::Dtype::F32, vec![3, 4], vb),
                        ("labels", safetensors::Dtype::F32, vec![3], lab),
                    ],
                );
            }),
            "labels must be an integer dtype",
        ),
        (
            "missing labels",
            Box::new(|d: &Path| {
                let ab: Vec<u8> = a.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                let vb: Vec<u8> = v.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_raw(
                    &d.join("test.safetensors"),
                    vec![
                        ("a", safetensors::Dtype::F32, vec![3, 2], ab),
                        ("v", safetensors::Dtype::F32, vec![3, 4], vb),
                    ],
                );
            }),
            "missing label tensor `labels`",
        ),
        (
            "corrupt file",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("test.safetensors"),
                    b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
                )
                .unwrap();
            }),
            "not a valid safetensors file",
        ),
        (
            "missing test file",
            Box::new(|_d: &Path| {}),
            "test file not found",
        ),
    ];
    for (name, make, want) in cases {
        let td = TempDir::new("tensors-bad");
        write_tensors_split(
            td.0.join("train.safetensors"),
            &[("a", &a), ("v", &v)],
            &[0, 1, 2],
        )
        .unwrap();
        make(&td.0);
        let cfg = TensorsConfig {
            root: Some(td.0.display().to_string()),
            num_classes: 3,
            ..Default::default()
        };
        let e = build(&DatasetConfig::Tensors(cfg))
            .err()
            .unwrap_or_else(|| panic!("{name}: expected an error"));
        let m = msg(&e);
        assert!(m.contains(want), "{name}: `{m}` lacks `{want}`");
        assert!(
            m.contains("test.safetensors"),
            "{name}: `{m}` does not name the file"
        );
    }
    // writer checks shapes
    assert!(write_tensors_split(
        std::env::temp_dir().join("never.safetensors"),
        &[("a", &a)],
        &[0, 1]
    )
    .is_err());
    let e = build(&DatasetConfig::Tensors(TensorsConfig {
        modalities: vec!["a".into()],
        root: Some("x".into()),
        ..Default::default()
    }))
    .err()
    .unwrap();
    assert!(msg(&e).contains("data.modalities"), "{e}");
}

fn write_raw(path: &Path, tensors: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

// ---------------------------------------------------------------- synthetic

#[test]
fn synthetic_default_is_deterministic_and_imbalanced() {
    let ds = build(&DatasetConfig::default()).unwrap();
    assert_eq!(ds.name(), "synthetic");
    assert_eq!(ds.modalities().len(), 2);
    assert_eq!(ds.modalities()[0].shape, vec![1, 16, 16]);
    assert_eq!(ds.modalities()[1].shape, vec![1, 16, 16]);
    assert_eq!(
        (
            ds.len(Split::Train),
            ds.len(Split::Val),
            ds.len(Split::Test)
        ),
        (1200, 0, 400)
    );
    let ds2 = build(&DatasetConfig::default()).unwrap();
    assert_eq!(
        ds.sample(Split::Test, 17, None).unwrap(),
        ds2.sample(Split::Test, 17, None).unwrap()
    );
    assert_ne!(
        ds.sample(Split::Test, 17, None).unwrap().0,
        ds.sample(Split::Train, 17, None).unwrap().0
    );
    // nearest-template accuracy (an oracle knowing the clean patterns, ignoring shifts):
    // the visual modality is near-perfect, audio weak but clearly above chance (10 %).
    let syn = SyntheticDataset::new(&SyntheticConfig::default()).unwrap();
    let mut correct = [0usize; 2];
    let n = 400;
    for i in 0..n {
        let (x, y) = syn.sample(Split::Test, i, None).unwrap();
        for m in 0..2 {
            let best = (0..10)
                .max_by(|&a, &b| {
                    let sa: f32 = x[m].iter().zip(syn.pattern(m, a)).map(|(p, q)| p * q).sum();
                    let sb: f32 = x[m].iter().zip(syn.pattern(m, b)).map(|(p, q)| p * q).sum();
                    sa.partial_cmp(&sb).unwrap()
                })
                .unwrap();
            correct[m] += (best as u32 == y) as usize;
        }
    }
    let acc = [correct[0] as f64 / n as f64, correct[1] as f64 / n as f64];
    eprintln!(
        "synthetic template accuracy: audio {:.3}, visual {:.3}",
        acc[0], acc[1]
    );
    // (the oracle ignores the random shifts, so neither reaches 100 % on 16x16 inputs)
    assert!(acc[1] > acc[0] + 0.25, "visual should dominate: {acc:?}");
    assert!(
        acc[0] > 0.3 && acc[0] < 0.9,
        "audio should be weak but informative: {acc:?}"
    );
}

#[test]
fn synthetic_any_number_of_modalities() {
    let cfg = DatasetConfig::from_toml_str(
        r#"
kind = "synthetic"
num_classes = 4
n_train = 40
n_val = 8
n_test = 12
signal = [0.1, 1.0, 0.5]
[[modalities]]
name = "a"
shape = [16]
[[modalities]]
name = "b"
shape = [3, 8, 8]
[[modalities]]
name = "c"
shape = [2, 4, 5, 6]
informative = 0.5
"#,
    )
    .unwrap();
    let ds = build(&cfg).unwrap();
    assert_eq!(ds.modalities().len(), 3);
    assert_eq!(ds.len(Split::Val), 8);
    let (x, y) = ds.sample(Split::Val, 5, None).unwrap();
    assert_eq!((x[0].len(), x[1].len(), x[2].len(), y), (16, 192, 240, 1));
}

// ---------------------------------------------------------------- config

#[test]
fn config_errors_name_fields() {
    let cases = [
        ("kind = \"mnist\"", "data.kind"),
        ("seed = 1", "data.kind"),
        ("kind = \"avmnist\"\nsplit = \"random\"", "data.split"),
        ("kind = \"avmnist\"\nimage_pca_energy = 1.5", "data.image_pca_energy"),
        ("kind = \"avmnist\"\nval_fraction = 1.0", "data.val_fraction"),
        ("kind = \"avmnist\"\ntrain_pool = [0, 7000]", "data.test_pool"),
        ("kind = \"avmnist\"\nsplti = \"take\"", "splti"),
        ("kind = \"synthetic\"\nnum_classes = 1", "data.num_classes"),
        ("kind = \"synthetic\"\nsignal = [1.0]", "data.signal"),
        ("kind = \"synthetic\"\n[[modalities]]\nname = \"x\"", "data.modalities"),
        ("kind = \"synthetic\"\n[[modalities]]\nname = \"x\"\n[[modalities]]\nname = \"y\"\nshape = []", "data.modalities[1].shape"),
        ("kind = \"synthetic\"\n[[modalities]]\nname = \"x\"\n[[modalities]]\nname = \"x\"", "data.modalities[1].name"),
        ("kind = \"cremad\"\nroot = \"/x\"\nimage_size = 2", "data.image_size"),
        ("kind = \"cremad\"\nroot = \"/x\"\nwindow = \"kaiser\"", "kaiser"),
        ("kind = \"cremad\"\nroot = \"/x\"\nsplit = \"actor\"\ntest_fraction = 1.5", "data.test_fraction"),
        ("kind = \"cremad\"\nroot = \"/x\"\ntest_fraction = 0.6\nval_fraction = 0.5", "data.val_fraction"),
        ("kind = \"cremad\"\nroot = \"/x\"\nsplit = \"speaker\"", "speaker"),
        ("kind = \"tensors\"", "data.root"),
    ];
    for (text, want) in cases {
        let e = DatasetConfig::from_toml_str(text)
            .err()
            .unwrap_or_else(|| panic!("`{text}` should fail"));
        assert!(matches!(e, Error::Config { .. }), "{text}: {e}");
        assert!(msg(&e).contains(want), "`{text}`: `{e}` lacks `{want}`");
    }
    let ok = DatasetConfig::from_toml_str(
        "kind = \"avmnist\"\nimage_pca_energy = 0.25\naudio_snr_db = 0.0",
    )
    .unwrap();
    assert_eq!(ok.kind(), "avmnist");
    assert!("bogus".parse::<Split>().is_err());
    assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
}

// ---------------------------------------------------------------- loader

fn small_synthetic(n_train: usize) -> Arc<dyn Dataset> {
    Arc::from(
        build(&DatasetConfig::Synthetic(SyntheticConfig {
            n_train,
            n_test: 23,
            ..Default::default()
        }))
        .unwrap(),
    )
}

#[test]
fn loader_covers_every_index_once_and_orders_by_seed() {
    let ds = small_synthetic(103);
    let epoch = |seed, epoch, workers| -> Vec<HostBatchLite> {
        let cfg = LoaderConfig {
            batch_size: 10,
            workers,
            ..LoaderConfig::train(10, seed, epoch)
        };
        Loader::new(ds.clone(), Split::Train, cfg)
            .unwrap()
            .map(|b| lite(b.unwrap()))
            .collect()
    };
    let e0 = epoch(1, 0, 2);
    assert_eq!(e0.len(), 11);
    assert_eq!(e0.last().unwrap().indices.len(), 3);
    let mut all: Vec<usize> = e0.iter().flat_map(|b| b.indices.clone()).collect();
    let order = all.clone();
    all.sort();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    assert_ne!(
        order,
        (0..103).collect::<Vec<_>>(),
        "training order is shuffled"
    );
    let e0b = epoch(1, 0, 3);
    assert_eq!(
        e0, e0b,
        "same seed and epoch: same batches regardless of worker count"
    );
    assert_eq!(e0, epoch(1, 0, 0));
    let e1: Vec<usize> = epoch(1, 1, 2)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_ne!(order, e1, "different epochs: different order");
    let s2: Vec<usize> = epoch(2, 0, 2)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_ne!(order, s2);
    // batch contents: labels and inputs match the dataset
    let b = &e0[0];
    for (r, &i) in b.indices.iter().enumerate() {
        let (x, y) = ds.sample(Split::Train, i, None).unwrap();
        assert_eq!(b.labels[r], y);
        assert_eq!(&b.first[r * 256..(r + 1) * 256], &x[0][..]);
    }
    // drop_last and eval order
    let cfg = LoaderConfig {
        drop_last: true,
        ..LoaderConfig::train(10, 1, 0)
    };
    assert_eq!(
        Loader::new(ds.clone(), Split::Train, cfg).unwrap().count(),
        10
    );
    let ev: Vec<usize> = Loader::new(ds.clone(), Split::Test, LoaderConfig::eval(5))
        .unwrap()
        .flat_map(|b| b.unwrap().indices)
        .collect();
    assert_eq!(ev, (0..23).collect::<Vec<_>>());
    assert_eq!(
        Loader::new(ds.clone(), Split::Val, LoaderConfig::eval(5))
            .unwrap()
            .count(),
        0
    );
    assert!(Loader::new(ds, Split::Train, LoaderConfig::eval(0)).is_err());
}

#[derive(Debug, PartialEq)]
struct HostBatchLite {
    indices: Vec<usize>,
    labels: Vec<u32>,
    first: Vec<f32>,
}
fn lite(b: equimodal::data::HostBatch) -> HostBatchLite {
    assert_eq!(b.inputs[0].shape, vec![b.labels.len(), 1, 16, 16]);
    assert_eq!(b.inputs[1].shape, vec![b.labels.len(), 1, 16, 16]);
    HostBatchLite {
        indices: b.indices,
        labels: b.labels,
        first: b.inputs[0].data.clone(),
    }
}

/// A dataset that sleeps, counts calls, fails on some indices and panics on one.
struct Flaky {
    specs: Vec<ModalitySpec>,
    n: usize,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    fail: Vec<usize>,
    panic_on: Option<usize>,
}
impl Dataset for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn modalities(&self) -> &[ModalitySpec] {
        &self.specs
    }
    fn len(&self, split: Split) -> usize {
        if split == Split::Train {
            self.n
        } else {
            0
        }
    }
    fn sample(
        &self,
        _s: Split,
        i: usize,
        _a: Option<&mut StdRng>,
    ) -> equimodal::error::Result<(Vec<Vec<f32>>, u32)> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.fail.contains(&i) {
            return Err(Error::data("flaky", format!("sample {i} is broken")));
        }
        if self.panic_on == Some(i) {
            panic!("sample {i} panicked");
        }
        Ok((vec![vec![i as f32; 2], vec![0.0; 3]], (i % 2) as u32))
    }
}
fn flaky(
    n: usize,
    delay_ms: u64,
    fail: Vec<usize>,
    panic_on: Option<usize>,
) -> (Arc<dyn Dataset>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let ds = Flaky {
        specs: vec![
            ModalitySpec::new("a", vec![2]),
            ModalitySpec::new("b", vec![3]),
        ],
        n,
        delay: Duration::from_millis(delay_ms),
        calls: calls.clone(),
        fail,
        panic_on,
    };
    (Arc::new(ds), calls)
}

#[test]
fn loader_propagates_errors_without_stopping() {
    let (ds, _) = flaky(40, 0, vec![13], Some(27));
    let res: Vec<_> = Loader::new(ds, Split::Train, LoaderConfig::eval(10))
        .unwrap()
        .collect();
    assert_eq!(res.len(), 4);
    assert!(res[0].is_ok() && res[3].is_ok());
    assert!(msg(res[1].as_ref().unwrap_err()).contains("sample 13 is broken"));
    assert!(msg(res[2].as_ref().unwrap_err()).contains("sample 27 panicked"));
}

#[test]
fn loader_prefetches_ahead_of_a_slow_consumer() {
    // 8 batches of 4 samples at 5 ms each (20 ms/batch, 2 workers); the consumer takes 50 ms
    // per batch, so after the first batch it should almost never wait (without prefetching
    // it would wait 7 × 20 ms).
    let (ds, _) = flaky(32, 5, vec![], None);
    let mut l = Loader::new(
        ds,
        Split::Train,
        LoaderConfig {
            prefetch: 3,
            ..LoaderConfig::eval(4)
        },
    )
    .unwrap();
    let first = l.next().unwrap().unwrap();
    assert_eq!(first.indices, vec![0, 1, 2, 3]);
    let w0 = l.wait_time();
    let mut n = 1;
    for b in l.by_ref() {
        b.unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(n, 8);
    let waited = l.wait_time() - w0;
    assert!(
        waited < Duration::from_millis(70),
        "consumer waited {waited:?} despite prefetching"
    );
    assert!(l.total_time() >= Duration::from_millis(350));
}

#[test]
fn loader_drop_mid_epoch_stops_workers() {
    let (ds, calls) = flaky(10_000, 1, vec![], None);
    let mut l = Loader::new(
        ds.clone(),
        Split::Train,
        LoaderConfig {
            workers: 2,
            prefetch: 2,
            ..LoaderConfig::train(8, 0, 0)
        },
    )
    .unwrap();
    l.next().unwrap().unwrap();
    let t = Instant::now();
    drop(l);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    let after = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        after,
        "workers still running after drop"
    );
    assert!(after < 200, "workers ran far ahead: {after} samples");
    assert_eq!(
        Arc::strong_count(&ds),
        1,
        "worker threads still hold the dataset"
    );
}

#[test]
fn cremad_actor_split_holds_every_actor_out_of_training() {
    use equimodal::data::cremad::{actor_of, actor_split, read_annotations};
    // the OGM-GE lists themselves share all 91 actors between train and test (the leak this
    // split removes)
    let Some(root) = real_data(&["cremad_meta/ogm_ge_splits"]) else { return };
    let dir = root.join("cremad_meta/ogm_ge_splits");
    let train = read_annotations(&dir.join("train.csv")).unwrap();
    let test = read_annotations(&dir.join("test.csv")).unwrap();
    let actors = |l: &[(String, u32)]| l.iter().map(|c| actor_of(&c.0).unwrap()).collect::<std::collections::BTreeSet<u32>>();
    assert_eq!(actors(&train).intersection(&actors(&test)).count(), 91);
    let all: Vec<(String, u32)> = train.iter().chain(&test).cloned().collect();
    let (tr, va, te) = actor_split(&all, 0.1, 0.1, 7).unwrap();
    let (a_tr, a_va, a_te) = (actors(&tr), actors(&va), actors(&te));
    assert_eq!((a_tr.len(), a_va.len(), a_te.len()), (91 - 18, 9, 9), "round(0.1 · 91) = 9 actors each");
    assert!(a_tr.is_disjoint(&a_te) && a_tr.is_disjoint(&a_va) && a_va.is_disjoint(&a_te));
    assert_eq!(tr.len() + va.len() + te.len(), all.len(), "every clip in exactly one split");
    // seeded: the same seed gives the same split, another seed another one
    assert_eq!(actor_split(&all, 0.1, 0.1, 7).unwrap().2, te);
    assert_ne!(actors(&actor_split(&all, 0.1, 0.1, 8).unwrap().2), a_te);
    // labels travel with their clips
    let label: std::collections::HashMap<&str, u32> = all.iter().map(|(i, l)| (i.as_str(), *l)).collect();
    assert!(te.iter().all(|(i, l)| label[i.as_str()] == *l));
    // errors name the clip or the field
    let e = actor_split(&[("x_DFA_ANG".into(), 0)], 0.1, 0.0, 0).unwrap_err().to_string();
    assert!(e.contains("x_DFA_ANG"), "{e}");
    let two = vec![("1001_A".to_string(), 0), ("1002_A".to_string(), 1)];
    let e = actor_split(&two, 0.5, 0.5, 0).unwrap_err().to_string();
    assert!(e.contains("data.test_fraction") && e.contains("2 actors"), "{e}");
}

#[test]
fn cremad_actor_split_through_the_dataset() {
    use equimodal::data::cremad::{actor_of, CremadSplit};
    let td = TempDir::new("cremad-actor");
    // 12 clips, one actor each (the fixture numbers actors 1001..)
    let Some(root) = avmnist_root() else { return };
    write_cremad_fixture(&td.0, &root, 8, 4, 1).unwrap();
    let cfg = CremadConfig {
        root: Some(td.0.display().to_string()),
        image_size: 16,
        split: CremadSplit::Actor,
        test_fraction: 0.25,
        val_fraction: 0.25,
        ..Default::default()
    };
    let ds = CremadDataset::new(&cfg).unwrap();
    assert_eq!((ds.len(Split::Train), ds.len(Split::Val), ds.len(Split::Test)), (6, 3, 3));
    let ids = |s: Split| (0..ds.len(s)).map(|i| actor_of(ds.clip(s, i).unwrap().0).unwrap()).collect::<std::collections::BTreeSet<u32>>();
    assert!(ids(Split::Train).is_disjoint(&ids(Split::Test)) && ids(Split::Val).is_disjoint(&ids(Split::Test)));
}
