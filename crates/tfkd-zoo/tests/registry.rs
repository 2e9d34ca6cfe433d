//! Registry-wide checks: every row's parameter count equals the PyTorch
//! reference (`fixtures/zoo/param_counts.json`, from
//! `scripts/gen_zoo_fixtures.py`) at K = 10, 100, 200 (and 1000 for ImageNet)
//! and the paper's table (docs/MODELS.md) / torchvision's published counts; every
//! state-dict name and shape equals the reference's; errors name the problem.
//! Counting allocates no weights (recording `VarBuilder`).

mod common;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tfkd_zoo::registry::MODELS;
use tfkd_zoo::{InputSize, ModelOptions, ZooError};

fn reference() -> Result<Value> {
    let p = common::fixture_dir().join("param_counts.json");
    let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn size_key(i: InputSize) -> &'static str {
    match i {
        InputSize::Cifar => "cifar",
        InputSize::Tiny => "tiny",
        InputSize::ImageNet => "imagenet",
    }
}

#[test]
fn parameter_counts_equal_pytorch_and_paper() -> Result<()> {
    let r = reference()?;
    let mut checked = 0;
    for e in MODELS {
        for &input in e.inputs {
            let refs = &r[size_key(input)][e.name]["params"];
            let ks: &[usize] = if input == InputSize::ImageNet {
                &[10, 100, 200, 1000]
            } else {
                &[10, 100, 200]
            };
            for &k in ks {
                let ours = tfkd_zoo::param_count(e.name, k, input)?;
                let theirs = refs[k.to_string()]
                    .as_u64()
                    .with_context(|| format!("{} {input} K={k} missing", e.name))?;
                if ours != theirs {
                    bail!(
                        "{} {input} K={k}: {ours} parameters, PyTorch reference {theirs}",
                        e.name
                    )
                }
                checked += 1;
            }
        }
        for &(k, paper) in e.reference_params {
            let input = e.inputs[0];
            let ours = tfkd_zoo::param_count(e.name, k, input)?;
            if ours != paper {
                bail!("{} K={k}: {ours} parameters, table {paper}", e.name)
            }
        }
    }
    assert!(checked >= 14 * 6 + 4 * 4, "only {checked} counts checked");
    // The paper's cross-check: ResNeXt29-8x64d has 34.52M parameters at K = 100.
    assert_eq!(
        tfkd_zoo::param_count("resnext29", 100, InputSize::Cifar)?,
        34_518_948
    );
    Ok(())
}

#[test]
fn state_dict_names_and_shapes_equal_pytorch() -> Result<()> {
    let r = reference()?;
    for e in MODELS {
        let input = e.inputs[0];
        let k = if input == InputSize::ImageNet {
            1000
        } else {
            100
        };
        let ours: BTreeMap<String, Vec<usize>> =
            tfkd_zoo::param_shapes(e.name, &ModelOptions::new(k, input))?
                .into_iter()
                .collect();
        let theirs: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(r[size_key(input)][e.name]["shapes"].clone())
                .with_context(|| format!("{}: no reference shapes", e.name))?;
        if ours != theirs {
            let missing: Vec<_> = theirs
                .keys()
                .filter(|k| !ours.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = ours
                .keys()
                .filter(|k| !theirs.contains_key(*k))
                .take(5)
                .collect();
            bail!(
                "{}: state dict differs (missing {missing:?}, unexpected {extra:?})",
                e.name
            )
        }
    }
    Ok(())
}

#[test]
fn registry_names_are_unique_and_listed() {
    let names = tfkd_zoo::list();
    assert_eq!(names.len(), MODELS.len());
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    for n in [
        "cnn",
        "resnet18",
        "mobilenet_v2",
        "shufflenet_v2",
        "densenet121",
        "googlenet",
        "resnext29",
        "resnet18_imagenet",
    ] {
        assert!(names.contains(&n), "{n} missing");
    }
}

#[test]
fn errors_name_the_problem() {
    let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
    let err = tfkd_zoo::build("resnet19", 10, InputSize::Cifar, vb.clone())
        .err()
        .map(|e| e.to_string());
    let msg = err.unwrap_or_default();
    assert!(
        msg.starts_with("unknown model `resnet19`") && msg.contains("resnet18"),
        "{msg}"
    );

    let err = tfkd_zoo::build("resnet18", 10, InputSize::ImageNet, vb.clone()).err();
    assert!(
        matches!(err, Some(ZooError::UnsupportedInput { input: 224, .. })),
        "{err:?}"
    );

    let err = tfkd_zoo::build("resnet18_imagenet", 10, InputSize::Cifar, vb.clone()).err();
    assert!(
        matches!(err, Some(ZooError::UnsupportedInput { input: 32, .. })),
        "{err:?}"
    );

    let err = tfkd_zoo::build("cnn", 0, InputSize::Cifar, vb).err();
    assert!(
        matches!(err, Some(ZooError::InvalidConfig { .. })),
        "{err:?}"
    );
    assert_eq!(InputSize::from_side(64), Some(InputSize::Tiny));
    assert_eq!(InputSize::from_side(48), None);
}

/// Every registered model builds from a fresh `VarMap` (its initialisation
/// hints) and maps a batch of 2 to `[2, K]`, at its smallest input size
/// (ImageNet models at 64×64 to keep the test fast; they pool globally).
#[test]
fn every_model_forwards_to_k_logits() -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    let dev = Device::Cpu;
    for e in MODELS {
        // The widest networks are covered by their reduced parity instances and
        // the count / shape checks; a full forward of them would dominate CI time.
        if [
            "resnext29",
            "wrn_28_10",
            "resnext101_32x8d_imagenet",
            "resnet152",
            "resnet101",
        ]
        .contains(&e.name)
        {
            continue;
        }
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let input = e.inputs[0];
        let model = tfkd_zoo::build(e.name, 7, input, vb)?;
        let side = if input == InputSize::ImageNet {
            64
        } else {
            input.side()
        };
        let x = Tensor::randn(0f32, 1.0, (2, 3, side, side), &dev)?;
        let y = model.forward_t(&x, false)?;
        assert_eq!(y.dims(), &[2, 7], "{}", e.name);
        assert_eq!(model.num_classes(), 7);
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert!(n > 0, "{}: no variables", e.name);
    }
    Ok(())
}

/// `docs/MODELS.md`'s tables (parameter counts, width divisors) are generated
/// from the registry; a stale table is rewritten and the test fails (commit
/// the new file).
#[test]
fn models_doc_table_is_current() -> Result<()> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/MODELS.md");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut fresh = text.clone();
    for (marker, table) in [
        ("models-table", tfkd_zoo::models_markdown()?),
        ("width-table", tfkd_zoo::width_markdown()?),
    ] {
        let start = format!("<!-- {marker}:start -->\n");
        let end = format!("<!-- {marker}:end -->");
        let (head, rest) = fresh
            .split_once(&start)
            .with_context(|| format!("no {marker} start marker"))?;
        let (_, tail) = rest
            .split_once(&end)
            .with_context(|| format!("no {marker} end marker"))?;
        fresh = format!("{head}{start}{table}{end}{tail}");
    }
    if fresh != text {
        std::fs::write(&path, fresh)?;
        bail!("docs/MODELS.md was stale and has been regenerated; commit it")
    }
    Ok(())
}

#[test]
fn cost_metadata_is_complete_and_consistent() {
    let names: Vec<&str> = tfkd_zoo::names().collect();
    assert_eq!(names, tfkd_zoo::list());
    assert_eq!(names.len(), MODELS.len());
    for e in MODELS {
        assert!(
            e.forward_mmacs.is_finite() && e.forward_mmacs > 0.0,
            "{}: forward_mmacs {}",
            e.name,
            e.forward_mmacs
        );
        for &(d, s) in e.measured_cpu_seconds_per_image {
            assert!(d >= 1 && s > 0.0 && s < 1.0, "{}: measured ({d}, {s})", e.name);
            assert_eq!(e.measured_cpu_seconds(d), Some(s));
        }
        assert_eq!(e.is_imagenet(), e.inputs == [InputSize::ImageNet], "{}", e.name);
        match e.scaled_stand_in {
            Some(s) => {
                assert!(e.is_imagenet(), "{}: stand-in for a non-ImageNet network", e.name);
                let stand_in = tfkd_zoo::entry(s).expect("stand-in is a registry name");
                assert!(!stand_in.is_imagenet(), "{}: stand-in {s} is ImageNet", e.name);
            }
            None => assert!(!e.is_imagenet(), "{}: ImageNet network without stand-in", e.name),
        }
        if e.tiny_params_note.is_some() {
            assert!(e.inputs.contains(&InputSize::Tiny), "{}", e.name);
        }
    }
    let cnn = tfkd_zoo::entry("cnn").expect("cnn");
    assert_eq!(cnn.measured_cpu_seconds(16), Some(0.0144 / 32.0));
    assert_eq!(cnn.measured_cpu_seconds(8), None);
}
