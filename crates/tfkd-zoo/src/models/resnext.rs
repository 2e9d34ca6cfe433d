//! ResNeXt29-8×64d for CIFAR (Xie et al., "Aggregated Residual Transformations
//! for Deep Neural Networks", CVPR 2017).
//!
//! Reference: `model/resnext.py` (`CifarResNeXt(cardinality=8, depth=29,
//! widen_factor=4)`) of yuanli2333/Teacher-free-Knowledge-Distillation, from
//! prlz77/ResNeXt.pytorch. Stem conv3×3 3→64 + BN + ReLU; 3 stages of
//! (depth − 2)/9 bottlenecks, outputs 64w, 128w, 256w, strides 1, 2, 2; inner
//! width D = cardinality·out/w with a grouped 3×3 conv; shortcut conv1×1 + BN
//! only when in ≠ out. Head `avg_pool2d(x, 8, 1)` → Linear; at 32×32 that pool is
//! global, and the zoo uses global pooling at every size (the original fails at
//! 64×64).
//!
//! Custom initialisation reproduced: every weight of a key containing `conv`
//! gets kaiming_normal(fan_out), BN weights 1, every bias 0, the classifier
//! weight kaiming_normal(fan_in).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, conv2d, linear, BatchNorm, BiasInit, Conv2d, ConvSpec, ResidualBlock, WeightInit};
use crate::ops::global_avg_pool;

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of the CIFAR ResNeXt.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNeXtConfig {
    /// Number of groups (8).
    pub cardinality: usize,
    /// Depth (29): (depth − 2)/9 bottlenecks per stage.
    pub depth: usize,
    /// Widen factor (4).
    pub widen_factor: usize,
    /// Stem width (64); stages output base·w, 2·base·w, 4·base·w.
    pub base: usize,
}

impl ResNeXtConfig {
    /// ResNeXt29-8×64d.
    pub fn resnext29_8x64d() -> Self {
        Self {
            cardinality: 8,
            depth: 29,
            widen_factor: 4,
            base: 64,
        }
    }

    /// The same network (depth, cardinality, widen factor) with the base width
    /// divided by the width divisor `d` (rounded up, at least 1; see
    /// [`super::div_ceil_multiple`]). Every width derives from it: the stem
    /// (base), the stage outputs (base·w·2^s) and the grouped inner widths
    /// (cardinality·base·2^s), which therefore stay multiples of the
    /// cardinality.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            base: div_ceil_multiple(self.base, d, 1),
            ..self.clone()
        }
    }
}

/// A ResNeXt bottleneck: `conv_reduce`/`bn_reduce`, the grouped
/// `conv_conv`/`bn`, `conv_expand`/`bn_expand` and the projection
/// `shortcut.shortcut_conv`/`shortcut_bn` (created first, as the original).
fn bottleneck(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    stride: usize,
    card: usize,
    w: usize,
) -> Result<ResidualBlock> {
    let d = card * cout / w;
    let k = WeightInit::KaimingOut;
    let n = BiasInit::None;
    let shortcut = if cin != cout {
        let s = vb.pp("shortcut");
        Some((
            conv2d(
                s.pp("shortcut_conv"),
                ConvSpec::new(cin, cout, 1, stride, 0),
                k,
                n,
            )?,
            bn2d(s.pp("shortcut_bn"), cout)?,
        ))
    } else {
        None
    };
    let convs = vec![
        (
            conv2d(vb.pp("conv_reduce"), ConvSpec::new(cin, d, 1, 1, 0), k, n)?,
            bn2d(vb.pp("bn_reduce"), d)?,
        ),
        (
            conv2d(
                vb.pp("conv_conv"),
                ConvSpec::new(d, d, 3, stride, 1).groups(card),
                k,
                n,
            )?,
            bn2d(vb.pp("bn"), d)?,
        ),
        (
            conv2d(vb.pp("conv_expand"), ConvSpec::new(d, cout, 1, 1, 0), k, n)?,
            bn2d(vb.pp("bn_expand"), cout)?,
        ),
    ];
    Ok(ResidualBlock { convs, shortcut })
}

/// The CIFAR ResNeXt.
#[derive(Debug)]
pub struct ResNeXt {
    stem: (Conv2d, BatchNorm),
    blocks: Vec<ResidualBlock>,
    classifier: Linear,
    num_classes: usize,
}

/// Builds the CIFAR ResNeXt (names `conv_1_3x3`, `bn_1`,
/// `stage_S.stage_S_bottleneck_I.*`, `classifier`).
pub fn build(cfg: &ResNeXtConfig, num_classes: usize, vb: VarBuilder) -> Result<ResNeXt> {
    if cfg.depth < 11 || (cfg.depth - 2) % 9 != 0 {
        candle_core::bail!("resnext: depth {} is not 9n + 2 with n >= 1", cfg.depth)
    }
    let n = (cfg.depth - 2) / 9;
    let w = cfg.widen_factor;
    let stages = [cfg.base, cfg.base * w, 2 * cfg.base * w, 4 * cfg.base * w];
    let stem = (
        conv2d(
            vb.pp("conv_1_3x3"),
            ConvSpec::new(3, cfg.base, 3, 1, 1),
            WeightInit::KaimingOut,
            BiasInit::None,
        )?,
        bn2d(vb.pp("bn_1"), cfg.base)?,
    );
    let mut blocks = Vec::new();
    for s in 0..3 {
        let name = format!("stage_{}", s + 1);
        let vbs = vb.pp(&name);
        for i in 0..n {
            let (cin, stride) = if i == 0 {
                (stages[s], if s == 0 { 1 } else { 2 })
            } else {
                (stages[s + 1], 1)
            };
            blocks.push(bottleneck(
                vbs.pp(format!("{name}_bottleneck_{i}")),
                cin,
                stages[s + 1],
                stride,
                cfg.cardinality,
                w,
            )?);
        }
    }
    let classifier = linear(
        vb.pp("classifier"),
        stages[3],
        num_classes,
        WeightInit::KaimingIn,
        BiasInit::Zero,
    )?;
    Ok(ResNeXt {
        stem,
        blocks,
        classifier,
        num_classes,
    })
}

impl crate::Model for ResNeXt {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = self
            .stem
            .1
            .forward_act_t(&self.stem.0.forward(xs)?, train, Some(Activation::Relu))?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
        Ok(global_avg_pool(&x)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.classifier.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(ResNeXt);
