//! Checkpoint loading: PyTorch `.pth.tar` with a `state_dict` key, with
//! DataParallel `module.` prefixes, a bare `.pth` state dict, a legacy-format
//! (PyTorch ≤ 1.5) file, a torchvision-format DenseNet file with its legacy
//! layer names (all written by `torch.save` in `scripts/gen_zoo_fixtures.py`),
//! safetensors round trips, and the single mismatch error.

mod common;

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use tfkd_zoo::{InputSize, ModelOptions, ZooError};

fn case_shapes(case: &str) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(tfkd_zoo::record_shapes(|vb| {
        build_case(case, vb).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?)
}

#[test]
fn pytorch_checkpoints_load_and_match_logits() -> Result<()> {
    let fx = fixture("resnet_basic.safetensors")?;
    let expected = case_shapes("resnet_basic")?;
    for file in [
        "ckpt_resnet_basic.pth.tar",
        "ckpt_resnet_basic_dp.pth.tar",
        "ckpt_resnet_basic_bare.pth",
        "ckpt_resnet_basic_legacy.pth.tar",
    ] {
        let tensors = tfkd_zoo::read_state_dict(fixture_dir().join(file))?;
        assert!(
            !tensors
                .keys()
                .any(|k| k.contains("num_batches_tracked") || k.starts_with("module.")),
            "{file}"
        );
        tfkd_zoo::check_tensors("resnet_basic", &expected, &tensors, file)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let (model, _) = build_case("resnet_basic", vb)?;
        let y = model.forward_t(&fx["input"], false)?;
        let d = max_abs_diff(&y, &fx["eval_logits"])?;
        if d > 1e-4 {
            bail!("{file}: eval logits differ by {d}")
        }
        // A teacher built from loaded tensors records no autograd graph.
        assert!(!y.track_op(), "{file}: teacher forward tracks ops");
    }
    Ok(())
}

#[test]
fn mismatch_is_one_error_listing_everything() -> Result<()> {
    let mut tensors = tfkd_zoo::read_state_dict(fixture_dir().join("ckpt_resnet_basic.pth.tar"))?;
    tensors.remove("layer2.0.shortcut.1.running_var");
    tensors.insert(
        "fc.weight".to_string(),
        Tensor::zeros((10, 16), DType::F32, &Device::Cpu)?,
    );
    tensors.insert(
        "linear.weight".to_string(),
        Tensor::zeros((9, 16), DType::F32, &Device::Cpu)?,
    );
    let err = tfkd_zoo::check_tensors(
        "resnet_basic",
        &case_shapes("resnet_basic")?,
        &tensors,
        "edited.pth",
    )
    .err()
    .ok_or_else(|| anyhow::anyhow!("mismatch accepted"))?;
    let msg = err.to_string();
    match err {
        ZooError::StateDictMismatch {
            missing,
            unexpected,
            mis_shaped,
            ..
        } => {
            assert_eq!(missing, vec!["layer2.0.shortcut.1.running_var".to_string()]);
            assert_eq!(unexpected, vec!["fc.weight".to_string()]);
            assert_eq!(mis_shaped.len(), 1);
            assert_eq!(mis_shaped[0].name, "linear.weight");
            assert_eq!(
                (mis_shaped[0].expected.clone(), mis_shaped[0].found.clone()),
                (vec![10, 16], vec![9, 16])
            );
        }
        other => bail!("wrong error {other}"),
    }
    assert!(
        msg.starts_with("checkpoint `edited.pth` does not match model `resnet_basic`"),
        "{msg}"
    );
    assert!(
        msg.contains("1 missing [layer2.0.shortcut.1.running_var]"),
        "{msg}"
    );
    assert!(msg.contains("1 unexpected [fc.weight]"), "{msg}");
    assert!(
        msg.contains("linear.weight: expected [10, 16], found [9, 16]"),
        "{msg}"
    );
    assert!(!msg.ends_with('.'));
    Ok(())
}

#[test]
fn registry_load_rejects_a_checkpoint_of_another_model() -> Result<()> {
    let opts = ModelOptions::new(10, InputSize::Cifar);
    let path = fixture_dir().join("ckpt_resnet_basic.pth.tar");
    match tfkd_zoo::load("resnet18", &opts, &path, DType::F32, &Device::Cpu) {
        Err(ZooError::StateDictMismatch {
            model,
            mis_shaped,
            missing,
            ..
        }) => {
            assert_eq!(model, "resnet18");
            assert!(!mis_shaped.is_empty() && !missing.is_empty());
        }
        Err(e) => bail!("wrong error {e}"),
        Ok(_) => bail!("a reduced checkpoint loaded into resnet18"),
    }
    let err = tfkd_zoo::read_state_dict(fixture_dir().join("param_counts.json")).err();
    assert!(
        matches!(err, Some(ZooError::UnsupportedFormat { .. })),
        "{err:?}"
    );
    let err = tfkd_zoo::read_state_dict(fixture_dir().join("absent.safetensors")).err();
    assert!(matches!(err, Some(ZooError::Io { .. })), "{err:?}");
    // Garbage and truncated files are errors, not panics.
    let dir = std::env::temp_dir().join(format!("tfkd-zoo-garbage-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let good = std::fs::read(fixture_dir().join("ckpt_resnet_basic_legacy.pth.tar"))?;
    let zip = std::fs::read(fixture_dir().join("ckpt_resnet_basic.pth.tar"))?;
    let files: [(&str, &[u8]); 4] = [
        ("garbage.pth", b"not a checkpoint"),
        ("legacy_cut.pth", &good[..good.len() / 2]),
        ("zip_cut.pth", &zip[..zip.len() - 30]),
        ("empty.pth.tar", b""),
    ];
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes)?;
        let err = tfkd_zoo::read_state_dict(&p).err();
        assert!(matches!(err, Some(ZooError::Io { .. })), "{name}: {err:?}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Train a registry model's variables, save them as safetensors, load them
/// back through `tfkd_zoo::load`: same logits, running statistics included.
#[test]
fn safetensors_round_trip_through_the_registry() -> Result<()> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let model = tfkd_zoo::build("cnn", 10, InputSize::Cifar, vb)?;
    let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &dev)?;
    model.forward_t(&x, true)?; // moves the running statistics away from 0 / 1
    let before = model.forward_t(&x, false)?;
    let state: HashMap<String, Tensor> = tfkd_zoo::varmap_state_dict(&vm)?;
    let dir = std::env::temp_dir().join(format!("tfkd-zoo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cnn.safetensors");
    tfkd_zoo::save_safetensors(&state, &path)?;
    let loaded = tfkd_zoo::load(
        "cnn",
        &ModelOptions::new(10, InputSize::Cifar),
        &path,
        DType::F32,
        &dev,
    );
    std::fs::remove_dir_all(&dir)?;
    let after = loaded?.forward_t(&x, false)?;
    assert_eq!(max_abs_diff(&before, &after)?, 0.0);
    Ok(())
}

/// torchvision's published DenseNet files (`densenet121-a639ec97.pth`: a bare
/// state dict in the legacy format, dense layers named `norm.1`, `conv.1`, …)
/// load into the zoo's torchvision DenseNet with PyTorch's logits.
#[test]
fn torchvision_densenet_file_with_legacy_names_loads() -> Result<()> {
    let file = "tv_densenet_torchvision.pth";
    let path = fixture_dir().join(file);
    // The file holds the legacy names (so this test fails if the rename goes) ...
    let raw = tfkd_zoo::pth::read_pth_bytes(&std::fs::read(&path)?)?;
    let legacy_count = raw.iter().filter(|(k, _)| k.contains(".norm.1.") || k.contains(".conv.2.")).count();
    assert!(legacy_count >= 10, "{file}: {legacy_count} legacy names");
    // ... and reads with the module's names.
    let tensors = tfkd_zoo::read_state_dict(&path)?;
    assert_eq!(tensors.len(), raw.len());
    let legacy = |k: &str| ["norm", "relu", "conv"].iter().any(|m| k.contains(&format!(".{m}.1.")) || k.contains(&format!(".{m}.2.")));
    assert!(!tensors.keys().any(|k| legacy(k)), "{file}");
    tfkd_zoo::check_tensors("tv_densenet", &case_shapes("tv_densenet")?, &tensors, file)?;
    let fx = fixture("tv_densenet.safetensors")?;
    for (name, t) in &tensors {
        assert_eq!(max_abs_diff(t, &fx[&format!("param.{name}")])?, 0.0, "{name}");
    }
    let (model, _) = build_case("tv_densenet", VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
    let d = max_abs_diff(&model.forward_t(&fx["input"], false)?, &fx["eval_logits"])?;
    if d > 1e-4 {
        bail!("{file}: eval logits differ by {d}")
    }
    Ok(())
}

/// Every dense-layer parameter of the full `densenet121_imagenet` has a
/// legacy name that the rename maps back to it, and no other name of the
/// torchvision networks is renamed.
#[test]
fn legacy_densenet_names_cover_the_imagenet_densenet() -> Result<()> {
    use tfkd_zoo::checkpoint::legacy_densenet_key;
    use tfkd_zoo::pretrained::{TorchvisionArch, NUM_CLASSES};
    let mut renamed = 0;
    for arch in TorchvisionArch::ALL {
        for (name, _) in tfkd_zoo::param_shapes(arch.model(), &ModelOptions::new(NUM_CLASSES, InputSize::ImageNet))? {
            assert_eq!(legacy_densenet_key(&name), None, "{name}");
            let parts: Vec<&str> = name.rsplitn(2, '.').collect();
            let (module, tensor) = (parts[1], parts[0]);
            for stem in ["norm", "relu", "conv"] {
                for i in ["1", "2"] {
                    if let Some(head) = module.strip_suffix(&format!("{stem}{i}")) {
                        if head.ends_with('.') && head.contains("denselayer") {
                            let legacy = format!("{head}{stem}.{i}.{tensor}");
                            assert_eq!(legacy_densenet_key(&legacy).as_deref(), Some(name.as_str()), "{legacy}");
                            renamed += 1;
                        }
                    }
                }
            }
        }
    }
    // 58 dense layers × (2 BatchNorms × 4 tensors + 2 convs).
    assert_eq!(renamed, 58 * 10);
    for key in [
        "features.denseblock1.denselayer1.norm.3.weight",
        "features.denseblock1.denselayer1.pool.1.weight",
        "features.denseblock1.denselayer.norm.1.weight",
        "features.transition1.norm.1.weight",
        "features.denseblock1.denselayer1.norm.1.num_batches_tracked",
    ] {
        assert_eq!(legacy_densenet_key(key), None, "{key}");
    }
    assert_eq!(legacy_densenet_key("denselayer12.relu.2.bias").as_deref(), Some("denselayer12.relu2.bias"));
    Ok(())
}
