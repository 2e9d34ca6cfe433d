//! Datasets and the input pipeline of tfkd, as the original `data_loader.py` builds them.
//!
//! * [`ImageDataset`]: labelled images in memory as u8 (CIFAR-10/100 binaries, the shared
//!   `cifar10-mini`, `tiny-imagenet-10` and `sklearn-digits` sets, decoded Tiny-ImageNet);
//! * [`ImageFolder`]: class-folder datasets decoded on the fly (ImageNet, Tiny-ImageNet in the
//!   official archive's layout);
//! * [`transforms`]: torchvision-exact u8 augmentations and normalisation ([`Pipeline`]);
//! * [`Loader`]: multi-threaded, prefetching, per-epoch shuffled batches that are identical
//!   whatever the thread count, as f32 tensors on any candle device;
//! * [`download`]: the official archives, MD5-checked and atomically extracted;
//! * `interop` (feature `candle-datasets`, off by default): conversions to and from
//!   candle-datasets' `vision::Dataset`; [`ImageDataset::from_tensors`] and
//!   [`ImageDataset::to_tensors`] work on its tensors without the feature.
#![deny(missing_docs)]

pub mod dataset;
pub mod download;
pub mod error;
pub mod folder;
pub mod image;
#[cfg(feature = "candle-datasets")]
pub mod interop;
pub mod loader;
pub mod records;
pub mod transforms;

pub use dataset::{ImageDataset, Source};
pub use error::{DataError, Result};

pub use folder::ImageFolder;
pub use image::Image;
pub use loader::{Batch, EpochIter, HostBatch, Loader, LoaderConfig};
pub use records::{RecordFormat, Split};
pub use tfkd_core::rng::SeededRng;
pub use transforms::{Normalization, Op, Pipeline};
