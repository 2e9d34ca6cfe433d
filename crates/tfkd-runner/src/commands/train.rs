//! `tfkd train`.

use super::reporter::Bars;
use crate::cli::ConfigArgs;
use tfkd_runner::{run_experiment, RunOptions};

pub fn run(args: &ConfigArgs, options: &RunOptions, show_config: bool, nproc: Option<usize>) -> anyhow::Result<()> {
    let mut config = super::load_config(args)?;
    if let Some(n) = nproc {
        config.replicas = n;
        config.validate()?;
    }
    if show_config {
        if config.replicas > 1 {
            let (b, r) = (config.optim.batch_size, config.replicas);
            println!(
                "# data-parallel: {r} replicas; the effective (global) batch is {b} images, {}-{} per replica; \
                 the learning rate {} applies to the global batch",
                b / r,
                b.div_ceil(r),
                config.optim.effective_lr()
            );
        }
        print!("{}", config.to_toml());
        return Ok(());
    }
    let mut bars = Bars::new();
    let outcome = run_experiment(&config, options, &mut bars)?;
    if let Some(s) = outcome.summary {
        println!(
            "{}: best top-1 {:.2}% (epoch {}), last {:.2}%, top-5 {:.2}% -> {}",
            s.run,
            s.best.test_top1,
            s.best.epoch,
            s.last.test_top1,
            s.last.test_top5,
            outcome.dir.display()
        );
    }
    Ok(())
}
