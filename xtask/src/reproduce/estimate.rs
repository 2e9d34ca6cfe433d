//! The dry run's cost estimate.
//!
//! Two bases, and the printout names the one used:
//!
//! - **measured** (narrowed networks on the CPU, as in `quick`): seconds per
//!   training image of each network at the width it is trained at, measured
//!   from whole quick reproductions on the 2-core development machine (batch
//!   32, two runs sharing the cores: the registry's
//!   `ModelEntry::measured_cpu_seconds_per_image`); an evaluation image is
//!   counted as a tenth of a training image (no backward pass, batches of
//!   256), and `jobs` runs at a time divide the total.
//! - **FLOP** (full-width networks, any device): forward multiply-accumulates
//!   per image (the registry's `ModelEntry::forward_mmacs`), ~3 passes per
//!   training step (4 with a teacher), and a sustained throughput per device
//!   kind (measured for CUDA, guessed otherwise).
//!
//! Every per-network number is read from the run's registry row
//! ([`PlannedRun::network`]); this module has none of its own.

use tfkd_runner::device::DeviceSpec;
use super::plan::{Plan, PlannedRun};
use tfkd_runner::data::DatasetKind;

/// The estimate and what it rests on.
pub struct Estimate {
    /// Training images over all runs and epochs.
    pub train_images: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// One line on how it was made.
    pub basis: String,
}

/// Sustained training throughput in GFLOP/s. CUDA: tfkd's own, measured
/// (ResNet18-CIFAR at batch 128 on an H200, 2026-11-27: 1,570 img/s × 3.3
/// GFLOP per image; PyTorch reached 8× that, docs/PERFORMANCE.md); Metal
/// and CPU: rough guesses.
fn assumed_gflops(device: DeviceSpec) -> f64 {
    if matches!(device, DeviceSpec::Cuda(_)) {
        5_000.0
    } else if device == DeviceSpec::Metal {
        2_000.0
    } else {
        8.0
    }
}

fn dataset_size(kind: DatasetKind) -> f64 {
    match kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => 50_000.0,
        DatasetKind::TinyImagenet => 100_000.0,
        DatasetKind::Imagenet => 1_281_167.0,
        DatasetKind::Cifar10Mini | DatasetKind::TinyImagenet10 => 5_000.0,
        DatasetKind::Digits => 1_347.0,
    }
}

/// A run's training cost in arbitrary units, for scheduling the longest runs
/// first: measured seconds per image where known, else forward MACs.
pub fn relative_cost(run: &PlannedRun) -> f64 {
    let (net, config) = (run.network, &run.config);
    let divisor = config.model.width_divisor;
    let per_image = net
        .measured_cpu_seconds(divisor)
        .unwrap_or_else(|| net.forward_mmacs * 1e-5 / (divisor as f64).powi(2));
    per_image * config.epochs as f64
}

/// The cost of training every run of `plan` on `device`, `jobs` at a time.
pub fn estimate(plan: &Plan, device: DeviceSpec, jobs: usize) -> Estimate {
    let mut train_images = 0.0;
    let mut flop = 0.0;
    let mut measured = Some(0.0);
    for run in plan.runs.values() {
        let c = &run.config;
        let full = dataset_size(c.data.dataset);
        let subset = |n: usize| if n > 0 { (n as f64).min(full) } else { full };
        let (train, test) = (subset(c.data.train_subset), subset(c.data.test_subset));
        let epochs = c.epochs as f64;
        train_images += train * epochs;

        let net = run.network;
        let side = c.data.dataset.input_size().side() as f64;
        // `forward_mmacs` is at the network's native input: 224×224 for the
        // ImageNet networks, 32×32 for the others (scaled to 64×64 by area).
        let scale = if net.is_imagenet() { 1.0 } else { (side / 32.0).powi(2) };
        let macs = net.forward_mmacs * 1e6 * scale / (c.model.width_divisor as f64).powi(2);
        let passes = if run.teacher.is_some() { 4.0 } else { 3.0 };
        flop += 2.0 * macs * passes * train * epochs;

        let teacher_share = if run.teacher.is_some() { 4.0 / 3.0 } else { 1.0 };
        measured = match (measured, net.measured_cpu_seconds(c.model.width_divisor)) {
            (Some(total), Some(t)) if device.is_cpu() && side == 32.0 => {
                Some(total + epochs * t * (train * teacher_share + test / 10.0))
            }
            _ => None,
        };
    }
    match measured {
        Some(seconds) if !plan.runs.is_empty() => Estimate {
            train_images,
            seconds: seconds / jobs.max(1) as f64,
            basis: format!(
                "measured seconds per image of each narrowed network on a 2-core machine, {jobs} run(s) at a time"
            ),
        },
        _ => Estimate {
            train_images,
            seconds: flop / (assumed_gflops(device) * 1e9),
            basis: format!(
                "the registry's forward MACs per network, ~3 passes per step, {} GFLOP/s sustained",
                assumed_gflops(device)
            ),
        },
    }
}
