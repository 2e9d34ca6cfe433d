//! Activations whose candle composition is slow to differentiate.
//!
//! `ReLU6` composed from candle ops, `x.relu()?.minimum(6.0)`, costs in the
//! backward pass a comparison, a dtype conversion and a product for the ReLU,
//! and for the `minimum` two equality masks, two divisions and a full
//! reduction of the gradient into the broadcast scalar 6 (about a tenth of a
//! MobileNetV2 training step on the CPU). Even candle's plain ReLU backward is
//! five passes with an allocation each (`zeros_like`, `ge`, `to_dtype`, a
//! product, the accumulation), and passes the gradient at exactly 0 where
//! PyTorch does not. [`relu`] and [`relu6`] are one op each way: a clamp to
//! `[0, max]` whose gradient passes where `0 < x < max`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use crate::cpu::{for_each_chunk, slice, supported, Float};

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 16 * 1024;

/// `ReLU(x) = max(x, 0)` (`nn.ReLU`), with PyTorch's gradient: `∂L/∂x = g`
/// where `x > 0`, else 0.
///
/// On the CPU with f32/f64 input this is one custom op forward and one
/// backward; elsewhere candle's `relu` (whose gradient also passes at
/// exactly 0).
pub fn relu(x: &Tensor) -> crate::Result<Tensor> {
    Ok(relu_candle(x)?)
}

/// [`relu`] with candle's error, for use inside candle's traits.
pub(crate) fn relu_candle(x: &Tensor) -> Result<Tensor> {
    if !matches!(x.device(), Device::Cpu) || !supported(x.dtype()) {
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
/// On the CPU with f32/f64 input this is one custom op forward and one
/// backward; elsewhere `x.relu()?.minimum(6.0)` (whose candle gradient
/// differs only at exactly 0 and 6).
pub fn relu6(x: &Tensor) -> crate::Result<Tensor> {
    Ok(relu6_candle(x)?)
}

/// [`relu6`] with candle's error, for use inside candle's traits.
pub(crate) fn relu6_candle(x: &Tensor) -> Result<Tensor> {
    if !matches!(x.device(), Device::Cpu) || !supported(x.dtype()) {
        return x.relu()?.minimum(6f64);
    }
    x.contiguous()?.apply_op1(Clamp { max: 6.0 })
}

/// `min(max(x, 0), max)`; `max` may be infinite.
#[derive(Clone, Copy)]
struct Clamp {
    max: f64,
}

impl Clamp {
    fn forward<E: Float>(&self, x: &[E]) -> Vec<E> {
        let (zero, max) = (E::from_f64(0.0), E::from_f64(self.max));
        let mut y = vec![zero; x.len()];
        for_each_chunk(&mut y, CHUNK, CHUNK, |_: &mut (), i, ys| {
            for (y, &v) in ys.iter_mut().zip(&x[i * CHUNK..]) {
                // `v` itself when NaN, as PyTorch.
                *y = if v < zero {
                    zero
                } else if v > max {
                    max
                } else {
                    v
                };
            }
        });
        y
    }

    fn backward<E: Float>(&self, g: &[E], x: &[E]) -> Vec<E> {
        let (zero, max) = (E::from_f64(0.0), E::from_f64(self.max));
        let mut dx = vec![zero; x.len()];
        // Unbounded (ReLU): the gradient also passes at x = +∞, as PyTorch.
        let bounded = self.max.is_finite();
        for_each_chunk(&mut dx, CHUNK, CHUNK, |_: &mut (), i, ds| {
            let at = i * CHUNK;
            for ((d, &gv), &v) in ds.iter_mut().zip(&g[at..]).zip(&x[at..]) {
                *d = if v > zero && (v < max || !bounded) { gv } else { zero };
            }
        });
        dx
    }
}

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

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(x, &ClampGrad(*self))?))
    }
}

/// `(g, x) → g·[0 < x < max]`.
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
}
