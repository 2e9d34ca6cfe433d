//! CIFAR ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image
//! Recognition", CVPR 2016), kuangliu-style: 3×3 stride-1 stem, no max-pool.
//!
//! Reference: `model/resnet.py` of yuanli2333/Teacher-free-Knowledge-Distillation.
//! Post-activation blocks; shortcut conv1×1 + BN when the stride or the channel
//! count changes; head `avg_pool2d(out, 4)` → Linear. The 4×4 pool equals global
//! average pooling at 32×32; the zoo uses global pooling for every input, which
//! makes the same network work at 64×64 (Tiny-ImageNet), where the original's
//! fixed pool fails. The unused `feature1..4` tensors of the original are not
//! computed.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, conv2d, conv_bn_act, linear, BatchNorm, BiasInit, Conv2d, ConvSpec, ResidualBlock, WeightInit};
use crate::ops::global_avg_pool;

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of a CIFAR ResNet.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Bottleneck blocks (expansion 4) instead of basic blocks.
    pub bottleneck: bool,
    /// Blocks per stage.
    pub blocks: [usize; 4],
    /// Planes per stage (64, 128, 256, 512).
    pub widths: [usize; 4],
    /// Stem width (64).
    pub stem: usize,
}

impl ResNetConfig {
    fn std(bottleneck: bool, blocks: [usize; 4]) -> Self {
        Self {
            bottleneck,
            blocks,
            widths: [64, 128, 256, 512],
            stem: 64,
        }
    }
    /// ResNet18: basic blocks [2, 2, 2, 2].
    pub fn resnet18() -> Self {
        Self::std(false, [2, 2, 2, 2])
    }
    /// ResNet34: basic blocks [3, 4, 6, 3].
    pub fn resnet34() -> Self {
        Self::std(false, [3, 4, 6, 3])
    }
    /// ResNet50: bottlenecks [3, 4, 6, 3].
    pub fn resnet50() -> Self {
        Self::std(true, [3, 4, 6, 3])
    }
    /// ResNet101: bottlenecks [3, 4, 23, 3].
    pub fn resnet101() -> Self {
        Self::std(true, [3, 4, 23, 3])
    }
    /// ResNet152: bottlenecks [3, 8, 36, 3].
    pub fn resnet152() -> Self {
        Self::std(true, [3, 8, 36, 3])
    }

    /// The same network (blocks, strides, expansion) with the stem and the
    /// stage widths divided by the width divisor `d` (rounded up, at least 1;
    /// see [`super::div_ceil_multiple`]).
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            widths: self.widths.map(|w| div_ceil_multiple(w, d, 1)),
            stem: div_ceil_multiple(self.stem, d, 1),
            ..self.clone()
        }
    }
}

/// A basic block (two 3×3 convs) or a bottleneck (1×1, 3×3 with the
/// stride, 1×1 to 4× planes); shortcut `shortcut.0/1`.
fn block(vb: VarBuilder, cin: usize, planes: usize, stride: usize, bottleneck: bool) -> Result<ResidualBlock> {
    let specs = if bottleneck {
        vec![
            ConvSpec::new(cin, planes, 1, 1, 0),
            ConvSpec::new(planes, planes, 3, stride, 1),
            ConvSpec::new(planes, 4 * planes, 1, 1, 0),
        ]
    } else {
        vec![
            ConvSpec::new(cin, planes, 3, stride, 1),
            ConvSpec::new(planes, planes, 3, 1, 1),
        ]
    };
    ResidualBlock::numbered(vb, &specs, WeightInit::Torch, "shortcut")
}

/// A CIFAR ResNet.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<ResidualBlock>,
    linear: Linear,
    num_classes: usize,
}

/// Builds a CIFAR ResNet (parameter names `conv1`, `bn1`, `layerI.J.*`, `linear`).
pub fn build(cfg: &ResNetConfig, num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    let conv1 = conv2d(
        vb.pp("conv1"),
        ConvSpec::new(3, cfg.stem, 3, 1, 1),
        WeightInit::Torch,
        BiasInit::None,
    )?;
    let bn1 = bn2d(vb.pp("bn1"), cfg.stem)?;
    let exp = if cfg.bottleneck { 4 } else { 1 };
    let mut cin = cfg.stem;
    let mut layers = Vec::new();
    for (s, (&n, &planes)) in cfg.blocks.iter().zip(cfg.widths.iter()).enumerate() {
        let vbl = vb.pp(format!("layer{}", s + 1));
        for j in 0..n {
            let stride = if j == 0 && s > 0 { 2 } else { 1 };
            layers.push(block(vbl.pp(j), cin, planes, stride, cfg.bottleneck)?);
            cin = planes * exp;
        }
    }
    let linear = linear(
        vb.pp("linear"),
        cin,
        num_classes,
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    Ok(ResNet {
        conv1,
        bn1,
        layers,
        linear,
        num_classes,
    })
}

impl crate::Model for ResNet {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = conv_bn_act(&self.conv1, &self.bn1, xs, train, Activation::Relu)?;
        for b in &self.layers {
            x = b.forward_t(&x, train)?;
        }
        Ok(global_avg_pool(&x)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.linear.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(ResNet);
