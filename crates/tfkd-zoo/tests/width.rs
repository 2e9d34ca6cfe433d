//! Width divisor (`ModelOptions::width_divisor`): every registry model builds
//! at d = 1, 2, 4, 8, 16 over the shape recorder; d = 1 is exactly today's
//! network; the parameter count strictly decreases with d; the state-dict
//! names (the structure) do not change; the CIFAR/Tiny models forward a batch
//! of 2 to finite `[2, K]` logits in train and eval mode at d = 8 (and 16 for
//! the widest); a divisor of 0 is an `InvalidConfig` naming the model.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tfkd_zoo::models::{div_ceil_multiple, shufflenet_v2, tv_resnet};
use tfkd_zoo::registry::MODELS;
use tfkd_zoo::{InputSize, ModelOptions, ZooError};

const DIVISORS: [usize; 5] = [1, 2, 4, 8, 16];

/// The widest networks: forwarded at d = 16 at both sizes, at d = 8 at 32×32
/// only, to keep the test fast.
const WIDEST: [&str; 6] = [
    "vgg19",
    "wrn_28_10",
    "resnext29",
    "resnet152",
    "resnet101",
    "resnet50",
];

fn learnable(shapes: &[(String, Vec<usize>)]) -> u64 {
    shapes
        .iter()
        .filter(|(n, _)| !tfkd_zoo::is_buffer(n))
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

#[test]
fn counts_decrease_with_the_divisor_and_names_stay() -> Result<()> {
    let mut checked = 0;
    for e in MODELS {
        for &input in e.inputs {
            let k = if input == InputSize::ImageNet {
                1000
            } else {
                100
            };
            let base = ModelOptions::new(k, input);
            let full = tfkd_zoo::param_shapes(e.name, &base)?;
            let names: Vec<&String> = full.iter().map(|(n, _)| n).collect();
            let mut prev = u64::MAX;
            for d in DIVISORS {
                let opts = base.with_width_divisor(d);
                let shapes = tfkd_zoo::param_shapes(e.name, &opts)
                    .with_context(|| format!("{} {input} d={d}", e.name))?;
                let n = learnable(&shapes);
                ensure!(
                    n == tfkd_zoo::param_count_with(e.name, &opts)?,
                    "{} {input} d={d}: param_count_with differs",
                    e.name
                );
                if d == 1 {
                    ensure!(shapes == full, "{} {input}: d = 1 changed a shape", e.name);
                    ensure!(
                        n == tfkd_zoo::param_count(e.name, k, input)?,
                        "{} {input}: d = 1 count differs from param_count",
                        e.name
                    );
                }
                if n >= prev {
                    bail!(
                        "{} {input} d={d}: {n} parameters, not below the previous divisor's {prev}",
                        e.name
                    )
                }
                prev = n;
                let thin: Vec<&String> = shapes.iter().map(|(n, _)| n).collect();
                ensure!(
                    thin == names,
                    "{} {input} d={d}: the state-dict names changed",
                    e.name
                );
                // The classifier still outputs K: some tensor ends in K outputs
                // (the last learnable tensor is the classifier's bias or weight).
                let last = shapes
                    .iter()
                    .rev()
                    .find(|(n, _)| !tfkd_zoo::is_buffer(n))
                    .context("no parameters")?;
                ensure!(
                    last.1.first() == Some(&k),
                    "{} {input} d={d}: classifier tensor {} has shape {:?}",
                    e.name,
                    last.0,
                    last.1
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= (16 * 2 + 4) * DIVISORS.len(), "only {checked}");
    Ok(())
}

fn forward_case(name: &str, input: InputSize, d: usize, dev: &Device) -> Result<()> {
    let k = 7;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let opts = ModelOptions::new(k, input).with_width_divisor(d);
    let model = tfkd_zoo::build_with(name, &opts, vb)?;
    let side = if input == InputSize::ImageNet {
        64
    } else {
        input.side()
    };
    let x = Tensor::randn(0f32, 1.0, (2, 3, side, side), dev)?;
    for train in [true, false] {
        let y = model.forward_t(&x, train)?;
        ensure!(
            y.dims() == [2, k],
            "{name} {input} d={d} train={train}: logits {:?}",
            y.dims()
        );
        let finite = y
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        ensure!(
            finite,
            "{name} {input} d={d} train={train}: non-finite logits"
        );
    }
    // The variables are exactly the recorded learnable parameters.
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    let counted = tfkd_zoo::param_count_with(name, &opts)? as usize;
    let buffers: usize = tfkd_zoo::param_shapes(name, &opts)?
        .iter()
        .filter(|(n, _)| tfkd_zoo::is_buffer(n))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    ensure!(
        n == counted + buffers,
        "{name} d={d}: {n} variable elements, {counted} parameters + {buffers} buffers"
    );
    Ok(())
}

/// A real forward of every CIFAR/Tiny model at d = 8 at 32×32 and 64×64 (the
/// six widest at d = 8 at 32×32 only, and at d = 16 at both sizes), and of the
/// ImageNet models at d = 16 on 64×64 input (they pool globally).
#[test]
fn thinned_models_forward_to_finite_k_logits() -> Result<()> {
    let dev = Device::Cpu;
    for e in MODELS {
        if e.inputs.contains(&InputSize::ImageNet) {
            forward_case(e.name, InputSize::ImageNet, 16, &dev)?;
            continue;
        }
        for &input in e.inputs {
            let widest = WIDEST.contains(&e.name);
            if !widest || input == InputSize::Cifar {
                forward_case(e.name, input, 8, &dev)?;
            }
            if widest {
                forward_case(e.name, input, 16, &dev)?;
            }
        }
    }
    Ok(())
}

#[test]
fn divisor_zero_is_invalid_config_naming_the_model() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    for e in MODELS {
        let opts = ModelOptions::new(10, e.inputs[0]).with_width_divisor(0);
        let err = tfkd_zoo::build_with(e.name, &opts, vb.clone()).err();
        match &err {
            Some(ZooError::InvalidConfig { model, reason }) => {
                assert_eq!(model, e.name);
                assert!(reason.contains("width divisor 0"), "{reason}");
            }
            other => panic!("{}: expected InvalidConfig, got {other:?}", e.name),
        }
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&format!("`{}`", e.name)), "{msg}");
        let err = tfkd_zoo::param_shapes(e.name, &opts).err();
        assert!(
            matches!(err, Some(ZooError::InvalidConfig { .. })),
            "{}: {err:?}",
            e.name
        );
    }
}

#[test]
fn options_default_to_the_paper_width() {
    let o = ModelOptions::new(100, InputSize::Cifar);
    assert_eq!(o.width_divisor, 1);
    let t = o.with_width_divisor(4);
    assert_eq!(t.width_divisor, 4);
    assert_eq!(
        (t.num_classes, t.input, t.dropout_seed),
        (100, InputSize::Cifar, o.dropout_seed)
    );
    // Struct-update syntax, as other crates use it, keeps the default divisor.
    let s = ModelOptions {
        dropout_seed: 5,
        ..ModelOptions::new(10, InputSize::Tiny)
    };
    assert_eq!(s.width_divisor, 1);
}

#[test]
fn div_ceil_multiple_rounds_up_to_the_multiple() {
    assert_eq!(div_ceil_multiple(64, 1, 1), 64);
    assert_eq!(div_ceil_multiple(64, 3, 1), 22);
    assert_eq!(div_ceil_multiple(116, 8, 2), 16);
    assert_eq!(div_ceil_multiple(232, 16, 2), 16);
    assert_eq!(div_ceil_multiple(256, 16, 32), 32);
    assert_eq!(div_ceil_multiple(1, 16, 1), 1);
    assert_eq!(div_ceil_multiple(3, 2, 4), 4);
    // Degenerate arguments never panic.
    assert_eq!(div_ceil_multiple(7, 0, 0), 7);
}

/// The constrained families: ShuffleNetV2's stage widths stay even and
/// ResNeXt101-32x8d's inner widths stay multiples of its 32 groups.
#[test]
fn constrained_widths_keep_their_multiples() -> Result<()> {
    for d in DIVISORS {
        let s = shufflenet_v2::ShuffleNetV2Config::paper().thinned(d);
        assert!(s.out_channels[..3].iter().all(|c| c % 2 == 0), "{s:?}");
        let r = tv_resnet::TvResNetConfig::resnext101_32x8d().thinned(d);
        for st in 0..4 {
            let w = r.inner_width(st);
            assert!(w > 0 && w % 32 == 0, "d={d} stage {st}: {w}");
            assert_eq!(w, div_ceil_multiple(256 << st, d, 32));
        }
    }
    // The shapes of the grouped convs: [inner, inner / groups, 3, 3].
    let opts = ModelOptions::new(1000, InputSize::ImageNet).with_width_divisor(16);
    let shapes: BTreeMap<String, Vec<usize>> =
        tfkd_zoo::param_shapes("resnext101_32x8d_imagenet", &opts)?
            .into_iter()
            .collect();
    assert_eq!(shapes["layer1.0.conv2.weight"], vec![32, 1, 3, 3]);
    assert_eq!(shapes["layer4.0.conv2.weight"], vec![128, 4, 3, 3]);
    assert_eq!(shapes["fc.weight"], vec![1000, 128]);
    Ok(())
}
