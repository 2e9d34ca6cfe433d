//! ImageNet DenseNet with torchvision's structure and parameter names (Huang et
//! al., CVPR 2017), used by the paper's ImageNet experiments (DenseNet121 in
//! Tables 7, 8, 11).
//!
//! Reference: `torchvision/models/densenet.py` (memory-efficient flag off, drop
//! rate 0). `features.conv0` 7×7 s2 p3 → `norm0` → ReLU → max-pool 3 s2 p1;
//! dense blocks `features.denseblockB.denselayerL.{norm1,conv1,norm2,conv2}`
//! (BN-ReLU-conv1×1 (bn_size·k)-BN-ReLU-conv3×3 (k)); transitions
//! `features.transitionB.{norm,conv}` are BN → **ReLU** → conv1×1 (×0.5) →
//! avg-pool 2 (unlike the CIFAR DenseNet); `features.norm5` → ReLU → adaptive
//! average pool → `classifier`. Initialisation as torchvision: conv
//! kaiming_normal(fan_in), BN 1/0, classifier bias 0.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, bn_act, conv2d, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, WeightInit};
use crate::ops::{avg_pool2d, global_avg_pool, max_pool2d};

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of a torchvision DenseNet.
#[derive(Debug, Clone, PartialEq)]
pub struct TvDenseNetConfig {
    /// Growth rate (32).
    pub growth: usize,
    /// Layers per dense block ([6, 12, 24, 16]).
    pub blocks: Vec<usize>,
    /// Width of the stem (64).
    pub init_features: usize,
    /// Bottleneck multiplier (4).
    pub bn_size: usize,
}

impl TvDenseNetConfig {
    /// torchvision `densenet121`.
    pub fn densenet121() -> Self {
        Self {
            growth: 32,
            blocks: vec![6, 12, 24, 16],
            init_features: 64,
            bn_size: 4,
        }
    }

    /// The same network (blocks, bottleneck multiplier, transitions) with the
    /// growth rate and the stem width divided by the width divisor `d`
    /// (rounded up, at least 1; see [`super::div_ceil_multiple`]); the
    /// bottleneck (bn_size·k), the concatenations and the halving transitions
    /// follow.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            growth: div_ceil_multiple(self.growth, d, 1),
            init_features: div_ceil_multiple(self.init_features, d, 1),
            ..self.clone()
        }
    }
}

#[derive(Debug)]
struct Layer {
    norm1: BatchNorm,
    conv1: Conv2d,
    norm2: BatchNorm,
    conv2: Conv2d,
}

#[derive(Debug)]
enum Stage {
    Dense(Vec<Layer>),
    Transition(BatchNorm, Conv2d),
}

/// A torchvision DenseNet.
#[derive(Debug)]
pub struct TvDenseNet {
    conv0: Conv2d,
    norm0: BatchNorm,
    stages: Vec<Stage>,
    norm5: BatchNorm,
    classifier: Linear,
    num_classes: usize,
}

/// Builds a torchvision DenseNet.
pub fn build(cfg: &TvDenseNetConfig, num_classes: usize, vb: VarBuilder) -> Result<TvDenseNet> {
    if cfg.blocks.is_empty() {
        candle_core::bail!("tv_densenet: at least one dense block is required")
    }
    let f = vb.pp("features");
    let k = WeightInit::KaimingIn;
    let n = BiasInit::None;
    let mut c = cfg.init_features;
    let conv0 = conv2d(f.pp("conv0"), ConvSpec::new(3, c, 7, 2, 3), k, n)?;
    let norm0 = bn2d(f.pp("norm0"), c)?;
    let mut stages = Vec::new();
    for (i, &nl) in cfg.blocks.iter().enumerate() {
        let b = f.pp(format!("denseblock{}", i + 1));
        let mut layers = Vec::new();
        for l in 0..nl {
            let v = b.pp(format!("denselayer{}", l + 1));
            let mid = cfg.bn_size * cfg.growth;
            layers.push(Layer {
                norm1: bn2d(v.pp("norm1"), c)?,
                conv1: conv2d(v.pp("conv1"), ConvSpec::new(c, mid, 1, 1, 0), k, n)?,
                norm2: bn2d(v.pp("norm2"), mid)?,
                conv2: conv2d(v.pp("conv2"), ConvSpec::new(mid, cfg.growth, 3, 1, 1), k, n)?,
            });
            c += cfg.growth;
        }
        stages.push(Stage::Dense(layers));
        if i + 1 != cfg.blocks.len() {
            let t = f.pp(format!("transition{}", i + 1));
            stages.push(Stage::Transition(
                bn2d(t.pp("norm"), c)?,
                conv2d(t.pp("conv"), ConvSpec::new(c, c / 2, 1, 1, 0), k, n)?,
            ));
            c /= 2;
        }
    }
    let norm5 = bn2d(f.pp("norm5"), c)?;
    let classifier = linear(
        vb.pp("classifier"),
        c,
        num_classes,
        WeightInit::Torch,
        BiasInit::Zero,
    )?;
    Ok(TvDenseNet {
        conv0,
        norm0,
        stages,
        norm5,
        classifier,
        num_classes,
    })
}

impl crate::Model for TvDenseNet {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let x = bn_act(&self.norm0, &self.conv0.forward(xs)?, train, Activation::Relu)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        for s in &self.stages {
            match s {
                Stage::Dense(layers) => {
                    for l in layers {
                        let y = bn_act(&l.norm1, &x, train, Activation::Relu)?;
                        let y = l.conv1.forward(&y)?;
                        let y = bn_act(&l.norm2, &y, train, Activation::Relu)?;
                        // torchvision concatenates the layer's inputs anew
                        // at every layer: the same values as this running
                        // concatenation, which the convolution's op makes
                        // (its new features are not kept on their own).
                        x = l.conv2.forward_after(&x, &y)?;
                    }
                }
                Stage::Transition(norm, conv) => {
                    x = conv.forward(&bn_act(norm, &x, train, Activation::Relu)?)?;
                    x = avg_pool2d(&x, 2)?;
                }
            }
        }
        Ok(global_avg_pool(&bn_act(&self.norm5, &x, train, Activation::Relu)?)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.classifier.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(TvDenseNet);
