//! The CPU convolution engine of [`super::conv2d`] for f32 and f64: the
//! forward pass and both gradients, one image at a time (the scheme of
//! PyTorch's `slow_conv2d`), with no buffer that grows with the batch.
//!
//! With `x: (N, C, H, W)`, `w: (O, C/G, k_h, k_w)`, `G` groups of
//! `C_g = C/G` input and `O_g = O/G` output channels, and `cols_{n,g}` the
//! im2col matrix of image `n`'s group `g`, `(C_g·k_h·k_w, H_o·W_o)`, whose
//! row `(c, a, b)`, column `(i, j)` holds `x̃[n, g·C_g + c, s·i + a, s·j + b]`
//! (`x̃`: `x` zero-padded by `p`):
//!
//! * forward: `y[n, g-block] (O_g × H_o·W_o) = W_g (O_g × C_g·k_h·k_w) · cols_{n,g}`,
//!   written straight into the NCHW output (its rows are the output planes);
//! * input gradient: `dcols = W_gᵀ · g[n, g-block]`, then col2im: every
//!   element of `dcols` is added to the input position it was read from
//!   (`∂x̃[n, c, s·i + a, s·j + b] += dcols[(c, a, b), (i, j)]`), positions in
//!   the padding being dropped. Any stride and padding, no flipped kernel;
//! * weight gradient: `∂W_g = Σ_n g[n, g-block] (O_g × H_o·W_o) · cols_{n,g}ᵀ`.
//!
//! `cols` lives in a per-thread scratch buffer of one image's size, kept
//! between ops (every element written, the padding as explicit zeros); for a 1×1, stride-1,
//! unpadded convolution the image itself is `cols` and no copy is made. The
//! products are the `gemm` crate's (candle's own CPU matmul): single-threaded
//! inside a rayon job per image when there are at least as many images as
//! threads, else split over the pool, image after image. The weight gradient
//! splits the batch into at most four fixed blocks of consecutive images,
//! accumulates each block's products in image order into its own partial
//! gradient, and adds the partials in block order, so its result depends
//! neither on the scheduling nor on the number of threads.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{avx2_dispatch, for_each_chunk, slice, Float, PARALLEL_GRAIN};

/// Shapes of one (grouped) convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    groups: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// From the input dims `(N, C, H, W)` and the kernel dims `(O, C/G, k_h, k_w)`.
    fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, cg, kh, kw): (usize, usize, usize, usize),
        p: usize,
        s: usize,
        groups: usize,
    ) -> Result<Self> {
        if groups == 0 || c != cg * groups || o % groups != 0 || s == 0 || kh == 0 || kw == 0
            || h + 2 * p < kh || w + 2 * p < kw
        {
            candle_core::bail!(
                "tfkd-conv-gemm: bad geometry: input ({n}, {c}, {h}, {w}), kernel ({o}, {cg}, {kh}, {kw}), \
                 groups {groups}, stride {s}, padding {p}"
            )
        }
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
        Ok(Self { n, c, h, w, o, groups, kh, kw, s, p, ho, wo })
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of `cols`: `C_g·k_h·k_w`.
    fn kdim(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn hwo(&self) -> usize {
        self.ho * self.wo
    }
    /// 1×1, stride 1, no padding: an image (group) is its own `cols`.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }
    /// Multiply-adds of one image's product (any of the three passes).
    fn work(&self) -> usize {
        self.o * self.kdim() * self.hwo()
    }
    /// Output columns `j` whose input column `s·j + b − p` lies in `[0, W)`,
    /// for kernel column `b`.
    fn cols_in(&self, b: usize) -> (usize, usize) {
        let (s, p, w, wo) = (self.s, self.p, self.w, self.wo);
        let lo = p.saturating_sub(b).div_ceil(s).min(wo);
        let hi = if w + p > b { ((w + p - b - 1) / s + 1).min(wo) } else { 0 }.max(lo);
        (lo, hi)
    }
    fn check(&self, what: &str, l: &Layout, want: (usize, usize, usize, usize)) -> Result<()> {
        if l.shape().dims4()? != want {
            candle_core::bail!("tfkd-conv-gemm: {what} has shape {:?}, want {want:?}", l.shape())
        }
        Ok(())
    }
    fn x_dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.h, self.w)
    }
    fn w_dims(&self) -> (usize, usize, usize, usize) {
        (self.o, self.cg(), self.kh, self.kw)
    }
    fn y_dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.o, self.ho, self.wo)
    }
}

/// The im2col matrix of one image's group `x` (`C_g` planes of `H × W`)
/// into `out` (`C_g·k_h·k_w × H_o·W_o`, every element written): row
/// `(c, a, b)`, column `(i, j)` is `x̃[c, s·i + a, s·j + b]`. For stride 1
/// each `(row, i)` is one contiguous copy, zeros at the ends.
fn im2col<E: Float>(g: &Geom, x: &[E], out: &mut [E]) {
    let (kh, kw, s, p, h, w, wo) = (g.kh, g.kw, g.s, g.p, g.h, g.w, g.wo);
    let zero = E::zero();
    for (t, row) in out.chunks_exact_mut(g.hwo()).enumerate() {
        let (ci, a, b) = (t / (kh * kw), t / kw % kh, t % kw);
        let (j_lo, j_hi) = g.cols_in(b);
        let plane = &x[ci * h * w..][..h * w];
        for (i, dst) in row.chunks_exact_mut(wo).enumerate() {
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

/// col2im, the transpose of [`im2col`]: adds every element of `cols`
/// (`C_g·k_h·k_w × H_o·W_o`) into `dx` (`C_g` planes of `H × W`) at the
/// position it was read from; elements of the padding are dropped. Rows in
/// order, so the sums have a fixed order.
#[inline(always)]
fn col2im_impl<E: Float>(g: &Geom, cols: &[E], dx: &mut [E]) {
    let (kh, kw, s, p, h, w, wo) = (g.kh, g.kw, g.s, g.p, g.h, g.w, g.wo);
    for (t, row) in cols.chunks_exact(g.hwo()).enumerate() {
        let (ci, a, b) = (t / (kh * kw), t / kw % kh, t % kw);
        let (j_lo, j_hi) = g.cols_in(b);
        if j_hi == j_lo {
            continue;
        }
        let first = s * j_lo + b - p;
        let plane = &mut dx[ci * h * w..][..h * w];
        for (i, src) in row.chunks_exact(wo).enumerate() {
            let r = (s * i + a) as isize - p as isize;
            if r < 0 || r as usize >= h {
                continue;
            }
            let dst = &mut plane[r as usize * w..][..w];
            let src = &src[j_lo..j_hi];
            if s == 1 {
                for (d, v) in dst[first..][..src.len()].iter_mut().zip(src) {
                    *d += *v;
                }
            } else {
                for (d, v) in dst[first..].iter_mut().step_by(s).zip(src) {
                    *d += *v;
                }
            }
        }
    }
}

avx2_dispatch!(col2im, col2im_avx2, col2im_impl, (g: &Geom, cols: &[E], dx: &mut [E]));

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, or `dst += lhs · rhs` with
/// `acc`, on operands given by their elements and (row, column) strides;
/// `dst` is row-major with row stride `dst_rs`. The `gemm` crate's kernel.
///
/// # Safety
/// `dst` must be valid for reads (with `acc`) and writes of `dst_len`
/// elements; without `acc` it may be uninitialised (it is only written).
// The raw-pointer interface of `gemm`: pointers, strides and flags.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<E: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut E,
    dst_len: usize,
    dst_rs: usize,
    acc: bool,
    (lhs, lhs_rs, lhs_cs): (&[E], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[E], usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let fits = |len: usize, rows: usize, rs: usize, cols: usize, cs: usize| {
        rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
    };
    assert!(
        fits(dst_len, m, dst_rs, n, 1) && fits(lhs.len(), m, lhs_rs, k, lhs_cs) && fits(rhs.len(), k, rhs_rs, n, rhs_cs),
        "tfkd-conv-gemm: operand out of bounds"
    );
    let one = E::one();
    // SAFETY: every index the product touches is in bounds (checked above);
    // `dst` is valid per the caller; the element type is f32 or f64.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            one,
            one,
            false,
            false,
            false,
            par,
        )
    }
}

/// Calls `f(cols, n, out_n, parallelism)` for every image `n`, `out_n` being
/// its `chunk`-sized piece of `out`: one rayon job per image with
/// single-threaded products when there are at least as many images as
/// threads (or little work), else image after image with the products split
/// over the pool. `cols` is the job's scratch buffer.
fn per_image<T, E, F>(g: &Geom, out: &mut [T], chunk: usize, f: F)
where
    T: Send,
    E: Elem,
    F: Fn(&mut Vec<E>, usize, &mut [T], Parallelism) + Sync + Send,
{
    let threads = rayon::current_num_threads();
    if g.n >= threads || g.n.saturating_mul(g.work()) < 2 * PARALLEL_GRAIN {
        for_each_chunk(out, chunk, g.work(), |_: &mut (), i, o| E::with_scratch(|cols| f(cols, i, o, Parallelism::None)));
    } else {
        E::with_scratch(|cols| {
            for (i, o) in out.chunks_mut(chunk).enumerate() {
                f(cols, i, o, Parallelism::Rayon(threads));
            }
        })
    }
}

/// The element types of the engine: [`Float`] with a per-thread scratch
/// buffer for `cols`.
trait Elem: Float {
    /// Runs `f` on this thread's scratch buffer (kept between calls and
    /// ops, so it is allocated and zero-filled once per thread and size, not
    /// per job), or on a fresh one should it be in use already.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
}

macro_rules! elem {
    ($t:ty, $key:ident) => {
        thread_local! {
            static $key: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }
        impl Elem for $t {
            fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
                $key.with(|buf| match buf.try_borrow_mut() {
                    Ok(mut buf) => f(&mut buf),
                    Err(_) => f(&mut Vec::new()),
                })
            }
        }
    };
}
elem!(f32, SCRATCH_F32);
elem!(f64, SCRATCH_F64);

/// `buf` resized to `len` (zero-filled only where it grows).
fn scratch<E: Float>(buf: &mut Vec<E>, len: usize) -> &mut [E] {
    if buf.len() < len {
        buf.resize(len, E::zero());
    }
    &mut buf[..len]
}

/// `cols_{n,g}` of image `ni`'s group `gi`, `(C_g·k_h·k_w, H_o·W_o)`
/// row-major: the group's channels themselves for a pointwise convolution,
/// else its im2col written into `buf`.
fn image_cols<'a, E: Float>(g: &Geom, x: &'a [E], ni: usize, gi: usize, buf: &'a mut Vec<E>) -> &'a [E] {
    let (cg, hw) = (g.cg(), g.hw());
    let x_g = &x[(ni * g.c + gi * cg) * hw..][..cg * hw];
    if g.pointwise() {
        return x_g;
    }
    let cols = scratch(buf, g.kdim() * g.hwo());
    im2col(g, x_g, cols);
    cols
}

/// Takes `v`'s spare capacity as `len` elements, hands them to `fill`,
/// which must write every one, and returns the vector of them.
fn filled<E: Float>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<E>])) -> Vec<E> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (the callers' contract,
    // see `forward` and `input_grad`).
    unsafe { v.set_len(len) };
    v
}

/// The forward pass: `y (N, O, H_o, W_o)` from `x (N, C, H, W)` and
/// `w (O, C/G, k_h, k_w)`, both contiguous.
fn forward<E: Elem>(g: &Geom, x: &[E], w: &[E]) -> Vec<E> {
    let (og, kdim, hwo) = (g.og(), g.kdim(), g.hwo());
    let chunk = g.o * hwo;
    filled(g.n * chunk, |y| {
        per_image(g, y, chunk, |cols: &mut Vec<E>, ni, y_n, par| {
            for gi in 0..g.groups {
                let rhs = image_cols(g, x, ni, gi, cols);
                let dst = &mut y_n[gi * og * hwo..][..og * hwo];
                // SAFETY: `dst` is `O_g × H_o·W_o` row-major, each element
                // written (no `acc`).
                unsafe {
                    matmul(
                        (og, hwo, kdim),
                        dst.as_mut_ptr().cast::<E>(),
                        dst.len(),
                        hwo,
                        false,
                        (&w[gi * og * kdim..][..og * kdim], kdim, 1),
                        (rhs, hwo, 1),
                        par,
                    )
                }
            }
        })
    })
}

/// `∂L/∂x (N, C, H, W)` from the upstream gradient `gr (N, O, H_o, W_o)`
/// and `w`: per image and group `dcols = W_gᵀ · gr[n, g-block]`, then
/// col2im (for a pointwise convolution `dcols` is the gradient itself).
fn input_grad<E: Elem>(g: &Geom, gr: &[E], w: &[E]) -> Vec<E> {
    let (cg, og, kdim, hw, hwo) = (g.cg(), g.og(), g.kdim(), g.hw(), g.hwo());
    let chunk = g.c * hw;
    filled(g.n * chunk, |dx| {
        per_image(g, dx, chunk, |cols: &mut Vec<E>, ni, dx_n, par| {
            if !g.pointwise() {
                for v in dx_n.iter_mut() {
                    v.write(E::zero());
                }
            }
            for gi in 0..g.groups {
                let lhs = (&w[gi * og * kdim..][..og * kdim], 1, kdim);
                let rhs = (&gr[(ni * g.o + gi * og) * hwo..][..og * hwo], hwo, 1);
                let dx_g = &mut dx_n[gi * cg * hw..][..cg * hw];
                if g.pointwise() {
                    // SAFETY: `dx_g` is `C_g × H·W` row-major, each element
                    // written (no `acc`).
                    unsafe { matmul((kdim, hwo, og), dx_g.as_mut_ptr().cast::<E>(), dx_g.len(), hwo, false, lhs, rhs, par) }
                } else {
                    let cols = scratch(cols, kdim * hwo);
                    // SAFETY: `cols` is an initialised `C_g·k_h·k_w × H_o·W_o` buffer.
                    unsafe { matmul((kdim, hwo, og), cols.as_mut_ptr(), cols.len(), hwo, false, lhs, rhs, par) }
                    // SAFETY: zeroed above.
                    let dx_g = unsafe { &mut *(dx_g as *mut [MaybeUninit<E>] as *mut [E]) };
                    col2im(g, cols, dx_g);
                }
            }
        })
    })
}

/// Partial sums of the weight gradient: a fixed number (not one per thread),
/// so that its result does not depend on the thread count either.
const WEIGHT_GRAD_BLOCKS: usize = 4;

/// `∂L/∂w (O, C/G, k_h, k_w)` from `x` and the upstream gradient `gr`:
/// `∂W_g = Σ_n gr[n, g-block] · cols_{n,g}ᵀ`, the batch split into
/// `min(N, 4)` fixed blocks of consecutive images, each summed in image
/// order into its own partial (the blocks in parallel), the partials added
/// in block order. A single image's products are split over the pool
/// instead (`gemm` splits the output, not the sums).
fn weight_grad<E: Elem>(g: &Geom, x: &[E], gr: &[E]) -> Vec<E> {
    let (og, kdim, hwo) = (g.og(), g.kdim(), g.hwo());
    let len = g.o * kdim;
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && g.n.saturating_mul(g.work()) >= 2 * PARALLEL_GRAIN;
    let blocks = g.n.clamp(1, WEIGHT_GRAD_BLOCKS);
    let par = if parallel && blocks == 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let block = |b: usize, dw: &mut [E]| E::with_scratch(|cols| {
        let (lo, hi) = (b * g.n / blocks, (b + 1) * g.n / blocks);
        for ni in lo..hi {
            for gi in 0..g.groups {
                // Read as cols_{n,g}ᵀ: (H_o·W_o × C_g·k_h·k_w), column-major.
                let rhs = image_cols(g, x, ni, gi, cols);
                let dst = &mut dw[gi * og * kdim..][..og * kdim];
                // SAFETY: `dst` is an initialised `O_g × C_g·k_h·k_w` buffer.
                unsafe {
                    matmul(
                        (og, kdim, hwo),
                        dst.as_mut_ptr(),
                        dst.len(),
                        kdim,
                        ni > lo,
                        (&gr[(ni * g.o + gi * og) * hwo..][..og * hwo], hwo, 1),
                        (rhs, 1, hwo),
                        par,
                    )
                }
            }
        }
    });
    let mut parts = vec![E::zero(); blocks * len];
    if blocks == 1 {
        block(0, &mut parts);
        return parts;
    }
    if parallel {
        parts.par_chunks_mut(len).enumerate().for_each(|(b, dw)| block(b, dw));
    } else {
        parts.chunks_mut(len).enumerate().for_each(|(b, dw)| block(b, dw));
    }
    let (dw, rest) = parts.split_at_mut(len);
    for part in rest.chunks_exact(len) {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += *v;
        }
    }
    parts.truncate(len);
    parts
}

/// Which pass a [`ConvGemm`] op computes, and from which operands.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// `(x, w) → y`.
    Forward,
    /// `(∂L/∂y, w) → ∂L/∂x`.
    InputGrad,
    /// `(x, ∂L/∂y) → ∂L/∂w`.
    WeightGrad,
}

/// One pass of the convolution as a CPU op of two contiguous operands.
struct ConvGemm {
    g: Geom,
    pass: Pass,
}

impl ConvGemm {
    fn run<E: Elem>(&self, a: &[E], b: &[E]) -> Vec<E> {
        match self.pass {
            Pass::Forward => forward(&self.g, a, b),
            Pass::InputGrad => input_grad(&self.g, a, b),
            Pass::WeightGrad => weight_grad(&self.g, a, b),
        }
    }
}

impl CustomOp2 for ConvGemm {
    fn name(&self) -> &'static str {
        "tfkd-conv-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (first, second, out) = match self.pass {
            Pass::Forward => (("the input", g.x_dims()), ("the kernel", g.w_dims()), g.y_dims()),
            Pass::InputGrad => (("the gradient", g.y_dims()), ("the kernel", g.w_dims()), g.x_dims()),
            Pass::WeightGrad => (("the input", g.x_dims()), ("the gradient", g.y_dims()), g.w_dims()),
        };
        g.check(first.0, l1, first.1)?;
        g.check(second.0, l2, second.1)?;
        let out_data = match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => CpuStorage::F32(self.run(slice::<f32>(s1, l1, first.0)?, slice::<f32>(s2, l2, second.0)?)),
            (DType::F64, DType::F64) => CpuStorage::F64(self.run(slice::<f64>(s1, l1, first.0)?, slice::<f64>(s2, l2, second.0)?)),
            (a, b) => candle_core::bail!("tfkd-conv-gemm: unsupported dtypes {a:?}, {b:?}"),
        };
        Ok((out_data, Shape::from(out)))
    }
}

/// The forward convolution of `x (N, C, H, W)` by `w (O, C/G, k_h, k_w)`
/// (no gradient tracking: the caller wraps it). CPU, f32 or f64.
pub(crate) fn forward_op(x: &Tensor, w: &Tensor, p: usize, s: usize, groups: usize) -> Result<Tensor> {
    let g = Geom::new(x.dims4()?, w.dims4()?, p, s, groups)?;
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &ConvGemm { g, pass: Pass::Forward })
}

/// `∂L/∂x` for the upstream gradient `gr` of the convolution of `x` by `w`.
pub(crate) fn input_grad_op(x: &Tensor, w: &Tensor, gr: &Tensor, p: usize, s: usize, groups: usize) -> Result<Tensor> {
    let g = Geom::new(x.dims4()?, w.dims4()?, p, s, groups)?;
    gr.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &ConvGemm { g, pass: Pass::InputGrad })
}

/// `∂L/∂w` for the upstream gradient `gr` of the convolution of `x` by `w`.
pub(crate) fn weight_grad_op(x: &Tensor, w: &Tensor, gr: &Tensor, p: usize, s: usize, groups: usize) -> Result<Tensor> {
    let g = Geom::new(x.dims4()?, w.dims4()?, p, s, groups)?;
    x.contiguous()?.apply_op2_no_bwd(&gr.contiguous()?, &ConvGemm { g, pass: Pass::WeightGrad })
}
