//! The typed error of `tfkd-data`: every variant names the file (and record) it is about.
//!
//! Underlying errors (the OS error of [`DataError::Io`], candle's of [`DataError::Candle`])
//! are part of the message and are *not* linked as [`std::error::Error::source`]: a chain
//! printer (`anyhow`'s `{:#}`, which the `tfkd` binary uses) then prints their text once, and
//! a plain `{}` still shows it. The wrapped error stays reachable through the variant's field.

use std::path::PathBuf;

use crate::records::Split;

/// Everything that can go wrong while reading, augmenting, loading or downloading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation on a file or folder failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done ("reading", "opening", "creating", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (in the message, not linked as `source()`: see the module doc).
        error: std::io::Error,
    },
    /// A required file is missing.
    #[error("missing file {path}{hint}")]
    MissingFile {
        /// The file that should exist.
        path: PathBuf,
        /// Extra help (may be empty), starting with "; ".
        hint: String,
    },
    /// A path that must be a folder (a dataset or download root) is something else.
    #[error("{path} is not a directory{hint}")]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// Extra help (may be empty), starting with "; ".
        hint: String,
    },
    /// A required folder is missing.
    #[error("missing folder {path}{hint}")]
    MissingFolder {
        /// The folder that should exist.
        path: PathBuf,
        /// Extra help (may be empty), starting with "; ".
        hint: String,
    },
    /// A fixed-record file whose size is not a whole number of records.
    #[error("{path}: size {size} bytes is not a multiple of the {record_size}-byte record (truncated, or not this format)")]
    TruncatedFile {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The record size of the expected format.
        record_size: usize,
    },
    /// A file with the wrong number of records (e.g. an official CIFAR batch that is not 10,000).
    #[error("{path}: expected {expected} records, found {found}")]
    WrongRecordCount {
        /// The file.
        path: PathBuf,
        /// Records the format prescribes.
        expected: usize,
        /// Records found.
        found: usize,
    },
    /// A label byte outside the class range.
    #[error("{path}: record {record}: {field} {value} out of range 0..{classes}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The 0-based record index.
        record: usize,
        /// Which label ("label", "coarse label", "fine label").
        field: &'static str,
        /// The value found.
        value: u32,
        /// The number of classes.
        classes: usize,
    },
    /// A pixel value above the format's maximum (e.g. above 16 for the digits).
    #[error("{path}: record {record}: pixel value {value} above the format's maximum {max}")]
    PixelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The 0-based record index.
        record: usize,
        /// The value found.
        value: u8,
        /// The format's maximum.
        max: u8,
    },
    /// A text metadata file (class list, annotations) with a malformed line.
    #[error("{path}: line {line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An image file that cannot be decoded.
    #[error("cannot decode image {path}: {message}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// An image of the wrong size for a fixed-size dataset.
    #[error("{path}: image is {width}x{height}, expected {expected_width}x{expected_height}")]
    WrongImageSize {
        /// The image file.
        path: PathBuf,
        /// Width found.
        width: u32,
        /// Height found.
        height: u32,
        /// Width expected.
        expected_width: u32,
        /// Height expected.
        expected_height: u32,
    },
    /// A dataset file or folder that yields no sample (an empty record file, a class folder
    /// tree without images, an empty annotation file).
    #[error("{path}: no samples{}", in_split(split))]
    NoSamples {
        /// The file or folder read.
        path: PathBuf,
        /// The split being read, when the reader knows it.
        split: Option<Split>,
    },
    /// A dataset folder without any image.
    #[error("{path}: no images found")]
    Empty {
        /// The folder.
        path: PathBuf,
    },
    /// A sample index past the end of a dataset.
    #[error("sample {index} out of range for a dataset of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// An invalid configuration value (batch size 0, crop larger than the image, ...).
    #[error("invalid {what}: {message}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An augmentation pipeline produced a different shape than the batch expects.
    #[error("sample {index}: transformed image is {found:?} (c, h, w), the batch expects {expected:?}")]
    ShapeMismatch {
        /// The sample index.
        index: usize,
        /// The shape produced.
        found: (usize, usize, usize),
        /// The batch shape.
        expected: (usize, usize, usize),
    },
    /// A downloaded or provided archive whose MD5 is not the published one.
    #[error("{path}: md5 {found} does not match the published {expected}")]
    ChecksumMismatch {
        /// The archive file.
        path: PathBuf,
        /// The published checksum.
        expected: String,
        /// The checksum computed.
        found: String,
    },
    /// A file published with a SHA-256 prefix (torch.hub's convention) whose SHA-256 does not
    /// start with it: a corrupted or substituted download (deleted), or a file found in place
    /// (left there).
    #[error(
        "{path}: SHA-256 {found} does not start with the published prefix {expected_prefix}; {}",
        if *deleted { "the download was deleted" } else { "delete the file to download it again" }
    )]
    HashMismatch {
        /// The file (where it was to be, for a deleted download).
        path: PathBuf,
        /// The published prefix, lower-case hex.
        expected_prefix: String,
        /// The SHA-256 computed, lower-case hex.
        found: String,
        /// Whether it was a download, deleted (`true`), or a file found in place (`false`).
        deleted: bool,
    },
    /// The download failed (no network, HTTP error, ...).
    #[error("cannot download {url}: {message}; without a network, download it elsewhere and put it at {dest}, then run again (it is verified and used from there)")]
    Download {
        /// The URL tried.
        url: String,
        /// Where the archive must be put by hand.
        dest: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A malformed archive (bad tar/zip, or an entry escaping the destination).
    #[error("{path}: bad archive: {message}")]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error from candle while building a tensor (in the message, not linked as
    /// `source()`: see the module doc).
    #[error("building a tensor: {0}")]
    Candle(candle_core::Error),
    /// A loader worker thread panicked.
    #[error("loader worker {0} panicked")]
    WorkerPanicked(usize),
}

/// Shorthand for `Result<T, DataError>`.
pub type Result<T> = std::result::Result<T, DataError>;

impl From<candle_core::Error> for DataError {
    fn from(e: candle_core::Error) -> Self {
        DataError::Candle(e)
    }
}

fn in_split(split: &Option<Split>) -> String {
    split.map(|s| format!(" in the {s} split")).unwrap_or_default()
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io { action, path: path.into(), error }
    }

    /// Names `split` in a [`DataError::NoSamples`] that does not name one yet; other errors
    /// pass through.
    pub(crate) fn in_split(self, split: Split) -> Self {
        match self {
            DataError::NoSamples { path, split: None } => DataError::NoSamples { path, split: Some(split) },
            e => e,
        }
    }
}
