//! A convolution's output summed with another tensor: the residual sums of
//! pre-activation blocks (Wide ResNet's `conv2(out) + x` and
//! `convShortcut(x) + out`), with the graph keeping what PyTorch's keeps.
//!
//! As two ops, candle's graph keeps the convolution's output until the
//! backward pass ends (it is an operand of the sum), though neither the
//! sum's backward pass nor the convolution's reads it; PyTorch keeps none.
//! Here the sum is written into a buffer the caller gives up, as one more
//! graph node over it ([`Tensor::apply_op2_in_place`] /
//! [`Tensor::apply_op3_in_place`], candle-core patch 4):
//!
//! * [`conv2d_add`]: `conv2d(x, w) + r` written into the convolution's own
//!   output, which nothing else holds yet (`r` stays an operand);
//! * [`conv2d_accumulate`]: `r + conv2d(x, w)` written into `r`, which the
//!   caller gives up; the convolution's output is a value that lives while
//!   the op runs, and the op's backward pass is the convolution's own.
//!
//! Both give the values and gradients of the two ops, bit for bit; where
//! the buffer is held elsewhere, or the sum has no kernel of tfkd's (Metal,
//! CUDA other than f32, CPU f16/bf16), they are the two ops.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::op::Op;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Result, Shape, Storage, Tensor};

use crate::cpu::Float;

/// The convolution ops whose backward pass does not read their output, so
/// that the output's buffer may hold the sum ([`super::op_names`]).
const OUTPUT_UNREAD: [&str; 3] = [super::op_names::FAST, super::op_names::CUDNN, super::op_names::DEPTHWISE];

/// `conv2d(x, w) + r` ([`conv2d`](super::conv2d), then the sum with `r` of
/// the output's shape), the sum written into the convolution's output: the
/// graph keeps `x`, `w`, `r` and the sum, not the output on its own.
pub fn conv2d_add(x: &Tensor, w: &Tensor, r: &Tensor, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    let y = super::conv2d_candle(x, w, padding, stride, groups)?;
    if summable(&y, r) && output_unread(&y) {
        if let Some(out) = y.apply_op2_in_place(r, AddInPlace)? {
            return Ok(out);
        }
    }
    Ok(y.add(r)?)
}

/// `r + conv2d(x, w)`, written into `r`'s buffer where nothing else holds
/// `r` (the caller gives it up: pass the tensor, not a clone still in use)
/// and the op that made `r` does not read its output in its backward pass
/// (a convolution, one of these sums, or no op): the graph keeps `x`, `w`
/// and the sum; the convolution's output lives only while the op runs.
/// Otherwise (an `r` made by BatchNorm with its ReLU, say, whose gradient
/// mask is its output) the two ops.
pub fn conv2d_accumulate(r: Tensor, x: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    let y = super::conv2d_candle(x, w, padding, stride, groups)?;
    if summable(&r, &y) && output_unread(&r) {
        if let Some((xs, ws, conv)) = made_by_a_convolution(&y) {
            let op = AccumulateConv { value: Mutex::new(Some(y.detach())), conv };
            if let Some(out) = r.apply_op3_in_place(&xs, &ws, op)? {
                return Ok(out);
            }
        }
    }
    Ok(r.add(&y)?)
}

/// Whether `dst += src` has a kernel of tfkd's: the same shape and dtype,
/// contiguous, on the CPU (f32/f64) or on a GPU (f32).
fn summable(dst: &Tensor, src: &Tensor) -> bool {
    dst.dims() == src.dims()
        && dst.dtype() == src.dtype()
        && dst.is_contiguous()
        && src.is_contiguous()
        && crate::own_kernels(dst)
        && dst.device().same_device(src.device())
}

/// Whether the op that made `t` leaves its output unread in its backward
/// pass, so that `t`'s buffer may take a sum: no op, a convolution
/// ([`OUTPUT_UNREAD`]), or one of this file's sums.
fn output_unread(t: &Tensor) -> bool {
    match t.op() {
        None => true,
        Some(Op::CustomOp2(_, _, op)) => OUTPUT_UNREAD.contains(&op.name()) || op.name() == ADD_IN_PLACE,
        Some(Op::CustomOp3(_, _, _, op)) => op.name() == ACCUMULATE_CONV,
        Some(_) => false,
    }
}

/// The sums' op names.
const ADD_IN_PLACE: &str = "tfkd-add-in-place";
const ACCUMULATE_CONV: &str = "tfkd-accumulate-conv";

/// A graph node's binary op, as candle keeps it.
type NodeOp2 = Arc<Box<dyn CustomOp2 + Send + Sync>>;

/// The operands and the op of `y` where a convolution that does not read
/// its output made it.
fn made_by_a_convolution(y: &Tensor) -> Option<(Tensor, Tensor, NodeOp2)> {
    match y.op() {
        Some(Op::CustomOp2(x, w, conv)) if OUTPUT_UNREAD.contains(&conv.name()) => Some((x.clone(), w.clone(), conv.clone())),
        _ => None,
    }
}

/// `dst += src` over two contiguous buffers of the same length.
fn add_into(op: &str, (dst, dl): (&mut CpuStorage, &Layout), (src, sl): (&CpuStorage, &Layout)) -> Result<()> {
    fn run<E: Float>(op: &str, dst: &mut [E], (src, sl): (&CpuStorage, &Layout)) -> Result<()> {
        let src = crate::cpu::slice::<E>(src, sl, "the addend")?;
        if src.len() != dst.len() {
            candle_core::bail!("{op}: {} values added into {}", src.len(), dst.len())
        }
        // Over rayon's pool where the sum is large enough to pay for it.
        crate::cpu::for_each_chunk(dst, CHUNK, CHUNK, |_: &mut (), i, d| d.iter_mut().zip(&src[i * CHUNK..]).for_each(|(d, &s)| *d += s));
        Ok(())
    }
    let Some((start, end)) = dl.contiguous_offsets() else {
        candle_core::bail!("{op}: the sum's buffer must be contiguous")
    };
    match dst {
        CpuStorage::F32(d) => run(op, &mut d[start..end], (src, sl)),
        CpuStorage::F64(d) => run(op, &mut d[start..end], (src, sl)),
        other => candle_core::bail!("{op}: unsupported dtype {:?}", other.dtype()),
    }
}

/// Elements per rayon task of the sum.
const CHUNK: usize = 16 * 1024;

/// `dst += src` on a GPU (f32, contiguous).
fn add_into_cuda(op: &str, dst: (&mut CudaStorage, &Layout), src: (&CudaStorage, &Layout)) -> Result<()> {
    #[cfg(feature = "cuda")]
    return crate::cuda::add_in_place(dst, src, op);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (dst, src);
        candle_core::bail!("{op}: built without CUDA")
    }
}

/// `y ← y + r` ([`conv2d_add`]); backward: the gradient to both.
struct AddInPlace;

impl CustomOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        ADD_IN_PLACE
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("tfkd-add-in-place: runs in place only")
    }

    fn bwd(&self, y: &Tensor, r: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((y.track_op().then(|| grad.clone()), r.track_op().then(|| grad.clone())))
    }
}

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        ADD_IN_PLACE
    }

    fn cpu_fwd(&self, y: &mut CpuStorage, yl: &Layout, r: &CpuStorage, rl: &Layout) -> Result<()> {
        add_into(InplaceOp2::name(self), (y, yl), (r, rl))
    }

    fn cuda_fwd(&self, y: &mut CudaStorage, yl: &Layout, r: &CudaStorage, rl: &Layout) -> Result<()> {
        add_into_cuda(InplaceOp2::name(self), (y, yl), (r, rl))
    }
}

/// `r ← r + y` with `y = conv(x, w)` computed before ([`conv2d_accumulate`]),
/// over the operands `(r, x, w)`; backward: the gradient to `r`, and the
/// convolution's own backward pass for `x` and `w` (which reads neither its
/// output nor `r`).
struct AccumulateConv {
    /// The convolution's output, handed over (and dropped) by the forward.
    value: Mutex<Option<Tensor>>,
    conv: NodeOp2,
}

impl AccumulateConv {
    fn take_value(&self) -> Result<Tensor> {
        let value = self.value.lock().map_err(|_| candle_core::Error::Msg("tfkd-accumulate-conv: a poisoned lock".into()))?.take();
        value.ok_or_else(|| candle_core::Error::Msg("tfkd-accumulate-conv: run twice".into()))
    }
}

impl CustomOp3 for AccumulateConv {
    fn name(&self) -> &'static str {
        ACCUMULATE_CONV
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("tfkd-accumulate-conv: runs in place only")
    }

    fn bwd(&self, r: &Tensor, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dr = r.track_op().then(|| grad.clone());
        // `res` stands for the convolution's output, which its backward
        // pass does not read (`OUTPUT_UNREAD`).
        let (dx, dw) = self.conv.bwd(x, w, res, grad)?;
        Ok((dr, dx, dw))
    }
}

impl InplaceOp3 for AccumulateConv {
    fn name(&self) -> &'static str {
        ACCUMULATE_CONV
    }

    fn cpu_fwd(&self, r: &mut CpuStorage, rl: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        let value = self.take_value()?;
        let (s, l) = value.storage_and_layout();
        let Storage::Cpu(s) = &*s else {
            candle_core::bail!("tfkd-accumulate-conv: the convolution's output is not on the CPU")
        };
        add_into(InplaceOp3::name(self), (r, rl), (s, l))
    }

    fn cuda_fwd(&self, r: &mut CudaStorage, rl: &Layout, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<()> {
        let value = self.take_value()?;
        let (s, l) = value.storage_and_layout();
        let Storage::Cuda(s) = &*s else {
            candle_core::bail!("tfkd-accumulate-conv: the convolution's output is not on the GPU")
        };
        add_into_cuda(InplaceOp3::name(self), (r, rl), (s, l))
    }
}
