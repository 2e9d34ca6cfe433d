//! Class-folder datasets decoded on demand: ImageNet (`train/<class>/`, `val/<class>/`) and
//! Tiny-ImageNet in the official archive's own layout (`train/<wnid>/images/*.JPEG`, flat
//! `val/images/` labelled by `val/val_annotations.txt`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::dataset::{ImageDataset, Source};
use crate::error::{DataError, Result};
use crate::image::Image;
use crate::records::{read_file, Split};

/// The file extensions torchvision's `ImageFolder` accepts (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// A labelled list of image files, decoded to RGB when a sample is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, u32)>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// A single normal path component (no separator, `..`, root or drive), so that joining it to a
/// folder stays inside that folder.
fn is_plain_file_name(name: &str) -> bool {
    let mut c = Path::new(name).components();
    matches!((c.next(), c.next()), (Some(std::path::Component::Normal(_)), None))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFolder { path: dir.into(), hint: String::new() }
        } else {
            DataError::io("listing", dir, e)
        }
    })?;
    let mut v = Vec::new();
    for entry in rd {
        v.push(entry.map_err(|e| DataError::io("listing", dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// All image files under `dir`, recursively, in sorted path order (as `os.walk` + `sorted`).
fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            walk_images(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Decodes an image file to planar RGB (grey images are expanded, as PIL's `convert("RGB")`).
pub fn decode_rgb(path: &Path) -> Result<Image<'static>> {
    let bytes = read_file(path)?;
    decode_rgb_bytes(path, &bytes)
}

/// Decodes the content of an image file (`path` names it in errors) to planar RGB. The
/// decoder's default limits apply (at most 512 MiB allocated), so a forged header is an error.
pub fn decode_rgb_bytes(path: &Path, bytes: &[u8]) -> Result<Image<'static>> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| DataError::Decode { path: path.into(), message: e.to_string() })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Image::from_interleaved(h as usize, w as usize, 3, rgb.as_raw()))
}

impl ImageFolder {
    /// torchvision `ImageFolder(root)`: every sub-folder of `root` is a class (sorted by name =
    /// label), every image file below it (recursively) a sample.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let classes: Vec<PathBuf> = read_dir_sorted(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if classes.is_empty() {
            return Err(DataError::Empty { path: root.into() });
        }
        let mut samples = Vec::new();
        let mut names = Vec::new();
        for (label, dir) in classes.iter().enumerate() {
            let mut files = Vec::new();
            walk_images(dir, &mut files)?;
            samples.extend(files.into_iter().map(|f| (f, label as u32)));
            names.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        if samples.is_empty() {
            return Err(DataError::Empty { path: root.into() });
        }
        Ok(ImageFolder { root: root.into(), classes: names, samples })
    }

    /// An explicit list of (file, label) samples.
    pub fn from_samples(root: impl Into<PathBuf>, classes: Vec<String>, samples: Vec<(PathBuf, u32)>) -> Self {
        ImageFolder { root: root.into(), classes, samples }
    }

    /// ImageNet (ILSVRC-2012) class folders: `root/train/<class>/` or `root/val/<class>/`.
    pub fn imagenet(root: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = root.as_ref().join(match split {
            Split::Train => "train",
            Split::Test => "val",
        });
        if !dir.is_dir() {
            return Err(DataError::MissingFolder {
                path: dir,
                hint: "; ImageNet needs train/<class>/ and val/<class>/ folders".into(),
            });
        }
        Self::open(dir).map_err(|e| match e {
            DataError::Empty { path } => DataError::NoSamples { path, split: Some(split) },
            e => e,
        })
    }

    /// Tiny-ImageNet-200 as the official `tiny-imagenet-200.zip` extracts (`root` is
    /// `tiny-imagenet-200/`). Labels follow the sorted wnids (= `ImageFolder` on `train/`);
    /// `Split::Test` reads the flat `val/images/` with `val/val_annotations.txt`.
    pub fn tiny_imagenet(root: impl AsRef<Path>, split: Split) -> Result<Self> {
        let root = root.as_ref();
        let wnids_file = root.join("wnids.txt");
        let mut classes = if wnids_file.is_file() {
            let text = String::from_utf8(read_file(&wnids_file)?).map_err(|e| DataError::BadLine {
                path: wnids_file.clone(),
                line: 0,
                message: format!("not utf-8: {e}"),
            })?;
            let mut names = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let name = line.trim();
                if name.is_empty() {
                    continue;
                }
                if !is_plain_file_name(name) {
                    return Err(DataError::BadLine {
                        path: wnids_file.clone(),
                        line: i + 1,
                        message: format!("wnid {name:?} is not a folder name inside train/"),
                    });
                }
                names.push(name.to_string());
            }
            names
        } else {
            let train = root.join("train");
            read_dir_sorted(&train)
                .map_err(|e| match e {
                    DataError::MissingFolder { path, .. } => DataError::MissingFolder {
                        path,
                        hint: format!(
                            "; the Tiny-ImageNet {split} split takes its classes from {} or from train/<wnid>/ folders",
                            wnids_file.display()
                        ),
                    },
                    e => e,
                })?
                .into_iter()
                .filter(|p| p.is_dir())
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect()
        };
        classes.sort();
        if classes.is_empty() {
            let path = if wnids_file.is_file() { wnids_file } else { root.join("train") };
            return Err(DataError::NoSamples { path, split: Some(split) });
        }
        let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
        let mut samples = Vec::new();
        match split {
            Split::Train => {
                for (label, wnid) in classes.iter().enumerate() {
                    let dir = root.join("train").join(wnid);
                    if !dir.is_dir() {
                        return Err(DataError::MissingFolder {
                            path: dir,
                            hint: format!("; class {wnid} is listed in wnids.txt"),
                        });
                    }
                    let mut files = Vec::new();
                    walk_images(&dir, &mut files)?;
                    samples.extend(files.into_iter().map(|f| (f, label as u32)));
                }
            }
            Split::Test => {
                let ann = root.join("val").join("val_annotations.txt");
                let text = String::from_utf8(read_file(&ann)?).map_err(|e| DataError::BadLine {
                    path: ann.clone(),
                    line: 0,
                    message: format!("not utf-8: {e}"),
                })?;
                let images = root.join("val").join("images");
                if !images.is_dir() {
                    return Err(DataError::MissingFolder { path: images, hint: String::new() });
                }
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let mut cols = line.split('\t');
                    let (file, wnid) = match (cols.next(), cols.next()) {
                        (Some(f), Some(w)) if !f.is_empty() => (f, w.trim()),
                        _ => {
                            return Err(DataError::BadLine {
                                path: ann.clone(),
                                line: i + 1,
                                message: "expected <file>\\t<wnid>\\t...".into(),
                            })
                        }
                    };
                    if !is_plain_file_name(file) {
                        return Err(DataError::BadLine {
                            path: ann.clone(),
                            line: i + 1,
                            message: format!("image name {file:?} is not a file name inside val/images/"),
                        });
                    }
                    let label = *index.get(wnid).ok_or_else(|| DataError::BadLine {
                        path: ann.clone(),
                        line: i + 1,
                        message: format!("unknown wnid {wnid:?}"),
                    })?;
                    samples.push((images.join(file), label));
                }
            }
        }
        if samples.is_empty() {
            let path = match split {
                Split::Train => root.join("train"),
                Split::Test => root.join("val").join("val_annotations.txt"),
            };
            return Err(DataError::NoSamples { path, split: Some(split) });
        }
        Ok(ImageFolder { root: root.into(), classes, samples })
    }

    /// The folder this dataset was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names (label i = `classes()[i]`).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// (file, label) of every sample.
    pub fn samples(&self) -> &[(PathBuf, u32)] {
        &self.samples
    }

    /// Decodes every image into an in-memory [`ImageDataset`] with `threads` threads
    /// (Tiny-ImageNet: 100,000 x 12,288 bytes). All images must be `height`x`width`.
    pub fn load_all(&self, height: usize, width: usize, threads: usize) -> Result<ImageDataset> {
        let per = 3 * height * width;
        let n = self.samples.len();
        let images = Mutex::new(vec![0u8; n * per]);
        let next = AtomicUsize::new(0);
        let first_err: Mutex<Option<(usize, DataError)>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let path = &self.samples[i].0;
                    let r = decode_rgb(path).and_then(|img| {
                        if img.height != height || img.width != width {
                            Err(DataError::WrongImageSize {
                                path: path.clone(),
                                width: img.width as u32,
                                height: img.height as u32,
                                expected_width: width as u32,
                                expected_height: height as u32,
                            })
                        } else {
                            Ok(img)
                        }
                    });
                    match r {
                        Ok(img) => {
                            if let Ok(mut all) = images.lock() {
                                all[i * per..(i + 1) * per].copy_from_slice(&img.data);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = first_err.lock() {
                                if f.as_ref().map_or(true, |(j, _)| i < *j) {
                                    *f = Some((i, e));
                                }
                            }
                            next.store(n, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        if let Some((_, e)) = first_err.into_inner().ok().flatten() {
            return Err(e);
        }
        let images = images.into_inner().map_err(|_| DataError::WorkerPanicked(0))?;
        let labels = self.samples.iter().map(|s| s.1).collect();
        let ds = ImageDataset::new(images, labels, (3, height, width), self.classes.len())?;
        Ok(ds.with_class_names(self.classes.clone()))
    }
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.samples.get(index).map(|s| s.1).ok_or(DataError::IndexOutOfRange { index, len: self.samples.len() })
    }
    fn image(&self, index: usize) -> Result<Image<'_>> {
        let (path, _) = self
            .samples
            .get(index)
            .ok_or(DataError::IndexOutOfRange { index, len: self.samples.len() })?;
        decode_rgb(path)
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
}
