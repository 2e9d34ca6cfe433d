//! Conversions between [`ImageDataset`] and candle-datasets' [`Dataset`] (feature
//! `candle-datasets`, off by default: see the crate's `Cargo.toml`).
//!
//! candle-datasets holds both splits of a dataset as f32 tensors in `[0, 1]` (the u8 pixels
//! divided by 255: CIFAR-10 as `(N, 3, 32, 32)`, MNIST as `(N, 784)`) with u8 labels; tfkd-data
//! holds one split as planar u8 bytes, augments them on u8 like torchvision and batches them
//! with a multi-threaded [`crate::Loader`]. Both directions are exact for images that were u8.
//!
//! * [`from_candle_dataset`] / [`split_from_candle_dataset`]: a `Dataset` (e.g. from
//!   `candle_datasets::vision::mnist::load_dir`, or the hub's parquet `mnist::load()`) to
//!   tfkd-data, to train with tfkd's loader and transforms;
//! * [`to_candle_dataset`]: two tfkd-data splits (e.g. CIFAR-100, Tiny-ImageNet, which
//!   candle-datasets cannot read) to a `Dataset`, for code written against candle-datasets.
//!
//! tfkd-data keeps its own CIFAR-10 reader instead of `candle_datasets::vision::cifar::load_dir`
//! (see [`ImageDataset::cifar10`]). candle-datasets' hub loader `cifar::load()` (0.11.1) returns
//! each image transposed (`permute((0, 3, 2, 1))` of HWC gives `(N, C, W, H)`); its tensors
//! convert unchanged, so transpose them back (`images.transpose(2, 3)`) before converting.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use tfkd_data::interop::{from_candle_dataset, to_candle_dataset, Dataset};
//! use tfkd_data::{Loader, LoaderConfig, Normalization, Pipeline};
//!
//! // A small MNIST-like candle-datasets Dataset, built as its MNIST reader builds one:
//! // (N, 784) f32 images = u8 / 255, u8 labels.
//! let dev = Device::Cpu;
//! let pixels = |n: usize| -> candle_core::Result<Tensor> {
//!     let bytes: Vec<u8> = (0..n * 784).map(|i| (i % 251) as u8).collect();
//!     Tensor::from_vec(bytes, (n, 784), &dev)?.to_dtype(DType::F32)? / 255.
//! };
//! let ds = Dataset {
//!     train_images: pixels(6)?,
//!     train_labels: Tensor::from_vec(vec![0u8, 1, 2, 3, 4, 5], 6, &dev)?,
//!     test_images: pixels(2)?,
//!     test_labels: Tensor::from_vec(vec![7u8, 9], 2, &dev)?,
//!     labels: 10,
//! };
//!
//! // candle-datasets -> tfkd-data: u8 storage, 1x28x28 images, then tfkd's loader.
//! let (train, test) = from_candle_dataset(&ds)?;
//! assert_eq!((train.len(), train.shape(), train.num_classes()), (6, (1, 28, 28), 10));
//! assert_eq!(train.image_bytes(0).unwrap()[250..252], [250, 0]);
//! assert_eq!(test.labels(), [7, 9]);
//! let pipe = Pipeline::eval(Normalization::scale_only(255.0, 1));
//! let loader = Loader::new(std::sync::Arc::new(train.clone()), pipe, LoaderConfig::eval(4), dev.clone())?;
//! let dims: Vec<Vec<usize>> = loader.epoch(0).map(|b| Ok(b?.images.dims().to_vec())).collect::<tfkd_data::Result<_>>()?;
//! assert_eq!(dims, [vec![4, 1, 28, 28], vec![2, 1, 28, 28]]);
//!
//! // tfkd-data -> candle-datasets: (N, C, H, W) f32 = u8 / 255, u8 labels; exact both ways.
//! let back = to_candle_dataset(&train, &test, &dev)?;
//! assert_eq!(back.train_images.dims(), [6, 1, 28, 28]);
//! assert_eq!(back.labels, 10);
//! let flat = back.train_images.flatten_from(1)?;
//! assert_eq!(flat.to_vec2::<f32>()?, ds.train_images.to_vec2::<f32>()?);
//! assert_eq!(back.test_labels.to_vec1::<u8>()?, [7, 9]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{Device, Tensor};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::records::Split;

/// The candle-datasets crate this module converts from and to (the same version).
pub use candle_datasets;
pub use candle_datasets::vision::Dataset;

/// The image shape (C, H, W) of a candle-datasets image tensor: `(N, C, H, W)` gives
/// `(C, H, W)`, `(N, H, W)` gives `(1, H, W)`, and the flattened `(N, P)` of its MNIST reader
/// gives `(1, s, s)` when `P = s²`, or `(3, s, s)` when `P = 3s²`; any other `P` needs the shape
/// given explicitly ([`split_from_candle_dataset_with_shape`]).
pub fn image_shape(images: &Tensor) -> Result<(usize, usize, usize)> {
    let bad = |message: String| DataError::InvalidConfig { what: "candle-datasets images", message };
    let square = |p: usize| {
        let s = (p as f64).sqrt().round() as usize;
        (s * s == p && s > 0).then_some(s)
    };
    match *images.dims() {
        [_, c, h, w] => Ok((c, h, w)),
        [_, h, w] => Ok((1, h, w)),
        [_, p] => match (square(p), (p % 3 == 0).then(|| square(p / 3)).flatten()) {
            (Some(s), _) => Ok((1, s, s)),
            (None, Some(s)) => Ok((3, s, s)),
            _ => Err(bad(format!(
                "{p} values per image is neither s*s nor 3*s*s; give the image shape explicitly"
            ))),
        },
        ref d => Err(bad(format!("shape {d:?}: expected (N, C, H, W), (N, H, W) or (N, H*W)"))),
    }
}

fn split_tensors(ds: &Dataset, split: Split) -> (&Tensor, &Tensor) {
    match split {
        Split::Train => (&ds.train_images, &ds.train_labels),
        Split::Test => (&ds.test_images, &ds.test_labels),
    }
}

/// One split of a candle-datasets [`Dataset`] as an [`ImageDataset`], the image shape read from
/// the tensor ([`image_shape`]). Pixels are `round(v * 255)` of the f32 values (exact for
/// candle-datasets' `u8 / 255`), or the bytes themselves for a u8 tensor; labels must lie in
/// `0..ds.labels`.
pub fn split_from_candle_dataset(ds: &Dataset, split: Split) -> Result<ImageDataset> {
    let shape = image_shape(split_tensors(ds, split).0).map_err(|e| name_split(e, split))?;
    split_from_candle_dataset_with_shape(ds, split, shape)
}

/// [`split_from_candle_dataset`] with the image shape (C, H, W) given.
pub fn split_from_candle_dataset_with_shape(
    ds: &Dataset,
    split: Split,
    shape: (usize, usize, usize),
) -> Result<ImageDataset> {
    let (images, labels) = split_tensors(ds, split);
    if labels.dims().first() == Some(&0) {
        return Err(DataError::InvalidConfig {
            what: "candle-datasets dataset",
            message: format!("no samples in the {split} split"),
        });
    }
    ImageDataset::from_tensors(images, labels, shape, ds.labels).map_err(|e| name_split(e, split))
}

/// Both splits of a candle-datasets [`Dataset`]: (train, test).
pub fn from_candle_dataset(ds: &Dataset) -> Result<(ImageDataset, ImageDataset)> {
    Ok((split_from_candle_dataset(ds, Split::Train)?, split_from_candle_dataset(ds, Split::Test)?))
}

/// A candle-datasets [`Dataset`] of two tfkd-data splits, tensors on `device`: images
/// `(N, C, H, W)` f32 = byte / 255 and labels u8 (u32 beyond 256 classes), as candle-datasets'
/// CIFAR-10 reader stores them (its MNIST reader flattens the images: `flatten_from(1)`).
/// Both splits must share the image shape and the class count.
pub fn to_candle_dataset(train: &ImageDataset, test: &ImageDataset, device: &Device) -> Result<Dataset> {
    if train.shape() != test.shape() || train.num_classes() != test.num_classes() {
        return Err(DataError::InvalidConfig {
            what: "candle-datasets dataset",
            message: format!(
                "train split is {} classes of {:?} images, test split {} classes of {:?}",
                train.num_classes(),
                train.shape(),
                test.num_classes(),
                test.shape()
            ),
        });
    }
    let (train_images, train_labels) = train.to_tensors(device)?;
    let (test_images, test_labels) = test.to_tensors(device)?;
    Ok(Dataset { train_images, train_labels, test_images, test_labels, labels: train.num_classes() })
}

fn name_split(e: DataError, split: Split) -> DataError {
    match e {
        DataError::InvalidConfig { what, message } => {
            DataError::InvalidConfig { what, message: format!("{split} split of the candle-datasets dataset: {message}") }
        }
        e => e,
    }
}
