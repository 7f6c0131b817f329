//! IDX reader (MNIST format), gzipped or plain: big-endian header `0x00 0x00 type ndim`,
//! `ndim` u32 sizes, then the values. Only unsigned-byte data (type 0x08) is used by MNIST
//! and accepted here (magic 0x801 labels, 0x803 images).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone)]
pub struct IdxArray {
    /// Sizes from the header, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major (`dims` product of them).
    pub data: Vec<u8>,
}

/// Read an IDX file, transparently un-gzipping when it starts with the gzip magic.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        gunzip_idx(&raw).map_err(|e| Error::data(path.display().to_string(), format!("corrupt gzip stream: {e}")))?
    } else {
        raw
    };
    parse_idx(&bytes, &path.display().to_string())
}

/// Decompress a gzipped IDX file no further than its header says it holds (plus one byte,
/// so that `parse_idx` sees a stream that is too long): a small file whose stream inflates
/// to gigabytes is then an error before the gigabytes exist.
fn gunzip_idx(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut dec = flate2::read::GzDecoder::new(raw);
    let mut out = Vec::new();
    (&mut dec).take(4).read_to_end(&mut out)?;
    if out.len() < 4 {
        return Ok(out);
    }
    let ndim = out[3] as u64;
    (&mut dec).take(4 * ndim).read_to_end(&mut out)?;
    if (out.len() as u64) < 4 + 4 * ndim {
        return Ok(out);
    }
    let n = out[4..].chunks(4).try_fold(1u64, |a, d| a.checked_mul(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64));
    // an overflowing header: parse_idx names it
    let limit = n.and_then(|n| n.checked_add(1)).unwrap_or(0);
    (&mut dec).take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Parse IDX bytes; `name` is used in error messages.
pub fn parse_idx(b: &[u8], name: &str) -> Result<IdxArray> {
    if b.len() < 4 {
        return Err(Error::data(
            name,
            format!("IDX header truncated ({} bytes)", b.len()),
        ));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(Error::data(
            name,
            format!(
                "bad IDX magic {:02x}{:02x}{:02x}{:02x}: first two bytes must be 0",
                b[0], b[1], b[2], b[3]
            ),
        ));
    }
    if b[2] != 0x08 {
        return Err(Error::data(
            name,
            format!(
                "unsupported IDX element type 0x{:02x} (only 0x08 = u8)",
                b[2]
            ),
        ));
    }
    let ndim = b[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(Error::data(name, format!("unsupported IDX rank {ndim}")));
    }
    let hdr = 4 + 4 * ndim;
    if b.len() < hdr {
        return Err(Error::data(
            name,
            format!(
                "IDX header truncated: need {hdr} bytes, file has {}",
                b.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize
        })
        .collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n = n.ok_or_else(|| Error::data(name, format!("IDX dims {dims:?} overflow")))?;
    if b.len() - hdr != n {
        return Err(Error::data(
            name,
            format!(
                "IDX dims {dims:?} need {n} data bytes, file has {}",
                b.len() - hdr
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: b[hdr..].to_vec(),
    })
}

/// MNIST images `[N, 28, 28]` as f32 in [0, 1] (pixel / 255) and labels `[N]`.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// Image height, pixels.
    pub rows: usize,
    /// Image width, pixels.
    pub cols: usize,
    /// `[N, rows, cols]` row-major, pixel / 255.
    pub images: Vec<f32>,
    /// Digit per image, 0..=9 (checked on read).
    pub labels: Vec<u8>,
}

impl Mnist {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// No images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Keep the first `n` images and labels (all of them when there are fewer).
    pub fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.images.truncate(n * self.rows * self.cols);
    }
    /// Image `i` as `rows · cols` values; panics when `i >= len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let p = self.rows * self.cols;
        &self.images[i * p..(i + 1) * p]
    }
}

/// Read and cross-check an MNIST image file (magic 0x803) and label file (0x801).
pub fn read_mnist(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Mnist> {
    let (ip, lp) = (images.as_ref(), labels.as_ref());
    let im = read_idx(ip)?;
    let lb = read_idx(lp)?;
    let (iname, lname) = (ip.display().to_string(), lp.display().to_string());
    if im.dims.len() != 3 {
        return Err(Error::data(
            iname,
            format!(
                "expected an image file (magic 0x803, rank 3), got rank {}",
                im.dims.len()
            ),
        ));
    }
    if lb.dims.len() != 1 {
        return Err(Error::data(
            lname,
            format!(
                "expected a label file (magic 0x801, rank 1), got rank {}",
                lb.dims.len()
            ),
        ));
    }
    if im.dims[0] != lb.dims[0] {
        return Err(Error::data(
            lname,
            format!(
                "{} labels but {iname} holds {} images",
                lb.dims[0], im.dims[0]
            ),
        ));
    }
    if im.dims[0] == 0 || im.dims[1] == 0 || im.dims[2] == 0 {
        return Err(Error::data(
            iname,
            format!("holds {} images of {}x{} pixels; need at least one image of at least 1x1", im.dims[0], im.dims[1], im.dims[2]),
        ));
    }
    if let Some((i, l)) = lb.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::data(
            lname,
            format!("label {l} at index {i} is not a digit 0..9"),
        ));
    }
    Ok(Mnist {
        rows: im.dims[1],
        cols: im.dims[2],
        images: im.data.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: lb.data,
    })
}
