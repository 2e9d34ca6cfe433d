//! The CPU convolution engine of [`super::conv2d`] for f32 and f64: the
//! forward pass and both gradients, a block of images at a time (the scheme
//! of PyTorch's `slow_conv2d`, with images of small feature maps multiplied
//! together), with no buffer that grows with the batch.
//!
//! With `x: (N, C, H, W)`, `w: (O, C/G, k_h, k_w)`, `G` groups of
//! `C_g = C/G` input and `O_g = O/G` output channels, and `cols_{n,g}` the
//! im2col matrix of image `n`'s group `g`, `(C_g·k_h·k_w, H_o·W_o)`, whose
//! row `(c, a, b)`, column `(i, j)` holds `x̃[n, g·C_g + c, s·i + a, s·j + b]`
//! (`x̃`: `x` zero-padded by `p`), and `cols_{B,g}` the `cols` of a block `B`
//! of consecutive images side by side, `(C_g·k_h·k_w, |B|·H_o·W_o)`:
//!
//! * forward: `y[B, g-block] (O_g × |B|·H_o·W_o) = W_g (O_g × C_g·k_h·k_w) · cols_{B,g}`,
//!   written straight into the NCHW output when `|B| = 1` (its rows are the
//!   output planes), else scattered into it from a scratch product;
//! * input gradient, for stride 1 and a square kernel: the forward pass of
//!   `g` padded by `k − 1 − p` with the flipped, transposed kernel
//!   ([`Geom::transposed`]); otherwise `dcols = W_gᵀ · g[B, g-block]`, then
//!   col2im per image:
//!   every element of `dcols` is added to the input position it was read
//!   from (`∂x̃[n, c, s·i + a, s·j + b] += dcols[(c, a, b), (n, i, j)]`),
//!   positions in the padding being dropped. Any stride and padding, no
//!   flipped kernel;
//! * weight gradient: `∂W_g = Σ_B g[B, g-block] · cols_{B,g}ᵀ`, computed as
//!   its transpose `cols_{B,g} · g[B, g-block]ᵀ` where `O_g` is the smaller
//!   side (see [`weight_grad`]).
//!
//! A block holds enough images for a product of at least 256 columns
//! (`|B| = ⌈256 / H_o·W_o⌉`: 1 image at 16×16 and above, 16 at 4×4), so that
//! a late layer's products are not 16 columns wide and its weight gradient
//! is not read and written once per image. `cols` and the gathered
//! gradient live in per-thread scratch buffers, kept between ops (every
//! element written, the padding as explicit zeros); for one image of a 1×1,
//! stride-1, unpadded convolution the image itself is `cols` and no copy is
//! made. The products are the `gemm` crate's (candle's own CPU matmul):
//! single-threaded inside a rayon job per block when there are at least as
//! many blocks as threads, else split over the pool, block after block. The
//! weight gradient splits the batch into at most four fixed parts of
//! consecutive images, accumulates each part's products in block order
//! into its own partial gradient, and adds the partials in part order, so
//! its result depends neither on the scheduling nor on the number of
//! threads. Blocks depend only on the shapes.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{avx2_dispatch, filled, for_each_chunk, slice, write_copy, Float, PARALLEL_GRAIN};

/// Columns a product should have at least: images whose feature maps are
/// smaller are multiplied together (see [`Geom::images_per_product`]).
const MIN_PRODUCT_COLS: usize = 256;

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
    /// Images whose products are computed as one (their `cols` side by
    /// side): enough for [`MIN_PRODUCT_COLS`] columns. One image of a late,
    /// small feature map (4×4: 16 columns) makes a product too narrow for
    /// `gemm`'s micro-kernels, and the weight gradient's output would be
    /// read and written once per image.
    fn images_per_product(&self) -> usize {
        MIN_PRODUCT_COLS.div_ceil(self.hwo().max(1)).clamp(1, self.n.max(1))
    }
    /// For stride 1, a square kernel of more than one tap and `p < k`, the
    /// input gradient is itself a convolution: of the upstream gradient
    /// `(N, O, H_o, W_o)`, padded by `k − 1 − p`, with the kernel flipped
    /// in both spatial dims and transposed per group (`(C, O_g, k, k)`;
    /// [`flipped_transposed`]), stride 1, the same groups. Run as a forward
    /// pass its products have `O_g·k²` terms each instead of the `O_g` of
    /// `W_gᵀ · g`, and no col2im follows: about twice the throughput on
    /// ResNet18's 3×3 convs.
    fn transposed(&self) -> Option<Geom> {
        if self.s != 1 || self.kh != self.kw || self.kh < 2 || self.p >= self.kh {
            return None;
        }
        Geom::new((self.n, self.o, self.ho, self.wo), (self.c, self.og(), self.kh, self.kw), self.kh - 1 - self.p, 1, self.groups)
            .ok()
            .filter(|t| (t.ho, t.wo) == (self.h, self.w))
    }
    /// Multiply-adds of one image's product (any of the three passes).
    fn work(&self) -> usize {
        self.o * self.kdim() * self.hwo()
    }
    /// Output columns `j` whose input column `s·j + b − p` lies in `[0, W)`,
    /// for kernel column `b`.
    fn cols_in(&self, b: usize) -> (usize, usize) {
        super::inside_range(self.w, self.wo, self.s, self.p, b)
    }
    /// Output rows `i` whose input row `s·i + a − p` lies in `[0, H)`, for
    /// kernel row `a`.
    fn rows_in(&self, a: usize) -> (usize, usize) {
        super::inside_range(self.h, self.ho, self.s, self.p, a)
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
/// into `out`, rows `ld` elements apart (`ld ≥ H_o·W_o`; the first
/// `H_o·W_o` of each row are written, every one of them): row `(c, a, b)`,
/// column `(i, j)` is `x̃[c, s·i + a, s·j + b]`. For stride 1 each
/// `(row, i)` is one contiguous copy, zeros at the ends.
///
/// Where the output is as wide as the input (stride 1, `2p = k_w − 1`: the
/// "same" 3×3 convs), the input rows a row of `cols` reads are one
/// contiguous run of the plane, shifted: one copy per row of `cols` instead
/// of one per `(row, i)`, then the columns that fall in the padding are
/// zeroed. With the bounds computed once per call, this took im2col from
/// about 15 % of a ResNet18 step (short `memmove`/`memset` calls and
/// divisions per tap: 32 floats a copy at 32×32, 4 at 4×4) to about 10 %.
#[inline(always)]
fn im2col_impl<E: Float>(g: &Geom, x: &[E], out: &mut [E], ld: usize) {
    let (kh, kw, s, p, h, w, wo, hwo) = (g.kh, g.kw, g.s, g.p, g.h, g.w, g.wo, g.hwo());
    let zero = E::zero();
    let same_width = s == 1 && wo == w;
    // Per kernel row `a`, the output rows `i` whose input row `s·i + a − p`
    // lies in `[0, H)`; per kernel column, the same for columns: computed
    // once per call, not per tap (their divisions were a quarter of im2col
    // at 4×4).
    let rows_in: Vec<_> = (0..kh).map(|a| g.rows_in(a)).collect();
    let cols_in: Vec<_> = (0..kw).map(|b| g.cols_in(b)).collect();
    let mut t = 0;
    for plane in x.chunks_exact(h * w).take(g.cg()) {
        for (a, &(i_lo, i_hi)) in rows_in.iter().enumerate() {
            for (b, &(j_lo, j_hi)) in cols_in.iter().enumerate() {
                let row = &mut out[t * ld..][..hwo];
                t += 1;
                row[..i_lo * wo].fill(zero);
                row[i_hi * wo..].fill(zero);
                if j_hi == j_lo {
                    row[i_lo * wo..i_hi * wo].fill(zero);
                    continue;
                }
                let first = s * j_lo + b - p;
                if same_width {
                    if i_hi > i_lo {
                        // dst `q = i·W + j` reads src `q + (a − p)·W + b − p`,
                        // for `q` from `(i_lo, j_lo)` to `(i_hi − 1, j_hi − 1)`.
                        let (q0, q1) = (i_lo * wo + j_lo, (i_hi - 1) * wo + j_hi);
                        row[q0..q1].copy_from_slice(&plane[(i_lo + a - p) * w + first..][..q1 - q0]);
                    }
                } else {
                    for i in i_lo..i_hi {
                        let src = &plane[(s * i + a - p) * w + first..];
                        let dst = &mut row[i * wo + j_lo..i * wo + j_hi];
                        if s == 1 {
                            dst.copy_from_slice(&src[..dst.len()]);
                        } else {
                            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                                *d = *v;
                            }
                        }
                    }
                }
                // The columns that read the padding, column by column (at
                // most `p` on each side): a row's few edge elements would be
                // a `memset` call each.
                for j in (0..j_lo).chain(j_hi..wo) {
                    let mut q = i_lo * wo + j;
                    while q < i_hi * wo {
                        row[q] = zero;
                        q += wo;
                    }
                }
            }
        }
    }
}

avx2_dispatch!(im2col, im2col_avx2, im2col_impl, (g: &Geom, x: &[E], out: &mut [E], ld: usize));

/// col2im, the transpose of [`im2col`]: adds every element of `cols`
/// (`C_g·k_h·k_w` rows of `H_o·W_o`, `ld` apart) into `dx` (`C_g` planes of
/// `H × W`) at the position it was read from; elements of the padding are
/// dropped. Rows in order, so the sums have a fixed order.
#[inline(always)]
fn col2im_impl<E: Float>(g: &Geom, cols: &[E], ld: usize, dx: &mut [E]) {
    let (kh, kw, s, p, h, w, wo) = (g.kh, g.kw, g.s, g.p, g.h, g.w, g.wo);
    for t in 0..g.kdim() {
        let row = &cols[t * ld..][..g.hwo()];
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

avx2_dispatch!(col2im, col2im_avx2, col2im_impl, (g: &Geom, cols: &[E], ld: usize, dx: &mut [E]));

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

/// Calls `f(scratch, n0, out_b, parallelism)` for every block of
/// [`Geom::images_per_product`] consecutive images starting at image `n0`,
/// `out_b` being their `chunk`-per-image piece of `out` (the last block may
/// hold fewer images): one rayon job per block with single-threaded
/// products when there are at least as many blocks as threads (or little
/// work), else block after block with the products split over the pool.
fn per_block<T, E, F>(g: &Geom, out: &mut [T], chunk: usize, f: F)
where
    T: Send,
    E: Elem,
    F: Fn(&mut Scratch<E>, usize, &mut [T], Parallelism) + Sync + Send,
{
    let threads = rayon::current_num_threads();
    let nb = g.images_per_product();
    let blocks = g.n.div_ceil(nb);
    if blocks >= threads || g.n.saturating_mul(g.work()) < 2 * PARALLEL_GRAIN {
        for_each_chunk(out, nb * chunk, nb * g.work(), |_: &mut (), i, o| {
            E::with_scratch(|s| f(s, i * nb, o, Parallelism::None))
        });
    } else {
        E::with_scratch(|s| {
            for (i, o) in out.chunks_mut(nb * chunk).enumerate() {
                f(s, i * nb, o, Parallelism::Rayon(threads));
            }
        })
    }
}

/// A thread's scratch buffers, kept between calls and ops (so they are
/// allocated and zero-filled once per thread and size, not per job).
#[derive(Default)]
struct Scratch<E> {
    /// `cols` of a block of images.
    cols: Vec<E>,
    /// A block's upstream gradient gathered into one matrix.
    grad: Vec<E>,
    /// A block's forward product before it is scattered into NCHW.
    product: Vec<E>,
}

/// The element types of the engine: [`Float`] with a per-thread [`Scratch`].
trait Elem: Float {
    /// Runs `f` on this thread's scratch buffers, or on fresh ones should
    /// they be in use already.
    fn with_scratch<R>(f: impl FnOnce(&mut Scratch<Self>) -> R) -> R;
}

macro_rules! elem {
    ($t:ty, $key:ident) => {
        thread_local! {
            static $key: RefCell<Scratch<$t>> =
                const { RefCell::new(Scratch { cols: Vec::new(), grad: Vec::new(), product: Vec::new() }) };
        }
        impl Elem for $t {
            fn with_scratch<R>(f: impl FnOnce(&mut Scratch<Self>) -> R) -> R {
                $key.with(|buf| match buf.try_borrow_mut() {
                    Ok(mut buf) => f(&mut buf),
                    Err(_) => f(&mut Scratch::default()),
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

/// `cols` of images `n0 .. n0 + m`, group `gi`: `(C_g·k_h·k_w, m·H_o·W_o)`
/// row-major, image `b`'s columns at `b·H_o·W_o`. For one image of a
/// pointwise convolution it is the group's channels themselves, else it is
/// written into `buf` (im2col, or for a pointwise convolution the images'
/// channel planes side by side).
fn block_cols<'a, E: Float>(g: &Geom, x: &'a [E], n0: usize, m: usize, gi: usize, buf: &'a mut Vec<E>) -> &'a [E] {
    let (cg, hw, hwo) = (g.cg(), g.hw(), g.hwo());
    let image = |b: usize| &x[((n0 + b) * g.c + gi * cg) * hw..][..cg * hw];
    if m == 1 && g.pointwise() {
        return image(0);
    }
    let ld = m * hwo;
    let cols = scratch(buf, g.kdim() * ld);
    for b in 0..m {
        if g.pointwise() {
            for (c, plane) in image(b).chunks_exact(hw).enumerate() {
                cols[c * ld + b * hwo..][..hw].copy_from_slice(plane);
            }
        } else {
            im2col(g, image(b), &mut cols[b * hwo..], ld);
        }
    }
    cols
}

/// The upstream gradient of images `n0 .. n0 + m`, group `gi`, as one
/// `(O_g, m·H_o·W_o)` row-major matrix (image `b`'s columns at
/// `b·H_o·W_o`): for one image the gradient itself, else gathered into
/// `buf`.
fn block_grad<'a, E: Float>(g: &Geom, gr: &'a [E], n0: usize, m: usize, gi: usize, buf: &'a mut Vec<E>) -> &'a [E] {
    let (og, hwo) = (g.og(), g.hwo());
    let image = |b: usize| &gr[((n0 + b) * g.o + gi * og) * hwo..][..og * hwo];
    if m == 1 {
        return image(0);
    }
    let ld = m * hwo;
    let dst = scratch(buf, og * ld);
    for b in 0..m {
        for (o, row) in image(b).chunks_exact(hwo).enumerate() {
            dst[o * ld + b * hwo..][..hwo].copy_from_slice(row);
        }
    }
    dst
}

/// Writes row `r` of `src` (`rows × m·len`, rows `m·len` apart) for image
/// `b` into `dst[b·stride + r·len ..][..len]`: a block's product back into
/// per-image planes.
fn scatter_rows<E: Float>(src: &[E], rows: usize, m: usize, len: usize, dst: &mut [MaybeUninit<E>], stride: usize) {
    let ld = m * len;
    for b in 0..m {
        for r in 0..rows {
            write_copy(&mut dst[b * stride + r * len..][..len], &src[r * ld + b * len..][..len]);
        }
    }
}

/// The forward pass: `y (N, O, H_o, W_o)` from `x (N, C, H, W)` and
/// `w (O, C/G, k_h, k_w)`, both contiguous: per block of images and group,
/// `Y = W_g · cols`, written straight into the NCHW output for a single
/// image, else through [`Scratch::product`].
fn forward<E: Elem>(g: &Geom, x: &[E], w: &[E]) -> Vec<E> {
    let (og, kdim, hwo) = (g.og(), g.kdim(), g.hwo());
    let chunk = g.o * hwo;
    filled(g.n * chunk, |y| {
        per_block(g, y, chunk, |s: &mut Scratch<E>, n0, y_b, par| {
            let m = y_b.len() / chunk;
            let ld = m * hwo;
            for gi in 0..g.groups {
                let rhs = block_cols(g, x, n0, m, gi, &mut s.cols);
                let lhs = (&w[gi * og * kdim..][..og * kdim], kdim, 1);
                if m == 1 {
                    let dst = &mut y_b[gi * og * hwo..][..og * hwo];
                    // SAFETY: `dst` is `O_g × H_o·W_o` row-major, each element
                    // written (no `acc`).
                    unsafe { matmul((og, hwo, kdim), dst.as_mut_ptr().cast::<E>(), dst.len(), hwo, false, lhs, (rhs, hwo, 1), par) }
                } else {
                    let product = scratch(&mut s.product, og * ld);
                    // SAFETY: `product` is an initialised `O_g × m·H_o·W_o` buffer.
                    unsafe { matmul((og, ld, kdim), product.as_mut_ptr(), product.len(), ld, false, lhs, (rhs, ld, 1), par) }
                    scatter_rows(product, og, m, hwo, &mut y_b[gi * og * hwo..], chunk);
                }
            }
        })
    })
}

/// `∂L/∂x (N, C, H, W)` from the upstream gradient `gr (N, O, H_o, W_o)`
/// and `w`: per block of images and group `dcols = W_gᵀ · gr[block, g-block]`,
/// then col2im per image (for a pointwise convolution `dcols` is the
/// gradient itself).
fn input_grad<E: Elem>(g: &Geom, gr: &[E], w: &[E]) -> Vec<E> {
    if let Some(t) = g.transposed() {
        return forward(&t, gr, &flipped_transposed(g, w));
    }
    let (cg, og, kdim, hw, hwo) = (g.cg(), g.og(), g.kdim(), g.hw(), g.hwo());
    let chunk = g.c * hw;
    filled(g.n * chunk, |dx| {
        per_block(g, dx, chunk, |s: &mut Scratch<E>, n0, dx_b, par| {
            let m = dx_b.len() / chunk;
            let ld = m * hwo;
            if !g.pointwise() {
                for v in dx_b.iter_mut() {
                    v.write(E::zero());
                }
            }
            for gi in 0..g.groups {
                let lhs = (&w[gi * og * kdim..][..og * kdim], 1, kdim);
                let rhs = (block_grad(g, gr, n0, m, gi, &mut s.grad), ld, 1);
                if g.pointwise() && m == 1 {
                    let dx_g = &mut dx_b[gi * cg * hw..][..cg * hw];
                    // SAFETY: `dx_g` is `C_g × H·W` row-major, each element
                    // written (no `acc`).
                    unsafe { matmul((kdim, hwo, og), dx_g.as_mut_ptr().cast::<E>(), dx_g.len(), hwo, false, lhs, rhs, par) }
                    continue;
                }
                let cols = scratch(&mut s.cols, kdim * ld);
                // SAFETY: `cols` is an initialised `C_g·k_h·k_w × m·H_o·W_o` buffer.
                unsafe { matmul((kdim, ld, og), cols.as_mut_ptr(), cols.len(), ld, false, lhs, rhs, par) }
                if g.pointwise() {
                    scatter_rows(cols, cg, m, hw, &mut dx_b[gi * cg * hw..], chunk);
                    continue;
                }
                for b in 0..m {
                    let dx_g = &mut dx_b[b * chunk + gi * cg * hw..][..cg * hw];
                    // SAFETY: zeroed above.
                    let dx_g = unsafe { &mut *(dx_g as *mut [MaybeUninit<E>] as *mut [E]) };
                    col2im(g, &cols[b * hwo..], ld, dx_g);
                }
            }
        })
    })
}

/// The kernel of [`Geom::transposed`]: `w'[g·C_g + c, o, a, b] =
/// w[g·O_g + o, c, k_h − 1 − a, k_w − 1 − b]`, shape `(C, O_g, k_h, k_w)`.
fn flipped_transposed<E: Float>(g: &Geom, w: &[E]) -> Vec<E> {
    let (cg, og, kh, kw) = (g.cg(), g.og(), g.kh, g.kw);
    let mut out = Vec::with_capacity(w.len());
    for gi in 0..g.groups {
        for c in 0..cg {
            for o in 0..og {
                let taps = &w[((gi * og + o) * cg + c) * kh * kw..][..kh * kw];
                out.extend(taps.iter().rev());
            }
        }
    }
    out
}

/// Partial sums of the weight gradient: a fixed number (not one per thread),
/// so that its result does not depend on the thread count either.
const WEIGHT_GRAD_BLOCKS: usize = 4;

/// `∂L/∂w (O, C/G, k_h, k_w)` from `x` and the upstream gradient `gr`:
/// `∂W_g = Σ_blocks gr[block, g-block] · cols_{block,g}ᵀ`, the batch split
/// into `min(N, 4)` fixed parts of consecutive images, each summed block of
/// images after block into its own partial (the parts in parallel), the
/// partials added in part order. With a single part the products are split
/// over the pool instead (`gemm` splits the output, not the sums).
///
/// Where a group has fewer output channels than `cols` rows (`O_g <
/// C_g·k_h·k_w`: every k×k conv), the partials hold `∂W_gᵀ` (`C_g·k_h·k_w ×
/// O_g`), which the part sum transposes back. `gemm` packs one operand of a
/// product into its micro-kernel's layout and reads the other in place; for
/// `∂W_g` that is the transpose of `cols` (the larger operand, a strided
/// gather: 13 % of a ResNet18 step), for `∂W_gᵀ` the transpose of the
/// gradient, `k_h·k_w` times smaller. The sums run in the same order.
fn weight_grad<E: Elem>(g: &Geom, x: &[E], gr: &[E]) -> Vec<E> {
    let (og, kdim, hwo) = (g.og(), g.kdim(), g.hwo());
    let len = g.o * kdim;
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && g.n.saturating_mul(g.work()) >= 2 * PARALLEL_GRAIN;
    let parts = g.n.clamp(1, WEIGHT_GRAD_BLOCKS);
    let par = if parallel && parts == 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let nb = g.images_per_product();
    let transposed = og < kdim;
    let part = |b: usize, dw: &mut [MaybeUninit<E>]| E::with_scratch(|s| {
        let (lo, hi) = (b * g.n / parts, (b + 1) * g.n / parts);
        for n0 in (lo..hi).step_by(nb) {
            let m = nb.min(hi - n0);
            let ld = m * hwo;
            for gi in 0..g.groups {
                let cols = block_cols(g, x, n0, m, gi, &mut s.cols);
                let grad = block_grad(g, gr, n0, m, gi, &mut s.grad);
                let dst = &mut dw[gi * og * kdim..][..og * kdim];
                let dst_ptr = dst.as_mut_ptr().cast::<E>();
                // SAFETY: `dst` is an `O_g × C_g·k_h·k_w` buffer (or its
                // transpose), written whole by the part's first block
                // (no `acc`), read and added to by the others.
                unsafe {
                    if transposed {
                        // ∂W_gᵀ += cols · gradᵀ, gradᵀ read column-major.
                        matmul((kdim, og, ld), dst_ptr, dst.len(), og, n0 > lo, (cols, ld, 1), (grad, 1, ld), par)
                    } else {
                        // ∂W_g += grad · colsᵀ, colsᵀ read column-major.
                        matmul((og, kdim, ld), dst_ptr, dst.len(), kdim, n0 > lo, (grad, ld, 1), (cols, 1, ld), par)
                    }
                }
            }
        }
    });
    // Every part holds at least one image (`parts ≤ N`), so its first block
    // writes all of its partial: no zero-fill.
    let mut partials = filled(parts * len, |partials| {
        if parallel && parts > 1 {
            partials.par_chunks_mut(len).enumerate().for_each(|(b, dw)| part(b, dw));
        } else {
            partials.chunks_mut(len).enumerate().for_each(|(b, dw)| part(b, dw));
        }
    });
    // The partials added into the first in part order, in chunks on every
    // core.
    if parts > 1 {
        let (sum, rest) = partials.split_at_mut(len);
        const SUM_CHUNK: usize = 16 * 1024;
        for_each_chunk(sum, SUM_CHUNK, SUM_CHUNK * parts, |_: &mut (), i, dst| {
            for p in rest.chunks_exact(len) {
                for (d, v) in dst.iter_mut().zip(&p[i * SUM_CHUNK..]) {
                    *d += *v;
                }
            }
        });
    }
    partials.truncate(len);
    if !transposed {
        return partials;
    }
    // Each group's `∂W_gᵀ` transposed back, 16 rows of `∂W` at a time (a
    // line of `∂W_gᵀ` read per tap, 16 rows written in step).
    const ROWS: usize = 16;
    filled(len, |dw| {
        for_each_chunk(dw, ROWS * kdim, ROWS * kdim, |_: &mut (), block, dst| {
            let rows = dst.len() / kdim;
            let mut from = [0; ROWS];
            for (i, f) in from.iter_mut().enumerate().take(rows) {
                let r = block * ROWS + i;
                *f = (r / og) * og * kdim + r % og;
            }
            for kk in 0..kdim {
                for (i, &f) in from[..rows].iter().enumerate() {
                    dst[i * kdim + kk].write(partials[f + kk * og]);
                }
            }
        })
    })
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

/// The forward convolution on CPU storages (`x` and `w` contiguous), for an
/// op that computes it inside its own `cpu_fwd`.
pub(crate) fn forward_storage(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    p: usize,
    s: usize,
    groups: usize,
) -> Result<(CpuStorage, Shape)> {
    let g = Geom::new(xl.shape().dims4()?, wl.shape().dims4()?, p, s, groups)?;
    ConvGemm { g, pass: Pass::Forward }.cpu_fwd(xs, xl, ws, wl)
}

/// The forward convolution of `x (N, C, H, W)` by `w (O, C/G, k_h, k_w)`
/// (no gradient tracking). CPU, f32 or f64.
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
