//! The clap definition of `tfkd`; doc comments are the help text.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tfkd_runner::data::DatasetKind;
use tfkd_runner::device::DeviceSpec;
use tfkd_zoo::pretrained::TorchvisionArch;

/// Teacher-free knowledge distillation on candle: train and evaluate the
/// models and methods of "Revisiting Knowledge Distillation via Label
/// Smoothing Regularization" (CVPR 2020).
#[derive(Debug, Parser)]
#[command(name = "tfkd", version)]
pub struct Cli {
    /// More logs (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars, only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Config and overrides shared by `train` and `eval`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The experiment config (TOML).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Override a config field, e.g. `--set optim.lr=0.05 --set strategy.alpha=0.9`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// `cpu`, `cuda`, `cuda:N` or `metal` (overrides the config's `device`).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one experiment (its teacher first, when that is a missing baseline).
    Train {
        /// The config.
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue a started run from its last checkpoint; a run with no
        /// finished epoch is an error (the run name follows dataset, model,
        /// method and seed unless `name` is set).
        #[arg(long, conflicts_with = "auto_resume")]
        resume: bool,
        /// Start the run, or continue it when it has a finished epoch: for
        /// scripts that relaunch the same command (a scheduler's requeue).
        #[arg(long)]
        auto_resume: bool,
        /// Print the resolved config and exit.
        #[arg(long)]
        show_config: bool,
        /// Data-parallel replicas (the config's `replicas`): each trains on
        /// its share of every batch, gradients are summed before each step.
        /// Today the replicas are threads of this process on its device.
        #[arg(long, value_name = "N")]
        nproc: Option<usize>,
    },
    /// Evaluate a checkpoint on the config's test set.
    Eval {
        /// The config (dataset, model).
        #[command(flatten)]
        config: ConfigArgs,
        /// The weights: `.safetensors`, `.pth` or `.pth.tar`; default: the run's best.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// List the model registry with parameter counts.
    ListModels {
        /// Number of classes for the counts.
        #[arg(long, default_value_t = 100)]
        classes: usize,
    },
    /// Download and verify a dataset (cifar10, cifar100, tiny-imagenet), or
    /// torchvision's published ImageNet weights (`download torchvision <ARCH>`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Download {
        /// Which dataset: cifar10, cifar100 or tiny-imagenet.
        #[arg(required = true)]
        dataset: Option<DatasetKind>,
        /// The folder to put it in.
        #[arg(long, default_value = "data")]
        root: PathBuf,
        /// Weights instead of a dataset.
        #[command(subcommand)]
        weights: Option<DownloadWeights>,
    },
    /// Time whole training steps (forward, cross-entropy, backward, SGD) on random data.
    BenchStep {
        /// Registry names, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "cnn,resnet18,mobilenet_v2,shufflenet_v2")]
        models: Vec<String>,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Number of classes.
        #[arg(long, default_value_t = 100)]
        classes: usize,
        /// Input side (32, 64 or 224).
        #[arg(long, default_value_t = 32)]
        side: usize,
        /// Divide every model's channel widths by this.
        #[arg(long, default_value_t = 1)]
        width_divisor: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// `cpu`, `cuda`, `cuda:N` or `metal`.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// GPU arithmetic: `tf32` (TF32 convolutions, PyTorch's default),
        /// `f32` (strict) or `bf16` (bf16 activations, f32 master weights).
        #[arg(long, default_value = "tf32")]
        precision: tfkd_core::precision::Precision,
        /// Append one JSON line per model to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// What `tfkd download` fetches besides datasets.
#[derive(Debug, Subcommand)]
pub enum DownloadWeights {
    /// torchvision's published ImageNet weights of ARCH, a teacher source.
    ///
    /// The IMAGENET1K_V1 file that `pretrained=True` loads and a
    /// `{ torchvision = "ARCH" }` teacher uses, verified against the SHA-256
    /// prefix in its name and kept where torch.hub keeps it:
    /// $TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to
    /// $XDG_CACHE_HOME/torch, else ~/.cache/torch). A verified file already
    /// there is not downloaded again.
    Torchvision {
        /// resnet18, resnet50, densenet121 or resnext101_32x8d.
        arch: TorchvisionArch,
        /// The folder to put the file in, instead of torch.hub's.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// Logs to stderr; `-v` raises the level, `RUST_LOG` overrides.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal (not in a scheduler's log file), and never
    // with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .try_init();
}
