//! A convolution whose output is concatenated, along the channels, after
//! another tensor: DenseNet's `cat([x, conv(h)], 1)`, as one op.
//!
//! As two ops, candle's graph keeps the convolution's output until the
//! backward pass ends (it is an operand of the concatenation), though no
//! backward pass reads it; PyTorch keeps only the concatenation. In one op
//! the convolution's output is a buffer that lives while the forward runs:
//! the graph keeps `x`, `h` and the concatenation, as PyTorch's does.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{contiguous_copy, gemm_cpu};

/// `cat([x, conv2d(h, w)], 1)`: `x` `(N, C_x, H_o, W_o)`, the convolution
/// of `h` by `w` as [`conv2d`](super::conv2d) computes it, with `H_o × W_o`
/// output planes. The same values and gradients as the two ops; where the
/// convolution runs on the CPU engine or on cuDNN (not for depthwise
/// convolutions), one op whose graph does not keep the convolution's
/// output, elsewhere the two ops.
pub fn cat_conv2d(x: &Tensor, h: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    Ok(cat_conv2d_candle(x, h, w, padding, stride, groups)?)
}

fn cat_conv2d_candle(x: &Tensor, h: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> Result<Tensor> {
    let fused = one_op(x, h, w, groups)?;
    if !fused {
        let y = super::conv2d_candle(h, w, padding, stride, groups)?;
        return Tensor::cat(&[x, &y], 1);
    }
    // The shapes: the convolution's checks, then x's planes and batch.
    let (n, _, _, _) = x.dims4()?;
    let (hn, c_in, hh, hw) = h.dims4()?;
    let (c_out, c_in_k, k_h, k_w) = w.dims4()?;
    if groups == 0 || c_in != c_in_k * groups || c_out % groups != 0 || stride == 0 || hh + 2 * padding < k_h || hw + 2 * padding < k_w {
        // The convolution names what is wrong.
        super::conv2d_candle(h, w, padding, stride, groups)?;
        candle_core::bail!("cat_conv2d: the convolution of {:?} by {:?} is invalid", h.shape(), w.shape())
    }
    let (ho, wo) = ((hh + 2 * padding - k_h) / stride + 1, (hw + 2 * padding - k_w) / stride + 1);
    if x.dims4()?.2 != ho || x.dims4()?.3 != wo || n != hn {
        candle_core::bail!("cat_conv2d: {:?} cannot be concatenated with the convolution's output ({hn}, {c_out}, {ho}, {wo})", x.shape())
    }
    let op = CatConv { padding, stride, groups };
    x.contiguous()?.apply_op3(h, &w.contiguous()?, op)
}

/// Whether the one op runs: the CPU engine's dtypes, or cuDNN; dense or
/// grouped (depthwise convolutions have kernels of their own); `x` in the
/// dtype and on the device of `h`.
fn one_op(x: &Tensor, h: &Tensor, w: &Tensor, groups: usize) -> Result<bool> {
    if super::candle_only() || x.dtype() != h.dtype() || !x.device().same_device(h.device()) || h.rank() != 4 || w.rank() != 4 {
        return Ok(false);
    }
    let depthwise = groups > 1 && w.dim(1)? == 1;
    if depthwise {
        return Ok(false);
    }
    #[cfg(feature = "cuda")]
    if w.dtype() == h.dtype() && super::cudnn::active(h.device(), h.dtype()) {
        return Ok(true);
    }
    Ok(super::cpu_fast(h, w))
}

/// `(x, h, w) → cat([x, conv(h, w)], 1)`.
struct CatConv {
    padding: usize,
    stride: usize,
    groups: usize,
}

/// Writes `x` `(N, C_x, S)` and `y` `(N, C_y, S)`, both contiguous, side
/// by side into a new `(N, C_x + C_y, S)` buffer.
fn side_by_side<S>((xs, xl): (&S, &Layout), y: &S, (n, c_x, c_y, plane): (usize, usize, usize, usize)) -> Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let Some((x_start, _)) = xl.contiguous_offsets() else {
        candle_core::bail!("tfkd-cat-conv2d: the first operand must be contiguous")
    };
    let shape = Shape::from((n, c_x + c_y, plane));
    // SAFETY: the two copies write every element: x's C_x planes, then y's
    // C_y, of every sample.
    let mut out = unsafe { xs.device().alloc_uninit(&shape, xs.dtype())? };
    let row = (c_x + c_y) * plane;
    xs.copy2d(&mut out, n, c_x * plane, c_x * plane, row, x_start, 0)?;
    y.copy2d(&mut out, n, c_y * plane, c_y * plane, row, 0, c_x * plane)?;
    Ok(out)
}

impl CatConv {
    /// The output shape and `(N, C_x, C_y, H_o·W_o)`.
    fn shapes(&self, xl: &Layout, wl: &Layout) -> Result<(Shape, (usize, usize, usize, usize))> {
        let (n, c_x, ho, wo) = xl.shape().dims4()?;
        let c_y = wl.shape().dims4()?.0;
        Ok((Shape::from((n, c_x + c_y, ho, wo)), (n, c_x, c_y, ho * wo)))
    }
}

impl CustomOp3 for CatConv {
    fn name(&self) -> &'static str {
        "tfkd-cat-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let packed = contiguous_copy(hs, hl)?;
        let h = packed.as_ref().map_or((hs, hl), |(s, l)| (s, l));
        let (y, _) = gemm_cpu::forward_storage(h, (ws, wl), self.padding, self.stride, self.groups)?;
        let (shape, sizes) = self.shapes(xl, wl)?;
        Ok((side_by_side((xs, xl), &y, sizes)?, shape))
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, hs: &CudaStorage, hl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let geometry = crate::cudnn::Geometry {
                x: hl.shape().dims4()?.into(),
                w: wl.shape().dims4()?.into(),
                padding: self.padding,
                stride: self.stride,
                groups: self.groups,
            };
            let y = super::cudnn::run(crate::cudnn::Pass::Forward, geometry, (hs, hl), (ws, wl))?;
            let (shape, sizes) = self.shapes(xl, wl)?;
            Ok((side_by_side((xs, xl), &y, sizes)?, shape))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (xs, hs, hl, ws, wl);
            candle_core::bail!("tfkd-cat-conv2d: built without CUDA ({:?})", xl.shape())
        }
    }

    fn bwd(&self, x: &Tensor, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c_x = x.dim(1)?;
        let c_y = grad.dim(1)? - c_x;
        let dx = if x.track_op() { Some(grad.narrow(1, 0, c_x)?) } else { None };
        let dy = grad.narrow(1, c_x, c_y)?.contiguous()?;
        let (p, s, g) = (self.padding, self.stride, self.groups);
        #[cfg(feature = "cuda")]
        if h.device().is_cuda() {
            let (dh, dw) = super::cudnn::grads(h, w, &dy, p, s, g)?;
            return Ok((dx, dh, dw));
        }
        let (dh, dw) = super::grads(h, w, &dy, p, s, g)?;
        Ok((dx, dh, dw))
    }
}
