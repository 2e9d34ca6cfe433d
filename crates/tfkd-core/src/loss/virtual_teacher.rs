//! Tf-KD_reg: distillation from a hand-made "virtual teacher" (no network).

use super::fused::{FusedLoss, HardTerm, LabelTarget, SoftTarget, SoftTerm};
use super::{
    check_labels, check_logits, ensure_finite, fused_labels, hard_cross_entropy, kl_from_log_target,
    log_softmax, one_hot, softmax, KlReduction, LossTerms, Path,
};
use crate::error::check_param;
use crate::Result;
use candle_core::{DType, Tensor};

/// The virtual teacher of Eq. 8: `pᵈ(k) = a` on the true class and
/// `(1 − a)/(K − 1)` elsewhere.
///
/// # Shapes
/// `labels`: (N) with values < K (validated by the caller). Returns (N, K).
pub fn virtual_teacher(labels: &Tensor, num_classes: usize, correct_prob: f64, dtype: DType) -> Result<Tensor> {
    let off = (1.0 - correct_prob) / (num_classes as f64 - 1.0);
    Ok(one_hot(labels, num_classes, dtype)?.affine(correct_prob - off, off)?)
}

/// Which formula of Tf-KD_reg to compute: the one type for it, also the
/// `form` of a `tf-kd-reg` strategy in a config (`"as_coded"`, the default,
/// or `"paper_eq9"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtualTeacherForm {
    /// The official code (`loss_kd_regularization`): the student is
    /// `log_softmax(z)` **without** T and the soft term has **no** T².
    #[default]
    AsCoded,
    /// The paper's Eq. 9 as written: the student softened by T too,
    /// `log_softmax(z/T)`, optionally with the T² factor KD uses
    /// ([`VirtualTeacherLoss::temperature_squared`]).
    PaperEq9,
}

/// Tf-KD_reg:
///
/// ```text
/// L = (1 − α)·CE(z, y) + α·m·[T²]·KL_r( softmax(pᵈ/T) ‖ log_softmax(z/T') )
/// ```
///
/// The target treats the *probabilities* `pᵈ` as logits and softens them by T
/// (what the code does; at T ≥ 10 it is almost uniform, see docs/PAPER.md §2.5).
/// As coded: T' = 1 and no T² ([`VirtualTeacherForm::AsCoded`]); the paper's
/// Eq. 9 uses T' = T ([`VirtualTeacherForm::PaperEq9`]). `a` = 0.99 in the
/// official code. Gradient as coded (elementwise mean):
/// `(1−α)/N·(p − onehot(y)) + α·m/(N·K)·(p − softmax(pᵈ/T))`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VirtualTeacherLoss {
    /// Weight α of the soft term, in [0, 1] (`reg_alpha`).
    pub alpha: f64,
    /// Temperature T > 0 applied to the virtual teacher (`reg_temperature`).
    pub temperature: f64,
    /// Multiplier m ≥ 0 on the soft term.
    pub multiplier: f64,
    /// Probability `a` of the true class, in (1/K, 1] (`correct_prob`).
    pub correct_prob: f64,
    /// Reduction of the KL term.
    pub reduction: KlReduction,
    /// Formula variant.
    pub form: VirtualTeacherForm,
    /// With [`VirtualTeacherForm::PaperEq9`]: also scale the soft term by
    /// T². Must be `false` with [`VirtualTeacherForm::AsCoded`].
    #[serde(default)]
    pub temperature_squared: bool,
}

impl VirtualTeacherLoss {
    /// `loss_kd_regularization(α, T, m)` exactly as coded (a = 0.99).
    pub fn as_coded(alpha: f64, temperature: f64, multiplier: f64) -> Self {
        Self {
            alpha,
            temperature,
            multiplier,
            correct_prob: 0.99,
            reduction: KlReduction::ElementwiseMean,
            form: VirtualTeacherForm::AsCoded,
            temperature_squared: false,
        }
    }

    /// The paper's Eq. 9 (student softened by T), with or without T².
    pub fn paper_eq9(alpha: f64, temperature: f64, multiplier: f64, temperature_squared: bool) -> Self {
        Self {
            form: VirtualTeacherForm::PaperEq9,
            temperature_squared,
            ..Self::as_coded(alpha, temperature, multiplier)
        }
    }

    /// The same loss with another KL reduction.
    pub fn with_reduction(self, reduction: KlReduction) -> Self {
        Self { reduction, ..self }
    }

    /// Checks α ∈ [0, 1], T > 0, m ≥ 0, a ∈ (1/K, 1] and that T² is asked
    /// for only with Eq. 9.
    pub fn validate(&self, num_classes: usize) -> Result<()> {
        if self.temperature_squared && self.form == VirtualTeacherForm::AsCoded {
            return Err(crate::Error::InvalidParameter {
                name: "temperature_squared",
                value: 1.0,
                expected: "only applies to form = \"paper_eq9\"".into(),
            });
        }
        check_param("alpha", self.alpha, (0.0..=1.0).contains(&self.alpha), "must be in [0, 1]")?;
        check_param("temperature", self.temperature, self.temperature > 0.0, "must be > 0")?;
        check_param("multiplier", self.multiplier, self.multiplier >= 0.0, "must be >= 0")?;
        let a = self.correct_prob;
        check_param(
            "correct_prob",
            a,
            a > 1.0 / num_classes as f64 && a <= 1.0,
            &format!("must be in (1/K, 1] = (1/{num_classes}, 1]"),
        )
    }

    /// The softened virtual-teacher distribution `softmax(pᵈ/T)` (N, K).
    pub fn target(&self, labels: &Tensor, num_classes: usize, dtype: DType) -> Result<Tensor> {
        let pd = virtual_teacher(labels, num_classes, self.correct_prob, dtype)?;
        softmax(&(pd / self.temperature)?)
    }

    /// The softened target in closed form (f64): `softmax(pᵈ/T)` has
    /// `t_on = 1/(1 + (K−1)·e^{(off − a)/T})` on the true class and
    /// `t_off = (1 − t_on)/(K−1)` elsewhere, with `off = (1 − a)/(K − 1)`;
    /// returns them with the row's `Σₖ tₖ log tₖ`.
    fn target_closed_form(&self, num_classes: usize) -> (LabelTarget, f64) {
        let (a, k, t) = (self.correct_prob, num_classes as f64, self.temperature);
        let off = (1.0 - a) / (k - 1.0);
        // log-sum-exp of the logits a/T (once) and off/T (K−1 times), a ≥ off.
        let lse = a / t + ((k - 1.0) * ((off - a) / t).exp()).ln_1p();
        let (log_on, log_off) = (a / t - lse, off / t - lse);
        let (on, off_t) = (log_on.exp(), log_off.exp());
        let xlogx = |p: f64, log_p: f64| if p > 0.0 { p * log_p } else { 0.0 };
        (LabelTarget { on, off: off_t }, xlogx(on, log_on) + (k - 1.0) * xlogx(off_t, log_off))
    }

    /// The loss for one batch.
    ///
    /// # Shapes
    /// `student`: (N, K) float; `labels`: (N).
    pub fn forward(&self, student: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Auto, student, labels)
    }

    /// [`VirtualTeacherLoss::forward`] computed by the composed candle graph
    /// even where the fused op applies (for tests and benchmarks).
    #[doc(hidden)]
    pub fn forward_composed(&self, student: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Composed, student, labels)
    }

    fn forward_on(&self, path: Path, student: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        let (n, k) = check_logits("student logits", student)?;
        self.validate(k)?;
        let t = self.temperature;
        let (student_t, t2) = match self.form {
            VirtualTeacherForm::AsCoded => (1.0, 1.0),
            VirtualTeacherForm::PaperEq9 => (t, if self.temperature_squared { t * t } else { 1.0 }),
        };
        let soft_weight = self.alpha * self.multiplier * t2;
        let (total, hard, soft) = if path.fused(student) {
            let fused_labels = fused_labels(labels, student, n, k)?;
            let hard = HardTerm { weight: (1.0 - self.alpha) / n as f64, target: LabelTarget { on: 1.0, off: 0.0 } };
            let (target, neg_entropy) = self.target_closed_form(k);
            let soft = SoftTerm {
                weight: soft_weight / self.reduction.divisor(n, k),
                student_scale: 1.0 / student_t,
                target: SoftTarget::Labels { target, neg_entropy },
            };
            let terms = FusedLoss::new(Some(hard), Some(soft), fused_labels).apply(student, None)?;
            (terms.total, terms.hard, terms.soft)
        } else {
            let labels = check_labels(labels, n, k)?;
            let hard = (hard_cross_entropy(student, &labels)? * (1.0 - self.alpha))?;
            let pd = virtual_teacher(&labels, k, self.correct_prob, student.dtype())?;
            let log_target = log_softmax(&(pd / t)?)?;
            let log_student = log_softmax(&(student / student_t)?)?;
            let kl = kl_from_log_target(&log_student, &log_target, self.reduction)?;
            let soft = (kl * soft_weight)?;
            ((&hard + &soft)?, hard, soft)
        };
        ensure_finite(&total, Some((labels, n, k)), &[("student logits", student)])?;
        Ok(LossTerms { total, hard, soft: Some(soft) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The closed-form values of docs/PAPER.md §2.5 (a = 0.99).
    #[test]
    fn softened_virtual_teacher_matches_the_closed_form() -> Result<()> {
        for (k, t, correct, other) in [
            (10, 10.0, 0.109259, 0.098971),
            (10, 20.0, 0.104539, 0.099496),
            (100, 10.0, 0.011029, 0.009990),
            (100, 20.0, 0.010502, 0.009995),
            (100, 40.0, 0.010248, 0.009997),
            (200, 20.0, 0.005252, 0.004999),
        ] {
            let labels = Tensor::new(&[3u32], &Device::Cpu)?;
            let loss = VirtualTeacherLoss::as_coded(0.1, t, 1.0);
            let row = loss.target(&labels, k, DType::F64)?.squeeze(0)?.to_vec1::<f64>()?;
            assert!((row[3] - correct).abs() < 5e-7, "K={k} T={t}: {}", row[3]);
            assert!((row[0] - other).abs() < 5e-7, "K={k} T={t}: {}", row[0]);
        }
        Ok(())
    }
}
