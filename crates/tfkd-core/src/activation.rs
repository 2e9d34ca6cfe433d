//! Activations whose candle composition is slow to differentiate.
//!
//! `ReLU6` composed from candle ops, `x.relu()?.minimum(6.0)`, costs in the
//! backward pass a comparison, a dtype conversion and a product for the ReLU,
//! and for the `minimum` two equality masks, two divisions and a full
//! reduction of the gradient into the broadcast scalar 6 (about a tenth of a
//! MobileNetV2 training step on the CPU). Even candle's plain ReLU backward is
//! five passes with an allocation each (`zeros_like`, `ge`, `to_dtype`, a
//! product, the accumulation), and passes the gradient at exactly 0 where
//! PyTorch does not. [`relu`] and [`relu6`] are one op each way (on the CPU,
//! and on CUDA one kernel each way): a clamp to `[0, max]` whose gradient
//! passes where `0 < x < max` (and at NaN, as in PyTorch).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use std::mem::MaybeUninit;

use crate::cpu::{avx2_dispatch, filled, for_each_chunk, slice, Float};

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 16 * 1024;

/// `ReLU(x) = max(x, 0)` (`nn.ReLU`), with PyTorch's gradient: `∂L/∂x = g`
/// where `x > 0`, else 0.
///
/// On the CPU with f32/f64 input and on CUDA with f32 this is one custom op
/// forward and one backward; elsewhere candle's `relu` (whose gradient also
/// passes at exactly 0).
pub fn relu(x: &Tensor) -> crate::Result<Tensor> {
    Ok(relu_candle(x)?)
}

/// [`relu`] with candle's error, for use inside candle's traits.
pub(crate) fn relu_candle(x: &Tensor) -> Result<Tensor> {
    if !crate::own_kernels(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Clamp { max: f64::INFINITY })
}

/// [`relu`] as a method, for chains such as `(out + shortcut)?.relu_op()`.
pub trait ReluOp {
    /// [`relu`] of `self`.
    fn relu_op(&self) -> crate::Result<Tensor>;
}

impl ReluOp for Tensor {
    fn relu_op(&self) -> crate::Result<Tensor> {
        relu(self)
    }
}

/// `ReLU6(x) = min(max(x, 0), 6)` (`nn.ReLU6`), with PyTorch's gradient:
/// `∂L/∂x = g` where `0 < x < 6`, else 0.
///
/// On the CPU with f32/f64 input and on CUDA with f32 this is one custom op
/// forward and one backward; elsewhere `x.relu()?.minimum(6.0)` (whose candle gradient
/// differs only at exactly 0 and 6).
pub fn relu6(x: &Tensor) -> crate::Result<Tensor> {
    Ok(relu6_candle(x)?)
}

/// [`relu6`] with candle's error, for use inside candle's traits.
pub(crate) fn relu6_candle(x: &Tensor) -> Result<Tensor> {
    if !crate::own_kernels(x) {
        return x.relu()?.minimum(6f64);
    }
    x.contiguous()?.apply_op1(Clamp { max: 6.0 })
}

/// An activation that another op can apply to its own output (the
/// BatchNorm module's `forward_act_t`): the op's output is then the
/// activation's, and the graph never holds the tensor between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// [`relu`].
    Relu,
    /// [`relu6`].
    Relu6,
}

impl Activation {
    /// The clamp's upper bound.
    pub(crate) fn max(self) -> f64 {
        match self {
            Activation::Relu => f64::INFINITY,
            Activation::Relu6 => 6.0,
        }
    }

    /// The activation as an op of its own.
    pub fn apply(self, x: &Tensor) -> crate::Result<Tensor> {
        Ok(self.apply_candle(x)?)
    }

    /// [`Activation::apply`] with candle's error.
    pub(crate) fn apply_candle(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => relu_candle(x),
            Activation::Relu6 => relu6_candle(x),
        }
    }

    /// The bounds [`clamp_to`] applies for `act`: `(0, max)`, or for no
    /// activation `(−∞, ∞)` (the identity).
    pub(crate) fn bounds<E: Float>(act: Option<Self>) -> (E, E) {
        match act {
            Some(act) => (E::zero(), E::from_f64(act.max())),
            None => (E::from_f64(f64::NEG_INFINITY), E::from_f64(f64::INFINITY)),
        }
    }

    /// The gradient through the activation from its *output* `y`:
    /// `g·[0 < y < max]`, the same as from its input (the clamp keeps the
    /// sign, maps exactly the inputs at or past a bound onto it, and NaN
    /// onto NaN), so the input need not be kept.
    pub(crate) fn grad_from_output(self, grad: &Tensor, y: &Tensor) -> Result<Tensor> {
        grad.contiguous()?.apply_op2_no_bwd(y, &ClampGrad(Clamp { max: self.max() }))
    }
}

/// `min(max(x, 0), max)`; `max` may be infinite.
#[derive(Clone, Copy)]
struct Clamp {
    max: f64,
}

impl Clamp {
    fn forward<E: Float>(&self, x: &[E]) -> Vec<E> {
        let max = E::from_f64(self.max);
        filled(x.len(), |y| {
            for_each_chunk(y, CHUNK, CHUNK, |_: &mut (), i, ys| clamp_rows(&x[i * CHUNK..][..ys.len()], max, ys))
        })
    }

    fn backward<E: Float>(&self, g: &[E], x: &[E]) -> Vec<E> {
        // Unbounded (ReLU): the gradient also passes at x = +∞, as PyTorch.
        let max = if self.max.is_finite() { Some(E::from_f64(self.max)) } else { None };
        filled(x.len(), |dx| {
            for_each_chunk(dx, CHUNK, CHUNK, |_: &mut (), i, ds| {
                let at = i * CHUNK;
                clamp_grad_rows(&g[at..][..ds.len()], &x[at..][..ds.len()], max, ds)
            })
        })
    }
}

/// `yₖ = min(max(xₖ, 0), max)`, NaN passing through, as selects LLVM
/// vectorises (every element of `y` written).
#[inline(always)]
fn clamp_rows_impl<E: Float>(x: &[E], max: E, y: &mut [MaybeUninit<E>]) {
    for (y, &v) in y.iter_mut().zip(x) {
        y.write(clamp_value(v, max));
    }
}

/// `min(max(v, 0), max)`: the activation's clamp ([`clamp_to`]).
#[inline(always)]
fn clamp_value<E: Float>(v: E, max: E) -> E {
    clamp_to(v, (E::zero(), max))
}

/// `min(max(v, lo), hi)`: `v` itself when NaN, as PyTorch (both comparisons
/// are false); written as selects LLVM vectorises. With
/// [`Activation::bounds`] it is the activation, or the identity.
#[inline(always)]
pub(crate) fn clamp_to<E: Float>(v: E, (lo, hi): (E, E)) -> E {
    let low = if v < lo { lo } else { v };
    if low > hi {
        hi
    } else {
        low
    }
}

avx2_dispatch!(clamp_rows, clamp_rows_avx2, clamp_rows_impl, (x: &[E], max: E, y: &mut [MaybeUninit<E>]));

/// `dxₖ = gₖ` unless `xₖ ≤ 0` or `xₖ ≥ max` (`max` `None`: unless `xₖ ≤ 0`),
/// else 0, every element of `dx` written. NaN passes the gradient, as in
/// PyTorch (`threshold_backward` / `hardtanh_backward` zero where those
/// comparisons hold, and NaN compares false).
#[inline(always)]
fn clamp_grad_rows_impl<E: Float>(g: &[E], x: &[E], max: Option<E>, dx: &mut [MaybeUninit<E>]) {
    let zero = E::zero();
    match max {
        Some(max) => {
            for ((d, &gv), &v) in dx.iter_mut().zip(g).zip(x) {
                d.write(if (v <= zero) | (v >= max) { zero } else { gv });
            }
        }
        None => {
            for ((d, &gv), &v) in dx.iter_mut().zip(g).zip(x) {
                d.write(if v <= zero { zero } else { gv });
            }
        }
    }
}

avx2_dispatch!(
    clamp_grad_rows,
    clamp_grad_rows_avx2,
    clamp_grad_rows_impl,
    (g: &[E], x: &[E], max: Option<E>, dx: &mut [MaybeUninit<E>])
);

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "tfkd-clamp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice::<f32>(s, l, "the input")?)),
            DType::F64 => CpuStorage::F64(self.forward(slice::<f64>(s, l, "the input")?)),
            other => candle_core::bail!("tfkd-clamp: unsupported dtype {other:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::clamp((s, l), self.max as f32)?, l.shape().clone()));
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("tfkd-clamp: built without CUDA ({:?}, {:?})", s.dtype(), l.shape())
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(x, &ClampGrad(*self))?))
    }
}

/// `(g, x) → g·[0 < x < max]` (NaN `x` passing `g`).
struct ClampGrad(Clamp);

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "tfkd-clamp-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != xl.shape() {
            candle_core::bail!("tfkd-clamp: gradient {:?} for an input {:?}", gl.shape(), xl.shape())
        }
        let out = match gs.dtype() {
            DType::F32 => CpuStorage::F32(self.0.backward(slice::<f32>(gs, gl, "the gradient")?, slice::<f32>(xs, xl, "the input")?)),
            DType::F64 => CpuStorage::F64(self.0.backward(slice::<f64>(gs, gl, "the gradient")?, slice::<f64>(xs, xl, "the input")?)),
            other => candle_core::bail!("tfkd-clamp: unsupported dtype {other:?}"),
        };
        Ok((out, gl.shape().clone()))
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        if gl.shape() != xl.shape() {
            candle_core::bail!("tfkd-clamp: gradient {:?} for an input {:?}", gl.shape(), xl.shape())
        }
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::clamp_grad((gs, gl), (xs, xl), self.0.max as f32)?, gl.shape().clone()));
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("tfkd-clamp: built without CUDA ({:?}, {:?})", gs.dtype(), xs.dtype())
    }
}
