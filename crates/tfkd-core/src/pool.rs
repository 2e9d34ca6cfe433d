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
//! * on CUDA (f32, `--features cuda`) the same, one kernel each way
//!   (`cuda/kernels.cu`; the backward gathers, per input, the gradients of
//!   the windows whose maximum it is: no atomics);
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
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::conv::window_taps;
use std::mem::MaybeUninit;

use crate::cpu::{avx2_dispatch, filled, for_each_chunk, slice, Float};

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
    if !crate::own_kernels(x) {
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

    /// The CUDA kernels' description of this pooling of `planes` `h × w`
    /// planes.
    #[cfg(feature = "cuda")]
    fn cuda_shape(&self, planes: usize, h: usize, w: usize) -> crate::cuda::PoolShape {
        crate::cuda::PoolShape {
            planes,
            h,
            w,
            ho: self.out_size(h),
            wo: self.out_size(w),
            k: self.k,
            s: self.s,
            p: self.p,
        }
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

    /// The columns `j` of an output row whose window column `b` falls
    /// inside the input (`0 ≤ s·j + b − p < w`).
    #[inline(always)]
    fn valid_cols(&self, b: usize, w: usize, w_o: usize) -> std::ops::Range<usize> {
        let (lo, hi) = crate::conv::inside_range(w, w_o, self.s, self.p, b);
        lo..hi
    }

    /// The input rows `r = s·i + a − p` of output row `i`'s window, as
    /// `(a, r)`.
    #[inline(always)]
    fn window_rows(&self, i: usize, h: usize) -> impl Iterator<Item = (usize, usize)> {
        let (top, p) = (self.s * i, self.p);
        (0..self.k).filter_map(move |a| (top + a).checked_sub(p).filter(|&r| r < h).map(|r| (a, r)))
    }

    /// One plane's window maxima (any geometry) as two separable passes:
    /// the maximum over each window's columns for every input row (into
    /// `rows`, `h × w_o`), then over each window's rows. Both passes visit
    /// whole rows with selects, so they vectorise; NaN wins, as in
    /// [`visit`] (the maximum of a set does not depend on the order).
    fn plane_max<E: Float>(&self, xs: &[E], (h, w): (usize, usize), rows: &mut Vec<E>, ys: &mut [MaybeUninit<E>]) {
        let (s, p) = (self.s, self.p);
        let w_o = self.out_size(w);
        let neg = E::from_f64(f64::NEG_INFINITY);
        rows.clear();
        // `h` rows of column maxima, then one row of window maxima.
        rows.resize((h + 1) * w_o, neg);
        let (rows, best) = rows.split_at_mut(h * w_o);
        for (row, acc) in xs.chunks_exact(w).zip(rows.chunks_exact_mut(w_o)) {
            for b in 0..self.k {
                let cols = self.valid_cols(b, w, w_o);
                if cols.is_empty() {
                    continue;
                }
                max_into(&mut acc[cols.clone()], &row[cols.start * s + b - p..], s);
            }
        }
        for (i, y_row) in ys.chunks_exact_mut(w_o).enumerate() {
            best.fill(neg);
            for (_, r) in self.window_rows(i, h) {
                max_into(best, &rows[r * w_o..][..w_o], 1);
            }
            crate::cpu::write_copy(y_row, best);
        }
    }

    /// One plane's input gradient (`ds`, zero on entry) for any geometry:
    /// each output's gradient goes to its window's first maximum in
    /// row-major order (the last NaN where the maximum is NaN), as
    /// [`MaxPool::argmax`] finds it. Per output row, the window tap of each
    /// output is found in row-major tap order by comparing with the
    /// forward's maximum `ys` (whole rows of selects; the rare NaN maximum
    /// falls back to [`MaxPool::argmax`]), then the gradients are added tap
    /// by tap. The additions into one input happen in the order of
    /// the outputs, as a scan over the outputs makes them: within an input
    /// row the outputs `j` that reach input column `c` through tap column
    /// `b` grow as `b` falls, so the taps' columns are visited downwards.
    fn plane_grad<E: Float>(
        &self,
        xs: &[E],
        ys: &[E],
        gs: &[E],
        (h, w): (usize, usize),
        taps: &mut Vec<E>,
        ds: &mut [E],
    ) {
        let (k, s, p) = (self.k, self.s, self.p);
        let w_o = self.out_size(w);
        let none = E::from_f64(-1.0);
        for (i, (y_row, g_row)) in ys.chunks_exact(w_o).zip(gs.chunks_exact(w_o)).enumerate() {
            taps.clear();
            taps.resize(w_o, none);
            for (a, r) in self.window_rows(i, h) {
                let row = &xs[r * w..][..w];
                for b in 0..k {
                    let cols = self.valid_cols(b, w, w_o);
                    if cols.is_empty() {
                        continue;
                    }
                    let tap = E::from_f64((a * k + b) as f64);
                    let xs = &row[cols.start * s + b - p..];
                    find_taps(&mut taps[cols.clone()], xs, s, &y_row[cols], tap);
                }
            }
            for (j, t) in taps.iter_mut().enumerate() {
                if *t == none {
                    // NaN maximum (equal to nothing): the scalar scan.
                    let at = self.argmax(xs, (h, w), i, j);
                    let (a, b) = (at / w + p - s * i, at % w + p - s * j);
                    *t = E::from_f64((a * k + b) as f64);
                }
            }
            for (a, r) in self.window_rows(i, h) {
                let d_row = &mut ds[r * w..][..w];
                for b in (0..k).rev() {
                    let cols = self.valid_cols(b, w, w_o);
                    if cols.is_empty() {
                        continue;
                    }
                    let tap = E::from_f64((a * k + b) as f64);
                    let ds = &mut d_row[cols.start * s + b - p..];
                    scatter_taps(ds, s, &taps[cols.clone()], &g_row[cols], tap);
                }
            }
        }
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
            for_each_chunk(y, h_o * w_o, h_o * w_o * self.k * self.k, |scratch: &mut Vec<E>, plane, ys| {
                let xs = &x[plane * h * w..][..h * w];
                if tiles && self.k == 2 {
                    for (i, ys) in ys.chunks_exact_mut(w_o).enumerate() {
                        pool2_rows(&xs[2 * i * w..][..w], &xs[(2 * i + 1) * w..][..w], ys);
                    }
                    return;
                }
                if !tiles {
                    self.plane_max(xs, (h, w), scratch, ys);
                    return;
                }
                for (o, y) in ys.iter_mut().enumerate() {
                    let at = tile_argmax(xs, w, self.k, o / w_o, o % w_o);
                    y.write(xs[at]);
                }
            })
        })
    }

    /// `y` is the forward's output.
    fn backward<E: Float>(&self, g: &[E], x: &[E], y: &[E], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<E> {
        let (h_o, w_o) = (self.out_size(h), self.out_size(w));
        let zero = E::from_f64(0.0);
        if !self.tiles() {
            let mut dx = vec![zero; n * c * h * w];
            for_each_chunk(&mut dx, h * w, h_o * w_o * self.k * self.k, |taps: &mut Vec<E>, plane, ds| {
                let xs = &x[plane * h * w..][..h * w];
                let gs = &g[plane * h_o * w_o..][..h_o * w_o];
                let ys = &y[plane * h_o * w_o..][..h_o * w_o];
                self.plane_grad(xs, ys, gs, (h, w), taps, ds);
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
                        pool2_grad_rows_fast(x0, x1, &gs[i * w_o..][..w_o], d0, d1);
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

/// `accⱼ = max(accⱼ, src[s·j])` with [`visit`]'s rule (NaN wins).
#[inline(always)]
fn max_into_impl<E: Float>(acc: &mut [E], src: &[E], s: usize) {
    let update = |m: &mut E, v: E| *m = visit((*m, ()), v, ()).0;
    let n = acc.len();
    if s == 1 {
        for (m, &v) in acc.iter_mut().zip(&src[..n]) {
            update(m, v);
        }
    } else {
        for (m, &v) in acc.iter_mut().zip(src.iter().step_by(s)) {
            update(m, v);
        }
    }
}

avx2_dispatch!(max_into, max_into_avx2, max_into_impl, (acc: &mut [E], src: &[E], s: usize));

/// One window tap's pass over an output row: `tapsⱼ = tap` where no
/// earlier tap matched (`tapsⱼ < 0`) and the tap's input `xs[s·j]` equals
/// the window maximum `ysⱼ`.
#[inline(always)]
fn find_taps_impl<E: Float>(taps: &mut [E], xs: &[E], s: usize, ys: &[E], tap: E) {
    let zero = E::from_f64(0.0);
    let update = |t: &mut E, x: E, y: E| {
        let take = (*t < zero) & (x == y);
        *t = if take { tap } else { *t };
    };
    if s == 1 {
        for ((t, &x), &y) in taps.iter_mut().zip(&xs[..ys.len()]).zip(ys) {
            update(t, x, y);
        }
    } else {
        for ((t, &x), &y) in taps.iter_mut().zip(xs.iter().step_by(s)).zip(ys) {
            update(t, x, y);
        }
    }
}

avx2_dispatch!(find_taps, find_taps_avx2, find_taps_impl, (taps: &mut [E], xs: &[E], s: usize, ys: &[E], tap: E));

/// One window tap's gradient pass over an output row: `ds[s·j] += gⱼ`
/// where `tapsⱼ = tap` (and `+= 0` elsewhere, so that the loop has no
/// branch).
#[inline(always)]
fn scatter_taps_impl<E: Float>(ds: &mut [E], s: usize, taps: &[E], g: &[E], tap: E) {
    let zero = E::from_f64(0.0);
    if s == 1 {
        for ((d, &t), &gv) in ds[..g.len()].iter_mut().zip(taps).zip(g) {
            *d += if t == tap { gv } else { zero };
        }
    } else {
        for ((d, &t), &gv) in ds.iter_mut().step_by(s).zip(taps).zip(g) {
            *d += if t == tap { gv } else { zero };
        }
    }
}

avx2_dispatch!(scatter_taps, scatter_taps_avx2, scatter_taps_impl, (ds: &mut [E], s: usize, taps: &[E], g: &[E], tap: E));

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

/// [`pool2_grad_rows`], with f32 on AVX2 eight windows at a time
/// ([`pool2_grad_rows_f32_avx2`]) and the rest by the generic kernel.
fn pool2_grad_rows_fast<E: Float>(x0: &[E], x1: &[E], g: &[E], d0: &mut [MaybeUninit<E>], d1: &mut [MaybeUninit<E>]) {
    #[cfg(target_arch = "x86_64")]
    if E::DTYPE == DType::F32 && std::arch::is_x86_feature_detected!("avx2") {
        let n = g.len();
        assert!(x0.len() >= 2 * n && x1.len() >= 2 * n && d0.len() >= 2 * n && d1.len() >= 2 * n);
        // SAFETY: `E` is f32 (its dtype), so the casts keep the element
        // type; the CPU has AVX2 (just detected); the lengths are checked.
        let done = unsafe {
            let f = |s: &[E]| std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len());
            let u = |s: &mut [MaybeUninit<E>]| std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<MaybeUninit<f32>>(), s.len());
            pool2_grad_rows_f32_avx2(f(x0), f(x1), f(g), u(d0), u(d1))
        };
        return pool2_grad_rows(&x0[2 * done..], &x1[2 * done..], &g[done..], &mut d0[2 * done..], &mut d1[2 * done..]);
    }
    pool2_grad_rows(x0, x1, g, d0, d1)
}

/// The gradient of the first `8·⌊|g| / 8⌋` windows of [`pool2_grad_rows`]
/// for f32, eight windows per step in AVX2 registers, bit for bit the same:
/// each window's maximum `m` by [`visit`]'s rule, then its tap by
/// comparisons, the first tap equal to `m` in [`visit`]'s order, or where
/// `m` is NaN the last NaN tap (a NaN replaces the running maximum, a later
/// NaN replaces it again). The gradient goes to that tap, +0 to the others.
/// The compiler does not vectorise the generic kernel (it tracks the
/// position through selects it compiles to branches, which mispredict on
/// real data: 11 % of the CNN step). Returns the number of windows done.
///
/// # Safety
/// The CPU must have AVX2; `x0`, `x1`, `d0`, `d1` must hold `2·|g|` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool2_grad_rows_f32_avx2(x0: &[f32], x1: &[f32], g: &[f32], d0: &mut [MaybeUninit<f32>], d1: &mut [MaybeUninit<f32>]) -> usize {
    use std::arch::x86_64::*;
    /// `max` after visiting `v` ([`visit`]: `v > max` or `v` NaN).
    macro_rules! visit {
        ($max:expr, $v:expr) => {{
            let (max, v) = ($max, $v);
            _mm256_blendv_ps(max, v, _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, max), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)))
        }};
    }
    let blocks = g.len() / 8;
    for k in 0..blocks {
        let j = 8 * k;
        // SAFETY: per the caller, `2j + 16 ≤ 2·|g|` elements of each row
        // and `j + 8 ≤ |g|` of `g` are in bounds.
        unsafe {
            let (lo0, hi0) = (_mm256_loadu_ps(x0.as_ptr().add(2 * j)), _mm256_loadu_ps(x0.as_ptr().add(2 * j + 8)));
            let (lo1, hi1) = (_mm256_loadu_ps(x1.as_ptr().add(2 * j)), _mm256_loadu_ps(x1.as_ptr().add(2 * j + 8)));
            // The four taps of windows j + [0, 1, 4, 5, 2, 3, 6, 7] (the
            // order the in-lane shuffles give; the unpacks below undo it).
            let (a, b) = (_mm256_shuffle_ps::<0x88>(lo0, hi0), _mm256_shuffle_ps::<0xDD>(lo0, hi0));
            let (c, d) = (_mm256_shuffle_ps::<0x88>(lo1, hi1), _mm256_shuffle_ps::<0xDD>(lo1, hi1));
            let gv = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_loadu_ps(g.as_ptr().add(j)))));
            let m = visit!(visit!(visit!(a, b), c), d);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(m, m);
            let (ea, eb, ec, ed) = (
                _mm256_cmp_ps::<_CMP_EQ_OQ>(a, m),
                _mm256_cmp_ps::<_CMP_EQ_OQ>(b, m),
                _mm256_cmp_ps::<_CMP_EQ_OQ>(c, m),
                _mm256_cmp_ps::<_CMP_EQ_OQ>(d, m),
            );
            let (na, nb, nc, nd) = (
                _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(c, c),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(d, d),
            );
            // With a NaN maximum the last NaN tap, else the first equal one.
            let later_nan_c = nd;
            let later_nan_b = _mm256_or_ps(nc, nd);
            let later_nan_a = _mm256_or_ps(nb, later_nan_b);
            let ta = _mm256_blendv_ps(ea, _mm256_andnot_ps(later_nan_a, na), nan);
            let tb = _mm256_blendv_ps(_mm256_andnot_ps(ea, eb), _mm256_andnot_ps(later_nan_b, nb), nan);
            let ab = _mm256_or_ps(ea, eb);
            let tc = _mm256_blendv_ps(_mm256_andnot_ps(ab, ec), _mm256_andnot_ps(later_nan_c, nc), nan);
            let td = _mm256_blendv_ps(_mm256_andnot_ps(_mm256_or_ps(ab, ec), ed), nd, nan);
            let (oa, ob, oc, od) = (_mm256_and_ps(ta, gv), _mm256_and_ps(tb, gv), _mm256_and_ps(tc, gv), _mm256_and_ps(td, gv));
            let p0 = d0.as_mut_ptr().add(2 * j).cast::<f32>();
            let p1 = d1.as_mut_ptr().add(2 * j).cast::<f32>();
            _mm256_storeu_ps(p0, _mm256_unpacklo_ps(oa, ob));
            _mm256_storeu_ps(p0.add(8), _mm256_unpackhi_ps(oa, ob));
            _mm256_storeu_ps(p1, _mm256_unpacklo_ps(oc, od));
            _mm256_storeu_ps(p1.add(8), _mm256_unpackhi_ps(oc, od));
        }
    }
    8 * blocks
}

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

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = Shape::from((n, c, self.out_size(h), self.out_size(w)));
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::max_pool2d((s, l), self.cuda_shape(n * c, h, w))?, out));
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("tfkd-max-pool2d: built without CUDA ({:?}, {out:?})", s.dtype())
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op3_no_bwd(x, &res.contiguous()?, &MaxPoolGrad(*self))?))
    }
}

/// `(∂L/∂y, x, y) → ∂L/∂x`.
struct MaxPoolGrad(MaxPool);

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "tfkd-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = xl.shape().dims4()?;
        let (n, c, h, w) = dims;
        let want = (n, c, self.0.out_size(h), self.0.out_size(w));
        if gl.shape().dims4()? != want || yl.shape().dims4()? != want {
            candle_core::bail!("tfkd-max-pool2d: gradient {:?} and output {:?} for an output {want:?}", gl.shape(), yl.shape())
        }
        let out = match gs.dtype() {
            DType::F32 => CpuStorage::F32(self.0.backward(
                slice::<f32>(gs, gl, "the gradient")?,
                slice::<f32>(xs, xl, "the input")?,
                slice::<f32>(ys, yl, "the output")?,
                dims,
            )),
            DType::F64 => CpuStorage::F64(self.0.backward(
                slice::<f64>(gs, gl, "the gradient")?,
                slice::<f64>(xs, xl, "the input")?,
                slice::<f64>(ys, yl, "the output")?,
                dims,
            )),
            other => candle_core::bail!("tfkd-max-pool2d: unsupported dtype {other:?}"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
        _ys: &CudaStorage,
        yl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let want = (n, c, self.0.out_size(h), self.0.out_size(w));
        if gl.shape().dims4()? != want || yl.shape().dims4()? != want {
            candle_core::bail!("tfkd-max-pool2d: gradient {:?} and output {:?} for an output {want:?}", gl.shape(), yl.shape())
        }
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::max_pool2d_grad((gs, gl), (xs, xl), self.0.cuda_shape(n * c, h, w))?, xl.shape().clone()));
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("tfkd-max-pool2d: built without CUDA ({:?}, {:?})", gs.dtype(), xs.dtype())
    }
}
