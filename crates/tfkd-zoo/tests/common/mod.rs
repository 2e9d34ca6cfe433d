//! Shared helpers of the integration tests: fixture paths, reduced-width
//! family configurations (the same as `scripts/gen_zoo_fixtures.py`'s `CASES`)
//! and tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use tfkd_zoo::models::{
    alexnet, cnn, densenet, googlenet, mobilenet_v2, resnet, resnext, shufflenet_v2, tv_densenet,
    tv_resnet, vgg, wrn,
};
use tfkd_zoo::Model;

/// Number of classes of the reduced cases.
pub const K: usize = 10;

/// `fixtures/zoo/` of the workspace, or of the `fixtures` folder named by
/// `TFKD_FIXTURES` (a test binary carried to another machine, e.g. the GPU
/// one of `scripts/gpu/check.sh`, finds the repository's fixtures there).
pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("TFKD_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join("zoo"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("fixtures").join("zoo"),
    }
}

/// Loads `fixtures/zoo/<name>`.
pub fn fixture(name: &str) -> Result<HashMap<String, Tensor>> {
    let p = fixture_dir().join(name);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .with_context(|| format!("fixture {}", p.display()))
}

/// Tensors of `fx` under `prefix`, with the prefix removed.
pub fn with_prefix(fx: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    fx.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Max |a − b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        bail!("shape {:?} vs {:?}", a.dims(), b.dims())
    }
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Max |a|.
pub fn max_abs(a: &Tensor) -> Result<f32> {
    Ok(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Builds the reduced instance `case` over `vb` (dropout seed 0).
pub fn build_case(case: &str, vb: VarBuilder) -> Result<(Box<dyn Model>, usize)> {
    let st = |t, c, n, s| mobilenet_v2::Stage { t, c, n, s };
    Ok(match case {
        "cnn" | "cnn_t64" => {
            let side = if case == "cnn" { 32 } else { 64 };
            let cfg = cnn::CnnConfig {
                num_channels: 4,
                dropout: 0.0,
            };
            (Box::new(cnn::build(&cfg, K, side, 0, vb)?), side)
        }
        "resnet_basic" | "resnet_basic_t64" => {
            let cfg = resnet::ResNetConfig {
                bottleneck: false,
                blocks: [2, 1, 1, 1],
                widths: [4, 8, 8, 16],
                stem: 4,
            };
            (
                Box::new(resnet::build(&cfg, K, vb)?),
                if case == "resnet_basic" { 32 } else { 64 },
            )
        }
        "resnet_bottleneck" => {
            let cfg = resnet::ResNetConfig {
                bottleneck: true,
                blocks: [1, 2, 1, 1],
                widths: [2, 4, 4, 8],
                stem: 4,
            };
            (Box::new(resnet::build(&cfg, K, vb)?), 32)
        }
        "mobilenet_v2" => {
            let cfg = mobilenet_v2::MobileNetV2Config {
                stem: 8,
                stages: [
                    st(1, 8, 1, 1),
                    st(2, 8, 2, 2),
                    st(2, 8, 1, 2),
                    st(2, 16, 2, 2),
                    st(2, 16, 1, 1),
                    st(2, 24, 2, 1),
                    st(2, 24, 1, 1),
                ],
                last: 32,
            };
            (Box::new(mobilenet_v2::build(&cfg, K, vb)?), 32)
        }
        "shufflenet_v2" => {
            let cfg = shufflenet_v2::ShuffleNetV2Config {
                stem: 8,
                out_channels: [8, 16, 24, 32],
                repeats: [1, 2, 1],
            };
            (Box::new(shufflenet_v2::build(&cfg, K, vb)?), 32)
        }
        "densenet" => {
            let cfg = densenet::DenseNetConfig {
                blocks: vec![1, 2, 1, 2],
                growth: 4,
                reduction: 0.5,
            };
            (Box::new(densenet::build(&cfg, K, vb)?), 32)
        }
        "googlenet" => {
            let a = [4, 2, 4, 2, 4, 4];
            let b = [8, 4, 8, 2, 4, 4];
            let cfg = googlenet::GoogLeNetConfig {
                prelayer: 8,
                inceptions: [[4, 4, 8, 2, 4, 4], [4, 4, 4, 2, 4, 4], a, a, a, a, a, b, b],
                dropout: 0.0,
            };
            (Box::new(googlenet::build(&cfg, K, 0, vb)?), 32)
        }
        "resnext" => {
            let cfg = resnext::ResNeXtConfig {
                cardinality: 2,
                depth: 11,
                widen_factor: 4,
                base: 8,
            };
            (Box::new(resnext::build(&cfg, K, vb)?), 32)
        }
        "wrn" => (
            Box::new(wrn::build(&wrn::WrnConfig::new(10, 1), K, 0, vb)?),
            32,
        ),
        "alexnet" => {
            let cfg = alexnet::AlexNetConfig {
                widths: [8, 16, 16, 16, 16],
            };
            (Box::new(alexnet::build(&cfg, K, vb)?), 32)
        }
        "vgg" | "vgg_t64" => {
            use vgg::Layer::{Conv, Pool};
            let layers = vec![
                Conv(8),
                Pool,
                Conv(16),
                Pool,
                Conv(16),
                Conv(16),
                Pool,
                Conv(16),
                Pool,
                Conv(32),
                Pool,
            ];
            let cfg = vgg::VggConfig {
                layers,
                hidden: 16,
                pool: 7,
                dropout: 0.0,
            };
            (
                Box::new(vgg::build(&cfg, K, 0, vb)?),
                if case == "vgg" { 32 } else { 64 },
            )
        }
        "tv_resnet_basic" => {
            let cfg = tv_resnet::TvResNetConfig {
                bottleneck: false,
                blocks: [1, 1, 1, 1],
                widths: [8, 16, 16, 32],
                stem: 8,
                groups: 1,
                width_per_group: 64,
                inner_widths: None,
            };
            (Box::new(tv_resnet::build(&cfg, K, vb)?), 64)
        }
        "tv_resnext" => {
            let cfg = tv_resnet::TvResNetConfig {
                bottleneck: true,
                blocks: [1, 1, 1, 1],
                widths: [8, 8, 16, 16],
                stem: 8,
                groups: 2,
                width_per_group: 32,
                inner_widths: None,
            };
            (Box::new(tv_resnet::build(&cfg, K, vb)?), 64)
        }
        "tv_densenet" => {
            let cfg = tv_densenet::TvDenseNetConfig {
                growth: 4,
                blocks: vec![1, 2, 1, 1],
                init_features: 8,
                bn_size: 2,
            };
            (Box::new(tv_densenet::build(&cfg, K, vb)?), 64)
        }
        other => bail!("unknown case {other}"),
    })
}

/// All reduced cases of the fixtures.
pub const CASES: &[&str] = &[
    "cnn",
    "cnn_t64",
    "resnet_basic",
    "resnet_basic_t64",
    "resnet_bottleneck",
    "mobilenet_v2",
    "shufflenet_v2",
    "densenet",
    "googlenet",
    "resnext",
    "wrn",
    "tv_resnet_basic",
    "tv_resnext",
    "tv_densenet",
    "alexnet",
    "vgg",
    "vgg_t64",
];

/// A `VarMap` whose variables are the given tensors.
pub fn varmap_from(tensors: &HashMap<String, Tensor>) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (k, v) in tensors {
            data.insert(k.clone(), Var::from_tensor(v)?);
        }
    }
    Ok(vm)
}
