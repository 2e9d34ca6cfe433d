//! 2-D max pooling with any kernel, stride and padding, differentiable on
//! every device, as one op each way on the CPU.
//!
//! candle's own `max_pool2d_with_stride` has a backward pass only when the
//! kernel equals the stride and there is no padding (candle#1593, #1851), and
//! in candle-core 0.11.1 that backward scales the gradient of a unique
//! maximum by 1/k². [`max_pool2d`] never uses it:
//!
//! * on the CPU (f32, f64) the forward takes each window's maximum and the
//!   backward sends each output's gradient to the input its window's maximum
//!   came from (found again by the same scan), as PyTorch does, ties going
//!   to the first maximum in row-major order;
//! * elsewhere it is composed from ops candle can differentiate: the input
//!   padded with `-inf`, the `k × k` shifted, strided views
//!   ([`crate::conv::window_taps`]) and [`Tensor::maximum`]. Where several
//!   window elements tie, candle's `maximum` splits the gradient between
//!   them; ties between distinct inputs only occur on exactly equal values
//!   (for example ReLU zeros, whose own gradient is zero).
//!
//! As a composition on the CPU, the eight `maximum`s of a 3×3 window and
//! their backward (comparisons, masks, products) were about a tenth of a
//! narrowed GoogLeNet training step.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use crate::conv::window_taps;
use std::mem::MaybeUninit;

use crate::cpu::{avx2_dispatch, filled, for_each_chunk, slice, supported, Float};

/// 2-D max pooling, like `torch.nn.MaxPool2d(kernel, stride, padding)`
/// (floor mode, dilation 1, padding never chosen).
///
/// `y[n, c, i, j] = max_{a, b < k} x̃[n, c, s·i + a, s·j + b]`, where `x̃` is
/// `x` padded with `-inf` by `p` on every side; `∂L/∂x` receives each
/// `∂L/∂y[n, c, i, j]` at the position of that window's first maximum (NaN
/// counts as the maximum, as in PyTorch).
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C, (H + 2p − k)/s + 1, (W + 2p − k)/s + 1]`
///
/// # Errors
/// A zero kernel or stride, padding above half the kernel (PyTorch's rule),
/// or an input smaller than the kernel.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> crate::Result<Tensor> {
    Ok(max_pool2d_candle(x, kernel, stride, padding)?)
}

/// [`max_pool2d`] with candle's error, for use inside candle's traits.
pub(crate) fn max_pool2d_candle(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 {
        candle_core::bail!("max_pool2d kernel {kernel} and stride {stride} must be positive")
    }
    if padding * 2 > kernel {
        candle_core::bail!("max_pool2d padding {padding} must be at most half the kernel {kernel}")
    }
    let (_, _, h, w) = x.dims4()?;
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!("max_pool2d: input {h}x{w} with padding {padding} is smaller than kernel {kernel}")
    }
    if !matches!(x.device(), Device::Cpu) || !supported(x.dtype()) {
        let taps = window_taps(x, (kernel, kernel), stride, padding, f64::NEG_INFINITY)?;
        let mut taps = taps.into_iter();
        let first = taps.next().ok_or_else(|| candle_core::Error::Msg("max_pool2d kernel must be positive".into()))?;
        return taps.try_fold(first, |acc, tap| acc.maximum(&tap));
    }
    x.contiguous()?.apply_op1(MaxPool { k: kernel, s: stride, p: padding })
}

/// The window geometry; the CPU op of the forward.
#[derive(Clone, Copy)]
struct MaxPool {
    k: usize,
    s: usize,
    p: usize,
}

impl MaxPool {
    fn out_size(&self, side: usize) -> usize {
        (side + 2 * self.p - self.k) / self.s + 1
    }

    /// The index in `plane` (`h × w`, row-major) of the first maximum of
    /// output `(i, j)`'s window. Every window holds at least one input, as
    /// `p ≤ k / 2`.
    #[inline]
    fn argmax<E: Float>(&self, plane: &[E], (h, w): (usize, usize), i: usize, j: usize) -> usize {
        let (k, s, p) = (self.k, self.s, self.p);
        let (r0, c0) = ((s * i) as isize - p as isize, (s * j) as isize - p as isize);
        let (r_lo, r_hi) = (r0.max(0) as usize, ((r0 + k as isize).min(h as isize)) as usize);
        let (c_lo, c_hi) = (c0.max(0) as usize, ((c0 + k as isize).min(w as isize)) as usize);
        let first = r_lo * w + c_lo;
        let mut best = (plane[first], first);
        for r in r_lo..r_hi {
            for (c, &v) in plane[r * w + c_lo..r * w + c_hi].iter().enumerate() {
                best = visit(best, v, r * w + c_lo + c);
            }
        }
        best.1
    }

    /// Windows that tile the input without overlap or padding (`k = s`,
    /// `p = 0`: the plain CNN's 2×2 pools): each input belongs to at most
    /// one window, so the backward writes every input once instead of
    /// zero-filling and scattering.
    fn tiles(&self) -> bool {
        self.k == self.s && self.p == 0
    }

    fn forward<E: Float>(&self, x: &[E], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<E> {
        let (h_o, w_o) = (self.out_size(h), self.out_size(w));
        let tiles = self.tiles();
        filled(n * c * h_o * w_o, |y| {
            for_each_chunk(y, h_o * w_o, h_o * w_o * self.k * self.k, |_: &mut (), plane, ys| {
                let xs = &x[plane * h * w..][..h * w];
                if tiles && self.k == 2 {
                    for (i, ys) in ys.chunks_exact_mut(w_o).enumerate() {
                        pool2_rows(&xs[2 * i * w..][..w], &xs[(2 * i + 1) * w..][..w], ys);
                    }
                    return;
                }
                for (o, y) in ys.iter_mut().enumerate() {
                    let (i, j) = (o / w_o, o % w_o);
                    let at = if tiles { tile_argmax(xs, w, self.k, i, j) } else { self.argmax(xs, (h, w), i, j) };
                    y.write(xs[at]);
                }
            })
        })
    }

    fn backward<E: Float>(&self, g: &[E], x: &[E], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<E> {
        let (h_o, w_o) = (self.out_size(h), self.out_size(w));
        let zero = E::from_f64(0.0);
        if !self.tiles() {
            let mut dx = vec![zero; n * c * h * w];
            for_each_chunk(&mut dx, h * w, h_o * w_o * self.k * self.k, |_: &mut (), plane, ds| {
                let xs = &x[plane * h * w..][..h * w];
                let gs = &g[plane * h_o * w_o..][..h_o * w_o];
                for (o, &gv) in gs.iter().enumerate() {
                    ds[self.argmax(xs, (h, w), o / w_o, o % w_o)] += gv;
                }
            });
            return dx;
        }
        let k = self.k;
        filled(n * c * h * w, |dx| {
            for_each_chunk(dx, h * w, h * w, |_: &mut (), plane, ds| {
                let xs = &x[plane * h * w..][..h * w];
                let gs = &g[plane * h_o * w_o..][..h_o * w_o];
                // Rows and columns past the last whole window (floor mode)
                // get no gradient.
                for row in ds.chunks_exact_mut(w).skip(h_o * k) {
                    row.iter_mut().for_each(|d| _ = d.write(zero));
                }
                if k == 2 {
                    let (rows, _) = ds.split_at_mut(2 * h_o * w);
                    for (i, pair) in rows.chunks_exact_mut(2 * w).enumerate() {
                        let (d0, d1) = pair.split_at_mut(w);
                        let (x0, x1) = (&xs[2 * i * w..][..w], &xs[(2 * i + 1) * w..][..w]);
                        pool2_grad_rows(x0, x1, &gs[i * w_o..][..w_o], d0, d1);
                    }
                    return;
                }
                for (r, row) in ds.chunks_exact_mut(w).take(h_o * k).enumerate() {
                    row[w_o * k..].iter_mut().for_each(|d| _ = d.write(zero));
                    let i = r / k;
                    for j in 0..w_o {
                        let at = tile_argmax(xs, w, k, i, j);
                        for (b, d) in row[j * k..][..k].iter_mut().enumerate() {
                            d.write(if r * w + j * k + b == at { gs[i * w_o + j] } else { zero });
                        }
                    }
                }
            })
        })
    }
}

/// The running (maximum, position) of a window after visiting `v` at
/// `at`: `v` wins if it is greater or NaN (NaN wins, as in PyTorch; the
/// first of equal maxima stays). Selects, not branches: on real data the
/// comparisons are unpredictable.
#[inline(always)]
fn visit<E: Float, I: Copy>((max, best): (E, I), v: E, at: I) -> (E, I) {
    // `v != v`: NaN.
    #[allow(clippy::eq_op)]
    let take = (v > max) | (v != v);
    (if take { v } else { max }, if take { at } else { best })
}

/// [`MaxPool::argmax`] for a `k × k` window at `(k·i, k·j)` that lies
/// inside the plane (row length `w`): the first maximum in row-major order,
/// NaN winning.
#[inline(always)]
fn tile_argmax<E: Float>(plane: &[E], w: usize, k: usize, i: usize, j: usize) -> usize {
    let first = k * i * w + k * j;
    let mut best = (plane[first], first);
    for a in 0..k {
        for (b, &v) in plane[first + a * w..][..k].iter().enumerate() {
            best = visit(best, v, first + a * w + b);
        }
    }
    best.1
}

/// The maximum of each 2×2 window of rows `x0`, `x1`, in the order of
/// [`visit`]: `0, 1` of `x0`, then `0, 1` of `x1`; the position is held in
/// the element type, so that the selects stay in one lane width and the
/// loops over windows vectorise.
#[inline(always)]
fn window2<E: Float>(x0: &[E], x1: &[E], j: usize) -> (E, E) {
    let [p0, p1, p2, p3] = [0.0, 1.0, 2.0, 3.0].map(E::from_f64);
    let best = visit((x0[2 * j], p0), x0[2 * j + 1], p1);
    let best = visit(best, x1[2 * j], p2);
    visit(best, x1[2 * j + 1], p3)
}

/// One output row of a 2×2, stride-2 pool from input rows `x0`, `x1`.
#[inline(always)]
fn pool2_rows_impl<E: Float>(x0: &[E], x1: &[E], y: &mut [MaybeUninit<E>]) {
    for (j, y) in y.iter_mut().enumerate() {
        y.write(window2(x0, x1, j).0);
    }
}

avx2_dispatch!(pool2_rows, pool2_rows_avx2, pool2_rows_impl, (x0: &[E], x1: &[E], y: &mut [MaybeUninit<E>]));

/// The gradient of input rows `x0`, `x1` (`d0`, `d1`, every element
/// written) from one output row's gradient `g` of a 2×2, stride-2 pool.
#[inline(always)]
fn pool2_grad_rows_impl<E: Float>(x0: &[E], x1: &[E], g: &[E], d0: &mut [MaybeUninit<E>], d1: &mut [MaybeUninit<E>]) {
    let zero = E::from_f64(0.0);
    let [p0, p1, p2, p3] = [0.0, 1.0, 2.0, 3.0].map(E::from_f64);
    let n = g.len();
    let (x0, x1) = (&x0[..2 * n], &x1[..2 * n]);
    let (e0, e1) = (&mut d0[..2 * n], &mut d1[..2 * n]);
    for (j, &gv) in g.iter().enumerate() {
        let at = window2(x0, x1, j).1;
        e0[2 * j].write(if at == p0 { gv } else { zero });
        e0[2 * j + 1].write(if at == p1 { gv } else { zero });
        e1[2 * j].write(if at == p2 { gv } else { zero });
        e1[2 * j + 1].write(if at == p3 { gv } else { zero });
    }
    // An odd last column lies in no window.
    for d in d0[2 * g.len()..].iter_mut().chain(d1[2 * g.len()..].iter_mut()) {
        d.write(zero);
    }
}

avx2_dispatch!(
    pool2_grad_rows,
    pool2_grad_rows_avx2,
    pool2_grad_rows_impl,
    (x0: &[E], x1: &[E], g: &[E], d0: &mut [MaybeUninit<E>], d1: &mut [MaybeUninit<E>])
);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "tfkd-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (n, c, h, w) = dims;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice::<f32>(s, l, "the input")?, dims)),
            DType::F64 => CpuStorage::F64(self.forward(slice::<f64>(s, l, "the input")?, dims)),
            other => candle_core::bail!("tfkd-max-pool2d: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from((n, c, self.out_size(h), self.out_size(w)))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(x, &MaxPoolGrad(*self))?))
    }
}

/// `(∂L/∂y, x) → ∂L/∂x`.
struct MaxPoolGrad(MaxPool);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "tfkd-max-pool2d-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = xl.shape().dims4()?;
        let (n, c, h, w) = dims;
        let want = (n, c, self.0.out_size(h), self.0.out_size(w));
        if gl.shape().dims4()? != want {
            candle_core::bail!("tfkd-max-pool2d: gradient {:?} for an output {want:?}", gl.shape())
        }
        let out = match gs.dtype() {
            DType::F32 => CpuStorage::F32(self.0.backward(slice::<f32>(gs, gl, "the gradient")?, slice::<f32>(xs, xl, "the input")?, dims)),
            DType::F64 => CpuStorage::F64(self.0.backward(slice::<f64>(gs, gl, "the gradient")?, slice::<f64>(xs, xl, "the input")?, dims)),
            other => candle_core::bail!("tfkd-max-pool2d: unsupported dtype {other:?}"),
        };
        Ok((out, xl.shape().clone()))
    }
}
