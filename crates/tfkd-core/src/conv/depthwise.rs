//! Depthwise 2-D convolution (one input channel per group) on the CPU, with
//! an analytic backward pass; on CUDA (f32), one kernel per pass
//! (`src/cuda/kernels.cu`: PyTorch's scheme, one thread per output or input
//! element, one block per kernel tap for the weight gradient).
//!
//! candle 0.11.1 runs a grouped convolution as one convolution per group and
//! a concatenation, and its backward as as many transposed convolutions: for
//! a depthwise layer that is hundreds of tiny ops (a 3×3 depthwise forward +
//! backward at batch 64, 384 channels, 16×16 took 4.2 s). Here each pass is
//! one custom op whose kernel visits every (sample, channel) plane once:
//!
//! * forward, per output plane `(n, o)` with input channel `c = o / m`
//!   (channel multiplier `m = C_out / C_in`):
//!   `y[i, j] = Σ_{a, b} w[o, a, b] · x̃[s·i + a, s·j + b]`, eight outputs of
//!   a row at a time accumulated in registers over all taps (`x̃`: the plane
//!   zero-padded by `p`, built in a per-thread buffer);
//! * input gradient, per input plane `(n, c)`: for stride 1 and `m = 1` the
//!   same register-blocked correlation, of the upstream gradient padded by
//!   `k − 1` with the flipped kernel, written straight into the plane;
//!   otherwise the transposed scatter
//!   `∂x̃[s·i + a, s·j + b] += w[o, a, b] · g[o, i, j]` over the `m` output
//!   channels of `c`, then the padding is cropped;
//! * weight gradient, per output channel `o`:
//!   `∂w[o, a, b] = Σ_{n, i, j} g[n, o, i, j] · x̃[n, c, s·i + a, s·j + b]`,
//!   accumulated per tap in eight lanes of the element type (in registers
//!   for a 3×3 kernel) within a sample and in f64 across samples.
//!
//! Planes (or channels, for the weight gradient) are independent, so they are
//! split over rayon's pool; each output element is computed by one thread in
//! a fixed order, so results do not depend on the number of threads.

use candle_core::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use std::mem::MaybeUninit;

use crate::cpu::{avx2_dispatch, filled, for_each_chunk, slice, supported, Float};

/// Depthwise convolution (NCHW, dilation 1, `groups = C_in`):
/// `x: (N, C, H, W)`, `w: (C·m, 1, k_h, k_w)` for a channel multiplier
/// `m ≥ 1`; the same result as `x.conv2d(w, padding, stride, 1, C)`.
///
/// On the CPU with f32 or f64 operands this is one custom op per pass
/// (forward, input gradient, weight gradient) instead of candle's one
/// convolution per channel; other devices and dtypes use `Tensor::conv2d`.
/// Gradients are computed only for the operands that track them.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> crate::Result<Tensor> {
    Ok(depthwise_conv2d_candle(x, w, padding, stride)?)
}

/// [`depthwise_conv2d`] with candle's error, for use inside candle's traits.
pub(crate) fn depthwise_conv2d_candle(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (c_out, one, k_h, k_w) = w.dims4()?;
    if one != 1 || c == 0 || c_out % c != 0 {
        candle_core::bail!(
            "depthwise_conv2d: kernel ({c_out}, {one}, {k_h}, {k_w}) does not fit {c} input channels \
             (want ({c}·m, 1, k_h, k_w))"
        )
    }
    if stride == 0 || h + 2 * padding < k_h || wd + 2 * padding < k_w {
        candle_core::bail!(
            "depthwise_conv2d: input {h}x{wd} with padding {padding} is smaller than kernel {k_h}x{k_w} (stride {stride})"
        )
    }
    let fast = (matches!(x.device(), Device::Cpu) && supported(x.dtype()) && x.dtype() == w.dtype())
        || on_own_gpu_kernels(x, w, padding, stride)?;
    if !fast {
        // Off the CPU: a few kernels per tap instead of one convolution per channel.
        return if c_out == c {
            super::windows::depthwise_conv2d_taps_candle(x, w, padding, stride)
        } else {
            x.conv2d(w, padding, stride, 1, c)
        };
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    x.apply_op2(&w, Depthwise { padding, stride })
}

/// Whether this depthwise convolution runs on tfkd's own CUDA kernels: f32
/// operands on a GPU, tensors small enough for their 32-bit indices, and not
/// handed to cuDNN by `TFKD_DEPTHWISE=cudnn` ([`crate::env::DEPTHWISE`]).
/// Always false without `--features cuda`.
pub(crate) fn on_own_gpu_kernels(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        if to_cudnn() || !crate::own_cuda_kernels(x) || w.dtype() != DType::F32 {
            return Ok(false);
        }
        let (n, c, h, wd) = x.dims4()?;
        let (co, _, kh, kw) = w.dims4()?;
        let g = Geom::new(n, c, co, h, wd, kh, kw, stride, padding)?;
        let largest = (n * c * h * wd).max(n * co * g.ho * g.wo);
        Ok(largest < crate::cuda::DEPTHWISE_MAX_ELEMENTS)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, w, padding, stride);
        Ok(false)
    }
}

/// `TFKD_DEPTHWISE=cudnn`: f32 depthwise convolutions on CUDA go to cuDNN.
#[cfg(feature = "cuda")]
pub(crate) fn to_cudnn() -> bool {
    static TO_CUDNN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TO_CUDNN.get_or_init(|| std::env::var(crate::env::DEPTHWISE).is_ok_and(|v| v == crate::env::DEPTHWISE_CUDNN))
}

/// Shapes of one depthwise convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    /// Channel multiplier: output channels per input channel.
    m: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    // The nine dims of a depthwise problem, as the callers hold them.
    #[allow(clippy::too_many_arguments)]
    fn new(n: usize, c: usize, co: usize, h: usize, w: usize, kh: usize, kw: usize, s: usize, p: usize) -> Result<Self> {
        if c == 0 || co % c != 0 || s == 0 || h + 2 * p < kh || w + 2 * p < kw || kh == 0 || kw == 0 {
            candle_core::bail!(
                "tfkd-depthwise-conv2d: bad geometry: {c} -> {co} channels, input {h}x{w}, kernel {kh}x{kw}, \
                 stride {s}, padding {p}"
            )
        }
        Ok(Self {
            n,
            c,
            m: co / c,
            h,
            w,
            kh,
            kw,
            s,
            p,
            ho: (h + 2 * p - kh) / s + 1,
            wo: (w + 2 * p - kw) / s + 1,
        })
    }
    fn co(&self) -> usize {
        self.c * self.m
    }

    /// `self`, if an upstream gradient of `ho × wo` planes is its output's.
    fn with_gradient_of(self, ho: usize, wo: usize) -> Result<Self> {
        if (self.ho, self.wo) != (ho, wo) {
            candle_core::bail!("tfkd-depthwise-conv2d: gradient {ho}x{wo} for an output of {}x{}", self.ho, self.wo)
        }
        Ok(self)
    }
    fn hp(&self) -> usize {
        self.h + 2 * self.p
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.p
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn plane_in(&self) -> usize {
        self.h * self.w
    }
    fn plane_out(&self) -> usize {
        self.ho * self.wo
    }

    /// The sizes as tfkd's CUDA kernels take them.
    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<crate::cuda::DepthwiseShape> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("tfkd-depthwise-conv2d: {v} does not fit a C int")))
        };
        Ok(crate::cuda::DepthwiseShape {
            n: int(self.n)?,
            c: int(self.c)?,
            m: int(self.m)?,
            h: int(self.h)?,
            w: int(self.w)?,
            kh: int(self.kh)?,
            kw: int(self.kw)?,
            s: int(self.s)?,
            p: int(self.p)?,
            ho: int(self.ho)?,
            wo: int(self.wo)?,
        })
    }
}

/// Per-job scratch buffers.
struct Scratch<E> {
    /// A zero-padded input (or input-gradient) plane.
    pad: Vec<E>,
    /// Weight gradient: one row of lanes per tap.
    acc: Vec<E>,
    /// Weight gradient: per-tap totals across samples.
    total: Vec<f64>,
    /// Input gradient: the kernel of a channel, flipped.
    flipped: Vec<E>,
}

impl<E> Default for Scratch<E> {
    fn default() -> Self {
        Self {
            pad: Vec::new(),
            acc: Vec::new(),
            total: Vec::new(),
            flipped: Vec::new(),
        }
    }
}

/// The plane `x` (`h × w`) zero-padded by `p` on every side, in `buf`; `x`
/// itself when `p = 0`.
fn padded<'a, E: Float>(g: &Geom, x: &'a [E], buf: &'a mut Vec<E>) -> &'a [E] {
    if g.p == 0 {
        return x;
    }
    let (wp, p) = (g.wp(), g.p);
    buf.clear();
    buf.resize(g.hp() * wp, E::from_f64(0.0));
    for (r, row) in x.chunks_exact(g.w).enumerate() {
        buf[(r + p) * wp + p..][..g.w].copy_from_slice(row);
    }
    buf
}

/// Output elements computed together in registers by [`correlate_impl`].
const LANES: usize = 8;

/// A strided correlation, register-blocked: `out[i, j] = Σ_{a, b} k[a·k_w + b] ·
/// src[(s·i + a + off)·ld + s·j + b + off]` (`src` given as `(src, ld, off)`) for `out_w` columns and
/// `out.len() / out_w` rows, every element of `out` written. [`LANES`]
/// outputs of a row are accumulated in registers over all taps, so each
/// output is written once (not once per tap), and each is summed from 0 in
/// tap order `(a, b)`.
#[inline(always)]
fn correlate_impl<E: Float>(
    (src, ld, off): (&[E], usize, usize),
    s: usize,
    (kh, kw): (usize, usize),
    k: &[E],
    out_w: usize,
    out: &mut [MaybeUninit<E>],
) {
    if (kh, kw) == (3, 3) {
        return correlate_3x3((src, ld, off), s, k, out_w, out);
    }
    let zero = E::from_f64(0.0);
    for (i, row) in out.chunks_exact_mut(out_w).enumerate() {
        let base = &src[(s * i + off) * ld + off..];
        let mut j = 0;
        while j + LANES <= out_w {
            let mut acc = [zero; LANES];
            for a in 0..kh {
                for b in 0..kw {
                    let kv = k[a * kw + b];
                    let xs = &base[a * ld + s * j + b..];
                    if s == 1 {
                        let xs = &xs[..LANES];
                        for l in 0..LANES {
                            acc[l] += kv * xs[l];
                        }
                    } else {
                        let xs = &xs[..s * (LANES - 1) + 1];
                        for l in 0..LANES {
                            acc[l] += kv * xs[s * l];
                        }
                    }
                }
            }
            for (o, v) in row[j..j + LANES].iter_mut().zip(acc) {
                o.write(v);
            }
            j += LANES;
        }
        for (jj, o) in row.iter_mut().enumerate().skip(j) {
            let mut acc = zero;
            for a in 0..kh {
                for b in 0..kw {
                    acc += k[a * kw + b] * base[a * ld + s * jj + b];
                }
            }
            o.write(acc);
        }
    }
}

/// [`correlate_impl`] for a 3×3 kernel: the nine taps held in registers and
/// the tap loops unrolled (the zoo's depthwise convs are all 3×3). The same
/// sums in the same order.
#[inline(always)]
fn correlate_3x3<E: Float>((src, ld, off): (&[E], usize, usize), s: usize, k: &[E], out_w: usize, out: &mut [MaybeUninit<E>]) {
    let zero = E::from_f64(0.0);
    let kk: [[E; 3]; 3] = std::array::from_fn(|a| std::array::from_fn(|b| k[a * 3 + b]));
    // Columns a lane block reads from each row: s·(LANES − 1) + 3.
    let span = s * (LANES - 1) + 3;
    for (i, row) in out.chunks_exact_mut(out_w).enumerate() {
        let base = (s * i + off) * ld + off;
        let rows: [&[E]; 3] = std::array::from_fn(|a| &src[base + a * ld..]);
        let mut j = 0;
        while j + LANES <= out_w {
            let mut acc = [zero; LANES];
            for a in 0..3 {
                let xs = &rows[a][s * j..][..span];
                for b in 0..3 {
                    for l in 0..LANES {
                        acc[l] += kk[a][b] * xs[s * l + b];
                    }
                }
            }
            for (o, v) in row[j..j + LANES].iter_mut().zip(acc) {
                o.write(v);
            }
            j += LANES;
        }
        for (jj, o) in row.iter_mut().enumerate().skip(j) {
            let mut acc = zero;
            for a in 0..3 {
                for b in 0..3 {
                    acc += kk[a][b] * rows[a][s * jj + b];
                }
            }
            o.write(acc);
        }
    }
}

avx2_dispatch!(
    correlate,
    correlate_avx2,
    correlate_impl,
    (src: (&[E], usize, usize), s: usize, kdims: (usize, usize), k: &[E], out_w: usize, out: &mut [MaybeUninit<E>])
);

/// One padded input-gradient plane (zeroed by the caller):
/// `∂x̃[s·i + a, s·j + b] += k_q[a, b] · g_q[i, j]` over the `m` output planes
/// `g_q` of this channel and their kernels `k_q`.
#[inline(always)]
fn input_grad_plane_impl<E: Float>(g: &Geom, gy: &[E], k: &[E], dxp: &mut [E]) {
    let (wp, wo, s, taps) = (g.wp(), g.wo, g.s, g.taps());
    for q in 0..g.m {
        let gq = &gy[q * g.plane_out()..][..g.plane_out()];
        let kq = &k[q * taps..][..taps];
        for (i, grow) in gq.chunks_exact(wo).enumerate() {
            for a in 0..g.kh {
                let drow = &mut dxp[(s * i + a) * wp..][..wp];
                for b in 0..g.kw {
                    let kv = kq[a * g.kw + b];
                    let ds = &mut drow[b..];
                    if s == 1 {
                        for (d, &gv) in ds[..wo].iter_mut().zip(grow) {
                            *d += kv * gv;
                        }
                    } else {
                        for (d, &gv) in ds.iter_mut().step_by(s).zip(grow) {
                            *d += kv * gv;
                        }
                    }
                }
            }
        }
    }
}

/// `acc[t·LANES + l] += Σ_{i, j ≡ l} g[i, j] · x̃[s·i + a, s·j + b]` for
/// every tap `t = a·k_w + b` of one (sample, output channel), from the
/// padded plane `xp`: each tap's sum kept in [`LANES`] partial sums, a block
/// of `LANES` columns at a time (columns past the last whole block go to
/// lanes `0, 1, …`). A 3×3 kernel has its loops unrolled.
#[inline(always)]
fn weight_grad_plane_impl<E: Float>(g: &Geom, xp: &[E], gp: &[E], acc: &mut [E]) {
    if (g.kh, g.kw) == (3, 3) {
        let mut lanes = [[[E::from_f64(0.0); LANES]; 3]; 3];
        weight_grad_lanes::<E, 3, 3>(g, xp, gp, &mut lanes);
        for (a, row) in lanes.iter().enumerate() {
            for (b, l) in row.iter().enumerate() {
                for (d, v) in acc[(a * 3 + b) * LANES..][..LANES].iter_mut().zip(l) {
                    *d += *v;
                }
            }
        }
        return;
    }
    let (wp, wo, s, kw) = (g.wp(), g.wo, g.s, g.kw);
    for (i, grow) in gp.chunks_exact(wo).enumerate() {
        for a in 0..g.kh {
            let xrow = &xp[(s * i + a) * wp..][..wp];
            for b in 0..kw {
                let lanes = &mut acc[(a * kw + b) * LANES..][..LANES];
                for (j, &gv) in grow.iter().enumerate() {
                    lanes[j % LANES] += gv * xrow[s * j + b];
                }
            }
        }
    }
}

/// The fixed-size body of [`weight_grad_plane_impl`].
#[inline(always)]
fn weight_grad_lanes<E: Float, const KH: usize, const KW: usize>(
    g: &Geom,
    xp: &[E],
    gp: &[E],
    lanes: &mut [[[E; LANES]; KW]; KH],
) {
    let (wp, wo, s) = (g.wp(), g.wo, g.s);
    let span = s * (LANES - 1) + KW;
    for (i, grow) in gp.chunks_exact(wo).enumerate() {
        let rows: [&[E]; KH] = std::array::from_fn(|a| &xp[(s * i + a) * wp..]);
        let mut j = 0;
        while j + LANES <= wo {
            let gv = &grow[j..j + LANES];
            for a in 0..KH {
                let xs = &rows[a][s * j..][..span];
                for b in 0..KW {
                    for l in 0..LANES {
                        lanes[a][b][l] += gv[l] * xs[s * l + b];
                    }
                }
            }
            j += LANES;
        }
        for (l, jj) in (j..wo).enumerate() {
            for a in 0..KH {
                for b in 0..KW {
                    lanes[a][b][l] += grow[jj] * rows[a][s * jj + b];
                }
            }
        }
    }
}

/// `y[n, o] = k[o] ⋆ x̃[n, o / m]` per output plane ([`correlate`]).
fn forward<E: Float>(g: &Geom, x: &[E], k: &[E]) -> Vec<E> {
    let (co, taps) = (g.co(), g.taps());
    filled(g.n * co * g.plane_out(), |y| {
        for_each_chunk(y, g.plane_out(), g.plane_out() * taps, |sc: &mut Scratch<E>, idx, yp| {
            let (ni, o) = (idx / co, idx % co);
            let ci = o / g.m;
            let xpl = &x[(ni * g.c + ci) * g.plane_in()..][..g.plane_in()];
            let xp = padded(g, xpl, &mut sc.pad);
            correlate((xp, g.wp(), 0), g.s, (g.kh, g.kw), &k[o * taps..][..taps], g.wo, yp);
        })
    })
}

/// `∂L/∂x`. Stride 1 with one output channel per input channel (every
/// depthwise layer of the zoo but the strided ones): a correlation of the
/// upstream gradient, zero-padded by `k − 1`, with the flipped kernel,
/// written straight into each input plane:
/// `∂x[r, c] = Σ_{a, b} k[k_h−1−a, k_w−1−b] · ĝ[r + p + a, c + p + b]`
/// (`ĝ[i + k_h − 1, j + k_w − 1] = g[i, j]`). Otherwise the transposed
/// scatter of [`input_grad_plane`] on a padded plane, then cropped.
fn input_grad<E: Float>(g: &Geom, gy: &[E], k: &[E]) -> Vec<E> {
    let (taps, m) = (g.taps(), g.m);
    let zero = E::from_f64(0.0);
    let work = m * g.plane_out() * taps;
    if g.s == 1 && m == 1 {
        let (gh, gw) = (g.ho + 2 * (g.kh - 1), g.wo + 2 * (g.kw - 1));
        return filled(g.n * g.c * g.plane_in(), |dx| {
            for_each_chunk(dx, g.plane_in(), work, |sc: &mut Scratch<E>, idx, dxp| {
                let ci = idx % g.c;
                let gp = &gy[idx * g.plane_out()..][..g.plane_out()];
                sc.pad.clear();
                sc.pad.resize(gh * gw, zero);
                for (i, row) in gp.chunks_exact(g.wo).enumerate() {
                    sc.pad[(i + g.kh - 1) * gw + g.kw - 1..][..g.wo].copy_from_slice(row);
                }
                sc.flipped.clear();
                sc.flipped.extend(k[ci * taps..][..taps].iter().rev());
                correlate((&sc.pad, gw, g.p), 1, (g.kh, g.kw), &sc.flipped, g.w, dxp);
            })
        });
    }
    let mut dx = vec![zero; g.n * g.c * g.plane_in()];
    for_each_chunk(&mut dx, g.plane_in(), work, |sc: &mut Scratch<E>, idx, dxp| {
        let (ni, ci) = (idx / g.c, idx % g.c);
        let gq = &gy[(ni * g.co() + ci * m) * g.plane_out()..][..m * g.plane_out()];
        let kq = &k[ci * m * taps..][..m * taps];
        if g.p == 0 {
            // Unpadded: the plane is its own padded plane (zeroed at allocation).
            input_grad_plane(g, gq, kq, dxp);
            return;
        }
        sc.pad.clear();
        sc.pad.resize(g.hp() * g.wp(), zero);
        input_grad_plane(g, gq, kq, &mut sc.pad);
        let (wp, p) = (g.wp(), g.p);
        for (r, row) in dxp.chunks_exact_mut(g.w).enumerate() {
            row.copy_from_slice(&sc.pad[(r + p) * wp + p..][..g.w]);
        }
    });
    dx
}

fn weight_grad<E: Float>(g: &Geom, x: &[E], gy: &[E]) -> Vec<E> {
    let (co, taps) = (g.co(), g.taps());
    let zero = E::from_f64(0.0);
    let mut dw = vec![zero; co * taps];
    let work = g.n * g.plane_out() * taps;
    for_each_chunk(&mut dw, taps, work, |sc: &mut Scratch<E>, o, out| {
        let ci = o / g.m;
        sc.total.clear();
        sc.total.resize(taps, 0.0);
        sc.acc.resize(taps * LANES, zero);
        for ni in 0..g.n {
            let xpl = &x[(ni * g.c + ci) * g.plane_in()..][..g.plane_in()];
            let gp = &gy[(ni * co + o) * g.plane_out()..][..g.plane_out()];
            let xp = padded(g, xpl, &mut sc.pad);
            sc.acc.fill(zero);
            weight_grad_plane(g, xp, gp, &mut sc.acc);
            for (t, lanes) in sc.total.iter_mut().zip(sc.acc.chunks_exact(LANES)) {
                *t += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
            }
        }
        for (d, t) in out.iter_mut().zip(&sc.total) {
            *d = E::from_f64(*t);
        }
    });
    dw
}

/// Runs `f::<E>` for the dtype of `s`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident, $($arg:expr),*) => {
        match $dtype {
            DType::F32 => CpuStorage::F32($f::<f32>($($arg),*)?),
            DType::F64 => CpuStorage::F64($f::<f64>($($arg),*)?),
            other => candle_core::bail!("tfkd-depthwise-conv2d: unsupported dtype {other:?}"),
        }
    };
}

/// The forward op; its backward runs [`InputGrad`] and [`WeightGrad`].
struct Depthwise {
    padding: usize,
    stride: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        super::op_names::DEPTHWISE
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, _, kh, kw) = wl.shape().dims4()?;
        let g = Geom::new(n, c, co, h, w, kh, kw, self.stride, self.padding)?;
        fn run<E: Float>(g: &Geom, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<Vec<E>> {
            Ok(forward(g, slice(xs, xl, "the input")?, slice(ws, wl, "the kernel")?))
        }
        let out = by_dtype!(xs.dtype(), run, &g, xs, xl, ws, wl);
        Ok((out, Shape::from((n, co, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (co, _, kh, kw) = wl.shape().dims4()?;
        let g = Geom::new(n, c, co, h, w, kh, kw, self.stride, self.padding)?;
        let y = crate::cuda::depthwise(crate::cuda::DepthwisePass::Forward, (xs, xl), (ws, wl), g.cuda()?)?;
        Ok((y, Shape::from((n, co, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, c, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (p, s) = (self.padding, self.stride);
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &InputGrad { c, h, w: wd, padding: p, stride: s })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &WeightGrad { kh, kw, padding: p, stride: s })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `∂L/∂x` from the upstream gradient and the kernel.
struct InputGrad {
    c: usize,
    h: usize,
    w: usize,
    padding: usize,
    stride: usize,
}

impl InputGrad {
    /// The convolution's shapes, from the upstream gradient's and the
    /// kernel's layouts.
    fn geometry(&self, gl: &Layout, wl: &Layout) -> Result<Geom> {
        let (n, co, ho, wo) = gl.shape().dims4()?;
        let (_, _, kh, kw) = wl.shape().dims4()?;
        Geom::new(n, self.c, co, self.h, self.w, kh, kw, self.stride, self.padding)?.with_gradient_of(ho, wo)
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "tfkd-depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(gl, wl)?;
        fn run<E: Float>(g: &Geom, gs: &CpuStorage, gl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<Vec<E>> {
            Ok(input_grad(g, slice(gs, gl, "the gradient")?, slice(ws, wl, "the kernel")?))
        }
        let out = by_dtype!(gs.dtype(), run, &g, gs, gl, ws, wl);
        Ok((out, Shape::from((g.n, self.c, self.h, self.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.geometry(gl, wl)?;
        let dx = crate::cuda::depthwise(crate::cuda::DepthwisePass::InputGrad, (gs, gl), (ws, wl), g.cuda()?)?;
        Ok((dx, Shape::from((g.n, self.c, self.h, self.w))))
    }
}

/// `∂L/∂w` from the input and the upstream gradient.
struct WeightGrad {
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
}

impl WeightGrad {
    /// The convolution's shapes, from the input's and the upstream
    /// gradient's layouts.
    fn geometry(&self, xl: &Layout, gl: &Layout) -> Result<Geom> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (_, co, ho, wo) = gl.shape().dims4()?;
        Geom::new(n, c, co, h, w, self.kh, self.kw, self.stride, self.padding)?.with_gradient_of(ho, wo)
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "tfkd-depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(xl, gl)?;
        fn run<E: Float>(g: &Geom, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<Vec<E>> {
            Ok(weight_grad(g, slice(xs, xl, "the input")?, slice(gs, gl, "the gradient")?))
        }
        let out = by_dtype!(xs.dtype(), run, &g, xs, xl, gs, gl);
        Ok((out, Shape::from((g.co(), 1, self.kh, self.kw))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.geometry(xl, gl)?;
        let dk = crate::cuda::depthwise(crate::cuda::DepthwisePass::WeightGrad, (xs, xl), (gs, gl), g.cuda()?)?;
        Ok((dk, Shape::from((g.co(), 1, self.kh, self.kw))))
    }
}

avx2_dispatch!(input_grad_plane, input_grad_plane_avx2, input_grad_plane_impl, (g: &Geom, gy: &[E], k: &[E], dxp: &mut [E]));

avx2_dispatch!(weight_grad_plane, weight_grad_plane_avx2, weight_grad_plane_impl, (g: &Geom, xp: &[E], gp: &[E], acc: &mut [E]));
