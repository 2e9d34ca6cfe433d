//! `tfkd train`.

use super::reporter::Bars;
use crate::cli::ConfigArgs;
use tfkd_runner::{run_experiment_in, RunOptions};

pub fn run(args: &ConfigArgs, options: &RunOptions, show_config: bool, nproc: Option<usize>) -> anyhow::Result<()> {
    let mut config = super::load_config(args)?;
    // Launched as one of several processes (srun, torchrun): the replicas
    // are those processes, meeting over TCP.
    let launch = tfkd_runner::launch::from_env(|k| std::env::var(k).ok())?;
    if let Some(l) = &launch {
        if nproc.is_some_and(|n| n != l.world) {
            anyhow::bail!("--nproc {} in a launch of {} processes: leave --nproc out under srun/torchrun", nproc.unwrap_or(0), l.world);
        }
        config.replicas = l.world;
        config.validate()?;
    } else if let Some(n) = nproc {
        config.replicas = n;
        config.validate()?;
    }
    if launch.is_none() && config.replicas > 1 && matches!(config.device, tfkd_runner::device::DeviceSpec::Cuda(_)) {
        tracing::warn!(
            "the {} replicas are threads of this process and share one GPU ({}): DataParallel's numbers, not its speed; \
             to train on {} GPUs, start one process per GPU (e.g. `torchrun --nproc-per-node {} --no-python tfkd train ...` or srun)",
            config.replicas,
            config.device,
            config.replicas,
            config.replicas
        );
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
    // A stop signal while the processes meet stops the run at its first
    // step, together, rather than one process at once.
    let _graceful = tfkd_runner::run_dir::StopGuard::new();
    let group = match &launch {
        None => None,
        Some(l) => Some(tfkd_runner::launch::join(l, &mut config.device, std::time::Duration::from_secs(600))?),
    };
    let mut bars = Bars::new();
    let outcome = run_experiment_in(&config, options, group, &mut bars)?;
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
