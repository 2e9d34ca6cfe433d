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
//! - **measured on a GPU** (full-width networks on CUDA): the training images
//!   per second measured for the network on an H200, tfkd's and PyTorch's
//!   (the registry's `ModelEntry::measured_cuda`), scaled by the input's
//!   area for 64×64 data, a teacher's forward counted as a third of a step;
//!   networks never measured there fall back to the FLOP basis, and the
//!   printout says for how many runs.
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
    /// On CUDA, over the runs whose network was measured beside PyTorch:
    /// how many, tfkd's seconds and PyTorch eager's seconds for them.
    pub measured_against_pytorch: Option<(usize, f64, f64)>,
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

/// Training and test (or validation) images of a dataset's official splits.
fn dataset_size(kind: DatasetKind) -> (f64, f64) {
    match kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => (50_000.0, 10_000.0),
        DatasetKind::TinyImagenet => (100_000.0, 10_000.0),
        DatasetKind::Imagenet => (1_281_167.0, 50_000.0),
        DatasetKind::Cifar10Mini => (5_000.0, 2_000.0),
        DatasetKind::TinyImagenet10 => (2_000.0, 500.0),
        DatasetKind::Digits => (1_347.0, 450.0),
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
        let (train, _) = images_per_epoch(run);
        let epochs = c.epochs as f64;
        train_images += train * epochs;

        let net = run.network;
        let side = c.data.dataset.input_size().side() as f64;
        // `forward_mmacs` is at the network's native input: 224×224 for the
        // ImageNet networks, 32×32 for the others (scaled to 64×64 by area).
        let scale = if net.is_imagenet() { 1.0 } else { (side / 32.0).powi(2) };
        let macs = net.forward_mmacs * 1e6 * scale / (c.model.width_divisor as f64).powi(2);
        let passes = if has_teacher(run) { 4.0 } else { 3.0 };
        flop += 2.0 * macs * passes * train * epochs;

        measured = match (measured, net.measured_cpu_seconds(c.model.width_divisor)) {
            (Some(total), Some(t)) if device.is_cpu() && side == 32.0 => Some(total + t * weighted_images(run)),
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
            measured_against_pytorch: None,
        },
        _ if matches!(device, DeviceSpec::Cuda(_)) => gpu_estimate(plan, train_images),
        _ => Estimate {
            train_images,
            seconds: flop / (assumed_gflops(device) * 1e9),
            basis: format!(
                "the registry's forward MACs per network, ~3 passes per step, {} GFLOP/s sustained",
                assumed_gflops(device)
            ),
            measured_against_pytorch: None,
        },
    }
}

/// One run's training and evaluation images, weighted: a teacher's forward
/// is a third of a step, an evaluation image a tenth of a training image.
fn weighted_images(run: &PlannedRun) -> f64 {
    let (train, test) = images_per_epoch(run);
    let teacher_share = if has_teacher(run) { 4.0 / 3.0 } else { 1.0 };
    run.config.epochs as f64 * (train * teacher_share + test / 10.0)
}

/// Whether a run's steps include a teacher's forward pass (a teacher run, or
/// published weights).
fn has_teacher(run: &PlannedRun) -> bool {
    use tfkd_distill::Method;
    matches!(run.config.strategy.method(), Method::Kd | Method::ReKd | Method::DeKd | Method::TfKdSelf)
}

/// A run's training and test images per epoch: its subsets of the dataset.
fn images_per_epoch(run: &PlannedRun) -> (f64, f64) {
    let data = &run.config.data;
    let (train, test) = dataset_size(data.dataset);
    let subset = |n: usize, full: f64| if n > 0 { (n as f64).min(full) } else { full };
    (subset(data.train_subset, train), subset(data.test_subset, test))
}

/// The CUDA estimate: measured images per second where the network was
/// measured at full width on a GPU, FLOP otherwise.
fn gpu_estimate(plan: &Plan, train_images: f64) -> Estimate {
    let (mut seconds, mut measured_tfkd, mut pytorch, mut measured_runs) = (0.0, 0.0, 0.0, 0);
    for run in plan.runs.values() {
        let c = &run.config;
        let side = c.data.dataset.input_size().side() as f64;
        let area = (side / 32.0).powi(2);
        let images = weighted_images(run);
        match run.network.measured_cuda().filter(|_| c.model.width_divisor == 1 && !run.network.is_imagenet()) {
            Some(m) => {
                measured_runs += 1;
                measured_tfkd += images * area / m.tfkd_images_per_second;
                pytorch += images * area / m.pytorch_images_per_second;
            }
            None => {
                let macs = run.network.forward_mmacs * 1e6 * if run.network.is_imagenet() { 1.0 } else { area }
                    / (c.model.width_divisor as f64).powi(2);
                let cuda = assumed_gflops(DeviceSpec::Cuda(0)) * 1e9;
                seconds += 2.0 * macs * 3.0 * images / cuda;
            }
        }
    }
    seconds += measured_tfkd;
    let n = plan.runs.len();
    let on = tfkd_zoo::CUDA_MEASURED.first().map_or("a GPU", |m| m.measured_on);
    let basis = if measured_runs == n {
        format!("each network's training images per second measured on {on}")
    } else {
        format!(
            "training images per second measured on {on} for {measured_runs} of {n} runs; the registry's forward MACs \
             at {} GFLOP/s sustained for the others",
            assumed_gflops(DeviceSpec::Cuda(0))
        )
    };
    let measured_against_pytorch = (measured_runs > 0).then_some((measured_runs, measured_tfkd, pytorch));
    Estimate { train_images, seconds, basis, measured_against_pytorch }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::plan::Shared;
    use crate::reproduce::profile::{Profile, ProfileName};
    use std::path::{Path, PathBuf};

    fn paper_plan(table: u32, device: DeviceSpec) -> Plan {
        let profile = Profile::new(ProfileName::Paper, Path::new("data"));
        let runs_dir = PathBuf::from("runs");
        let mut t = crate::tables::load_table(table).unwrap();
        // One measured network only: ResNet18's baseline cells.
        t.cells.retain(|c| c.student == "resnet18" && c.method == tfkd_distill::Method::Baseline);
        Plan::build(&[t], &Shared { profile: &profile, device, precision: Default::default(), runs_dir: &runs_dir, seeds: Some(1), replicas: 1 }).unwrap()
    }

    #[test]
    fn gpu_hours_come_from_the_measured_throughput_of_each_network() {
        let plan = paper_plan(9, DeviceSpec::Cuda(0));
        assert_eq!(plan.runs.len(), 1);
        let e = estimate(&plan, DeviceSpec::Cuda(0), 1);
        let m = tfkd_zoo::entry("resnet18").unwrap().measured_cuda().unwrap();
        // 200 epochs of 50,000 training and 10,000 test images (a tenth each).
        let images = 200.0 * (50_000.0 + 1_000.0);
        assert!((e.seconds - images / m.tfkd_images_per_second).abs() < 1e-6, "{}", e.seconds);
        let (runs, tfkd, p) = e.measured_against_pytorch.unwrap();
        assert_eq!((runs, tfkd), (1, e.seconds));
        assert!((p - images / m.pytorch_images_per_second).abs() < 1e-6);
        assert!(e.basis.contains("measured") && e.basis.contains("H200"), "{}", e.basis);
        // An ImageNet table has no measured network: FLOP for all, said so.
        let mut t = crate::tables::load_table(11).unwrap();
        t.cells.truncate(1);
        let profile = Profile::new(ProfileName::Paper, Path::new("data"));
        let runs_dir = PathBuf::from("runs");
        let shared = Shared { profile: &profile, device: DeviceSpec::Cuda(0), precision: Default::default(), runs_dir: &runs_dir, seeds: Some(1), replicas: 1 };
        let e = estimate(&Plan::build(&[t], &shared).unwrap(), DeviceSpec::Cuda(0), 1);
        assert!(e.basis.contains("0 of 1 runs") && e.measured_against_pytorch.is_none(), "{}", e.basis);
    }
}
