//! `tfkd download`.

use super::reporter::DownloadBar;
use std::path::Path;
use tfkd_data::download::{ensure, Remote};

pub fn run(dataset: &str, root: &Path) -> anyhow::Result<()> {
    let remote = Remote::by_name(dataset)
        .ok_or_else(|| anyhow::anyhow!("unknown dataset {dataset:?}: choose cifar10, cifar100 or tiny-imagenet"))?;
    std::fs::create_dir_all(root)?;
    let folder = ensure(&remote, root, &mut DownloadBar::default())?;
    println!("{} is ready in {}", remote.name, folder.display());
    Ok(())
}
