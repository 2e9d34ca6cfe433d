//! ImageNet ResNet / ResNeXt with torchvision's structure and parameter names
//! (He et al., CVPR 2016; Xie et al., CVPR 2017), used by the paper's ImageNet
//! experiments (Tables 7, 8, 11: ResNet18, ResNet50, ResNeXt101-32x8d).
//!
//! Reference: `torchvision/models/resnet.py` (ResNet v1.5: the stride is on the
//! 3×3 conv of a bottleneck), used by `ImageNet_train/main.py` of
//! yuanli2333/Teacher-free-Knowledge-Distillation. Stem conv7×7 s2 p3 → BN →
//! ReLU → max-pool 3 s2 p1 (overlapping, [`crate::ops::max_pool2d`] with backward);
//! four stages; `downsample.0/1` shortcut; adaptive average pool → `fc`.
//! Bottleneck width = ⌊planes·width_per_group/64⌋·groups (or explicit
//! `inner_widths`, for thinned networks). Initialisation as
//! torchvision: conv kaiming_normal(fan_out), BN 1/0, `fc` PyTorch default.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use crate::layers::Linear;

use crate::layers::{bn2d, bn_act, conv2d, linear, BatchNorm, BiasInit, Conv2d, ConvSpec, ResidualBlock, WeightInit};
use crate::ops::{global_avg_pool, max_pool2d};

use super::div_ceil_multiple;
use tfkd_core::activation::Activation;

/// Configuration of a torchvision ResNet / ResNeXt.
#[derive(Debug, Clone, PartialEq)]
pub struct TvResNetConfig {
    /// Bottleneck blocks (expansion 4) instead of basic blocks.
    pub bottleneck: bool,
    /// Blocks per stage.
    pub blocks: [usize; 4],
    /// Planes per stage (64, 128, 256, 512).
    pub widths: [usize; 4],
    /// Stem width (64).
    pub stem: usize,
    /// Groups of the 3×3 conv (ResNeXt cardinality).
    pub groups: usize,
    /// Width per group (64 for ResNet, 8 for ResNeXt101-32x8d).
    pub width_per_group: usize,
    /// Bottleneck inner widths per stage (width of the grouped 3×3 conv);
    /// `None` is torchvision's ⌊planes·width_per_group/64⌋·groups. Set by
    /// [`TvResNetConfig::thinned`], where that formula can round a group's
    /// width down to 0.
    pub inner_widths: Option<[usize; 4]>,
}

impl TvResNetConfig {
    fn std(bottleneck: bool, blocks: [usize; 4], groups: usize, width_per_group: usize) -> Self {
        Self {
            bottleneck,
            blocks,
            widths: [64, 128, 256, 512],
            stem: 64,
            groups,
            width_per_group,
            inner_widths: None,
        }
    }
    /// torchvision `resnet18`.
    pub fn resnet18() -> Self {
        Self::std(false, [2, 2, 2, 2], 1, 64)
    }
    /// torchvision `resnet50`.
    pub fn resnet50() -> Self {
        Self::std(true, [3, 4, 6, 3], 1, 64)
    }
    /// torchvision `resnext101_32x8d`.
    pub fn resnext101_32x8d() -> Self {
        Self::std(true, [3, 4, 23, 3], 32, 8)
    }

    /// The bottleneck inner width of stage `s` (0–3): `inner_widths`, or
    /// torchvision's ⌊planes·width_per_group/64⌋·groups.
    pub fn inner_width(&self, s: usize) -> usize {
        match self.inner_widths {
            Some(w) => w[s.min(3)],
            None => self.widths[s.min(3)] * self.width_per_group / 64 * self.groups,
        }
    }

    /// The same network (blocks, strides, groups, expansion) with the stem,
    /// the stage planes and the bottleneck inner widths divided by the width
    /// divisor `d` (rounded up, at least 1; see [`super::div_ceil_multiple`]).
    /// The inner widths are thinned from the full network's and kept multiples
    /// of `groups` (ResNeXt101-32x8d at d = 16: stage 1 keeps 32 = one channel
    /// per group), and stored in `inner_widths`.
    pub fn thinned(&self, d: usize) -> Self {
        let inner_widths = self
            .bottleneck
            .then(|| [0, 1, 2, 3].map(|s| div_ceil_multiple(self.inner_width(s), d, self.groups)));
        Self {
            widths: self.widths.map(|w| div_ceil_multiple(w, d, 1)),
            stem: div_ceil_multiple(self.stem, d, 1),
            inner_widths,
            ..self.clone()
        }
    }
}

/// A torchvision ResNet / ResNeXt.
#[derive(Debug)]
pub struct TvResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<ResidualBlock>,
    fc: Linear,
    num_classes: usize,
}

/// Builds a torchvision ResNet (names `conv1`, `bn1`, `layerI.J.*`, `fc`).
pub fn build(cfg: &TvResNetConfig, num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    let k = WeightInit::KaimingOut;
    let n = BiasInit::None;
    let conv1 = conv2d(vb.pp("conv1"), ConvSpec::new(3, cfg.stem, 7, 2, 3), k, n)?;
    let bn1 = bn2d(vb.pp("bn1"), cfg.stem)?;
    let exp = if cfg.bottleneck { 4 } else { 1 };
    if !cfg.bottleneck && (cfg.groups != 1 || cfg.width_per_group != 64) {
        candle_core::bail!("tv_resnet: basic blocks need groups 1 and width_per_group 64")
    }
    let mut cin = cfg.stem;
    let mut blocks = Vec::new();
    for (s, (&nb, &planes)) in cfg.blocks.iter().zip(cfg.widths.iter()).enumerate() {
        let vbl = vb.pp(format!("layer{}", s + 1));
        for j in 0..nb {
            let stride = if j == 0 && s > 0 { 2 } else { 1 };
            let v = vbl.pp(j);
            let cout = planes * exp;
            let specs = if cfg.bottleneck {
                let width = cfg.inner_width(s);
                if width == 0 || width % cfg.groups.max(1) != 0 {
                    candle_core::bail!(
                        "tv_resnet: inner width {width} of stage {} is not a positive multiple of groups {}",
                        s + 1,
                        cfg.groups
                    )
                }
                vec![
                    ConvSpec::new(cin, width, 1, 1, 0),
                    ConvSpec::new(width, width, 3, stride, 1).groups(cfg.groups),
                    ConvSpec::new(width, cout, 1, 1, 0),
                ]
            } else {
                vec![
                    ConvSpec::new(cin, planes, 3, stride, 1),
                    ConvSpec::new(planes, planes, 3, 1, 1),
                ]
            };
            blocks.push(ResidualBlock::numbered(v, &specs, k, "downsample")?);
            cin = cout;
        }
    }
    let fc = linear(vb.pp("fc"), cin, num_classes, WeightInit::Torch, BiasInit::Torch)?;
    Ok(TvResNet {
        conv1,
        bn1,
        blocks,
        fc,
        num_classes,
    })
}

impl crate::Model for TvResNet {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        let x = bn_act(&self.bn1, &self.conv1.forward(xs)?, train, Activation::Relu)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
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
crate::impl_module_t!(TvResNet);
