//! `tfkd eval`.

use crate::cli::ConfigArgs;
use anyhow::Context;
use std::path::PathBuf;
use tfkd_runner::{data::build_loaders, device::open_device, teacher::load_teacher, train::evaluate, train::BEST};
use tfkd_zoo::ModelOptions;

pub fn run(args: &ConfigArgs, checkpoint: Option<PathBuf>) -> anyhow::Result<()> {
    let config = super::load_config(args)?;
    config.check_files()?;
    let path = checkpoint.unwrap_or_else(|| config.run_dir().join(BEST));
    anyhow::ensure!(!path.is_dir(), "--checkpoint {} is a directory; give a checkpoint file in it (e.g. best.safetensors)", path.display());
    anyhow::ensure!(path.is_file(), "checkpoint {} does not exist", path.display());
    let device = open_device(config.device)?;
    let loaders = build_loaders(&config.data, config.optim.batch_size, config.data_seed(), &device)?;
    let opts = ModelOptions::new(loaders.num_classes, config.data.dataset.input_size())
        .with_width_divisor(config.model.width_divisor);
    let model = load_teacher(&config.model.name, &opts, &path, &device)
        .with_context(|| format!("loading {} into {}", path.display(), config.model.name))?;
    config.precision.apply();
    let model = tfkd_zoo::with_activation_dtype(model, config.precision.activation_dtype());
    let (loss, acc) = evaluate(model.as_ref(), &loaders.test)?;
    println!(
        "{}: top-1 {:.2}%, top-5 {:.2}%, loss {loss:.4} on {} test images",
        path.display(),
        acc.top1_percent(),
        acc.top5_percent(),
        acc.total
    );
    Ok(())
}
