//! Resolving a [`TeacherSpec`] into a frozen network: trained first when it
//! is a baseline that does not exist yet (Tf-KD_self's stage one).

use crate::config::ExperimentConfig;
use crate::error::{Result, RunError};
use crate::train::{run_experiment, Reporter, RunOptions};
use candle_core::{DType, Device};
use std::path::PathBuf;
use tfkd_distill::{StrategyConfig, TeacherSource, TeacherSpec};
use tfkd_zoo::{Model, ModelOptions};

/// The config of the baseline run that `teacher_model` comes from: the
/// student's recipe (data, optimizer, schedule, epochs, seed) with plain
/// cross-entropy, at `width_divisor` (the student's when `None`).
/// `keep_epoch` asks it to keep that epoch's checkpoint.
pub fn baseline_config(
    student: &ExperimentConfig,
    teacher_model: &str,
    width_divisor: Option<usize>,
    keep_epoch: Option<usize>,
) -> ExperimentConfig {
    let mut c = student.clone();
    c.name = None;
    c.model.name = teacher_model.to_string();
    c.model.width_divisor = width_divisor.unwrap_or(student.model.width_divisor);
    c.strategy = StrategyConfig::Baseline {};
    c.keep_epochs = keep_epoch.into_iter().collect();
    c
}

/// Finds or trains the teacher's weights; returns the file to load.
pub fn teacher_checkpoint(
    student: &ExperimentConfig,
    spec: &TeacherSpec,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<PathBuf> {
    let model = spec.model.as_deref().unwrap_or(&student.model.name);
    let (keep, file) = match &spec.source {
        TeacherSource::Checkpoint(path) => return Ok(path.clone()),
        TeacherSource::Baseline => (None, crate::train::BEST.to_string()),
        TeacherSource::BaselineEpoch(e) => (Some(*e), crate::train::epoch_file(*e)),
    };
    let config = baseline_config(student, model, spec.width_divisor, keep);
    let path = config.run_dir().join(&file);
    if !path.is_file() {
        if crate::run_dir::is_finished(&config.run_dir()) {
            return Err(RunError::Checkpoint {
                path,
                reason: format!(
                    "the teacher's baseline run {} is finished but did not keep this checkpoint; \
                     remove that run directory to retrain it with keep_epochs = [{}]",
                    config.run_dir().display(),
                    keep.unwrap_or(0)
                ),
            });
        }
        reporter.stage(&format!("training the teacher first: {} (stage one)", config.run_name()));
        run_experiment(&config, &RunOptions { resume: true, require_started: false, ..*options }, reporter)?;
    }
    Ok(path)
}

/// Loads a teacher from a checkpoint (`.safetensors`, `.pth`, `.pth.tar`):
/// plain tensors, no `Var`, so its forward never builds a graph.
pub fn load_teacher(model: &str, opts: &ModelOptions, path: &PathBuf, device: &Device) -> Result<Box<dyn Model>> {
    let mut tensors = tfkd_zoo::read_state_dict(path)?;
    tensors.retain(|name, _| !name.starts_with(crate::checkpoint::OPTIM_PREFIX));
    Ok(tfkd_zoo::checkpoint::from_state_dict(model, opts, tensors, &path.display().to_string(), DType::F32, device)?)
}
