//! Top-k accuracy, counted exactly (integers, not running float means).

use crate::loss::check_logits;
use crate::Result;
use candle_core::{DType, Tensor, D};

/// How many rows have their label among the `k` largest logits.
///
/// Ties are broken towards the lower class index (argmax/argsort order).
///
/// # Shapes
/// `logits`: (N, K); `labels`: (N) with values < K.
pub fn top_k_correct(logits: &Tensor, labels: &Tensor, k: usize) -> Result<usize> {
    let (n, classes) = check_logits("logits", logits)?;
    let labels = crate::loss::check_labels(labels, n, classes)?;
    Ok(top_k_hits(logits, &labels, k)?.to_scalar::<u32>()? as usize)
}

/// [`top_k_correct`] over checked u32 labels, as a 0-d u32 tensor, not read.
fn top_k_hits(logits: &Tensor, labels: &Tensor, k: usize) -> Result<Tensor> {
    let k = k.clamp(1, logits.dim(1)?);
    if k == 1 {
        return top1_hits(logits, labels);
    }
    let top = logits.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?;
    Ok(top.broadcast_eq(&labels.unsqueeze(1)?)?.max(D::Minus1)?.to_dtype(DType::U32)?.sum_all()?)
}

/// How many rows have their label as the largest logit (ties: the lower
/// class index), as a 0-d u32 tensor on the logits' device, not read: for a
/// loop that reads it together with other numbers (on a GPU every read is a
/// synchronisation). The labels are not checked: [`top_k_correct`] with
/// `k = 1` checks them, then counts with this.
///
/// # Shapes
/// `logits`: (N, K); `labels`: (N) of an integer dtype.
pub fn top1_hits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(logits.argmax(D::Minus1)?.eq(&labels.to_dtype(DType::U32)?)?.to_dtype(DType::U32)?.sum_all()?)
}

/// Running top-1 / top-5 counts over an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Samples whose label is the top prediction.
    pub top1: usize,
    /// Samples whose label is among the top 5 predictions.
    pub top5: usize,
    /// Samples seen.
    pub total: usize,
}

impl Accuracy {
    /// Adds one batch: the labels are checked once and both counts read
    /// together (on a GPU, two synchronisations instead of four).
    pub fn update(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let (n, classes) = check_logits("logits", logits)?;
        let labels = crate::loss::check_labels(labels, n, classes)?;
        let hits = Tensor::stack(&[top_k_hits(logits, &labels, 1)?, top_k_hits(logits, &labels, 5)?], 0)?.to_vec1::<u32>()?;
        self.top1 += hits[0] as usize;
        self.top5 += hits[1] as usize;
        self.total += n;
        Ok(())
    }

    /// Top-1 accuracy in percent (0 when empty).
    pub fn top1_percent(&self) -> f64 {
        percent(self.top1, self.total)
    }

    /// Top-5 accuracy in percent (0 when empty).
    pub fn top5_percent(&self) -> f64 {
        percent(self.top5, self.total)
    }
}

fn percent(hits: usize, total: usize) -> f64 {
    if total == 0 { 0.0 } else { 100.0 * hits as f64 / total as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn counts_top1_and_top5() -> Result<()> {
        let dev = Device::Cpu;
        // Row 0: label 2 is top-1. Row 1: label 0 is 6th of 7. Row 2: label 6 is 3rd.
        let logits = Tensor::new(
            &[
                [0.0f32, 1.0, 9.0, 2.0, 3.0, 4.0, 5.0],
                [1.0, 9.0, 8.0, 7.0, 6.0, 5.0, 0.0],
                [9.0, 8.0, 0.0, 1.0, 2.0, 3.0, 7.0],
            ],
            &dev,
        )?;
        let labels = Tensor::new(&[2u32, 0, 6], &dev)?;
        let mut acc = Accuracy::default();
        acc.update(&logits, &labels)?;
        assert_eq!(acc, Accuracy { top1: 1, top5: 2, total: 3 });
        assert!((acc.top1_percent() - 100.0 / 3.0).abs() < 1e-12);
        assert_eq!(top_k_correct(&logits, &labels, 7)?, 3);
        assert!(top_k_correct(&logits, &Tensor::new(&[2u32, 0, 7], &dev)?, 1).is_err());
        Ok(())
    }
}
