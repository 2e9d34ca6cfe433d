//! Typed errors of the model zoo.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ZooError>;

/// A tensor whose shape differs between a model and a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisShaped {
    /// State-dict name of the tensor.
    pub name: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape found in the checkpoint.
    pub found: Vec<usize>,
}

/// Everything that can go wrong when building, counting or loading a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZooError {
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error raised by a `tfkd-core` op (convolution, BatchNorm, pooling,
    /// activation, dropout masks).
    #[error(transparent)]
    Core(#[from] tfkd_core::Error),
    /// Bytes that are not a readable PyTorch `torch.save` file (truncated,
    /// corrupted, or a layout the reader does not support): the error of
    /// [`crate::pth::read_pth_bytes`]. Reading a file, [`crate::read_state_dict`]
    /// reports it as [`ZooError::Io`] naming the path.
    #[error("not a readable PyTorch checkpoint: {reason}")]
    InvalidPth {
        /// What is wrong, naming the record, byte offset or tensor.
        reason: String,
    },
    /// The registry has no model of that name.
    #[error("unknown model `{name}` (known models: {known})")]
    UnknownModel {
        /// The requested name.
        name: String,
        /// Comma-separated registry names.
        known: String,
    },
    /// No torchvision architecture of that name has published weights in
    /// [`crate::pretrained`].
    #[error("unknown torchvision architecture `{name}` (known: {known})")]
    UnknownTorchvisionArch {
        /// The requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// The model exists but not for that input size.
    #[error("model `{name}` does not support input size {input} (supported: {supported})")]
    UnsupportedInput {
        /// The model name.
        name: String,
        /// The requested input side.
        input: usize,
        /// Supported input sides.
        supported: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration for `{model}`: {reason}")]
    InvalidConfig {
        /// The model or family name.
        model: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// The checkpoint's file name has no supported extension.
    #[error("unsupported checkpoint format for `{}` (expected .pth, .pth.tar, .pt, .tar or .safetensors)", path.display())]
    UnsupportedFormat {
        /// The offending path.
        path: PathBuf,
    },
    /// A checkpoint could not be read or written.
    #[error("cannot access checkpoint `{}`: {source}", path.display())]
    Io {
        /// The checkpoint path.
        path: PathBuf,
        /// The underlying error.
        source: candle_core::Error,
    },
    /// The checkpoint's tensors do not match the model's parameters.
    #[error(
        "checkpoint `{source_name}` does not match model `{model}`: {}",
        describe_mismatch(missing, unexpected, mis_shaped)
    )]
    StateDictMismatch {
        /// The model name.
        model: String,
        /// Where the tensors came from (usually a path).
        source_name: String,
        /// Tensors the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Tensors in the checkpoint that the model does not use.
        unexpected: Vec<String>,
        /// Tensors present in both with different shapes.
        mis_shaped: Vec<MisShaped>,
    },
}

impl From<ZooError> for candle_core::Error {
    /// Back into candle's error, for code inside candle's traits
    /// (`ModuleT::forward_t`): a wrapped candle error is unwrapped, a
    /// `tfkd-core` error converted as it converts, anything else wrapped.
    fn from(e: ZooError) -> Self {
        match e {
            ZooError::Candle(e) => e,
            ZooError::Core(e) => e.into(),
            other => candle_core::Error::wrap(other),
        }
    }
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    mis_shaped: &[MisShaped],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing [{}]",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected [{}]",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    if !mis_shaped.is_empty() {
        let items: Vec<String> = mis_shaped
            .iter()
            .map(|m| format!("{}: expected {:?}, found {:?}", m.name, m.expected, m.found))
            .collect();
        parts.push(format!("{} mis-shaped [{}]", items.len(), items.join("; ")));
    }
    parts.join("; ")
}
