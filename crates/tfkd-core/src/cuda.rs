//! tfkd's own CUDA kernels (`src/cuda/kernels.cu`, compiled to PTX by nvcc
//! in `build.rs`, loaded once per GPU): ReLU / ReLU6, max pooling, the conv
//! bias and the fused losses, each one kernel forward and one backward with
//! the CPU ops' rules for the gradient at the clamp bounds, ties and NaN;
//! and SGD's update in place (two kernels per parameter instead of eight
//! candle ops and their allocations). `--features cuda` only.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result};

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
    labels: CudaSlice<u32>,
    n: usize,
    k: usize,
}

fn loss_inputs<'a>(
    z: (&'a CudaStorage, &Layout),
    t: Option<(&'a CudaStorage, &Layout)>,
    labels: &[u32],
    params: &LossParams,
) -> Result<LossInputs<'a>> {
    let (n, k) = z.1.shape().dims2()?;
    if labels.len() != n || k == 0 || labels.iter().any(|&y| y as usize >= k) {
        candle_core::bail!("fused loss: {} labels (each < {k}) for {n} rows", labels.len())
    }
    if (params.soft_kind == 2) != t.is_some() || t.is_some_and(|t| t.1.shape() != z.1.shape()) {
        candle_core::bail!("fused loss: the teacher logits must match the student's, and only a teacher target takes them")
    }
    let dev = z.0.device().clone();
    let labels = dev.cuda_stream().clone_htod(labels).map_err(candle_core::Error::wrap)?;
    Ok(LossInputs {
        z: f32_view(z.0, z.1, "fused loss")?,
        t: t.map(|t| f32_view(t.0, t.1, "fused loss")).transpose()?,
        labels,
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
    labels: &[u32],
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
    labels: &[u32],
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

fn same_len(op: &str, ls: [&Layout; 3]) -> Result<u64> {
    let n = ls[0].shape().elem_count();
    if ls.iter().any(|l| l.shape().elem_count() != n) {
        candle_core::bail!("{op}: operands of {:?}, {:?} and {:?} elements", ls[0].shape(), ls[1].shape(), ls[2].shape())
    }
    Ok(n as u64)
}

/// SGD's momentum buffer update in place: `b ← μ·b + (1 − τ)·(g + λ·p)`
/// (`(b, g, p)`; `optim::Sgd` on f32 GPU tensors).
pub(crate) struct SgdMomentum {
    pub momentum: f32,
    pub one_minus_dampening: f32,
    pub weight_decay: f32,
}

/// SGD's parameter update in place: `p ← p − lr·d` with `d` the direction
/// after momentum (`(p, g, b)`; `b` unread when `has_buffer` is false).
pub(crate) struct SgdStep {
    pub lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub has_buffer: bool,
}

fn gpu_only(op: &str) -> Result<()> {
    candle_core::bail!("{op}: a GPU op was given CPU tensors")
}

impl InplaceOp3 for SgdMomentum {
    fn name(&self) -> &'static str {
        "tfkd-sgd-momentum"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        gpu_only(self.name())
    }

    fn cuda_fwd(&self, b: &mut CudaStorage, bl: &Layout, g: &CudaStorage, gl: &Layout, p: &CudaStorage, pl: &Layout) -> Result<()> {
        let n = same_len(self.name(), [bl, gl, pl])?;
        let dev = b.device().clone();
        let (gv, pv) = (f32_view(g, gl, self.name())?, f32_view(p, pl, self.name())?);
        let mut bv = f32_view_mut(b, bl, self.name())?;
        let func = dev.get_or_load_custom_func("tfkd_sgd_momentum_f32", MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&mut bv).arg(&gv).arg(&pv).arg(&self.momentum).arg(&self.one_minus_dampening).arg(&self.weight_decay).arg(&n);
        // SAFETY: the kernel's signature; three buffers of n elements.
        unsafe { builder.launch(config(n)) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}

impl InplaceOp3 for SgdStep {
    fn name(&self) -> &'static str {
        "tfkd-sgd-step"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        gpu_only(self.name())
    }

    fn cuda_fwd(&self, p: &mut CudaStorage, pl: &Layout, g: &CudaStorage, gl: &Layout, b: &CudaStorage, bl: &Layout) -> Result<()> {
        let n = same_len(self.name(), [pl, gl, bl])?;
        let dev = p.device().clone();
        let (gv, bv) = (f32_view(g, gl, self.name())?, f32_view(b, bl, self.name())?);
        let mut pv = f32_view_mut(p, pl, self.name())?;
        let (nesterov, has_buffer) = (i32::from(self.nesterov), i32::from(self.has_buffer));
        let func = dev.get_or_load_custom_func("tfkd_sgd_step_f32", MODULE, PTX)?;
        let mut builder = func.builder();
        builder
            .arg(&mut pv)
            .arg(&gv)
            .arg(&bv)
            .arg(&self.lr)
            .arg(&self.weight_decay)
            .arg(&self.momentum)
            .arg(&nesterov)
            .arg(&has_buffer)
            .arg(&n);
        // SAFETY: the kernel's signature; three buffers of n elements.
        unsafe { builder.launch(config(n)) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}

/// `r ← keep·r + gain·s` in place (BatchNorm's running statistics; rounded
/// as the CPU's [`crate::norm`] update).
pub(crate) fn running_average(r: (&mut CudaStorage, &Layout), s: (&CudaStorage, &Layout), keep: f32, gain: f32) -> Result<()> {
    let op = "tfkd-running-average";
    let n = same_len(op, [r.1, s.1, s.1])?;
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
