//! ShuffleNetV2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for
//! Efficient CNN Architecture Design", ECCV 2018).
//!
//! Reference: `model/shufflenetv2.py` of yuanli2333/Teacher-free-Knowledge-Distillation.
//! Quirks reproduced: the stem is conv3×3 + BN with **no ReLU** and no max-pool;
//! every conv has a bias. Stride-2 units run both branches on the full input;
//! stride-1 units split the channels, pass the first half through unchanged.
//! Both concat [shortcut, residual] and shuffle with 2 groups. Head: conv1×1 →
//! BN → ReLU → global average pool → Linear.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, conv2d, conv_bn, conv_bn_act, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, WeightInit};
use crate::ops::global_avg_pool;
use tfkd_core::shuffle::cat_shuffle;

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of ShuffleNetV2.
#[derive(Debug, Clone, PartialEq)]
pub struct ShuffleNetV2Config {
    /// Stem width (24).
    pub stem: usize,
    /// Output channels of stages 2, 3, 4 and of `conv5` (1×: 116, 232, 464, 1024).
    pub out_channels: [usize; 4],
    /// Stride-1 units after the first unit of each stage (3, 7, 3).
    pub repeats: [usize; 3],
}

impl ShuffleNetV2Config {
    /// The 1× network of the paper.
    pub fn paper() -> Self {
        Self {
            stem: 24,
            out_channels: [116, 232, 464, 1024],
            repeats: [3, 7, 3],
        }
    }

    /// The same network (units, strides, shuffles) with the stem, the stage
    /// widths and `conv5` divided by the width divisor `d` (rounded up, at
    /// least 1; see [`super::div_ceil_multiple`]). The stage widths are kept
    /// even: stride-1 units split their input in two halves and stride-2 units
    /// concatenate two branches of `out / 2` channels.
    pub fn thinned(&self, d: usize) -> Self {
        let o = self.out_channels;
        Self {
            stem: div_ceil_multiple(self.stem, d, 1),
            out_channels: [
                div_ceil_multiple(o[0], d, 2),
                div_ceil_multiple(o[1], d, 2),
                div_ceil_multiple(o[2], d, 2),
                div_ceil_multiple(o[3], d, 1),
            ],
            ..self.clone()
        }
    }
}

#[derive(Debug)]
struct Unit {
    /// conv1×1-BN-ReLU, dw3×3-BN, conv1×1-BN-ReLU.
    residual: [(Conv2d, BatchNorm); 3],
    /// dw3×3-BN, conv1×1-BN-ReLU (stride-2 units only).
    shortcut: Option<[(Conv2d, BatchNorm); 2]>,
}

fn cb(vb: &VarBuilder, i: usize, s: ConvSpec) -> Result<(Conv2d, BatchNorm)> {
    Ok((
        conv2d(vb.pp(i), s, WeightInit::Torch, BiasInit::Torch)?,
        bn2d(vb.pp(i + 1), s.cout)?,
    ))
}

impl Unit {
    fn new(vb: VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        if stride != 1 || cin != cout {
            let r = vb.pp("residual");
            let residual = [
                cb(&r, 0, ConvSpec::new(cin, cin, 1, 1, 0))?,
                cb(&r, 3, ConvSpec::new(cin, cin, 3, stride, 1).groups(cin))?,
                cb(&r, 5, ConvSpec::new(cin, cout / 2, 1, 1, 0))?,
            ];
            let s = vb.pp("shortcut");
            let shortcut = [
                cb(&s, 0, ConvSpec::new(cin, cin, 3, stride, 1).groups(cin))?,
                cb(&s, 2, ConvSpec::new(cin, cout / 2, 1, 1, 0))?,
            ];
            Ok(Self {
                residual,
                shortcut: Some(shortcut),
            })
        } else {
            let c = cin / 2;
            let r = vb.pp("residual");
            let residual = [
                cb(&r, 0, ConvSpec::new(c, c, 1, 1, 0))?,
                cb(&r, 3, ConvSpec::new(c, c, 3, stride, 1).groups(c))?,
                cb(&r, 5, ConvSpec::new(c, c, 1, 1, 0))?,
            ];
            Ok(Self {
                residual,
                shortcut: None,
            })
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (short, res) = match &self.shortcut {
            Some(sc) => {
                let s = conv_bn(&sc[0].0, &sc[0].1, xs, train)?;
                let s = conv_bn_act(&sc[1].0, &sc[1].1, &s, train, Activation::Relu)?;
                (s, xs.clone())
            }
            None => {
                let c = xs.dim(1)? / 2;
                (xs.narrow(1, 0, c)?, xs.narrow(1, c, c)?)
            }
        };
        let r = &self.residual;
        let res = conv_bn_act(&r[0].0, &r[0].1, &res, train, Activation::Relu)?;
        let res = conv_bn(&r[1].0, &r[1].1, &res, train)?;
        let res = conv_bn_act(&r[2].0, &r[2].1, &res, train, Activation::Relu)?;
        // channel_shuffle(cat([short, res], 1), 2), as one op.
        Ok(cat_shuffle(&short, &res)?)
    }
}

/// ShuffleNetV2 (CIFAR variant).
#[derive(Debug)]
pub struct ShuffleNetV2 {
    pre: (Conv2d, BatchNorm),
    units: Vec<Unit>,
    conv5: (Conv2d, BatchNorm),
    fc: Linear,
    num_classes: usize,
}

/// Builds ShuffleNetV2 (names `pre.*`, `stageN.I.{residual,shortcut}.*`, `conv5.*`, `fc`).
pub fn build(cfg: &ShuffleNetV2Config, num_classes: usize, vb: VarBuilder) -> Result<ShuffleNetV2> {
    if cfg.out_channels[..3].iter().any(|c| c % 2 != 0) {
        candle_core::bail!(
            "shufflenet_v2: stage channels {:?} must be even",
            &cfg.out_channels[..3]
        )
    }
    let pre = cb(&vb.pp("pre"), 0, ConvSpec::new(3, cfg.stem, 3, 1, 1))?;
    let mut units = Vec::new();
    let mut cin = cfg.stem;
    for s in 0..3 {
        let vbs = vb.pp(format!("stage{}", s + 2));
        let cout = cfg.out_channels[s];
        units.push(Unit::new(vbs.pp(0), cin, cout, 2)?);
        for j in 0..cfg.repeats[s] {
            units.push(Unit::new(vbs.pp(j + 1), cout, cout, 1)?);
        }
        cin = cout;
    }
    let conv5 = cb(
        &vb.pp("conv5"),
        0,
        ConvSpec::new(cin, cfg.out_channels[3], 1, 1, 0),
    )?;
    let fc = linear(
        vb.pp("fc"),
        cfg.out_channels[3],
        num_classes,
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    Ok(ShuffleNetV2 {
        pre,
        units,
        conv5,
        fc,
        num_classes,
    })
}

impl crate::Model for ShuffleNetV2 {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = conv_bn(&self.pre.0, &self.pre.1, xs, train)?;
        for u in &self.units {
            x = u.forward_t(&x, train)?;
        }
        let x = self
            .conv5
            .1
            .forward_act_t(&self.conv5.0.forward(&x)?, train, Some(Activation::Relu))?;
        Ok(global_avg_pool(&x)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.fc.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(ShuffleNetV2);
