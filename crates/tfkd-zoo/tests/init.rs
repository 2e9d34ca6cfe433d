//! Initialisation hints: a fresh `VarMap` gets the reference code's
//! distributions (PyTorch defaults, ResNeXt29's custom init, WRN and
//! torchvision's kaiming_normal), checked statistically.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tfkd_zoo::InputSize;

fn var(vm: &VarMap, name: &str) -> Result<Tensor> {
    Ok(vm.data().lock().unwrap()[name].as_tensor().copy()?)
}

fn std_of(t: &Tensor) -> Result<f64> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let n = v.len() as f64;
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
    Ok((v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt())
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

#[test]
fn pytorch_default_init() -> Result<()> {
    let vm = VarMap::new();
    tfkd_zoo::build(
        "cnn",
        100,
        InputSize::Cifar,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    // conv3: fan_in 64·9; Uniform(±1/√fan_in) has std bound/√3.
    let bound = 1.0 / (64.0f64 * 9.0).sqrt();
    for name in ["conv3.weight", "conv3.bias"] {
        let w = var(&vm, name)?;
        assert!(max_abs(&w)? <= bound + 1e-7, "{name} outside ±{bound}");
    }
    let s = std_of(&var(&vm, "conv3.weight")?)?;
    assert!(
        (s / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05,
        "conv3.weight std {s}"
    );
    let fc2 = 1.0 / 128f64.sqrt();
    assert!(max_abs(&var(&vm, "fc2.weight")?)? <= fc2 + 1e-7);
    assert_eq!(var(&vm, "bn2.weight")?.to_vec1::<f32>()?, vec![1.0; 64]);
    assert_eq!(var(&vm, "bn2.bias")?.to_vec1::<f32>()?, vec![0.0; 64]);
    assert_eq!(
        var(&vm, "bn2.running_mean")?.to_vec1::<f32>()?,
        vec![0.0; 64]
    );
    assert_eq!(
        var(&vm, "bn2.running_var")?.to_vec1::<f32>()?,
        vec![1.0; 64]
    );
    Ok(())
}

#[test]
fn resnext29_custom_init() -> Result<()> {
    let vm = VarMap::new();
    tfkd_zoo::build(
        "resnext29",
        100,
        InputSize::Cifar,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    // Grouped 3×3 conv of stage 3: D = 2048, fan_out = 2048·9.
    let w = var(&vm, "stage_3.stage_3_bottleneck_1.conv_conv.weight")?;
    let s = std_of(&w)?;
    let want = (2.0 / (2048.0 * 9.0f64)).sqrt();
    assert!(
        (s / want - 1.0).abs() < 0.02,
        "conv_conv std {s}, want {want}"
    );
    // Classifier: kaiming_normal fan_in, bias 0.
    let s = std_of(&var(&vm, "classifier.weight")?)?;
    let want = (2.0 / 1024f64).sqrt();
    assert!(
        (s / want - 1.0).abs() < 0.05,
        "classifier std {s}, want {want}"
    );
    assert_eq!(max_abs(&var(&vm, "classifier.bias")?)?, 0.0);
    assert_eq!(
        var(
            &vm,
            "stage_1.stage_1_bottleneck_0.shortcut.shortcut_bn.weight"
        )?
        .to_vec1::<f32>()?,
        vec![1.0; 256]
    );
    Ok(())
}

#[test]
fn wrn_and_torchvision_init() -> Result<()> {
    let vm = VarMap::new();
    tfkd_zoo::build(
        "wrn_16_2",
        10,
        InputSize::Cifar,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let s = std_of(&var(&vm, "block3.layer.1.conv2.weight")?)?;
    let want = (2.0 / (128.0 * 9.0f64)).sqrt();
    assert!(
        (s / want - 1.0).abs() < 0.03,
        "wrn conv std {s}, want {want}"
    );
    assert_eq!(max_abs(&var(&vm, "fc.bias")?)?, 0.0);

    let vm = VarMap::new();
    tfkd_zoo::build(
        "densenet121_imagenet",
        10,
        InputSize::ImageNet,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    // torchvision DenseNet: kaiming_normal (fan_in) convs, classifier bias 0.
    let s = std_of(&var(&vm, "features.denseblock3.denselayer2.conv2.weight")?)?;
    let want = (2.0 / (128.0 * 9.0f64)).sqrt();
    assert!(
        (s / want - 1.0).abs() < 0.03,
        "densenet conv std {s}, want {want}"
    );
    assert_eq!(max_abs(&var(&vm, "classifier.bias")?)?, 0.0);
    Ok(())
}

/// With tfkd-core's `SeededVarMap`, the zoo's hints give reproducible weights
/// (candle's own `VarMap` cannot be seeded on CPU).
#[test]
fn seeded_varmap_makes_models_reproducible() -> Result<()> {
    let dev = Device::Cpu;
    let weights = |seed: u64| -> Result<Vec<f32>> {
        let m = tfkd_core::init::SeededVarMap::new(seed);
        tfkd_zoo::build(
            "googlenet",
            10,
            InputSize::Cifar,
            m.var_builder(DType::F32, &dev),
        )?;
        let mut out = Vec::new();
        for (name, v) in m.named_vars() {
            if name.ends_with("weight") {
                out.extend(
                    v.as_tensor()
                        .flatten_all()?
                        .narrow(0, 0, 4)?
                        .to_vec1::<f32>()?,
                );
            }
        }
        Ok(out)
    };
    let (a, b, c) = (weights(7)?, weights(7)?, weights(8)?);
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_ne!(a, c);
    Ok(())
}
