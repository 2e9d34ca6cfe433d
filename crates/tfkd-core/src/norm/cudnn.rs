//! Training-mode BatchNorm on CUDA as one cuDNN call each way
//! (`cudnnBatchNormalizationForwardTraining` / `...Backward`, spatial mode:
//! one mean and variance per channel over `N·H·W`), for f32 parameters and
//! f32, bf16 or f16 activations (`precision = "bf16"`: cuDNN reads and writes
//! bf16, keeps the statistics and parameter gradients in f32).
//!
//! The `BatchNorm` module's forward has cuDNN average its running
//! statistics in place within the call (factor = momentum, the unbiased
//! batch variance: what `nn.BatchNorm2d` on a GPU does), so no statistic
//! leaves it. The public `batch_norm_train` asks cuDNN, through a running
//! average with factor 1 over zeroed buffers, for the batch mean and the
//! unbiased batch variance; the biased one the caller gets is
//! `σ²_unbiased·(M − 1)/M`. The backward uses
//! the mean and `1/√(σ² + ε)` cuDNN saved; `∂L/∂γ` and `∂L/∂β` come out of the
//! same call into buffers of their own (so the `(N, C, H, W)` input gradient
//! is freed when the graph is done with it, not kept by the parameter
//! gradients).

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::BatchNormOutput;
use super::Tail;
use crate::activation::Activation;
use crate::cudnn::{self, Descriptor, Scale};

/// cuDNN's smallest accepted ε (`CUDNN_BN_MIN_EPSILON`, 0.0 in cuDNN 9's
/// `cudnn_ops.h`).
const MIN_EPSILON: f64 = 0.0;

/// Whether cuDNN takes this BatchNorm: f32 parameters and an f32, bf16 or
/// f16 input on a GPU, an ε cuDNN accepts, more than one value per channel,
/// and the library loaded. `x` is `(N, C, …)` with `C` matching the
/// parameters (checked by the caller).
fn eligible(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<bool> {
    let all_f32 = [weight, bias].iter().all(|t| t.dtype() == DType::F32) && cudnn::data_type(x.dtype()).is_some_and(|d| d != cudnn::DATA_DOUBLE);
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let m = x.elem_count() / c.max(1);
    Ok(all_f32 && eps >= MIN_EPSILON && m >= 2 && n > 0 && cudnn::usable(x.device()) && takes_dtype(x))
}

/// Whether cuDNN's BatchNorm takes `x`'s activations on its GPU: f32
/// always; bf16 and f16 found out once per GPU and dtype, by a forward and
/// backward pass over two values (PyTorch keeps bf16 off cuDNN's BatchNorm,
/// and a cuDNN that refuses it must not stop a run: the activations are
/// then normalised in f32 by the other path).
fn takes_dtype(x: &Tensor) -> bool {
    if x.dtype() == DType::F32 {
        return true;
    }
    let candle_core::Device::Cuda(dev) = x.device() else { return false };
    static TAKES: cudnn::Answers<(candle_core::cuda_backend::DeviceId, DType)> = std::sync::OnceLock::new();
    let probe = || -> Result<()> {
        let d = x.device();
        let v = candle_core::Var::from_tensor(&Tensor::new(&[1f32, -1.0], d)?.reshape((2, 1))?.to_dtype(x.dtype())?)?;
        let (w, b) = (Tensor::ones(1, DType::F32, d)?, Tensor::zeros(1, DType::F32, d)?);
        let statistics = Statistics::ForCaller(Arc::new(Mutex::new(None)));
        let y = apply(v.as_tensor(), &w, &b, 1e-5, statistics, Tail::default())?;
        let grads = (y.to_dtype(DType::F32)? * Tensor::new(&[1f32, 2.0], d)?.reshape((2, 1))?)?.sum_all()?.backward()?;
        // Read back: a refused call may only surface at the next synchronisation.
        grads.get(&v).map(|g| g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()).transpose()?;
        Ok(())
    };
    cudnn::answered_once(&TAKES, (dev.id(), x.dtype()), probe, |e| {
        format!(
            "cuDNN's BatchNorm refuses {:?} activations on {:?} ({e}); they are normalised in f32 by tfkd's other path",
            x.dtype(),
            x.device().location()
        )
    })
}

/// The BatchNorm through cuDNN where [`eligible`], with the batch
/// statistics for the caller; else `None`.
pub(super) fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, tail: Tail) -> Result<Option<BatchNormOutput>> {
    if !eligible(x, weight, bias, eps)? {
        return Ok(None);
    }
    let m = x.elem_count() / x.dim(1)?;
    let for_caller = Arc::new(Mutex::new(None));
    let y = apply(x, weight, bias, eps, Statistics::ForCaller(for_caller.clone()), tail)?;
    let Some((dev, mean, unbiased)) = for_caller.lock().map_err(|_| poisoned())?.take() else {
        candle_core::bail!("tfkd-cudnn-batch-norm: the forward pass saved no statistics")
    };
    let mean = stashed(weight, mean, &dev)?;
    let unbiased = stashed(weight, unbiased, &dev)?;
    let var = (unbiased * ((m - 1) as f64 / m as f64))?;
    Ok(Some(BatchNormOutput { y, mean, var }))
}

/// The BatchNorm through cuDNN where [`eligible`], with cuDNN updating the
/// running statistics in place as `nn.BatchNorm2d` on a GPU has it do:
/// `r_μ ← (1 − m)·r_μ + m·μ`, `r_σ² ← (1 − m)·r_σ² + m·σ²_unbiased`, inside
/// the one call (no statistic leaves it); else `None`. The running
/// statistics are f32 `(C,)` tensors on `x`'s GPU.
pub(super) fn batch_norm_train_updating(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    [running_mean, running_var]: [&Tensor; 2],
    momentum: f64,
    tail: Tail,
) -> Result<Option<Tensor>> {
    let c = x.dim(1)?;
    let running_ok = [running_mean, running_var]
        .iter()
        .all(|r| r.dtype() == DType::F32 && r.dims() == [c] && r.is_contiguous() && r.device().same_device(x.device()));
    if !running_ok || !eligible(x, weight, bias, eps)? {
        return Ok(None);
    }
    let statistics = Statistics::Running {
        mean: crate::cuda::address::<f32>(running_mean, "tfkd-cudnn-batch-norm")?.1,
        var: crate::cuda::address::<f32>(running_var, "tfkd-cudnn-batch-norm")?.1,
        momentum,
    };
    Ok(Some(apply(x, weight, bias, eps, statistics, tail)?))
}

/// The op over `x` with `tail` inside it where the activations are f32
/// (tfkd's kernels then add the residual and clamp in place), else after it
/// as ops of their own (bf16, f16). With a residual inside, the operands are
/// `(x, residual, [γ; β])`: an op has three.
fn apply(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, statistics: Statistics, tail: Tail) -> Result<Tensor> {
    let inside = x.dtype() == DType::F32;
    let op = || CudnnBatchNorm {
        eps,
        act: if inside { tail.act } else { None },
        residual: inside && tail.residual.is_some(),
        saved: Mutex::new(None),
        statistics: statistics.clone(),
    };
    let x = x.contiguous()?;
    match tail.residual {
        Some(r) if inside => {
            let wb = Tensor::cat(&[weight, bias], 0)?;
            match super::into_residual(tail, r, &x, &wb, op)? {
                Some(y) => Ok(y),
                None => x.apply_op3(&r.contiguous()?, &wb, op()),
            }
        }
        _ => {
            let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op())?;
            if inside {
                Ok(y)
            } else {
                tail.apply_after(y)
            }
        }
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("tfkd-cudnn-batch-norm: statistics lock poisoned".into())
}

/// What the forward pass keeps for the backward, per channel, on the GPU.
struct Saved {
    dev: CudaDevice,
    /// The batch mean.
    mean: CudaSlice<f32>,
    /// `1/√(σ² + ε)`.
    inv_std: CudaSlice<f32>,
}

/// The batch mean and unbiased variance, for the caller.
type ForCaller = Option<(CudaDevice, CudaSlice<f32>, CudaSlice<f32>)>;

/// Where the forward pass's statistics go.
#[derive(Clone)]
enum Statistics {
    /// The batch mean and unbiased variance, to the caller.
    ForCaller(Arc<Mutex<ForCaller>>),
    /// Into running statistics at these device addresses (f32, `C` each),
    /// averaged in place by cuDNN with factor `momentum`. The addresses are
    /// taken under candle's read lock and written by the cuDNN call: sound
    /// for the reason given at `cuda::optimizer_launch` (the module is the
    /// only writer of its running statistics, and candle orders every op on
    /// the device's one stream).
    Running { mean: u64, var: u64, momentum: f64 },
}

/// `(x, γ, β) → y`, or with a residual `(x, r, [γ; β]) → y + r`, then `act`
/// of it, in place (f32 only).
struct CudnnBatchNorm {
    eps: f64,
    act: Option<Activation>,
    residual: bool,
    saved: Mutex<Option<Arc<Saved>>>,
    statistics: Statistics,
}

/// `(x, γ, ∂L/∂y) → ∂L/∂x`, leaving `∂L/∂γ`, `∂L/∂β` in `params`.
struct CudnnBatchNormBackward {
    eps: f64,
    saved: Arc<Saved>,
    params: Mutex<Option<(CudaSlice<f32>, CudaSlice<f32>)>>,
}

/// What both passes start from: the library, the 4-d shape cuDNN sees,
/// `(N, C, rest, 1)`, the GPU and the activations' cuDNN data type.
fn prologue(op: &str, xs: &CudaStorage, xl: &Layout) -> Result<(Arc<cudnn::Api>, [usize; 4], CudaDevice, std::ffi::c_int)> {
    let Some(api) = cudnn::api() else {
        candle_core::bail!("{op}: cuDNN is not loaded")
    };
    let (n, c, rest) = crate::cpu::ncs(xl.shape(), op)?;
    let data_type = cudnn::data_type(xs.dtype()).unwrap_or(cudnn::DATA_FLOAT);
    Ok((api, [n, c, rest, 1], xs.device().clone(), data_type))
}

/// The device address of a contiguous operand. (The guards are dropped at
/// once here and in [`alloc`]: candle runs everything on the device's one
/// stream, where cudarc records no events.)
fn ptr(s: &CudaStorage, l: &Layout, stream: &Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>) -> Result<u64> {
    use crate::cuda::view;
    let op = "tfkd-cudnn-batch-norm";
    Ok(match s.dtype() {
        DType::F32 => view::<f32>(s, l, op)?.device_ptr(stream).0,
        DType::BF16 => view::<half::bf16>(s, l, op)?.device_ptr(stream).0,
        DType::F16 => view::<half::f16>(s, l, op)?.device_ptr(stream).0,
        other => candle_core::bail!("{op}: unsupported dtype {other:?}"),
    })
}

/// A fresh buffer of `n` elements of `dtype`, every one of which the cuDNN
/// call writes, and its device address.
fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<(CudaStorage, u64)> {
    let stream = dev.cuda_stream();
    macro_rules! typed {
        ($t:ty) => {{
            // SAFETY: written whole by the cuDNN call (β = 0).
            let mut s = unsafe { stream.alloc::<$t>(n) }.map_err(candle_core::Error::wrap)?;
            let p = s.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
        }};
    }
    Ok(match dtype {
        DType::F32 => typed!(f32),
        DType::BF16 => typed!(half::bf16),
        DType::F16 => typed!(half::f16),
        other => candle_core::bail!("tfkd-cudnn-batch-norm: unsupported dtype {other:?}"),
    })
}

impl CudnnBatchNorm {
    /// `BN(x)` into a fresh buffer (and its address) with γ, β at the
    /// device addresses `(pw, pb)`, keeping the statistics for the backward
    /// pass and handing or averaging them as `statistics` says.
    fn normalise(&self, xs: &CudaStorage, xl: &Layout, (pw, pb): (u64, u64)) -> Result<(CudaStorage, u64)> {
        let (api, dims, dev, data_type) = prologue(self.name(), xs, xl)?;
        let stream = dev.cuda_stream();
        let c = dims[1];
        let wrap = candle_core::Error::wrap;
        let (y, py) = alloc(&dev, xs.dtype(), xl.shape().elem_count())?;
        // SAFETY: cuDNN writes both whole (the saved mean and 1/√(σ² + ε)).
        let (mut mean, mut inv_std) = unsafe { (stream.alloc::<f32>(c).map_err(wrap)?, stream.alloc::<f32>(c).map_err(wrap)?) };
        // For the caller: cuDNN's "running" statistics with factor 1 are the
        // batch mean and unbiased variance. Zeroed: the average still reads
        // the old value (0·old).
        let mut for_caller = match &self.statistics {
            Statistics::ForCaller(_) => Some((stream.alloc_zeros::<f32>(c).map_err(wrap)?, stream.alloc_zeros::<f32>(c).map_err(wrap)?)),
            Statistics::Running { .. } => None,
        };
        let x_desc = Descriptor::tensor(&api, data_type, dims)?;
        let p_desc = Descriptor::batch_norm_param(&api, &x_desc)?;
        {
            let px = ptr(xs, xl, &stream)?;
            let (pm, _w2) = mean.device_ptr_mut(&stream);
            let (pi, _w3) = inv_std.device_ptr_mut(&stream);
            let mut guards = None;
            let (prm, prv, factor) = match (&self.statistics, &mut for_caller) {
                (Statistics::Running { mean, var, momentum }, _) => (*mean, *var, *momentum),
                (Statistics::ForCaller(_), Some((batch_mean, unbiased_var))) => {
                    let (prm, w4) = batch_mean.device_ptr_mut(&stream);
                    let (prv, w5) = unbiased_var.device_ptr_mut(&stream);
                    guards = Some((w4, w5));
                    (prm, prv, 1.0)
                }
                (Statistics::ForCaller(_), None) => unreachable!("allocated above"),
            };
            let (one, zero) = (Scale::F32(1.0), Scale::F32(0.0));
            cudnn::with_device(&api, &dev, |state| {
                // SAFETY: descriptors of these shapes, live buffers of those
                // sizes, on the handle's stream.
                let status = unsafe {
                    (api.bn_fwd_train)(
                        state.handle,
                        cudnn::BATCHNORM_SPATIAL,
                        one.ptr(),
                        zero.ptr(),
                        x_desc.raw,
                        px as *const c_void,
                        x_desc.raw,
                        py as *mut c_void,
                        p_desc.raw,
                        pw as *const c_void,
                        pb as *const c_void,
                        factor,
                        prm as *mut c_void,
                        prv as *mut c_void,
                        self.eps,
                        pm as *mut c_void,
                        pi as *mut c_void,
                    )
                };
                api.check(status, &format!("cudnnBatchNormalizationForwardTraining (input {:?})", xl.shape()))
            })?;
            drop(guards);
        }
        if let (Statistics::ForCaller(to), Some((batch_mean, unbiased_var))) = (&self.statistics, for_caller) {
            *to.lock().map_err(|_| poisoned())? = Some((dev.clone(), batch_mean, unbiased_var));
        }
        *self.saved.lock().map_err(|_| poisoned())? = Some(Arc::new(Saved {
            dev: dev.clone(),
            mean,
            inv_std,
        }));
        Ok((y, py))
    }
}

/// γ's and β's addresses in the packed `[γ; β]` (f32, `2C`). Where β does
/// not start on a 16-byte boundary (C not a multiple of 4), it is copied
/// into a buffer of its own, returned to be kept until the call is queued:
/// cuDNN documents no alignment for these parameters, and C floats copied
/// take the question off the table.
fn packed_params(
    s: &CudaStorage,
    l: &Layout,
    c: usize,
    stream: &Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
) -> Result<(u64, u64, Option<CudaSlice<f32>>)> {
    let gamma = ptr(s, l, stream)?;
    let beta = gamma + (c * std::mem::size_of::<f32>()) as u64;
    if beta % 16 == 0 {
        return Ok((gamma, beta, None));
    }
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("tfkd-cudnn-batch-norm: the packed parameters must be contiguous")
    };
    let copy = stream.clone_dtod(&s.as_cuda_slice::<f32>()?.slice(start + c..start + 2 * c)).map_err(candle_core::Error::wrap)?;
    let beta = copy.device_ptr(stream).0;
    Ok((gamma, beta, Some(copy)))
}

/// The residual form written into the residual (f32: `r ← act(BN(x) + r)`,
/// BatchNorm's output through a buffer that lives while the call runs).
impl super::ResidualInPlace for CudnnBatchNorm {
    fn cuda_into(&self, (rs, rl): (&mut CudaStorage, &Layout), (xs, xl): (&CudaStorage, &Layout), (ws, wl): (&CudaStorage, &Layout)) -> Result<()> {
        let op = "tfkd-cudnn-batch-norm";
        let stream = xs.device().cuda_stream();
        let (c, n) = (crate::cpu::ncs(xl.shape(), op)?.1, xl.shape().elem_count());
        if !self.residual || rs.dtype() != DType::F32 || rl.shape().elem_count() != n || wl.shape().elem_count() != 2 * c {
            candle_core::bail!("{op}: a residual of {:?} {:?} and {} packed parameters for {:?}", rl.shape(), rs.dtype(), wl.shape().elem_count(), xl.shape())
        }
        let (gamma, beta, _beta_copy) = packed_params(ws, wl, c, &stream)?;
        let (_y, py) = self.normalise(xs, xl, (gamma, beta))?;
        let Some((start, end)) = rl.contiguous_offsets() else {
            candle_core::bail!("{op}: the residual must be contiguous")
        };
        let pr = rs.as_cuda_slice_mut::<f32>()?.slice_mut(start..end).device_ptr_mut(&stream).0;
        let (lo, hi) = Activation::bounds::<f32>(self.act);
        // r ← clamp(r + y); `_y` is freed (in stream order) after the launch.
        crate::cuda::add_clamp_in_place(xs.device(), pr, py, n, lo, hi)
    }
}

impl CustomOp3 for CudnnBatchNorm {
    fn name(&self) -> &'static str {
        "tfkd-cudnn-batch-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("tfkd-cudnn-batch-norm: given CPU tensors")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let stream = xs.device().cuda_stream();
        let c = crate::cpu::ncs(xl.shape(), self.name())?.1;
        let n = xl.shape().elem_count();
        // With a residual, (ws, bs) are (the residual, [γ; β]).
        let (params, _beta_copy) = if self.residual {
            if ws.dtype() != DType::F32 || wl.shape().elem_count() != n || bl.shape().elem_count() != 2 * c {
                candle_core::bail!("tfkd-cudnn-batch-norm: a residual of {:?} and {} packed parameters for {:?}", wl.shape(), bl.shape().elem_count(), xl.shape())
            }
            let (gamma, beta, copy) = packed_params(bs, bl, c, &stream)?;
            ((gamma, beta), copy)
        } else {
            ((ptr(ws, wl, &stream)?, ptr(bs, bl, &stream)?), None)
        };
        let (y, py) = self.normalise(xs, xl, params)?;
        let dev = xs.device();
        if self.residual {
            let (lo, hi) = Activation::bounds::<f32>(self.act);
            crate::cuda::add_clamp_in_place(dev, py, ptr(ws, wl, &stream)?, n, lo, hi)?;
        } else if let Some(act) = self.act {
            crate::cuda::clamp_in_place(dev, py, n, act.max() as f32)?;
        }
        Ok((y, xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, arg2: &Tensor, arg3: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.lock().map_err(|_| poisoned())?.clone() else {
            candle_core::bail!("tfkd-cudnn-batch-norm: backward before forward")
        };
        let grad = match self.act {
            Some(act) => act.grad_from_output(grad, res)?,
            None => grad.contiguous()?,
        };
        let gamma = &super::gamma_operand(self.residual, arg2, arg3, x.dim(1)?)?;
        let op = CudnnBatchNormBackward {
            eps: self.eps,
            saved,
            params: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(gamma, &grad, &op)?;
        let Some((dgamma, dbeta)) = op.params.lock().map_err(|_| poisoned())?.take() else {
            candle_core::bail!("tfkd-cudnn-batch-norm: the backward pass left no parameter gradients")
        };
        let dx = if x.track_op() { Some(dx) } else { None };
        let dev = &op.saved.dev;
        let (d2, d3) = super::operand_grads(
            self.residual,
            (arg2, arg3),
            &grad,
            || stashed(gamma, dgamma, dev),
            || stashed(gamma, dbeta, dev),
        )?;
        Ok((dx, d2, d3))
    }
}

impl CustomOp3 for CudnnBatchNormBackward {
    fn name(&self) -> &'static str {
        "tfkd-cudnn-batch-norm-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("tfkd-cudnn-batch-norm-backward: given CPU tensors")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (api, dims, dev, data_type) = prologue(self.name(), xs, xl)?;
        let stream = dev.cuda_stream();
        let c = dims[1];
        let wrap = candle_core::Error::wrap;
        let (dx, pdx) = alloc(&dev, xs.dtype(), xl.shape().elem_count())?;
        // SAFETY: every element of each is written by cuDNN (β = 0 for all).
        let (mut dgamma, mut dbeta) = unsafe { (stream.alloc::<f32>(c).map_err(wrap)?, stream.alloc::<f32>(c).map_err(wrap)?) };
        let x_desc = Descriptor::tensor(&api, data_type, dims)?;
        let p_desc = Descriptor::batch_norm_param(&api, &x_desc)?;
        {
            let (px, pw, pg) = (ptr(xs, xl, &stream)?, ptr(ws, wl, &stream)?, ptr(gs, gl, &stream)?);
            let (pm, _r1) = self.saved.mean.device_ptr(&stream);
            let (pi, _r2) = self.saved.inv_std.device_ptr(&stream);
            let (pdg, _w2) = dgamma.device_ptr_mut(&stream);
            let (pdb, _w3) = dbeta.device_ptr_mut(&stream);
            let (one, zero) = (Scale::F32(1.0), Scale::F32(0.0));
            cudnn::with_device(&api, &dev, |state| {
                // SAFETY: as for the forward pass.
                let status = unsafe {
                    (api.bn_bwd)(
                        state.handle,
                        cudnn::BATCHNORM_SPATIAL,
                        one.ptr(),
                        zero.ptr(),
                        one.ptr(),
                        zero.ptr(),
                        x_desc.raw,
                        px as *const c_void,
                        x_desc.raw,
                        pg as *const c_void,
                        x_desc.raw,
                        pdx as *mut c_void,
                        p_desc.raw,
                        pw as *const c_void,
                        pdg as *mut c_void,
                        pdb as *mut c_void,
                        self.eps,
                        pm as *const c_void,
                        pi as *const c_void,
                    )
                };
                api.check(status, &format!("cudnnBatchNormalizationBackward (input {:?})", xl.shape()))
            })?;
        }
        *self.params.lock().map_err(|_| poisoned())? = Some((dgamma, dbeta));
        Ok((dx, xl.shape().clone()))
    }
}

/// A `(C,)` tensor over a per-channel buffer computed by a cuDNN call: an op
/// without inputs of its own, applied to `like` (a `(C,)` tensor on the same
/// GPU) only to get a tensor out of candle.
fn stashed(like: &Tensor, slice: CudaSlice<f32>, dev: &CudaDevice) -> Result<Tensor> {
    struct Stashed(Mutex<Option<CudaStorage>>);
    impl CustomOp1 for Stashed {
        fn name(&self) -> &'static str {
            "tfkd-cudnn-per-channel"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("tfkd-cudnn-per-channel: given CPU tensors")
        }
        fn cuda_fwd(&self, _: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            match self.0.lock().ok().and_then(|mut s| s.take()) {
                Some(s) => Ok((s, l.shape().clone())),
                None => candle_core::bail!("tfkd-cudnn-per-channel: used twice"),
            }
        }
    }
    let op = Stashed(Mutex::new(Some(CudaStorage::wrap_cuda_slice(slice, dev.clone()))));
    like.detach().apply_op1_no_bwd(&op)
}
