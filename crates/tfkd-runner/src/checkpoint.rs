//! Run-directory files, all written atomically (temporary file, fsync,
//! rename): a crash never leaves a half-written checkpoint or result.
//!
//! `last.safetensors` holds everything needed to resume: the model's tensors
//! under their PyTorch names (BatchNorm running statistics included), the
//! momentum buffers under `optim.`, and a JSON [`CheckpointMeta`] in the
//! safetensors header (epochs done, the per-epoch history). `best.safetensors`
//! and `epoch-E.safetensors` hold the model only, loadable as teachers.

use crate::error::{io_err, Result, RunError};
use crate::train::EpochRecord;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Prefix of optimizer tensors in `last.safetensors`.
pub const OPTIM_PREFIX: &str = "optim.";
/// Key of the JSON metadata in the safetensors header.
const META_KEY: &str = "tfkd";

/// The resume state stored next to the tensors.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Completed epochs.
    pub epochs_done: usize,
    /// The registry name of the model.
    pub model: String,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch in progress, when the checkpoint was written by a stop
    /// signal in the middle of it (absent in end-of-epoch checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

/// How far the epoch after `epochs_done` had gone when a stop signal asked
/// the run to checkpoint: enough to finish it with exactly the numbers of an
/// uninterrupted run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartialEpoch {
    /// Batches of the epoch done.
    pub batches_done: usize,
    /// Images seen.
    pub images: usize,
    /// Correct top-1 predictions on the training batches.
    pub correct: usize,
    /// Sum over images of the loss, and of its hard and soft parts.
    pub loss_sum: f64,
    /// See `loss_sum`.
    pub hard_sum: f64,
    /// See `loss_sum`.
    pub soft_sum: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training seconds so far.
    pub seconds: f64,
    /// The dropout generator's state ([`tfkd_zoo::Model::dropout_state`]),
    /// for networks with dropout (replica 0's under data parallelism).
    pub dropout_state: Option<u64>,
    /// The other data-parallel replicas' dropout generator states, rank 1 on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_dropout_states: Vec<u64>,
}

impl PartialEpoch {
    /// Adds the sums of the next data-parallel replica (in rank order):
    /// images, correct predictions and loss sums added, the longest time
    /// kept, its dropout state appended after the others'.
    pub fn add_replica(&mut self, other: &PartialEpoch) {
        self.images += other.images;
        self.correct += other.correct;
        self.loss_sum += other.loss_sum;
        self.hard_sum += other.hard_sum;
        self.soft_sum += other.soft_sum;
        self.seconds = self.seconds.max(other.seconds);
        self.replica_dropout_states.extend(other.dropout_state);
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes).map_err(io_err(&tmp))?;
    commit(&tmp, path)
}

/// Creates (or truncates) `path` with `bytes` and syncs it to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `path` with `suffix` appended to its file name (`a/b` → `a/b.tmp`).
pub(crate) fn with_name_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn tmp_path(path: &Path) -> PathBuf {
    with_name_suffix(path, ".tmp")
}

fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Saves tensors (and optional metadata) as safetensors, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)], meta: Option<&CheckpointMeta>) -> Result<()> {
    let tmp = tmp_path(path);
    let info = match meta {
        Some(m) => Some(HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(m).map_err(|e| RunError::Checkpoint { path: path.into(), reason: e.to_string() })?,
        )])),
        None => None,
    };
    let mut sorted: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(sorted, info, &tmp)
        .map_err(|e| RunError::Checkpoint { path: path.into(), reason: e.to_string() })?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
    commit(&tmp, path)
}

/// A loaded checkpoint: model tensors, optimizer tensors (prefix removed) and metadata.
pub struct Loaded {
    /// Model tensors by PyTorch name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer state by name.
    pub optim: HashMap<String, Tensor>,
    /// The metadata, when the file has it.
    pub meta: Option<CheckpointMeta>,
}

/// Reads a checkpoint written by [`save_tensors`].
pub fn load_tensors(path: &Path, device: &Device) -> Result<Loaded> {
    let bad = |reason: String| RunError::Checkpoint { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = match header.metadata().as_ref().and_then(|m| m.get(META_KEY)) {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| bad(format!("metadata: {e}")))?),
        None => None,
    };
    let all = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
    let (mut model, mut optim) = (HashMap::new(), HashMap::new());
    for (name, t) in all {
        match name.strip_prefix(OPTIM_PREFIX) {
            Some(rest) => optim.insert(rest.to_string(), t),
            None => model.insert(name, t),
        };
    }
    Ok(Loaded { model, optim, meta })
}
