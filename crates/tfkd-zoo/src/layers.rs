//! Layer constructors with PyTorch's parameter names and explicit initialisation hints.
//!
//! candle-nn's `conv2d` / `linear` constructors use initialisations that differ
//! from PyTorch's, so every layer of the zoo is built here from
//! [`VarBuilder::get_with_hints`] with the initialisation the reference code uses.
//! With a plain `VarBuilder` (loaded weights) the hints are ignored.

use std::sync::{Arc, Mutex};

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use tfkd_core::activation::Activation;

/// `nn.BatchNorm2d` with the fused CPU training pass of `tfkd_core::norm`.
pub(crate) use tfkd_core::norm::BatchNorm;

/// The initialisation hints (formulas in `tfkd_core::init`).
pub(crate) use tfkd_core::init::{BiasInit, WeightInit};

fn bias(vb: &VarBuilder, n: usize, init: BiasInit, fan_in: usize) -> Result<Option<Tensor>> {
    init.hint(fan_in)
        .map(|hint| vb.get_with_hints(n, "bias", hint))
        .transpose()
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
pub(crate) fn conv2d(vb: VarBuilder, s: ConvSpec, w: WeightInit, b: BiasInit) -> Result<Conv2d> {
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
        w.hint(fan_in, fan_out),
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
        let weight = in_dtype_of(&self.weight, xs)?;
        let (p, s, g) = (self.padding, self.stride, self.groups);
        Ok(match &self.bias {
            None => tfkd_core::conv::conv2d(xs, &weight, p, s, g)?,
            // The bias is added in place: the graph keeps one output.
            Some(b) => tfkd_core::conv::conv2d_with_bias(xs, &weight, &in_dtype_of(b, xs)?, p, s, g)?,
        })
    }
}

impl Conv2d {
    /// `cat([prev, self(xs)], 1)`: DenseNet's concatenation of a layer's
    /// new features after its input. Without a bias, one op
    /// ([`tfkd_core::conv::cat_conv2d`]) whose graph does not keep the new
    /// features on their own, as PyTorch's does not.
    pub fn forward_after(&self, prev: &Tensor, xs: &Tensor) -> Result<Tensor> {
        if self.bias.is_some() {
            return Tensor::cat(&[prev, &self.forward(xs)?], 1);
        }
        let weight = in_dtype_of(&self.weight, xs)?;
        Ok(tfkd_core::conv::cat_conv2d(prev, xs, &weight, self.padding, self.stride, self.groups)?)
    }

    /// `act(self(xs))`: AlexNet's convolution and ReLU. With a bias, the
    /// bias and the activation run in place on the convolution's output
    /// ([`tfkd_core::conv::conv2d_with_bias_act`]): the graph keeps one
    /// tensor, as PyTorch's in-place ReLU does.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        let Some(b) = &self.bias else {
            return Ok(act.apply(&self.forward(xs)?)?);
        };
        let weight = in_dtype_of(&self.weight, xs)?;
        Ok(tfkd_core::conv::conv2d_with_bias_act(xs, &weight, &in_dtype_of(b, xs)?, act, self.padding, self.stride, self.groups)?)
    }

    /// `self(xs) + r`: a pre-activation block's sum with its input. Without
    /// a bias, the sum is written into the convolution's output
    /// ([`tfkd_core::conv::conv2d_add`]), so the graph does not keep that
    /// output on its own, as PyTorch's does not.
    pub fn forward_add(&self, xs: &Tensor, r: &Tensor) -> Result<Tensor> {
        if self.bias.is_some() {
            return self.forward(xs)? + r;
        }
        let weight = in_dtype_of(&self.weight, xs)?;
        Ok(tfkd_core::conv::conv2d_add(xs, &weight, r, self.padding, self.stride, self.groups)?)
    }

    /// `r + self(xs)`, `r` given up: a projection shortcut added to a
    /// block's output. Without a bias, the sum is written into `r`
    /// ([`tfkd_core::conv::conv2d_accumulate`]) and the convolution's output
    /// lives only while the op runs.
    pub fn forward_accumulate(&self, r: Tensor, xs: &Tensor) -> Result<Tensor> {
        if self.bias.is_some() {
            return r + self.forward(xs)?;
        }
        let weight = in_dtype_of(&self.weight, xs)?;
        Ok(tfkd_core::conv::conv2d_accumulate(r, xs, &weight, self.padding, self.stride, self.groups)?)
    }
}

/// `param` in `input`'s dtype: itself, or a cast whose gradient flows back
/// to it in its own dtype. With `precision = "bf16"` the activations are
/// bf16 and the parameters (the master weights) f32: every convolution and
/// matrix product then runs in bf16, autocast-style.
fn in_dtype_of(param: &Tensor, input: &Tensor) -> Result<Tensor> {
    if param.dtype() == input.dtype() {
        Ok(param.clone())
    } else {
        param.to_dtype(input.dtype())
    }
}

/// `nn.Linear`: `y = x·Wᵀ + b`, candle-nn's [`candle_nn::Linear`] with the
/// parameters cast to the input's dtype (see [`Conv2d`]).
#[derive(Debug, Clone)]
pub struct Linear(candle_nn::Linear);

impl Linear {
    /// A linear layer over `weight` `[out, in]` and an optional `bias`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear(candle_nn::Linear::new(weight, bias))
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.0.bias()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.0.weight().dtype() == xs.dtype() {
            return self.0.forward(xs);
        }
        let weight = in_dtype_of(self.0.weight(), xs)?;
        let bias = self.0.bias().map(|b| in_dtype_of(b, xs)).transpose()?;
        candle_nn::Linear::new(weight, bias).forward(xs)
    }
}

/// `nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.
pub(crate) fn linear(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    w: WeightInit,
    b: BiasInit,
) -> Result<Linear> {
    let weight = vb.get_with_hints((cout, cin), "weight", w.hint(cin, cout))?;
    let bias = bias(&vb, cout, b, cin)?;
    Ok(Linear::new(weight, bias))
}

/// `nn.BatchNorm2d(c, eps)` / `nn.BatchNorm1d`: `weight`, `bias`, `running_mean`,
/// `running_var`, momentum 0.1. Train mode normalises with batch statistics and
/// updates the running statistics (unbiased variance, as PyTorch); on the CPU
/// it is one fused op with an analytic backward (`tfkd_core::norm`), and
/// evaluation is candle-nn's `BatchNorm`.
pub(crate) fn bn(vb: VarBuilder, c: usize, eps: f64) -> Result<BatchNorm> {
    Ok(BatchNorm::new(c, eps, 0.1, vb)?)
}

/// `nn.BatchNorm2d(c)` with PyTorch's default eps 1e-5.
pub(crate) fn bn2d(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    bn(vb, c, 1e-5)
}

/// A conv followed by its BatchNorm, applied in train or eval mode.
pub(crate) fn conv_bn(conv: &Conv2d, bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    bn.forward_t(&conv.forward(xs)?, train)
}

/// A BatchNorm followed by `act`, as one op where tfkd's BatchNorm runs
/// (`BatchNorm::forward_act_t`: the tensor between the two is never kept
/// for the backward pass).
pub(crate) fn bn_act(bn: &BatchNorm, xs: &Tensor, train: bool, act: Activation) -> Result<Tensor> {
    bn.forward_act_t(xs, train, Some(act))
}

/// A conv, then its BatchNorm and `act` ([`bn_act`]).
pub(crate) fn conv_bn_act(conv: &Conv2d, bn: &BatchNorm, xs: &Tensor, train: bool, act: Activation) -> Result<Tensor> {
    bn_act(bn, &conv.forward(xs)?, train, act)
}

/// A post-activation residual block (He et al., CVPR 2016): conv → BN → ReLU
/// for every conv but the last, conv → BN for the last, plus the shortcut
/// (identity, or conv → BN), then ReLU. The one block forward of the CIFAR
/// ResNets (`resnet.rs`), torchvision's ResNets (`tv_resnet.rs`) and the
/// CIFAR ResNeXt (`resnext.rs`).
#[derive(Debug)]
pub(crate) struct ResidualBlock {
    /// The main path's (conv, BN) pairs, in order.
    pub convs: Vec<(Conv2d, BatchNorm)>,
    /// The projection shortcut; `None` is the identity.
    pub shortcut: Option<(Conv2d, BatchNorm)>,
}

impl ResidualBlock {
    /// The convs of `specs` as `conv1`/`bn1`, `conv2`/`bn2`, … under `vb`,
    /// then, when the block's stride (the largest of `specs`) or channel
    /// count changes, the projection conv1×1 + BN as `{shortcut}.0` /
    /// `{shortcut}.1` (created in that order). Convs have no bias and are
    /// initialised by `init`.
    pub fn numbered(vb: VarBuilder, specs: &[ConvSpec], init: WeightInit, shortcut: &str) -> Result<Self> {
        let (Some(first), Some(last)) = (specs.first(), specs.last()) else {
            candle_core::bail!("residual block {} without convolutions", vb.prefix())
        };
        let (cin, cout) = (first.cin, last.cout);
        let stride = specs.iter().map(|s| s.stride).max().unwrap_or(1);
        let mut convs = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            convs.push((
                conv2d(vb.pp(format!("conv{}", i + 1)), *s, init, BiasInit::None)?,
                bn2d(vb.pp(format!("bn{}", i + 1)), s.cout)?,
            ));
        }
        let shortcut = if stride != 1 || cin != cout {
            let vb = vb.pp(shortcut);
            Some((
                conv2d(vb.pp(0), ConvSpec::new(cin, cout, 1, stride, 0), init, BiasInit::None)?,
                bn2d(vb.pp(1), cout)?,
            ))
        } else {
            None
        };
        Ok(Self { convs, shortcut })
    }

    /// The block's output: `relu(main(xs) + shortcut(xs))`. The last
    /// BatchNorm, the sum and the ReLU are one op
    /// (`BatchNorm::forward_residual_act_t`); a projection shortcut's
    /// output, which its BatchNorm's backward pass does not read, receives
    /// the block's output in place (`forward_into_residual_act_t`), so the
    /// graph keeps one buffer for both, as PyTorch's `out += shortcut`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let Some(((last_conv, last_bn), first)) = self.convs.split_last() else {
            candle_core::bail!("residual block without convolutions")
        };
        let projected = match &self.shortcut {
            Some((conv, bn)) => Some(conv_bn(conv, bn, xs, train)?),
            None => None,
        };
        let mut out = xs.clone();
        for (conv, bn) in first {
            out = conv_bn_act(conv, bn, &out, train, Activation::Relu)?;
        }
        let main = last_conv.forward(&out)?;
        let relu = Some(Activation::Relu);
        match projected {
            Some(short) => last_bn.forward_into_residual_act_t(&main, short, train, relu),
            None => last_bn.forward_residual_act_t(&main, xs, train, relu),
        }
    }
}

/// The dropout-mask generator (one implementation, in `tfkd_core::rng`).
pub use tfkd_core::rng::MaskRng;

/// A dropout mask source shared by all dropout layers of one model.
pub type SharedMaskRng = Arc<Mutex<MaskRng>>;

/// A new shared mask source seeded with `seed`.
pub(crate) fn shared_mask_rng(seed: u64) -> SharedMaskRng {
    Arc::new(Mutex::new(MaskRng::new(seed)))
}

/// Restarts a shared mask source at `seed`: the following masks are those
/// of a source just created with `seed`. (A poisoned lock is recovered: the
/// state is overwritten anyway.)
pub(crate) fn reseed_mask_rng(rng: &SharedMaskRng, seed: u64) {
    *rng.lock().unwrap_or_else(|e| e.into_inner()) = MaskRng::new(seed);
}

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

    /// Restarts the mask source at `seed` (for every dropout layer sharing it).
    pub fn reseed(&self, seed: u64) {
        reseed_mask_rng(&self.rng, seed)
    }

    /// The mask source's state: [`Dropout::reseed`] with it continues the
    /// masks from here.
    pub fn state(&self) -> u64 {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).state()
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let mask = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout mask generator lock poisoned".into()))?
            .dropout_mask(xs.shape(), f64::from(self.p), xs.dtype(), xs.device())
            .map_err(candle_core::Error::wrap)?;
        xs * mask
    }
}
