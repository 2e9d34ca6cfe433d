//! One function per subcommand.

mod bench_step;
mod download;
mod eval;
mod list_models;
mod reporter;
mod train;

use crate::cli::{Command, ConfigArgs, DownloadWeights};
use tfkd_runner::{ExperimentConfig, RunOptions};

/// Runs a parsed command.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train { config, resume, auto_resume, show_config, nproc } => {
            let options = RunOptions { resume: resume || auto_resume, require_started: resume, ..Default::default() };
            train::run(&config, &options, show_config, nproc)
        }
        Command::Eval { config, checkpoint } => eval::run(&config, checkpoint),
        Command::ListModels { classes } => list_models::run(classes),
        Command::Download { weights: Some(DownloadWeights::Torchvision { arch, root }), .. } => {
            download::torchvision(arch, root.as_deref())
        }
        // clap requires a dataset when there is no subcommand.
        Command::Download { dataset, root, weights: None } => match dataset {
            Some(dataset) => download::run(dataset, &root),
            None => anyhow::bail!("tfkd download: name a dataset, or `torchvision <ARCH>`"),
        },
        Command::BenchStep { models, batch, classes, side, width_divisor, warmup, steps, device, precision, json } => {
            bench_step::run(&bench_step::BenchStepArgs {
                models: &models,
                batch,
                classes,
                side,
                width_divisor,
                warmup,
                steps,
                device,
                precision,
                json: json.as_deref(),
            })
        }
    }
}

/// Loads the config with the `--set` overrides and checks its schema, then
/// sets `--device` on the typed config. The files it names are probed by
/// the command that uses them (`run_experiment`, `eval`), so that
/// `--show-config` works without the data.
fn load_config(args: &ConfigArgs) -> anyhow::Result<ExperimentConfig> {
    let mut config = ExperimentConfig::load_schema(&args.config, &args.overrides)?;
    if let Some(device) = args.device {
        config.device = device;
    }
    Ok(config)
}
