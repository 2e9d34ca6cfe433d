//! Differentiable, device-generic pooling and shuffling ops that candle lacks.
//!
//! [`max_pool2d`] is `tfkd_core::pool::max_pool2d`: candle's own
//! `max_pool2d_with_stride` has a backward pass only when the kernel equals
//! the stride and there is no padding, and in candle-core 0.11.1 that
//! backward is wrong (it multiplies the gradient of a unique maximum by
//! 1/k²; found by `tests/parity.rs::cnn`), so the zoo never uses it.

use candle_core::{Result, Tensor, D};
pub use tfkd_core::activation::relu6;
pub use tfkd_core::pool::max_pool2d;

/// 2-D average pooling with kernel = stride (`torch.nn.AvgPool2d(k)`), differentiable.
///
/// # Shapes
/// `xs`: `[N, C, H, W]` → `[N, C, H/k, W/k]`
///
/// Sides that are not multiples of `kernel` are cropped first (floor mode, as
/// PyTorch): candle's backward up-samples the gradient to the full input size
/// and would misplace it otherwise.
pub fn avg_pool2d(xs: &Tensor, kernel: usize) -> Result<Tensor> {
    if kernel == 0 {
        candle_core::bail!("avg_pool2d kernel must be positive")
    }
    let (_, _, h, w) = xs.dims4()?;
    let (hc, wc) = (h / kernel * kernel, w / kernel * kernel);
    if hc == 0 || wc == 0 {
        candle_core::bail!("avg_pool2d kernel {kernel} larger than input {h}x{w}")
    }
    if (hc, wc) == (h, w) {
        xs.avg_pool2d(kernel)
    } else {
        xs.narrow(2, 0, hc)?.narrow(3, 0, wc)?.avg_pool2d(kernel)
    }
}

/// Global average pooling (`adaptive_avg_pool2d(x, 1)` then flatten).
///
/// # Shapes
/// `xs`: `[N, C, H, W]` → `[N, C]`
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    xs.mean(D::Minus1)?.mean(D::Minus1)
}

/// Adaptive average pooling (`nn.AdaptiveAvgPool2d((oh, ow))`): output cell
/// `(i, j)` averages rows `⌊i·H/oh⌋ .. ⌈(i+1)·H/oh⌉` and the matching columns,
/// as PyTorch (bins may overlap; a 1×1 input is replicated). Differentiable.
///
/// # Shapes
/// `xs`: `[N, C, H, W]` → `[N, C, oh, ow]`
pub fn adaptive_avg_pool2d(xs: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        candle_core::bail!("adaptive_avg_pool2d: empty input {h}x{w} or output {oh}x{ow}")
    }
    if h % oh == 0 && w % ow == 0 {
        return avg_pool_rect(xs, h / oh, w / ow);
    }
    if oh % h == 0 && ow % w == 0 {
        // Every bin is one input pixel (VGG's 7×7 pool of a 1×1 map at
        // CIFAR sizes): a nearest upsampling, one broadcast copy, where the
        // bins below are about a hundred small nodes kept to the end.
        return xs
            .reshape((n, c, h, 1, w, 1))?
            .broadcast_as((n, c, h, oh / h, w, ow / w))?
            .contiguous()?
            .reshape((n, c, oh, ow));
    }
    let bin = |i: usize, n: usize, o: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
    let mut rows = Vec::with_capacity(oh);
    for i in 0..oh {
        let (r0, r1) = bin(i, h, oh);
        let band = xs.narrow(2, r0, r1 - r0)?.mean_keepdim(2)?;
        let mut cells = Vec::with_capacity(ow);
        for j in 0..ow {
            let (c0, c1) = bin(j, w, ow);
            cells.push(band.narrow(3, c0, c1 - c0)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// Non-overlapping average pooling with a `kh × kw` window (divisible sides).
fn avg_pool_rect(xs: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    xs.reshape((n, c, h / kh, kh, w / kw, kw))?.mean(5)?.mean(3)
}

/// ShuffleNet channel shuffle: `[N, g·c, H, W]` viewed as `[N, g, c, H, W]`,
/// transposed to `[N, c, g, H, W]`, flattened back.
///
/// # Shapes
/// `xs`: `[N, C, H, W]` → `[N, C, H, W]`, `C` divisible by `groups`
pub fn channel_shuffle(xs: &Tensor, groups: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("channel_shuffle: {c} channels not divisible by {groups} groups")
    }
    xs.reshape((n, groups, c / groups, h, w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, c, h, w))
}
