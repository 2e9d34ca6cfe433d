//! The official training recipe (docs/PAPER.md §3.1; the official code's CIFAR /
//! Tiny-ImageNet defaults): the one place its numbers are written.
//! [`crate::optim::SgdConfig::default`], [`crate::schedule::LrSchedule::official`]
//! and the runner's config defaults read them.

use crate::optim::SgdConfig;
use crate::schedule::Decay;

/// Mini-batch size (128).
pub const BATCH_SIZE: usize = 128;
/// Base learning rate at [`LR_REFERENCE_BATCH`] (0.1).
pub const LR: f64 = 0.1;
/// The batch size at which [`LR`] applies; the rate scales linearly with the
/// batch (`lr × batch / 128`, the official code's rule).
pub const LR_REFERENCE_BATCH: usize = 128;
/// SGD momentum (0.9).
pub const MOMENTUM: f64 = 0.9;
/// L2 weight decay (5·10⁻⁴).
pub const WEIGHT_DECAY: f64 = 5e-4;
/// Epochs of per-iteration linear warm-up (1, the original's `-warm`).
pub const WARMUP_EPOCHS: usize = 1;
/// Epochs (0-based) at whose start the rate is multiplied by [`GAMMA`].
pub const MILESTONES: [usize; 3] = [60, 120, 160];
/// The multi-step decay factor (0.2).
pub const GAMMA: f64 = 0.2;
/// Training epochs (200).
pub const EPOCHS: usize = 200;

/// The official SGD hyper-parameters: rate [`LR`], momentum [`MOMENTUM`],
/// no dampening, weight decay [`WEIGHT_DECAY`], no Nesterov.
pub fn sgd() -> SgdConfig {
    SgdConfig { lr: LR, momentum: MOMENTUM, dampening: 0.0, weight_decay: WEIGHT_DECAY, nesterov: false }
}

/// The official decay after the warm-up: ×[`GAMMA`] at [`MILESTONES`].
pub fn decay() -> Decay {
    Decay::MultiStep { milestones: MILESTONES.to_vec(), gamma: GAMMA }
}
