//! Which of `gemm`'s x86 micro-kernel families is faster on this CPU: AVX2
//! (`fma`, 8 f32 lanes) or AVX-512 (`avx512f`, 16 lanes), on the product
//! shapes of the zoo's convolutions, one thread and two. `gemm` itself picks
//! AVX-512 whenever the CPU has it (tfkd-core enables its `x86-v4` feature);
//! this example calls both families through `gemm-common`'s public generic
//! driver, so that the choice can be checked on each machine (the issue of
//! Intel's AVX-512 clock and AMD's double-pumped AVX-512 units).
//!
//! ```sh
//! cargo run --release -p tfkd-core --example gemm_kernels
//! ```
//!
//! Each row is the best of five rounds, in GFLOP/s. The products are
//! `dst (m × n) = lhs (m × k) · rhs (k × n)`, all row-major, as the
//! convolution engine calls them (`m` output channels, `k` = input
//! channels × taps, `n` output pixels), and `gemm`'s own entry point
//! (`gemm::gemm`, "auto") is timed beside them.

use std::time::Instant;

use gemm_common::gemm::gemm_basic_generic;
use gemm_common::simd::MixedSimd;
use gemm_common::Parallelism;

/// The kernels' common signature: `dst = lhs · rhs`, row-major, contiguous.
type Product = unsafe fn(usize, usize, usize, *mut f32, *const f32, *const f32, Parallelism);

/// `gemm`'s micro-kernels want a column-major destination: a row-major
/// `dst = lhs · rhs` is computed as `dstᵀ = rhsᵀ · lhsᵀ` (what `gemm::gemm`
/// does for it), with `m` and `n` swapped.
macro_rules! product {
    ($name:ident, $simd:ty, $module:ident, $lanes:literal) => {
        /// # Safety
        /// The CPU must have the family's instructions; the slices must hold
        /// `m·k`, `k·n` and `m·n` elements.
        unsafe fn $name(m: usize, n: usize, k: usize, dst: *mut f32, lhs: *const f32, rhs: *const f32, par: Parallelism) {
            use gemm_f32::microkernel::$module::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
            let simd = <$simd as MixedSimd<f32, f32, f32, f32>>::try_new().expect("the CPU lacks these instructions");
            // SAFETY: per the caller; strides describe the row-major operands.
            unsafe {
                gemm_basic_generic::<$simd, f32, $lanes, { MR_DIV_N * $lanes }, NR, MR_DIV_N, H_M, H_N>(
                    simd, n, m, k, dst, n as isize, 1, false, rhs, n as isize, 1, lhs, k as isize, 1, 1.0, 1.0, false,
                    false, false, |a, b, c| a * b + c, &UKR, &H_UKR, false, par,
                )
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
product!(avx2, gemm_common::simd::V3, fma, 8);
#[cfg(target_arch = "x86_64")]
product!(avx512, gemm_common::simd::V4, avx512f, 16);

/// # Safety
/// As [`avx2`].
unsafe fn auto(m: usize, n: usize, k: usize, dst: *mut f32, lhs: *const f32, rhs: *const f32, par: Parallelism) {
    // SAFETY: per the caller.
    unsafe {
        gemm::gemm(m, n, k, dst, 1, n as isize, false, lhs, 1, k as isize, rhs, 1, n as isize, 1.0f32, 1.0f32, false, false, false, par)
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    println!("{cpu}");
    let mut kernels: Vec<(&str, Product)> = vec![("avx2", avx2 as Product)];
    if std::arch::is_x86_feature_detected!("avx512f") {
        kernels.push(("avx512", avx512 as Product));
    } else {
        println!("(no AVX-512 on this CPU: AVX2 only)");
    }
    kernels.push(("auto", auto as Product));
    print!("{:<44}", "product (m × k · k × n), threads");
    for (name, _) in &kernels {
        print!("{name:>10}");
    }
    println!("   GFLOP/s");
    // (what, m, k, n)
    #[rustfmt::skip]
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("square 1024", 1024, 1024, 1024),
        ("ResNet18 3x3 64->64 at 32x32", 64, 576, 1024),
        ("ResNet18 3x3 128->128 at 16x16", 128, 1152, 256),
        ("ResNet18 3x3 512->512 at 4x4, 16 images", 512, 4608, 256),
        ("MobileNetV2 1x1 96->24 at 32x32", 24, 96, 1024),
        ("weight gradient 64x576, 1024 pixels", 64, 1024, 576),
    ];
    for &(what, m, k, n) in shapes {
        for threads in [1, 2] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
            let flops = 2.0 * (m * n * k) as f64;
            let iters = (4e9 / flops).max(3.0) as usize;
            let mut best = vec![0f64; kernels.len()];
            for _round in 0..5 {
                for (i, (_, f)) in kernels.iter().enumerate() {
                    let t = Instant::now();
                    for _ in 0..iters {
                        // SAFETY: the kernel's instructions were detected; sizes match.
                        unsafe { f(m, n, k, c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), par) }
                    }
                    best[i] = best[i].max(flops * iters as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
            print!("{:<44}", format!("{what}, {threads}"));
            for g in best {
                print!("{g:>10.1}");
            }
            println!();
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only: the AVX2 / AVX-512 choice does not arise here");
}
