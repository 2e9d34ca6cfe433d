//! Knowledge distillation from a teacher network: Normal KD, Re-KD, De-KD
//! (`loss_kd`) and Tf-KD_self (`loss_kd_self`).

use super::fused::{FusedLoss, HardTerm, LabelTarget, SoftTarget, SoftTerm};
use super::{
    check_labels, check_logits, check_same_shape, ensure_finite, fused_labels, hard_cross_entropy,
    kl_from_log_target, log_softmax, KlReduction, LossTerms, Path,
};
use crate::error::check_param;
use crate::Result;
use candle_core::Tensor;

/// The distillation loss of the official code:
///
/// ```text
/// L = (1 − α)·CE(z, y) + α·T²·m·KL_r( softmax(zᵗ/T) ‖ log_softmax(z/T) )
/// ```
///
/// where `KL_r` is the KL divergence reduced by [`KlReduction`] (the official
/// code: mean over all N·K elements, i.e. `KL_batchmean / K`). CE uses the
/// student logits at T = 1.
///
/// * [`KdLoss::official`] is `loss_kd` (m = 1): Normal KD, Re-KD and De-KD.
/// * [`KdLoss::self_training`] is `loss_kd_self`: Tf-KD_self, with the
///   multiplier m the shipped configs set to 1, 50 or 100.
///
/// Gradient w.r.t. the student logits (elementwise mean):
/// `(1−α)/N·(p − onehot(y)) + α·T·m/(N·K)·(p̂ − softmax(zᵗ/T))`.
///
/// The paper's Eq. 4/7 has no T² factor; set `temperature_squared = false`
/// to compute it as written.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KdLoss {
    /// Weight α of the soft term, in [0, 1].
    pub alpha: f64,
    /// Softening temperature T > 0, applied to teacher and student.
    pub temperature: f64,
    /// Multiplier m ≥ 0 on the soft term (1 for `loss_kd`).
    pub multiplier: f64,
    /// Reduction of the KL term.
    pub reduction: KlReduction,
    /// Whether the soft term is scaled by T² (the code: yes; the paper: no).
    pub temperature_squared: bool,
}

impl KdLoss {
    /// `loss_kd(α, T)` exactly as coded: m = 1, elementwise-mean KL, ×T².
    pub fn official(alpha: f64, temperature: f64) -> Self {
        Self::self_training(alpha, temperature, 1.0)
    }

    /// `loss_kd_self(α, T, m)` exactly as coded: elementwise-mean KL, ×T²·m.
    pub fn self_training(alpha: f64, temperature: f64, multiplier: f64) -> Self {
        Self {
            alpha,
            temperature,
            multiplier,
            reduction: KlReduction::ElementwiseMean,
            temperature_squared: true,
        }
    }

    /// The same loss with another KL reduction.
    pub fn with_reduction(self, reduction: KlReduction) -> Self {
        Self { reduction, ..self }
    }

    /// Checks α ∈ [0, 1], T > 0 and m ≥ 0.
    pub fn validate(&self) -> Result<()> {
        check_param("alpha", self.alpha, (0.0..=1.0).contains(&self.alpha), "must be in [0, 1]")?;
        check_param("temperature", self.temperature, self.temperature > 0.0, "must be > 0")?;
        check_param("multiplier", self.multiplier, self.multiplier >= 0.0, "must be >= 0")
    }

    /// The weight of the per-sample (batch-mean) KL in the total loss,
    /// `α·T²·m/K` with the official reduction: a way to compare configs.
    pub fn effective_kl_weight(&self, num_classes: usize) -> f64 {
        let t2 = if self.temperature_squared { self.temperature.powi(2) } else { 1.0 };
        let per_sample = match self.reduction {
            KlReduction::ElementwiseMean => 1.0 / num_classes as f64,
            KlReduction::BatchMean => 1.0,
            KlReduction::Sum => f64::NAN,
        };
        self.alpha * t2 * self.multiplier * per_sample
    }

    /// The loss for one batch. The teacher logits are detached.
    ///
    /// # Shapes
    /// `student`, `teacher`: (N, K) of the same float dtype; `labels`: (N).
    pub fn forward(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Auto, student, teacher, labels)
    }

    /// [`KdLoss::forward`] computed by the composed candle graph even where
    /// the fused op applies (for tests and benchmarks).
    #[doc(hidden)]
    pub fn forward_composed(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Composed, student, teacher, labels)
    }

    fn forward_on(&self, path: Path, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.validate()?;
        let (n, k) = check_logits("student logits", student)?;
        check_same_shape("teacher logits", teacher, student)?;
        let t = self.temperature;
        let t2 = if self.temperature_squared { t * t } else { 1.0 };
        let soft_weight = self.alpha * t2 * self.multiplier;
        let (total, hard, soft) = if path.fused(student) {
            let fused_labels = fused_labels(labels, student, n, k)?;
            let hard = HardTerm { weight: (1.0 - self.alpha) / n as f64, target: LabelTarget { on: 1.0, off: 0.0 } };
            let soft = SoftTerm {
                weight: soft_weight / self.reduction.divisor(n, k),
                student_scale: 1.0 / t,
                target: SoftTarget::Teacher { scale: 1.0 / t },
            };
            let terms = FusedLoss::new(Some(hard), Some(soft), fused_labels).apply(student, Some(teacher))?;
            (terms.total, terms.hard, terms.soft)
        } else {
            let labels = check_labels(labels, n, k)?;
            let hard = (hard_cross_entropy(student, &labels)? * (1.0 - self.alpha))?;
            let log_student = log_softmax(&(student / t)?)?;
            let log_teacher = log_softmax(&(teacher.detach() / t)?)?;
            let kl = kl_from_log_target(&log_student, &log_teacher, self.reduction)?;
            let soft = (kl * soft_weight)?;
            ((&hard + &soft)?, hard, soft)
        };
        ensure_finite(&total, Some((labels, n, k)), &[("student logits", student), ("teacher logits", teacher)])?;
        Ok(LossTerms { total, hard, soft: Some(soft) })
    }
}
