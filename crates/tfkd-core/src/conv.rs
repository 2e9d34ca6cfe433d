//! A 2-D convolution with the same forward as `Tensor::conv2d` and a fast
//! backward pass on the CPU.
//!
//! candle's autograd computes the input gradient of `conv2d` with its direct
//! `conv_transpose2d` loops, which dominate a CNN training step on the CPU.
//! [`conv2d`] wraps a forward convolution in a [`CustomOp2`] whose backward
//! computes both gradients with matrix products instead. On the CPU (f32,
//! f64) all three passes run one image at a time (`conv/gemm_cpu.rs`): the
//! image's im2col matrix in a per-thread buffer and one product per group
//! written straight into the NCHW result, the input gradient as a product
//! and a col2im scatter-add, the weight gradient as per-thread partial
//! products; no buffer grows with the batch. On CUDA, where cuDNN loads
//! (`--features cuda`, [`crate::cudnn`]), each pass is one cuDNN call with
//! the algorithm timed once per shape (`conv/cudnn.rs`). Elsewhere (Metal,
//! CUDA without cuDNN) the forward is
//! candle's own and the backward is made of tensor ops (im2col views,
//! `conv/im2col.rs`, and batched matmuls), which on CUDA run as cuBLAS work.
//! Depthwise convolutions (one input channel per group), which candle runs
//! as one tiny convolution per channel, have their own CPU kernels and, in
//! f32, their own CUDA kernels, which run instead of cuDNN's, as PyTorch
//! runs its own (`TFKD_DEPTHWISE=cudnn` hands them to cuDNN;
//! [`depthwise_conv2d`], `conv/depthwise.rs`).

use std::sync::{Mutex, OnceLock};

mod bias;
mod concat;
#[cfg(feature = "cuda")]
pub mod cudnn;
mod depthwise;
mod gemm_cpu;
mod im2col;
mod residual;
pub use bias::{add_channel_bias, conv2d_with_bias, conv2d_with_bias_act};
pub use concat::cat_conv2d;
pub use residual::{conv2d_accumulate, conv2d_add};

/// The names (`CustomOp2::name`) of the ops in which [`conv2d`]'s paths
/// end: the CPU engine's, cuDNN's, and the depthwise kernels'. None of
/// their backward passes reads the op's output.
pub(crate) mod op_names {
    pub(crate) const FAST: &str = "tfkd-fast-conv2d";
    pub(crate) const CUDNN: &str = "tfkd-cudnn-conv2d";
    pub(crate) const DEPTHWISE: &str = "tfkd-depthwise-conv2d";
}
use im2col::im2col_rows;
pub(crate) mod windows;

/// `s` under a layout `l` that is not contiguous, copied into a contiguous
/// buffer of its own, with that buffer's layout (`None` when `l` is
/// contiguous: read `s` itself).
///
/// The convolutions keep their input as given, a channel slice say
/// (ShuffleNetV2 convolves half of a block's channels), as PyTorch's convolution
/// saves its input view: the copy their kernels read lives only while a pass
/// runs, where `x.contiguous()` before the op would be a graph node that the
/// graph keeps until the backward pass ends.
pub(crate) fn contiguous_copy<S>(s: &S, l: &Layout) -> Result<Option<(S, Layout)>>
where
    S: BackendStorage,
    S::Device: candle_core::backend::BackendDevice<Storage = S>,
{
    use candle_core::backend::BackendDevice;
    if l.is_contiguous() {
        return Ok(None);
    }
    // SAFETY: `copy_strided_src` writes every element of the new buffer.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(Some((dst, Layout::contiguous(l.shape()))))
}

/// The outputs `j` in `[lo, hi)` (of `len_out`) whose input `s·j + b − p`
/// lies inside `[0, len_in)`, for kernel offset `b`, stride `s` and padding
/// `p`: the part of a row that does not read the zero padding.
pub(crate) fn inside_range(len_in: usize, len_out: usize, s: usize, p: usize, b: usize) -> (usize, usize) {
    let lo = p.saturating_sub(b).div_ceil(s).min(len_out);
    let hi = if len_in + p > b { ((len_in + p - b - 1) / s + 1).min(len_out) } else { 0 }.max(lo);
    (lo, hi)
}
pub use depthwise::depthwise_conv2d;
pub use windows::{depthwise_conv2d_taps, window_taps};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Storage,
    Tensor,
};

/// 2-D convolution (NCHW, dilation 1), the same as
/// `x.conv2d(w, padding, stride, 1, groups)` up to the order of the sums,
/// with a fast backward pass.
///
/// With `x: (N, C_in, H, W)`, `w: (C_out, C_in / groups, k_h, k_w)` and
/// `H_o = ⌊(H + 2p − k_h) / s⌋ + 1` (same for `W_o`):
///
/// `y[n, o, i, j] = Σ_{c, a, b} w[o, c, a, b] · x̃[n, c, s·i + a, s·j + b]`
///
/// where `x̃` is `x` zero-padded by `p` on every side. The gradients, for an
/// upstream gradient `g = ∂L/∂y`, are
///
/// * `∂L/∂x = conv(pad(dilate_s(g)), flip(w)ᵀ)` with stride 1: `g` with
///   `s − 1` zeros between rows and columns, padded by `k − 1 − p` on each
///   side (cropped when negative) plus `(H + 2p − k) mod s` at the
///   bottom/right, convolved with the kernel flipped in both spatial dims and
///   transposed to `(C_in, C_out, k_h, k_w)`. For `s > 1` the zeros are never
///   materialised: the padded input splits into `s²` phases
///   `x̃[s·m + r_y, s·m' + r_x]`, phase `r` only meets the kernel taps
///   `w[r + s·t]`, so each phase is a stride-1 "full" convolution of `g` with
///   that flipped sub-kernel, `∂x̃[s·m + r] = Σ_t g[m − t] · w[r + s·t]`;
///   the phases are interleaved and the padding cropped;
/// * `∂L/∂w[o, c, a, b] = Σ_{n, i, j} g[n, o, i, j] · x̃[n, c, s·i + a, s·j + b]`,
///   computed as one matrix product of `g` reshaped to `(C_out, N·H_o·W_o)`
///   with the im2col matrix of `x̃`, `(N·H_o·W_o, C_in·k_h·k_w)`.
///
/// The stride-1 convolutions of `∂L/∂x` are also run as im2col + one matrix
/// product (faster than candle's tiled forward for these shapes).
///
/// That is the path of CUDA, Metal and the other dtypes: tensor ops, so on
/// CUDA im2col copies and cuBLAS products instead of candle's direct
/// `conv_transpose2d` kernel. On the CPU with f32/f64 operands the forward
/// and both gradients are computed per block of images instead
/// (`conv/gemm_cpu.rs`; one image, or enough images of a small feature map
/// side by side for a product of 256 columns): `∂L/∂x` as
/// `w_gᵀ · g[B, g-block]` scattered back by col2im (any stride, no flip, no
/// phases), `∂L/∂w` as `Σ_B g[B, g-block] · cols_{B,g}ᵀ` with `cols_{B,g}`
/// the block's im2col matrices side by side.
///
/// Grouped convolutions are one op (per pass) over all groups; depthwise convolutions (one input channel per group) go to
/// [`depthwise_conv2d`] (its own kernels on the CPU, [`depthwise_conv2d_taps`]
/// elsewhere). Calls where neither operand tracks gradients use plain
/// `Tensor::conv2d`, and so does everything under `TFKD_CONV=candle`. Only the gradients of operands that track them
/// are computed. Shape mismatches are reported as candle errors naming the
/// dims.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> crate::Result<Tensor> {
    Ok(conv2d_candle(x, w, padding, stride, groups)?)
}

/// [`conv2d`] with candle's error, for the op's own backward pass.
pub(crate) fn conv2d_candle(x: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> Result<Tensor> {
    let (_, c_in, h, wd) = x.dims4()?;
    let (c_out, c_in_k, k_h, k_w) = w.dims4()?;
    if groups == 0 || c_in != c_in_k * groups || c_out % groups != 0 {
        candle_core::bail!(
            "conv2d: input channels {c_in}, kernel ({c_out}, {c_in_k}, {k_h}, {k_w}), groups {groups} do not match"
        )
    }
    if stride == 0 || h + 2 * padding < k_h || wd + 2 * padding < k_w {
        candle_core::bail!(
            "conv2d: input {h}x{wd} with padding {padding} is smaller than kernel {k_h}x{k_w} (stride {stride})"
        )
    }
    if candle_only() {
        return x.conv2d(w, padding, stride, 1, groups);
    }
    let depthwise = groups > 1 && c_in_k == 1;
    // On CUDA, f32 depthwise convolutions take tfkd's own kernels (as
    // PyTorch takes its own), every other convolution one cuDNN call each
    // way where cuDNN loads.
    #[cfg(feature = "cuda")]
    if !(depthwise && depthwise::on_own_gpu_kernels(x, w, padding, stride)?) {
        if let Some(y) = cudnn::conv2d(x, w, padding, stride, groups)? {
            return Ok(y);
        }
    }
    if depthwise {
        return depthwise::depthwise_conv2d_candle(x, w, padding, stride);
    }
    conv2d_grouped(x, w, padding, stride, groups)
}

/// What runs convolutions on `device`, in words, for logs and benchmark
/// records: candle's own (`TFKD_CONV=candle`), tfkd's CPU engine, cuDNN
/// (its version and file), or tfkd's im2col + cuBLAS path (and why cuDNN is
/// not used), or candle's composed ops on Metal.
pub fn backend(device: &candle_core::Device) -> String {
    use candle_core::Device;
    if candle_only() {
        return format!("candle's conv2d ({}={})", crate::env::CONV, crate::env::CONV_CANDLE);
    }
    match device {
        Device::Cpu => "tfkd's CPU engine".into(),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let cudnn = cudnn::active(device, candle_core::DType::F32);
            let depthwise = match (depthwise::to_cudnn(), cudnn) {
                (false, _) => "tfkd's kernels",
                (true, true) => "cuDNN",
                (true, false) => "tfkd's per-tap ops",
            };
            let convs = if cudnn {
                crate::cudnn::describe()
            } else {
                format!("tfkd's im2col + cuBLAS ({})", crate::cudnn::describe())
            };
            format!("{convs}; f32 depthwise: {depthwise}")
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => format!("tfkd's im2col + cuBLAS ({})", crate::cudnn::describe()),
        Device::Metal(_) => "candle's forward, tfkd's tensor-op backward (Metal)".into(),
    }
}

/// `TFKD_CONV=candle` in the environment ([`crate::env::CONV`]) makes [`conv2d`] call candle's own
/// `Tensor::conv2d` (and its autograd) everywhere: the baseline of the
/// benchmarks, and an escape hatch should the fast paths misbehave on a device.
fn candle_only() -> bool {
    static CANDLE_ONLY: OnceLock<bool> = OnceLock::new();
    *CANDLE_ONLY.get_or_init(|| std::env::var(crate::env::CONV).is_ok_and(|v| v == crate::env::CONV_CANDLE))
}

/// The forward (computed outside the graph) wrapped in the op. All groups go
/// through one op: as one op per group (`chunk`, convolve, `cat`), the
/// backward of `chunk` zero-pads each group's input gradient to the full
/// input and adds the pieces, which made memset, memcpy and additions half
/// of a narrowed ResNeXt29 step.
fn conv2d_grouped(x: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> Result<Tensor> {
    // On the CPU, im2col + products by blocks of images beat candle's tiled
    // forward (`examples/op_time.rs`).
    let tracked = x.track_op() || w.track_op();
    if cpu_fast(x, w) {
        if !tracked {
            // Nothing to differentiate (inference): no op.
            return gemm_cpu::forward_op(x, w, padding, stride, groups);
        }
        // The op's own `cpu_fwd` computes the forward into its output (and
        // copies a strided `x` for it, see `contiguous_copy`).
        let op = FastConv2d { padding, stride, groups, y: Mutex::new(None) };
        return x.apply_op2(&w.contiguous()?, op);
    }
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, groups)?;
    if !tracked {
        // Nothing to differentiate (inference): no op, no output copy.
        return Ok(y);
    }
    let y = fresh_contiguous(y)?;
    let op = FastConv2d {
        padding,
        stride,
        groups,
        y: Mutex::new(Some(y)),
    };
    x.apply_op2(w, op)
}

/// True where the CPU engine (`conv/gemm_cpu.rs`) runs: CPU operands of one
/// supported dtype.
fn cpu_fast(x: &Tensor, w: &Tensor) -> bool {
    matches!(x.device(), candle_core::Device::Cpu) && crate::cpu::supported(x.dtype()) && w.dtype() == x.dtype()
}

/// A contiguous tensor whose storage holds exactly its elements from offset 0.
fn fresh_contiguous(y: Tensor) -> Result<Tensor> {
    let ok = {
        let (s, l) = y.storage_and_layout();
        let len = match &*s {
            Storage::Cpu(c) => Some(cpu_len(c)),
            _ => None,
        };
        l.is_contiguous()
            && l.start_offset() == 0
            && len.map_or(true, |n| n == l.shape().elem_count())
    };
    if ok {
        Ok(y)
    } else {
        // A unary op always writes a fresh, exactly sized, contiguous buffer.
        y.affine(1.0, 0.0)
    }
}

fn cpu_len(c: &CpuStorage) -> usize {
    match c {
        CpuStorage::U8(v) => v.len(),
        CpuStorage::U32(v) => v.len(),
        CpuStorage::I64(v) => v.len(),
        CpuStorage::BF16(v) => v.len(),
        CpuStorage::F16(v) => v.len(),
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => usize::MAX,
    }
}

/// The custom op whose `bwd` is the point. On the CPU its `cpu_fwd` runs the
/// forward (`conv/gemm_cpu.rs`) straight into its output; elsewhere the
/// result is precomputed by candle's `conv2d` and handed out (copied) by the
/// `*_fwd` methods.
struct FastConv2d {
    padding: usize,
    stride: usize,
    groups: usize,
    /// The precomputed forward (off the CPU), taken by the forward, so the
    /// graph does not keep a second copy.
    y: Mutex<Option<Tensor>>,
}

impl FastConv2d {
    fn out(&self) -> Result<(Storage, Shape)> {
        let y = match self.y.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        let Some(y) = y else {
            candle_core::bail!("tfkd-fast-conv2d: forward already run")
        };
        let (s, l) = y.storage_and_layout();
        let s = match &*s {
            Storage::Cpu(c) => Storage::Cpu(c.try_clone(l)?),
            Storage::Cuda(c) => Storage::Cuda(c.try_clone(l)?),
            Storage::Metal(c) => Storage::Metal(c.try_clone(l)?),
        };
        Ok((s, y.shape().clone()))
    }
}

impl CustomOp2 for FastConv2d {
    fn name(&self) -> &'static str {
        op_names::FAST
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let precomputed = self.y.lock().map(|y| y.is_some()).unwrap_or(false);
        if !precomputed {
            let packed = contiguous_copy(xs, xl)?;
            let x = packed.as_ref().map_or((xs, xl), |(s, l)| (s, l));
            return gemm_cpu::forward_storage(x, (ws, wl), self.padding, self.stride, self.groups);
        }
        match self.out()? {
            (Storage::Cpu(c), s) => Ok((c, s)),
            _ => candle_core::bail!("tfkd-fast-conv2d: device mismatch"),
        }
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match self.out()? {
            (Storage::Cuda(c), s) => Ok((c, s)),
            _ => candle_core::bail!("tfkd-fast-conv2d: device mismatch"),
        }
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        match self.out()? {
            (Storage::Metal(c), s) => Ok((c, s)),
            _ => candle_core::bail!("tfkd-fast-conv2d: device mismatch"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        grads(x, w, grad, self.padding, self.stride, self.groups)
    }
}

/// The convolution's gradients `(∂L/∂x, ∂L/∂w)` for the upstream gradient
/// `grad`, each only where its operand tracks gradients (the network's
/// input, the images, does not): the CPU engine's, or the tensor-op path's.
fn grads(x: &Tensor, w: &Tensor, grad: &Tensor, p: usize, s: usize, groups: usize) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let cpu = cpu_fast(x, w);
    let gx = match (x.track_op(), cpu) {
        (false, _) => None,
        (true, true) => Some(gemm_cpu::input_grad_op(x, w, grad, p, s, groups)?),
        (true, false) => Some(input_grad(x, w, grad, p, s, groups)?),
    };
    let gw = match (w.track_op(), cpu) {
        (false, _) => None,
        (true, true) => Some(gemm_cpu::weight_grad_op(x, w, grad, p, s, groups)?),
        (true, false) => Some(weight_grad(x, w, grad, p, s, groups)?),
    };
    Ok((gx, gw))
}

/// Pads (positive) or crops (negative) `t` along `dim` by `lo`/`hi`.
fn pad_or_crop(t: Tensor, dim: usize, lo: isize, hi: isize) -> Result<Tensor> {
    let mut t = t;
    if lo < 0 || hi < 0 {
        let len = t.dim(dim)? as isize;
        let start = (-lo).max(0);
        let end = len - (-hi).max(0);
        if end <= start {
            candle_core::bail!("tfkd-fast-conv2d: cropping {lo}/{hi} from a dim of size {len}")
        }
        t = t.narrow(dim, start as usize, (end - start) as usize)?;
    }
    if lo > 0 || hi > 0 {
        t = t.pad_with_zeros(dim, lo.max(0) as usize, hi.max(0) as usize)?;
    }
    Ok(t)
}

/// `∂L/∂x`. Stride 1: a forward convolution of the padded gradient with the
/// flipped, transposed kernel. Stride `s > 1`: the same on the dilated
/// gradient, computed without the inserted zeros by splitting the padded
/// input into its `s × s` phases `x̃[s·m + r]`; phase `r` only sees kernel
/// taps `w[r + s·t]`, so it is a stride-1 "full" convolution of `g` with that
/// flipped sub-kernel, and the phases are interleaved back. With groups,
/// each group's kernel is transposed in place, `(G·C_in/G, C_out/G, k, k)`,
/// and every convolution is grouped the same way.
fn input_grad(x: &Tensor, w: &Tensor, g: &Tensor, p: usize, s: usize, groups: usize) -> Result<Tensor> {
    let (n, c_in, h, wd) = x.dims4()?;
    let (c_out, c_in_g, k_h, k_w) = w.dims4()?;
    let (_, _, h_o, w_o) = g.dims4()?;
    let wt = w
        .reshape((groups, c_out / groups, c_in_g, k_h, k_w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((c_in, c_out / groups, k_h, k_w))?;
    if s == 1 {
        let lo_h = k_h as isize - 1 - p as isize;
        let lo_w = k_w as isize - 1 - p as isize;
        let base = lo_h.min(lo_w).max(0);
        let g = pad_or_crop(g.clone(), 2, lo_h - base, lo_h - base)?;
        let g = pad_or_crop(g, 3, lo_w - base, lo_w - base)?;
        let wf = wt.flip(&[2, 3])?.contiguous()?;
        return conv_s1(&g, &wf, base as usize, groups);
    }
    let (m_h, m_w) = ((h + 2 * p).div_ceil(s), (wd + 2 * p).div_ceil(s));
    // Taps of phase r along a kernel dim of size k, last first (flipped).
    let taps = |k: usize, r: usize| -> Vec<u32> {
        let t = if r < k { (k - r).div_ceil(s) } else { 0 };
        (0..t).rev().map(|i| (r + s * i) as u32).collect()
    };
    let dev = g.device();
    let g = g.contiguous()?;
    let mut rows = Vec::with_capacity(s);
    for r_y in 0..s {
        let mut phases = Vec::with_capacity(s);
        for r_x in 0..s {
            let (ty, tx) = (taps(k_h, r_y), taps(k_w, r_x));
            let ph = if ty.is_empty() || tx.is_empty() {
                Tensor::zeros((n, c_in, m_h, m_w), g.dtype(), dev)?
            } else {
                let (t_y, t_x) = (ty.len(), tx.len());
                let sub = wt
                    .index_select(&Tensor::new(ty, dev)?, 2)?
                    .index_select(&Tensor::new(tx, dev)?, 3)?
                    .contiguous()?;
                let base = t_y.min(t_x) - 1;
                let gp = pad_or_crop(
                    g.clone(),
                    2,
                    (t_y - 1 - base) as isize,
                    (t_y - 1 - base) as isize,
                )?;
                let gp = pad_or_crop(gp, 3, (t_x - 1 - base) as isize, (t_x - 1 - base) as isize)?;
                let ph = conv_s1(&gp, &sub, base, groups)?;
                // Phase outputs cover m < h_o + t − 1; fit them to m_h × m_w.
                let fit = |t: Tensor, dim: usize, have: usize, want: usize| -> Result<Tensor> {
                    if have >= want {
                        t.narrow(dim, 0, want)
                    } else {
                        t.pad_with_zeros(dim, 0, want - have)
                    }
                };
                let ph = fit(ph, 2, h_o + t_y - 1, m_h)?;
                fit(ph, 3, w_o + t_x - 1, m_w)?
            };
            phases.push(ph);
        }
        rows.push(Tensor::stack(&phases, 4)?); // (n, c_in, m_h, m_w, s)
    }
    let dxp = Tensor::stack(&rows, 3)?.reshape((n, c_in, m_h * s, m_w * s))?;
    dxp.narrow(2, p, h)?.narrow(3, p, wd)
}

/// A stride-1 convolution as explicit im2col (`conv/im2col.rs`: an unfold
/// view made contiguous) and one matrix product, batched over the groups
/// when there are several: `y[n, g·O/G + o] = W_g (O/G × C/G·k_h·k_w) ·
/// cols_{g, n}`, then `(O, N, H_o, W_o)` is permuted to NCHW.
fn conv_s1(x: &Tensor, w: &Tensor, p: usize, groups: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, c_g, k_h, k_w) = w.dims4()?;
    let (h_o, w_o) = (h + 2 * p + 1 - k_h, wd + 2 * p + 1 - k_w);
    if groups > 1 {
        let cols = group_cols(x, (k_h, k_w), 1, p, (h_o, w_o), groups)?;
        return w
            .reshape((groups, o / groups, c_g * k_h * k_w))?
            .matmul(&cols)?
            .reshape((o, n, h_o, w_o))?
            .transpose(0, 1)?
            .contiguous();
    }
    if k_h * k_w == 1 && p == 0 {
        return x.contiguous()?.conv2d(w, 0, 1, 1, 1);
    }
    let cols = im2col_rows(x, k_h, k_w, 1, p, h_o, w_o)?;
    let wm = w.reshape((o, c * k_h * k_w))?;
    cols.matmul(&wm.t()?)?
        .reshape((n, h_o, w_o, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// The im2col matrix of `x` split by group: `(G, C/G·k_h·k_w, N·H_o·W_o)`.
fn group_cols(x: &Tensor, (k_h, k_w): (usize, usize), s: usize, p: usize, (h_o, w_o): (usize, usize), groups: usize) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    im2col_rows(x, k_h, k_w, s, p, h_o, w_o)?
        .t()?
        .reshape((groups, c / groups * k_h * k_w, n * h_o * w_o))
}

/// `∂L/∂w`: one matrix product (per group, batched) of the gradient with the
/// im2col of the input.
fn weight_grad(x: &Tensor, w: &Tensor, g: &Tensor, p: usize, s: usize, groups: usize) -> Result<Tensor> {
    let (n, _, _, _) = x.dims4()?;
    let (c_out, c_g, k_h, k_w) = w.dims4()?;
    let (_, _, h_o, w_o) = g.dims4()?;
    let g2 = g.transpose(0, 1)?.contiguous()?;
    if groups == 1 {
        // (N·H_o·W_o, C·k_h·k_w).
        let cols = im2col_rows(x, k_h, k_w, s, p, h_o, w_o)?;
        return g2.reshape((c_out, n * h_o * w_o))?.matmul(&cols)?.reshape((c_out, c_g, k_h, k_w));
    }
    let cols = group_cols(x, (k_h, k_w), s, p, (h_o, w_o), groups)?;
    g2.reshape((groups, c_out / groups, n * h_o * w_o))?
        .matmul(&cols.transpose(1, 2)?)?
        .reshape((c_out, c_g, k_h, k_w))
}
