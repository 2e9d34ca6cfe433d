//! The one error type of `tfkd-core`: every invalid parameter, shape, label
//! or non-finite value is reported with the offending name and value.

/// An error from a `tfkd-core` function.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A scalar hyper-parameter is outside its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidParameter {
        /// The parameter's name, e.g. `alpha` or `temperature`.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What a valid value looks like, e.g. `must be in [0, 1]`.
        expected: String,
    },
    /// A tensor has the wrong rank, size or dtype.
    #[error("{what}: {detail}")]
    Shape {
        /// Which input, e.g. `teacher logits`.
        what: &'static str,
        /// The mismatch, naming the dims seen and expected.
        detail: String,
    },
    /// A class label is not below the number of classes.
    #[error("label {label} at batch index {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Position in the batch.
        index: usize,
        /// The offending label.
        label: i64,
        /// Number of classes K (the logits' last dimension).
        num_classes: usize,
    },
    /// An input or result holds NaN or infinity.
    #[error("{what} contains NaN or infinite values")]
    NonFinite {
        /// Which tensor, e.g. `student logits`.
        what: &'static str,
    },
    /// Another replica of a data-parallel group stopped (failed, exited,
    /// lost its connection), so this one cannot go on.
    #[error("another replica stopped ({0}); this replica stops too")]
    PeerStopped(String),
    /// Saved state (optimizer, RNG) does not fit what it is loaded into.
    #[error("invalid state: {0}")]
    State(String),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<Error> for candle_core::Error {
    /// Back into candle's error, for code inside candle's traits (`Module`,
    /// custom ops): a wrapped candle error is unwrapped, anything else wrapped.
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Checks a scalar parameter against a predicate, naming it in the error.
pub(crate) fn check_param(
    name: &'static str,
    value: f64,
    valid: bool,
    expected: &str,
) -> Result<()> {
    if value.is_finite() && valid {
        Ok(())
    } else {
        Err(Error::InvalidParameter { name, value, expected: expected.to_string() })
    }
}
