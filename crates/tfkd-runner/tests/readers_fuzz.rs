//! Property tests of the runner's readers: random, truncated and bit-flipped
//! bytes given to the checkpoint reader, the run-file readers and the config
//! parser end in a named error (or a value), never a panic or a hang.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use std::path::Path;
use tfkd_runner::checkpoint::{load_tensors, save_tensors, CheckpointMeta};
use tfkd_runner::train::EpochRecord;
use tfkd_runner::{ExperimentConfig, RunError};

/// A valid resumable checkpoint: two model tensors, a momentum buffer and
/// the metadata.
fn valid_checkpoint() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    let dev = Device::Cpu;
    let tensors = vec![
        ("conv.weight".to_string(), Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((2, 3, 2, 2)).unwrap()),
        ("bn.running_var".to_string(), Tensor::ones(2, candle_core::DType::F32, &dev).unwrap()),
        ("optim.conv.weight".to_string(), Tensor::zeros((2, 3, 2, 2), candle_core::DType::F32, &dev).unwrap()),
    ];
    let meta = CheckpointMeta {
        epochs_done: 1,
        model: "cnn".into(),
        history: vec![EpochRecord { epoch: 1, lr: 0.1, test_top1: 50.0, ..Default::default() }],
        partial: Some(tfkd_runner::checkpoint::PartialEpoch { batches_done: 3, images: 96, ..Default::default() }),
    };
    save_tensors(&path, &tensors, Some(&meta)).unwrap();
    std::fs::read(&path).unwrap()
}

const CONFIG: &str = r#"
epochs = 3
seed = 1
keep_epochs = [1]
[model]
name = "cnn"
width_divisor = 4
[data]
dataset = "digits"
root = "."
train_subset = 64
[optim]
batch_size = 32
lr = 0.05
[schedule]
warmup_epochs = 1
decay = { kind = "multi_step", milestones = [2], gamma = 0.2 }
[strategy]
method = "tf-kd-reg"
alpha = 0.1
temperature = 20.0
multiplier = 10.0
"#;

fn load(bytes: &[u8]) -> Result<(), RunError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    std::fs::write(&path, bytes).unwrap();
    load_tensors(&path, &Device::Cpu).map(|_| ())
}

fn assert_named(result: Result<(), RunError>, path_hint: &str) {
    if let Err(e) = result {
        let text = e.to_string();
        assert!(!text.is_empty());
        assert!(
            matches!(e, RunError::Checkpoint { .. } | RunError::Io { .. } | RunError::ConfigFile { .. } | RunError::Config { .. }),
            "{path_hint}: unexpected error kind: {text}"
        );
    }
}

fn run_files(dir: &Path) -> (Result<(), RunError>, Result<(), RunError>) {
    (
        tfkd_runner::run_dir::read_summary(dir).map(|_| ()),
        tfkd_runner::run_dir::read_metrics(dir).map(|_| ()),
    )
}

#[test]
fn the_valid_inputs_are_read() {
    assert!(load(&valid_checkpoint()).is_ok());
    assert!(ExperimentConfig::from_toml(CONFIG).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn checkpoints_truncated_or_flipped(keep in 0.0f64..1.2, flips in prop::collection::vec((0usize..4096, 0u8..8), 0..6)) {
        let mut bytes = valid_checkpoint();
        for (at, bit) in flips {
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        // A fifth of the cases keep the whole file; the rest cut it anywhere.
        let len = bytes.len();
        bytes.truncate(((len as f64 * keep) as usize).min(len));
        assert_named(load(&bytes), "checkpoint");
    }

    #[test]
    fn checkpoints_of_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), header in 0u64..4096) {
        // A plausible header length in front makes the reader go further.
        let mut data = header.to_le_bytes().to_vec();
        data.extend_from_slice(&bytes);
        assert_named(load(&data), "random checkpoint");
        assert_named(load(&bytes), "random bytes");
    }

    #[test]
    fn configs_truncated_or_mangled(keep in 0.0f64..1.2, flips in prop::collection::vec((0usize..1000, any::<u8>()), 0..4)) {
        let mut bytes = CONFIG.as_bytes().to_vec();
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let len = bytes.len();
        bytes.truncate(((len as f64 * keep) as usize).min(len));
        let text = String::from_utf8_lossy(&bytes);
        assert_named(ExperimentConfig::from_toml(&text).map(|_| ()), "config");
    }

    #[test]
    fn run_files_of_random_bytes(summary in prop::collection::vec(any::<u8>(), 0..300), metrics in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("summary.json"), &summary).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), &metrics).unwrap();
        let (s, m) = run_files(dir.path());
        assert_named(s, "summary");
        assert_named(m, "metrics");
    }
}
