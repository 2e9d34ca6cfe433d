//! The strategy types behind [`StrategyConfig`](crate::StrategyConfig).

use crate::{Method, Strategy, TeacherSpec};
use candle_core::Tensor;
use tfkd_core::loss::{cross_entropy, KdLoss, LabelSmoothing, LossTerms, VirtualTeacherLoss};
use tfkd_core::{Error, Result};

/// Plain cross-entropy training.
#[derive(Clone, Copy, Debug, Default)]
pub struct Baseline;

impl Strategy for Baseline {
    fn name(&self) -> &str {
        Method::Baseline.as_str()
    }
    fn teacher(&self) -> Option<&TeacherSpec> {
        None
    }
    fn loss(&self, student: &Tensor, _: Option<&Tensor>, labels: &Tensor) -> Result<LossTerms> {
        let total = cross_entropy(student, labels)?;
        Ok(LossTerms { hard: total.clone(), total, soft: None })
    }
}

/// Label-smoothing regularisation.
#[derive(Clone, Copy, Debug)]
pub struct LabelSmoothingStrategy(pub LabelSmoothing);

impl Strategy for LabelSmoothingStrategy {
    fn name(&self) -> &str {
        Method::Lsr.as_str()
    }
    fn teacher(&self) -> Option<&TeacherSpec> {
        None
    }
    fn loss(&self, student: &Tensor, _: Option<&Tensor>, labels: &Tensor) -> Result<LossTerms> {
        self.0.forward(student, labels)
    }
}

/// Distillation from a teacher network: KD, Re-KD, De-KD and Tf-KD_self
/// differ only in which network teaches.
#[derive(Clone, Debug)]
pub struct Distillation {
    /// The method (`kd`, `re-kd`, `de-kd` or `tf-kd-self`).
    pub method: Method,
    /// The loss (`loss_kd` is the multiplier-1 case of `loss_kd_self`).
    pub loss: KdLoss,
    /// The teacher.
    pub teacher: TeacherSpec,
}

impl Strategy for Distillation {
    fn name(&self) -> &str {
        self.method.as_str()
    }
    fn teacher(&self) -> Option<&TeacherSpec> {
        Some(&self.teacher)
    }
    fn loss(&self, student: &Tensor, teacher: Option<&Tensor>, labels: &Tensor) -> Result<LossTerms> {
        let teacher = teacher.ok_or_else(|| Error::Shape {
            what: "teacher logits",
            detail: format!("{} needs the teacher's logits, none were given", self.method),
        })?;
        self.loss.forward(student, teacher, labels)
    }
}

/// Tf-KD_reg: distillation from the virtual teacher.
#[derive(Clone, Copy, Debug)]
pub struct VirtualTeacher(pub VirtualTeacherLoss);

impl Strategy for VirtualTeacher {
    fn name(&self) -> &str {
        Method::TfKdReg.as_str()
    }
    fn teacher(&self) -> Option<&TeacherSpec> {
        None
    }
    fn loss(&self, student: &Tensor, _: Option<&Tensor>, labels: &Tensor) -> Result<LossTerms> {
        self.0.forward(student, labels)
    }
}
