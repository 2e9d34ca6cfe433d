//! Train / eval behaviour: BatchNorm statistics, dropout only in train mode and
//! seeded, no autograd graph for teachers.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use tfkd_zoo::{InputSize, ModelOptions};

fn cnn_with_seed(vm: &VarMap, seed: u64) -> Result<Box<dyn tfkd_zoo::Model>> {
    let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
    let opts = ModelOptions {
        dropout_seed: seed,
        ..ModelOptions::new(10, InputSize::Cifar)
    };
    Ok(tfkd_zoo::build_with("cnn", &opts, vb)?)
}

#[test]
fn dropout_acts_in_train_mode_only_and_is_seeded() -> Result<()> {
    let vm = VarMap::new();
    let a = cnn_with_seed(&vm, 1)?;
    let b = cnn_with_seed(&vm, 1)?; // same variables, same seed
    let c = cnn_with_seed(&vm, 2)?;
    let x = Tensor::randn(0f32, 1.0, (8, 3, 32, 32), &Device::Cpu)?;
    let e1 = a.forward_t(&x, false)?;
    let e2 = a.forward_t(&x, false)?;
    assert_eq!(max_abs_diff(&e1, &e2)?, 0.0, "eval is not deterministic");
    // Train mode: the head's dropout (p = 0.5) changes the logits given the
    // same features, reproducibly for one seed and differently for another.
    let f = a.forward_features(&x, false)?;
    let ha = a.forward_head(&f, true)?;
    let hb = b.forward_head(&f, true)?;
    let hc = c.forward_head(&f, true)?;
    let he = a.forward_head(&f, false)?;
    assert_eq!(max_abs_diff(&ha, &hb)?, 0.0, "same seed, different masks");
    assert!(
        max_abs_diff(&ha, &hc)? > 1e-3,
        "different seeds, same masks"
    );
    assert!(
        max_abs_diff(&ha, &he)? > 1e-3,
        "dropout inactive in train mode"
    );
    assert_eq!(max_abs_diff(&he, &a.forward_t(&x, false)?)?, 0.0);
    Ok(())
}

#[test]
fn dropout_layer_keeps_expectation() -> Result<()> {
    use candle_core::ModuleT;
    let rng = std::sync::Arc::new(std::sync::Mutex::new(tfkd_zoo::MaskRng::new(7)));
    let d = tfkd_zoo::Dropout::new(0.4, rng.clone())?;
    let x = Tensor::ones(20_000, DType::F32, &Device::Cpu)?;
    let y = d.forward_t(&x, true)?.to_vec1::<f32>()?;
    let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.4).abs() < 0.02, "drop fraction {zeros}");
    let kept: Vec<f32> = y.iter().copied().filter(|v| *v != 0.0).collect();
    assert!(kept.iter().all(|v| (v - 1.0 / 0.6).abs() < 1e-6));
    assert_eq!(
        d.forward_t(&x, false)?.to_vec1::<f32>()?,
        vec![1f32; 20_000]
    );
    assert!(tfkd_zoo::Dropout::new(1.0, rng).is_err());
    Ok(())
}

#[test]
fn batchnorm_uses_and_updates_running_statistics_in_train_mode_only() -> Result<()> {
    let vm = VarMap::new();
    let m = cnn_with_seed(&vm, 0)?;
    let x = Tensor::randn(0f32, 1.0, (6, 3, 32, 32), &Device::Cpu)?.affine(3.0, 2.0)?;
    let rm = || -> Result<Tensor> {
        Ok(vm.data().lock().unwrap()["bn1.running_mean"]
            .as_tensor()
            .copy()?)
    };
    let r0 = rm()?;
    m.forward_t(&x, false)?;
    assert_eq!(max_abs_diff(&r0, &rm()?)?, 0.0, "eval updated running_mean");
    let e0 = m.forward_t(&x, false)?;
    m.forward_t(&x, true)?;
    assert!(
        max_abs_diff(&r0, &rm()?)? > 1e-3,
        "train did not update running_mean"
    );
    // Eval output now reflects the new running statistics.
    assert!(max_abs_diff(&e0, &m.forward_t(&x, false)?)? > 1e-6);
    Ok(())
}

#[test]
fn trainable_models_track_ops_and_teachers_do_not() -> Result<()> {
    let fx = fixture("googlenet.safetensors")?;
    let params = with_prefix(&fx, "param.");
    let x = &fx["input"];
    let teacher = build_case(
        "googlenet",
        VarBuilder::from_tensors(params.clone(), DType::F32, &Device::Cpu),
    )?
    .0;
    assert!(!teacher.forward_t(x, false)?.track_op());
    let vm = varmap_from(&params)?;
    let student = build_case(
        "googlenet",
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?
    .0;
    assert!(student.forward_t(x, true)?.track_op());
    Ok(())
}
