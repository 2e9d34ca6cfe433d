//! Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016),
//! pre-activation, xternalz/WideResNet-pytorch style.
//!
//! Reference: `model/wrn.py` of yuanli2333/Teacher-free-Knowledge-Distillation
//! (`WideResNet(depth, num_classes, widen_factor, dropRate)`; not wired into its
//! `main.py` and not used in the paper's tables). Widths 16, 16w, 32w, 64w;
//! (depth − 4)/6 blocks per group, strides 1, 2, 2; a block pre-activates its
//! input (BN-ReLU), and when in ≠ out the 1×1 shortcut conv also takes the
//! pre-activated input; dropout between the two convs. Head BN → ReLU →
//! `avg_pool2d(8)` (global at 32×32; global at every size here) → Linear.
//! Initialisation as the reference: conv kaiming_normal(fan_out), BN 1/0,
//! Linear bias 0.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, bn_act, conv2d, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, Dropout, shared_mask_rng, WeightInit};
use crate::ops::global_avg_pool;

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of a Wide ResNet.
#[derive(Debug, Clone, PartialEq)]
pub struct WrnConfig {
    /// Depth, 6n + 4.
    pub depth: usize,
    /// Widen factor.
    pub widen_factor: usize,
    /// Dropout between the convs of a block (`dropRate`, default 0).
    pub drop_rate: f32,
    /// Stem width (16); the groups output base·w, 2·base·w, 4·base·w.
    pub base: usize,
}

impl WrnConfig {
    /// WRN-depth-width without dropout.
    pub fn new(depth: usize, widen_factor: usize) -> Self {
        Self {
            depth,
            widen_factor,
            drop_rate: 0.0,
            base: 16,
        }
    }

    /// The same network (depth, widen factor, dropout) with the base width
    /// divided by the width divisor `d` (rounded up, at least 1; see
    /// [`super::div_ceil_multiple`]); the stem and the three groups
    /// (base·w, 2·base·w, 4·base·w) follow.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            base: div_ceil_multiple(self.base, d, 1),
            ..self.clone()
        }
    }
}

#[derive(Debug)]
struct Block {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    dropout: Dropout,
}

impl Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let act = bn_act(&self.bn1, xs, train, Activation::Relu)?;
        let out = self.conv1.forward(&act)?;
        let out = bn_act(&self.bn2, &out, train, Activation::Relu)?;
        let out = self.dropout.forward_t(&out, train)?;
        // The sums are written into a buffer given up (the second
        // convolution's output), so the graph keeps no convolution output
        // on its own (`Conv2d::forward_add` / `forward_accumulate`).
        match &self.shortcut {
            Some(c) => c.forward_accumulate(self.conv2.forward(&out)?, &act),
            None => self.conv2.forward_add(&out, xs),
        }
    }
}

/// A Wide ResNet.
#[derive(Debug)]
pub struct Wrn {
    conv1: Conv2d,
    blocks: Vec<Block>,
    bn1: BatchNorm,
    fc: Linear,
    num_classes: usize,
}

/// Builds a WRN (names `conv1`, `blockG.layer.I.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`).
pub fn build(
    cfg: &WrnConfig,
    num_classes: usize,
    dropout_seed: u64,
    vb: VarBuilder,
) -> Result<Wrn> {
    if cfg.depth < 10 || (cfg.depth - 4) % 6 != 0 {
        candle_core::bail!("wrn: depth {} is not 6n + 4 with n >= 1", cfg.depth)
    }
    let n = (cfg.depth - 4) / 6;
    let w = cfg.widen_factor;
    let b = cfg.base;
    let ch = [b, b * w, 2 * b * w, 4 * b * w];
    let k = WeightInit::KaimingOut;
    let rng = shared_mask_rng(dropout_seed);
    let conv1 = conv2d(
        vb.pp("conv1"),
        ConvSpec::new(3, ch[0], 3, 1, 1),
        k,
        BiasInit::None,
    )?;
    let mut blocks = Vec::new();
    for g in 0..3 {
        let vbg = vb.pp(format!("block{}", g + 1)).pp("layer");
        for i in 0..n {
            let (cin, stride) = if i == 0 {
                (ch[g], if g == 0 { 1 } else { 2 })
            } else {
                (ch[g + 1], 1)
            };
            let cout = ch[g + 1];
            let v = vbg.pp(i);
            blocks.push(Block {
                bn1: bn2d(v.pp("bn1"), cin)?,
                conv1: conv2d(
                    v.pp("conv1"),
                    ConvSpec::new(cin, cout, 3, stride, 1),
                    k,
                    BiasInit::None,
                )?,
                bn2: bn2d(v.pp("bn2"), cout)?,
                conv2: conv2d(
                    v.pp("conv2"),
                    ConvSpec::new(cout, cout, 3, 1, 1),
                    k,
                    BiasInit::None,
                )?,
                shortcut: if cin != cout {
                    Some(conv2d(
                        v.pp("convShortcut"),
                        ConvSpec::new(cin, cout, 1, stride, 0),
                        k,
                        BiasInit::None,
                    )?)
                } else {
                    None
                },
                dropout: Dropout::new(cfg.drop_rate, rng.clone())?,
            });
        }
    }
    let bn1 = bn2d(vb.pp("bn1"), ch[3])?;
    let fc = linear(vb.pp("fc"), ch[3], num_classes, WeightInit::Torch, BiasInit::Zero)?;
    Ok(Wrn {
        conv1,
        blocks,
        bn1,
        fc,
        num_classes,
    })
}

impl crate::Model for Wrn {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = self.conv1.forward(xs)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
        Ok(global_avg_pool(&bn_act(&self.bn1, &x, train, Activation::Relu)?)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.fc.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn dropout_state(&self) -> Option<u64> {
        self.blocks.first().map(|b| b.dropout.state())
    }

    fn reseed_dropout(&self, seed: u64) {
        // Every block's dropout shares one source.
        if let Some(b) = self.blocks.first() {
            b.dropout.reseed(seed)
        }
    }
}
crate::impl_module_t!(Wrn);
