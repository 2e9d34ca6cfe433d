//! Label-smoothing regularisation (LSR), the paper's hand-made baseline.

use super::fused::{FusedLoss, HardTerm, LabelTarget};
use super::{check_labels, check_logits, ensure_finite, fused_labels, log_softmax, one_hot, LossTerms, Path};
use crate::error::check_param;
use crate::Result;
use candle_core::Tensor;

/// Where the smoothing mass ε goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmoothingForm {
    /// The official code (`loss_label_smoothing`): `1 − ε` on the true class,
    /// `ε/(K−1)` on every other class.
    #[default]
    Official,
    /// Szegedy et al. / the paper's Eq. 1 / PyTorch's `label_smoothing=ε`:
    /// `1 − ε + ε/K` on the true class, `ε/K` elsewhere.
    Uniform,
}

/// Cross-entropy against smoothed targets `s`:
///
/// ```text
/// L = −(1/N) Σₙ Σₖ sₙₖ · log softmax(zₙ)ₖ
/// ```
///
/// with `s` given by [`SmoothingForm`] (official: `sₙ,yₙ = 1 − ε`,
/// `sₙₖ = ε/(K−1)` for k ≠ yₙ; ε = 0.1 hard-coded in the original).
/// Gradient: `(p − s)/N`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelSmoothing {
    /// The smoothing mass ε in [0, 1].
    pub epsilon: f64,
    /// How ε is spread over the classes.
    pub form: SmoothingForm,
}

impl Default for LabelSmoothing {
    fn default() -> Self {
        Self::official()
    }
}

impl LabelSmoothing {
    /// `loss_label_smoothing` as coded: ε = 0.1, ε/(K−1) off the true class.
    pub fn official() -> Self {
        Self { epsilon: 0.1, form: SmoothingForm::Official }
    }

    /// Checks ε ∈ [0, 1].
    pub fn validate(&self) -> Result<()> {
        check_param("epsilon", self.epsilon, (0.0..=1.0).contains(&self.epsilon), "must be in [0, 1]")
    }

    /// The smoothed target distribution s (N, K) for `labels`.
    pub fn targets(&self, labels: &Tensor, num_classes: usize, like: &Tensor) -> Result<Tensor> {
        let LabelTarget { on, off } = self.label_target(num_classes);
        // onehot·(on − off) + off
        Ok(one_hot(labels, num_classes, like.dtype())?.affine(on - off, off)?)
    }

    /// The mass on the true class and on each other class.
    fn label_target(&self, num_classes: usize) -> LabelTarget {
        let k = num_classes as f64;
        let (on, off) = match self.form {
            SmoothingForm::Official => (1.0 - self.epsilon, self.epsilon / (k - 1.0)),
            SmoothingForm::Uniform => (1.0 - self.epsilon + self.epsilon / k, self.epsilon / k),
        };
        LabelTarget { on, off }
    }

    /// The loss for one batch.
    ///
    /// # Shapes
    /// `logits`: (N, K) float; `labels`: (N).
    pub fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Auto, logits, labels)
    }

    /// [`LabelSmoothing::forward`] computed by the composed candle graph even
    /// where the fused op applies (for tests and benchmarks).
    #[doc(hidden)]
    pub fn forward_composed(&self, logits: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.forward_on(Path::Composed, logits, labels)
    }

    fn forward_on(&self, path: Path, logits: &Tensor, labels: &Tensor) -> Result<LossTerms> {
        self.validate()?;
        let (n, k) = check_logits("logits", logits)?;
        let total = if path.fused(logits) {
            let fused_labels = fused_labels(labels, logits, n, k)?;
            let hard = HardTerm { weight: 1.0 / n as f64, target: self.label_target(k) };
            FusedLoss::new(Some(hard), None, fused_labels).apply(logits, None)?.total
        } else {
            let labels = check_labels(labels, n, k)?;
            let targets = self.targets(&labels, k, logits)?;
            let log_p = log_softmax(logits)?;
            ((targets * log_p)?.sum_all()? / -(n as f64))?
        };
        ensure_finite(&total, Some((labels, n, k)), &[("logits", logits)])?;
        Ok(LossTerms { hard: total.clone(), total, soft: None })
    }
}
