//! The in-memory u8 dataset type and the [`Source`] trait the loader reads from.

use crate::error::{DataError, Result};
use crate::image::Image;

/// Anything the [`crate::Loader`] can draw samples from: an in-memory [`ImageDataset`] or a
/// lazily decoded [`crate::ImageFolder`].
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Label of sample `index` (no decoding).
    fn label(&self, index: usize) -> Result<u32>;
    /// Pixels of sample `index` (decoded if needed).
    fn image(&self, index: usize) -> Result<Image<'_>>;
    /// Number of classes.
    fn num_classes(&self) -> usize;
}

/// A labelled image dataset held in memory as u8 (CIFAR train: 50,000 x 3,072 bytes).
///
/// All images have the same shape. Pixel values run from 0 to `pixel_max` (255, or 16 for
/// the 8x8 digits), which the normalisation step divides by.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    pub(crate) images: Vec<u8>,
    pub(crate) labels: Vec<u32>,
    pub(crate) coarse_labels: Option<Vec<u32>>,
    pub(crate) shape: (usize, usize, usize),
    pub(crate) num_classes: usize,
    pub(crate) class_names: Vec<String>,
    pub(crate) pixel_max: u8,
}

impl ImageDataset {
    /// Builds a dataset from planar u8 images (`labels.len()` images of `shape`, back to back).
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        shape: (usize, usize, usize),
        num_classes: usize,
    ) -> Result<Self> {
        let per = shape.0.checked_mul(shape.1).and_then(|p| p.checked_mul(shape.2)).unwrap_or(0);
        if per == 0 || Some(images.len()) != per.checked_mul(labels.len()) {
            return Err(DataError::InvalidConfig {
                what: "dataset",
                message: format!(
                    "{} image bytes for {} labels of shape {:?}",
                    images.len(),
                    labels.len(),
                    shape
                ),
            });
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
            return Err(DataError::InvalidConfig {
                what: "dataset",
                message: format!("label {l} of sample {i} out of range 0..{num_classes}"),
            });
        }
        Ok(ImageDataset {
            images,
            labels,
            coarse_labels: None,
            shape,
            num_classes,
            class_names: Vec::new(),
            pixel_max: 255,
        })
    }

    /// Builds a dataset from candle tensors, e.g. those of `candle-datasets`' MNIST or CIFAR-10
    /// readers: `images` is `(N, C, H, W)`, `(N, H, W)` or `(N, H*W)` (then `shape` says the
    /// image shape), either u8, or float in `[0, 1]` (scaled back by `round(v * 255)`, exact for
    /// images that were u8 / 255); `labels` is `(N,)` of any integer or float type.
    pub fn from_tensors(
        images: &candle_core::Tensor,
        labels: &candle_core::Tensor,
        shape: (usize, usize, usize),
        num_classes: usize,
    ) -> Result<Self> {
        use candle_core::DType;
        let n = labels.dims1()?;
        let flat = images.flatten_all()?;
        let bytes: Vec<u8> = match images.dtype() {
            DType::U8 => flat.to_vec1::<u8>()?,
            _ => {
                let v = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                if let Some(bad) = v.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                    return Err(DataError::InvalidConfig {
                        what: "image tensor",
                        message: format!("value {bad} outside [0, 1]"),
                    });
                }
                v.iter().map(|&x| (x * 255.0).round() as u8).collect()
            }
        };
        let raw = labels.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some((i, l)) = raw.iter().enumerate().find(|(_, l)| !(**l >= 0.0 && l.fract() == 0.0 && **l < u32::MAX as f64)) {
            return Err(DataError::InvalidConfig {
                what: "label tensor",
                message: format!("label {l} of sample {i} is not a class index"),
            });
        }
        let labels: Vec<u32> = raw.iter().map(|&l| l as u32).collect();
        let per = shape.0.checked_mul(shape.1).and_then(|p| p.checked_mul(shape.2));
        if per.and_then(|p| p.checked_mul(n)) != Some(bytes.len()) {
            return Err(DataError::InvalidConfig {
                what: "image tensor",
                message: format!("{:?} does not hold {n} images of shape {shape:?}", images.dims()),
            });
        }
        Self::new(bytes, labels, shape, num_classes)
    }

    /// The images as `(N, C, H, W)` f32 = byte / 255 and the labels as `(N,)` u8 (u32 beyond
    /// 256 classes), on `device`: candle-datasets' layout (its CIFAR-10 reader's; its MNIST
    /// reader flattens the images, `flatten_from(1)`), and the exact inverse of
    /// [`ImageDataset::from_tensors`]. The digits' values (0..=16) are divided by 255 too.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use tfkd_data::ImageDataset;
    ///
    /// let ds = ImageDataset::new((0..24).collect(), vec![1, 0], (3, 2, 2), 2)?;
    /// let (images, labels) = ds.to_tensors(&Device::Cpu)?;
    /// assert_eq!((images.dims(), images.dtype(), labels.dtype()), (&[2, 3, 2, 2][..], DType::F32, DType::U8));
    /// assert!((images.flatten_all()?.to_vec1::<f32>()?[23] - 23.0 / 255.0).abs() < 1e-7);
    /// assert_eq!(ImageDataset::from_tensors(&images, &labels, (3, 2, 2), 2)?, ds);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_tensors(&self, device: &candle_core::Device) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        use candle_core::{DType, Device, Tensor};
        let (c, h, w) = self.shape;
        // `/ 255.` as candle-datasets divides, so the f32 values are bit-identical to its own.
        let images = (Tensor::from_slice(&self.images, (self.len(), c, h, w), &Device::Cpu)?.to_dtype(DType::F32)? / 255.)?
            .to_device(device)?;
        let labels = if self.num_classes <= 256 {
            let l: Vec<u8> = self.labels.iter().map(|&l| l as u8).collect();
            Tensor::from_vec(l, self.len(), device)?
        } else {
            Tensor::from_slice(&self.labels, self.len(), device)?
        };
        Ok((images, labels))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image shape (channels, height, width).
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// The planar bytes of image `index`; `None` past the end.
    pub fn image_bytes(&self, index: usize) -> Option<&[u8]> {
        let per = self.shape.0 * self.shape.1 * self.shape.2;
        let start = index.checked_mul(per)?;
        self.images.get(start..start.checked_add(per)?)
    }

    /// All images, back to back.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// The labels (fine labels for CIFAR-100).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// CIFAR-100 coarse (superclass) labels, when the format has them.
    pub fn coarse_labels(&self) -> Option<&[u32]> {
        self.coarse_labels.as_deref()
    }

    /// Number of classes of [`Self::labels`].
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Class names (line i = label i) when the dataset ships them; else empty.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The largest pixel value of the format (255; 16 for the digits).
    pub fn pixel_max(&self) -> u8 {
        self.pixel_max
    }

    /// Sets the class names.
    pub fn with_class_names(mut self, names: Vec<String>) -> Self {
        self.class_names = names;
        self
    }

    /// Replaces the labels by the CIFAR-100 coarse labels (20 superclasses).
    pub fn into_coarse(mut self) -> Result<Self> {
        match self.coarse_labels.take() {
            Some(c) => {
                self.labels = c;
                self.num_classes = 20;
                self.class_names.clear();
                Ok(self)
            }
            None => Err(DataError::InvalidConfig {
                what: "labels",
                message: "this dataset has no coarse labels".into(),
            }),
        }
    }

    /// The first `n` samples (or all when fewer).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        let per = self.shape.0 * self.shape.1 * self.shape.2;
        ImageDataset {
            images: self.images[..n * per].to_vec(),
            labels: self.labels[..n].to_vec(),
            coarse_labels: self.coarse_labels.as_ref().map(|c| c[..n].to_vec()),
            shape: self.shape,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            pixel_max: self.pixel_max,
        }
    }
}

impl Source for ImageDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.labels
            .get(index)
            .copied()
            .ok_or(DataError::IndexOutOfRange { index, len: self.len() })
    }
    fn image(&self, index: usize) -> Result<Image<'_>> {
        let (c, h, w) = self.shape;
        let bytes = self
            .image_bytes(index)
            .ok_or(DataError::IndexOutOfRange { index, len: self.len() })?;
        Ok(Image::borrowed(c, h, w, bytes))
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
}
