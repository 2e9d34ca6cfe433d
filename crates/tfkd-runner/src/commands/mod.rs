//! One function per subcommand.

mod bench_step;
mod download;
mod eval;
mod list_models;
mod reporter;
mod train;

use crate::cli::{Command, ConfigArgs};
use tfkd_runner::ExperimentConfig;

/// Runs a parsed command.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train { config, resume, show_config } => train::run(&config, resume, show_config),
        Command::Eval { config, checkpoint } => eval::run(&config, checkpoint),
        Command::ListModels { classes } => list_models::run(classes),
        Command::Download { dataset, root } => download::run(&dataset, &root),
        Command::BenchStep { models, batch, classes, side, width_divisor, warmup, steps, device, json } => {
            bench_step::run(&bench_step::BenchStepArgs {
                models: &models,
                batch,
                classes,
                side,
                width_divisor,
                warmup,
                steps,
                device: &device,
                json: json.as_deref(),
            })
        }
    }
}

/// Loads the config with the `--set` and `--device` overrides.
fn load_config(args: &ConfigArgs) -> anyhow::Result<ExperimentConfig> {
    let mut overrides = args.overrides.clone();
    if let Some(device) = &args.device {
        overrides.push(format!("device=\"{device}\""));
    }
    Ok(ExperimentConfig::load(&args.config, &overrides)?)
}
