//! `tfkd-core`: the tensors-and-losses crate of tfkd.
//!
//! Everything the paper's training recipe needs that candle lacks, usable on
//! its own from any candle code:
//!
//! * [`loss`]: cross-entropy, KL with an explicit reduction, LSR, KD
//!   (`loss_kd`), Tf-KD_self (`loss_kd_self`) and Tf-KD_reg
//!   (`loss_kd_regularization`), computed exactly as the official PyTorch code
//!   does, with the paper's written forms as named options;
//! * [`optim`]: SGD with momentum, Nesterov and weight decay (PyTorch's rule);
//! * [`schedule`]: the official warm-up + multi-step schedule, cosine;
//! * [`recipe`]: the official recipe's numbers (batch, rate, momentum, weight
//!   decay, warm-up, milestones), written once;
//! * [`rng`] and [`init`]: seeded, serialisable randomness and PyTorch's
//!   default initialisers (candle's CPU RNG cannot be seeded);
//! * [`metrics`]: top-1 / top-5 accuracy;
//! * [`conv`] and [`norm`]: convolutions (dense, grouped, depthwise) and
//!   training-mode BatchNorm with fused CPU kernels and analytic backward
//!   passes (candle's composed versions dominate a CNN step on the CPU);
//! * [`activation`]: ReLU6 as one op with PyTorch's gradient;
//! * [`pool`]: max pooling with any kernel, stride and padding, with a
//!   backward pass (candle has none for most of them);
//! * [`shuffle`]: ShuffleNetV2's concatenate-and-shuffle as one op;
//! * [`precision`]: TF32 or strict f32 for GPU convolutions, and
//!   [`cudnn`]: cuDNN loaded at run time (used with `--features cuda`);
//! * [`collective`]: the gradient all-reduce of data-parallel training,
//!   behind a small trait (threads of one process; NCCL plugs in);
//! * [`graph`]: the activation memory a training graph keeps alive;
//! * [`env`]: the environment variables the libraries read.
//!
//! ```
//! use tfkd_core::candle_core::{Device, Tensor, Var};
//! use tfkd_core::loss::KdLoss;
//!
//! # fn main() -> tfkd_core::Result<()> {
//! let dev = Device::Cpu;
//! let student = Var::new(&[[2.0f32, 0.5, -1.0], [0.1, 0.2, 3.0]], &dev)?;
//! let teacher = Tensor::new(&[[3.0f32, 1.0, -2.0], [0.0, 0.0, 4.0]], &dev)?;
//! let labels = Tensor::new(&[0u32, 2], &dev)?;
//! // Normal KD as the official code computes it: α = 0.95, T = 20.
//! let loss = KdLoss::official(0.95, 20.0).forward(&student, &teacher, &labels)?;
//! let grads = loss.total.backward()?;
//! let d_student = grads.get(&student).expect("the student logits get a gradient");
//! assert_eq!(d_student.dims(), &[2, 3]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod activation;
pub mod collective;
pub mod conv;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod cudnn;
pub mod env;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu_memory;
pub mod graph;
pub mod init;
pub mod loss;
pub mod metrics;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod precision;
pub mod recipe;
pub mod rng;
pub mod schedule;
pub mod shuffle;

pub use error::{Error, Result};

/// True where tfkd's own kernels run for `t`: on the CPU with f32/f64
/// (`cpu.rs`), or where [`own_cuda_kernels`] does; elsewhere the ops take
/// candle's composed paths.
pub(crate) fn own_kernels(t: &candle_core::Tensor) -> bool {
    (t.device().is_cpu() && cpu::supported(t.dtype())) || own_cuda_kernels(t)
}

/// True where tfkd's own CUDA kernels (`cuda.rs`) run for `t`: with
/// `--features cuda`, f32 tensors on a GPU.
pub(crate) fn own_cuda_kernels(t: &candle_core::Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::supported(t.device(), t.dtype())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        false
    }
}
pub use {candle_core, candle_nn};
