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
    #[error("training diverged at epoch {epoch}, iteration {iteration}: {cause}; {}", kept_checkpoint(*epochs_done, checkpoint))]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based iteration within the epoch.
        iteration: usize,
        /// The loss error (in the message, not chained as a source, so that
        /// it is printed once).
        cause: Box<tfkd_core::Error>,
        /// Epochs finished before it (0: no checkpoint exists).
        epochs_done: usize,
        /// The run's resumable checkpoint, `last.safetensors`.
        checkpoint: PathBuf,
    },
    /// A stop signal arrived (SIGTERM, SIGUSR1: a scheduler's preemption or
    /// time limit; SIGINT, SIGHUP); the run finished its step and wrote its
    /// resume checkpoint. The binaries exit with
    /// [`crate::run_dir::EXIT_INTERRUPTED`].
    #[error(
        "run {run} stopped by signal {signal} in epoch {epoch} after {batches_done} of its batches; its resume checkpoint \
         is {}: the same command with --resume or --auto-resume continues exactly where it stopped",
        checkpoint.display()
    )]
    Interrupted {
        /// The run name.
        run: String,
        /// The signal number.
        signal: i32,
        /// 1-based epoch in progress.
        epoch: usize,
        /// Batches of that epoch done.
        batches_done: usize,
        /// `last.safetensors`.
        checkpoint: PathBuf,
    },
    /// A data-parallel replica failed without an error of its own.
    #[error("data-parallel training: {0}")]
    Replica(String),
    /// Another live process holds the run's lock.
    #[error(
        "run {run} is being trained by pid {pid} on host {host} (lock taken {}, {}); wait for it to end or stop it: \
         the lock of a process that died is taken over automatically, at once on the same host and after 5 minutes \
         without a heartbeat from another host",
        ago(*since), lock.display()
    )]
    Locked {
        /// The run name.
        run: String,
        /// The holder's pid.
        pid: u32,
        /// The holder's host.
        host: String,
        /// When the lock was taken, seconds since the Unix epoch.
        since: u64,
        /// The lock file.
        lock: PathBuf,
    },
    /// The run's lock was taken over by another process (which judged this
    /// one dead): this process stops before writing anything more.
    #[error(
        "run {run}: this process no longer holds the lock {} (another process took it over, judging this one dead); \
         stopped before writing more into the run directory",
        lock.display()
    )]
    LockLost {
        /// The run name.
        run: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// `--resume` was asked for a run that has nothing to resume.
    #[error("--resume: run {run} has no checkpoint to resume ({dir} does not exist){hint}")]
    NothingToResume {
        /// The run name.
        run: String,
        /// Its directory.
        dir: PathBuf,
        /// The started runs of the same output folder, as a hint.
        hint: String,
    },
    /// The last training batch holds one image and the model has BatchNorm.
    #[error(
        "{what}: the training set has {images} images, so with optim.batch_size = {batch_size} the last batch of every \
         epoch holds 1 image, and BatchNorm cannot compute a batch variance from one value per channel (PyTorch stops with \
         \"Expected more than 1 value per channel when training\"); set `data.drop_last = true` (the official code keeps \
         the last batch), or choose another optim.batch_size or data.train_subset"
    )]
    SingleImageBatch {
        /// Which run (or teacher).
        what: String,
        /// Training images.
        images: usize,
        /// The batch size.
        batch_size: usize,
    },
    /// A checkpoint could not be read, or does not fit the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation failed. The OS error is part of the message
    /// and not chained as a source, so that it is printed once.
    #[error("{}", io_message(path, what, error))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (may be empty).
        what: String,
        /// The OS error.
        error: std::io::Error,
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
    /// From tfkd-distill (strategy configs).
    #[error(transparent)]
    Distill(Box<tfkd_distill::DistillError>),
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
    Distill(tfkd_distill::DistillError),
    Candle(candle_core::Error),
);

/// `Result` with [`RunError`].
pub type Result<T> = std::result::Result<T, RunError>;

pub(crate) fn config_err(field: impl Into<String>, reason: impl Into<String>) -> RunError {
    RunError::Config { field: field.into(), reason: reason.into() }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.into();
    move |error| RunError::Io { path, what: String::new(), error }
}

fn io_message(path: &std::path::Path, what: &str, error: &std::io::Error) -> String {
    if what.is_empty() {
        format!("{}: {error}", path.display())
    } else {
        format!("{}: {what}: {error}", path.display())
    }
}

fn kept_checkpoint(epochs_done: usize, checkpoint: &std::path::Path) -> String {
    if epochs_done == 0 {
        "no epoch had finished, so there is no checkpoint; a run started again with a lower optim.lr starts afresh".into()
    } else {
        format!("the checkpoint of epoch {epochs_done}, the last good one, is kept at {}", checkpoint.display())
    }
}

/// "N s/min/h ago" for a Unix time.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let s = now.saturating_sub(unix);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}
