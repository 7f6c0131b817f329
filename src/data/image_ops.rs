//! Image preprocessing matching torchvision: `Resize`, `RandomResizedCrop`,
//! `RandomHorizontalFlip`, `ToTensor` + `Normalize`.

use std::path::Path;

use image::{imageops, RgbImage};
use rand::Rng;

use crate::error::{Error, Result};

/// Per-channel (RGB) mean of ImageNet, subtracted when normalising frames.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel (RGB) standard deviation of ImageNet, divided by after the mean.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Decode an image file (JPEG or PNG) to 8-bit RGB.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| {
        Error::data(
            path.display().to_string(),
            format!("cannot decode image: {e}"),
        )
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::data(
            path.display().to_string(),
            "image has zero size",
        ));
    }
    Ok(img.to_rgb8())
}

/// Resize to exactly `w × h` (bilinear with antialiasing, like PIL's bilinear resize).
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == w && img.height() == h {
        return img.clone();
    }
    imageops::resize(img, w, h, imageops::FilterType::Triangle)
}

/// torchvision `RandomResizedCrop.get_params`: a crop `(top, left, height, width)` covering a
/// random fraction in `scale` of the area with aspect ratio (log-uniform) in `ratio`;
/// 10 tries, then a centre crop clamped to the ratio range.
pub fn random_resized_crop_params<R: Rng + ?Sized>(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> (u32, u32, u32, u32) {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let ar = rng.random_range(lr0..=lr1).exp();
        let w = (target * ar).sqrt().round() as u32;
        let h = (target / ar).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((w0 / ratio.0).round() as u32).clamp(1, height))
    } else if in_ratio > ratio.1 {
        (((h0 * ratio.1).round() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` followed by
/// `RandomHorizontalFlip(0.5)`.
pub fn random_resized_crop_flip<R: Rng + ?Sized>(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    rng: &mut R,
) -> RgbImage {
    let (top, left, h, w) = random_resized_crop_params(
        img.width(),
        img.height(),
        (0.08, 1.0),
        (3.0 / 4.0, 4.0 / 3.0),
        rng,
    );
    let crop = imageops::crop_imm(img, left, top, w, h).to_image();
    let mut out = resize(&crop, out_w, out_h);
    if rng.random::<f64>() < 0.5 {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// `ToTensor` + `Normalize(mean, std)`: `[3, H, W]` row-major f32.
pub fn to_chw_normalized(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        let i = y as usize * w + x as usize;
        for c in 0..3 {
            out[c * w * h + i] = (p.0[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_params_in_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(w, h) in &[(224u32, 224u32), (640, 360), (10, 300), (1, 1)] {
            for _ in 0..200 {
                let (t, l, ch, cw) =
                    random_resized_crop_params(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
                assert!(ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w);
            }
        }
    }
}
