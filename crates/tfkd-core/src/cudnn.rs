//! cuDNN, loaded at run time: one handle per GPU, the workspace, the
//! algorithm cache and the switches. The GPU parts are built with
//! `--features cuda`; the loading and the algorithm choice are built (and
//! tested) everywhere, so [`describe`] answers on any build.
//!
//! The library is opened with `dlopen` the first time a CUDA convolution or
//! BatchNorm asks for it, never linked: a binary built with `--features cuda`
//! starts and trains on a machine without cuDNN, on tfkd's own CUDA paths
//! (im2col + cuBLAS convolutions, composed BatchNorm), after one warning that
//! says how to get cuDNN. Where it looks, in order:
//!
//! 1. the file named by `TFKD_CUDNN_LIB` ([`crate::env::CUDNN_LIB`]), if set;
//! 2. `libcudnn.so.9` (then `libcudnn.so`) on the loader's search path
//!    (`LD_LIBRARY_PATH`, the system's library folders);
//! 3. the `nvidia/cudnn/lib` folder of the `nvidia-cudnn-cu13` wheel beside
//!    any CUDA wheel folder on `LD_LIBRARY_PATH` (`site-packages/nvidia/*/lib`,
//!    what `run-cuda.sh` puts there; PyTorch's CUDA wheels install cuDNN so).
//!
//! Only cuDNN's long-standing C API is used (the `cudnnConvolution*` and
//! `cudnnBatchNormalization*` calls, present from cuDNN 7 to 9), declared here
//! by hand for the few functions called.
//!
//! Algorithms are chosen as PyTorch's `cudnn.benchmark = True` chooses them:
//! the first time a shape is seen, cuDNN times every algorithm on the real
//! operands (`cudnnFind*AlgorithmEx`) and the fastest whose workspace fits
//! the bound is kept for the rest of the process, per GPU. The bound is
//! `TFKD_CUDNN_WORKSPACE_MB` (default [`DEFAULT_WORKSPACE_MB`]);
//! `TFKD_CUDNN_DETERMINISTIC=1` keeps only the algorithms cuDNN reports as
//! deterministic (PyTorch's `cudnn.deterministic`), and `TFKD_CUDNN=0` turns
//! cuDNN off.

// Without `cuda` only the loading, `describe` and `pick` are used.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

#[cfg(feature = "cuda")]
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

#[cfg(feature = "cuda")]
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
#[cfg(feature = "cuda")]
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Result};

/// The workspace bound, in MiB, when `TFKD_CUDNN_WORKSPACE_MB` is not set.
pub const DEFAULT_WORKSPACE_MB: usize = 1024;

/// A cuDNN status code.
type Status = c_int;
/// `cudnnHandle_t`, `cudnnTensorDescriptor_t`, ...: opaque pointers.
type Opaque = *mut c_void;

// The enum values of cudnn.h (the same from cuDNN 7 to 9).
pub(crate) const TENSOR_NCHW: c_int = 0;
pub(crate) const CROSS_CORRELATION: c_int = 1;
pub(crate) const DATA_FLOAT: c_int = 0;
pub(crate) const DATA_DOUBLE: c_int = 1;
pub(crate) const DATA_HALF: c_int = 2;
pub(crate) const DATA_BFLOAT16: c_int = 9;
/// `CUDNN_TENSOR_OP_MATH`: tensor cores allowed (TF32 for f32 operands).
pub(crate) const TENSOR_OP_MATH: c_int = 1;
/// `CUDNN_FMA_MATH`: plain f32 FMA, no TF32.
pub(crate) const FMA_MATH: c_int = 3;
/// `CUDNN_BATCHNORM_SPATIAL`: one mean and variance per channel.
pub(crate) const BATCHNORM_SPATIAL: c_int = 1;
const DETERMINISTIC: c_int = 1;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`: the three share this
/// layout (an enum, a status, a time, a size, two enums, three reserved ints).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AlgoPerf {
    pub algo: c_int,
    pub status: Status,
    pub time: f32,
    pub memory: usize,
    pub determinism: c_int,
    pub math_type: c_int,
    reserved: [c_int; 3],
}

type FnStatus0 = unsafe extern "C" fn(*mut Opaque) -> Status;
type FnStatus1 = unsafe extern "C" fn(Opaque) -> Status;
pub(crate) type FnFind = unsafe extern "C" fn(
    Opaque,
    Opaque,
    *const c_void,
    Opaque,
    *const c_void,
    Opaque,
    Opaque,
    *mut c_void,
    c_int,
    *mut c_int,
    *mut AlgoPerf,
    *mut c_void,
    usize,
) -> Status;
type FnConv = unsafe extern "C" fn(
    Opaque,
    *const c_void,
    Opaque,
    *const c_void,
    Opaque,
    *const c_void,
    Opaque,
    c_int,
    *mut c_void,
    usize,
    *const c_void,
    Opaque,
    *mut c_void,
) -> Status;

/// `cudnnGetConvolution*WorkspaceSize`: (handle, first operand, second
/// operand, convolution, output, algorithm, size out), the descriptors in
/// the order of the pass's other calls.
pub(crate) type FnWorkspace = unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut usize) -> Status;

/// The functions tfkd calls, resolved once from the loaded library.
pub(crate) struct Api {
    _lib: libloading::Library,
    pub version: usize,
    pub from: String,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: FnStatus0,
    set_stream: unsafe extern "C" fn(Opaque, *mut c_void) -> Status,
    create_tensor: FnStatus0,
    destroy_tensor: FnStatus1,
    set_tensor_4d: unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_filter: FnStatus0,
    destroy_filter: FnStatus1,
    set_filter_4d: unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_conv: FnStatus0,
    destroy_conv: FnStatus1,
    set_conv_2d: unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    set_group_count: unsafe extern "C" fn(Opaque, c_int) -> Status,
    set_math_type: unsafe extern "C" fn(Opaque, c_int) -> Status,
    pub workspace_fwd: FnWorkspace,
    pub workspace_bwd_data: FnWorkspace,
    pub workspace_bwd_filter: FnWorkspace,
    pub find_fwd: FnFind,
    pub find_bwd_data: FnFind,
    pub find_bwd_filter: FnFind,
    pub conv_fwd: FnConv,
    pub conv_bwd_data: FnConv,
    pub conv_bwd_filter: FnConv,
    pub derive_bn: unsafe extern "C" fn(Opaque, Opaque, c_int) -> Status,
    #[allow(clippy::type_complexity)]
    pub bn_fwd_train: unsafe extern "C" fn(
        Opaque,
        c_int,
        *const c_void,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *mut c_void,
        Opaque,
        *const c_void,
        *const c_void,
        f64,
        *mut c_void,
        *mut c_void,
        f64,
        *mut c_void,
        *mut c_void,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    pub bn_bwd: unsafe extern "C" fn(
        Opaque,
        c_int,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *mut c_void,
        Opaque,
        *const c_void,
        *mut c_void,
        *mut c_void,
        f64,
        *const c_void,
        *const c_void,
    ) -> Status,
}

impl Api {
    /// Opens the library at `path` (a file name the loader searches for, or a
    /// path) and resolves every function.
    fn open(path: &str) -> std::result::Result<Api, String> {
        // SAFETY: loading cuDNN runs its initialisers, which have no
        // preconditions; every symbol is then given its C signature from
        // cudnn.h.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| format!("{path}: {e}"))?;
            macro_rules! sym {
                ($name:literal) => {
                    symbol(&lib, path, concat!($name, "\0"))?
                };
            }
            let get_version: unsafe extern "C" fn() -> usize = sym!("cudnnGetVersion");
            let version = get_version();
            Ok(Api {
                version,
                from: path.to_string(),
                get_error_string: sym!("cudnnGetErrorString"),
                create: sym!("cudnnCreate"),
                set_stream: sym!("cudnnSetStream"),
                create_tensor: sym!("cudnnCreateTensorDescriptor"),
                destroy_tensor: sym!("cudnnDestroyTensorDescriptor"),
                set_tensor_4d: sym!("cudnnSetTensor4dDescriptor"),
                create_filter: sym!("cudnnCreateFilterDescriptor"),
                destroy_filter: sym!("cudnnDestroyFilterDescriptor"),
                set_filter_4d: sym!("cudnnSetFilter4dDescriptor"),
                create_conv: sym!("cudnnCreateConvolutionDescriptor"),
                destroy_conv: sym!("cudnnDestroyConvolutionDescriptor"),
                set_conv_2d: sym!("cudnnSetConvolution2dDescriptor"),
                set_group_count: sym!("cudnnSetConvolutionGroupCount"),
                set_math_type: sym!("cudnnSetConvolutionMathType"),
                workspace_fwd: sym!("cudnnGetConvolutionForwardWorkspaceSize"),
                workspace_bwd_data: sym!("cudnnGetConvolutionBackwardDataWorkspaceSize"),
                workspace_bwd_filter: sym!("cudnnGetConvolutionBackwardFilterWorkspaceSize"),
                find_fwd: sym!("cudnnFindConvolutionForwardAlgorithmEx"),
                find_bwd_data: sym!("cudnnFindConvolutionBackwardDataAlgorithmEx"),
                find_bwd_filter: sym!("cudnnFindConvolutionBackwardFilterAlgorithmEx"),
                conv_fwd: sym!("cudnnConvolutionForward"),
                conv_bwd_data: sym!("cudnnConvolutionBackwardData"),
                conv_bwd_filter: sym!("cudnnConvolutionBackwardFilter"),
                derive_bn: sym!("cudnnDeriveBNTensorDescriptor"),
                bn_fwd_train: sym!("cudnnBatchNormalizationForwardTraining"),
                bn_bwd: sym!("cudnnBatchNormalizationBackward"),
                _lib: lib,
            })
        }
    }

    /// A candle error naming the call and cuDNN's message, unless `status`
    /// is success.
    pub fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: cudnnGetErrorString returns a static, NUL-terminated string
        // for any status.
        let msg = unsafe {
            let p = (self.get_error_string)(status);
            if p.is_null() {
                String::from("unknown")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        candle_core::bail!("cuDNN {what}: {msg} (status {status})")
    }
}

/// The function `name` (NUL-terminated) of `lib`, as the pointer type `T`.
///
/// # Safety
/// `T` must be the symbol's C signature.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, path: &str, name: &str) -> std::result::Result<T, String> {
    let bare = name.trim_end_matches('\0');
    // SAFETY: the caller's promise about `T`.
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|e| format!("{path}: {bare}: {e}"))
}

/// The loaded library, or why there is none (once per process).
fn api_or_reason() -> &'static std::result::Result<Arc<Api>, String> {
    static API: OnceLock<std::result::Result<Arc<Api>, String>> = OnceLock::new();
    API.get_or_init(|| {
        if std::env::var(crate::env::CUDNN).is_ok_and(|v| v == "0") {
            return Err(format!("turned off by {}=0", crate::env::CUDNN));
        }
        let mut tried = Vec::new();
        for path in candidates() {
            match Api::open(&path) {
                Ok(api) => return Ok(Arc::new(api)),
                Err(e) => tried.push(e),
            }
        }
        Err(format!("not found ({})", tried.join("; ")))
    })
}

/// Where to look for the library, in order (module docs).
fn candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var(crate::env::CUDNN_LIB) {
        if !p.is_empty() {
            out.push(p);
        }
    }
    out.push("libcudnn.so.9".into());
    out.push("libcudnn.so".into());
    if let Ok(paths) = std::env::var("LD_LIBRARY_PATH") {
        for dir in paths.split(':').filter(|d| !d.is_empty()) {
            // `.../site-packages/nvidia/<wheel>/lib` -> `.../nvidia/cudnn/lib`.
            let cudnn = std::path::Path::new(dir).join("../../cudnn/lib/libcudnn.so.9");
            if cudnn.exists() {
                out.push(cudnn.to_string_lossy().into_owned());
            }
        }
    }
    out.dedup();
    out
}

/// The loaded library, or `None` after one warning (per process) that says
/// why and how to get it.
pub(crate) fn api() -> Option<Arc<Api>> {
    match api_or_reason() {
        Ok(api) => Some(api.clone()),
        Err(reason) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                eprintln!(
                    "tfkd: cuDNN {reason}; CUDA convolutions and BatchNorm run on tfkd's slower im2col + cuBLAS \
                     and composed paths. Install cuDNN 9 (`pip install nvidia-cudnn-cu13`, or the system \
                     package) and put its lib folder on LD_LIBRARY_PATH, or name the file in {}.",
                    crate::env::CUDNN_LIB
                );
            });
            None
        }
    }
}

/// One line for logs and benchmarks: the cuDNN version and file, or why
/// there is none. Loads the library if it was not loaded yet.
pub fn describe() -> String {
    match api_or_reason() {
        Ok(api) => {
            let v = api.version;
            format!("cuDNN {}.{}.{} ({})", v / 10000, (v % 10000) / 100, v % 100, api.from)
        }
        Err(reason) => format!("cuDNN {reason}"),
    }
}

/// The workspace bound in bytes (`TFKD_CUDNN_WORKSPACE_MB`).
pub(crate) fn workspace_bound() -> usize {
    static BOUND: OnceLock<usize> = OnceLock::new();
    *BOUND.get_or_init(|| {
        let mb = match std::env::var(crate::env::CUDNN_WORKSPACE_MB) {
            Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
                eprintln!(
                    "tfkd: {}={v:?} is not a number of MiB; using {DEFAULT_WORKSPACE_MB}",
                    crate::env::CUDNN_WORKSPACE_MB
                );
                DEFAULT_WORKSPACE_MB
            }),
            Err(_) => DEFAULT_WORKSPACE_MB,
        };
        mb << 20
    })
}

/// `TFKD_CUDNN_DETERMINISTIC=1`: only deterministic algorithms.
pub(crate) fn deterministic_only() -> bool {
    static DET: OnceLock<bool> = OnceLock::new();
    *DET.get_or_init(|| std::env::var(crate::env::CUDNN_DETERMINISTIC).is_ok_and(|v| v == "1"))
}

/// Which of the three convolution passes an algorithm serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

impl Pass {
    /// How many algorithms cuDNN has for the pass (`*_ALGO_COUNT`).
    pub fn algorithms(self) -> c_int {
        match self {
            Pass::Forward => 8,
            Pass::BackwardData => 6,
            Pass::BackwardFilter => 7,
        }
    }
}

/// A convolution's shapes: input `x`, kernel `w`, square padding and
/// stride, groups (the output's follow, [`Geometry::y`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub padding: usize,
    pub stride: usize,
    pub groups: usize,
}

impl Geometry {
    /// The output's shape.
    pub fn y(&self) -> [usize; 4] {
        let [n, _, h, wd] = self.x;
        let [o, _, k_h, k_w] = self.w;
        let out = |len: usize, k: usize| (len + 2 * self.padding - k) / self.stride + 1;
        [n, o, out(h, k_h), out(wd, k_w)]
    }
}

/// What identifies a convolution for the algorithm cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    pub pass: Pass,
    pub geometry: Geometry,
    pub dtype: c_int,
    pub math: c_int,
}

/// The cached choice: algorithm, the math type cuDNN timed it with, and its
/// workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub algo: c_int,
    pub math_type: c_int,
    pub workspace: usize,
}

/// Picks from `cudnnFind*AlgorithmEx`'s results (sorted fastest first) the
/// first that succeeded, fits `bound` and (if asked) is deterministic; `None`
/// if none does.
pub(crate) fn pick(results: &[AlgoPerf], bound: usize, deterministic: bool) -> Option<Choice> {
    results
        .iter()
        .find(|p| p.status == 0 && p.memory <= bound && (!deterministic || p.determinism == DETERMINISTIC))
        .map(|p| Choice {
            algo: p.algo,
            math_type: p.math_type,
            workspace: p.memory,
        })
}

#[cfg(feature = "cuda")]
/// A GPU's cuDNN state: the handle, the workspace (grown to the largest
/// need, reused: every call is on the device's one stream) and the chosen
/// algorithms.
pub(crate) struct DeviceState {
    pub handle: Opaque,
    workspace: Option<CudaSlice<u8>>,
    pub algos: HashMap<ConvKey, Choice>,
}

// SAFETY: the handle is only used under the state's mutex, with the
// device's context bound to the calling thread first.
#[cfg(feature = "cuda")]
unsafe impl Send for DeviceState {}

#[cfg(feature = "cuda")]
impl DeviceState {
    /// A workspace of at least `bytes` (null for zero), as a raw pointer valid
    /// until the next call on this state.
    pub fn workspace(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> Result<*mut c_void> {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        if bytes == 0 {
            return Ok(std::ptr::null_mut());
        }
        if self.workspace.as_ref().map_or(true, |w| w.len() < bytes) {
            self.workspace = None;
            // SAFETY: cuDNN only writes the workspace; it is never read as u8.
            let w = unsafe { stream.alloc::<u8>(bytes) }.map_err(candle_core::Error::wrap)?;
            self.workspace = Some(w);
        }
        let w = self.workspace.as_ref().map(|w| w.device_ptr(stream).0);
        Ok(w.unwrap_or(0) as *mut c_void)
    }
}

#[cfg(feature = "cuda")]
/// Runs `f` with the library and `dev`'s cuDNN state (created on first use),
/// the device's context bound and the handle set to its stream.
pub(crate) fn with_device<R>(api: &Api, dev: &CudaDevice, f: impl FnOnce(&mut DeviceState) -> Result<R>) -> Result<R> {
    use std::sync::Mutex;
    static STATES: OnceLock<Mutex<HashMap<candle_core::cuda_backend::DeviceId, DeviceState>>> = OnceLock::new();
    let states = STATES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut states = states
        .lock()
        .map_err(|_| candle_core::Error::Msg("cuDNN: device state lock poisoned".into()))?;
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().map_err(candle_core::Error::wrap)?;
    let state = match states.entry(dev.id()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let mut handle: Opaque = std::ptr::null_mut();
            // SAFETY: cudnnCreate writes a handle into `handle`.
            api.check(unsafe { (api.create)(&mut handle) }, "cudnnCreate")?;
            e.insert(DeviceState {
                handle,
                workspace: None,
                algos: HashMap::new(),
            })
        }
    };
    // SAFETY: a valid handle and the device's live stream (a CUstream is a
    // cudaStream_t).
    api.check(unsafe { (api.set_stream)(state.handle, stream.cu_stream() as *mut c_void) }, "cudnnSetStream")?;
    f(state)
}

/// The cuDNN data type of a candle dtype, if cuDNN convolves it.
pub(crate) fn data_type(dtype: DType) -> Option<c_int> {
    match dtype {
        DType::F32 => Some(DATA_FLOAT),
        DType::F64 => Some(DATA_DOUBLE),
        DType::F16 => Some(DATA_HALF),
        DType::BF16 => Some(DATA_BFLOAT16),
        _ => None,
    }
}

/// `α = 1, β = 0` in the scaling type cuDNN reads for `data_type`: double
/// for double data, float otherwise. Pointers into the returned value.
pub(crate) enum Scale {
    F32(f32),
    F64(f64),
}

impl Scale {
    pub fn of(data_type: c_int, v: f64) -> Scale {
        if data_type == DATA_DOUBLE {
            Scale::F64(v)
        } else {
            Scale::F32(v as f32)
        }
    }

    pub fn ptr(&self) -> *const c_void {
        match self {
            Scale::F32(v) => v as *const f32 as *const c_void,
            Scale::F64(v) => v as *const f64 as *const c_void,
        }
    }
}

/// A tensor, filter or convolution descriptor, destroyed on drop.
pub(crate) struct Descriptor<'a> {
    api: &'a Api,
    pub raw: Opaque,
    destroy: FnStatus1,
}

impl Drop for Descriptor<'_> {
    fn drop(&mut self) {
        // SAFETY: created by the matching cudnnCreate*Descriptor.
        unsafe { (self.destroy)(self.raw) };
    }
}

impl<'a> Descriptor<'a> {
    fn new(api: &'a Api, create: FnStatus0, destroy: FnStatus1, what: &str) -> Result<Self> {
        let mut raw: Opaque = std::ptr::null_mut();
        // SAFETY: the create call writes a descriptor into `raw`.
        api.check(unsafe { create(&mut raw) }, what)?;
        Ok(Descriptor { api, raw, destroy })
    }

    /// A packed NCHW tensor descriptor.
    pub fn tensor(api: &'a Api, data_type: c_int, [n, c, h, w]: [usize; 4]) -> Result<Self> {
        let d = Self::new(api, api.create_tensor, api.destroy_tensor, "cudnnCreateTensorDescriptor")?;
        let [n, c, h, w] = [n, c, h, w].map(dim);
        // SAFETY: a fresh descriptor.
        api.check(
            unsafe { (api.set_tensor_4d)(d.raw, TENSOR_NCHW, data_type, n?, c?, h?, w?) },
            "cudnnSetTensor4dDescriptor",
        )?;
        Ok(d)
    }

    /// An NCHW filter descriptor `(O, C/groups, k_h, k_w)`.
    pub fn filter(api: &'a Api, data_type: c_int, [o, c, h, w]: [usize; 4]) -> Result<Self> {
        let d = Self::new(api, api.create_filter, api.destroy_filter, "cudnnCreateFilterDescriptor")?;
        let [o, c, h, w] = [o, c, h, w].map(dim);
        // SAFETY: a fresh descriptor.
        api.check(
            unsafe { (api.set_filter_4d)(d.raw, data_type, TENSOR_NCHW, o?, c?, h?, w?) },
            "cudnnSetFilter4dDescriptor",
        )?;
        Ok(d)
    }

    /// A 2-D cross-correlation (PyTorch's convolution) with square padding
    /// and stride, no dilation, `groups` groups, accumulating in f32 (f64 for
    /// f64 data) with `math_type`.
    pub fn convolution(api: &'a Api, data_type: c_int, padding: usize, stride: usize, groups: usize, math_type: c_int) -> Result<Self> {
        let d = Self::new(api, api.create_conv, api.destroy_conv, "cudnnCreateConvolutionDescriptor")?;
        let compute = if data_type == DATA_DOUBLE { DATA_DOUBLE } else { DATA_FLOAT };
        let (p, s, g) = (dim(padding)?, dim(stride)?, dim(groups)?);
        // SAFETY: a fresh descriptor.
        unsafe {
            api.check((api.set_conv_2d)(d.raw, p, p, s, s, 1, 1, CROSS_CORRELATION, compute), "cudnnSetConvolution2dDescriptor")?;
            api.check((api.set_group_count)(d.raw, g), "cudnnSetConvolutionGroupCount")?;
        }
        d.set_math_type(math_type)?;
        Ok(d)
    }

    /// Sets a convolution descriptor's math type.
    pub fn set_math_type(&self, math_type: c_int) -> Result<()> {
        // SAFETY: a convolution descriptor.
        self.api.check(unsafe { (self.api.set_math_type)(self.raw, math_type) }, "cudnnSetConvolutionMathType")
    }

    /// The per-channel descriptor cuDNN derives from `x`'s for spatial
    /// BatchNorm.
    pub fn batch_norm_param(api: &'a Api, x: &Descriptor) -> Result<Self> {
        let d = Self::new(api, api.create_tensor, api.destroy_tensor, "cudnnCreateTensorDescriptor")?;
        // SAFETY: a fresh descriptor and a set 4-d tensor descriptor.
        api.check(unsafe { (api.derive_bn)(d.raw, x.raw, BATCHNORM_SPATIAL) }, "cudnnDeriveBNTensorDescriptor")?;
        Ok(d)
    }
}

fn dim(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} does not fit a C int")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(algo: c_int, status: Status, memory: usize, determinism: c_int) -> AlgoPerf {
        AlgoPerf {
            algo,
            status,
            memory,
            determinism,
            math_type: TENSOR_OP_MATH,
            ..AlgoPerf::default()
        }
    }

    #[test]
    fn the_perf_struct_has_cudnn_h_layout() {
        // int, int, float, (pad), size_t, int, int, int[3], (pad)
        assert_eq!(std::mem::size_of::<AlgoPerf>(), 48);
        assert_eq!(std::mem::offset_of!(AlgoPerf, memory), 16);
        assert_eq!(std::mem::offset_of!(AlgoPerf, math_type), 28);
    }

    #[test]
    fn pick_takes_the_fastest_that_ran_fits_and_is_deterministic_when_asked() {
        let results = [perf(6, 0, 900, 0), perf(1, 9, 0, 1), perf(7, 0, 100, 0), perf(0, 0, 0, 1)];
        assert_eq!(pick(&results, 1000, false).map(|c| c.algo), Some(6));
        assert_eq!(pick(&results, 500, false).map(|c| (c.algo, c.workspace)), Some((7, 100)));
        assert_eq!(pick(&results, 1000, true).map(|c| c.algo), Some(0));
        assert_eq!(pick(&results[..3], 50, false), None);
    }

    #[test]
    fn a_missing_library_is_a_reason_not_a_crash() {
        let Err(e) = Api::open("libtfkd-no-such-cudnn.so.9") else { panic!("a missing library loaded") };
        assert!(e.contains("libtfkd-no-such-cudnn"), "{e}");
    }
}
