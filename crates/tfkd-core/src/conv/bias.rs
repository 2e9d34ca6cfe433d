//! Adding a per-channel bias, with a fast backward on the CPU.
//!
//! `y.broadcast_add(&b.reshape((1, C, 1, 1))?)` differentiates the bias with
//! candle's generic strided sum over dims 0, 2, 3, single-threaded and slow
//! (with MobileNetV2's biased convs it took about a tenth of a CPU training
//! step). [`add_channel_bias`] is one op whose backward passes the gradient
//! through unchanged and sums it per channel in eight f64 lanes, channels
//! split over rayon's pool.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, InplaceOp2, Layout, Result, Shape, Tensor};

use std::mem::MaybeUninit;

use crate::activation::{clamp_to, Activation};
use crate::cpu::{avx2_dispatch, filled, for_each_chunk, ncs, slice, Float};

/// `y[n, c, …] + b[c]` for `y: (N, C, …)` and `b: (C,)`, the bias of a
/// convolution (`nn.Conv2d(bias=True)`).
///
/// On the CPU with f32/f64 operands, and on CUDA with f32 (one kernel each
/// way, the sums per channel in a fixed order), this is one custom op with
/// an analytic backward (`∂L/∂y = g`, `∂L/∂b[c] = Σ_{n, …} g[n, c, …]`);
/// elsewhere `broadcast_add`.
pub fn add_channel_bias(y: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    Ok(add_channel_bias_candle(y, b)?)
}

/// `nn.Conv2d(bias=True)`: [`conv2d`](super::conv2d) of `x` and `w`, then
/// the bias `b` (`(C_out,)`) added per channel.
///
/// Where [`add_channel_bias`] runs as one op, the bias is added in place to
/// the convolution's output, as one more graph node over the same buffer:
/// neither the convolution's backward pass nor the bias's reads that
/// buffer, so the graph keeps one output per convolution, as PyTorch's
/// biased convolution does, instead of the unbiased and the biased
/// outputs. The result and its gradients are the same as
/// `add_channel_bias(&conv2d(..), b)`.
pub fn conv2d_with_bias(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    let y = super::conv2d_candle(x, w, padding, stride, groups)?;
    Ok(add_channel_bias_in_place(y, b, None)?)
}

/// [`conv2d_with_bias`], then `act` (ReLU / ReLU6, as
/// [`Activation::apply`]): AlexNet's `relu(conv(x))`. Where the bias runs
/// in place, the activation runs in the same op and its gradient is masked
/// by the op's output, so the graph keeps one buffer per convolution, as
/// PyTorch's in-place ReLU does; elsewhere the activation is an op of its
/// own. The same values and gradients as the separate ops.
pub fn conv2d_with_bias_act(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    let y = super::conv2d_candle(x, w, padding, stride, groups)?;
    Ok(add_channel_bias_in_place(y, b, Some(act))?)
}

/// `act(y + b)` per channel, in place on `y`'s buffer where the fast op runs
/// and nothing else holds that buffer (see [`Tensor::apply_op2_in_place`]):
/// only for a `y` whose making op's backward pass does not read its result.
fn add_channel_bias_in_place(y: Tensor, b: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    let dims = y.dims();
    let fits = dims.len() >= 2 && b.dims() == [dims[1]];
    if fits && crate::own_kernels(&y) && b.dtype() == y.dtype() && y.is_contiguous() {
        if let Some(out) = y.apply_op2_in_place(&b.contiguous()?, ChannelBias { act })? {
            return Ok(out);
        }
    }
    let out = add_channel_bias_candle(&y, b)?;
    match act {
        Some(act) => act.apply_candle(&out),
        None => Ok(out),
    }
}

/// [`add_channel_bias`] with candle's error, for use inside candle's traits.
pub(crate) fn add_channel_bias_candle(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = y.dims();
    if dims.len() < 2 || b.dims() != [dims[1]] {
        candle_core::bail!("add_channel_bias: bias {:?} for an input {:?} (want ({},))", b.shape(), y.shape(), dims.get(1).copied().unwrap_or(0))
    }
    let fast = crate::own_kernels(y) && b.dtype() == y.dtype();
    if !fast {
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        return y.broadcast_add(&b.reshape(shape)?);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias { act: None })
}

#[inline(always)]
fn add_impl<E: Float>(ys: &[E], b: E, out: &mut [MaybeUninit<E>]) {
    for (o, &y) in out.iter_mut().zip(ys) {
        o.write(y + b);
    }
}

/// `y ← clamp(y + b)` ([`Activation::bounds`]: the identity without an
/// activation).
#[inline(always)]
fn add_in_place_impl<E: Float>(ys: &mut [E], b: E, bounds: (E, E)) {
    for y in ys {
        *y = clamp_to(*y + b, bounds);
    }
}

#[inline(always)]
fn lane_sums_impl<E: Float>(xs: &[E], lanes: &mut [f64; 8]) {
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for l in 0..8 {
            lanes[l] += ch[l].to_f64();
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        lanes[l] += v.to_f64();
    }
}

avx2_dispatch!(add, add_avx2, add_impl, (ys: &[E], b: E, out: &mut [MaybeUninit<E>]));
avx2_dispatch!(add_in_place, add_in_place_avx2, add_in_place_impl, (ys: &mut [E], b: E, bounds: (E, E)));
avx2_dispatch!(lane_sums, lane_sums_avx2, lane_sums_impl, (xs: &[E], lanes: &mut [f64; 8]));

/// `Σ_{n, s} g[n, c, s]` for every channel, in f64.
pub(crate) fn channel_sums<E: Float>(g: &[E], (n, c, s): (usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0f64; c];
    for_each_chunk(&mut out, 1, n * s, |_: &mut (), ci, o| {
        let mut lanes = [0.0f64; 8];
        for ni in 0..n {
            lane_sums(&g[(ni * c + ci) * s..][..s], &mut lanes);
        }
        o[0] = lanes.iter().sum();
    });
    out
}

/// The per-channel bias; with `act` (in place only) followed by the
/// activation, whose gradient is masked by the op's output.
struct ChannelBias {
    act: Option<Activation>,
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "tfkd-channel-bias"
    }

    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        if self.act.is_some() {
            candle_core::bail!("tfkd-channel-bias: with an activation, it runs in place only")
        }
        let dims = ncs(yl.shape(), "tfkd-channel-bias")?;
        fn run<E: Float>(ys: &CpuStorage, yl: &Layout, bs: &CpuStorage, bl: &Layout, (_, c, s): (usize, usize, usize)) -> Result<Vec<E>> {
            let (y, b) = (slice::<E>(ys, yl, "the input")?, slice::<E>(bs, bl, "the bias")?);
            if b.len() != c {
                candle_core::bail!("tfkd-channel-bias: {} biases for {c} channels", b.len())
            }
            // Every plane is written by `add` (s elements each).
            Ok(filled(y.len(), |out| {
                for_each_chunk(out, s.max(1), s, |_: &mut (), i, o| add(&y[i * s..][..s], b[i % c], o))
            }))
        }
        let out = match ys.dtype() {
            DType::F32 => CpuStorage::F32(run(ys, yl, bs, bl, dims)?),
            DType::F64 => CpuStorage::F64(run(ys, yl, bs, bl, dims)?),
            other => candle_core::bail!("tfkd-channel-bias: unsupported dtype {other:?}"),
        };
        Ok((out, yl.shape().clone()))
    }

    fn cuda_fwd(&self, ys: &CudaStorage, yl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        if self.act.is_some() {
            candle_core::bail!("tfkd-channel-bias: with an activation, it runs in place only")
        }
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::channel_bias((ys, yl), (bs, bl))?, yl.shape().clone()));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (ys, bs, bl);
            candle_core::bail!("tfkd-channel-bias: built without CUDA ({:?})", yl.shape())
        }
    }

    fn bwd(&self, y: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With an activation, the gradient through it, from the op's output.
        let grad = &match self.act {
            Some(act) => act.grad_from_output(grad, res)?,
            None => grad.clone(),
        };
        let dy = y.track_op().then(|| grad.clone());
        let db = if b.track_op() {
            Some(grad.contiguous()?.apply_op1_no_bwd(&ChannelSums)?)
        } else {
            None
        };
        Ok((dy, db))
    }
}

/// The same sum, in place on the first operand ([`add_channel_bias_in_place`]).
impl InplaceOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "tfkd-channel-bias"
    }

    fn cpu_fwd(&self, ys: &mut CpuStorage, yl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<()> {
        let dims = ncs(yl.shape(), "tfkd-channel-bias")?;
        let Some((start, end)) = yl.contiguous_offsets() else {
            candle_core::bail!("tfkd-channel-bias: the input must be contiguous")
        };
        fn run<E: Float>(y: &mut [E], bs: &CpuStorage, bl: &Layout, (_, c, s): (usize, usize, usize), act: Option<Activation>) -> Result<()> {
            let b = slice::<E>(bs, bl, "the bias")?;
            if b.len() != c {
                candle_core::bail!("tfkd-channel-bias: {} biases for {c} channels", b.len())
            }
            let bounds = Activation::bounds(act);
            for_each_chunk(y, s.max(1), s, |_: &mut (), i, plane| add_in_place(plane, b[i % c], bounds));
            Ok(())
        }
        match ys {
            CpuStorage::F32(y) => run(&mut y[start..end], bs, bl, dims, self.act),
            CpuStorage::F64(y) => run(&mut y[start..end], bs, bl, dims, self.act),
            other => candle_core::bail!("tfkd-channel-bias: unsupported dtype {:?}", other.dtype()),
        }
    }

    fn cuda_fwd(&self, ys: &mut CudaStorage, yl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<()> {
        #[cfg(feature = "cuda")]
        return crate::cuda::channel_bias_in_place((ys, yl), (bs, bl), self.act.map(|a| a.max() as f32));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (ys, bs, bl);
            candle_core::bail!("tfkd-channel-bias: built without CUDA ({:?})", yl.shape())
        }
    }
}

/// `(N, C, …) → (C,)`: per-channel sums.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "tfkd-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = ncs(l.shape(), "tfkd-channel-bias")?;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(channel_sums(slice::<f32>(s, l, "the gradient")?, dims).into_iter().map(|v| v as f32).collect()),
            DType::F64 => CpuStorage::F64(channel_sums(slice::<f64>(s, l, "the gradient")?, dims)),
            other => candle_core::bail!("tfkd-channel-sums: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from(dims.1)))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dims = ncs(l.shape(), "tfkd-channel-bias")?;
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::channel_sums((s, l))?, Shape::from(dims.1)));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = s;
            candle_core::bail!("tfkd-channel-sums: built without CUDA ({dims:?})")
        }
    }
}
