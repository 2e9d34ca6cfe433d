//! Learning-rate schedules as pure functions of (epoch, iteration).
//!
//! The official recipe (docs/PAPER.md §3.1): `lr = cfg_lr × batch/128`; in epoch 0
//! a per-iteration linear warm-up where batch i (1-based) uses
//! `lr·i/(N_iter + 1e-8)`; afterwards `lr·0.2^{#milestones ≤ epoch}` with
//! milestones 60, 120, 160. [`LrSchedule::official`] builds exactly that.

use crate::error::check_param;
use crate::{Error, Result};

/// How the rate decays after the warm-up.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    /// The base rate throughout.
    Constant,
    /// `base·γ^{#{m ∈ milestones : m ≤ epoch}}` (`torch.optim.lr_scheduler.MultiStepLR`).
    MultiStep {
        /// Epochs (0-based) at whose start the rate is multiplied by γ.
        milestones: Vec<usize>,
        /// The factor γ in (0, 1].
        gamma: f64,
    },
    /// `min + (base − min)·(1 + cos(π·epoch/epochs))/2`, per epoch
    /// (`CosineAnnealingLR`'s closed form).
    Cosine {
        /// Total number of epochs of the run.
        epochs: usize,
        /// The final rate.
        min_lr: f64,
    },
}

/// A learning-rate schedule: a base rate, an optional per-iteration linear
/// warm-up over the first epochs, then a [`Decay`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The rate after warm-up and before any decay.
    pub base_lr: f64,
    /// Epochs of linear warm-up (the original's `-warm`, default 1).
    pub warmup_epochs: usize,
    /// Iterations per epoch, counting a last partial batch (`len(loader)`).
    pub iters_per_epoch: usize,
    /// The decay after the warm-up.
    pub decay: Decay,
}

/// `lr × batch_size / reference_batch`: the official code's linear scaling
/// (reference 128 on CIFAR and Tiny-ImageNet, 256 on ImageNet).
pub fn scale_lr_by_batch(lr: f64, batch_size: usize, reference_batch: usize) -> f64 {
    lr * batch_size as f64 / reference_batch as f64
}

impl LrSchedule {
    /// The official CIFAR/Tiny-ImageNet schedule for an already-scaled base
    /// rate: 1 warm-up epoch, then ×0.2 at epochs 60, 120 and 160.
    pub fn official(base_lr: f64, iters_per_epoch: usize) -> Self {
        Self { base_lr, warmup_epochs: crate::recipe::WARMUP_EPOCHS, iters_per_epoch, decay: crate::recipe::decay() }
    }

    /// Checks the rates, γ and the iteration count.
    pub fn validate(&self) -> Result<()> {
        check_param("base_lr", self.base_lr, self.base_lr >= 0.0, "must be >= 0")?;
        if self.warmup_epochs > 0 && self.iters_per_epoch == 0 {
            return Err(Error::InvalidParameter {
                name: "iters_per_epoch",
                value: 0.0,
                expected: "must be > 0 when warmup_epochs > 0".into(),
            });
        }
        match &self.decay {
            Decay::Constant => Ok(()),
            Decay::MultiStep { gamma, .. } => {
                check_param("gamma", *gamma, *gamma > 0.0 && *gamma <= 1.0, "must be in (0, 1]")
            }
            Decay::Cosine { epochs, min_lr } => {
                check_param("epochs", *epochs as f64, *epochs > 0, "must be > 0")?;
                check_param("min_lr", *min_lr, *min_lr >= 0.0 && *min_lr <= self.base_lr, "must be in [0, base_lr]")
            }
        }
    }

    /// The rate for batch `iteration` (0-based) of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize, iteration: usize) -> f64 {
        if epoch < self.warmup_epochs {
            let step = epoch * self.iters_per_epoch + iteration + 1;
            let total = (self.warmup_epochs * self.iters_per_epoch) as f64;
            return self.base_lr * step as f64 / (total + 1e-8);
        }
        match &self.decay {
            Decay::Constant => self.base_lr,
            Decay::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= epoch).count();
                self.base_lr * gamma.powi(passed as i32)
            }
            Decay::Cosine { epochs, min_lr } => {
                let progress = epoch.min(*epochs) as f64 / *epochs as f64;
                min_lr + (self.base_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_schedule_has_the_documented_values() {
        let base = scale_lr_by_batch(0.1, 64, 128);
        assert_eq!(base, 0.05);
        let s = LrSchedule::official(0.1, 391);
        assert!((s.lr(0, 0) - 0.1 / 391.0).abs() < 1e-12);
        assert!((s.lr(0, 390) - 0.1).abs() < 1e-9);
        assert_eq!(s.lr(1, 0), 0.1);
        assert_eq!(s.lr(59, 7), 0.1);
        assert!((s.lr(60, 0) - 0.02).abs() < 1e-15);
        assert!((s.lr(120, 0) - 0.004).abs() < 1e-15);
        assert!((s.lr(199, 0) - 0.0008).abs() < 1e-15);
        s.validate().unwrap();
    }

    #[test]
    fn cosine_runs_from_base_to_min_and_bad_values_are_named() {
        let s = LrSchedule {
            base_lr: 0.1,
            warmup_epochs: 0,
            iters_per_epoch: 0,
            decay: Decay::Cosine { epochs: 10, min_lr: 0.0 },
        };
        assert_eq!(s.lr(0, 0), 0.1);
        assert!((s.lr(5, 0) - 0.05).abs() < 1e-12);
        assert!(s.lr(10, 0).abs() < 1e-12);
        let bad = LrSchedule { decay: Decay::MultiStep { milestones: vec![], gamma: 1.5 }, ..s };
        assert!(bad.validate().unwrap_err().to_string().contains("gamma"));
    }
}
