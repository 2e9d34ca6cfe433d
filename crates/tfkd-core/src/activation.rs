//! Activations whose candle composition is slow to differentiate.
//!
//! `ReLU6` composed from candle ops, `x.relu()?.minimum(6.0)`, costs in the
//! backward pass a comparison, a dtype conversion and a product for the ReLU,
//! and for the `minimum` two equality masks, two divisions and a full
//! reduction of the gradient into the broadcast scalar 6 (about a tenth of a
//! MobileNetV2 training step on the CPU). [`relu6`] is one op each way.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use crate::cpu::{for_each_chunk, slice, supported, Float};

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 16 * 1024;

/// `ReLU6(x) = min(max(x, 0), 6)` (`nn.ReLU6`), with PyTorch's gradient:
/// `∂L/∂x = g` where `0 < x < 6`, else 0.
///
/// On the CPU with f32/f64 input this is one custom op forward and one
/// backward; elsewhere `x.relu()?.minimum(6.0)` (whose candle gradient
/// differs only at exactly 0 and 6).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if !matches!(x.device(), Device::Cpu) || !supported(x.dtype()) {
        return x.relu()?.minimum(6f64);
    }
    x.contiguous()?.apply_op1(Relu6)
}

struct Relu6;

fn relu6_fwd<E: Float>(x: &[E]) -> Vec<E> {
    let (zero, six) = (E::from_f64(0.0), E::from_f64(6.0));
    let mut y = vec![zero; x.len()];
    for_each_chunk(&mut y, CHUNK, CHUNK, |_: &mut (), i, ys| {
        for (y, &v) in ys.iter_mut().zip(&x[i * CHUNK..]) {
            // `v` itself when NaN, as PyTorch.
            *y = if v < zero {
                zero
            } else if v > six {
                six
            } else {
                v
            };
        }
    });
    y
}

fn relu6_bwd<E: Float>(g: &[E], x: &[E]) -> Vec<E> {
    let (zero, six) = (E::from_f64(0.0), E::from_f64(6.0));
    let mut dx = vec![zero; x.len()];
    for_each_chunk(&mut dx, CHUNK, CHUNK, |_: &mut (), i, ds| {
        let at = i * CHUNK;
        for ((d, &gv), &v) in ds.iter_mut().zip(&g[at..]).zip(&x[at..]) {
            *d = if v > zero && v < six { gv } else { zero };
        }
    });
    dx
}

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "tfkd-relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(relu6_fwd(slice::<f32>(s, l, "the input")?)),
            DType::F64 => CpuStorage::F64(relu6_fwd(slice::<f64>(s, l, "the input")?)),
            other => candle_core::bail!("tfkd-relu6: unsupported dtype {other:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(x, &Relu6Grad)?))
    }
}

/// `(g, x) → g·[0 < x < 6]`.
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "tfkd-relu6-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != xl.shape() {
            candle_core::bail!("tfkd-relu6: gradient {:?} for an input {:?}", gl.shape(), xl.shape())
        }
        let out = match gs.dtype() {
            DType::F32 => CpuStorage::F32(relu6_bwd(slice::<f32>(gs, gl, "the gradient")?, slice::<f32>(xs, xl, "the input")?)),
            DType::F64 => CpuStorage::F64(relu6_bwd(slice::<f64>(gs, gl, "the gradient")?, slice::<f64>(xs, xl, "the input")?)),
            other => candle_core::bail!("tfkd-relu6: unsupported dtype {other:?}"),
        };
        Ok((out, gl.shape().clone()))
    }
}
