//! Resolving a [`TeacherSpec`] into a frozen network: trained first when it
//! is a baseline that does not exist yet (Tf-KD_self's stage one), or
//! torchvision's published ImageNet weights, downloaded into torch.hub's
//! cache when missing (the official ImageNet script's
//! `models.<arch>(pretrained=True)`).

use crate::config::ExperimentConfig;
use crate::error::{Result, RunError};
use crate::train::{run_experiment, Reporter, RunOptions};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use tfkd_distill::{StrategyConfig, TeacherSource, TeacherSpec};
use tfkd_zoo::pretrained::{self, TorchvisionArch};
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
        TeacherSource::Torchvision(arch) => return torchvision_weights(*arch, None, &mut StageProgress::new(reporter)),
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

/// The verified file of torchvision's published `arch` weights in `dir`
/// (default: torch.hub's checkpoints folder, [`pretrained::checkpoints_dir`]),
/// downloaded from `download.pytorch.org` when missing, as torchvision's
/// `pretrained=True` does. A file already there (PyTorch's, or an earlier
/// download) is verified and used; see [`torchvision_weights_from`].
pub fn torchvision_weights(
    arch: TorchvisionArch,
    dir: Option<&Path>,
    reporter: &mut dyn tfkd_data::download::Reporter,
) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => pretrained::checkpoints_dir().ok_or_else(|| {
            crate::error::config_err(
                "strategy.teacher.source.torchvision",
                format!(
                    "torch.hub's cache folder is unknown: none of {}, {} and {} is set; set {} to the folder that \
                     holds (or is to hold) hub/checkpoints/{}",
                    tfkd_core::env::TORCH_HOME,
                    tfkd_core::env::XDG_CACHE_HOME,
                    tfkd_core::env::HOME,
                    tfkd_core::env::TORCH_HOME,
                    arch.file_name()
                ),
            )
        })?,
    };
    torchvision_weights_from(arch, &dir, pretrained::DOWNLOAD_BASE, reporter)
}

/// [`torchvision_weights`] from another server than torchvision's (a mirror,
/// or a test's): `dir/<published name>`, downloaded from
/// `base/<published name>` when missing. The file must match the SHA-256
/// prefix in its published name (torch.hub's check) whatever the server: a
/// download that does not is deleted, and the error names the file, the
/// expected prefix and the hash found.
pub fn torchvision_weights_from(
    arch: TorchvisionArch,
    dir: &Path,
    base_url: &str,
    reporter: &mut dyn tfkd_data::download::Reporter,
) -> Result<PathBuf> {
    let dest = dir.join(arch.file_name());
    Ok(tfkd_data::download::ensure_file(&arch.url_at(base_url), &dest, arch.hash_prefix(), reporter)?)
}

/// A download's progress as the run's stage messages: a line when a step
/// (downloading, verifying) starts, then its percentage every
/// [`StageProgress::EVERY`] while it lasts.
struct StageProgress<'a> {
    reporter: &'a mut dyn Reporter,
    what: String,
    total: Option<u64>,
    last: std::time::Instant,
}

impl<'a> StageProgress<'a> {
    /// How often a long step reports.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(reporter: &'a mut dyn Reporter) -> Self {
        Self { reporter, what: String::new(), total: None, last: std::time::Instant::now() }
    }
}

impl tfkd_data::download::Reporter for StageProgress<'_> {
    fn start(&mut self, what: &str, total: Option<u64>) {
        (self.what, self.total, self.last) = (what.to_string(), total, std::time::Instant::now());
        let size = total.map(|t| format!(" ({:.1} MB)", t as f64 / 1e6)).unwrap_or_default();
        self.reporter.stage(&format!("{what}{size}"));
    }

    fn progress(&mut self, done: u64) {
        if self.last.elapsed() >= Self::EVERY {
            self.last = std::time::Instant::now();
            let share = self.total.filter(|&t| t > 0).map(|t| format!(" ({:.0}%)", 100.0 * done as f64 / t as f64));
            self.reporter.stage(&format!("{}: {:.1} MB{}", self.what, done as f64 / 1e6, share.unwrap_or_default()));
        }
    }

    fn finish(&mut self) {}
}
