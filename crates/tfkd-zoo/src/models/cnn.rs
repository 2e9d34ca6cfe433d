//! 5-layer plain CNN (3 conv + 2 FC), the "Plain CNN" student of Table 2.
//!
//! Reference: `model/net.py` (`Net`) of yuanli2333/Teacher-free-Knowledge-Distillation,
//! itself from haitongli/knowledge-distillation-pytorch.
//!
//! Structure: three times [conv3×3 p1 → BN → max-pool 2 → ReLU] (BN before the
//! pool, ReLU after it), flatten, Linear → BatchNorm1d → ReLU → dropout → Linear.
//! The flatten size follows the input: `(S/8)²·4C` (2048 at 32×32, as in `Net`;
//! 8192 at 64×64 for Tiny-ImageNet, where `Net`'s hard-coded `4*4` would fail).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, bn_act, conv2d, conv_bn, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, Dropout, shared_mask_rng, WeightInit};
use crate::ops::max_pool2d;

use super::div_ceil_multiple;
use tfkd_core::activation::{Activation, ReluOp};

/// Configuration of the plain CNN.
#[derive(Debug, Clone, PartialEq)]
pub struct CnnConfig {
    /// `num_channels` of `params.json` (32 in the paper's configs).
    pub num_channels: usize,
    /// `dropout_rate` of `params.json` (0.5).
    pub dropout: f32,
}

impl CnnConfig {
    /// The paper's configuration: 32 channels, dropout 0.5.
    pub fn paper() -> Self {
        Self {
            num_channels: 32,
            dropout: 0.5,
        }
    }

    /// The same network with `num_channels` divided by the width divisor `d`
    /// (rounded up, at least 1; see [`super::div_ceil_multiple`]). The conv
    /// widths C, 2C, 4C and `fc1`'s 4C follow; dropout is unchanged.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            num_channels: div_ceil_multiple(self.num_channels, d, 1),
            ..self.clone()
        }
    }
}

/// The plain CNN.
#[derive(Debug)]
pub struct Cnn {
    convs: Vec<(Conv2d, BatchNorm)>,
    fc1: Linear,
    fcbn1: BatchNorm,
    fc2: Linear,
    dropout: Dropout,
    num_classes: usize,
}

/// Builds the CNN for `input_side`×`input_side` images (a multiple of 8).
pub fn build(
    cfg: &CnnConfig,
    num_classes: usize,
    input_side: usize,
    dropout_seed: u64,
    vb: VarBuilder,
) -> Result<Cnn> {
    if input_side % 8 != 0 || input_side == 0 {
        candle_core::bail!("cnn input side {input_side} is not a positive multiple of 8")
    }
    let c = cfg.num_channels;
    let chans = [3, c, 2 * c, 4 * c];
    let mut convs = Vec::new();
    for i in 0..3 {
        let conv = conv2d(
            vb.pp(format!("conv{}", i + 1)),
            ConvSpec::new(chans[i], chans[i + 1], 3, 1, 1),
            WeightInit::Torch,
            BiasInit::Torch,
        )?;
        let bn = bn2d(vb.pp(format!("bn{}", i + 1)), chans[i + 1])?;
        convs.push((conv, bn));
    }
    let s = input_side / 8;
    let fc1 = linear(
        vb.pp("fc1"),
        s * s * 4 * c,
        4 * c,
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    let fcbn1 = bn2d(vb.pp("fcbn1"), 4 * c)?;
    let fc2 = linear(vb.pp("fc2"), 4 * c, num_classes, WeightInit::Torch, BiasInit::Torch)?;
    let dropout = Dropout::new(
        cfg.dropout,
        shared_mask_rng(dropout_seed),
    )?;
    Ok(Cnn {
        convs,
        fc1,
        fcbn1,
        fc2,
        dropout,
        num_classes,
    })
}

impl crate::Model for Cnn {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = xs.clone();
        for (conv, bn) in &self.convs {
            // The official order: the ReLU after the pooling, on a quarter
            // of the values (running it inside BatchNorm's op instead would
            // keep a quarter-size tensor less but clamp and mask four times
            // as many values: slower, measured on the CPU).
            x = max_pool2d(&conv_bn(conv, bn, &x, train)?, 2, 2, 0)?.relu_op()?;
        }
        let x = x.flatten_from(1)?;
        Ok(bn_act(&self.fcbn1, &self.fc1.forward(&x)?, train, Activation::Relu)?)
    }

    fn forward_head(&self, features: &Tensor, train: bool) -> crate::Result<Tensor> {
        Ok(self.fc2.forward(&self.dropout.forward_t(features, train)?)?)
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
crate::impl_module_t!(Cnn);
