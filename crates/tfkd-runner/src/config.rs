//! The experiment config: one TOML file, with `--set key=value` overrides,
//! validated as a whole before anything is trained.

use crate::error::{config_err, io_err, Result, RunError};
use std::path::{Path, PathBuf};
use tfkd_core::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use tfkd_core::schedule::{scale_lr_by_batch, Decay, LrSchedule};
use tfkd_distill::StrategyConfig;

use crate::device::DeviceSpec;

/// A whole experiment: what to train, on what, how, and where to write it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name: the run directory is `<out_dir>/<name>`. Default:
    /// `<dataset>-<model>-<method>-s<seed>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The seed of every random stream: initialisation, shuffling,
    /// augmentation and dropout (`[random]` says how each is derived).
    #[serde(default)]
    pub seed: u64,
    /// How the random streams derive from `seed`.
    #[serde(default)]
    pub random: RandomConfig,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// The arithmetic: `tf32` (default: f32 convolutions on CUDA may use
    /// TF32 tensor cores, as PyTorch's do; no effect elsewhere), `f32`
    /// (strict f32) or `bf16` (autocast-style: bf16 activations, so bf16
    /// convolutions and matrix products; f32 master weights, optimizer,
    /// BatchNorm statistics and loss; for GPUs). Part of the run's identity
    /// when not the default.
    #[serde(default, skip_serializing_if = "tfkd_core::precision::Precision::is_default")]
    pub precision: tfkd_core::precision::Precision,
    /// Number of training epochs.
    pub epochs: usize,
    /// Data-parallel replicas (`tfkd train --nproc N`): each trains on its
    /// share of every batch (`optim.batch_size` is the global batch, the
    /// learning rate is per global batch), gradients are summed before every
    /// step, and BatchNorm statistics stay per replica, as under PyTorch's
    /// `DataParallel`; replica 0's are checkpointed. Part of the run's
    /// identity when above 1 (per-replica BatchNorm changes the numbers).
    #[serde(default = "one_usize", skip_serializing_if = "is_one")]
    pub replicas: usize,
    /// Parent directory of run directories.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Epochs (1-based) after which a named checkpoint `epoch-E.safetensors`
    /// is kept, e.g. for De-KD teachers.
    #[serde(default)]
    pub keep_epochs: Vec<usize>,
    /// The network.
    pub model: ModelConfig,
    /// The data.
    pub data: DataConfig,
    /// The optimizer and batch size.
    #[serde(default)]
    pub optim: OptimConfig,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// The training objective.
    pub strategy: StrategyConfig,
}

fn default_out_dir() -> PathBuf {
    "runs".into()
}

/// The network to train.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Registry name (`tfkd list-models`).
    pub name: String,
    /// Every channel count of the network divided by this (1: the paper's
    /// network). Keeps depth and structure: for scaled-down experiments.
    #[serde(default = "one_usize", skip_serializing_if = "is_one")]
    pub width_divisor: usize,
}

fn one_usize() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Which dataset, where, and how it is augmented.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset (see [`crate::data::DatasetKind`]).
    pub dataset: crate::data::DatasetKind,
    /// The folder holding the dataset's files.
    pub root: PathBuf,
    /// Train-time augmentation as the original (`augmentation = "yes"`).
    #[serde(default = "yes")]
    pub augmentation: bool,
    /// Use only the first N training samples (0: all).
    #[serde(default)]
    pub train_subset: usize,
    /// Use only the first N test samples (0: all).
    #[serde(default)]
    pub test_subset: usize,
    /// Drop the last training batch of every epoch when it is smaller than
    /// the batch size. The official code keeps it (`drop_last=False`, the
    /// default); a last batch of one image cannot be trained with BatchNorm
    /// ([`RunError::SingleImageBatch`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub drop_last: bool,
    /// Images per evaluation batch (0: the training batch size). Evaluation
    /// treats every image on its own, so this trades memory for speed and
    /// is not part of a run's identity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_batch_size: usize,
    /// Loader worker threads.
    #[serde(default = "two")]
    pub threads: usize,
}

fn is_false(v: &bool) -> bool {
    !*v
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn yes() -> bool {
    true
}
fn two() -> usize {
    2
}

/// Which optimizer (`optim.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (the official recipe).
    #[default]
    Sgd,
    /// `torch.optim.Adam` (what the official code uses for its plain CNN).
    Adam,
}

impl OptimizerKind {
    fn is_sgd(&self) -> bool {
        *self == OptimizerKind::Sgd
    }
}

/// Where a run's random streams come from. Always written into the run's
/// config, so that two runs name their streams alike or say they differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomConfig {
    /// The data order, augmentation and dropout streams. Default `run`:
    /// `seed` mixed with the run's method and network, so that a student
    /// never replays the batches of its teacher's baseline run with the same
    /// seed (Tf-KD_self's student and teacher are the same network, and the
    /// official code's teacher draws random numbers before the first shuffle).
    pub data: StreamKey,
    /// The initial weights. Default `seed`: a student starts from the initial
    /// weights of its same-network teacher's baseline run with the same seed,
    /// as the official code's fixed global seed (230) gives; `run` makes them
    /// independent.
    pub init: StreamKey,
}

impl Default for RandomConfig {
    fn default() -> Self {
        RandomConfig { data: StreamKey::Run, init: StreamKey::Seed }
    }
}

/// What a random stream is derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKey {
    /// `seed` alone: every run with this seed draws the same stream.
    Seed,
    /// `seed` and the run's method and network (`<method>/<model>`).
    Run,
}

/// The optimizer and the batch size (the official recipe by default: SGD).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `sgd` (default) or `adam`.
    #[serde(skip_serializing_if = "OptimizerKind::is_sgd")]
    pub kind: OptimizerKind,
    /// Samples per batch.
    pub batch_size: usize,
    /// Learning rate before batch scaling (`learning_rate` of params.json).
    pub lr: f64,
    /// The effective rate is `lr × batch_size / lr_reference_batch` (128 in
    /// the official CIFAR code, 256 on ImageNet; 0 disables scaling).
    pub lr_reference_batch: usize,
    /// SGD's momentum (Adam does not use it).
    pub momentum: f64,
    /// L2 weight decay on every parameter (BN and biases included), added
    /// to the gradient by both optimizers, as PyTorch's do. The official
    /// Adam runs use 0.
    pub weight_decay: f64,
    /// SGD's Nesterov momentum.
    pub nesterov: bool,
    /// Adam's (β₁, β₂); only with `kind = "adam"` (default (0.9, 0.999)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub betas: Option<(f64, f64)>,
    /// Adam's ε; only with `kind = "adam"` (default 1e-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        use tfkd_core::recipe as r;
        Self {
            kind: OptimizerKind::Sgd,
            batch_size: r::BATCH_SIZE,
            lr: r::LR,
            lr_reference_batch: r::LR_REFERENCE_BATCH,
            momentum: r::MOMENTUM,
            weight_decay: r::WEIGHT_DECAY,
            nesterov: false,
            betas: None,
            eps: None,
        }
    }
}

impl OptimConfig {
    /// The learning rate after batch scaling.
    pub fn effective_lr(&self) -> f64 {
        if self.lr_reference_batch == 0 {
            self.lr
        } else {
            scale_lr_by_batch(self.lr, self.batch_size, self.lr_reference_batch)
        }
    }

    /// The optimizer and its hyper-parameters.
    pub fn optimizer(&self) -> OptimizerConfig {
        match self.kind {
            OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
                lr: self.effective_lr(),
                momentum: self.momentum,
                dampening: 0.0,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
            }),
            OptimizerKind::Adam => {
                let defaults = AdamConfig::default();
                let (beta1, beta2) = self.betas.unwrap_or((defaults.beta1, defaults.beta2));
                OptimizerConfig::Adam(AdamConfig {
                    lr: self.effective_lr(),
                    beta1,
                    beta2,
                    eps: self.eps.unwrap_or(defaults.eps),
                    weight_decay: self.weight_decay,
                })
            }
        }
    }

    /// Fields that belong to the other optimizer are errors, not ignored.
    fn check_kind(&self) -> Result<()> {
        match self.kind {
            OptimizerKind::Sgd if self.betas.is_some() => Err(config_err("optim.betas", "is Adam's; set optim.kind = \"adam\"")),
            OptimizerKind::Sgd if self.eps.is_some() => Err(config_err("optim.eps", "is Adam's; set optim.kind = \"adam\"")),
            OptimizerKind::Adam if self.nesterov => Err(config_err("optim.nesterov", "is SGD's; Adam has no Nesterov momentum")),
            _ => Ok(()),
        }
    }
}

/// Warm-up and decay (the official recipe by default).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Epochs of per-iteration linear warm-up.
    pub warmup_epochs: usize,
    /// Decay after the warm-up.
    pub decay: Decay,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { warmup_epochs: tfkd_core::recipe::WARMUP_EPOCHS, decay: tfkd_core::recipe::decay() }
    }
}

impl ExperimentConfig {
    /// Reads a config file and applies `key=value` overrides (dotted keys,
    /// TOML values; a value that is not valid TOML is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let config = Self::load_schema(path, overrides)?;
        config.check_files()?;
        Ok(config)
    }

    /// [`ExperimentConfig::load`] without probing the files the config names
    /// (for showing a config on a machine without its data): reads, applies
    /// the overrides, resolves relative paths and validates the schema.
    pub fn load_schema(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let mut value: toml::Value = toml::from_str(&text)
            .map_err(|e| RunError::ConfigFile { path: path.to_path_buf(), reason: e.to_string() })?;
        apply_overrides(&mut value, overrides)?;
        let mut config: Self = value
            .try_into()
            .map_err(|e: toml::de::Error| RunError::ConfigFile { path: path.to_path_buf(), reason: e.to_string() })?;
        // Relative paths in a config file are relative to the file.
        let base = path.parent().unwrap_or(Path::new(""));
        config.data.root = base.join(&config.data.root);
        config.out_dir = base.join(&config.out_dir);
        config.validate()?;
        Ok(config)
    }

    /// Parses a config from TOML text (paths stay as written) and validates
    /// its schema ([`ExperimentConfig::validate`]; files are not probed).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|e| RunError::ConfigFile { path: "<text>".into(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML (what is written into the run directory).
    pub fn try_to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| config_err("<config>", format!("cannot be written as TOML: {e}")))
    }

    /// The config as TOML, for display; a config that cannot be written
    /// (none the schema accepts) shows the reason as a comment.
    pub fn to_toml(&self) -> String {
        self.try_to_toml().unwrap_or_else(|e| format!("# {e}"))
    }

    /// The config without the fields that do not change a run's numbers:
    /// name, output folder, kept epochs, device and loader threads. Two runs
    /// with equal identities train the same network on the same batches.
    pub fn identity(&self) -> ExperimentConfig {
        let mut c = ExperimentConfig {
            name: None,
            out_dir: PathBuf::new(),
            keep_epochs: Vec::new(),
            device: DeviceSpec::Cpu,
            ..self.clone()
        };
        c.data.threads = 0;
        c.data.eval_batch_size = 0;
        c
    }

    /// The seed of the data order, augmentation and dropout streams
    /// (`random.data`).
    pub fn data_seed(&self) -> u64 {
        self.stream_seed(self.random.data, "data")
    }

    /// The seed of the initial weights (`random.init`).
    pub fn init_seed(&self) -> u64 {
        self.stream_seed(self.random.init, "init")
    }

    fn stream_seed(&self, key: StreamKey, stream: &str) -> u64 {
        use rand::RngCore;
        match key {
            StreamKey::Seed => self.seed,
            // The method and network only: not paths, devices or replicas, so
            // that a run's numbers do not depend on where or how it runs.
            StreamKey::Run => {
                let name = format!("{stream}/{}/{}", self.strategy.method(), self.model.name);
                tfkd_core::rng::SeededRng::named(self.seed, &name).next_u64()
            }
        }
    }

    /// The run name, explicit or derived.
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!("{}-{}-{}-s{}", self.data.dataset.name(), self.model.name, self.strategy.method(), self.seed)
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(self.run_name())
    }

    /// The learning-rate schedule for `iters_per_epoch` batches per epoch.
    pub fn lr_schedule(&self, iters_per_epoch: usize) -> LrSchedule {
        LrSchedule {
            base_lr: self.optim.effective_lr(),
            warmup_epochs: self.schedule.warmup_epochs,
            iters_per_epoch,
            decay: self.schedule.decay.clone(),
        }
    }

    /// Checks the schema: every field that can be checked without touching
    /// the filesystem, naming the first bad one. [`ExperimentConfig::check_files`]
    /// probes the files the config names.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(config_err("epochs", "must be at least 1"));
        }
        if self.optim.batch_size == 0 {
            return Err(config_err("optim.batch_size", "must be at least 1"));
        }
        if self.replicas == 0 {
            return Err(config_err("replicas", "must be at least 1"));
        }
        if let Some(why) = self.precision.cpu_refusal().filter(|_| self.device.is_cpu()) {
            return Err(config_err("precision", format!("\"{}\" on device \"cpu\": {why}", self.precision)));
        }
        if self.optim.batch_size < self.replicas {
            return Err(config_err(
                "optim.batch_size",
                format!("{} images cannot be shared by {} replicas", self.optim.batch_size, self.replicas),
            ));
        }
        if let Some(e) = self.keep_epochs.iter().find(|&&e| e == 0 || e > self.epochs) {
            return Err(config_err("keep_epochs", format!("epoch {e} is outside 1..={}", self.epochs)));
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                return Err(config_err("name", format!("{name:?} is not a valid directory name")));
            }
        }
        self.optim.check_kind()?;
        self.optim.optimizer().validate().map_err(|e| config_err("optim", e.to_string()))?;
        self.lr_schedule(1).validate().map_err(|e| config_err("schedule", e.to_string()))?;
        tfkd_zoo::entry(&self.model.name).map_err(|e| config_err("model.name", e.to_string()))?;
        let strategy = self.strategy.build().map_err(|e| config_err("strategy", e.to_string()))?;
        if let Some(teacher) = strategy.teacher() {
            if let Some(model) = &teacher.model {
                tfkd_zoo::entry(model).map_err(|e| config_err("strategy.teacher.model", e.to_string()))?;
            }
            if let tfkd_distill::TeacherSource::BaselineEpoch(e) = teacher.source {
                if e == 0 {
                    return Err(config_err("strategy.teacher.source.baseline-epoch", "epochs are 1-based"));
                }
            }
            if let tfkd_distill::TeacherSource::Torchvision(arch) = teacher.source {
                self.check_torchvision_teacher(arch)?;
            }
        }
        Ok(())
    }

    /// A torchvision teacher's published weights classify ImageNet's 1000
    /// classes at 224×224, so the student must learn ImageNet; a Tf-KD_self
    /// teacher is the student's own architecture.
    fn check_torchvision_teacher(&self, arch: tfkd_zoo::pretrained::TorchvisionArch) -> Result<()> {
        let self_teacher = self.strategy.method() == tfkd_distill::Method::TfKdSelf;
        let field = if self_teacher { "strategy.source.torchvision" } else { "strategy.teacher.source.torchvision" };
        if self.data.dataset != crate::data::DatasetKind::Imagenet {
            return Err(config_err(
                field,
                format!(
                    "torchvision's {arch} weights classify ImageNet's {} classes, but data.dataset = \"{}\"; \
                     a torchvision teacher needs an ImageNet student (data.dataset = \"imagenet\")",
                    tfkd_zoo::pretrained::NUM_CLASSES,
                    self.data.dataset
                ),
            ));
        }
        if self_teacher && self.model.name != arch.model() {
            return Err(config_err(
                field,
                format!(
                    "a tf-kd-self teacher is the student's own architecture: \"{arch}\" is {}, the student is {}",
                    arch.model(),
                    self.model.name
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the files and folders the config names exist: the data
    /// root and a teacher checkpoint.
    pub fn check_files(&self) -> Result<()> {
        let strategy = self.strategy.build().map_err(|e| config_err("strategy", e.to_string()))?;
        if let Some(teacher) = strategy.teacher() {
            if let tfkd_distill::TeacherSource::Checkpoint(path) = &teacher.source {
                if !path.is_file() {
                    let what = if path.is_dir() { "is a directory, not a checkpoint file" } else { "does not exist" };
                    return Err(config_err("strategy.teacher.source.checkpoint", format!("{} {what}", path.display())));
                }
            }
        }
        if !self.data.root.is_dir() {
            let what = if self.data.root.exists() { "is not a directory" } else { "does not exist" };
            return Err(config_err(
                "data.root",
                format!("{} {what}{}", self.data.root.display(), self.data.dataset.download_hint()),
            ));
        }
        Ok(())
    }
}

fn apply_overrides(value: &mut toml::Value, overrides: &[String]) -> Result<()> {
    for item in overrides {
        let (key, raw) = item
            .split_once('=')
            .ok_or_else(|| config_err(item.as_str(), "an override is written key=value, e.g. optim.lr=0.05"))?;
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let mut node = &mut *value;
        let parts: Vec<&str> = key.trim().split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let table = node
                .as_table_mut()
                .ok_or_else(|| config_err(key, format!("`{}` is not a table", parts[..i].join("."))))?;
            if i + 1 == parts.len() {
                table.insert(part.to_string(), parsed.clone());
                break;
            }
            node = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        epochs = 3
        [model]
        name = "cnn"
        [data]
        dataset = "digits"
        root = "."
        [strategy]
        method = "baseline"
    "#;

    #[test]
    fn defaults_are_the_official_recipe() {
        let c = ExperimentConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(c.optim, OptimConfig::default());
        assert_eq!(c.optim.effective_lr(), 0.1);
        assert_eq!(c.schedule.warmup_epochs, 1);
        assert_eq!(c.run_name(), "digits-cnn-baseline-s0");
        let again = ExperimentConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn optimizer_fields_belong_to_their_optimizer() {
        let c = ExperimentConfig::from_toml(MINIMAL).unwrap();
        assert!(matches!(c.optim.optimizer(), OptimizerConfig::Sgd(_)));
        let with = |extra: &str| ExperimentConfig::from_toml(&MINIMAL.replace("[model]", &format!("[optim]\n{extra}\n[model]")));
        let adam = with("kind = \"adam\"\nlr = 0.001\nweight_decay = 0.0\nbetas = [0.8, 0.99]").unwrap();
        match adam.optim.optimizer() {
            OptimizerConfig::Adam(a) => assert_eq!((a.beta1, a.beta2, a.eps, a.weight_decay), (0.8, 0.99, 1e-8, 0.0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ExperimentConfig::from_toml(&adam.to_toml()).unwrap(), adam);
        for (extra, field) in [
            ("betas = [0.9, 0.99]", "optim.betas"),
            ("eps = 1e-6", "optim.eps"),
            ("kind = \"adam\"\nnesterov = true", "optim.nesterov"),
            ("kind = \"adam\"\nbetas = [1.0, 0.9]", "beta1"),
            ("kind = \"adamw\"", "kind"),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn a_self_student_draws_its_own_batches_and_by_default_its_teachers_initial_weights() {
        let student = ExperimentConfig::from_toml(&MINIMAL.replace(
            "method = \"baseline\"",
            "method = \"tf-kd-self\"\nalpha = 0.9\ntemperature = 20.0\nmultiplier = 1.0",
        ))
        .unwrap();
        let teacher = crate::teacher::baseline_config(&student, "cnn", None, None);
        assert_eq!(teacher.seed, student.seed);
        assert_ne!(student.data_seed(), teacher.data_seed(), "the student replays its teacher's batches");
        assert_eq!(student.init_seed(), teacher.init_seed());
        assert_eq!(student.init_seed(), student.seed);
        // The written config says so, and reads back.
        let text = student.to_toml();
        assert!(text.contains("[random]") && text.contains("data = \"run\"") && text.contains("init = \"seed\""), "{text}");
        assert_eq!(ExperimentConfig::from_toml(&text).unwrap(), student);
        // Independent initialisation, or the seed alone for the data too.
        let mut independent = student.clone();
        independent.random.init = StreamKey::Run;
        assert_ne!(independent.init_seed(), crate::teacher::baseline_config(&independent, "cnn", None, None).init_seed());
        let mut replay = student.clone();
        replay.random.data = StreamKey::Seed;
        assert_eq!(replay.data_seed(), replay.seed);
        // Streams do not depend on where or how the run executes.
        let mut elsewhere = student.clone();
        elsewhere.out_dir = "/elsewhere".into();
        elsewhere.replicas = 2;
        assert_eq!((elsewhere.data_seed(), elsewhere.init_seed()), (student.data_seed(), student.init_seed()));
        let err = ExperimentConfig::from_toml(&format!("{MINIMAL}\n[random]\ndata = \"teacher\"\n")).unwrap_err().to_string();
        assert!(err.contains("random") || err.contains("teacher"), "{err}");
    }

    #[test]
    fn every_dataset_is_written_in_a_config_as_it_is_named() {
        for kind in crate::data::DatasetKind::ALL {
            let text = MINIMAL.replace("dataset = \"digits\"", &format!("dataset = \"{}\"", kind.name()));
            let c = ExperimentConfig::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert_eq!(c.data.dataset, kind);
            assert!(c.to_toml().contains(&format!("dataset = \"{}\"", kind.name())), "{}", kind.name());
        }
    }

    #[test]
    fn overrides_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exp.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = ExperimentConfig::load(&path, &["optim.batch_size=64".into(), "strategy.method=\"lsr\"".into(), "seed=7".into()])
            .unwrap();
        assert_eq!(c.optim.batch_size, 64);
        assert_eq!(c.optim.effective_lr(), 0.05);
        assert_eq!(c.strategy.method(), "lsr");
        assert_eq!(c.seed, 7);
        let err = |o: &str| ExperimentConfig::load(&path, &[o.to_string()]).unwrap_err().to_string();
        assert!(err("optim.batch_size=0").contains("optim.batch_size"));
        assert!(err("model.name=resnet1000").contains("model.name"));
        assert!(err("optim.lrr=0.1").contains("lrr"));
        assert!(err("epochs=0").contains("epochs"));
        assert!(err("device=tpu").contains("device"));
        assert!(err("data.root=\"missing-dir\"").contains("data.root"));
        assert!(err("strategy.alpha=2").contains("alpha"));
        assert!(err("keep_epochs=[9]").contains("keep_epochs"));
        assert!(err("precision=\"fp8\"").contains("fp8"));
        let bf16_on_cpu = err("precision=\"bf16\"");
        assert!(bf16_on_cpu.contains("precision") && bf16_on_cpu.contains("GPU"), "{bf16_on_cpu}");
        let c = ExperimentConfig::load(&path, &["precision=\"f32\"".into()]).unwrap();
        assert_eq!(c.precision, tfkd_core::precision::Precision::F32);
        assert_ne!(c.identity(), ExperimentConfig::load(&path, &[]).unwrap().identity(), "precision is part of a run's identity");
        let err = ExperimentConfig::load(&dir.path().join("nope.toml"), &[]).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }
}
