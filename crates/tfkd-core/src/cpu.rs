//! Helpers shared by the CPU kernels of the custom ops (convolutions,
//! BatchNorm, pooling, activations, the fused losses): typed views of
//! candle's CPU storage ([`slice`]), the element trait ([`Float`], with the
//! vectorisable row primitives), fixed-order lane sums, the AVX2 dispatch
//! ([`avx2_dispatch`]) and splitting independent output chunks over rayon's
//! pool. The one home of each.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, WithDType};
use rayon::prelude::*;

/// Work (multiply-adds or element visits) below which a kernel runs on the
/// calling thread: handing a job to rayon's pool costs tens of microseconds.
pub(crate) const PARALLEL_GRAIN: usize = 32 * 1024;

/// The element types the CPU kernels are compiled for (f32 and f64), with the
/// row primitives of the fused losses. Only the exponentials differ: f64
/// uses `f64::exp`, f32 the vectorisable [`exp_nonpositive`].
pub(crate) trait Float: WithDType {
    /// Writes `outₖ = exp((xₖ − shift)·scale)` (arguments ≤ 0: shift is the
    /// row max) and returns `Σₖ outₖ` in f64.
    fn exp_sum(xs: &[Self], shift: f64, scale: f64, out: &mut [Self]) -> f64;
    /// `maxₖ xₖ` as f64, ignoring NaN.
    fn row_max(xs: &[Self]) -> f64;
}

impl Float for f64 {
    #[inline(always)]
    fn exp_sum(xs: &[Self], shift: f64, scale: f64, out: &mut [Self]) -> f64 {
        exp_loop(xs, out, |x| ((x - shift) * scale).exp())
    }

    #[inline(always)]
    fn row_max(xs: &[Self]) -> f64 {
        xs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
    }
}

impl Float for f32 {
    #[inline(always)]
    fn exp_sum(xs: &[Self], shift: f64, scale: f64, out: &mut [Self]) -> f64 {
        // As the composed f32 graph: (x − max)·σ in f32, then exp.
        let (shift, scale) = (shift as f32, scale as f32);
        if scale == 1.0 {
            exp_loop(xs, out, |x| exp_nonpositive(x - shift))
        } else {
            exp_loop(xs, out, |x| exp_nonpositive((x - shift) * scale))
        }
    }

    #[inline(always)]
    fn row_max(xs: &[Self]) -> f64 {
        xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64
    }
}

/// Elements per block: sums run in eight lanes of the element type within a
/// block and are carried across blocks in f64.
pub(crate) const BLOCK: usize = 64;

/// `Σₖ xₖ`: eight lanes of `E` within each block of [`BLOCK`] elements, the
/// blocks' sums accumulated in f64, all in a fixed order (fixed-size lanes,
/// so that LLVM vectorises it).
#[inline(always)]
pub(crate) fn block_sum<E: WithDType>(xs: &[E]) -> f64 {
    let mut total = 0.0f64;
    for block in xs.chunks(BLOCK) {
        let mut lanes = [E::from_f64(0.0); 8];
        let chunks = block.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            if let Ok(c) = <&[E; 8]>::try_from(c) {
                for j in 0..8 {
                    lanes[j] += c[j];
                }
            }
        }
        for (l, &x) in lanes.iter_mut().zip(rest) {
            *l += x;
        }
        total += lane_sum(&lanes.map(|l| l.to_f64()));
    }
    total
}

/// `outₖ = f(xₖ)`, returning `Σₖ outₖ` (a map LLVM vectorises, then a
/// [`block_sum`]).
#[inline(always)]
pub(crate) fn exp_loop<E: WithDType>(xs: &[E], out: &mut [E], f: impl Fn(E) -> E) -> f64 {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = f(x);
    }
    block_sum(out)
}

/// Adds the eight lanes in a fixed order.
#[inline(always)]
pub(crate) fn lane_sum(a: &[f64; 8]) -> f64 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `exp(x)` for `x ≤ 0` in f32, branch-free so that loops over it vectorise:
/// Cody–Waite reduction `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, Cephes' degree-6
/// minimax polynomial for `eʳ` (relative error ≤ 2 ulp), and `2ⁿ` built in the
/// exponent bits. Results below the smallest normal f32 (x < −87.3365) are 0;
/// NaN stays NaN.
#[inline(always)]
// Cephes' coefficients as published (each literal rounds to the f32 it names).
#[allow(clippy::excessive_precision)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOW: f32 = -87.336_54;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = if x < LOW { LOW } else { x };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1)
        * r2
        + r
        + 1.0;
    let exponent = (t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32).wrapping_add(127) as u32;
    let y = p * f32::from_bits(exponent.wrapping_shl(23));
    if x < LOW {
        0.0
    } else {
        y
    }
}

/// True for the dtypes the CPU kernels handle.
pub(crate) fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

/// The elements of a contiguous tensor stored in `s` under `l`.
pub(crate) fn slice<'a, E: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [E]> {
    let data = s.as_slice::<E>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `(N, C, S)` of a shape `(N, C, …)`: samples, channels, values per
/// (sample, channel). `op` names the op in the error.
pub(crate) fn ncs(shape: &Shape, op: &str) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        candle_core::bail!("{op}: the input must have at least two dims, got {shape:?}")
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// A vector of `len` elements, each written once by `fill` (handed them
/// uninitialised): an op's output without the zero-filling pass of
/// `vec![0; len]`.
///
/// `fill` must write every element; the callers' kernels are tested for it
/// (an element left unwritten would be read as garbage).
pub(crate) fn filled<E: Copy>(len: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<E>])) -> Vec<E> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (the callers' contract).
    unsafe { v.set_len(len) };
    v
}

/// Copies `src` into the uninitialised `dst` (the same length), element by
/// element: the copy of a [`filled`] buffer's piece.
#[inline(always)]
pub(crate) fn write_copy<E: Copy>(dst: &mut [std::mem::MaybeUninit<E>], src: &[E]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// Calls `f(scratch, i, chunk_i)` for every `chunk`-sized piece of `out`,
/// on rayon's pool when the total work (`work_per_chunk` per piece) is large
/// enough, else in order on this thread. Each job gets its own scratch buffer.
pub(crate) fn for_each_chunk<T, S, F>(out: &mut [T], chunk: usize, work_per_chunk: usize, f: F)
where
    T: Send,
    S: Default,
    F: Fn(&mut S, usize, &mut [T]) + Sync + Send,
{
    if chunk == 0 || out.is_empty() {
        return;
    }
    let chunks = out.len() / chunk;
    let work = chunks.saturating_mul(work_per_chunk.max(1));
    if work < 2 * PARALLEL_GRAIN || rayon::current_num_threads() < 2 {
        let mut scratch = S::default();
        for (i, c) in out.chunks_mut(chunk).enumerate() {
            f(&mut scratch, i, c);
        }
        return;
    }
    let min_len = (PARALLEL_GRAIN / work_per_chunk.max(1)).max(1);
    out.par_chunks_mut(chunk)
        .enumerate()
        .with_min_len(min_len)
        .for_each_init(S::default, |scratch, (i, c)| f(scratch, i, c));
}

/// Defines `fn $name<E: Float>(args)`, which runs the `#[inline(always)]`
/// kernel `$imp` compiled for AVX2 when the CPU has it (detected at run time,
/// cached by std) and for the baseline target otherwise. Both versions do
/// the same arithmetic in the same order (no FMA contraction), so results do
/// not depend on the CPU.
macro_rules! avx2_dispatch {
    ($name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::cpu::avx2_dispatch!($name, $avx, $imp, ($($arg: $ty),*) -> ());
    };
    ($name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        fn $name<E: $crate::cpu::Float>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (just detected).
                return unsafe { $avx($($arg),*) };
            }
            $imp($($arg),*)
        }

        /// The kernel compiled with AVX2 enabled.
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx<E: $crate::cpu::Float>($($arg: $ty),*) -> $ret {
            $imp($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_nonpositive` against f64 `exp` on a dense grid of [−88, 0]:
    /// relative error ≤ 2 ulp of f32 above the smallest normal, 0 below it.
    #[test]
    fn fast_exp_is_accurate_to_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -88.0f32 * i as f32 / 2_000_000.0;
            let exact = (x as f64).exp();
            let ours = exp_nonpositive(x) as f64;
            if exact < f32::MIN_POSITIVE as f64 {
                assert!(ours == 0.0 || (ours - exact).abs() <= f32::MIN_POSITIVE as f64, "x = {x}: {ours}");
                continue;
            }
            worst = worst.max((ours - exact).abs() / exact);
        }
        // 2 ulp at the bottom of a binade: 2·2⁻²³.
        assert!(worst <= 2.0 * f32::EPSILON as f64, "max relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    /// Block sums in f32 lanes stay within a few ulp of the f64 sum.
    #[test]
    fn block_sum_is_close_to_the_f64_sum() {
        let xs: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 / 1000.0).powi(3)).collect();
        let exact: f64 = xs.iter().map(|&x| x as f64).sum();
        let ours = block_sum(&xs);
        assert!((ours - exact).abs() <= 1e-6 * exact, "{ours} vs {exact}");
    }
}
