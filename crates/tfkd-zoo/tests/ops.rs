//! `tfkd_zoo::ops::max_pool2d` against `torch.nn.functional.max_pool2d`: values
//! and input gradients for kernel ≠ stride, padding, and kernel = stride.

mod common;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use common::*;

#[test]
fn max_pool_matches_pytorch() -> Result<()> {
    let fx = fixture("maxpool.safetensors")?;
    let x = Var::from_tensor(&fx["input"])?;
    let mut n = 0;
    for (k, s, p) in [
        (3, 2, 1),
        (3, 1, 1),
        (3, 2, 0),
        (2, 2, 0),
        (2, 1, 0),
        (3, 3, 1),
    ] {
        let tag = format!("k{k}s{s}p{p}");
        let y = tfkd_zoo::ops::max_pool2d(x.as_tensor(), k, s, p)?;
        let d = max_abs_diff(&y, &fx[&format!("{tag}.out")])?;
        if d > 1e-6 {
            bail!("{tag}: values differ by {d}")
        }
        let g = (&y * &fx[&format!("{tag}.proj")])?.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{tag}: no gradient"))?;
        let d = max_abs_diff(gx, &fx[&format!("{tag}.grad")])?;
        if d > 1e-5 {
            bail!("{tag}: gradients differ by {d}")
        }
        n += 1;
    }
    assert_eq!(n, 6);
    Ok(())
}

/// Kernel = stride on a divisible input (where candle's own max-pool backward is
/// wrong by 1/k²) and average pooling on even and odd sides.
#[test]
fn pooling_on_divisible_and_odd_sides_matches_pytorch() -> Result<()> {
    let fx = fixture("maxpool.safetensors")?;
    let xe = Var::from_tensor(&fx["input_even"])?;
    let xo = Var::from_tensor(&fx["input"])?;
    type Pool = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
    let cases: [(&str, &Var, Pool); 3] = [
        (
            "even_k2s2p0",
            &xe,
            Box::new(|t| Ok(tfkd_zoo::ops::max_pool2d(t, 2, 2, 0)?)),
        ),
        (
            "avg_k2_even",
            &xe,
            Box::new(|t| tfkd_zoo::ops::avg_pool2d(t, 2)),
        ),
        (
            "avg_k2_odd",
            &xo,
            Box::new(|t| tfkd_zoo::ops::avg_pool2d(t, 2)),
        ),
    ];
    for (tag, x, f) in cases {
        let y = f(x.as_tensor())?;
        let d = max_abs_diff(&y, &fx[&format!("{tag}.out")])?;
        if d > 1e-6 {
            bail!("{tag}: values differ by {d}")
        }
        let g = (&y * &fx[&format!("{tag}.proj")])?.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{tag}: no gradient"))?;
        let d = max_abs_diff(gx, &fx[&format!("{tag}.grad")])?;
        if d > 1e-5 {
            bail!("{tag}: gradients differ by {d}")
        }
    }
    Ok(())
}

#[test]
fn max_pool_rejects_bad_geometry() -> Result<()> {
    let x = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
    assert!(tfkd_zoo::ops::max_pool2d(&x, 0, 1, 0).is_err());
    assert!(tfkd_zoo::ops::max_pool2d(&x, 3, 0, 0).is_err());
    assert!(tfkd_zoo::ops::max_pool2d(&x, 2, 2, 2).is_err());
    assert!(tfkd_zoo::ops::max_pool2d(&x, 7, 1, 1).is_err());
    Ok(())
}

#[test]
fn channel_shuffle_interleaves_groups() -> Result<()> {
    let x = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((1, 6, 1, 1))?;
    let y = tfkd_zoo::ops::channel_shuffle(&x, 2)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(y, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert!(tfkd_zoo::ops::channel_shuffle(&x, 4).is_err());
    Ok(())
}

/// `adaptive_avg_pool2d` on its three paths (divisible sides, a nearest
/// upsampling such as VGG's 7×7 pool of a 1×1 map, overlapping bins)
/// against PyTorch's bins computed here element by element: values, and the
/// input gradient (each cell's upstream gradient spread over its bin).
#[test]
fn adaptive_avg_pool_matches_its_bins() -> Result<()> {
    let dev = Device::Cpu;
    for (h, w, oh, ow) in [(4, 6, 2, 3), (1, 1, 7, 7), (2, 3, 4, 6), (5, 7, 3, 3), (3, 2, 7, 5)] {
        let (n, c) = (2, 3);
        let xv: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let pv: Vec<f32> = (0..n * c * oh * ow).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), (n, c, h, w), &dev)?)?;
        let proj = Tensor::from_vec(pv.clone(), (n, c, oh, ow), &dev)?;
        let y = tfkd_zoo::ops::adaptive_avg_pool2d(x.as_tensor(), oh, ow)?;
        let gx = (&y * &proj)?.sum_all()?.backward()?.get(x.as_tensor()).cloned().ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        let (y, gx) = (y.flatten_all()?.to_vec1::<f32>()?, gx.flatten_all()?.to_vec1::<f32>()?);
        let bin = |i: usize, len: usize, out: usize| (i * len / out, ((i + 1) * len).div_ceil(out));
        let mut want_g = vec![0f32; xv.len()];
        for plane in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let ((r0, r1), (c0, c1)) = (bin(i, h, oh), bin(j, w, ow));
                    let count = ((r1 - r0) * (c1 - c0)) as f32;
                    let mut sum = 0f32;
                    for r in r0..r1 {
                        for q in c0..c1 {
                            sum += xv[(plane * h + r) * w + q];
                            want_g[(plane * h + r) * w + q] += pv[(plane * oh + i) * ow + j] / count;
                        }
                    }
                    let got = y[(plane * oh + i) * ow + j];
                    if (got - sum / count).abs() > 1e-5 {
                        bail!("{h}x{w} -> {oh}x{ow}: cell ({plane}, {i}, {j}) is {got}, want {}", sum / count)
                    }
                }
            }
        }
        for (k, (&got, &want)) in gx.iter().zip(&want_g).enumerate() {
            if (got - want).abs() > 1e-5 {
                bail!("{h}x{w} -> {oh}x{ow}: gradient {k} is {got}, want {want}")
            }
        }
    }
    Ok(())
}
