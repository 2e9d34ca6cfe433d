//! torchvision's published ImageNet weights: the teachers of the paper's
//! ImageNet experiments. The official script takes them as
//! `models.<arch>(pretrained=True)`, i.e. the `IMAGENET1K_V1` files on
//! `download.pytorch.org`, which `torch.hub` keeps in
//! `$TORCH_HOME/hub/checkpoints/`.
//!
//! This module is the one home of that table (architecture → zoo model →
//! published file), of torch.hub's rule for the hash prefix in a file's name
//! and of where torch.hub keeps the files. It does no I/O: downloading and
//! verifying is `tfkd_data::download::ensure_file`, and the runner puts the
//! two together.
//!
//! ```
//! use tfkd_zoo::pretrained::TorchvisionArch;
//! let arch: TorchvisionArch = "resnet50".parse()?;
//! assert_eq!(arch.model(), "resnet50_imagenet");
//! assert_eq!(arch.url(), "https://download.pytorch.org/models/resnet50-0676ba61.pth");
//! assert_eq!(arch.hash_prefix(), "0676ba61");
//! # Ok::<(), tfkd_zoo::ZooError>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tfkd_core::env;

use crate::error::ZooError;

/// Where torchvision publishes its weights (torchvision's `Weights.url`
/// prefix).
pub const DOWNLOAD_BASE: &str = "https://download.pytorch.org/models/";

/// The classes of every published ImageNet classifier.
pub const NUM_CLASSES: usize = 1000;

/// A torchvision architecture whose published ImageNet weights the zoo
/// loads. Written in configs as torchvision's function name
/// (`resnet18`, `resnet50`, `densenet121`, `resnext101_32x8d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum TorchvisionArch {
    /// `torchvision.models.resnet18`.
    ResNet18,
    /// `torchvision.models.resnet50`.
    ResNet50,
    /// `torchvision.models.densenet121` (its file uses DenseNet's legacy
    /// parameter names, which [`crate::checkpoint::normalize_state_dict`]
    /// renames).
    DenseNet121,
    /// `torchvision.models.resnext101_32x8d`.
    #[allow(non_camel_case_types)]
    ResNeXt101_32x8d,
}

impl TorchvisionArch {
    /// Every architecture with published weights, in table order.
    pub const ALL: [Self; 4] = [Self::ResNet18, Self::ResNet50, Self::DenseNet121, Self::ResNeXt101_32x8d];

    /// The table: torchvision's name, the zoo model that loads the weights,
    /// and the `IMAGENET1K_V1` file (`torchvision/models/{resnet,densenet}.py`).
    const fn row(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::ResNet18 => ("resnet18", "resnet18_imagenet", "resnet18-f37072fd.pth"),
            Self::ResNet50 => ("resnet50", "resnet50_imagenet", "resnet50-0676ba61.pth"),
            Self::DenseNet121 => ("densenet121", "densenet121_imagenet", "densenet121-a639ec97.pth"),
            Self::ResNeXt101_32x8d => ("resnext101_32x8d", "resnext101_32x8d_imagenet", "resnext101_32x8d-8ba56ff5.pth"),
        }
    }

    /// torchvision's name, as written in configs and on the command line.
    pub const fn name(self) -> &'static str {
        self.row().0
    }

    /// The registry name of the zoo model the weights load into (with
    /// [`NUM_CLASSES`] classes, at full width).
    pub const fn model(self) -> &'static str {
        self.row().1
    }

    /// The published file's name, which is also its name in torch.hub's
    /// cache.
    pub const fn file_name(self) -> &'static str {
        self.row().2
    }

    /// The published file's URL.
    pub fn url(self) -> String {
        self.url_at(DOWNLOAD_BASE)
    }

    /// The file's URL under another base (a mirror, or a test server):
    /// `base` followed by [`TorchvisionArch::file_name`], with one `/`
    /// between them.
    pub fn url_at(self, base: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.file_name())
    }

    /// The first hex digits of the file's SHA-256, from its name
    /// ([`hash_prefix`]): what torch.hub checks, and what the download is
    /// verified against.
    pub fn hash_prefix(self) -> &'static str {
        // Every name of the table has one (tested); an empty prefix would be
        // refused by the downloader, never taken as "anything matches".
        hash_prefix(self.file_name()).unwrap_or_default()
    }

    /// The names of [`TorchvisionArch::ALL`], comma separated (for errors
    /// and help texts).
    pub fn known() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for TorchvisionArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TorchvisionArch {
    type Err = ZooError;
    /// torchvision's name; anything else is [`ZooError::UnknownTorchvisionArch`]
    /// listing the known ones.
    fn from_str(name: &str) -> Result<Self, ZooError> {
        Self::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| ZooError::UnknownTorchvisionArch {
            name: name.to_string(),
            known: Self::known(),
        })
    }
}

impl TryFrom<String> for TorchvisionArch {
    type Error = ZooError;
    fn try_from(name: String) -> Result<Self, ZooError> {
        name.parse()
    }
}

impl From<TorchvisionArch> for &'static str {
    fn from(arch: TorchvisionArch) -> Self {
        arch.name()
    }
}

/// The hash prefix in a published file's name, by torch.hub's rule
/// (`HASH_REGEX = r'-([a-f0-9]*)\.'`, first match): the lower-case hex
/// digits between the first `-` that is followed by hex digits and a `.`,
/// and that `.`. `None` when the name has no such part, or an empty one
/// (torch.hub would then check nothing; tfkd refuses to).
///
/// ```
/// use tfkd_zoo::pretrained::hash_prefix;
/// assert_eq!(hash_prefix("resnext101_32x8d-8ba56ff5.pth"), Some("8ba56ff5"));
/// assert_eq!(hash_prefix("best.pth.tar"), None);
/// ```
pub fn hash_prefix(file_name: &str) -> Option<&str> {
    let prefix = file_name.match_indices('-').find_map(|(i, _)| {
        let rest = &file_name[i + 1..];
        let hex = rest.bytes().take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')).count();
        (rest.as_bytes().get(hex) == Some(&b'.')).then(|| &rest[..hex])
    })?;
    (!prefix.is_empty()).then_some(prefix)
}

/// Where torch.hub keeps downloaded weights, from the environment
/// ([`env::TORCH_HOME`], [`env::XDG_CACHE_HOME`], [`env::HOME`]): see
/// [`checkpoints_dir_in`]. `None` when none of the three is set.
pub fn checkpoints_dir() -> Option<PathBuf> {
    checkpoints_dir_in(std::env::var_os(env::TORCH_HOME), std::env::var_os(env::XDG_CACHE_HOME), std::env::var_os(env::HOME))
}

/// torch.hub's checkpoints folder for the given values of `TORCH_HOME`,
/// `XDG_CACHE_HOME` and `HOME`: `$TORCH_HOME/hub/checkpoints`, where
/// `TORCH_HOME` defaults to `$XDG_CACHE_HOME/torch`, else `~/.cache/torch`
/// (`torch.hub.get_dir()`; a leading `~` is expanded as Python's
/// `os.path.expanduser` does). Empty values count as unset.
pub fn checkpoints_dir_in(
    torch_home: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = set(home);
    let expand = |p: PathBuf| match p.strip_prefix("~") {
        Ok(rest) => home.as_ref().map(|h| h.join(rest)),
        Err(_) => Some(p),
    };
    let torch_home = match (set(torch_home), set(xdg_cache_home)) {
        (Some(t), _) => expand(t)?,
        (None, Some(x)) => expand(x.join("torch"))?,
        (None, None) => home.as_ref()?.join(".cache").join("torch"),
    };
    Some(torch_home.join("hub").join("checkpoints"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_torchvision_files_and_zoo_models() {
        let urls: Vec<String> = TorchvisionArch::ALL.iter().map(|a| a.url()).collect();
        assert_eq!(
            urls,
            [
                "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                "https://download.pytorch.org/models/densenet121-a639ec97.pth",
                "https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth",
            ]
        );
        for arch in TorchvisionArch::ALL {
            let entry = crate::entry(arch.model()).unwrap();
            assert!(entry.is_imagenet(), "{arch}");
            assert!(entry.reference_params.iter().any(|&(k, _)| k == NUM_CLASSES), "{arch}");
            assert_eq!(arch.hash_prefix().len(), 8, "{arch}");
            assert!(arch.file_name().starts_with(&format!("{}-", arch.name())), "{arch}");
            assert_eq!(arch.name().parse::<TorchvisionArch>().unwrap(), arch);
        }
        assert_eq!(TorchvisionArch::ResNet18.url_at("http://127.0.0.1:9/m/"), "http://127.0.0.1:9/m/resnet18-f37072fd.pth");
    }

    #[test]
    fn an_unknown_arch_lists_the_known_ones() {
        let err = "resnet34".parse::<TorchvisionArch>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown torchvision architecture `resnet34` (known: resnet18, resnet50, densenet121, resnext101_32x8d)"
        );
    }

    #[test]
    fn hash_prefixes_follow_torch_hub() {
        assert_eq!(hash_prefix("densenet121-a639ec97.pth"), Some("a639ec97"));
        assert_eq!(hash_prefix("resnext101_32x8d-8ba56ff5.pth"), Some("8ba56ff5"));
        // The first `-` followed by hex digits and a `.` counts.
        assert_eq!(hash_prefix("mobilenet-v2-b0353104.pth"), Some("b0353104"));
        assert_eq!(hash_prefix("shufflenetv2_x0.5-f707e7126e.pth"), Some("f707e7126e"));
        // Upper-case digits are not torch.hub's hex; no prefix, or an empty one, is None.
        assert_eq!(hash_prefix("resnet18-F37072FD.pth"), None);
        assert_eq!(hash_prefix("best.pth.tar"), None);
        assert_eq!(hash_prefix("model-.pth"), None);
        assert_eq!(hash_prefix("model-abc"), None);
    }

    #[test]
    fn checkpoints_dir_follows_torch_hub() {
        let s = |v: &str| Some(OsString::from(v));
        let dir = |t, x, h| checkpoints_dir_in(t, x, h).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(dir(s("/t"), s("/x"), s("/h")).as_deref(), Some("/t/hub/checkpoints"));
        assert_eq!(dir(s("~/t"), None, s("/h")).as_deref(), Some("/h/t/hub/checkpoints"));
        assert_eq!(dir(None, s("/x"), s("/h")).as_deref(), Some("/x/torch/hub/checkpoints"));
        assert_eq!(dir(s(""), None, s("/h")).as_deref(), Some("/h/.cache/torch/hub/checkpoints"));
        assert_eq!(dir(None, None, None), None);
        assert_eq!(dir(s("~/t"), None, None), None);
    }
}
