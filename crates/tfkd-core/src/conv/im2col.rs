//! The im2col matrix of the fast convolution backward off the CPU (CUDA,
//! Metal, and CPU dtypes other than f32/f64), as a candle view chain: pad,
//! `unfold` twice, `permute`, `contiguous`. On the CPU with f32/f64 the
//! convolution builds one image's im2col matrix at a time instead
//! (`conv/gemm_cpu.rs`).

use candle_core::{Result, Tensor};

/// `(N·H_o·W_o, C·k_h·k_w)`: row `(n, i, j)`, column `(c, a, b)` holds
/// `x̃[n, c, s·i + a, s·j + b]`, `x̃` being `x: (N, C, H, W)` zero-padded by
/// `p` (the first `H_o × W_o` windows; the caller picks `H_o`, `W_o` with
/// `s·(H_o − 1) + k_h ≤ H + 2p`, same for W).
pub(crate) fn im2col_rows(x: &Tensor, k_h: usize, k_w: usize, s: usize, p: usize, h_o: usize, w_o: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if s == 0 || s * (h_o.max(1) - 1) + k_h > h + 2 * p || s * (w_o.max(1) - 1) + k_w > w + 2 * p {
        candle_core::bail!("im2col: {h_o}x{w_o} windows of {k_h}x{k_w} (stride {s}) do not fit {h}x{w} padded by {p}")
    }
    let xp = if p > 0 {
        x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?
    } else {
        x.clone()
    };
    // (N, C, H_o, W_o, k_h, k_w) view, then (N·H_o·W_o, C·k_h·k_w).
    xp.unfold(2, k_h, s)?
        .narrow(2, 0, h_o)?
        .unfold(3, k_w, s)?
        .narrow(3, 0, w_o)?
        .permute((0, 2, 3, 1, 4, 5))?
        .contiguous()?
        .reshape((n * h_o * w_o, c * k_h * k_w))
}
