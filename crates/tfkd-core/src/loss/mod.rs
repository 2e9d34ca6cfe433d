//! The losses of the paper, computed exactly as its official code computes them.
//!
//! Notation used throughout: a batch of N samples and K classes, student logits
//! `z` (N×K), teacher logits `zᵗ` (N×K), labels `y` (N), `p = softmax(z)`,
//! `p̂ = softmax(z/T)`. All losses are differentiable candle graphs on any
//! `Device`; gradients flow to the student logits only (teacher logits and
//! targets are detached).
//!
//! | function / type | official code (`my_loss_function.py`) |
//! |---|---|
//! | [`cross_entropy`] | `F.cross_entropy(outputs, labels)` |
//! | [`kl_div`] with [`KlReduction::ElementwiseMean`] | `nn.KLDivLoss()(input, target)` |
//! | [`LabelSmoothing`] (`Official`) | `loss_label_smoothing` |
//! | [`KdLoss::official`] | `loss_kd` (Normal KD, Re-KD, De-KD) |
//! | [`KdLoss::self_training`] | `loss_kd_self` (Tf-KD_self) |
//! | [`VirtualTeacherLoss::as_coded`] | `loss_kd_regularization` (Tf-KD_reg) |
//!
//! Every function validates its parameters, shapes and labels and returns an
//! [`Error`] naming the offending value; a non-finite loss is an
//! error that names the non-finite input.
//!
//! # Two implementations, one result
//!
//! On `Device::Cpu` with f32 or f64 logits, cross-entropy, label smoothing, KD
//! and Tf-KD_reg run as one fused candle custom op each (`fused.rs`): a single
//! pass per row with f64 accumulators and the analytic gradient above, several
//! times faster than the composed graph. On every other device or dtype they
//! are composed from candle ops (max, exp, sum, log, gather), so the code runs
//! wherever candle does. Both paths agree to float rounding (tested).

pub(crate) mod fused;
mod kd;
mod label_smoothing;
mod virtual_teacher;

pub use kd::KdLoss;
pub use label_smoothing::{LabelSmoothing, SmoothingForm};
pub use virtual_teacher::{virtual_teacher, VirtualTeacherForm, VirtualTeacherLoss};

use crate::{Error, Result};
use candle_core::{DType, Tensor, D};

/// How the pointwise KL terms `q·(log q − log p̂)` are reduced to a scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlReduction {
    /// Mean over all N·K elements: PyTorch's `KLDivLoss()` default
    /// (`reduction='mean'`), which the official code uses. Equals the true
    /// batch-mean KL divided by K.
    #[default]
    ElementwiseMean,
    /// Sum over classes, mean over the batch: the true KL per sample
    /// (`reduction='batchmean'`).
    BatchMean,
    /// Sum over all elements.
    Sum,
}

impl KlReduction {
    fn divisor(self, n: usize, k: usize) -> f64 {
        match self {
            Self::ElementwiseMean => (n * k) as f64,
            Self::BatchMean => n as f64,
            Self::Sum => 1.0,
        }
    }
}

/// Which implementation a loss runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Fused where supported (CPU, f32/f64), composed elsewhere.
    Auto,
    /// Always the composed candle graph (the reference for the fused ops).
    Composed,
}

impl Path {
    /// Whether the fused op runs for these logits.
    fn fused(self, logits: &Tensor) -> bool {
        self == Path::Auto && fused::supported(logits)
    }
}

/// A loss split into its weighted parts: `total = hard + soft`.
#[derive(Clone, Debug)]
pub struct LossTerms {
    /// The scalar loss to back-propagate.
    pub total: Tensor,
    /// The weighted hard-label part, e.g. `(1−α)·CE(z, y)`.
    pub hard: Tensor,
    /// The weighted soft-target part, e.g. `α·T²·KL(...)`; `None` for losses
    /// without one (cross-entropy, label smoothing).
    pub soft: Option<Tensor>,
}

/// `log softmax(x)` over the last dimension, `x − max − log Σ exp(x − max)`.
///
/// Unlike `candle_nn::ops::log_softmax`, the max is detached: its exact
/// derivative is zero, but through the graph it receives the rounding residual
/// `Σg·(Σ softmax − 1)`, which the large soft-term weights of the official
/// configs (α·T²·m up to 36,000) amplify past 1e-5 of the gradient in float32.
///
/// # Shapes
/// `xs`: (..., K). Returns the same shape.
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let diff = xs.broadcast_sub(&max)?;
    let log_sum_exp = diff.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(diff.broadcast_sub(&log_sum_exp)?)
}

/// `softmax(x)` over the last dimension, with a detached max (see [`log_softmax`]).
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Cross-entropy with hard labels, averaged over the batch:
/// `CE(z, y) = −(1/N) Σₙ log softmax(zₙ)[yₙ]`.
///
/// # Shapes
/// `logits`: (N, K) float; `labels`: (N) of u8, u32 or i64 with values < K.
/// Returns a scalar. Gradient: `(p − onehot(y))/N`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    cross_entropy_on(Path::Auto, logits, labels)
}

/// [`cross_entropy`] computed by the composed candle graph even where the
/// fused op applies (for tests and benchmarks).
#[doc(hidden)]
pub fn cross_entropy_composed(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    cross_entropy_on(Path::Composed, logits, labels)
}

fn cross_entropy_on(path: Path, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, k) = check_logits("logits", logits)?;
    let loss = if path.fused(logits) {
        let fused_labels = fused_labels(labels, logits, n, k)?;
        let hard = fused::HardTerm { weight: 1.0 / n as f64, target: fused::LabelTarget { on: 1.0, off: 0.0 } };
        fused::FusedLoss::new(Some(hard), None, fused_labels).apply(logits, None)?.total
    } else {
        hard_cross_entropy(logits, &check_labels(labels, n, k)?)?
    };
    ensure_finite(&loss, Some((labels, n, k)), &[("logits", logits)])?;
    Ok(loss)
}

/// KL divergence `Σ q·(log q − input)` with PyTorch's `F.kl_div(input, target)`
/// argument order: `log_pred` holds log-probabilities, `target` probabilities
/// (terms with `q = 0` count as 0). `reduction` picks the normalisation.
///
/// # Shapes
/// `log_pred`, `target`: (N, K). Returns a scalar.
pub fn kl_div(log_pred: &Tensor, target: &Tensor, reduction: KlReduction) -> Result<Tensor> {
    let (n, k) = check_logits("log-probabilities", log_pred)?;
    check_same_shape("target probabilities", target, log_pred)?;
    let target = target.detach();
    let positive = target.gt(0.0)?;
    let safe_log = positive.where_cond(&target.log()?, &target.zeros_like()?)?;
    let terms = (&target * (safe_log - log_pred)?)?;
    let loss = (terms.sum_all()? / reduction.divisor(n, k))?;
    ensure_finite(&loss, None, &[("log-probabilities", log_pred), ("target probabilities", &target)])?;
    Ok(loss)
}

/// `KL(softmax(target_logits) ‖ softmax(·))` from log-probabilities on both
/// sides. Computing `q·(log q − log p̂)` from `log q` keeps it finite for any
/// logits, even where `q` underflows to 0.
pub(crate) fn kl_from_log_target(
    log_pred: &Tensor,
    log_target: &Tensor,
    reduction: KlReduction,
) -> Result<Tensor> {
    let (n, k) = log_pred.dims2()?;
    let log_target = log_target.detach();
    let terms = (log_target.exp()? * (&log_target - log_pred)?)?;
    Ok((terms.sum_all()? / reduction.divisor(n, k))?)
}

/// `−(1/N) Σₙ log softmax(zₙ)[yₙ]` on validated inputs.
pub(crate) fn hard_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_p = log_softmax(logits)?;
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// One-hot rows (N, K) in the logits' dtype.
pub(crate) fn one_hot(labels: &Tensor, k: usize, dtype: DType) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, k as u32, labels.device())?.unsqueeze(0)?;
    Ok(labels.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(dtype)?)
}

/// Checks a (N, K) float matrix with N ≥ 1 and K ≥ 2; returns (N, K).
pub(crate) fn check_logits(what: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    if !t.dtype().is_float() {
        return Err(Error::Shape { what, detail: format!("expected a float tensor, got {:?}", t.dtype()) });
    }
    match *t.dims() {
        [n, k] if n >= 1 && k >= 2 => Ok((n, k)),
        ref dims => Err(Error::Shape {
            what,
            detail: format!("expected shape (N >= 1, K >= 2), got {dims:?}"),
        }),
    }
}

pub(crate) fn check_same_shape(what: &'static str, t: &Tensor, like: &Tensor) -> Result<()> {
    if t.dims() != like.dims() {
        return Err(Error::Shape {
            what,
            detail: format!("expected shape {:?} (as the student logits), got {:?}", like.dims(), t.dims()),
        });
    }
    if t.dtype() != like.dtype() {
        return Err(Error::Shape {
            what,
            detail: format!("expected dtype {:?} (as the student logits), got {:?}", like.dtype(), t.dtype()),
        });
    }
    Ok(())
}

/// Checks labels (N) of an integer dtype with values in `[0, K)`; returns them as u32.
///
/// This reads the labels to the host once: N integers, negligible next to a
/// forward pass, and the one check that works on every backend (where the
/// fused CUDA kernels run, [`fused_labels`] avoids the read).
pub(crate) fn check_labels(labels: &Tensor, n: usize, k: usize) -> Result<Tensor> {
    check_labels_host(labels, n, k)?;
    Ok(labels.to_dtype(DType::U32)?)
}

/// Checks that `labels` are (N) of an integer dtype (not their values).
fn check_label_shape(labels: &Tensor, n: usize) -> Result<()> {
    if !matches!(labels.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(Error::Shape {
            what: "labels",
            detail: format!("expected an integer dtype (u8, u32 or i64), got {:?}", labels.dtype()),
        });
    }
    if labels.dims() != [n] {
        return Err(Error::Shape { what: "labels", detail: format!("expected shape [{n}], got {:?}", labels.dims()) });
    }
    Ok(())
}

/// The labels for a fused loss over `logits`: on the logits' GPU, where the
/// CUDA kernels run, checked for shape only and not read (the row kernel
/// turns a label outside `[0, K)` into NaN terms, which [`ensure_finite`]
/// then reports as that label: no synchronisation on the happy path);
/// elsewhere [`check_labels_host`]'s values.
pub(crate) fn fused_labels(labels: &Tensor, logits: &Tensor, n: usize, k: usize) -> Result<fused::Labels> {
    #[cfg(feature = "cuda")]
    if crate::own_cuda_kernels(logits) && labels.device().same_device(logits.device()) {
        check_label_shape(labels, n)?;
        return Ok(fused::Labels::Device(labels.to_dtype(DType::U32)?.contiguous()?));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = logits;
    Ok(fused::Labels::Host(check_labels_host(labels, n, k)?.into()))
}

/// [`check_labels`], returning the labels on the host.
pub(crate) fn check_labels_host(labels: &Tensor, n: usize, k: usize) -> Result<Vec<u32>> {
    check_label_shape(labels, n)?;
    let values = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some((index, &label)) = values.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= k) {
        return Err(Error::LabelOutOfRange { index, label, num_classes: k });
    }
    Ok(values.into_iter().map(|l| l as u32).collect())
}

/// Whether every element of `t` is finite (`x − x` is NaN exactly for NaN and ±∞).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    // Deliberately `t − t`: zero for finite values, NaN for NaN and ±∞.
    #[allow(clippy::eq_op)]
    let probe = (t - t)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(probe.is_finite())
}

/// Fails when `loss` is not finite, naming the first label out of range
/// (`labels`: the labels, N and K, where they may not have been checked), or
/// the first non-finite input, or the loss itself. Costs one scalar read on
/// the happy path.
pub(crate) fn ensure_finite(loss: &Tensor, labels: Option<(&Tensor, usize, usize)>, inputs: &[(&'static str, &Tensor)]) -> Result<()> {
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if value.is_finite() {
        return Ok(());
    }
    if let Some((labels, n, k)) = labels {
        check_labels_host(labels, n, k)?;
    }
    for &(what, t) in inputs {
        if !all_finite(t)? {
            return Err(Error::NonFinite { what });
        }
    }
    Err(Error::NonFinite { what: "loss" })
}
