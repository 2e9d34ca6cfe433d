//! `tfkd download`.

use super::reporter::DownloadBar;
use anyhow::Context;
use std::path::Path;
use tfkd_runner::data::DatasetKind;
use tfkd_data::download::ensure;
use tfkd_zoo::pretrained::TorchvisionArch;

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

/// `tfkd download torchvision <ARCH> [--root DIR]`: the file a
/// `{ torchvision = "ARCH" }` teacher loads, into torch.hub's cache unless
/// `--root` is given.
pub fn torchvision(arch: TorchvisionArch, root: Option<&Path>) -> anyhow::Result<()> {
    let path = tfkd_runner::teacher::torchvision_weights(arch, root, &mut DownloadBar::default())?;
    println!("torchvision's {arch} weights are ready: {}", path.display());
    Ok(())
}
