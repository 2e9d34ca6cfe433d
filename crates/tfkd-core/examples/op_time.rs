//! Times the CPU custom ops of tfkd-core against candle's composed versions,
//! forward + backward (`L = Σ y ⊙ r`), and prints a table (median of a few
//! runs, milliseconds). For the convolutions it also prints the rate of
//! forward + backward (three products) as a share of the machine's GEMM
//! rate, measured first on a 1024³ matmul (the `%` includes the ops'
//! im2col, col2im and the `Σ y ⊙ r` around them).
//!
//! ```sh
//! cargo run --release -p tfkd-core --example op_time            # all
//! cargo run --release -p tfkd-core --example op_time -- depthwise
//! ```
//!
//! Rows: depthwise, dense and grouped convolutions (candle: `Tensor::conv2d`),
//! training-mode BatchNorm (candle: `candle_nn::BatchNorm`), max pooling
//! (candle: `Tensor::max_pool2d`, where it has a backward). The optional
//! argument filters the rows by name; `--no-candle` (after it)
//! times tfkd's ops only (for profiling). candle's composed depthwise
//! convolution is slow (seconds): it runs once per shape.

use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Result, Tensor, Var};
use tfkd_core::conv::{conv2d, depthwise_conv2d};
use tfkd_core::rng::SeededRng;

/// A convolution to time: (name, n, c_in, c_out, side, k, stride, pad, groups).
type ConvCase = (&'static str, usize, usize, usize, usize, usize, usize, usize, usize);

/// Median milliseconds of `runs` calls of `f` (after one warm-up call).
fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// tfkd's BatchNorm and candle-nn's over `c` channels (PyTorch's defaults),
/// with the variable map that holds their parameters.
fn batch_norms(c: usize, dev: &Device) -> Result<(candle_nn::VarMap, tfkd_core::norm::BatchNorm, candle_nn::BatchNorm)> {
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, dev);
    let ours = tfkd_core::norm::BatchNorm::new(c, 1e-5, 0.1, vb.pp("ours"))?;
    let cfg = candle_nn::BatchNormConfig { eps: 1e-5, remove_mean: true, affine: true, momentum: 0.1 };
    let theirs = candle_nn::batch_norm(c, cfg, vb.pp("candle"))?;
    Ok((vm, ours, theirs))
}

/// Forward + backward of `conv(x, k)` with an upstream gradient `r`.
fn fwd_bwd(conv: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>, x: &Var, k: &Var, r: &Tensor) -> Result<()> {
    let y = conv(x, k)?;
    let g = (&y * r)?.sum_all()?.backward()?;
    assert!(g.get(x).is_some() && g.get(k).is_some());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let no_candle = std::env::args().any(|a| a == "--no-candle");
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(0);
    println!("threads {}", candle_core::utils::get_num_threads());
    // The machine's GEMM rate: a square f32 product through candle's matmul
    // (the `gemm` crate, as the convolutions use), best of a few.
    let peak = {
        let side = 1024;
        let a = rng.uniform_tensor((side, side), -1.0, 1.0, DType::F32, &dev)?;
        let b = rng.uniform_tensor((side, side), -1.0, 1.0, DType::F32, &dev)?;
        let ms = time(7, || a.matmul(&b).map(drop))?;
        2.0 * (side * side * side) as f64 / (ms * 1e6)
    };
    println!("gemm peak (1024^3 f32 matmul): {peak:.1} GFLOP/s");
    println!(
        "{:<44} {:>12} {:>12} {:>8} {:>12} {:>14}",
        "op (f32, forward + backward)", "candle ms", "tfkd ms", "ratio", "tfkd fwd ms", "% gemm peak"
    );
    // (name, n, c_in, c_out, side, k, stride, pad, groups)
    #[rustfmt::skip]
    let convs: &[ConvCase] = &[
        ("depthwise 3x3 s1 64x384x16x16", 64, 384, 384, 16, 3, 1, 1, 384),
        ("depthwise 3x3 s1 32x192x16x16 (MobileNetV2)", 32, 192, 192, 16, 3, 1, 1, 192),
        ("depthwise 3x3 s2 32x144x32x32 (MobileNetV2)", 32, 144, 144, 32, 3, 2, 1, 144),
        ("depthwise 3x3 s1 32x116x8x8 (ShuffleNetV2)", 32, 116, 116, 8, 3, 1, 1, 116),
        ("depthwise 5x5 s2 32x64x16x16", 32, 64, 64, 16, 5, 2, 2, 64),
        ("dense 3x3 s1 32x64x32x32 (ResNet18)", 32, 64, 64, 32, 3, 1, 1, 1),
        ("dense 3x3 s2 32x128x16x16 (ResNet18)", 32, 128, 256, 16, 3, 2, 1, 1),
        ("dense 3x3 s1 32x512x4x4 (ResNet18)", 32, 512, 512, 4, 3, 1, 1, 1),
        ("dense 1x1 s1 32x96x32x32 (MobileNetV2)", 32, 96, 24, 32, 1, 1, 0, 1),
        ("grouped 8 3x3 s1 8x256x16x16 (ResNeXt29/4)", 8, 256, 256, 16, 3, 1, 1, 8),
        ("grouped 8 3x3 s2 8x512x16x16 (ResNeXt29/2)", 8, 512, 512, 16, 3, 2, 1, 8),
        ("grouped 32 3x3 s1 8x256x8x8 (ResNeXt50)", 8, 256, 256, 8, 3, 1, 1, 32),
        ("grouped 2 3x3 s1 32x64x16x16", 32, 64, 64, 16, 3, 1, 1, 2),
    ];
    for &(name, n, c_in, c_out, side, k, s, p, groups) in convs {
        if !name.contains(&filter) {
            continue;
        }
        let x = Var::from_tensor(&rng.uniform_tensor((n, c_in, side, side), -1.0, 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&rng.uniform_tensor((c_out, c_in / groups, k, k), -0.5, 0.5, DType::F32, &dev)?)?;
        let out = (side + 2 * p - k) / s + 1;
        let r = rng.uniform_tensor((n, c_out, out, out), -1.0, 1.0, DType::F32, &dev)?;
        let candle = |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, groups);
        let ours = |x: &Tensor, w: &Tensor| {
            let y = if groups == c_in && c_in == c_out {
                depthwise_conv2d(x, w, p, s)
            } else {
                conv2d(x, w, p, s, groups)
            };
            y.map_err(candle_core::Error::from)
        };
        let t_candle = if no_candle { f64::NAN } else { time(1, || fwd_bwd(&candle, &x, &w, &r))? };
        let t_ours = time(if no_candle { 20 } else { 5 }, || fwd_bwd(&ours, &x, &w, &r))?;
        let (xd, wd) = (x.as_detached_tensor(), w.as_detached_tensor());
        let t_fwd = time(if no_candle { 20 } else { 5 }, || ours(&xd, &wd).map(drop))?;
        // Forward and both gradients: three products of the same size.
        let flops = 3.0 * 2.0 * (n * c_out * (c_in / groups) * k * k * out * out) as f64;
        let share = 100.0 * flops / (t_ours * 1e6) / peak;
        println!("{name:<44} {t_candle:>12.2} {t_ours:>12.2} {:>7.1}x {t_fwd:>12.2} {share:>13.0}%", t_candle / t_ours);
    }
    // (name, n, c, side)
    let norms: &[(&str, usize, usize, usize)] = &[
        ("batch norm train 32x96x32x32 (MobileNetV2)", 32, 96, 32),
        ("batch norm train 32x64x32x32 (ResNet18)", 32, 64, 32),
        ("batch norm train 32x512x4x4 (ResNet18)", 32, 512, 4),
    ];
    for &(name, n, c, side) in norms {
        if !name.contains(&filter) {
            continue;
        }
        let x = Var::from_tensor(&rng.normal_tensor((n, c, side, side), 0.5, 2.0, DType::F32, &dev)?)?;
        let r = rng.uniform_tensor((n, c, side, side), -1.0, 1.0, DType::F32, &dev)?;
        let (_vm, ours, theirs) = batch_norms(c, &dev)?;
        let run = |bn: &dyn ModuleT| -> Result<()> {
            let y = bn.forward_t(&x, true)?;
            (&y * &r)?.sum_all()?.backward().map(drop)
        };
        let t_candle = if no_candle { f64::NAN } else { time(5, || run(&theirs))? };
        let t_ours = time(if no_candle { 20 } else { 5 }, || run(&ours))?;
        let t_fwd = time(5, || ours.forward_t(&x.as_detached_tensor(), true).map(drop))?;
        println!("{name:<44} {t_candle:>12.2} {t_ours:>12.2} {:>7.1}x {t_fwd:>12.2}", t_candle / t_ours);
    }
    // BatchNorm with its tail, as the zoo's blocks run it: `relu(BN(x))`
    // (`forward_act_t`) and `relu(BN(x) + r)` written into a residual the
    // caller gives up (`forward_into_residual_act_t`; both columns copy the
    // residual first, so that each run has one to give). candle: its
    // BatchNorm, then the add and the ReLU as ops of their own.
    use tfkd_core::activation::Activation;
    let tails: &[(&str, usize, usize, usize, Activation, bool)] = &[
        ("bn + relu 32x64x32x32 (ResNet18)", 32, 64, 32, Activation::Relu, false),
        ("bn + residual + relu 32x64x32x32 (ResNet18)", 32, 64, 32, Activation::Relu, true),
        ("bn + relu6 32x192x16x16 (MobileNetV2)", 32, 192, 16, Activation::Relu6, false),
    ];
    for &(name, n, c, side, act, residual) in tails {
        if !name.contains(&filter) {
            continue;
        }
        let x = Var::from_tensor(&rng.normal_tensor((n, c, side, side), 0.5, 2.0, DType::F32, &dev)?)?;
        let skip = rng.normal_tensor((n, c, side, side), 0.0, 1.0, DType::F32, &dev)?;
        let r = rng.uniform_tensor((n, c, side, side), -1.0, 1.0, DType::F32, &dev)?;
        let (_vm, ours, theirs) = batch_norms(c, &dev)?;
        let tfkd_fwd = |x: &Tensor| -> Result<Tensor> {
            if residual {
                ours.forward_into_residual_act_t(x, skip.copy()?, true, Some(act))
            } else {
                ours.forward_act_t(x, true, Some(act))
            }
        };
        let candle_fwd = |x: &Tensor| -> Result<Tensor> {
            let y = theirs.forward_t(x, true)?;
            let y = if residual { (y + skip.copy()?)? } else { y };
            act.apply(&y).map_err(candle_core::Error::from)
        };
        let run = |fwd: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<()> {
            let y = fwd(&x)?;
            (&y * &r)?.sum_all()?.backward().map(drop)
        };
        let t_candle = if no_candle { f64::NAN } else { time(5, || run(&candle_fwd))? };
        let t_ours = time(if no_candle { 20 } else { 5 }, || run(&tfkd_fwd))?;
        let t_fwd = time(9, || tfkd_fwd(&x.as_detached_tensor()).map(drop))?;
        println!("{name:<44} {t_candle:>12.2} {t_ours:>12.2} {:>7.1}x {t_fwd:>12.2}", t_candle / t_ours);
    }
    // (name, n, c, side, kernel, stride, padding); candle: its own
    // max_pool2d (kernel = stride only; its backward scales the gradient).
    let pools: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("max pool 2x2 s2 128x32x32x32 (CNN)", 128, 32, 32, 2, 2, 0),
        ("max pool 3x3 s2 p1 32x64x32x32 (GoogLeNet)", 32, 64, 32, 3, 2, 1),
    ];
    for &(name, n, c, side, k, s, p) in pools {
        if !name.contains(&filter) {
            continue;
        }
        let x = Var::from_tensor(&rng.normal_tensor((n, c, side, side), 0.0, 1.0, DType::F32, &dev)?)?;
        let out = (side + 2 * p - k) / s + 1;
        let r = rng.uniform_tensor((n, c, out, out), -1.0, 1.0, DType::F32, &dev)?;
        let ours = |x: &Tensor| tfkd_core::pool::max_pool2d(x, k, s, p).map_err(candle_core::Error::from);
        let run = |pool: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<()> {
            let y = pool(&x)?;
            (&y * &r)?.sum_all()?.backward().map(drop)
        };
        let t_candle = if no_candle || p > 0 || k != s { f64::NAN } else { time(5, || run(&|x: &Tensor| x.max_pool2d(k)))? };
        let t_ours = time(if no_candle { 20 } else { 5 }, || run(&ours))?;
        let t_fwd = time(5, || ours(&x.as_detached_tensor()).map(drop))?;
        println!("{name:<44} {t_candle:>12.2} {t_ours:>12.2} {:>7.1}x {t_fwd:>12.2}", t_candle / t_ours);
    }
    Ok(())
}
