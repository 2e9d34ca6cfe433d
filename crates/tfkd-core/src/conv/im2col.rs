//! The im2col matrix of the fast convolution backward, with a direct CPU
//! kernel.
//!
//! As a candle view chain (pad, `unfold` twice, `permute`, `contiguous`) the
//! matrix is copied by candle's generic strided copy in runs of `k_w`
//! elements (a `memcpy` call per 1–3 values) after one more full copy per
//! padding; in a ResNet18 CPU training step that was a fifth of the time.
//! On the CPU [`im2col_rows`] writes the transposed matrix,
//! `(C·k_h·k_w, N·H_o·W_o)`, where for stride 1 each `(c, a, b, n, i)` is
//! one contiguous copy of `W_o` values (the padding as zeros at its ends),
//! rows split over rayon's pool, and returns its transposed view (the
//! matrix products take strided operands). Other devices and dtypes keep
//! the view chain.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use crate::cpu::{for_each_chunk, slice, supported, Float};

/// `(N·H_o·W_o, C·k_h·k_w)`: row `(n, i, j)`, column `(c, a, b)` holds
/// `x̃[n, c, s·i + a, s·j + b]`, `x̃` being `x: (N, C, H, W)` zero-padded by
/// `p` (the first `H_o × W_o` windows; the caller picks `H_o`, `W_o` with
/// `s·(H_o − 1) + k_h ≤ H + 2p`, same for W). On the CPU a transposed view
/// of a contiguous `(C·k_h·k_w, N·H_o·W_o)` matrix.
pub(crate) fn im2col_rows(x: &Tensor, k_h: usize, k_w: usize, s: usize, p: usize, h_o: usize, w_o: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if s == 0 || s * (h_o.max(1) - 1) + k_h > h + 2 * p || s * (w_o.max(1) - 1) + k_w > w + 2 * p {
        candle_core::bail!("im2col: {h_o}x{w_o} windows of {k_h}x{k_w} (stride {s}) do not fit {h}x{w} padded by {p}")
    }
    if matches!(x.device(), Device::Cpu) && supported(x.dtype()) {
        return x.contiguous()?.apply_op1_no_bwd(&Im2Col { k_h, k_w, s, p, h_o, w_o })?.t();
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

struct Im2Col {
    k_h: usize,
    k_w: usize,
    s: usize,
    p: usize,
    h_o: usize,
    w_o: usize,
}

impl Im2Col {
    /// Row `(c, a, b)` of the transposed matrix: `x̃[n, c, s·i + a, s·j + b]`
    /// for every `(n, i, j)`.
    fn row<E: Float>(&self, x: &[E], (n, c, h, w): (usize, usize, usize, usize), t: usize, out: &mut [E]) {
        let (k_h, k_w, s, p, h_o, w_o) = (self.k_h, self.k_w, self.s, self.p, self.h_o, self.w_o);
        let zero = E::from_f64(0.0);
        let (ci, a, b) = (t / (k_h * k_w), t / k_w % k_h, t % k_w);
        // Output columns j whose input column s·j + b − p lies in [0, w).
        let j_lo = p.saturating_sub(b).div_ceil(s).min(w_o);
        let j_hi = if w + p > b { ((w + p - b - 1) / s + 1).min(w_o) } else { 0 }.max(j_lo);
        for ni in 0..n {
            let plane = &x[(ni * c + ci) * h * w..][..h * w];
            for i in 0..h_o {
                let dst = &mut out[(ni * h_o + i) * w_o..][..w_o];
                let r = (s * i + a) as isize - p as isize;
                if r < 0 || r as usize >= h {
                    dst.fill(zero);
                    continue;
                }
                let src = &plane[r as usize * w..][..w];
                dst[..j_lo].fill(zero);
                dst[j_hi..].fill(zero);
                if j_hi == j_lo {
                    continue;
                }
                let first = s * j_lo + b - p;
                if s == 1 {
                    dst[j_lo..j_hi].copy_from_slice(&src[first..][..j_hi - j_lo]);
                } else {
                    for (d, v) in dst[j_lo..j_hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    fn run<E: Float>(&self, x: &[E], dims: (usize, usize, usize, usize)) -> Vec<E> {
        let (n, c, _, _) = dims;
        let len = n * self.h_o * self.w_o;
        let mut out = vec![E::from_f64(0.0); c * self.k_h * self.k_w * len];
        for_each_chunk(&mut out, len, len, |_: &mut (), t, o| self.row(x, dims, t, o));
        out
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "tfkd-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (n, c, _, _) = dims;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.run(slice::<f32>(s, l, "the input")?, dims)),
            DType::F64 => CpuStorage::F64(self.run(slice::<f64>(s, l, "the input")?, dims)),
            other => candle_core::bail!("tfkd-im2col: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from((c * self.k_h * self.k_w, n * self.h_o * self.w_o))))
    }
}
