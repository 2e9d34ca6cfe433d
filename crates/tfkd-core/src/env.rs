//! The environment variables the tfkd libraries read: the one place their
//! names are written, each with its values and effect.

/// `TFKD_CONV`: which convolution [`crate::conv::conv2d`] runs.
///
/// - unset, or any other value: tfkd's own convolution engine (CPU per-image
///   GEMM kernels, depthwise kernels, matrix-product backward passes);
/// - [`CONV_CANDLE`] (`candle`): candle's own `Tensor::conv2d` and its
///   autograd everywhere: the benchmarks' baseline, and an escape hatch should
///   the fast paths misbehave on a device.
///
/// Read once per process, at the first convolution.
pub const CONV: &str = "TFKD_CONV";

/// The value of [`CONV`] that selects candle's own convolution.
pub const CONV_CANDLE: &str = "candle";

/// `RAYON_NUM_THREADS`: the number of threads of rayon's global pool, on
/// which the CPU kernels (convolutions, BatchNorm, pooling, activations,
/// fused losses) and candle's CPU matmul split their work. Read by rayon
/// itself when the pool starts (default: one thread per logical CPU); tfkd
/// never sets it. Results do not depend on it: work is split into chunks
/// whose sizes depend only on the shapes, and partial sums are added in a
/// fixed order.
pub const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";

/// `TORCH_HOME`: PyTorch's cache folder, as torch.hub reads it. tfkd keeps
/// torchvision's published weights where torch.hub does,
/// `$TORCH_HOME/hub/checkpoints/` (`tfkd_zoo::pretrained::checkpoints_dir`),
/// so that a file PyTorch downloaded is found and one tfkd downloaded is
/// PyTorch's. Unset: `$XDG_CACHE_HOME/torch`, else `~/.cache/torch`.
pub const TORCH_HOME: &str = "TORCH_HOME";

/// `XDG_CACHE_HOME`: the user's cache folder; the default of [`TORCH_HOME`]
/// is `torch/` in it.
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";

/// `HOME`: the user's home folder, for the last default of [`TORCH_HOME`]
/// (`~/.cache/torch`) and a leading `~` in it.
pub const HOME: &str = "HOME";

/// `TFKD_CUDNN`: `0` keeps cuDNN unloaded (CUDA convolutions and BatchNorm
/// then take tfkd's own paths). Any other value, or unset: cuDNN is used
/// where it loads. Read once per process (`--features cuda` only).
pub const CUDNN: &str = "TFKD_CUDNN";

/// `TFKD_CUDNN_LIB`: the cuDNN library file to open first (e.g. a wheel's
/// `nvidia/cudnn/lib/libcudnn.so.9`); the loader's search path and the
/// wheel folders beside the CUDA libraries are tried after it.
pub const CUDNN_LIB: &str = "TFKD_CUDNN_LIB";

/// `TFKD_CUDNN_WORKSPACE_MB`: the most scratch memory, in MiB, a cuDNN
/// convolution algorithm may use (default 1024); faster algorithms that
/// need more are passed over. Read once per process.
pub const CUDNN_WORKSPACE_MB: &str = "TFKD_CUDNN_WORKSPACE_MB";

/// `TFKD_CUDNN_DETERMINISTIC`: `1` keeps only the convolution algorithms
/// cuDNN reports as deterministic (PyTorch's `cudnn.deterministic = True`);
/// otherwise the fastest is used, as with `cudnn.benchmark = True`.
pub const CUDNN_DETERMINISTIC: &str = "TFKD_CUDNN_DETERMINISTIC";

/// `TFKD_CUDNN_PROBE`: a developer's check, not a setting. The file that
/// `scripts/gpu/cudnn_probe.cpp` printed from cuDNN's headers; when set
/// (with [`CUDNN_LIB`] naming the library), tfkd-core's cuDNN tests compare
/// every hand-written declaration with it and call the library's
/// descriptor functions, which need no GPU. `scripts/gpu/host_check_cudnn.sh`
/// sets both. Unset: those tests print why they skip.
pub const CUDNN_PROBE: &str = "TFKD_CUDNN_PROBE";

/// `TFKD_DEPTHWISE`: which kernels run f32 depthwise convolutions on CUDA.
/// Unset, or any other value: tfkd's own (`src/cuda/kernels.cu`, the scheme
/// of PyTorch's, which does not use cuDNN for f32 depthwise convolutions);
/// [`DEPTHWISE_CUDNN`] (`cudnn`): cuDNN's grouped convolution, as for every
/// other convolution. Read once per process (`--features cuda` only).
pub const DEPTHWISE: &str = "TFKD_DEPTHWISE";

/// The value of [`DEPTHWISE`] that hands depthwise convolutions to cuDNN.
pub const DEPTHWISE_CUDNN: &str = "cudnn";

/// `TFKD_KEEP_GRAPH`: `1` makes the optimizers' `backward_step` (and the
/// data-parallel step) keep every activation until the step's graph is
/// dropped, as candle's plain `backward` does. Unset, or any other value:
/// the backward pass hands each activation back once no later step of it
/// reads the activation ([`crate::optim::backward`]), as PyTorch frees saved
/// tensors during its backward pass. The same gradients either way; read
/// once per process.
pub const KEEP_GRAPH: &str = "TFKD_KEEP_GRAPH";
