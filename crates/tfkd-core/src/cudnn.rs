//! cuDNN, loaded at run time: one handle per GPU, the per-call workspace,
//! the algorithm cache and the switches. The GPU parts are built with
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

// The enum values of cudnn.h (the same from cuDNN 7 to 9; the test
// `the_declarations_match_cudnn_h` compares them with the headers).
/// `CUDNN_STATUS_SUCCESS`.
pub(crate) const SUCCESS: Status = 0;
pub(crate) const TENSOR_NCHW: c_int = 0;
pub(crate) const CROSS_CORRELATION: c_int = 1;
pub(crate) const DATA_FLOAT: c_int = 0;
pub(crate) const DATA_DOUBLE: c_int = 1;
pub(crate) const DATA_HALF: c_int = 2;
pub(crate) const DATA_BFLOAT16: c_int = 9;
/// `CUDNN_DEFAULT_MATH`: no tensor cores.
pub(crate) const DEFAULT_MATH: c_int = 0;
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
    /// Each resolved function's name and the kinds of its C signature.
    #[cfg(test)]
    signatures: Vec<(&'static str, String)>,
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
            // Tests keep each function's C signature, to compare with cudnn.h.
            #[cfg(test)]
            let mut signatures = Vec::new();
            macro_rules! sym {
                ($name:literal) => {{
                    let f = symbol(&lib, path, concat!($name, "\0"))?;
                    #[cfg(test)]
                    signatures.push(($name, tests::signature_of(&f)));
                    f
                }};
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
                #[cfg(test)]
                signatures,
                _lib: lib,
            })
        }
    }

    /// A candle error naming the call and cuDNN's message, unless `status`
    /// is success.
    pub fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == SUCCESS {
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

/// Whether cuDNN serves `device`: the library loaded ([`api`]) and a handle
/// made on that GPU, which is where a library that loads but cannot run
/// (a driver or GPU it does not support) first fails. Decided once per GPU;
/// a GPU where it fails gets one warning, and its convolutions and BatchNorm
/// take tfkd's own paths instead of failing at their first call.
pub(crate) fn usable(device: &candle_core::Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        let candle_core::Device::Cuda(dev) = device else { return false };
        let Some(api) = api() else { return false };
        static READY: Answers<candle_core::cuda_backend::DeviceId> = OnceLock::new();
        answered_once(&READY, dev.id(), || with_device(&api, dev, |_| Ok(())), |e| {
            format!(
                "cuDNN loaded ({}) but does not start on {:?}: {e}; its convolutions and BatchNorm run on \
                 tfkd's slower im2col + cuBLAS and composed paths",
                api.from,
                device.location()
            )
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

/// Yes-or-no answers about GPUs, one per key, for [`answered_once`].
#[cfg(feature = "cuda")]
pub(crate) type Answers<K> = OnceLock<std::sync::Mutex<HashMap<K, bool>>>;

/// Whether `ask` succeeds for `key`, asked once per process: a failure is
/// printed once (`refusal` says what it means) and the answer is no from
/// then on. The lock is not held while `ask` runs (it may take others).
#[cfg(feature = "cuda")]
pub(crate) fn answered_once<K: Copy + Eq + std::hash::Hash>(
    answers: &Answers<K>,
    key: K,
    ask: impl FnOnce() -> Result<()>,
    refusal: impl FnOnce(candle_core::Error) -> String,
) -> bool {
    let answers = answers.get_or_init(Default::default);
    if let Some(&known) = answers.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return known;
    }
    let yes = ask().map_err(|e| eprintln!("tfkd: {}", refusal(e))).is_ok();
    answers.lock().unwrap_or_else(|e| e.into_inner()).insert(key, yes);
    yes
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
    /// Bit i: operand i (first, second, output) is 16-byte aligned.
    pub aligned: u8,
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
        .find(|p| p.status == SUCCESS && p.memory <= bound && (!deterministic || p.determinism == DETERMINISTIC))
        .map(|p| Choice {
            algo: p.algo,
            math_type: p.math_type,
            workspace: p.memory,
        })
}

#[cfg(feature = "cuda")]
/// A GPU's cuDNN state: the handle and the chosen algorithms.
pub(crate) struct DeviceState {
    pub handle: Opaque,
    pub algos: HashMap<ConvKey, Choice>,
}

// SAFETY: the handle is only used under the state's mutex, with the
// device's context bound to the calling thread first.
#[cfg(feature = "cuda")]
unsafe impl Send for DeviceState {}

#[cfg(feature = "cuda")]
/// A workspace of `bytes` for one cuDNN call (none for zero), taken from
/// the device's memory pool and handed back, in stream order, when the
/// returned buffer drops after the call: scratch counts towards the peak
/// only while a call runs, as PyTorch's does (a workspace kept for the
/// process would add the largest one to every moment's memory).
pub(crate) fn workspace(stream: &Arc<CudaStream>, bytes: usize) -> Result<(Option<CudaSlice<u8>>, *mut c_void)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    if bytes == 0 {
        return Ok((None, std::ptr::null_mut()));
    }
    // SAFETY: cuDNN only writes the workspace; it is never read as u8.
    let w = unsafe { stream.alloc::<u8>(bytes) }.map_err(candle_core::Error::wrap)?;
    let ptr = w.device_ptr(stream).0 as *mut c_void;
    Ok((Some(w), ptr))
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
            e.insert(DeviceState { handle, algos: HashMap::new() })
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

    /// One letter for a C parameter or return type, as
    /// `scripts/gpu/cudnn_probe.cpp` prints it from cudnn.h.
    pub(super) trait Kind {
        const KIND: char;
    }
    impl Kind for c_int {
        const KIND: char = 'i';
    }
    impl Kind for usize {
        const KIND: char = 'z';
    }
    impl Kind for f64 {
        const KIND: char = 'd';
    }
    impl Kind for f32 {
        const KIND: char = 'f';
    }
    impl<T> Kind for *mut T {
        const KIND: char = 'p';
    }
    impl<T> Kind for *const T {
        const KIND: char = 'p';
    }

    /// A C function pointer's signature as `R(ARGS)`, one [`Kind`] each.
    pub(super) trait Signature {
        fn signature() -> String;
    }
    macro_rules! signature_impls {
        ($($arg:ident)*) => {
            impl<R: Kind, $($arg: Kind),*> Signature for unsafe extern "C" fn($($arg),*) -> R {
                fn signature() -> String {
                    [R::KIND, '('].into_iter().chain([$($arg::KIND),*]).chain([')']).collect()
                }
            }
        };
    }
    macro_rules! all_arities {
        () => { signature_impls!(); };
        ($head:ident $($tail:ident)*) => { signature_impls!($head $($tail)*); all_arities!($($tail)*); };
    }
    all_arities!(A B C D E F G H I J K L M N O P Q S T U);

    pub(super) fn signature_of<F: Signature>(_: &F) -> String {
        F::signature()
    }

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

    /// The library and the probe's lines, or why the real-library tests skip.
    fn real_library() -> Option<(Api, String)> {
        let (Ok(lib), Ok(probe)) = (std::env::var(crate::env::CUDNN_LIB), std::env::var(crate::env::CUDNN_PROBE)) else {
            eprintln!(
                "skipped: {} and {} are not set (scripts/gpu/host_check_cudnn.sh sets them; no GPU needed)",
                crate::env::CUDNN_LIB,
                crate::env::CUDNN_PROBE
            );
            return None;
        };
        let api = Api::open(&lib).unwrap_or_else(|e| panic!("{}={lib}: {e}", crate::env::CUDNN_LIB));
        let probe = std::fs::read_to_string(&probe).unwrap_or_else(|e| panic!("{}={probe}: {e}", crate::env::CUDNN_PROBE));
        Some((api, probe))
    }

    /// The read-back functions the tests use, resolved as [`Api::open`]
    /// resolves its own (their signatures are checked the same way).
    #[allow(clippy::type_complexity)]
    struct Getters {
        _lib: libloading::Library,
        signatures: Vec<(&'static str, String)>,
        tensor_size: unsafe extern "C" fn(Opaque, *mut usize) -> Status,
        tensor_4d: unsafe extern "C" fn(
            Opaque,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
        ) -> Status,
        filter_4d: unsafe extern "C" fn(Opaque, *mut c_int, *mut c_int, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> Status,
        conv_2d: unsafe extern "C" fn(
            Opaque,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
            *mut c_int,
        ) -> Status,
        group_count: unsafe extern "C" fn(Opaque, *mut c_int) -> Status,
        math_type: unsafe extern "C" fn(Opaque, *mut c_int) -> Status,
        output_dim: unsafe extern "C" fn(Opaque, Opaque, Opaque, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> Status,
    }

    impl Getters {
        fn open(path: &str) -> Getters {
            // SAFETY: as in Api::open; each signature is cudnn.h's (and is
            // compared with it by `the_declarations_match_cudnn_h`).
            unsafe {
                let lib = libloading::Library::new(path).unwrap();
                let mut signatures = Vec::new();
                macro_rules! sym {
                    ($name:literal) => {{
                        let f = symbol(&lib, path, concat!($name, "\0")).unwrap();
                        signatures.push(($name, signature_of(&f)));
                        f
                    }};
                }
                Getters {
                    tensor_size: sym!("cudnnGetTensorSizeInBytes"),
                    tensor_4d: sym!("cudnnGetTensor4dDescriptor"),
                    filter_4d: sym!("cudnnGetFilter4dDescriptor"),
                    conv_2d: sym!("cudnnGetConvolution2dDescriptor"),
                    group_count: sym!("cudnnGetConvolutionGroupCount"),
                    math_type: sym!("cudnnGetConvolutionMathType"),
                    output_dim: sym!("cudnnGetConvolution2dForwardOutputDim"),
                    signatures,
                    _lib: lib,
                }
            }
        }
    }

    #[test]
    fn the_declarations_match_cudnn_h() {
        let Some((api, probe)) = real_library() else { return };
        let getters = Getters::open(&api.from);
        let mut ours: Vec<String> = api
            .signatures
            .iter()
            .chain(&getters.signatures)
            .map(|(name, sig)| format!("sig {name} {sig}"))
            .collect();
        let constants = [
            ("STATUS_SUCCESS", SUCCESS),
            ("TENSOR_NCHW", TENSOR_NCHW),
            ("CROSS_CORRELATION", CROSS_CORRELATION),
            ("DATA_FLOAT", DATA_FLOAT),
            ("DATA_DOUBLE", DATA_DOUBLE),
            ("DATA_HALF", DATA_HALF),
            ("DATA_BFLOAT16", DATA_BFLOAT16),
            ("DEFAULT_MATH", DEFAULT_MATH),
            ("TENSOR_OP_MATH", TENSOR_OP_MATH),
            ("FMA_MATH", FMA_MATH),
            ("BATCHNORM_SPATIAL", BATCHNORM_SPATIAL),
            ("DETERMINISTIC", DETERMINISTIC),
            ("FWD_ALGO_COUNT", Pass::Forward.algorithms()),
            ("BWD_DATA_ALGO_COUNT", Pass::BackwardData.algorithms()),
            ("BWD_FILTER_ALGO_COUNT", Pass::BackwardFilter.algorithms()),
        ];
        ours.extend(constants.iter().map(|(name, v)| format!("const {name} {v}")));
        let layout = format!(
            "{} {} {}",
            std::mem::size_of::<AlgoPerf>(),
            std::mem::offset_of!(AlgoPerf, memory),
            std::mem::offset_of!(AlgoPerf, math_type)
        );
        ours.extend(["fwd", "bwd_data", "bwd_filter"].map(|pass| format!("layout {pass} {layout}")));

        let theirs: std::collections::BTreeSet<&str> = probe.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let ours_set: std::collections::BTreeSet<&str> = ours.iter().map(String::as_str).collect();
        let only_ours: Vec<_> = ours_set.difference(&theirs).collect();
        let only_theirs: Vec<_> = theirs.difference(&ours_set).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "tfkd's declarations differ from cudnn.h:\n  tfkd only:  {only_ours:?}\n  cudnn.h only: {only_theirs:?}"
        );
    }

    #[test]
    fn the_real_library_reads_back_what_tfkd_describes() {
        let Some((api, _)) = real_library() else { return };
        let get = Getters::open(&api.from);
        assert!(api.version >= 8000, "cuDNN version {}", api.version);

        // Each data type's element size, so each DATA_* value means its type.
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let data = data_type(dtype).unwrap();
            let d = Descriptor::tensor(&api, data, [2, 3, 5, 7]).unwrap();
            let mut bytes = 0usize;
            // SAFETY: a set tensor descriptor and a size_t out-pointer.
            api.check(unsafe { (get.tensor_size)(d.raw, &mut bytes) }, "size").unwrap();
            assert_eq!(bytes, 210 * dtype.size_in_bytes(), "{dtype:?}");
        }

        // The zoo's convolutions: cuDNN's output shape is Geometry::y, and the
        // descriptors hold what tfkd set.
        let geometries = [
            ([8, 3, 32, 32], [64, 3, 3, 3], 1, 1, 1),      // stem
            ([8, 64, 17, 17], [128, 64, 3, 3], 1, 2, 1),   // stride 2, odd size
            ([8, 64, 17, 17], [128, 64, 1, 1], 0, 2, 1),   // 1x1 shortcut
            ([8, 3, 5, 5], [16, 3, 7, 7], 3, 1, 1),        // 7x7 on 5x5
            ([8, 96, 15, 15], [96, 1, 3, 3], 1, 2, 96),    // depthwise
            ([8, 512, 8, 8], [512, 64, 3, 3], 1, 1, 8),    // ResNeXt's 8 groups
        ];
        for (x, w, padding, stride, groups) in geometries {
            let g = Geometry { x, w, padding, stride, groups };
            for (data, math) in [(DATA_FLOAT, TENSOR_OP_MATH), (DATA_FLOAT, FMA_MATH), (DATA_BFLOAT16, TENSOR_OP_MATH)] {
                let xd = Descriptor::tensor(&api, data, x).unwrap();
                let wd = Descriptor::filter(&api, data, w).unwrap();
                let cd = Descriptor::convolution(&api, data, padding, stride, groups, math).unwrap();
                let mut y = [0 as c_int; 4];
                let [y0, y1, y2, y3] = &mut y;
                // SAFETY: set descriptors and four int out-pointers.
                api.check(unsafe { (get.output_dim)(cd.raw, xd.raw, wd.raw, y0, y1, y2, y3) }, "output dim").unwrap();
                assert_eq!(y.map(|v| v as usize), g.y(), "{g:?}");

                let mut f = [0 as c_int; 6];
                let [f_data, f_format, f_o, f_c, f_h, f_w] = &mut f;
                // SAFETY: a set filter descriptor and six int out-pointers.
                api.check(unsafe { (get.filter_4d)(wd.raw, f_data, f_format, f_o, f_c, f_h, f_w) }, "filter").unwrap();
                assert_eq!(f, [data, TENSOR_NCHW, w[0] as c_int, w[1] as c_int, w[2] as c_int, w[3] as c_int]);

                let mut c = [0 as c_int; 8];
                let [c_ph, c_pw, c_sh, c_sw, c_dh, c_dw, c_mode, c_compute] = &mut c;
                // SAFETY: a set convolution descriptor and eight int out-pointers.
                api.check(unsafe { (get.conv_2d)(cd.raw, c_ph, c_pw, c_sh, c_sw, c_dh, c_dw, c_mode, c_compute) }, "conv").unwrap();
                let (p, s) = (padding as c_int, stride as c_int);
                assert_eq!(c, [p, p, s, s, 1, 1, CROSS_CORRELATION, DATA_FLOAT]);

                let (mut groups_read, mut math_read) = (0, -1);
                // SAFETY: a set convolution descriptor and int out-pointers.
                unsafe {
                    api.check((get.group_count)(cd.raw, &mut groups_read), "groups").unwrap();
                    api.check((get.math_type)(cd.raw, &mut math_read), "math").unwrap();
                }
                assert_eq!((groups_read as usize, math_read), (groups, math));
            }
        }

        // BatchNorm's parameters are (1, C, 1, 1) f32, also for bf16 and f16
        // activations: what norm/cudnn.rs hands cuDNN.
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x = Descriptor::tensor(&api, data_type(dtype).unwrap(), [4, 6, 5, 5]).unwrap();
            let p = Descriptor::batch_norm_param(&api, &x).unwrap();
            let mut t = [0 as c_int; 9];
            let [t_data, t_n, t_c, t_h, t_w, t_ns, t_cs, t_hs, t_ws] = &mut t;
            // SAFETY: a derived tensor descriptor and nine int out-pointers.
            api.check(unsafe { (get.tensor_4d)(p.raw, t_data, t_n, t_c, t_h, t_w, t_ns, t_cs, t_hs, t_ws) }, "bn").unwrap();
            assert_eq!(t[..5], [DATA_FLOAT, 1, 6, 1, 1], "{dtype:?}");
        }

        // A refused call becomes an error naming the call and cuDNN's words.
        let e = Descriptor::tensor(&api, 12345, [1, 1, 1, 1]).err().expect("a bad data type was accepted").to_string();
        assert!(e.contains("cudnnSetTensor4dDescriptor") && e.contains("CUDNN_STATUS_BAD_PARAM"), "{e}");
    }
}
