//! The dry run's cost estimate.
//!
//! Two bases, and the printout names the one used:
//!
//! - **measured** (narrowed networks on the CPU, as in `quick`): seconds per
//!   training image of each network at the width it is trained at, measured
//!   from whole quick reproductions on the 2-core development machine (batch
//!   32, two runs sharing the cores); an evaluation image is counted as a
//!   tenth of a training image (no backward pass, batches of 256), and
//!   `jobs` runs at a time divide the total.
//! - **FLOP** (full-width networks, any device): published forward
//!   multiply-accumulates per image, ~3 passes per training step (4 with a
//!   teacher), and a sustained throughput per device kind (measured for
//!   CUDA, guessed otherwise).

use super::plan::Plan;
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

/// Forward multiply-accumulates of one 32×32 image (224×224 for the
/// ImageNet networks), in millions: published figures for these networks.
fn forward_mmacs(model: &str) -> f64 {
    match model {
        "cnn" => 11.0,
        "resnet18" => 556.0,
        "resnet34" => 1160.0,
        "resnet50" => 1300.0,
        "resnet101" => 2520.0,
        "resnet152" => 3740.0,
        "mobilenet_v2" => 100.0,
        "shufflenet_v2" => 45.0,
        "densenet121" => 900.0,
        "googlenet" => 1530.0,
        "resnext29" => 5400.0,
        "resnet18_imagenet" => 1820.0,
        "resnet50_imagenet" => 4100.0,
        "densenet121_imagenet" => 2870.0,
        "resnext101_32x8d_imagenet" => 16500.0,
        _ => 1000.0,
    }
}

/// Sustained training throughput in GFLOP/s. CUDA: tfkd's own, measured
/// (ResNet18-CIFAR at batch 128 on an H200, 2026-11-27: 1,570 img/s × 3.3
/// GFLOP per image; PyTorch reached 8× that, docs/PERFORMANCE.md); Metal
/// and CPU: rough guesses.
fn assumed_gflops(device: &str) -> f64 {
    if device.starts_with("cuda") {
        5_000.0
    } else if device == "metal" {
        2_000.0
    } else {
        8.0
    }
}

/// Measured seconds per training image (32×32, batch 32) of a network
/// narrowed by `divisor`, where it was measured: whole quick reproductions
/// on the 2-core development machine, two runs sharing the cores
/// (2026-11-28, after the per-image conv engine: a run's seconds divided by
/// its training images plus a tenth of its test images; Tables 5 and 9 took
/// 9 min 4 s and 6 min 51 s). The ÷16 MobileNetV2 and ShuffleNetV2 and the
/// CNN rows are older one-thread `tfkd bench-step` figures (smoke uses them).
fn measured_seconds_per_image(model: &str, divisor: usize) -> Option<f64> {
    let per_step = match (model, divisor) {
        ("cnn", 16) => 0.0144,
        ("resnet18", 16) => 0.072,
        ("resnet50", 16) => 0.256,
        ("mobilenet_v2", 16) => 0.071,
        ("mobilenet_v2", 8) => 0.16,
        ("shufflenet_v2", 16) => 0.063,
        ("shufflenet_v2", 8) => 0.085,
        ("googlenet", 16) => 0.51,
        ("densenet121", 16) => 0.35,
        ("resnext29", 16) => 0.85,
        _ => return None,
    };
    Some(per_step / 32.0)
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
pub fn relative_cost(config: &tfkd_runner::ExperimentConfig) -> f64 {
    let per_image = measured_seconds_per_image(&config.model.name, config.model.width_divisor).unwrap_or_else(|| {
        forward_mmacs(&config.model.name) * 1e-5 / (config.model.width_divisor as f64).powi(2)
    });
    per_image * config.epochs as f64
}

/// The cost of training every run of `plan` on `device`, `jobs` at a time.
pub fn estimate(plan: &Plan, device: &str, jobs: usize) -> Estimate {
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

        let side = c.data.dataset.input_size().side() as f64;
        let scale = if c.model.name.ends_with("_imagenet") { 1.0 } else { (side / 32.0).powi(2) };
        let macs = forward_mmacs(&c.model.name) * 1e6 * scale / (c.model.width_divisor as f64).powi(2);
        let passes = if run.teacher.is_some() { 4.0 } else { 3.0 };
        flop += 2.0 * macs * passes * train * epochs;

        let teacher_share = if run.teacher.is_some() { 4.0 / 3.0 } else { 1.0 };
        measured = match (measured, measured_seconds_per_image(&c.model.name, c.model.width_divisor)) {
            (Some(total), Some(t)) if device == "cpu" && side == 32.0 => {
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
                "published forward MACs per network, ~3 passes per step, {} GFLOP/s sustained",
                assumed_gflops(device)
            ),
        },
    }
}
