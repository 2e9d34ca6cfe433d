//! `tfkd download`.

use super::reporter::DownloadBar;
use anyhow::Context;
use std::path::Path;
use tfkd_runner::data::DatasetKind;
use tfkd_data::download::ensure;

pub fn run(dataset: DatasetKind, root: &Path) -> anyhow::Result<()> {
    let remote = dataset.remote().with_context(|| {
        format!("{} has no official download{}", dataset.name(), dataset.download_hint())
    })?;
    if root.exists() && !root.is_dir() {
        anyhow::bail!("--root {} is not a directory (it is a file); give the folder to put {} in", root.display(), dataset.name());
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create --root {}", root.display()))?;
    let folder = ensure(&remote, root, &mut DownloadBar::default())?;
    println!("{} is ready in {}", remote.name, folder.display());
    Ok(())
}
