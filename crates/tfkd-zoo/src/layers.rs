//! Layer constructors with PyTorch's parameter names and explicit initialisation hints.
//!
//! candle-nn's `conv2d` / `linear` constructors use initialisations that differ
//! from PyTorch's, so every layer of the zoo is built here from
//! [`VarBuilder::get_with_hints`] with the initialisation the reference code uses.
//! With a plain `VarBuilder` (loaded weights) the hints are ignored.

use std::sync::{Arc, Mutex};

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

/// `nn.BatchNorm2d` with the fused CPU training pass of `tfkd_core::norm`.
pub(crate) use tfkd_core::norm::BatchNorm;

/// How a weight tensor is initialised when it is created (ignored when loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WInit {
    /// PyTorch's default: kaiming_uniform(a = √5), i.e. Uniform(±1/√fan_in).
    Torch,
    /// kaiming_normal(mode = fan_out, relu): N(0, 2/fan_out).
    KaimingOut,
    /// kaiming_normal(mode = fan_in, relu): N(0, 2/fan_in).
    KaimingIn,
}

/// How a bias is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BInit {
    /// No bias.
    None,
    /// PyTorch's default: Uniform(±1/√fan_in).
    Torch,
    /// Zero.
    Zero,
}

fn weight_hint(init: WInit, fan_in: usize, fan_out: usize) -> Init {
    match init {
        WInit::Torch => {
            let b = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -b, up: b }
        }
        WInit::KaimingOut => Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out as f64).sqrt(),
        },
        WInit::KaimingIn => Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_in as f64).sqrt(),
        },
    }
}

fn bias(vb: &VarBuilder, n: usize, init: BInit, fan_in: usize) -> Result<Option<Tensor>> {
    match init {
        BInit::None => Ok(None),
        BInit::Torch => {
            let b = 1.0 / (fan_in as f64).sqrt();
            Ok(Some(vb.get_with_hints(
                n,
                "bias",
                Init::Uniform { lo: -b, up: b },
            )?))
        }
        BInit::Zero => Ok(Some(vb.get_with_hints(n, "bias", Init::Const(0.0))?)),
    }
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvSpec {
    /// A convolution with one group.
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        Self {
            cin,
            cout,
            k,
            stride,
            pad,
            groups: 1,
        }
    }
    /// The same convolution with `groups` groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// `nn.Conv2d`: parameters `weight` `[cout, cin/groups, k, k]` and optional `bias` `[cout]`.
pub(crate) fn conv2d(vb: VarBuilder, s: ConvSpec, w: WInit, b: BInit) -> Result<Conv2d> {
    if s.groups == 0 || s.cin % s.groups != 0 || s.cout % s.groups != 0 {
        candle_core::bail!(
            "conv {}: channels {} -> {} not divisible by {} groups",
            vb.prefix(),
            s.cin,
            s.cout,
            s.groups
        )
    }
    let fan_in = s.cin / s.groups * s.k * s.k;
    let fan_out = s.cout * s.k * s.k;
    let weight = vb.get_with_hints(
        (s.cout, s.cin / s.groups, s.k, s.k),
        "weight",
        weight_hint(w, fan_in, fan_out),
    )?;
    let bias = bias(&vb, s.cout, b, fan_in)?;
    Ok(Conv2d {
        weight,
        bias,
        padding: s.pad,
        stride: s.stride,
        groups: s.groups,
    })
}

/// `nn.Conv2d` (dilation 1) on [`tfkd_core::conv::conv2d`]: candle's forward
/// with a backward pass made of forward convolutions and one matmul, much
/// faster on the CPU than candle's transposed-convolution loops.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    groups: usize,
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = tfkd_core::conv::conv2d(xs, &self.weight, self.padding, self.stride, self.groups)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => tfkd_core::conv::add_channel_bias(&y, b),
        }
    }
}

/// `nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.
pub(crate) fn linear(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    w: WInit,
    b: BInit,
) -> Result<Linear> {
    let weight = vb.get_with_hints((cout, cin), "weight", weight_hint(w, cin, cout))?;
    let bias = bias(&vb, cout, b, cin)?;
    Ok(Linear::new(weight, bias))
}

/// `nn.BatchNorm2d(c, eps)` / `nn.BatchNorm1d`: `weight`, `bias`, `running_mean`,
/// `running_var`, momentum 0.1. Train mode normalises with batch statistics and
/// updates the running statistics (unbiased variance, as PyTorch); on the CPU
/// it is one fused op with an analytic backward (`tfkd_core::norm`), and
/// evaluation is candle-nn's `BatchNorm`.
pub(crate) fn bn(vb: VarBuilder, c: usize, eps: f64) -> Result<BatchNorm> {
    BatchNorm::new(c, eps, 0.1, vb)
}

/// `nn.BatchNorm2d(c)` with PyTorch's default eps 1e-5.
pub(crate) fn bn2d(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    bn(vb, c, 1e-5)
}

/// A conv followed by its BatchNorm, applied in train or eval mode.
pub(crate) fn conv_bn(conv: &Conv2d, bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    bn.forward_t(&conv.forward(xs)?, train)
}

/// A small, seedable generator (SplitMix64) for dropout masks.
///
/// candle's CPU random generator cannot be seeded (candle#2651), so masks are
/// drawn here on the host and copied to the model's device.
#[derive(Debug, Clone)]
pub struct MaskRng {
    state: u64,
}

impl MaskRng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform sample in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A dropout mask source shared by all dropout layers of one model.
pub type SharedMaskRng = Arc<Mutex<MaskRng>>;

/// Inverted dropout (`F.dropout` / `nn.Dropout2d` on `[N, C, 1, 1]` maps) with a
/// seeded host-side mask. Identity in eval mode or when `p == 0`.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    rng: SharedMaskRng,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)`, drawing masks from `rng`.
    pub fn new(p: f32, rng: SharedMaskRng) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability {p} outside [0, 1)")
        }
        Ok(Self { p, rng })
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let n = xs.elem_count();
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().map_err(|_| {
                candle_core::Error::Msg("dropout mask generator lock poisoned".into())
            })?;
            (0..n)
                .map(|_| if rng.next_f32() >= self.p { scale } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}
