//! The error type of `tfkd-distill`.

use crate::Method;

/// An error from building a strategy: each names the method, the field and
/// the rejected value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistillError {
    /// A strategy field has a value the method cannot use.
    #[error("{method}: invalid {field} = {value}: {expected}")]
    InvalidField {
        /// The method of the strategy.
        method: Method,
        /// The field, as written in the `[strategy]` table (e.g. `teacher.source`).
        field: &'static str,
        /// The rejected value, as written in a config.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// A loss hyper-parameter is invalid (from `tfkd_core`'s validation,
    /// which names the parameter and value).
    #[error(transparent)]
    Loss(#[from] tfkd_core::Error),
}

/// `Result` with [`DistillError`].
pub type Result<T> = std::result::Result<T, DistillError>;
