//! What the runner's integration tests share: the committed digits, a small
//! fast recipe, and comparisons of run directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tfkd_runner::{run_experiment, ExperimentConfig, RunOptions, Silent};

/// scikit-learn's digits, committed under `fixtures/digits/`.
pub fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits")
}

/// A small, fast recipe: a 4-channel 5-layer CNN on 512 training digits.
pub fn config(out: &Path, strategy: &str, epochs: usize) -> ExperimentConfig {
    let text = config_text(out, strategy, epochs);
    ExperimentConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The TOML of [`config`].
pub fn config_text(out: &Path, strategy: &str, epochs: usize) -> String {
    format!(
        r#"
        epochs = {epochs}
        out_dir = "{out}"
        seed = 3
        [model]
        name = "cnn"
        width_divisor = 4
        [data]
        dataset = "digits"
        root = "{root}"
        train_subset = 512
        [optim]
        batch_size = 32
        lr = 0.05
        [schedule]
        warmup_epochs = 1
        decay = {{ kind = "constant" }}
        [strategy]
        {strategy}
        "#,
        out = out.display(),
        root = digits().display(),
    )
}

/// Writes `config` as `<dir>/exp.toml` for the binary.
pub fn write_config(dir: &Path, config: &ExperimentConfig) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("exp.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// The `tfkd` binary.
pub fn tfkd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tfkd"))
}

/// Runs `tfkd -q <args>` to its end.
pub fn tfkd_output(args: &[&str], config: &Path) -> Output {
    tfkd().arg("-q").args(args).arg("-c").arg(config).output().unwrap()
}

/// Every tensor of a safetensors file, by name, as raw bytes.
pub fn read_checkpoint(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> =
        st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect();
    out.sort();
    out
}

/// The lines of `metrics.jsonl` without their timings.
pub fn metrics_without_timings(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().retain(|k, _| k != "seconds" && k != "images_per_sec");
            v
        })
        .collect()
}

/// Asserts that two run directories hold the same tensors and metrics
/// (timings aside).
pub fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(read_checkpoint(&a.join("last.safetensors")), read_checkpoint(&b.join("last.safetensors")));
    assert_eq!(read_checkpoint(&a.join("best.safetensors")), read_checkpoint(&b.join("best.safetensors")));
    assert_eq!(metrics_without_timings(&a.join("metrics.jsonl")), metrics_without_timings(&b.join("metrics.jsonl")));
}

/// A baseline run in `out` whose learning rate (1e30) makes it diverge in
/// its first epoch, and the error it stops with.
pub fn diverged_start(out: &Path, epochs: usize) -> (ExperimentConfig, String) {
    let mut c = config(out, "method = \"baseline\"", epochs);
    c.optim.lr = 1e30;
    let err = run_experiment(&c, &RunOptions::default(), &mut Silent).expect_err("lr 1e30 diverges").to_string();
    (c, err)
}
