//! Which dataset a config names, and its train and test loaders.

use crate::config::DataConfig;
use crate::error::{config_err, Result};
use candle_core::Device;
use std::path::Path;
use std::sync::Arc;
use tfkd_data::transforms::resize_bilinear;
use tfkd_data::{
    Image, ImageDataset, ImageFolder, Loader, LoaderConfig, Normalization, Op, Pipeline, Source, Split,
};
use tfkd_zoo::InputSize;

/// The datasets the runner knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10, official binary version (`cifar-10-batches-bin/`).
    Cifar10,
    /// CIFAR-100, official binary version (`cifar-100-binary/`).
    Cifar100,
    /// Tiny-ImageNet-200 as the official zip extracts.
    TinyImagenet,
    /// ImageNet class folders (`train/`, `val/`).
    Imagenet,
    /// The shared 5,000 / 2,000-image CIFAR-10 subset (quick profiles, tests).
    Cifar10Mini,
    /// The shared 10-class, 64×64 Tiny-ImageNet subset. Written
    /// `tiny-imagenet-10`, as `name()` and the folder spell it (serde's
    /// kebab-case alone would make it `tiny-imagenet10`, still read).
    #[serde(rename = "tiny-imagenet-10", alias = "tiny-imagenet10")]
    TinyImagenet10,
    /// scikit-learn's 8×8 digits, upsampled to 3×32×32 so CIFAR models take them.
    Digits,
}

impl DatasetKind {
    /// Every dataset the runner knows.
    pub const ALL: [DatasetKind; 7] = [
        Self::Cifar10,
        Self::Cifar100,
        Self::TinyImagenet,
        Self::Imagenet,
        Self::Cifar10Mini,
        Self::TinyImagenet10,
        Self::Digits,
    ];

    /// Its official download, for the datasets that have one.
    pub fn remote(self) -> Option<tfkd_data::download::Remote> {
        match self {
            Self::Cifar10 => Some(tfkd_data::download::Remote::cifar10()),
            Self::Cifar100 => Some(tfkd_data::download::Remote::cifar100()),
            Self::TinyImagenet => Some(tfkd_data::download::Remote::tiny_imagenet()),
            Self::Imagenet | Self::Cifar10Mini | Self::TinyImagenet10 | Self::Digits => None,
        }
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::TinyImagenet => "tiny-imagenet",
            Self::Imagenet => "imagenet",
            Self::Cifar10Mini => "cifar10-mini",
            Self::TinyImagenet10 => "tiny-imagenet-10",
            Self::Digits => "digits",
        }
    }

    /// The input resolution its models take.
    pub fn input_size(self) -> InputSize {
        match self {
            Self::TinyImagenet | Self::TinyImagenet10 => InputSize::Tiny,
            Self::Imagenet => InputSize::ImageNet,
            _ => InputSize::Cifar,
        }
    }

    /// Where to get the files, appended to "not found" errors.
    pub fn download_hint(self) -> &'static str {
        match self {
            Self::Cifar10 => "; get it with `tfkd download cifar10 --root <dir>`",
            Self::Cifar100 => "; get it with `tfkd download cifar100 --root <dir>`",
            Self::TinyImagenet => "; get it with `tfkd download tiny-imagenet --root <dir>`",
            Self::Imagenet => "; ImageNet must be obtained from image-net.org and arranged in train/<class>/ and val/<class>/",
            Self::Cifar10Mini | Self::TinyImagenet10 | Self::Digits => {
                "; this is one of the project's small shared datasets (the `shared/data` folder)"
            }
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = crate::RunError;
    /// The config spelling (`cifar100`, `tiny-imagenet`, …).
    fn from_str(text: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == text.trim()).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            config_err("data.dataset", format!("{text:?} is not one of {}", names.join(", ")))
        })
    }
}

/// The train and test loaders of an experiment.
pub struct Loaders {
    /// Shuffled, augmented training batches.
    pub train: Loader,
    /// Test batches in dataset order, not augmented.
    pub test: Loader,
    /// Number of classes K.
    pub num_classes: usize,
}

fn subset(ds: ImageDataset, n: usize) -> ImageDataset {
    if n == 0 || n >= ds.len() { ds } else { ds.take(n) }
}

/// Digits (1×8×8, values 0..=16) as 3×32×32 u8 images: scaled to 0..=255,
/// bilinear-upsampled like PIL, and replicated over three channels.
fn digits_as_rgb32(ds: &ImageDataset) -> Result<ImageDataset> {
    let scale = 255.0 / ds.pixel_max() as f32;
    let mut images = Vec::with_capacity(ds.len() * 3 * 32 * 32);
    for i in 0..ds.len() {
        let bytes = ds
            .image_bytes(i)
            .ok_or_else(|| config_err("data.dataset", format!("digits image {i} is out of range of {} images", ds.len())))?;
        let scaled: Vec<u8> = bytes.iter().map(|&v| (v as f32 * scale).round().min(255.0) as u8).collect();
        let up = resize_bilinear(&Image::owned(1, 8, 8, scaled), 32, 32);
        for _ in 0..3 {
            images.extend_from_slice(up.plane(0));
        }
    }
    Ok(ImageDataset::new(images, ds.labels().to_vec(), (3, 32, 32), ds.num_classes())?)
}

/// One split; `take > 0` keeps only its first `take` samples.
fn load_split(kind: DatasetKind, root: &Path, split: Split, take: usize) -> Result<Arc<dyn Source>> {
    let in_memory = match kind {
        DatasetKind::Cifar10 => ImageDataset::cifar10(root, split)?,
        DatasetKind::Cifar100 => ImageDataset::cifar100(root, split)?,
        DatasetKind::Cifar10Mini => ImageDataset::cifar10_mini(root, split)?,
        DatasetKind::TinyImagenet10 => ImageDataset::tiny_imagenet_10(root, split)?,
        DatasetKind::Digits => digits_as_rgb32(&ImageDataset::digits(root, split)?)?,
        DatasetKind::TinyImagenet => ImageFolder::tiny_imagenet(root, split)?.load_all(64, 64, 2)?,
        // ImageNet stays on disk: images are decoded as the loader draws them.
        DatasetKind::Imagenet if take == 0 => return Ok(Arc::new(ImageFolder::imagenet(root, split)?)),
        DatasetKind::Imagenet => return Err(config_err("data.train_subset", "subsets are not supported for imagenet")),
    };
    Ok(Arc::new(subset(in_memory, take)))
}

fn pipelines(kind: DatasetKind, augment: bool) -> (Pipeline, Pipeline) {
    let (train, eval) = match kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Cifar10Mini => {
            (Pipeline::cifar_train(Normalization::cifar100()), Pipeline::eval(Normalization::cifar100()))
        }
        DatasetKind::TinyImagenet | DatasetKind::TinyImagenet10 => {
            (Pipeline::tiny_imagenet_train(), Pipeline::tiny_imagenet_eval())
        }
        DatasetKind::Imagenet => (Pipeline::imagenet_train(), Pipeline::imagenet_eval()),
        DatasetKind::Digits => {
            // No flips: a mirrored digit is another symbol.
            let norm = || Normalization::new(&[0.5; 3], &[0.5; 3]);
            (
                Pipeline::new(vec![Op::RandomCrop { size: 32, padding: 4 }, Op::RandomRotation { degrees: 15.0 }], norm()),
                Pipeline::eval(norm()),
            )
        }
    };
    if augment {
        (train, eval)
    } else if kind == DatasetKind::Imagenet {
        (Pipeline::imagenet_eval(), eval)
    } else {
        (eval.clone(), eval)
    }
}

/// Loads the dataset of `config` and builds its loaders on `device`.
pub fn build_loaders(config: &DataConfig, batch_size: usize, seed: u64, device: &Device) -> Result<Loaders> {
    let kind = config.dataset;
    if !config.root.is_dir() {
        return Err(config_err("data.root", format!("{} is not a directory{}", config.root.display(), kind.download_hint())));
    }
    let train = load_split(kind, &config.root, Split::Train, config.train_subset)?;
    let test = load_split(kind, &config.root, Split::Test, config.test_subset)?;
    let num_classes = train.num_classes();
    let (train_pipe, test_pipe) = pipelines(kind, config.augmentation);
    let train_loader = Loader::new(
        train,
        train_pipe,
        LoaderConfig::train(batch_size, seed).with_threads(config.threads).with_drop_last(config.drop_last),
        device.clone(),
    )?;
    let test_loader = Loader::new(test, test_pipe, LoaderConfig::eval(if config.eval_batch_size > 0 { config.eval_batch_size } else { batch_size })
            .with_threads(config.threads), device.clone())?;
    Ok(Loaders { train: train_loader, test: test_loader, num_classes })
}
