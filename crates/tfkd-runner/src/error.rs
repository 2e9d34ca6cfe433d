//! Errors of the runner: each names the config field, file or epoch at fault.

use std::path::PathBuf;

/// An error from configuring or running an experiment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A config field has an invalid value.
    #[error("config field `{field}`: {reason}")]
    Config {
        /// Dotted path of the field, e.g. `optim.batch_size`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong, with the TOML location when there is one.
        reason: String,
    },
    /// The run directory already holds a run and `--resume` was not given.
    #[error("run directory {0} already holds a started run: pass --resume to continue it, or choose another `name`")]
    RunExists(PathBuf),
    /// A resumed run's stored config differs from the given one.
    #[error("run directory {dir} was started with a different config ({detail}); use another `name` or the original config")]
    ConfigChanged {
        /// The run directory.
        dir: PathBuf,
        /// The first differing field.
        detail: String,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged at epoch {epoch}, iteration {iteration}: {source}; the last good checkpoint is kept at {checkpoint}")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based iteration within the epoch.
        iteration: usize,
        /// The loss error.
        source: Box<tfkd_core::Error>,
        /// The last good checkpoint (may not exist when the first epoch diverged).
        checkpoint: PathBuf,
    },
    /// A checkpoint could not be read, or does not fit the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// From tfkd-core (losses, optimizer).
    #[error(transparent)]
    Core(Box<tfkd_core::Error>),
    /// From tfkd-zoo (models, weights).
    #[error(transparent)]
    Zoo(Box<tfkd_zoo::ZooError>),
    /// From tfkd-data (datasets, loader).
    #[error(transparent)]
    Data(Box<tfkd_data::DataError>),
    /// From candle.
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
}

// The wrapped library errors are boxed so that `Result<T, RunError>` stays
// small on the happy path (clippy's `result_large_err`); `?` converts them.
macro_rules! boxed_from {
    ($($variant:ident($error:ty)),* $(,)?) => {$(
        impl From<$error> for RunError {
            fn from(e: $error) -> Self {
                RunError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Core(tfkd_core::Error),
    Zoo(tfkd_zoo::ZooError),
    Data(tfkd_data::DataError),
    Candle(candle_core::Error),
);

/// `Result` with [`RunError`].
pub type Result<T> = std::result::Result<T, RunError>;

pub(crate) fn config_err(field: impl Into<String>, reason: impl Into<String>) -> RunError {
    RunError::Config { field: field.into(), reason: reason.into() }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.into();
    move |source| RunError::Io { path, source }
}
