//! # tfkd-zoo
//!
//! Every network of "Revisiting Knowledge Distillation via Label Smoothing
//! Regularization" (Yuan et al., CVPR 2020) on candle, structurally identical to
//! the official PyTorch code (`yuanli2333/Teacher-free-Knowledge-Distillation`,
//! `model/*.py`) and to torchvision for the ImageNet models, with the PyTorch
//! state-dict names, so that PyTorch checkpoints load unchanged.
//!
//! - [`build`] / [`build_with`]: a model by registry name, number of classes and
//!   [`InputSize`] over any [`candle_nn::VarBuilder`] (a `VarMap` to train, loaded
//!   tensors for a teacher: no `Var`, hence no autograd graph).
//! - [`list`], [`entry`], [`param_count`], [`param_count_with`], [`param_shapes`]:
//!   the registry ([`registry`]) and analytic parameter counts (no weight is
//!   allocated).
//! - [`ModelOptions::with_width_divisor`]: the same networks with every
//!   channel count divided by d (same depth, strides and quirks), for fast
//!   experiments; each family's `Config::thinned(d)` implements it.
//! - [`load`], [`read_state_dict`], [`check_state_dict`], [`save_safetensors`]:
//!   `.pth` / `.pth.tar` / `.safetensors` checkpoints, with one error listing
//!   missing, unexpected and mis-shaped tensors.
//! - [`pretrained`]: torchvision's published ImageNet weights (the table of
//!   architectures, files and hash prefixes, and torch.hub's cache folder).
//! - [`ops`]: max-pooling with any kernel / stride / padding (with backward),
//!   global average pooling and channel shuffle.
//!
//! Every model implements [`Model`] (and so `candle_core::ModuleT`): pass
//! `train = true` for batch statistics, running-statistics updates and dropout,
//! `train = false` for evaluation.
#![deny(missing_docs)]

mod autocast;
pub mod checkpoint;
pub mod error;
pub mod layers;
pub mod models;
pub mod ops;
pub mod pretrained;
pub mod pth;
pub mod registry;

pub use checkpoint::{
    check_state_dict, check_tensors, from_state_dict, load, read_state_dict, save_safetensors,
    varmap_state_dict,
};
pub use autocast::with_activation_dtype;
pub use error::{MisShaped, Result, ZooError};
pub use layers::{Dropout, MaskRng};
pub use registry::{
    build, build_with, entry, is_buffer, list, models_markdown, names, param_count, param_count_with,
    param_shapes, record_shapes, trainable_vars, width_markdown, CudaThroughput, InputSize, ModelEntry, ModelOptions,
    CUDA_MEASURED, DEFAULT_DROPOUT_SEED,
};

use candle_core::{ModuleT, Tensor};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// A classification network of the zoo.
///
/// `forward_t(x, train)` (from [`ModuleT`]) equals
/// `forward_head(&forward_features(x, train)?, train)`.
pub trait Model: ModuleT + Send + Sync {
    /// Pooled, flattened features before the classifier.
    ///
    /// # Shapes
    /// `xs`: `[N, 3, H, W]` → `[N, D]`
    fn forward_features(&self, xs: &Tensor, train: bool) -> Result<Tensor>;

    /// The classifier (with the dropout that precedes it, if any).
    ///
    /// # Shapes
    /// `features`: `[N, D]` → `[N, K]`
    fn forward_head(&self, features: &Tensor, train: bool) -> Result<Tensor>;

    /// Number of output classes `K`.
    fn num_classes(&self) -> usize;

    /// Restarts the dropout masks at `seed`: the following train-mode
    /// forward passes draw exactly the masks of this model freshly built with
    /// [`ModelOptions::dropout_seed`] = `seed` (one [`MaskRng`] stream shared
    /// by all the model's dropout layers, consumed in forward order). The
    /// runner calls it at the start of every epoch with a seed derived from
    /// (run seed, epoch), so a resumed run draws the masks of an
    /// uninterrupted one. A no-op for models without dropout.
    fn reseed_dropout(&self, seed: u64);

    /// The dropout masks' generator state, `None` for models without
    /// dropout: [`Model::reseed_dropout`] with it continues the masks from
    /// here (a mid-epoch checkpoint stores it).
    fn dropout_state(&self) -> Option<u64> {
        None
    }
}

/// Implements `ModuleT` as features followed by head.
macro_rules! impl_module_t {
    ($t:ty) => {
        impl candle_core::ModuleT for $t {
            fn forward_t(
                &self,
                xs: &candle_core::Tensor,
                train: bool,
            ) -> candle_core::Result<candle_core::Tensor> {
                let f = $crate::Model::forward_features(self, xs, train)?;
                Ok($crate::Model::forward_head(self, &f, train)?)
            }
        }
    };
}
pub(crate) use impl_module_t;
