//! GoogLeNet for CIFAR (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015),
//! weiaicunzai-style.
//!
//! Reference: `model/googlenet.py` of yuanli2333/Teacher-free-Knowledge-Distillation.
//! Pre-layer conv3×3 3→192 + BN + ReLU; inceptions a3, b3 at 32×32; max-pool 3
//! stride 2 padding 1 (overlapping, built by [`crate::ops::max_pool2d`] with
//! backward); a4–e4; max-pool; a5, b5; global average pool → Dropout2d(0.4) →
//! Linear. The 5×5 branch is two 3×3 convs, and, reproduced quirk, the BN after
//! the first of them is `nn.BatchNorm2d(n5x5, n5x5)`, i.e. **eps = n5x5**. The
//! pool branch is max-pool 3 stride 1 padding 1 → conv1×1. Every conv has a bias.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn, bn2d, conv2d, conv_bn_act, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, Dropout, shared_mask_rng, WeightInit};
use crate::ops::{global_avg_pool, max_pool2d};

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Widths of one inception: `n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj`.
pub type InceptionWidths = [usize; 6];

/// Configuration of GoogLeNet.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogLeNetConfig {
    /// Pre-layer width (192).
    pub prelayer: usize,
    /// a3, b3, a4, b4, c4, d4, e4, a5, b5.
    pub inceptions: [InceptionWidths; 9],
    /// Dropout before the classifier (0.4).
    pub dropout: f32,
}

impl GoogLeNetConfig {
    /// The paper's network.
    pub fn paper() -> Self {
        Self {
            prelayer: 192,
            inceptions: [
                [64, 96, 128, 16, 32, 32],
                [128, 128, 192, 32, 96, 64],
                [192, 96, 208, 16, 48, 64],
                [160, 112, 224, 24, 64, 64],
                [128, 128, 256, 24, 64, 64],
                [112, 144, 288, 32, 64, 64],
                [256, 160, 320, 32, 128, 128],
                [256, 160, 320, 32, 128, 128],
                [384, 192, 384, 48, 128, 128],
            ],
            dropout: 0.4,
        }
    }

    /// The same network (inceptions, pools, dropout) with the pre-layer and
    /// every inception width divided by the width divisor `d` (rounded up, at
    /// least 1; see [`super::div_ceil_multiple`]). An inception's output is the
    /// sum of its four branch widths, so the concatenations need no constraint.
    /// The eps quirk follows the thinned width (eps = thinned n5x5), as the
    /// reference's `nn.BatchNorm2d(n5x5, n5x5)` would give.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            prelayer: div_ceil_multiple(self.prelayer, d, 1),
            inceptions: self
                .inceptions
                .map(|w| w.map(|c| div_ceil_multiple(c, d, 1))),
            ..self.clone()
        }
    }
}

const NAMES: [&str; 9] = ["a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5"];

type Cb = (Conv2d, BatchNorm);

#[derive(Debug)]
struct Inception {
    b1: Cb,
    b2: [Cb; 2],
    b3: [Cb; 3],
    b4: Cb,
}

fn cb(vb: &VarBuilder, i: usize, s: ConvSpec, eps: f64) -> Result<Cb> {
    Ok((
        conv2d(vb.pp(i), s, WeightInit::Torch, BiasInit::Torch)?,
        bn(vb.pp(i + 1), s.cout, eps)?,
    ))
}

fn apply(c: &Cb, xs: &Tensor, train: bool) -> Result<Tensor> {
    conv_bn_act(&c.0, &c.1, xs, train, Activation::Relu)
}

impl Inception {
    fn new(vb: VarBuilder, cin: usize, w: InceptionWidths) -> Result<Self> {
        let [n1, n3r, n3, n5r, n5, pp] = w;
        let e = 1e-5;
        let (v1, v2, v3, v4) = (vb.pp("b1"), vb.pp("b2"), vb.pp("b3"), vb.pp("b4"));
        Ok(Self {
            b1: cb(&v1, 0, ConvSpec::new(cin, n1, 1, 1, 0), e)?,
            b2: [
                cb(&v2, 0, ConvSpec::new(cin, n3r, 1, 1, 0), e)?,
                cb(&v2, 3, ConvSpec::new(n3r, n3, 3, 1, 1), e)?,
            ],
            b3: [
                cb(&v3, 0, ConvSpec::new(cin, n5r, 1, 1, 0), e)?,
                // nn.BatchNorm2d(n5x5, n5x5): the second argument is eps.
                cb(&v3, 3, ConvSpec::new(n5r, n5, 3, 1, 1), n5 as f64)?,
                cb(&v3, 6, ConvSpec::new(n5, n5, 3, 1, 1), e)?,
            ],
            b4: cb(&v4, 1, ConvSpec::new(cin, pp, 1, 1, 0), e)?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let y1 = apply(&self.b1, xs, train)?;
        let y2 = apply(&self.b2[1], &apply(&self.b2[0], xs, train)?, train)?;
        let mut y3 = xs.clone();
        for c in &self.b3 {
            y3 = apply(c, &y3, train)?;
        }
        let y4 = apply(&self.b4, &max_pool2d(xs, 3, 1, 1)?, train)?;
        Tensor::cat(&[y1, y2, y3, y4], 1)
    }
}

/// GoogLeNet (CIFAR variant).
#[derive(Debug)]
pub struct GoogLeNet {
    prelayer: Cb,
    inceptions: Vec<Inception>,
    dropout: Dropout,
    linear: Linear,
    num_classes: usize,
}

/// Builds GoogLeNet (names `prelayer.*`, `a3.b1.*` … `b5.b4.*`, `linear`).
pub fn build(
    cfg: &GoogLeNetConfig,
    num_classes: usize,
    dropout_seed: u64,
    vb: VarBuilder,
) -> Result<GoogLeNet> {
    let prelayer = (
        conv2d(
            vb.pp("prelayer").pp(0),
            ConvSpec::new(3, cfg.prelayer, 3, 1, 1),
            WeightInit::Torch,
            BiasInit::Torch,
        )?,
        bn2d(vb.pp("prelayer").pp(1), cfg.prelayer)?,
    );
    let mut cin = cfg.prelayer;
    let mut inceptions = Vec::new();
    for (name, w) in NAMES.iter().zip(cfg.inceptions.iter()) {
        inceptions.push(Inception::new(vb.pp(*name), cin, *w)?);
        cin = w[0] + w[2] + w[4] + w[5];
    }
    let dropout = Dropout::new(
        cfg.dropout,
        shared_mask_rng(dropout_seed),
    )?;
    let linear = linear(
        vb.pp("linear"),
        cin,
        num_classes,
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    Ok(GoogLeNet {
        prelayer,
        inceptions,
        dropout,
        linear,
        num_classes,
    })
}

impl crate::Model for GoogLeNet {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = apply(&self.prelayer, xs, train)?;
        for (i, inc) in self.inceptions.iter().enumerate() {
            if i == 2 || i == 7 {
                x = max_pool2d(&x, 3, 2, 1)?;
            }
            x = inc.forward_t(&x, train)?;
        }
        Ok(global_avg_pool(&x)?)
    }

    fn forward_head(&self, features: &Tensor, train: bool) -> crate::Result<Tensor> {
        Ok(self.linear
            .forward(&self.dropout.forward_t(features, train)?)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn dropout_state(&self) -> Option<u64> {
        Some(self.dropout.state())
    }

    fn reseed_dropout(&self, seed: u64) {
        self.dropout.reseed(seed)
    }
}
crate::impl_module_t!(GoogLeNet);
