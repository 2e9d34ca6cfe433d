//! VGG19 with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional
//! Networks for Large-Scale Image Recognition", ICLR 2015), torchvision's
//! ImageNet network used on 32×32 CIFAR input, as the official code does.
//! Not used in the paper's tables.
//!
//! Reference: `torchvision.models.vgg19_bn(num_classes=K)`, called by `main.py`
//! of yuanli2333/Teacher-free-Knowledge-Distillation. `features`: configuration
//! E with conv3×3 (bias) → BN → ReLU and max-pool 2; adaptive average pool to
//! 7×7 (at 32×32 the 1×1 map is replicated 49 times); `classifier`: Linear
//! 25088 → 4096 → ReLU → Dropout(0.5) → Linear 4096 → 4096 → ReLU →
//! Dropout(0.5) → Linear → K. Initialisation as torchvision: conv
//! kaiming_normal(fan_out) with zero bias, BN 1/0, Linear N(0, 0.01) with zero
//! bias.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use crate::layers::Linear;

use crate::layers::{bn2d, conv2d, conv_bn_act, BiasInit, BatchNorm, Conv2d, ConvSpec, Dropout, shared_mask_rng, WeightInit};
use crate::ops::{adaptive_avg_pool2d, max_pool2d};

use super::div_ceil_multiple;
use tfkd_core::activation::{Activation, ReluOp};

/// One entry of a VGG configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// conv3×3 (bias) → BN → ReLU with this many output channels.
    Conv(usize),
    /// Max-pool 2.
    Pool,
}

/// Configuration of a torchvision VGG with BatchNorm.
#[derive(Debug, Clone, PartialEq)]
pub struct VggConfig {
    /// The `features` layers.
    pub layers: Vec<Layer>,
    /// Width of the two hidden Linear layers (4096).
    pub hidden: usize,
    /// Side of the adaptive average pool (7).
    pub pool: usize,
    /// Dropout of the classifier (0.5).
    pub dropout: f32,
}

impl VggConfig {
    /// torchvision `vgg19_bn` (configuration E).
    pub fn vgg19_bn() -> Self {
        use Layer::{Conv, Pool};
        let mut layers = Vec::new();
        for (w, n) in [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)] {
            layers.extend(std::iter::repeat(Conv(w)).take(n));
            layers.push(Pool);
        }
        Self {
            layers,
            hidden: 4096,
            pool: 7,
            dropout: 0.5,
        }
    }

    /// The same network (layers, pools, 7×7 adaptive pool, dropout) with every
    /// conv width and the classifier's hidden width divided by the width
    /// divisor `d` (rounded up, at least 1; see [`super::div_ceil_multiple`]).
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| match *l {
                    Layer::Conv(c) => Layer::Conv(div_ceil_multiple(c, d, 1)),
                    Layer::Pool => Layer::Pool,
                })
                .collect(),
            hidden: div_ceil_multiple(self.hidden, d, 1),
            ..self.clone()
        }
    }
}

#[derive(Debug)]
enum Stage {
    Conv(Conv2d, BatchNorm),
    Pool,
}

/// A torchvision VGG with BatchNorm.
#[derive(Debug)]
pub struct Vgg {
    stages: Vec<Stage>,
    pool: usize,
    fcs: [Linear; 3],
    dropouts: [Dropout; 2],
    num_classes: usize,
}

fn fc(vb: VarBuilder, cin: usize, cout: usize) -> Result<Linear> {
    let w = vb.get_with_hints(
        (cout, cin),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        },
    )?;
    let b = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Builds a torchvision VGG-BN (names `features.I`, `classifier.{0,3,6}`).
pub fn build(
    cfg: &VggConfig,
    num_classes: usize,
    dropout_seed: u64,
    vb: VarBuilder,
) -> Result<Vgg> {
    let f = vb.pp("features");
    let mut stages = Vec::new();
    let (mut idx, mut cin) = (0, 3);
    for l in &cfg.layers {
        match *l {
            Layer::Conv(c) => {
                let conv = conv2d(
                    f.pp(idx),
                    ConvSpec::new(cin, c, 3, 1, 1),
                    WeightInit::KaimingOut,
                    BiasInit::Zero,
                )?;
                let bn = bn2d(f.pp(idx + 1), c)?;
                stages.push(Stage::Conv(conv, bn));
                idx += 3;
                cin = c;
            }
            Layer::Pool => {
                stages.push(Stage::Pool);
                idx += 1;
            }
        }
    }
    let c = vb.pp("classifier");
    let fcs = [
        fc(c.pp(0), cin * cfg.pool * cfg.pool, cfg.hidden)?,
        fc(c.pp(3), cfg.hidden, cfg.hidden)?,
        fc(c.pp(6), cfg.hidden, num_classes)?,
    ];
    let rng = shared_mask_rng(dropout_seed);
    let dropouts = [
        Dropout::new(cfg.dropout, rng.clone())?,
        Dropout::new(cfg.dropout, rng)?,
    ];
    Ok(Vgg {
        stages,
        pool: cfg.pool,
        fcs,
        dropouts,
        num_classes,
    })
}

impl crate::Model for Vgg {
    /// The flattened 7×7 adaptive pool (`[N, 512·49]` for VGG19).
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = xs.clone();
        for s in &self.stages {
            x = match s {
                Stage::Conv(c, b) => conv_bn_act(c, b, &x, train, Activation::Relu)?,
                Stage::Pool => max_pool2d(&x, 2, 2, 0)?,
            };
        }
        Ok(adaptive_avg_pool2d(&x, self.pool, self.pool)?.flatten_from(1)?)
    }

    fn forward_head(&self, features: &Tensor, train: bool) -> crate::Result<Tensor> {
        let x = self.fcs[0].forward(features)?.relu_op()?;
        let x = self.dropouts[0].forward_t(&x, train)?;
        let x = self.fcs[1].forward(&x)?.relu_op()?;
        let x = self.dropouts[1].forward_t(&x, train)?;
        Ok(self.fcs[2].forward(&x)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn dropout_state(&self) -> Option<u64> {
        Some(self.dropouts[0].state())
    }

    fn reseed_dropout(&self, seed: u64) {
        // Both dropouts share one source.
        self.dropouts[0].reseed(seed)
    }
}
crate::impl_module_t!(Vgg);
