//! Shared inputs for tfkd's criterion benchmarks (`benches/losses.rs`).
//!
//! The loss benchmark times each of the paper's losses — cross-entropy, label
//! smoothing (LSR), KD (`loss_kd`), Tf-KD_self (`loss_kd_self`) and Tf-KD_reg
//! (`loss_kd_regularization`) — forward and forward+backward, on the fused CPU
//! path (what `forward` runs on `Device::Cpu`) and on the composed candle graph
//! (what every other device runs). `scripts/bench_losses_torch.py` times the
//! same losses, hyper-parameters and shapes in PyTorch and prints the ratios;
//! the results are in `docs/PERFORMANCE.md`.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::loss::{cross_entropy, cross_entropy_composed, KdLoss, LabelSmoothing, LossTerms, VirtualTeacherLoss};
use tfkd_core::rng::SeededRng;

/// The benchmarked (N, K): a CIFAR-100 batch, a Tiny-ImageNet batch, and an
/// ImageNet-sized one.
pub const SHAPES: [(usize, usize); 3] = [(128, 100), (128, 200), (1024, 1000)];

/// One batch: student logits (a variable, as in training), teacher logits and labels.
pub struct Inputs {
    /// Student logits (N, K), f32.
    pub student: Var,
    /// Teacher logits (N, K), f32.
    pub teacher: Tensor,
    /// Labels (N), u32.
    pub labels: Tensor,
}

/// Seeded inputs of shape (n, k): student ~ N(0, 2²), teacher ~ N(0, 4²),
/// uniform labels.
pub fn inputs(n: usize, k: usize) -> tfkd_core::Result<Inputs> {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(2020);
    let student = Var::from_tensor(&rng.normal_tensor((n, k), 0.0, 2.0, DType::F32, &dev)?)?;
    let teacher = rng.normal_tensor((n, k), 0.0, 4.0, DType::F32, &dev)?;
    let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
    Ok(Inputs { student, teacher, labels: Tensor::new(labels, &dev)? })
}

/// Which implementation to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The fused custom op (the default on the CPU).
    Fused,
    /// The composed candle graph (the default on other devices).
    Composed,
}

impl Path {
    /// Both paths.
    pub const ALL: [Path; 2] = [Path::Fused, Path::Composed];

    /// The name used in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Path::Fused => "fused",
            Path::Composed => "composed",
        }
    }
}

/// The benchmarked losses, with the hyper-parameters of the official configs
/// (`scripts/bench_losses_torch.py` uses the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// `F.cross_entropy`.
    CrossEntropy,
    /// `loss_label_smoothing` (ε = 0.1, ε/(K−1) off the true class).
    LabelSmoothing,
    /// `loss_kd` with α = 0.95, T = 20.
    Kd,
    /// `loss_kd_self` with α = 0.9, T = 20, m = 100.
    TfKdSelf,
    /// `loss_kd_regularization` with α = 0.1, T = 20, m = 100.
    TfKdReg,
}

impl Loss {
    /// All benchmarked losses.
    pub const ALL: [Loss; 5] = [Loss::CrossEntropy, Loss::LabelSmoothing, Loss::Kd, Loss::TfKdSelf, Loss::TfKdReg];

    /// The name used in benchmark ids (and by the PyTorch script).
    pub fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross_entropy",
            Loss::LabelSmoothing => "label_smoothing",
            Loss::Kd => "kd",
            Loss::TfKdSelf => "tfkd_self",
            Loss::TfKdReg => "tfkd_reg",
        }
    }

    /// The scalar loss for `inputs` on `path`.
    pub fn forward(self, path: Path, inputs: &Inputs) -> tfkd_core::Result<Tensor> {
        let (s, t, y) = (inputs.student.as_tensor(), &inputs.teacher, &inputs.labels);
        let fused = path == Path::Fused;
        let total = |terms: LossTerms| terms.total;
        Ok(match self {
            Loss::CrossEntropy if fused => cross_entropy(s, y)?,
            Loss::CrossEntropy => cross_entropy_composed(s, y)?,
            Loss::LabelSmoothing => {
                let l = LabelSmoothing::official();
                total(if fused { l.forward(s, y)? } else { l.forward_composed(s, y)? })
            }
            Loss::Kd | Loss::TfKdSelf => {
                let l = if self == Loss::Kd { KdLoss::official(0.95, 20.0) } else { KdLoss::self_training(0.9, 20.0, 100.0) };
                total(if fused { l.forward(s, t, y)? } else { l.forward_composed(s, t, y)? })
            }
            Loss::TfKdReg => {
                let l = VirtualTeacherLoss::as_coded(0.1, 20.0, 100.0);
                total(if fused { l.forward(s, y)? } else { l.forward_composed(s, y)? })
            }
        })
    }

    /// Forward and backward; returns the student's gradient.
    pub fn forward_backward(self, path: Path, inputs: &Inputs) -> tfkd_core::Result<Tensor> {
        let grads = self.forward(path, inputs)?.backward()?;
        let grad = grads.get(&inputs.student).cloned();
        grad.ok_or(tfkd_core::Error::State("no gradient reached the student logits".into()))
    }
}
