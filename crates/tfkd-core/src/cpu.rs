//! Helpers shared by the CPU kernels of the custom ops (depthwise and grouped
//! convolution, BatchNorm): typed views of candle's CPU storage, the element
//! trait, and splitting independent output chunks over rayon's pool.

use candle_core::{CpuStorage, DType, Layout, Result, WithDType};
use rayon::prelude::*;

/// Work (multiply-adds or element visits) below which a kernel runs on the
/// calling thread: handing a job to rayon's pool costs tens of microseconds.
pub(crate) const PARALLEL_GRAIN: usize = 32 * 1024;

/// The element types the CPU kernels are compiled for (f32 and f64).
pub(crate) trait Float: WithDType {}

impl Float for f32 {}
impl Float for f64 {}

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
        fn $name<E: $crate::cpu::Float>($($arg: $ty),*) {
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
        unsafe fn $avx<E: $crate::cpu::Float>($($arg: $ty),*) {
            $imp($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;
