//! Convolutions on CUDA through cuDNN: the forward, `∂L/∂x` and `∂L/∂w`, each
//! one cuDNN call (dense, grouped and depthwise alike: cuDNN takes the group
//! count), with the algorithm chosen once per shape and GPU by timing
//! ([`crate::cudnn`]).
//!
//! f32 convolutions use TF32 tensor cores unless strict f32 was asked for
//! ([`crate::precision`]), as PyTorch's `allow_tf32` default does; bf16 and
//! f16 convolutions accumulate in f32, f64 ones in f64.

use std::ffi::{c_int, c_void};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::cudnn::{self, ConvKey, Descriptor, Geometry, Pass, Scale};

/// The convolution through cuDNN, if `x` is on a GPU, its dtype is one
/// cuDNN convolves and the library loaded (else `None`: the caller takes its
/// own path). The operands have been checked by the caller.
pub(super) fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize, groups: usize) -> Result<Option<Tensor>> {
    if w.dtype() != x.dtype() || !active(x.device(), x.dtype()) {
        return Ok(None);
    }
    let op = CudnnConv2d { padding, stride, groups };
    // A strided `x` stays the graph's operand; `run` copies it for cuDNN
    // while a pass runs (`contiguous_copy`).
    let w = w.contiguous()?;
    let y = if x.track_op() || w.track_op() {
        x.apply_op2(&w, op)?
    } else {
        x.apply_op2_no_bwd(&w, &op)?
    };
    Ok(Some(y))
}

/// True when a convolution of this device and dtype would go to cuDNN (the
/// library loads): what the tests and benchmarks report.
pub fn active(device: &candle_core::Device, dtype: DType) -> bool {
    cudnn::data_type(dtype).is_some() && cudnn::usable(device)
}


/// `y = conv(x, w)`; its backward runs the two gradient passes.
struct CudnnConv2d {
    padding: usize,
    stride: usize,
    groups: usize,
}

/// `∂L/∂x` from `(w, ∂L/∂y)`.
struct CudnnConvBackwardData {
    geometry: Geometry,
}

/// `∂L/∂w` from `(x, ∂L/∂y)`.
struct CudnnConvBackwardFilter {
    geometry: Geometry,
}

fn cpu_refused(name: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{name}: a cuDNN op was given CPU tensors")
}

impl CustomOp2 for CudnnConv2d {
    fn name(&self) -> &'static str {
        super::op_names::CUDNN
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let geometry = Geometry {
            x: xl.shape().dims4()?.into(),
            w: wl.shape().dims4()?.into(),
            padding: self.padding,
            stride: self.stride,
            groups: self.groups,
        };
        let y = geometry.y();
        let out = run(Pass::Forward, geometry, (xs, xl), (ws, wl))?;
        Ok((out, Shape::from(y.to_vec())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        grads(x, w, grad, self.padding, self.stride, self.groups)
    }
}

/// The convolution's gradients `(∂L/∂x, ∂L/∂w)` through cuDNN, each only
/// where its operand tracks gradients.
pub(super) fn grads(x: &Tensor, w: &Tensor, grad: &Tensor, padding: usize, stride: usize, groups: usize) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let geometry = Geometry {
        x: x.dims4()?.into(),
        w: w.dims4()?.into(),
        padding,
        stride,
        groups,
    };
    let grad = grad.contiguous()?;
    let gx = if x.track_op() {
        Some(w.apply_op2_no_bwd(&grad, &CudnnConvBackwardData { geometry })?)
    } else {
        None
    };
    let gw = if w.track_op() {
        Some(x.apply_op2_no_bwd(&grad, &CudnnConvBackwardFilter { geometry })?)
    } else {
        None
    };
    Ok((gx, gw))
}

impl CustomOp2 for CudnnConvBackwardData {
    fn name(&self) -> &'static str {
        "tfkd-cudnn-conv2d-backward-data"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, ws: &CudaStorage, wl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let out = run(Pass::BackwardData, self.geometry, (ws, wl), (gs, gl))?;
        Ok((out, Shape::from(self.geometry.x.to_vec())))
    }
}

impl CustomOp2 for CudnnConvBackwardFilter {
    fn name(&self) -> &'static str {
        "tfkd-cudnn-conv2d-backward-filter"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let out = run(Pass::BackwardFilter, self.geometry, (xs, xl), (gs, gl))?;
        Ok((out, Shape::from(self.geometry.w.to_vec())))
    }
}

/// Runs one pass on operands `(a, b)`: `(x, w)` forward, `(w, ∂y)` for
/// `∂x`, `(x, ∂y)` for `∂w`. Returns the pass's output.
pub(super) fn run(pass: Pass, g: Geometry, a: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    // A strided operand (the input as the graph keeps it) is read from a
    // contiguous copy that lives while this pass runs.
    let (a_packed, b_packed) = (super::contiguous_copy(a.0, a.1)?, super::contiguous_copy(b.0, b.1)?);
    let a = a_packed.as_ref().map_or(a, |(s, l)| (s, l));
    let b = b_packed.as_ref().map_or(b, |(s, l)| (s, l));
    match a.0.dtype() {
        DType::F32 => run_typed::<f32>(pass, g, a, b),
        DType::F64 => run_typed::<f64>(pass, g, a, b),
        DType::F16 => run_typed::<half::f16>(pass, g, a, b),
        DType::BF16 => run_typed::<half::bf16>(pass, g, a, b),
        other => candle_core::bail!("tfkd-cudnn-conv2d: cuDNN does not convolve {other:?}"),
    }
}

/// The math type of a convolution of `data_type`: TF32 tensor cores for f32
/// unless strict f32 is on, tensor cores for the half types, plain for f64.
fn math_type(data_type: c_int) -> c_int {
    match data_type {
        cudnn::DATA_FLOAT if crate::precision::conv_tf32() => cudnn::TENSOR_OP_MATH,
        cudnn::DATA_FLOAT => cudnn::FMA_MATH,
        cudnn::DATA_DOUBLE => cudnn::DEFAULT_MATH,
        _ => cudnn::TENSOR_OP_MATH,
    }
}

fn run_typed<T: CudaDType + DeviceRepr + candle_core::WithDType>(
    pass: Pass,
    g: Geometry,
    (a_s, a_l): (&CudaStorage, &Layout),
    (b_s, b_l): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let Some(api) = cudnn::api() else {
        candle_core::bail!("tfkd-cudnn-conv2d: cuDNN is not loaded")
    };
    let data_type = cudnn::data_type(T::DTYPE).unwrap_or(cudnn::DATA_FLOAT);
    let dev = a_s.device().clone();
    let stream = dev.cuda_stream();
    let op = "tfkd-cudnn-conv2d";
    let (a, b) = (crate::cuda::view::<T>(a_s, a_l, op)?, crate::cuda::view::<T>(b_s, b_l, op)?);
    let out_dims = match pass {
        Pass::Forward => g.y(),
        Pass::BackwardData => g.x,
        Pass::BackwardFilter => g.w,
    };
    // SAFETY: every element is written by the cuDNN call below.
    let mut out = unsafe { stream.alloc::<T>(out_dims.iter().product()) }.map_err(candle_core::Error::wrap)?;
    let math = math_type(data_type);
    let x_desc = Descriptor::tensor(&api, data_type, g.x)?;
    let w_desc = Descriptor::filter(&api, data_type, g.w)?;
    let y_desc = Descriptor::tensor(&api, data_type, g.y())?;
    let conv = Descriptor::convolution(&api, data_type, g.padding, g.stride, g.groups, math)?;
    {
        let (pa, _read_a) = a.device_ptr(&stream);
        let (pb, _read_b) = b.device_ptr(&stream);
        let (po, _write_out) = out.device_ptr_mut(&stream);
        // Operands with an offset into their buffer may be less aligned than
        // those an algorithm was timed on (PyTorch keys on this too).
        let aligned = [pa, pb, po].iter().enumerate().fold(0u8, |bits, (i, &p)| bits | (u8::from(p % 16 == 0) << i));
        let key = ConvKey { pass, geometry: g, dtype: data_type, math, aligned };
        let (pa, pb, po) = (pa as *const c_void, pb as *const c_void, po as *mut c_void);
        // The descriptors in the order each pass's functions take them:
        // (first operand, second operand, output).
        let (d1, d2, d3) = match pass {
            Pass::Forward => (&x_desc, &w_desc, &y_desc),
            Pass::BackwardData => (&w_desc, &y_desc, &x_desc),
            Pass::BackwardFilter => (&x_desc, &y_desc, &w_desc),
        };
        let (find, call, name) = match pass {
            Pass::Forward => (api.find_fwd, api.conv_fwd, "cudnnConvolutionForward"),
            Pass::BackwardData => (api.find_bwd_data, api.conv_bwd_data, "cudnnConvolutionBackwardData"),
            Pass::BackwardFilter => (api.find_bwd_filter, api.conv_bwd_filter, "cudnnConvolutionBackwardFilter"),
        };
        let search = Search { pass, find, descriptors: [d1, d2, &conv, d3], math };
        cudnn::with_device(&api, &dev, |state| {
            let choice = match state.algos.get(&key) {
                Some(c) => *c,
                None => {
                    let c = find_algorithm(&api, state.handle, &stream, &search, (pa, pb, po))?;
                    state.algos.insert(key, c);
                    c
                }
            };
            // The math type cuDNN timed the algorithm with, except that
            // strict f32 stays plain FMA whatever cuDNN reports (its
            // default math type allows TF32 on tensor cores).
            conv.set_math_type(if math == cudnn::FMA_MATH { math } else { choice.math_type })?;
            let (_workspace, ws) = cudnn::workspace(&stream, choice.workspace)?;
            let (alpha, beta) = (Scale::of(data_type, 1.0), Scale::of(data_type, 0.0));
            // SAFETY: descriptors of these operands' shapes, device pointers
            // of live buffers of those sizes, a workspace of the size the
            // algorithm needs, all on the handle's stream.
            let status = unsafe {
                call(
                    state.handle,
                    alpha.ptr(),
                    d1.raw,
                    pa,
                    d2.raw,
                    pb,
                    conv.raw,
                    choice.algo,
                    ws,
                    choice.workspace,
                    beta.ptr(),
                    d3.raw,
                    po,
                )
            };
            api.check(status, &format!("{name} (x {:?}, w {:?}, padding {}, stride {}, groups {})", g.x, g.w, g.padding, g.stride, g.groups))
        })?;
    }
    Ok(T::wrap_cuda_slice(out, dev))
}

/// One pass's algorithm search: which pass, its `Find` function, the
/// descriptors in the pass's order (first operand, second operand,
/// convolution, output) and the math type asked for.
struct Search<'a> {
    pass: Pass,
    find: cudnn::FnFind,
    descriptors: [&'a Descriptor<'a>; 4],
    math: c_int,
}

/// The most workspace any algorithm of the pass needs for these shapes, up
/// to the bound (an algorithm that does not apply is skipped).
fn largest_workspace(api: &cudnn::Api, handle: *mut c_void, search: &Search, bound: usize) -> usize {
    (0..search.pass.algorithms())
        .filter_map(|algo| workspace_of(api, handle, search, algo))
        .filter(|&bytes| bytes <= bound)
        .max()
        .unwrap_or(0)
}

/// The workspace algorithm `algo` of the pass needs for these shapes, or
/// `None` where it does not apply.
fn workspace_of(api: &cudnn::Api, handle: *mut c_void, search: &Search, algo: c_int) -> Option<usize> {
    let size_of = match search.pass {
        Pass::Forward => api.workspace_fwd,
        Pass::BackwardData => api.workspace_bwd_data,
        Pass::BackwardFilter => api.workspace_bwd_filter,
    };
    let [d1, d2, conv, d3] = search.descriptors;
    let mut bytes = 0usize;
    // SAFETY: valid descriptors of this pass; cuDNN writes one size.
    let status = unsafe { size_of(handle, d1.raw, d2.raw, conv.raw, d3.raw, algo, &mut bytes) };
    (status == cudnn::SUCCESS).then_some(bytes)
}

/// Times every algorithm of a pass on the real operands (cuDNN's
/// `Find*AlgorithmEx`, which writes the output) with a temporary workspace
/// as large as the hungriest algorithm that fits the bound needs (halved
/// until it can be allocated), and picks ([`cudnn::pick`]). Where none
/// qualifies, falls back to algorithm 0, or with
/// `TFKD_CUDNN_DETERMINISTIC=1` to a deterministic one (the gradient passes'
/// algorithm 0 adds with atomics; their algorithm 1 does not).
fn find_algorithm(
    api: &cudnn::Api,
    handle: *mut c_void,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    search: &Search,
    (p1, p2, p3): (*const c_void, *const c_void, *mut c_void),
) -> Result<cudnn::Choice> {
    let [d1, d2, conv, d3] = search.descriptors;
    let (find, math) = (search.find, search.math);
    let mut bound = largest_workspace(api, handle, search, cudnn::workspace_bound());
    let scratch = loop {
        if bound == 0 {
            break None;
        }
        // SAFETY: cuDNN only writes the scratch workspace.
        match unsafe { stream.alloc::<u8>(bound) } {
            Ok(s) => break Some(s),
            Err(_) => bound /= 2,
        }
    };
    let ws = scratch.as_ref().map_or(0, |s| s.device_ptr(stream).0) as *mut c_void;
    let mut results = [cudnn::AlgoPerf::default(); 10];
    let mut returned: c_int = 0;
    // SAFETY: as for the call itself; `results` holds the requested count.
    let status = unsafe {
        find(handle, d1.raw, p1, d2.raw, p2, conv.raw, d3.raw, p3, results.len() as c_int, &mut returned, results.as_mut_ptr(), ws, bound)
    };
    api.check(status, "cudnnFind*AlgorithmEx")?;
    let returned = (returned.max(0) as usize).min(results.len());
    let deterministic = cudnn::deterministic_only();
    Ok(cudnn::pick(&results[..returned], bound, deterministic).unwrap_or_else(|| {
        // Algorithm 1 where it applies to these shapes, else 0.
        let deterministic_one = (deterministic && search.pass != Pass::Forward).then(|| workspace_of(api, handle, search, 1)).flatten();
        match deterministic_one {
            Some(workspace) => cudnn::Choice { algo: 1, math_type: math, workspace },
            None => cudnn::Choice { algo: 0, math_type: math, workspace: workspace_of(api, handle, search, 0).unwrap_or(0) },
        }
    }))
}
