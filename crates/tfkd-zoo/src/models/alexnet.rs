//! AlexNet for CIFAR (Krizhevsky, "One weird trick for parallelizing
//! convolutional neural networks", 2014), Wei Yang's variant: FC layers removed,
//! no BatchNorm. Not used in the paper's tables.
//!
//! Reference: `model/alexnet.py` of yuanli2333/Teacher-free-Knowledge-Distillation.
//! `features`: conv11×11 s4 p5 (64) → ReLU → max-pool 2 → conv5×5 p2 (192) →
//! ReLU → max-pool 2 → conv3×3 384 → ReLU → conv3×3 256 → ReLU → conv3×3 256 →
//! ReLU → max-pool 2; `classifier`: Linear 256 → K. The final map is 1×1 at
//! 32×32, so the original's flatten equals global average pooling, which the
//! zoo uses at every size (the flatten fails at 64×64).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{conv2d, linear, BiasInit, Conv2d, ConvSpec, WeightInit};
use crate::ops::{global_avg_pool, max_pool2d};

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of the CIFAR AlexNet.
#[derive(Debug, Clone, PartialEq)]
pub struct AlexNetConfig {
    /// Widths of the five convs (64, 192, 384, 256, 256).
    pub widths: [usize; 5],
}

impl AlexNetConfig {
    /// The reference network.
    pub fn paper() -> Self {
        Self {
            widths: [64, 192, 384, 256, 256],
        }
    }

    /// The same network with the five conv widths divided by the width divisor
    /// `d` (rounded up, at least 1; see [`super::div_ceil_multiple`]).
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            widths: self.widths.map(|w| div_ceil_multiple(w, d, 1)),
        }
    }
}

/// The CIFAR AlexNet.
#[derive(Debug)]
pub struct AlexNet {
    convs: Vec<Conv2d>,
    classifier: Linear,
    num_classes: usize,
}

/// `features` indices of the convs in the reference `nn.Sequential`.
const CONV_INDEX: [usize; 5] = [0, 3, 6, 8, 10];

/// Builds the CIFAR AlexNet (names `features.{0,3,6,8,10}`, `classifier`).
pub fn build(cfg: &AlexNetConfig, num_classes: usize, vb: VarBuilder) -> Result<AlexNet> {
    let w = cfg.widths;
    let specs = [
        ConvSpec::new(3, w[0], 11, 4, 5),
        ConvSpec::new(w[0], w[1], 5, 1, 2),
        ConvSpec::new(w[1], w[2], 3, 1, 1),
        ConvSpec::new(w[2], w[3], 3, 1, 1),
        ConvSpec::new(w[3], w[4], 3, 1, 1),
    ];
    let f = vb.pp("features");
    let convs = specs
        .iter()
        .zip(CONV_INDEX)
        .map(|(s, i)| conv2d(f.pp(i), *s, WeightInit::Torch, BiasInit::Torch))
        .collect::<Result<Vec<_>>>()?;
    let classifier = linear(
        vb.pp("classifier"),
        w[4],
        num_classes,
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    Ok(AlexNet {
        convs,
        classifier,
        num_classes,
    })
}

impl crate::Model for AlexNet {
    fn forward_features(&self, xs: &Tensor, _train: bool) -> crate::Result<Tensor> {
        let mut x = xs.clone();
        for (i, c) in self.convs.iter().enumerate() {
            // The bias and the ReLU in place on the convolution's output.
            x = c.forward_act(&x, Activation::Relu)?;
            if i < 2 || i == 4 {
                x = max_pool2d(&x, 2, 2, 0)?;
            }
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
crate::impl_module_t!(AlexNet);
