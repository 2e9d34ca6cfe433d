//! The numeric precision of convolutions on GPUs.
//!
//! As in PyTorch (`torch.backends.cudnn.allow_tf32 = True`, its default),
//! f32 convolutions on CUDA may use TF32 tensor cores: inputs rounded to a
//! 10-bit mantissa, products accumulated in f32. That is the default here
//! too; [`set_conv_tf32`]`(false)` (a config's `precision = "f32"`, the
//! benchmarks' `--precision f32`) asks for strict f32 arithmetic. Matrix
//! products (linear layers) stay strict f32 either way, as PyTorch's
//! `allow_tf32` for matmul defaults to off. CPU and Metal arithmetic does not
//! depend on this switch. [`Precision::Bf16`] runs the network in bf16
//! with f32 master weights.

use std::sync::atomic::{AtomicBool, Ordering};

/// A run's arithmetic on GPUs, as configs and command lines name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 tensors; f32 convolutions on CUDA may use TF32 tensor cores
    /// (PyTorch's default).
    #[default]
    Tf32,
    /// f32 tensors and strict f32 arithmetic everywhere.
    F32,
    /// Autocast-style mixed precision: the activations are bf16, so every
    /// convolution and matrix product runs in bf16 (accumulating in f32);
    /// the parameters (master weights), their gradients and the optimizer
    /// stay f32, BatchNorm normalises with f32 statistics, and the logits
    /// are cast to f32 before the loss. Meant for GPUs with bf16 tensor
    /// cores; it runs anywhere candle has bf16 kernels.
    Bf16,
}

impl Precision {
    /// Sets the process-wide switches this precision implies
    /// ([`set_conv_tf32`]: off only for strict f32).
    pub fn apply(self) {
        set_conv_tf32(self != Precision::F32);
    }

    /// The dtype of the activations: the images are cast to it before the
    /// network, the logits back to f32 after it.
    pub fn activation_dtype(self) -> candle_core::DType {
        match self {
            Precision::Tf32 | Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    /// Why this precision cannot run on the CPU, if it cannot: candle's CPU
    /// matrix product (the `gemm` crate) has no bf16 kernel.
    pub fn cpu_refusal(self) -> Option<&'static str> {
        (self == Precision::Bf16).then_some("bf16 needs a GPU (cuda or metal): candle's CPU matrix products have no bf16 kernel")
    }

    /// Whether this is the default ([`Precision::Tf32`]).
    pub fn is_default(&self) -> bool {
        *self == Precision::default()
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Tf32 => "tf32",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "tf32" => Ok(Precision::Tf32),
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("{other:?} is not a precision (tf32, f32 or bf16)")),
        }
    }
}

static CONV_TF32: AtomicBool = AtomicBool::new(true);

/// Allows (`true`, the default) or forbids TF32 in f32 convolutions on
/// CUDA, for the whole process, from the next convolution on.
pub fn set_conv_tf32(allow: bool) {
    CONV_TF32.store(allow, Ordering::Relaxed);
}

/// Whether f32 convolutions on CUDA may use TF32 ([`set_conv_tf32`]).
pub fn conv_tf32() -> bool {
    CONV_TF32.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn tf32_is_on_by_default_and_each_precision_sets_it() {
        // The only test touching the switch (process-wide).
        assert!(super::conv_tf32());
        Precision::F32.apply();
        assert!(!super::conv_tf32());
        Precision::Tf32.apply();
        assert!(super::conv_tf32());
    }

    #[test]
    fn precisions_parse_print_and_name_bad_values() {
        for p in [Precision::Tf32, Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert_eq!(Precision::default(), Precision::Tf32);
        assert!(Precision::Bf16.cpu_refusal().is_some_and(|why| why.contains("GPU")));
        assert!(Precision::Tf32.cpu_refusal().is_none() && Precision::F32.cpu_refusal().is_none());
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("\"fp16\"") && err.contains("tf32"), "{err}");
    }
}
