//! `tfkd-distill`: the training objectives of the paper as one extensible type.
//!
//! A [`Strategy`] turns the student's logits (and, when it has one, the
//! teacher's) into a loss. The seven modes of the paper are the values of
//! [`StrategyConfig`], a serde type read from the experiment config:
//!
//! | `method` | paper | teacher | loss |
//! |---|---|---|---|
//! | `baseline` | plain training | none | cross-entropy |
//! | `lsr` | label smoothing | none | [`LabelSmoothing`](tfkd_core::loss::LabelSmoothing) |
//! | `kd` | Normal KD | a trained, stronger network | `loss_kd` |
//! | `re-kd` | Reversed KD | a trained, *weaker* network | `loss_kd` |
//! | `de-kd` | Defective KD | an early epoch of a baseline run | `loss_kd` |
//! | `tf-kd-self` | Tf-KD_self | the student's own trained baseline | `loss_kd_self` |
//! | `tf-kd-reg` | Tf-KD_reg | the virtual teacher (no network) | `loss_kd_regularization` |
//!
//! The runner only talks to the [`Strategy`] trait: a new method (DKD, say) is
//! a new type implementing it, with no change to the training loop.
//!
//! ```
//! use tfkd_distill::StrategyConfig;
//! use tfkd_core::candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: StrategyConfig = toml::from_str(r#"
//!     method = "tf-kd-reg"
//!     alpha = 0.1
//!     temperature = 20.0
//!     multiplier = 100.0
//! "#)?;
//! let strategy = config.build()?;
//! let logits = Tensor::new(&[[2.0f32, 0.5, -1.0]], &Device::Cpu)?;
//! let labels = Tensor::new(&[0u32], &Device::Cpu)?;
//! let loss = strategy.loss(&logits, None, &labels)?;
//! assert!(loss.total.to_scalar::<f32>()? > 0.0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod config;
mod error;
mod method;
mod strategies;

pub use config::{StrategyConfig, TeacherSource, TeacherSpec};
pub use error::{DistillError, Result};
pub use method::Method;
pub use strategies::{Baseline, Distillation, LabelSmoothingStrategy, VirtualTeacher};
/// The Tf-KD_reg formula of a `tf-kd-reg` strategy's `form` field (the core
/// loss's own type).
pub use tfkd_core::loss::VirtualTeacherForm;

use candle_core::Tensor;
use tfkd_core::loss::LossTerms;

/// A training objective: what the runner minimises for one batch.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// The method's name as written in configs and reports (e.g. `tf-kd-self`;
    /// [`Method::as_str`] for the paper's methods).
    fn name(&self) -> &str;

    /// The teacher network this method distils from, if any. The runner
    /// resolves it, runs it in eval mode without a graph on the same augmented
    /// batch as the student, and passes its logits to [`Strategy::loss`].
    fn teacher(&self) -> Option<&TeacherSpec>;

    /// The loss for one batch.
    ///
    /// # Shapes
    /// `student`: (N, K); `teacher`: (N, K) when [`Strategy::teacher`] is
    /// `Some`; `labels`: (N).
    fn loss(&self, student: &Tensor, teacher: Option<&Tensor>, labels: &Tensor) -> tfkd_core::Result<LossTerms>;
}
