//! MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and
//! Linear Bottlenecks", CVPR 2018), weiaicunzai-style.
//!
//! Reference: `model/mobilenetv2.py` of yuanli2333/Teacher-free-Knowledge-Distillation.
//! Quirk reproduced: the stem is a **1×1 conv with padding 1**, so a 32×32 image
//! becomes 34×34 (34 → 17 → 9 → 5 through the stride-2 stages). Every conv has a
//! bias. Blocks: conv1×1 → BN → ReLU6 → depthwise 3×3 → BN → ReLU6 → conv1×1 →
//! BN, plus the input when stride 1 and in == out. Head: conv1×1 → BN → ReLU6 →
//! global average pool → conv1×1 to K classes (no dropout). `stage1` and `stage7`
//! are single blocks (names `stageN.residual.*`), stages 2–6 are sequences
//! (`stageN.I.residual.*`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{bn2d, conv2d, conv_bn, conv_bn_act, BiasInit, BatchNorm, Conv2d, ConvSpec, WeightInit};
use crate::ops::global_avg_pool;
use tfkd_core::activation::Activation;

use super::div_ceil_multiple;

/// One stage: expansion `t`, output channels `c`, repeats `n`, first stride `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Expansion factor.
    pub t: usize,
    /// Output channels.
    pub c: usize,
    /// Number of blocks (1 for the first and last stage).
    pub n: usize,
    /// Stride of the first block.
    pub s: usize,
}

/// Configuration of MobileNetV2.
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV2Config {
    /// Stem width (32).
    pub stem: usize,
    /// The seven stages.
    pub stages: [Stage; 7],
    /// Width of the last 1×1 conv (1280).
    pub last: usize,
}

impl MobileNetV2Config {
    /// The paper's network.
    pub fn paper() -> Self {
        let st = |t, c, n, s| Stage { t, c, n, s };
        Self {
            stem: 32,
            stages: [
                st(1, 16, 1, 1),
                st(6, 24, 2, 2),
                st(6, 32, 3, 2),
                st(6, 64, 4, 2),
                st(6, 96, 3, 1),
                st(6, 160, 3, 1),
                st(6, 320, 1, 1),
            ],
            last: 1280,
        }
    }

    /// The same network (expansions, repeats, strides, the 1×1 pad-1 stem) with
    /// the stem, every stage's output channels and the last conv divided by the
    /// width divisor `d` (rounded up, at least 1; see
    /// [`super::div_ceil_multiple`]).
    ///
    /// A stride-1 first block has an identity shortcut exactly when its input
    /// and output widths are equal, so the thinned widths keep that relation:
    /// a width that differed from the previous stage's but rounds to the same
    /// value is raised by one (never needed for the paper's network at
    /// d ≤ 16).
    pub fn thinned(&self, d: usize) -> Self {
        let stem = div_ceil_multiple(self.stem, d, 1);
        let mut stages = self.stages;
        let (mut prev, mut prev_thin) = (self.stem, stem);
        for st in stages.iter_mut() {
            let mut c = div_ceil_multiple(st.c, d, 1);
            if st.s == 1 {
                if prev == st.c {
                    c = prev_thin;
                } else if prev_thin == c {
                    c += 1;
                }
            }
            prev = st.c;
            prev_thin = c;
            st.c = c;
        }
        Self {
            stem,
            stages,
            last: div_ceil_multiple(self.last, d, 1),
        }
    }
}

#[derive(Debug)]
struct Bottleneck {
    layers: Vec<(Conv2d, BatchNorm)>,
    residual: bool,
}

impl Bottleneck {
    fn new(vb: VarBuilder, cin: usize, cout: usize, stride: usize, t: usize) -> Result<Self> {
        let vb = vb.pp("residual");
        let mid = cin * t;
        let specs = [
            (0, ConvSpec::new(cin, mid, 1, 1, 0)),
            (3, ConvSpec::new(mid, mid, 3, stride, 1).groups(mid)),
            (6, ConvSpec::new(mid, cout, 1, 1, 0)),
        ];
        let mut layers = Vec::new();
        for (i, s) in specs {
            let conv = conv2d(vb.pp(i), s, WeightInit::Torch, BiasInit::Torch)?;
            let bn = bn2d(vb.pp(i + 1), s.cout)?;
            layers.push((conv, bn));
        }
        Ok(Self {
            layers,
            residual: stride == 1 && cin == cout,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = xs.clone();
        for (i, (conv, bn)) in self.layers.iter().enumerate() {
            // ReLU6 after the expansion and depthwise convs; none after the
            // projection, whose BatchNorm also adds the residual (one op).
            x = match (i < 2, self.residual) {
                (true, _) => conv_bn_act(conv, bn, &x, train, Activation::Relu6)?,
                (false, true) => bn.forward_residual_act_t(&conv.forward(&x)?, xs, train, None)?,
                (false, false) => conv_bn(conv, bn, &x, train)?,
            };
        }
        Ok(x)
    }
}

/// MobileNetV2 (CIFAR variant).
#[derive(Debug)]
pub struct MobileNetV2 {
    pre: (Conv2d, BatchNorm),
    blocks: Vec<Bottleneck>,
    conv1: (Conv2d, BatchNorm),
    conv2: Conv2d,
    num_classes: usize,
}

/// Builds MobileNetV2 (names `pre.0`, `pre.1`, `stageN…`, `conv1.0`, `conv1.1`, `conv2`).
pub fn build(cfg: &MobileNetV2Config, num_classes: usize, vb: VarBuilder) -> Result<MobileNetV2> {
    if cfg.stages[0].n != 1 || cfg.stages[6].n != 1 {
        candle_core::bail!("mobilenet_v2: the first and last stages must have exactly one block")
    }
    let pre = (
        conv2d(
            vb.pp("pre").pp(0),
            ConvSpec::new(3, cfg.stem, 1, 1, 1),
            WeightInit::Torch,
            BiasInit::Torch,
        )?,
        bn2d(vb.pp("pre").pp(1), cfg.stem)?,
    );
    let mut blocks = Vec::new();
    let mut cin = cfg.stem;
    for (i, st) in cfg.stages.iter().enumerate() {
        let vbs = vb.pp(format!("stage{}", i + 1));
        if i == 0 || i == 6 {
            blocks.push(Bottleneck::new(vbs, cin, st.c, st.s, st.t)?);
            cin = st.c;
        } else {
            for j in 0..st.n {
                let stride = if j == 0 { st.s } else { 1 };
                blocks.push(Bottleneck::new(vbs.pp(j), cin, st.c, stride, st.t)?);
                cin = st.c;
            }
        }
    }
    let conv1 = (
        conv2d(
            vb.pp("conv1").pp(0),
            ConvSpec::new(cin, cfg.last, 1, 1, 0),
            WeightInit::Torch,
            BiasInit::Torch,
        )?,
        bn2d(vb.pp("conv1").pp(1), cfg.last)?,
    );
    let conv2 = conv2d(
        vb.pp("conv2"),
        ConvSpec::new(cfg.last, num_classes, 1, 1, 0),
        WeightInit::Torch,
        BiasInit::Torch,
    )?;
    Ok(MobileNetV2 {
        pre,
        blocks,
        conv1,
        conv2,
        num_classes,
    })
}

impl crate::Model for MobileNetV2 {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let mut x = conv_bn_act(&self.pre.0, &self.pre.1, xs, train, Activation::Relu6)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
        let x = conv_bn_act(&self.conv1.0, &self.conv1.1, &x, train, Activation::Relu6)?;
        Ok(global_avg_pool(&x)?)
    }

    fn forward_head(&self, features: &Tensor, _train: bool) -> crate::Result<Tensor> {
        let (n, d) = features.dims2()?;
        Ok(self.conv2
            .forward(&features.reshape((n, d, 1, 1))?)?
            .flatten_from(1)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn reseed_dropout(&self, _seed: u64) {}
}
crate::impl_module_t!(MobileNetV2);
