//! `tfkd-runner`: experiments from a TOML config, and the `tfkd` command line.
//!
//! [`ExperimentConfig`] describes a run (model, data, optimizer, schedule,
//! strategy, seed, device); [`run_experiment`] trains it with per-epoch
//! evaluation, atomic checkpoints, exact resume and a summary with the best
//! and the last epoch. Teachers that are baselines of the same recipe are
//! trained first when missing (Tf-KD_self's stage one, De-KD's early epochs).
#![deny(missing_docs)]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod alloc;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod launch;
pub mod run_dir;
pub mod teacher;
pub mod train;

pub use alloc::tune_for_training;
pub use config::ExperimentConfig;
pub use error::{Result, RunError};
pub use train::{run_experiment, run_experiment_in, EpochRecord, Reporter, RunOptions, RunOutcome, Silent, Summary};
