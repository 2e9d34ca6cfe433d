//! Sliding windows as shifted views, differentiable on every candle device.
//!
//! A `k_h × k_w` window with stride `s` and padding `p` over `x: (N, C, H, W)`
//! is the set of its `k_h·k_w` taps: tap `(a, b)` is the `(N, C, H_o, W_o)`
//! tensor `x̃[n, c, s·i + a, s·j + b]`, where `x̃` is `x` padded by `p` with a
//! fill value (0 for convolutions, `-inf` for max-pooling). Reducing over the
//! taps gives the windowed op: max-pooling is their elementwise maximum, a
//! depthwise convolution is `Σ_{a,b} w[c, a, b] · tap(a, b)`.
//!
//! The taps are built from ops candle differentiates everywhere (`cat`,
//! `reshape`, `narrow`): `x̃` is padded to a multiple of `s` and viewed as
//! `(N, C, H̃/s, s, W̃/s, s)`, so tap `(a, b)` is phase `(a mod s, b mod s)`
//! shifted by `(⌊a/s⌋, ⌊b/s⌋)`; one strided copy makes it contiguous. On a
//! GPU this is a handful of kernels per tap, where candle's grouped
//! convolution launches one convolution per channel.

use candle_core::{Result, Tensor};

/// Pads the last two dimensions of `xs: (N, C, H, W)` with `value`.
fn pad_hw(xs: &Tensor, top: usize, bottom: usize, left: usize, right: usize, value: f64) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let fill = |shape: (usize, usize, usize, usize)| Tensor::full(value, shape, xs.device())?.to_dtype(xs.dtype());
    let mut xs = xs.clone();
    if left + right > 0 {
        let mut parts = Vec::with_capacity(3);
        if left > 0 {
            parts.push(fill((n, c, h, left))?);
        }
        parts.push(xs.clone());
        if right > 0 {
            parts.push(fill((n, c, h, right))?);
        }
        xs = Tensor::cat(&parts, 3)?;
    }
    let w2 = w + left + right;
    if top + bottom > 0 {
        let mut parts = Vec::with_capacity(3);
        if top > 0 {
            parts.push(fill((n, c, top, w2))?);
        }
        parts.push(xs.clone());
        if bottom > 0 {
            parts.push(fill((n, c, bottom, w2))?);
        }
        xs = Tensor::cat(&parts, 2)?;
    }
    Ok(xs)
}

/// The output side of a window, PyTorch's floor mode: `⌊(size + 2p − k)/s⌋ + 1`.
fn window_out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        candle_core::bail!("window kernel {kernel} and stride {stride} must be positive")
    }
    if size + 2 * padding < kernel {
        candle_core::bail!("window kernel {kernel} larger than padded input side {}", size + 2 * padding)
    }
    Ok((size + 2 * padding - kernel) / stride + 1)
}

/// The `k_h·k_w` taps of a sliding window over `x: (N, C, H, W)`, in
/// row-major order (tap `(a, b)` at index `a·k_w + b`), each a contiguous
/// `(N, C, H_o, W_o)` tensor with `H_o = ⌊(H + 2p − k_h)/s⌋ + 1`; padding
/// reads `fill`. Differentiable with respect to `x`.
pub fn window_taps(
    x: &Tensor,
    (k_h, k_w): (usize, usize),
    stride: usize,
    padding: usize,
    fill: f64,
) -> crate::Result<Vec<Tensor>> {
    Ok(window_taps_candle(x, (k_h, k_w), stride, padding, fill)?)
}

/// [`window_taps`] with candle's error, for use inside candle's traits.
pub(crate) fn window_taps_candle(
    x: &Tensor,
    (k_h, k_w): (usize, usize),
    stride: usize,
    padding: usize,
    fill: f64,
) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let s = stride;
    let h_o = window_out_size(h, k_h, s, padding)?;
    let w_o = window_out_size(w, k_w, s, padding)?;
    // Rows of the phase view: enough for every tap's shift plus H_o rows.
    let h_q = (h + 2 * padding).div_ceil(s).max((k_h - 1) / s + h_o);
    let w_q = (w + 2 * padding).div_ceil(s).max((k_w - 1) / s + w_o);
    let bottom = h_q * s - h - padding;
    let right = w_q * s - w - padding;
    let phases = pad_hw(x, padding, bottom, padding, right, fill)?.reshape((n, c, h_q, s, w_q, s))?;
    let mut taps = Vec::with_capacity(k_h * k_w);
    for a in 0..k_h {
        let row = phases.narrow(3, a % s, 1)?.narrow(2, a / s, h_o)?;
        for b in 0..k_w {
            let tap = row.narrow(5, b % s, 1)?.narrow(4, b / s, w_o)?;
            taps.push(tap.reshape((n, c, h_o, w_o))?);
        }
    }
    Ok(taps)
}

/// Depthwise convolution (`groups = C`, one filter per channel) composed from
/// [`window_taps`]: `y[n, c] = Σ_{a,b} w[c, 0, a, b] · tap(a, b)[n, c]`.
/// `w: (C, 1, k_h, k_w)`. Used off the CPU, where candle would run one
/// convolution per channel; numerically the same as
/// `x.conv2d(w, padding, stride, 1, C)` up to the order of the sums.
pub fn depthwise_conv2d_taps(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> crate::Result<Tensor> {
    Ok(depthwise_conv2d_taps_candle(x, w, padding, stride)?)
}

/// [`depthwise_conv2d_taps`] with candle's error, for use inside candle's traits.
pub(crate) fn depthwise_conv2d_taps_candle(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (c_out, one, k_h, k_w) = w.dims4()?;
    if c_out != c || one != 1 {
        candle_core::bail!("depthwise_conv2d_taps: kernel ({c_out}, {one}, {k_h}, {k_w}) does not fit {c} channels")
    }
    let taps = window_taps(x, (k_h, k_w), stride, padding, 0.0)?;
    let w = w.reshape((c, k_h * k_w))?;
    let mut acc: Option<Tensor> = None;
    for (t, tap) in taps.iter().enumerate() {
        let term = tap.broadcast_mul(&w.narrow(1, t, 1)?.reshape((1, c, 1, 1))?)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("depthwise_conv2d_taps: empty kernel".into()))
}
