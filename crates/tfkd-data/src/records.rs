//! Readers of fixed-size binary record files: official CIFAR-10 / CIFAR-100 binaries and the
//! small real datasets of the project's shared data (cifar10-mini, tiny-imagenet-10, digits).

use std::path::{Path, PathBuf};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The held-out split: CIFAR `test`, Tiny-ImageNet and ImageNet `val`.
    Test,
}

impl std::fmt::Display for Split {
    /// `train` or `test` (the config and error spelling).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// The layout of one fixed-size record: label bytes then planar pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFormat {
    /// Classes of each leading label byte, in file order (CIFAR-100: `[20, 100]`, coarse then fine).
    pub label_classes: Vec<usize>,
    /// Which label byte is the dataset label (the others are kept as coarse labels).
    pub main_label: usize,
    /// Image shape (channels, height, width).
    pub shape: (usize, usize, usize),
    /// Largest legal pixel value (checked when below 255).
    pub pixel_max: u8,
}

impl RecordFormat {
    /// CIFAR-10 binary: 1 label byte (10 classes) + 3x32x32.
    pub fn cifar10() -> Self {
        RecordFormat { label_classes: vec![10], main_label: 0, shape: (3, 32, 32), pixel_max: 255 }
    }
    /// CIFAR-100 binary: coarse byte (20) + fine byte (100) + 3x32x32; labels are the fine ones.
    pub fn cifar100() -> Self {
        RecordFormat { label_classes: vec![20, 100], main_label: 1, shape: (3, 32, 32), pixel_max: 255 }
    }
    /// tiny-imagenet-10: the CIFAR-10 layout at 64x64 (1 + 12,288 bytes).
    pub fn tiny_imagenet_10() -> Self {
        RecordFormat { label_classes: vec![10], main_label: 0, shape: (3, 64, 64), pixel_max: 255 }
    }
    /// sklearn digits: 1 label byte + 8x8 grey pixels in 0..=16.
    pub fn digits() -> Self {
        RecordFormat { label_classes: vec![10], main_label: 0, shape: (1, 8, 8), pixel_max: 16 }
    }
    /// Bytes per record (saturating at `usize::MAX` for an impossible shape, which
    /// [`RecordFormat::validate`] refuses).
    pub fn record_size(&self) -> usize {
        self.pixels().and_then(|p| p.checked_add(self.label_classes.len())).unwrap_or(usize::MAX)
    }

    fn pixels(&self) -> Option<usize> {
        self.shape.0.checked_mul(self.shape.1)?.checked_mul(self.shape.2)
    }

    /// Checks that records of this layout can be read (the fields are public, so a layout may
    /// be built by hand): a main label among the label bytes, at least one class per label byte,
    /// and a non-empty image whose size fits in memory. Returns the record size.
    pub fn validate(&self) -> Result<usize> {
        let bad = |message: String| DataError::InvalidConfig { what: "record format", message };
        if self.main_label >= self.label_classes.len() {
            return Err(bad(format!(
                "main label byte {} of {} label bytes",
                self.main_label,
                self.label_classes.len()
            )));
        }
        if let Some(b) = self.label_classes.iter().position(|&c| c == 0) {
            return Err(bad(format!("label byte {b} has no class")));
        }
        match self.pixels() {
            Some(p) if p > 0 && p <= isize::MAX as usize - self.label_classes.len() => Ok(p + self.label_classes.len()),
            _ => Err(bad(format!("image shape {:?} holds no pixel or too many", self.shape))),
        }
    }
}

/// Reads every record of `bytes` (the content of `path`, used in messages). No record at all
/// is [`DataError::NoSamples`] (without a split: the callers that know it add it); a layout
/// that [`RecordFormat::validate`] refuses is [`DataError::InvalidConfig`].
pub fn parse_records(path: &Path, bytes: &[u8], format: &RecordFormat, expected: Option<usize>) -> Result<ImageDataset> {
    let rs = format.validate()?;
    if bytes.len() % rs != 0 {
        return Err(DataError::TruncatedFile { path: path.into(), size: bytes.len() as u64, record_size: rs });
    }
    let n = bytes.len() / rs;
    if n == 0 {
        return Err(DataError::NoSamples { path: path.into(), split: None });
    }
    if let Some(e) = expected {
        if e != n {
            return Err(DataError::WrongRecordCount { path: path.into(), expected: e, found: n });
        }
    }
    let nl = format.label_classes.len();
    let per = rs - nl;
    let mut images = Vec::with_capacity(n * per);
    let mut labels = Vec::with_capacity(n);
    let mut coarse = if nl > 1 { Some(Vec::with_capacity(n)) } else { None };
    for (r, rec) in bytes.chunks_exact(rs).enumerate() {
        for (b, &classes) in format.label_classes.iter().enumerate() {
            let v = rec[b] as u32;
            if v as usize >= classes {
                let field = match (nl, b) {
                    (1, _) => "label",
                    (_, 0) => "coarse label",
                    _ => "fine label",
                };
                return Err(DataError::LabelOutOfRange { path: path.into(), record: r, field, value: v, classes });
            }
            if b == format.main_label {
                labels.push(v);
            } else if let Some(c) = coarse.as_mut() {
                c.push(v);
            }
        }
        let px = &rec[nl..];
        if format.pixel_max < 255 {
            if let Some(&bad) = px.iter().find(|&&p| p > format.pixel_max) {
                return Err(DataError::PixelOutOfRange { path: path.into(), record: r, value: bad, max: format.pixel_max });
            }
        }
        images.extend_from_slice(px);
    }
    Ok(ImageDataset {
        images,
        labels,
        coarse_labels: coarse,
        shape: format.shape,
        num_classes: format.label_classes[format.main_label],
        class_names: Vec::new(),
        pixel_max: format.pixel_max,
    })
}

/// Reads a record file from disk.
pub fn read_records(path: &Path, format: &RecordFormat, expected: Option<usize>) -> Result<ImageDataset> {
    let bytes = read_file(path)?;
    parse_records(path, &bytes, format, expected)
}

/// [`read_records`] for one split of a dataset: an empty file names the split.
fn read_split(path: &Path, format: &RecordFormat, expected: Option<usize>, split: Split) -> Result<ImageDataset> {
    read_records(path, format, expected).map_err(|e| e.in_split(split))
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(DataError::MissingFile { path: path.into(), hint: String::new() })
        }
        Err(e) => Err(DataError::io("reading", path, e)),
    }
}

/// Reads a text file of names, one per non-empty line.
pub(crate) fn read_names(path: &Path) -> Result<Vec<String>> {
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadLine {
        path: path.into(),
        line: 0,
        message: format!("not utf-8: {e}"),
    })?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

fn concat(path: &Path, parts: Vec<ImageDataset>) -> Result<ImageDataset> {
    let mut it = parts.into_iter();
    let mut first = it.next().ok_or_else(|| DataError::Empty { path: path.into() })?;
    for p in it {
        first.images.extend_from_slice(&p.images);
        first.labels.extend_from_slice(&p.labels);
        if let (Some(a), Some(b)) = (first.coarse_labels.as_mut(), p.coarse_labels.as_ref()) {
            a.extend_from_slice(b);
        }
    }
    Ok(first)
}

/// `dir/name` when it is a folder, else `dir` itself (so both the archive's parent and the
/// extracted folder are accepted).
fn resolve_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let inner = dir.join(name);
    if inner.is_dir() {
        Ok(inner)
    } else if dir.is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Err(DataError::MissingFolder {
            path: dir.into(),
            hint: format!("; expected the extracted `{name}` folder or its parent"),
        })
    }
}

fn names_if_present(path: &Path, expected: usize) -> Result<Vec<String>> {
    if path.is_file() {
        let names = read_names(path)?;
        if names.len() != expected {
            return Err(DataError::BadLine {
                path: path.into(),
                line: names.len(),
                message: format!("{} class names, expected {expected}", names.len()),
            });
        }
        Ok(names)
    } else {
        Ok(Vec::new())
    }
}

fn split_file(dir: &Path, split: Split) -> PathBuf {
    dir.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    })
}

impl ImageDataset {
    /// Reads one CIFAR-10 binary file (`data_batch_N.bin`, `test_batch.bin`, any record count).
    pub fn read_cifar10_bin(path: impl AsRef<Path>) -> Result<Self> {
        read_records(path.as_ref(), &RecordFormat::cifar10(), None)
    }

    /// Reads one CIFAR-100 binary file (`train.bin`, `test.bin`, any record count): fine labels,
    /// with the coarse ones in [`ImageDataset::coarse_labels`].
    pub fn read_cifar100_bin(path: impl AsRef<Path>) -> Result<Self> {
        read_records(path.as_ref(), &RecordFormat::cifar100(), None)
    }

    /// The official CIFAR-10 binary version: `dir` is `cifar-10-batches-bin/` or its parent.
    /// Train: `data_batch_1..5.bin` (50,000), test: `test_batch.bin` (10,000).
    ///
    /// This is tfkd-data's own reader rather than candle-datasets'
    /// `vision::cifar::load_dir` (0.11.1), which does the same job less strictly: it reads
    /// exactly 10,000 records per file with `read_exact` (a longer file's extra records are
    /// dropped silently, a shorter one is an `UnexpectedEof` that names no file), checks no
    /// label, always loads both splits, and stores f32 (4x the memory of u8). Here every file
    /// must hold exactly 10,000 records, labels are range-checked, and errors name the file,
    /// the record and the split. `tfkd_data::interop` (feature `candle-datasets`) converts either
    /// way when code needs candle-datasets' `Dataset`.
    pub fn cifar10(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = resolve_dir(dir.as_ref(), "cifar-10-batches-bin")?;
        let files: Vec<PathBuf> = match split {
            Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
            Split::Test => vec![dir.join("test_batch.bin")],
        };
        let parts = files
            .iter()
            .map(|f| read_split(f, &RecordFormat::cifar10(), Some(10_000), split))
            .collect::<Result<Vec<_>>>()?;
        let names = names_if_present(&dir.join("batches.meta.txt"), 10)?;
        Ok(concat(&dir, parts)?.with_class_names(names))
    }

    /// The official CIFAR-100 binary version: `dir` is `cifar-100-binary/` or its parent.
    /// Train: `train.bin` (50,000), test: `test.bin` (10,000); labels are the 100 fine classes.
    pub fn cifar100(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = resolve_dir(dir.as_ref(), "cifar-100-binary")?;
        let expected = match split {
            Split::Train => 50_000,
            Split::Test => 10_000,
        };
        let ds = read_split(&split_file(&dir, split), &RecordFormat::cifar100(), Some(expected), split)?;
        let names = names_if_present(&dir.join("fine_label_names.txt"), 100)?;
        Ok(ds.with_class_names(names))
    }

    /// The shared `cifar10-mini` set (`train.bin` 5,000 / `test.bin` 2,000 CIFAR-10 records,
    /// names from `batches.meta.txt`).
    pub fn cifar10_mini(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let ds = read_split(&split_file(dir, split), &RecordFormat::cifar10(), None, split)?;
        let names = names_if_present(&dir.join("batches.meta.txt"), 10)?;
        Ok(ds.with_class_names(names))
    }

    /// The shared `tiny-imagenet-10` set (64x64 CIFAR-style records; `Split::Test` reads
    /// `val.bin`; class names from `classes.tsv`).
    pub fn tiny_imagenet_10(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let file = dir.join(match split {
            Split::Train => "train.bin",
            Split::Test => "val.bin",
        });
        let ds = read_split(&file, &RecordFormat::tiny_imagenet_10(), None, split)?;
        let tsv = dir.join("classes.tsv");
        let mut names = Vec::new();
        if tsv.is_file() {
            let text = String::from_utf8_lossy(&read_file(&tsv)?).into_owned();
            for (i, line) in text.lines().enumerate() {
                let cols: Vec<&str> = line.split('\t').collect();
                if i == 0 && cols.first().is_some_and(|c| c.parse::<u32>().is_err()) {
                    continue; // header
                }
                if line.trim().is_empty() {
                    continue;
                }
                let name = cols.get(3).or(cols.get(1)).copied().unwrap_or(cols[0]);
                names.push(name.to_string());
            }
            if names.len() != 10 {
                return Err(DataError::BadLine {
                    path: tsv,
                    line: names.len(),
                    message: format!("{} classes, expected 10", names.len()),
                });
            }
        }
        Ok(ds.with_class_names(names))
    }

    /// The shared `sklearn-digits` set: 1x8x8 grey images with values 0..=16
    /// ([`ImageDataset::pixel_max`] is 16).
    pub fn digits(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let names = (0..10).map(|d| d.to_string()).collect();
        Ok(read_split(&split_file(dir, split), &RecordFormat::digits(), None, split)?.with_class_names(names))
    }
}
