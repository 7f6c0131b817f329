//! Where datasets live and where they come from: the data root, the catalogue behind
//! `equimodal data list`, and the checksum manifests that `equimodal data fetch` verifies
//! (the download itself is in [`super::fetch`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The AV-MNIST loader's MNIST files, as published (paths under the data root).
pub const MNIST_IMAGES: &str = "mnist/t10k-images-idx3-ubyte.gz";
/// The AV-MNIST loader's MNIST labels file (path under the data root).
pub const MNIST_LABELS: &str = "mnist/t10k-labels-idx1-ubyte.gz";
/// The FSDD recordings folder under the data root.
pub const FSDD_RECORDINGS: &str = "fsdd/recordings";

/// The AV-MNIST protocol's image set: the first 8,000 MNIST test images (pools 0..6000
/// train, 6000..8000 test). The loader reads only these from the 10,000-image file, so the
/// seeded image-noise draws, which run over every loaded image, and the pairing after
/// them do not depend on which copy is on disk.
pub const MNIST_PROTOCOL_IMAGES: usize = 8000;

/// Files a loader accepts in place of a published one when the latter is absent. The
/// project's first copy of MNIST held exactly the protocol's 8,000 images and labels under
/// these names: the same records, the header's count set to 8,000 (checked byte for byte
/// against the published files).
const ALIASES: [(&str, &str); 2] = [
    (MNIST_IMAGES, "mnist/t10k-first8000-images-idx3-ubyte.gz"),
    (MNIST_LABELS, "mnist/t10k-first8000-labels-idx1-ubyte.gz"),
];

/// The data root: `$EQUIMODAL_DATA` when set, else [`user_data_dir`].
pub fn default_data_root() -> PathBuf {
    match std::env::var_os("EQUIMODAL_DATA") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => user_data_dir(),
    }
}

/// The per-user data directory, `equimodal` inside the platform's usual place.
pub fn user_data_dir() -> PathBuf {
    user_data_dir_from(|k| std::env::var_os(k))
}

/// [`user_data_dir`] with the environment passed in (tests give their own). Linux and the
/// BSDs: `$XDG_DATA_HOME/equimodal`, else `~/.local/share/equimodal` (a relative
/// `XDG_DATA_HOME` is ignored, as the XDG specification asks); macOS:
/// `~/Library/Application Support/equimodal`; Windows: `%LOCALAPPDATA%\equimodal`. With no
/// home directory at all: `./equimodal-data`.
pub fn user_data_dir_from(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        var("LOCALAPPDATA").or_else(|| var("APPDATA"))
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Application Support"))
    } else {
        var("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| h.join(".local/share")))
    };
    match base {
        Some(b) => b.join("equimodal"),
        None => PathBuf::from("equimodal-data"),
    }
}

/// `rel` under `root` (`rel` itself when absolute); when that does not exist but a
/// file accepted in its place (`ALIASES`: the protocol-sized MNIST copies) does, that file.
pub fn resolve(root: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let direct = root.join(p);
    if !direct.exists() {
        if let Some((_, alt)) = ALIASES.iter().find(|(name, _)| *name == rel) {
            let alt = root.join(alt);
            if alt.exists() {
                return alt;
            }
        }
    }
    direct
}

/// The error for a dataset file or folder that is not where it was looked for: names the
/// path, the root and how that root was chosen, and the command that fetches the data.
pub fn missing(what: &str, path: &Path, root: &Path, dataset: &str) -> Error {
    let fetch = match catalogue().iter().find(|d| d.name == dataset).map(|d| &d.fetch) {
        Some(Fetch::Download) => format!("`equimodal data fetch {dataset}` downloads it"),
        Some(Fetch::ByHand(_)) => format!("see `equimodal data list` for how to obtain {dataset}"),
        _ => "see `equimodal data list`".to_string(),
    };
    Error::MissingData {
        what: what.to_string(),
        path: path.display().to_string(),
        hint: format!(
            "the data root is {} (data.root, else $EQUIMODAL_DATA, else {}); {fetch}",
            root.display(),
            user_data_dir().display()
        ),
    }
}

/// One downloadable file: where it goes under the data root and how it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path under the data root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents.
    pub sha256: [u8; 32],
    /// Where it is published, tried in order.
    pub urls: Vec<String>,
}

/// The files of one dataset with their checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `data.kind` it belongs to.
    pub dataset: String,
    /// Its files, in manifest order.
    pub files: Vec<RemoteFile>,
}

/// Where the built-in manifests' files are published: a path prefix under the data root
/// and the base addresses (tried in order) to which the rest of the path is appended.
/// FSDD is pinned to the commit whose files the checksums were computed from; MNIST has
/// two mirrors serving the same bytes (the original site no longer serves downloads
/// reliably).
const SOURCES: [(&str, &[&str]); 2] = [
    (
        "fsdd/recordings/",
        &["https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/26eb9aaf76e81b692f806f9140c2d2777410d7a1/recordings/"],
    ),
    (
        "mnist/",
        &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
    ),
];

impl Manifest {
    /// Parse `sha256 size path` lines (`#` starts a comment); `urls` gives each path's
    /// download addresses. `origin` names the text in errors.
    pub fn parse(
        dataset: &str,
        origin: &str,
        text: &str,
        urls: impl Fn(&str) -> Result<Vec<String>>,
    ) -> Result<Manifest> {
        let mut files = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |m: &str| Error::data(format!("{origin}:{}", n + 1), m.to_string());
            let f: Vec<&str> = line.split_whitespace().collect();
            let [hash, size, path] = f[..] else {
                return Err(bad("expected `sha256 size path`"));
            };
            let sha256 = parse_hex(hash).ok_or_else(|| bad("the checksum must be 64 hex digits"))?;
            let size = size.parse().map_err(|_| bad("the size must be a whole number of bytes"))?;
            if Path::new(path).is_absolute() || path.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(bad("the path must be relative, without `..` or empty parts"));
            }
            files.push(RemoteFile { path: path.to_string(), size, sha256, urls: urls(path)? });
        }
        Ok(Manifest { dataset: dataset.to_string(), files })
    }

    /// Sum of the files' sizes, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// How many files are on disk under `root` with their expected size (a quick check:
    /// `fetch` verifies checksums).
    pub fn present(&self, root: &Path) -> usize {
        let ok = |f: &RemoteFile| {
            let p = resolve(root, &f.path);
            match std::fs::metadata(&p) {
                // an alias holds fewer records than the published file, so any size will do
                Ok(m) => m.is_file() && (m.len() == f.size || p != root.join(&f.path)),
                Err(_) => false,
            }
        };
        self.files.iter().filter(|f| ok(f)).count()
    }
}

/// The built-in AV-MNIST manifest (FSDD recordings and the two MNIST files). `mirror`:
/// a base address laid out like the data root (`<mirror>/fsdd/recordings/...`,
/// `<mirror>/mnist/...`) used instead of the public sources; the checksums stay these.
pub fn avmnist_manifest(mirror: Option<&str>) -> Result<Manifest> {
    const TABLE: &str = include_str!("manifests/avmnist.sha256");
    Manifest::parse("avmnist", "src/data/manifests/avmnist.sha256", TABLE, |path| {
        if let Some(m) = mirror {
            return Ok(vec![format!("{}/{path}", m.trim_end_matches('/'))]);
        }
        let (prefix, bases) = SOURCES
            .iter()
            .find(|(p, _)| path.starts_with(p))
            .ok_or_else(|| Error::data("src/data/manifests/avmnist.sha256", format!("no source for `{path}`")))?;
        Ok(bases.iter().map(|b| format!("{b}{}", &path[prefix.len()..])).collect())
    })
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a dataset is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// `equimodal data fetch <name>` downloads it ([`manifest`]).
    Download,
    /// It cannot be downloaded for the user; what they must do.
    ByHand(&'static str),
    /// Nothing to obtain (generated, or the user's own files).
    Nothing(&'static str),
}

/// One dataset the loaders know.
#[derive(Debug, Clone)]
pub struct DatasetEntry {
    /// The `data.kind` of a run configuration.
    pub name: &'static str,
    /// What the data is, one line.
    pub what: &'static str,
    /// Where it comes from and its licence.
    pub source: &'static str,
    /// How to obtain it.
    pub fetch: Fetch,
}

/// Every dataset kind, in `data.kind` order.
pub fn catalogue() -> Vec<DatasetEntry> {
    vec![
        DatasetEntry {
            name: "synthetic",
            what: "generated in memory from the config's seed (any number of modalities)",
            source: "built in",
            fetch: Fetch::Nothing("nothing to download"),
        },
        DatasetEntry {
            name: "avmnist",
            what: "spoken digits (FSDD, 2,500 WAVs of 5 speakers) paired with MNIST test images",
            source: "Free Spoken Digit Dataset (CC BY-SA 4.0) and MNIST (CC BY-SA 3.0)",
            fetch: Fetch::Download,
        },
        DatasetEntry {
            name: "cremad",
            what: "CREMA-D: 7,442 clips of 91 actors, audio + one video frame per second, 6 emotions",
            source: "CREMA-D (ODbL 1.0), OGM-GE's train/test lists",
            fetch: Fetch::ByHand(
                "its audio and video are not on a plain download server: clone \
                 github.com/CheyneyComputerScience/CREMA-D with Git LFS (AudioWAV/ and VideoFlash/, \
                 several GB), extract one frame per second from each video into \
                 Image-01-FPS/<clip>/*.jpg (e.g. ffmpeg -i <clip>.flv -vf fps=1 <clip>/%05d.jpg), \
                 put OGM-GE's lists as annotations/train.csv and test.csv (`clip_id,EMOTION`), \
                 and set data.root to that folder",
            ),
        },
        DatasetEntry {
            name: "tensors",
            what: "your own data as safetensors files, one per split",
            source: "you",
            fetch: Fetch::Nothing("see the README's `tensors` section"),
        },
    ]
}

/// The manifest of a downloadable dataset; an error naming the downloadable ones otherwise.
pub fn manifest(name: &str, mirror: Option<&str>) -> Result<Manifest> {
    match catalogue().iter().find(|d| d.name == name).map(|d| &d.fetch) {
        Some(Fetch::Download) if name == "avmnist" => avmnist_manifest(mirror),
        Some(Fetch::ByHand(how)) => Err(Error::config("dataset", format!("`{name}` cannot be downloaded automatically: {how}"))),
        Some(Fetch::Nothing(why)) => Err(Error::config("dataset", format!("`{name}` has nothing to download: {why}"))),
        _ => Err(Error::config("dataset", format!("unknown dataset `{name}`; downloadable: avmnist"))),
    }
}
