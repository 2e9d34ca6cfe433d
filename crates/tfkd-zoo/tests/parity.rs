//! PyTorch parity of every family on reduced-width instances (batch 4, K = 10):
//! eval-mode logits to 1e-4, train-mode logits, weight gradients of
//! `sum(train_logits · proj)` to 1e-3 and BatchNorm running statistics after
//! the train step. References: `scripts/gen_zoo_fixtures.py` (float64 PyTorch,
//! stored as float32) in `fixtures/zoo/<case>.safetensors`.

mod common;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::*;

/// Eval logits: max |Δ| ≤ 1e-4 · max(1, max |ref|).
const LOGIT_TOL: f32 = 1e-4;
/// Gradients: per tensor, max |Δ| ≤ 1e-3 · max(max |ref|, 1e-2 · max over all
/// gradients of the model). The floor keeps tensors whose exact gradient is
/// zero (conv biases followed by train-mode BatchNorm) from comparing noise.
const GRAD_TOL: f32 = 1e-3;

fn check_case(case: &str) -> Result<()> {
    check_case_on(case, &Device::Cpu)
}

/// The parity of `case` with the network (and the references) on `dev`.
fn check_case_on(case: &str, dev: &Device) -> Result<()> {
    let mut fx = fixture(&format!("{case}.safetensors"))?;
    for t in fx.values_mut() {
        *t = t.to_device(dev)?;
    }
    let params = with_prefix(&fx, "param.");
    let vm = varmap_from(&params)?;
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let (model, side) = build_case(case, vb)?;
    // Every tensor of the PyTorch state dict was used, and only those.
    let shapes = tfkd_zoo::record_shapes(|vb| {
        build_case(case, vb).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    tfkd_zoo::check_tensors(case, &shapes, &params, "fixture")?;

    let x = &fx["input"];
    assert_eq!(x.dims()[2], side);
    let eval = model.forward_t(x, false)?;
    let d = max_abs_diff(&eval, &fx["eval_logits"])?;
    let tol = LOGIT_TOL * max_abs(&fx["eval_logits"])?.max(1.0);
    if d > tol {
        bail!("{case}: eval logits differ by {d} > {tol}")
    }
    // Eval mode leaves the running statistics alone.
    for (k, v) in &params {
        if k.ends_with("running_mean") || k.ends_with("running_var") {
            let now = vm.data().lock().unwrap()[k].as_tensor().clone();
            assert_eq!(max_abs_diff(&now, v)?, 0.0, "{case}: eval changed {k}");
        }
    }

    let train = model.forward_t(x, true)?;
    let d = max_abs_diff(&train, &fx["train_logits"])?;
    let tol = LOGIT_TOL * max_abs(&fx["train_logits"])?.max(1.0);
    if d > tol {
        bail!("{case}: train logits differ by {d} > {tol}")
    }
    let loss = (&train * &fx["proj"])?.sum_all()?;
    let grads = loss.backward()?;
    let refs = with_prefix(&fx, "grad.");
    let global = refs
        .values()
        .map(max_abs)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(0f32, f32::max);
    let data = vm.data().lock().unwrap();
    for (k, g_ref) in &refs {
        let var = data
            .get(k)
            .ok_or_else(|| anyhow::anyhow!("{case}: no variable {k}"))?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{case}: no gradient for {k}"))?;
        let d = max_abs_diff(g, g_ref)?;
        let tol = GRAD_TOL * max_abs(g_ref)?.max(1e-2 * global);
        if d > tol {
            bail!("{case}: gradient of {k} differs by {d} > {tol}")
        }
    }
    // Running statistics after one train step (momentum 0.1, unbiased variance).
    let after = with_prefix(&fx, "after.");
    let has_bn = params.keys().any(|k| k.ends_with("running_mean"));
    assert_eq!(after.is_empty(), !has_bn, "{case}: running statistics missing from the fixture");
    for (k, v) in &after {
        let d = max_abs_diff(data[k].as_tensor(), v)?;
        if d > 1e-4 * max_abs(v)?.max(1.0) {
            bail!("{case}: running statistic {k} differs by {d}")
        }
    }
    Ok(())
}

macro_rules! parity {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() -> Result<()> {
            check_case(stringify!($name))
        }
    )*};
}

parity!(
    cnn,
    cnn_t64,
    resnet_basic,
    resnet_basic_t64,
    resnet_bottleneck,
    mobilenet_v2,
    shufflenet_v2,
    densenet,
    googlenet,
    resnext,
    wrn,
    tv_resnet_basic,
    tv_resnext,
    tv_densenet,
    alexnet,
    vgg,
    vgg_t64
);

/// The same parity on a GPU, strict f32 (no TF32), every case; built with
/// `--features cuda` and run where a GPU is (`scripts/gpu/check.sh`).
#[cfg(feature = "cuda")]
#[test]
fn every_case_matches_pytorch_on_cuda() -> Result<()> {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return Ok(());
        }
    };
    tfkd_core::precision::set_conv_tf32(false);
    let failures: Vec<String> = CASES.iter().filter_map(|case| check_case_on(case, &dev).err().map(|e| format!("{case}: {e:#}"))).collect();
    if !failures.is_empty() {
        bail!("{} of {} cases differ on CUDA:\n{}", failures.len(), CASES.len(), failures.join("\n"))
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
#[test]
fn parity_on_cuda_is_skipped_without_the_cuda_feature() {
    eprintln!("skipped: tfkd-zoo built without `--features cuda`; scripts/gpu/check.sh runs the parity on a GPU");
}

#[test]
fn every_case_is_tested() {
    assert_eq!(CASES.len(), 17);
}
