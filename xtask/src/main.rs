//! `cargo xtask <task>`: project automation, one module per task.
//!
//! - `fixtures`: regenerate the PyTorch golden fixtures under `fixtures/`.
//! - `bench`: run the criterion benchmarks and print the PyTorch comparison.
//! - `reproduce-table <N|ablation|all>`: re-run tables of the paper (and the
//!   project's Tf-KD_reg ablation), report side by side; in this process
//!   or as Slurm job arrays (`--executor slurm`).
//!
//! Tidiness checks (`//!` headers, no machine paths in the repository) run as
//! ordinary tests of this crate (`tidy.rs`), so `cargo test` enforces them.

mod fixtures;
mod reproduce;
mod tables;
mod tidy;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tfkd project automation")]
struct Flags {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the golden fixtures with PyTorch (CPU).
    Fixtures {
        /// The Python with torch, torchvision and safetensors installed.
        #[arg(long, env = "TFKD_PYTHON", default_value = "python3")]
        python: PathBuf,
        /// Only these generators: core, data, zoo (default: all).
        only: Vec<String>,
    },
    /// Re-run tables of the paper and write a report beside the printed numbers.
    ReproduceTable(Box<reproduce::Args>),
    /// Run the loss benchmarks and compare them with PyTorch.
    Bench {
        /// The Python with torch installed (skipped when it has no torch).
        #[arg(long, env = "TFKD_PYTHON", default_value = "python3")]
        python: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Flags::parse().task {
        Task::Fixtures { python, only } => fixtures::run(&python, &only),
        Task::Bench { python } => bench(&python),
        Task::ReproduceTable(args) => {
            tfkd_runner::tune_for_training();
            tfkd_runner::run_dir::release_locks_on_termination();
            reproduce::pin_candle_threads(&args);
            reproduce::run(&args)
        }
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Runs a command in the project root, failing with its command line.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.current_dir(project_root()).status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn bench(python: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_checked(Command::new(&cargo).args(["bench", "-p", "tfkd-benches"]))?;
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| project_root().join("target"));
    let has_torch = Command::new(python).args(["-c", "import torch"]).status().map(|s| s.success()).unwrap_or(false);
    if !has_torch {
        println!("skipping the PyTorch comparison: {} cannot import torch (set TFKD_PYTHON)", python.display());
        return Ok(());
    }
    run_checked(
        Command::new(python).arg("scripts/bench_losses_torch.py").arg("--criterion").arg(target.join("criterion")),
    )
}
