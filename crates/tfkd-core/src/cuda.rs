//! tfkd's own CUDA kernels (`src/cuda/kernels.cu`, compiled to PTX by nvcc
//! in `build.rs`, loaded once per GPU): ReLU / ReLU6, max pooling, the conv
//! bias and the fused losses, each one kernel forward and one backward with
//! the CPU ops' rules for the gradient at the clamp bounds, ties and NaN;
//! SGD's and Adam's updates of every parameter in place in one launch
//! (multi-tensor, as PyTorch's foreach optimizers; before, eight to twelve
//! candle ops with an allocation each per parameter); and BatchNorm's
//! running statistics in place; and the depthwise convolution's three
//! passes. `--features cuda` only.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "tfkd_core_kernels";
const THREADS: u32 = 256;

/// True where these kernels run: f32 tensors on a GPU.
pub(crate) fn supported(device: &candle_core::Device, dtype: DType) -> bool {
    device.is_cuda() && dtype == DType::F32
}

/// Enough blocks of [`THREADS`] for `n` elements, at most 65,536 (the
/// kernels loop over the rest).
fn config(n: u64) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as u64).clamp(1, 65_536) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The elements of a contiguous operand (for tfkd's kernels and the cuDNN
/// calls alike).
pub(crate) fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the operand is not contiguous")
    };
    Ok(T::as_cuda_slice(s)?.slice(start..end))
}

/// [`view`] of an f32 operand.
fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    view(s, l, op)
}

/// A fresh buffer of `n` f32 that the kernel will write whole.
fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every kernel below writes each element of its output.
    unsafe { dev.alloc::<f32>(n) }
}

/// `y = min(max(x, 0), hi)`.
pub(crate) fn clamp(x: (&CudaStorage, &Layout), hi: f32) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let xv = f32_view(x.0, x.1, "tfkd-clamp")?;
    let n = x.1.shape().elem_count();
    let mut y = output(&dev, n)?;
    let func = dev.get_or_load_custom_func("tfkd_clamp_f32", MODULE, PTX)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(&xv).arg(&mut y).arg(&hi).arg(&n64);
    // SAFETY: the kernel's signature; buffers of n elements.
    unsafe { b.launch(config(n64)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `y ← min(max(y, 0), hi)` in place over the `n` f32 at device address
/// `y` (a buffer the caller owns and has just written on the device's
/// stream): the clamp kernel with its input and output the same.
pub(crate) fn clamp_in_place(dev: &CudaDevice, y: u64, n: usize, hi: f32) -> Result<()> {
    let func = dev.get_or_load_custom_func("tfkd_clamp_f32", MODULE, PTX)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(&y).arg(&y).arg(&hi).arg(&n64);
    // SAFETY: the kernel's signature (it reads x[i] before writing y[i], so
    // x = y is fine); `y` holds n f32.
    unsafe { b.launch(config(n64)) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// `y ← min(max(y + s, lo), hi)` in place over the `n` f32 at device
/// addresses `y` (a buffer the caller owns and has just written on the
/// device's stream) and `s`.
pub(crate) fn add_clamp_in_place(dev: &CudaDevice, y: u64, s: u64, n: usize, lo: f32, hi: f32) -> Result<()> {
    let func = dev.get_or_load_custom_func("tfkd_add_clamp_f32", MODULE, PTX)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(&y).arg(&s).arg(&y).arg(&lo).arg(&hi).arg(&n64);
    // SAFETY: the kernel's signature (it reads a[i] before writing y[i], so
    // a = y is fine); `y` and `s` hold n f32.
    unsafe { b.launch(config(n64)) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// `dst += src` over two contiguous f32 operands of the same length: the
/// add-clamp kernel without bounds.
pub(crate) fn add_in_place(dst: (&mut CudaStorage, &Layout), src: (&CudaStorage, &Layout), op: &str) -> Result<()> {
    let n = dst.1.shape().elem_count();
    if src.1.shape().elem_count() != n {
        candle_core::bail!("{op}: {} values added into {n}", src.1.shape().elem_count())
    }
    let dev = dst.0.device().clone();
    let stream = dev.cuda_stream();
    let sv = f32_view(src.0, src.1, op)?;
    let mut dv = f32_view_mut(dst.0, dst.1, op)?;
    let (ps, _read) = sv.device_ptr(&stream);
    let (pd, _write) = dv.device_ptr_mut(&stream);
    add_clamp_in_place(&dev, pd, ps, n, f32::NEG_INFINITY, f32::INFINITY)
}

/// `dx = g·[0 < x < hi]` (`hi` infinite: `g·[0 < x]`).
pub(crate) fn clamp_grad(g: (&CudaStorage, &Layout), x: (&CudaStorage, &Layout), hi: f32) -> Result<CudaStorage> {
    let dev = g.0.device().clone();
    let (gv, xv) = (f32_view(g.0, g.1, "tfkd-clamp-grad")?, f32_view(x.0, x.1, "tfkd-clamp-grad")?);
    let n = g.1.shape().elem_count();
    let mut dx = output(&dev, n)?;
    let func = dev.get_or_load_custom_func("tfkd_clamp_grad_f32", MODULE, PTX)?;
    let (n64, bounded) = (n as u64, i32::from(hi.is_finite()));
    let mut b = func.builder();
    b.arg(&gv).arg(&xv).arg(&mut dx).arg(&hi).arg(&bounded).arg(&n64);
    // SAFETY: the kernel's signature; buffers of n elements.
    unsafe { b.launch(config(n64)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

/// A max pooling's shape: `(N·C, h, w, h_o, w_o)` and `(k, s, p)`.
#[derive(Clone, Copy)]
pub(crate) struct PoolShape {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

impl PoolShape {
    fn ints(&self) -> Result<[i32; 7]> {
        let v = [self.h, self.w, self.ho, self.wo, self.k, self.s, self.p];
        let mut out = [0i32; 7];
        for (o, x) in out.iter_mut().zip(v) {
            *o = i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("tfkd-max-pool2d: {x} does not fit a C int")))?;
        }
        Ok(out)
    }
}

/// Max pooling forward.
pub(crate) fn max_pool2d(x: (&CudaStorage, &Layout), shape: PoolShape) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let xv = f32_view(x.0, x.1, "tfkd-max-pool2d")?;
    let n = shape.planes * shape.ho * shape.wo;
    let mut y = output(&dev, n)?;
    let func = dev.get_or_load_custom_func("tfkd_max_pool2d_f32", MODULE, PTX)?;
    let planes = shape.planes as u64;
    let [h, w, ho, wo, k, s, p] = shape.ints()?;
    let mut b = func.builder();
    b.arg(&xv).arg(&mut y).arg(&planes).arg(&h).arg(&w).arg(&ho).arg(&wo).arg(&k).arg(&s).arg(&p);
    // SAFETY: the kernel's signature; x holds planes·h·w, y planes·ho·wo.
    unsafe { b.launch(config(n as u64)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// Max pooling backward: `∂L/∂x` from `(∂L/∂y, x)`.
pub(crate) fn max_pool2d_grad(g: (&CudaStorage, &Layout), x: (&CudaStorage, &Layout), shape: PoolShape) -> Result<CudaStorage> {
    let dev = g.0.device().clone();
    let (gv, xv) = (f32_view(g.0, g.1, "tfkd-max-pool2d-grad")?, f32_view(x.0, x.1, "tfkd-max-pool2d-grad")?);
    let n = shape.planes * shape.h * shape.w;
    let mut dx = output(&dev, n)?;
    let func = dev.get_or_load_custom_func("tfkd_max_pool2d_grad_f32", MODULE, PTX)?;
    let planes = shape.planes as u64;
    let [h, w, ho, wo, k, s, p] = shape.ints()?;
    let mut b = func.builder();
    b.arg(&gv).arg(&xv).arg(&mut dx).arg(&planes).arg(&h).arg(&w).arg(&ho).arg(&wo).arg(&k).arg(&s).arg(&p);
    // SAFETY: the kernel's signature; x and dx hold planes·h·w, g planes·ho·wo.
    unsafe { b.launch(config(n as u64)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

/// A fused loss's configuration for the kernels (the layout of
/// `LossParams` in `kernels.cu`; `loss/fused.rs` fills it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LossParams {
    pub hard_weight: f64,
    pub hard_on: f64,
    pub hard_off: f64,
    pub soft_weight: f64,
    pub sigma: f64,
    pub soft_on: f64,
    pub soft_off: f64,
    pub neg_entropy: f64,
    pub teacher_scale: f64,
    pub has_hard: i32,
    /// 0: no soft term, 1: a label target, 2: a teacher target.
    pub soft_kind: i32,
}

// SAFETY: plain old data with the C layout the kernel reads.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for LossParams {}

/// The student logits `(N, K)`, the teacher's (soft_kind 2) and the labels
/// on the GPU.
struct LossInputs<'a> {
    dev: CudaDevice,
    z: CudaView<'a, f32>,
    t: Option<CudaView<'a, f32>>,
    /// The labels' device address: of `_uploaded`, or of the caller's
    /// device labels (kept alive by the loss op that holds them).
    labels: u64,
    _uploaded: Option<CudaSlice<u32>>,
    n: usize,
    k: usize,
}

fn loss_inputs<'a>(
    z: (&'a CudaStorage, &Layout),
    t: Option<(&'a CudaStorage, &Layout)>,
    labels: &crate::loss::fused::Labels,
    params: &LossParams,
) -> Result<LossInputs<'a>> {
    use crate::loss::fused::Labels;
    let (n, k) = z.1.shape().dims2()?;
    if (params.soft_kind == 2) != t.is_some() || t.is_some_and(|t| t.1.shape() != z.1.shape()) {
        candle_core::bail!("fused loss: the teacher logits must match the student's, and only a teacher target takes them")
    }
    let dev = z.0.device().clone();
    let (address, uploaded) = match labels {
        Labels::Host(labels) => {
            if labels.len() != n || k == 0 || labels.iter().any(|&y| y as usize >= k) {
                candle_core::bail!("fused loss: {} labels (each < {k}) for {n} rows", labels.len())
            }
            let stream = dev.cuda_stream();
            let up = stream.clone_htod(labels.as_ref()).map_err(candle_core::Error::wrap)?;
            let address = up.device_ptr(&stream).0;
            (address, Some(up))
        }
        Labels::Device(labels) => {
            if labels.dims() != [n] {
                candle_core::bail!("fused loss: labels of shape {:?} for {n} rows", labels.dims())
            }
            let (labels_dev, address) = self::address::<u32>(labels, "fused loss")?;
            if labels_dev.id() != dev.id() {
                candle_core::bail!("fused loss: the labels are on another GPU than the logits")
            }
            (address, None)
        }
    };
    Ok(LossInputs {
        z: f32_view(z.0, z.1, "fused loss")?,
        t: t.map(|t| f32_view(t.0, t.1, "fused loss")).transpose()?,
        labels: address,
        _uploaded: uploaded,
        dev,
        n,
        k,
    })
}

/// One block of [`THREADS`] per row (at most 65,535 blocks; the kernel loops
/// over the rest).
fn per_row(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.clamp(1, 65_535) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches the fused loss's row kernel (the one place that knows its
/// arguments): with `rows`, the per-row `[H, S]` terms; with `grad`, the
/// gradient for the upstream gradients `upstream` (a null pointer stands for
/// the one not asked for).
fn launch_rows(
    inp: &LossInputs,
    params: &LossParams,
    rows: Option<&mut CudaSlice<f64>>,
    grad: Option<(&mut CudaSlice<f32>, &CudaView<f32>)>,
) -> Result<()> {
    let (n64, k32) = (inp.n as u64, inp.k as i32);
    let null: u64 = 0;
    let func = inp.dev.get_or_load_custom_func("tfkd_fused_loss_rows_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&inp.z);
    match &inp.t {
        Some(t) => b.arg(t),
        None => b.arg(&null),
    };
    b.arg(&inp.labels).arg(&n64).arg(&k32).arg(params);
    match rows {
        Some(rows) => b.arg(rows),
        None => b.arg(&null),
    };
    match grad {
        Some((grad, upstream)) => b.arg(grad).arg(upstream),
        None => b.arg(&null).arg(&null),
    };
    // SAFETY: the kernel's signature; buffers of the sizes it reads and
    // writes (rows: 2n doubles, grad: N·K floats, upstream: 3 floats).
    unsafe { b.launch(per_row(inp.n)) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// `[total, hard, soft]` of a fused loss.
pub(crate) fn fused_loss(
    z: (&CudaStorage, &Layout),
    t: Option<(&CudaStorage, &Layout)>,
    labels: &crate::loss::fused::Labels,
    params: LossParams,
) -> Result<CudaStorage> {
    let inp = loss_inputs(z, t, labels, &params)?;
    let stream = inp.dev.cuda_stream();
    // SAFETY: the row kernel writes both terms of every row.
    let mut rows = unsafe { stream.alloc::<f64>(2 * inp.n) }.map_err(candle_core::Error::wrap)?;
    let mut out = output(&inp.dev, 3)?;
    launch_rows(&inp, &params, Some(&mut rows), None)?;
    let n64 = inp.n as u64;
    let func = inp.dev.get_or_load_custom_func("tfkd_fused_loss_total_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&rows).arg(&n64).arg(&params.hard_weight).arg(&params.soft_weight).arg(&mut out);
    let one_block = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the kernel's signature; rows holds 2n doubles, out 3 floats.
    unsafe { b.launch(one_block) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(out, inp.dev))
}

/// The gradient w.r.t. the student logits for the op's upstream gradients
/// `[g_total, g_hard, g_soft]` (read on the GPU: no synchronisation).
pub(crate) fn fused_loss_gradient(
    z: (&CudaStorage, &Layout),
    t: Option<(&CudaStorage, &Layout)>,
    labels: &crate::loss::fused::Labels,
    params: LossParams,
    upstream: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    if upstream.1.shape().elem_count() != 3 {
        candle_core::bail!("fused loss: the upstream gradient must have 3 elements, got {:?}", upstream.1.shape())
    }
    let inp = loss_inputs(z, t, labels, &params)?;
    let up = f32_view(upstream.0, upstream.1, "fused loss")?;
    let mut grad = output(&inp.dev, inp.n * inp.k)?;
    launch_rows(&inp, &params, None, Some((&mut grad, &up)))?;
    Ok(CudaStorage::wrap_cuda_slice(grad, inp.dev))
}

/// `y + b[c]` per channel.
pub(crate) fn channel_bias(y: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let (_, c, plane) = crate::cpu::ncs(y.1.shape(), "tfkd-channel-bias")?;
    if b.1.shape().elem_count() != c {
        candle_core::bail!("tfkd-channel-bias: {} biases for {c} channels", b.1.shape().elem_count())
    }
    let dev = y.0.device().clone();
    let (yv, bv) = (f32_view(y.0, y.1, "tfkd-channel-bias")?, f32_view(b.0, b.1, "tfkd-channel-bias")?);
    let total = y.1.shape().elem_count();
    let mut out = output(&dev, total)?;
    let (total64, c32, plane64) = (total as u64, c as i32, plane.max(1) as u64);
    let func = dev.get_or_load_custom_func("tfkd_channel_bias_f32", MODULE, PTX)?;
    let mut bl = func.builder();
    bl.arg(&yv).arg(&bv).arg(&mut out).arg(&total64).arg(&c32).arg(&plane64);
    // SAFETY: the kernel's signature; y and out hold `total`, b holds c.
    unsafe { bl.launch(config(total64)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `y[n, c, …] += b[c]` in place (the same kernel, writing where it reads),
/// then, with `clamp_hi`, `y ← min(max(y, 0), hi)` (the activation of
/// `conv2d_with_bias_act`).
pub(crate) fn channel_bias_in_place(y: (&mut CudaStorage, &Layout), b: (&CudaStorage, &Layout), clamp_hi: Option<f32>) -> Result<()> {
    let op = "tfkd-channel-bias";
    let (_, c, plane) = crate::cpu::ncs(y.1.shape(), op)?;
    if b.1.shape().elem_count() != c {
        candle_core::bail!("{op}: {} biases for {c} channels", b.1.shape().elem_count())
    }
    let dev = y.0.device().clone();
    let stream = dev.cuda_stream();
    let total = y.1.shape().elem_count();
    let bv = f32_view(b.0, b.1, op)?;
    let mut yv = f32_view_mut(y.0, y.1, op)?;
    let (py, _write) = yv.device_ptr_mut(&stream);
    let (total64, c32, plane64) = (total as u64, c as i32, plane.max(1) as u64);
    let func = dev.get_or_load_custom_func("tfkd_channel_bias_f32", MODULE, PTX)?;
    let mut bl = func.builder();
    bl.arg(&py).arg(&bv).arg(&py).arg(&total64).arg(&c32).arg(&plane64);
    // SAFETY: the kernel's signature (it reads y[i] before writing out[i],
    // so y = out is fine); y holds `total` f32, b holds c.
    unsafe { bl.launch(config(total64)) }.map_err(candle_core::Error::wrap)?;
    if let Some(hi) = clamp_hi {
        clamp_in_place(&dev, py, total, hi)?;
    }
    Ok(())
}

/// `Σ_{n, s} g[n, c, s]` per channel.
pub(crate) fn channel_sums(g: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let (n, c, plane) = crate::cpu::ncs(g.1.shape(), "tfkd-channel-sums")?;
    let dev = g.0.device().clone();
    let gv = f32_view(g.0, g.1, "tfkd-channel-sums")?;
    let mut db = output(&dev, c)?;
    let (n64, c32, plane64) = (n as u64, c as i32, plane as u64);
    let func = dev.get_or_load_custom_func("tfkd_channel_sums_f32", MODULE, PTX)?;
    let mut bl = func.builder();
    bl.arg(&gv).arg(&mut db).arg(&n64).arg(&c32).arg(&plane64);
    // SAFETY: the kernel's signature; one block per channel writes db[c].
    unsafe { bl.launch(per_row(c)) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(db, dev))
}

/// The f32 elements of a contiguous operand written in place.
fn f32_view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, op: &str) -> Result<CudaViewMut<'a, f32>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the operand is not contiguous")
    };
    Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(start..end))
}

/// One piece of one parameter for the multi-tensor optimizer kernels (the
/// layout of `Chunk` in `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Chunk {
    p: u64,
    g: u64,
    s1: u64,
    s2: u64,
    start: u64,
    len: u64,
    fresh: i32,
    step_size: f32,
    inv_bias2_sqrt: f32,
    unused: i32,
}

// SAFETY: plain old data with the C layout the kernels read.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for Chunk {}

/// The most elements one block of the optimizer kernels updates.
const PIECE: usize = 8192;

/// A parameter, its gradient and its optimizer state on the GPU, for
/// [`sgd`] and [`adam`]: all f32, contiguous, of one size.
pub(crate) struct OptimSlot<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    /// SGD: `[momentum buffer, -]` (none without momentum); Adam: `[m, v]`.
    pub state: [Option<&'a Tensor>; 2],
    /// SGD: the buffer was made for this step (it gets `d`).
    pub fresh: bool,
    /// Adam: `lr/(1 − β₁ᵗ)` and `1/√(1 − β₂ᵗ)` for this parameter's `t`.
    pub adam_scales: [f32; 2],
}

/// The device address of a contiguous tensor's first element (of element
/// type `T`), and its GPU.
pub(crate) fn address<T: CudaDType>(t: &Tensor, op: &str) -> Result<(CudaDevice, u64)> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{op}: a tensor is not on a GPU")
    };
    let view = view::<T>(s, layout, op)?;
    let stream = s.device().cuda_stream();
    let (ptr, _sync) = view.device_ptr(&stream);
    Ok((s.device().clone(), ptr))
}

/// Launches the optimizer kernel `kernel` over every element of `slots`,
/// with its hyper-parameters `scalars` after the piece table, in one launch.
///
/// The kernel writes the parameters and their state in place through
/// addresses taken under candle's read locks: what candle's in-place ops do
/// under its write lock, without a lock per tensor. This is sound because
/// the optimizer is the only writer of its parameters and state during a
/// step, and candle runs every op on the device's one stream, so each
/// earlier read of these tensors is done before the kernel starts and each
/// later one sees its writes; no host reference into device memory exists.
fn optimizer_launch<S: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(kernel: &str, slots: &[OptimSlot], scalars: &S) -> Result<()> {
    let op = kernel;
    let mut chunks = Vec::new();
    let mut dev: Option<CudaDevice> = None;
    for slot in slots {
        let n = slot.param.elem_count();
        let mut at = |t: &Tensor| -> Result<u64> {
            if t.elem_count() != n || t.dtype() != DType::F32 {
                candle_core::bail!("{op}: a gradient or state of {:?} {:?} for a parameter of {:?} f32", t.shape(), t.dtype(), slot.param.shape())
            }
            let (d, ptr) = address::<f32>(t, op)?;
            match &dev {
                Some(first) if first.id() != d.id() => candle_core::bail!("{op}: parameters on two GPUs"),
                Some(_) => {}
                None => dev = Some(d),
            }
            Ok(ptr)
        };
        let (p, g) = (at(slot.param)?, at(slot.grad)?);
        let [s1, s2] = [slot.state[0], slot.state[1]].map(|s| s.map_or(Ok(0), &mut at));
        let (s1, s2) = (s1?, s2?);
        for start in (0..n).step_by(PIECE) {
            chunks.push(Chunk {
                p,
                g,
                s1,
                s2,
                start: start as u64,
                len: PIECE.min(n - start) as u64,
                fresh: i32::from(slot.fresh),
                step_size: slot.adam_scales[0],
                inv_bias2_sqrt: slot.adam_scales[1],
                unused: 0,
            });
        }
    }
    let Some(dev) = dev else { return Ok(()) };
    if chunks.is_empty() {
        return Ok(());
    }
    let stream = dev.cuda_stream();
    let table = stream.clone_htod(&chunks).map_err(candle_core::Error::wrap)?;
    let count = chunks.len() as u64;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&table).arg(&count).arg(scalars);
    let cfg = LaunchConfig {
        grid_dim: (chunks.len().min(65_535) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the kernel's signature (the table, its length, the
    // hyper-parameters' struct); every address in the table points at a live
    // f32 buffer of at least start + len elements (checked above), and the
    // table outlives the launch (freed in stream order).
    unsafe { b.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// SGD's hyper-parameters as the kernel takes them (`SgdScalars` in
/// `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct SgdScalars {
    pub lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub one_minus_dampening: f32,
    pub nesterov: i32,
}

// SAFETY: plain old data with the C layout the kernel reads.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for SgdScalars {}

/// One SGD step of every slot, in place, in one launch (`optim::Sgd` on f32
/// GPU tensors; the buffer in `state[0]`, none without momentum).
pub(crate) fn sgd(slots: &[OptimSlot], scalars: &SgdScalars) -> Result<()> {
    optimizer_launch("tfkd_sgd_f32", slots, scalars)
}

/// Adam's hyper-parameters as the kernel takes them (`AdamScalars` in
/// `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

// SAFETY: plain old data with the C layout the kernel reads.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for AdamScalars {}

/// One Adam step of every slot, in place, in one launch (`optim::Adam` on
/// f32 GPU tensors; `[m, v]` in `state`).
pub(crate) fn adam(slots: &[OptimSlot], scalars: &AdamScalars) -> Result<()> {
    if slots.iter().any(|s| s.state.iter().any(Option::is_none)) {
        candle_core::bail!("tfkd_adam_f32: a parameter without its two moments")
    }
    optimizer_launch("tfkd_adam_f32", slots, scalars)
}

/// `r ← keep·r + gain·s` in place (BatchNorm's running statistics; rounded
/// as the CPU's [`crate::norm`] update).
pub(crate) fn running_average(r: (&mut CudaStorage, &Layout), s: (&CudaStorage, &Layout), keep: f32, gain: f32) -> Result<()> {
    let op = "tfkd-running-average";
    let n = r.1.shape().elem_count() as u64;
    if s.1.shape().elem_count() as u64 != n {
        candle_core::bail!("{op}: a statistic of {:?} for a running one of {:?}", s.1.shape(), r.1.shape())
    }
    let dev = r.0.device().clone();
    let sv = f32_view(s.0, s.1, op)?;
    let mut rv = f32_view_mut(r.0, r.1, op)?;
    let func = dev.get_or_load_custom_func("tfkd_running_average_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&mut rv).arg(&sv).arg(&keep).arg(&gain).arg(&n);
    // SAFETY: the kernel's signature; two buffers of n elements.
    unsafe { b.launch(config(n)) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// A depthwise convolution's sizes as the kernels take them
/// (`DepthwiseShape` in `kernels.cu`): `n, c, m` (channel multiplier),
/// `h, w`, the kernel `kh, kw`, stride `s`, padding `p`, the output `ho, wo`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct DepthwiseShape {
    pub n: i32,
    pub c: i32,
    pub m: i32,
    pub h: i32,
    pub w: i32,
    pub kh: i32,
    pub kw: i32,
    pub s: i32,
    pub p: i32,
    pub ho: i32,
    pub wo: i32,
}

// SAFETY: plain old data with the C layout the kernels read.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for DepthwiseShape {}

/// The most elements a tensor of the depthwise kernels may have: their
/// indices are 32-bit (with room for the grid stride).
pub(crate) const DEPTHWISE_MAX_ELEMENTS: usize = 1 << 30;

/// The depthwise convolution's three passes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DepthwisePass {
    /// `(x, k) → y`.
    Forward,
    /// `(∂L/∂y, k) → ∂L/∂x`.
    InputGrad,
    /// `(x, ∂L/∂y) → ∂L/∂k`.
    WeightGrad,
}

/// One pass of the depthwise convolution `d` on f32 operands `a`, `b` (in
/// the pass's order), one launch.
pub(crate) fn depthwise(pass: DepthwisePass, a: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout), d: DepthwiseShape) -> Result<CudaStorage> {
    let op = "tfkd-depthwise-conv2d";
    let dev = a.0.device().clone();
    let (av, bv) = (f32_view(a.0, a.1, op)?, f32_view(b.0, b.1, op)?);
    let dims = |v: &[i32]| v.iter().map(|&x| x as usize).product::<usize>();
    let (kernel, len) = match pass {
        DepthwisePass::Forward => ("tfkd_depthwise_f32", dims(&[d.n, d.c, d.m, d.ho, d.wo])),
        DepthwisePass::InputGrad => ("tfkd_depthwise_input_grad_f32", dims(&[d.n, d.c, d.h, d.w])),
        DepthwisePass::WeightGrad => ("tfkd_depthwise_weight_grad_f32", dims(&[d.c, d.m, d.kh, d.kw])),
    };
    let cfg = match pass {
        // One block per kernel tap.
        DepthwisePass::WeightGrad => per_row(len),
        _ => config(len as u64),
    };
    let mut out = output(&dev, len)?;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(&av).arg(&bv).arg(&mut out).arg(&d);
    // SAFETY: the kernel's signature; the operands hold the elements `d`
    // describes (checked by the caller's shapes), `out` the pass's output.
    unsafe { builder.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
