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
use candle_nn::{Linear, VarBuilder};

use crate::layers::{bn2d, conv2d, conv_bn, linear, BInit, BatchNorm, Conv2d, ConvSpec, WInit};
use crate::ops::global_avg_pool;

use super::div_ceil_multiple;
use tfkd_core::activation::ReluOp;

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

#[derive(Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(
        vb: VarBuilder,
        cin: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<Self> {
        let (specs, cout) = if bottleneck {
            (
                vec![
                    ConvSpec::new(cin, planes, 1, 1, 0),
                    ConvSpec::new(planes, planes, 3, stride, 1),
                    ConvSpec::new(planes, 4 * planes, 1, 1, 0),
                ],
                4 * planes,
            )
        } else {
            (
                vec![
                    ConvSpec::new(cin, planes, 3, stride, 1),
                    ConvSpec::new(planes, planes, 3, 1, 1),
                ],
                planes,
            )
        };
        let mut convs = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            let conv = conv2d(
                vb.pp(format!("conv{}", i + 1)),
                s,
                WInit::Torch,
                BInit::None,
            )?;
            let bn = bn2d(vb.pp(format!("bn{}", i + 1)), s.cout)?;
            convs.push((conv, bn));
        }
        let shortcut = if stride != 1 || cin != cout {
            let vb = vb.pp("shortcut");
            Some((
                conv2d(
                    vb.pp(0),
                    ConvSpec::new(cin, cout, 1, stride, 0),
                    WInit::Torch,
                    BInit::None,
                )?,
                bn2d(vb.pp(1), cout)?,
            ))
        } else {
            None
        };
        Ok(Self { convs, shortcut })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut out = xs.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            out = conv_bn(conv, bn, &out, train)?;
            if i != last {
                out = out.relu_op()?;
            }
        }
        let short = match &self.shortcut {
            Some((conv, bn)) => conv_bn(conv, bn, xs, train)?,
            None => xs.clone(),
        };
        (out + short)?.relu_op()
    }
}

/// A CIFAR ResNet.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<Block>,
    linear: Linear,
    num_classes: usize,
}

/// Builds a CIFAR ResNet (parameter names `conv1`, `bn1`, `layerI.J.*`, `linear`).
pub fn build(cfg: &ResNetConfig, num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    let conv1 = conv2d(
        vb.pp("conv1"),
        ConvSpec::new(3, cfg.stem, 3, 1, 1),
        WInit::Torch,
        BInit::None,
    )?;
    let bn1 = bn2d(vb.pp("bn1"), cfg.stem)?;
    let exp = if cfg.bottleneck { 4 } else { 1 };
    let mut cin = cfg.stem;
    let mut layers = Vec::new();
    for (s, (&n, &planes)) in cfg.blocks.iter().zip(cfg.widths.iter()).enumerate() {
        let vbl = vb.pp(format!("layer{}", s + 1));
        for j in 0..n {
            let stride = if j == 0 && s > 0 { 2 } else { 1 };
            layers.push(Block::new(vbl.pp(j), cin, planes, stride, cfg.bottleneck)?);
            cin = planes * exp;
        }
    }
    let linear = linear(
        vb.pp("linear"),
        cin,
        num_classes,
        WInit::Torch,
        BInit::Torch,
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
    fn forward_features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = conv_bn(&self.conv1, &self.bn1, xs, train)?.relu_op()?;
        for b in &self.layers {
            x = b.forward_t(&x, train)?;
        }
        global_avg_pool(&x)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> Result<Tensor> {
        self.linear.forward(features)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }
}
crate::impl_module_t!(ResNet);
