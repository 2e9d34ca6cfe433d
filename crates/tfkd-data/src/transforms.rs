//! torchvision-exact augmentations on planar u8 images, and the final normalisation to f32.
//!
//! Each transform has two halves: drawing its random parameters (in torchvision's order and
//! ranges, from a [`SeededRng`]) and applying them (a pure function, golden-tested against
//! torchvision on PIL images: `scripts/gen_data_fixtures.py`). Everything stays u8 until
//! [`Normalization`], as in the original, where PIL ops run before `ToTensor`.
//!
//! * rotation replicates PIL's `Image.rotate` (which torchvision's `RandomRotation` calls on a
//!   PIL image): the inverse affine matrix about the centre `(w/2, h/2)` with cos/sin rounded
//!   to 15 decimals, then PIL's 16.16 fixed-point nearest-neighbour affine loop;
//! * resizing replicates PIL's two-pass bilinear resampling with antialias (the support grows
//!   with the down-scaling factor) and its 22-bit fixed-point coefficients.
//!
//! Both are bit-exact against Pillow on the fixtures (see the tests).

use rand::Rng;

use crate::error::{DataError, Result};
use crate::image::Image;
use crate::SeededRng;

/// Per-channel `ToTensor` + `Normalize`: `((v / divisor) - mean[c]) / std[c]`, in f32 as torch does.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// The value dividing the u8 pixel (255 for `ToTensor`; 16 for the digits).
    pub divisor: f32,
    /// Per-channel mean (after dividing).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalization {
    /// The original's CIFAR constants (§5.1), CIFAR-100 statistics, used for CIFAR-10 too.
    pub fn cifar100() -> Self {
        Self::new(
            &[0.5070751592371323, 0.48654887331495095, 0.4409178433670343],
            &[0.2673342858792401, 0.2564384629170883, 0.27615047132568404],
        )
    }
    /// The CIFAR-10 statistics from the original's commented-out line (not used by the paper).
    pub fn cifar10() -> Self {
        Self::new(&[0.4914, 0.4822, 0.4465], &[0.240, 0.243, 0.261])
    }
    /// Tiny-ImageNet (§5.2).
    pub fn tiny_imagenet() -> Self {
        Self::new(&[0.4802, 0.4481, 0.3975], &[0.2302, 0.2265, 0.2262])
    }
    /// ImageNet (§3.5 / §5.3).
    pub fn imagenet() -> Self {
        Self::new(&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225])
    }
    /// Plain scaling to [0, 1] by `divisor` (255 for `ToTensor`, 16 for the digits), `channels` planes.
    pub fn scale_only(divisor: f32, channels: usize) -> Self {
        Normalization { divisor, mean: vec![0.0; channels], std: vec![1.0; channels] }
    }
    /// `ToTensor` + `Normalize(mean, std)`; the f64 constants are rounded to f32 as torch does.
    pub fn new(mean: &[f64], std: &[f64]) -> Self {
        Normalization {
            divisor: 255.0,
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| s as f32).collect(),
        }
    }
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }
    /// The 256-entry lookup table of each channel (bit-identical to torch's f32 ops).
    pub fn lut(&self) -> Vec<[f32; 256]> {
        (0..self.channels())
            .map(|c| {
                let mut t = [0f32; 256];
                for (v, o) in t.iter_mut().enumerate() {
                    *o = (v as f32 / self.divisor - self.mean[c]) / self.std[c];
                }
                t
            })
            .collect()
    }
    /// Normalises a planar u8 image into `out` (same length).
    pub fn apply(&self, img: &Image<'_>, out: &mut [f32]) -> Result<()> {
        let lut = self.lut();
        normalize_with(&lut, img, out)
    }
}

pub(crate) fn normalize_with(lut: &[[f32; 256]], img: &Image<'_>, out: &mut [f32]) -> Result<()> {
    let n = img.height * img.width;
    if lut.len() != img.channels || out.len() != img.data.len() {
        return Err(DataError::InvalidConfig {
            what: "normalization",
            message: format!("{} channel constants for an image of shape {:?}", lut.len(), img.shape()),
        });
    }
    for c in 0..img.channels {
        let t = &lut[c];
        for (o, &v) in out[c * n..(c + 1) * n].iter_mut().zip(img.plane(c)) {
            *o = t[v as usize];
        }
    }
    Ok(())
}

/// A uniform draw in `[lo, hi)` as torch's `uniform_` (`lo` when the range is empty, never a panic).
pub fn uniform(rng: &mut SeededRng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        lo + (hi - lo) * rng.random::<f64>()
    } else {
        lo
    }
}

// ----------------------------------------------------------------------------------------
// Pure transforms with explicit parameters.

/// `RandomCrop(size, padding)` with fixed offsets: zero-pad by `padding` on every side, then
/// take the `size`x`size` window whose top-left corner is (`top`, `left`) in the padded image.
pub fn pad_crop(img: &Image<'_>, padding: usize, top: usize, left: usize, size: usize) -> Image<'static> {
    let (ch, h, w) = img.shape();
    let mut out = vec![0u8; ch * size * size];
    for c in 0..ch {
        let src = img.plane(c);
        for y in 0..size {
            let sy = (y + top) as isize - padding as isize;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..size {
                let sx = (x + left) as isize - padding as isize;
                if sx >= 0 && sx < w as isize {
                    out[c * size * size + y * size + x] = src[sy as usize * w + sx as usize];
                }
            }
        }
    }
    Image::owned(ch, size, size, out)
}

/// Crops the `height`x`width` window at (`top`, `left`), which must lie inside the image.
pub fn crop(img: &Image<'_>, top: usize, left: usize, height: usize, width: usize) -> Result<Image<'static>> {
    if top + height > img.height || left + width > img.width || height == 0 || width == 0 {
        return Err(DataError::InvalidConfig {
            what: "crop",
            message: format!(
                "window {height}x{width} at ({top}, {left}) outside a {}x{} image",
                img.height, img.width
            ),
        });
    }
    let mut out = Vec::with_capacity(img.channels * height * width);
    for c in 0..img.channels {
        let p = img.plane(c);
        for y in top..top + height {
            out.extend_from_slice(&p[y * img.width + left..y * img.width + left + width]);
        }
    }
    Ok(Image::owned(img.channels, height, width, out))
}

/// Horizontal flip (PIL `FLIP_LEFT_RIGHT`).
pub fn hflip(img: &Image<'_>) -> Image<'static> {
    let mut out = img.data.to_vec();
    for row in out.chunks_exact_mut(img.width) {
        row.reverse();
    }
    Image::owned(img.channels, img.height, img.width, out)
}

/// Python's `round(v, 15)`: the double nearest the decimal rounded to 15 places.
fn round15(v: f64) -> f64 {
    use std::io::Write;
    // Formatted on the stack: no allocation per sample. |v| <= 1 needs at most 18 bytes.
    let mut buf = [0u8; 48];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    if write!(cur, "{v:.15}").is_err() {
        return v;
    }
    let n = cur.position() as usize;
    std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.parse().ok()).unwrap_or(v)
}

/// The 16.16 fixed-point affine coefficients PIL's `Image.rotate(angle)` (no expand, centre
/// `(w/2, h/2)`) hands to its nearest-neighbour loop: `[a0, a1, a2, a3, a4, a5]` with
/// `xin = (a2 + x*a0 + y*a1) >> 16`, `yin = (a5 + x*a3 + y*a4) >> 16`.
pub fn rotation_fixed_point(angle_deg: f64, height: usize, width: usize) -> [i64; 6] {
    let (w, h) = (width as f64, height as f64);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let a = -(angle_deg.rem_euclid(360.0)).to_radians();
    let (cos, sin) = (round15(a.cos()), round15(a.sin()));
    let m = [cos, sin, 0.0, -sin, cos, 0.0];
    // matrix[2], matrix[5] = transform(-cx, -cy); then += centre (PIL's Image.rotate)
    let m2 = m[0] * -cx + m[1] * -cy + m[2] + cx;
    let m5 = m[3] * -cx + m[4] * -cy + m[5] + cy;
    let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i64;
    [
        fix(m[0]),
        fix(m[1]),
        fix(m2 + m[0] * 0.5 + m[1] * 0.5),
        fix(m[3]),
        fix(m[4]),
        fix(m5 + m[3] * 0.5 + m[4] * 0.5),
    ]
}

/// For each output pixel (row-major), the source pixel index `y*w + x`, or `u32::MAX` for the
/// zero fill, of a rotation by `angle_deg` degrees (counter-clockwise, as PIL/torchvision).
pub fn rotation_map(angle_deg: f64, height: usize, width: usize, map: &mut Vec<u32>) {
    map.clear();
    let a = angle_deg.rem_euclid(360.0);
    if a == 0.0 {
        map.extend(0..(height * width) as u32);
        return;
    }
    let [a0, a1, a2, a3, a4, a5] = rotation_fixed_point(angle_deg, height, width);
    let (wi, hi) = (width as i64, height as i64);
    let (mut r2, mut r5) = (a2, a5);
    for _y in 0..height {
        let (mut xx, mut yy) = (r2, r5);
        for _x in 0..width {
            let (xin, yin) = (xx >> 16, yy >> 16);
            map.push(if xin >= 0 && xin < wi && yin >= 0 && yin < hi { (yin * wi + xin) as u32 } else { u32::MAX });
            xx += a0;
            yy += a3;
        }
        r2 += a1;
        r5 += a4;
    }
}

/// `RandomRotation` with a fixed angle: nearest neighbour, no expansion, zero fill (PIL exact).
pub fn rotate(img: &Image<'_>, angle_deg: f64) -> Image<'static> {
    let mut map = Vec::new();
    rotation_map(angle_deg, img.height, img.width, &mut map);
    let n = img.height * img.width;
    let mut out = vec![0u8; img.data.len()];
    for c in 0..img.channels {
        let p = img.plane(c);
        for (o, &m) in out[c * n..(c + 1) * n].iter_mut().zip(&map) {
            if m != u32::MAX {
                *o = p[m as usize];
            }
        }
    }
    Image::owned(img.channels, img.height, img.width, out)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` for the bilinear filter + `normalize_coeffs_8bpc`:
/// per output pixel (first source index, count, fixed-point weights).
fn bilinear_coeffs(in_size: usize, out_size: usize) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let t = t.abs();
            *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *wx;
        }
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let s = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 { (-0.5 + s) as i32 } else { (0.5 + s) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    (ksize, bounds, kk)
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((width, height), BILINEAR)` (antialiased, fixed point), per plane.
pub fn resize_bilinear(img: &Image<'_>, height: usize, width: usize) -> Image<'static> {
    let (ch, ih, iw) = img.shape();
    if ih == height && iw == width {
        return img.clone().into_owned();
    }
    // Horizontal pass (skipped when the width does not change), u8 intermediate as in PIL.
    let tmp: Vec<u8> = if iw != width {
        let (ksize, bounds, kk) = bilinear_coeffs(iw, width);
        let mut t = vec![0u8; ch * ih * width];
        for c in 0..ch {
            let p = img.plane(c);
            for y in 0..ih {
                let row = &p[y * iw..(y + 1) * iw];
                for (xx, &(xmin, xmax)) in bounds.iter().enumerate() {
                    let k = &kk[xx * ksize..xx * ksize + xmax];
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[xmin + x] as i32 * kx;
                    }
                    t[c * ih * width + y * width + xx] = clip8(ss);
                }
            }
        }
        t
    } else {
        img.data.to_vec()
    };
    if ih == height {
        return Image::owned(ch, height, width, tmp);
    }
    let (ksize, bounds, kk) = bilinear_coeffs(ih, height);
    let mut out = vec![0u8; ch * height * width];
    for c in 0..ch {
        let p = &tmp[c * ih * width..(c + 1) * ih * width];
        for (yy, &(ymin, ymax)) in bounds.iter().enumerate() {
            let k = &kk[yy * ksize..yy * ksize + ymax];
            for xx in 0..width {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss += p[(ymin + y) * width + xx] as i32 * ky;
                }
                out[c * height * width + yy * width + xx] = clip8(ss);
            }
        }
    }
    Image::owned(ch, height, width, out)
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`; returns (height, width).
pub fn resize_shorter_dims(height: usize, width: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// torchvision `CenterCrop(size)` offsets: `int(round((h - size) / 2))` with Python's
/// round-half-to-even; returns (top, left).
pub fn center_crop_offsets(height: usize, width: usize, size: usize) -> (usize, usize) {
    let off = |n: usize| ((n as f64 - size as f64) / 2.0).round_ties_even().max(0.0) as usize;
    (off(height), off(width))
}

/// torchvision `CenterCrop(size)` for an image at least `size` on both sides.
pub fn center_crop(img: &Image<'_>, size: usize) -> Result<Image<'static>> {
    let (top, left) = center_crop_offsets(img.height, img.width, size);
    crop(img, top, left, size, size)
}

/// torchvision `RandomResizedCrop.get_params` with our RNG: returns (top, left, height, width).
pub fn random_resized_crop_params(
    rng: &mut SeededRng,
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let i = rng.random_range(0..=height - h);
            let j = rng.random_range(0..=width - w);
            return (i, j, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0.min(ratio.1) {
        ((width as f64 / ratio.0.min(ratio.1)).round_ties_even() as usize, width)
    } else if in_ratio > ratio.0.max(ratio.1) {
        (height, (height as f64 * ratio.0.max(ratio.1)).round_ties_even() as usize)
    } else {
        (height, width)
    };
    let (h, w) = (h.clamp(1, height.max(1)), w.clamp(1, width.max(1)));
    (height.saturating_sub(h) / 2, width.saturating_sub(w) / 2, h, w)
}

// ----------------------------------------------------------------------------------------
// Composable pipelines.

/// One augmentation step (the torchvision class of the same name).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `RandomCrop(size, padding)`, zero fill: offsets uniform in `0..=2*padding` (top, then left).
    RandomCrop {
        /// Output side.
        size: usize,
        /// Zero padding on every side.
        padding: usize,
    },
    /// `RandomHorizontalFlip(p)`: flips when a uniform draw is below `p`.
    HorizontalFlip {
        /// Flip probability.
        p: f64,
    },
    /// `RandomRotation(degrees)`: angle uniform in `[-degrees, degrees)`, nearest, zero fill.
    RandomRotation {
        /// Maximum absolute angle.
        degrees: f64,
    },
    /// `RandomResizedCrop(size)`: scale range and aspect-ratio range, bilinear.
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Area fraction range (torchvision default (0.08, 1.0)).
        scale: (f64, f64),
        /// Aspect ratio range (torchvision default (3/4, 4/3)).
        ratio: (f64, f64),
    },
    /// `Resize(size)` of the shorter side, bilinear.
    Resize {
        /// Shorter side after resizing.
        size: usize,
    },
    /// `CenterCrop(size)`.
    CenterCrop {
        /// Output side.
        size: usize,
    },
}

impl Op {
    /// Output (height, width) for an input of (height, width).
    pub fn output_dims(&self, h: usize, w: usize) -> (usize, usize) {
        match *self {
            Op::RandomCrop { size, .. } | Op::RandomResizedCrop { size, .. } | Op::CenterCrop { size } => {
                (size, size)
            }
            Op::Resize { size } => resize_shorter_dims(h, w, size),
            Op::HorizontalFlip { .. } | Op::RandomRotation { .. } => (h, w),
        }
    }

    /// Draws this op's parameters and applies it.
    pub fn apply(&self, img: &Image<'_>, rng: &mut SeededRng) -> Result<Image<'static>> {
        Ok(match *self {
            Op::RandomCrop { size, padding } => {
                let (h, w) = (img.height + 2 * padding, img.width + 2 * padding);
                if size > h || size > w {
                    return Err(DataError::InvalidConfig {
                        what: "random crop",
                        message: format!("crop {size} larger than the padded {h}x{w} image"),
                    });
                }
                let top = rng.random_range(0..=h - size);
                let left = rng.random_range(0..=w - size);
                pad_crop(img, padding, top, left, size)
            }
            Op::HorizontalFlip { p } => {
                if rng.random::<f64>() < p {
                    hflip(img)
                } else {
                    img.clone().into_owned()
                }
            }
            Op::RandomRotation { degrees } => rotate(img, uniform(rng, -degrees, degrees)),
            Op::RandomResizedCrop { size, scale, ratio } => {
                let (t, l, h, w) = random_resized_crop_params(rng, img.height, img.width, scale, ratio);
                resize_bilinear(&crop(img, t, l, h, w)?, size, size)
            }
            Op::Resize { size } => {
                let (h, w) = resize_shorter_dims(img.height, img.width, size);
                resize_bilinear(img, h, w)
            }
            Op::CenterCrop { size } => center_crop(img, size)?,
        })
    }
}

/// The parameters of one CIFAR train augmentation, in the order they are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CifarParams {
    /// Crop top offset in the padded image (0..=2*padding).
    pub top: usize,
    /// Crop left offset in the padded image.
    pub left: usize,
    /// Horizontal flip.
    pub flip: bool,
    /// Rotation angle in degrees.
    pub angle: f64,
}

/// The fused CIFAR train augmentation (pad-crop, flip, rotate) for a `ch`x`size`x`size` image
/// with the crop output the same size as the input: one pass, no allocation beyond `map`.
/// `out` receives the augmented planar u8 image.
pub fn cifar_augment_into(
    src: &[u8],
    ch: usize,
    size: usize,
    padding: usize,
    p: &CifarParams,
    map: &mut Vec<u32>,
    out: &mut [u8],
) {
    rotation_map(p.angle, size, size, map);
    let n = size * size;
    let pad = padding as isize;
    for (o, &m) in map.iter().enumerate() {
        let src_idx = if m == u32::MAX {
            None
        } else {
            // (m) indexes the flipped crop; undo the flip, then the crop.
            let (y, x) = ((m as usize) / size, (m as usize) % size);
            let x = if p.flip { size - 1 - x } else { x };
            let sy = (y + p.top) as isize - pad;
            let sx = (x + p.left) as isize - pad;
            if sy >= 0 && sy < size as isize && sx >= 0 && sx < size as isize {
                Some(sy as usize * size + sx as usize)
            } else {
                None
            }
        };
        match src_idx {
            Some(s) => {
                for c in 0..ch {
                    out[c * n + o] = src[c * n + s];
                }
            }
            None => {
                for c in 0..ch {
                    out[c * n + o] = 0;
                }
            }
        }
    }
}

/// A sequence of [`Op`]s followed by a [`Normalization`]: the whole per-sample transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The u8 steps, in order.
    pub ops: Vec<Op>,
    /// The final normalisation to f32.
    pub norm: Normalization,
}

/// Reusable per-thread buffers for [`Pipeline::apply_into`].
///
/// One scratch may serve several pipelines: the normalisation table it caches is keyed by the
/// [`Normalization`] it was built from, and rebuilt when a pipeline with another one uses it.
#[derive(Debug, Default)]
pub struct Scratch {
    map: Vec<u32>,
    buf: Vec<u8>,
    lut: Option<(Normalization, Vec<[f32; 256]>)>,
}

/// The table of `norm` from `cache`, built on first use and whenever `norm` differs from the
/// cached one (a NaN constant never compares equal, so such a table is rebuilt each time: still
/// right).
fn cached_lut<'a>(cache: &'a mut Option<(Normalization, Vec<[f32; 256]>)>, norm: &Normalization) -> &'a [[f32; 256]] {
    if !matches!(cache, Some((cached, _)) if cached == norm) {
        *cache = Some((norm.clone(), norm.lut()));
    }
    cache.as_ref().map(|(_, t)| t.as_slice()).unwrap_or_default()
}

impl Pipeline {
    /// A pipeline from steps and a normalisation.
    pub fn new(ops: Vec<Op>, norm: Normalization) -> Self {
        Pipeline { ops, norm }
    }
    /// §5.1 train: RandomCrop(32, 4) → flip → RandomRotation(15) → normalise with `norm`
    /// ([`Normalization::cifar100`] in the original, for CIFAR-10 too).
    pub fn cifar_train(norm: Normalization) -> Self {
        Self::new(
            vec![
                Op::RandomCrop { size: 32, padding: 4 },
                Op::HorizontalFlip { p: 0.5 },
                Op::RandomRotation { degrees: 15.0 },
            ],
            norm,
        )
    }
    /// §5.1 test (and train with augmentation "no"): normalise only.
    pub fn eval(norm: Normalization) -> Self {
        Self::new(Vec::new(), norm)
    }
    /// §5.2 Tiny-ImageNet train: RandomRotation(20) → flip → normalise.
    pub fn tiny_imagenet_train() -> Self {
        Self::new(
            vec![Op::RandomRotation { degrees: 20.0 }, Op::HorizontalFlip { p: 0.5 }],
            Normalization::tiny_imagenet(),
        )
    }
    /// §5.2 Tiny-ImageNet val: normalise only.
    pub fn tiny_imagenet_eval() -> Self {
        Self::eval(Normalization::tiny_imagenet())
    }
    /// §5.3 ImageNet train: RandomResizedCrop(224) → flip → normalise.
    pub fn imagenet_train() -> Self {
        Self::new(
            vec![
                Op::RandomResizedCrop { size: 224, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) },
                Op::HorizontalFlip { p: 0.5 },
            ],
            Normalization::imagenet(),
        )
    }
    /// §5.3 ImageNet val: Resize(256) → CenterCrop(224) → normalise.
    pub fn imagenet_eval() -> Self {
        Self::new(vec![Op::Resize { size: 256 }, Op::CenterCrop { size: 224 }], Normalization::imagenet())
    }

    /// The output shape (C, H, W) for an input shape.
    pub fn output_shape(&self, input: (usize, usize, usize)) -> (usize, usize, usize) {
        let (c, mut h, mut w) = input;
        for op in &self.ops {
            (h, w) = op.output_dims(h, w);
        }
        (c, h, w)
    }

    /// The CIFAR fast path applies when the ops are exactly crop(size = input, padding) →
    /// flip → rotation on a square image.
    fn cifar_fast(&self, img: &Image<'_>) -> Option<(usize, f64, f64)> {
        match self.ops.as_slice() {
            [Op::RandomCrop { size, padding }, Op::HorizontalFlip { p }, Op::RandomRotation { degrees }]
                if *size == img.height && *size == img.width =>
            {
                Some((*padding, *p, *degrees))
            }
            _ => None,
        }
    }

    /// Draws the CIFAR parameters in torchvision's order: crop top, crop left, flip, angle.
    pub fn draw_cifar_params(rng: &mut SeededRng, padding: usize, p_flip: f64, degrees: f64) -> CifarParams {
        let top = rng.random_range(0..=2 * padding);
        let left = rng.random_range(0..=2 * padding);
        let flip = rng.random::<f64>() < p_flip;
        let angle = uniform(rng, -degrees, degrees);
        CifarParams { top, left, flip, angle }
    }

    /// Applies the u8 steps only.
    pub fn augment(&self, img: &Image<'_>, rng: &mut SeededRng) -> Result<Image<'static>> {
        let mut cur = img.clone().into_owned();
        for op in &self.ops {
            cur = op.apply(&cur, rng)?;
        }
        Ok(cur)
    }

    /// Applies the whole pipeline to `img`, writing the normalised f32 (C, H, W) into `out`.
    /// The result must have shape `expected` (the batch shape); `index` names the sample in errors.
    pub fn apply_into(
        &self,
        img: &Image<'_>,
        rng: &mut SeededRng,
        scratch: &mut Scratch,
        out: &mut [f32],
        expected: (usize, usize, usize),
        index: usize,
    ) -> Result<()> {
        let Scratch { map, buf, lut } = scratch;
        let lut = cached_lut(lut, &self.norm);
        if let Some((padding, p, degrees)) = self.cifar_fast(img) {
            let params = Self::draw_cifar_params(rng, padding, p, degrees);
            buf.resize(img.data.len(), 0);
            cifar_augment_into(&img.data, img.channels, img.height, padding, &params, map, buf);
            let aug = Image::borrowed(img.channels, img.height, img.width, buf);
            check_shape(aug.shape(), expected, index)?;
            return normalize_with(lut, &aug, out);
        }
        if self.ops.is_empty() {
            check_shape(img.shape(), expected, index)?;
            return normalize_with(lut, img, out);
        }
        let aug = self.augment(img, rng)?;
        check_shape(aug.shape(), expected, index)?;
        normalize_with(lut, &aug, out)
    }
}

fn check_shape(found: (usize, usize, usize), expected: (usize, usize, usize), index: usize) -> Result<()> {
    if found != expected {
        return Err(DataError::ShapeMismatch { index, found, expected });
    }
    Ok(())
}
