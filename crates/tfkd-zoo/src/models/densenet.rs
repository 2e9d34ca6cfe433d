//! DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional
//! Networks", CVPR 2017), weiaicunzai-style.
//!
//! Reference: `model/densenet.py` of yuanli2333/Teacher-free-Knowledge-Distillation
//! (`densenet121`: blocks [6, 12, 24, 16], growth k = 32).
//! Stem conv3×3 3→2k (no bias, no pool). Bottleneck: BN-ReLU-conv1×1 (4k)-BN-ReLU-
//! conv3×3 (k), concatenated to its input. Quirk reproduced: transitions are
//! **BN → conv1×1 (×0.5) → avg-pool 2 with no ReLU**. Head: BN → ReLU → global
//! average pool → Linear. Names follow the reference's `features.*` modules,
//! including its irregular `dense_block_layer_I` / `transition_layer_I` /
//! `dense_blockN` (last block) spelling.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, bn_act, conv2d, linear, BiasInit, BatchNorm, Conv2d, ConvSpec, WeightInit};
use crate::ops::{avg_pool2d, global_avg_pool};

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of the CIFAR DenseNet.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseNetConfig {
    /// Bottleneck layers per dense block.
    pub blocks: Vec<usize>,
    /// Growth rate k.
    pub growth: usize,
    /// Transition compression (0.5).
    pub reduction: f64,
}

impl DenseNetConfig {
    /// DenseNet121: [6, 12, 24, 16], k = 32.
    pub fn densenet121() -> Self {
        Self {
            blocks: vec![6, 12, 24, 16],
            growth: 32,
            reduction: 0.5,
        }
    }

    /// The same network (blocks, compression, transitions) with the growth
    /// rate k divided by the width divisor `d` (rounded up, at least 1; see
    /// [`super::div_ceil_multiple`]). Every width derives from k: the stem's
    /// 2k, the bottlenecks' 4k and k, and the concatenations and transitions
    /// that follow.
    pub fn thinned(&self, d: usize) -> Self {
        Self {
            growth: div_ceil_multiple(self.growth, d, 1),
            ..self.clone()
        }
    }
}

#[derive(Debug)]
struct Bottleneck {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
}

#[derive(Debug)]
enum Stage {
    Dense(Vec<Bottleneck>),
    Transition(BatchNorm, Conv2d),
}

/// The CIFAR DenseNet.
#[derive(Debug)]
pub struct DenseNet {
    conv1: Conv2d,
    stages: Vec<Stage>,
    bn: BatchNorm,
    linear: Linear,
    num_classes: usize,
}

fn dense_block(
    vb: VarBuilder,
    mut cin: usize,
    n: usize,
    k: usize,
) -> Result<(Vec<Bottleneck>, usize)> {
    let mut layers = Vec::new();
    for j in 0..n {
        let v = vb.pp(format!("bottle_neck_layer_{j}")).pp("bottle_neck");
        layers.push(Bottleneck {
            bn1: bn2d(v.pp(0), cin)?,
            conv1: conv2d(
                v.pp(2),
                ConvSpec::new(cin, 4 * k, 1, 1, 0),
                WeightInit::Torch,
                BiasInit::None,
            )?,
            bn2: bn2d(v.pp(3), 4 * k)?,
            conv2: conv2d(
                v.pp(5),
                ConvSpec::new(4 * k, k, 3, 1, 1),
                WeightInit::Torch,
                BiasInit::None,
            )?,
        });
        cin += k;
    }
    Ok((layers, cin))
}

/// Builds the CIFAR DenseNet.
pub fn build(cfg: &DenseNetConfig, num_classes: usize, vb: VarBuilder) -> Result<DenseNet> {
    if cfg.blocks.is_empty() {
        candle_core::bail!("densenet: at least one dense block is required")
    }
    let k = cfg.growth;
    let mut c = 2 * k;
    let conv1 = conv2d(
        vb.pp("conv1"),
        ConvSpec::new(3, c, 3, 1, 1),
        WeightInit::Torch,
        BiasInit::None,
    )?;
    let f = vb.pp("features");
    let mut stages = Vec::new();
    let last = cfg.blocks.len() - 1;
    for (i, &n) in cfg.blocks.iter().enumerate() {
        let name = if i == last {
            format!("dense_block{i}")
        } else {
            format!("dense_block_layer_{i}")
        };
        let (layers, cout) = dense_block(f.pp(name), c, n, k)?;
        stages.push(Stage::Dense(layers));
        c = cout;
        if i != last {
            let out = (cfg.reduction * c as f64).floor() as usize;
            let t = f.pp(format!("transition_layer_{i}")).pp("down_sample");
            stages.push(Stage::Transition(
                bn2d(t.pp(0), c)?,
                conv2d(
                    t.pp(1),
                    ConvSpec::new(c, out, 1, 1, 0),
                    WeightInit::Torch,
                    BiasInit::None,
                )?,
            ));
            c = out;
        }
    }
    let bn = bn2d(f.pp("bn"), c)?;
    let linear = linear(vb.pp("linear"), c, num_classes, WeightInit::Torch, BiasInit::Torch)?;
    Ok(DenseNet {
        conv1,
        stages,
        bn,
        linear,
        num_classes,
    })
}

impl crate::Model for DenseNet {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = self.conv1.forward(xs)?;
        for s in &self.stages {
            match s {
                Stage::Dense(layers) => {
                    for l in layers {
                        let y = bn_act(&l.bn1, &x, train, Activation::Relu)?;
                        let y = l.conv1.forward(&y)?;
                        let y = bn_act(&l.bn2, &y, train, Activation::Relu)?;
                        x = l.conv2.forward_after(&x, &y)?;
                    }
                }
                Stage::Transition(bn, conv) => {
                    x = conv.forward(&bn.forward_t(&x, train)?)?;
                    x = avg_pool2d(&x, 2)?;
                }
            }
        }
        Ok(global_avg_pool(&bn_act(&self.bn, &x, train, Activation::Relu)?)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        Ok(self.linear.forward(features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(DenseNet);
