//! Running a network with activations in another dtype than its parameters.

use candle_core::{DType, ModuleT, Result, Tensor};

use crate::Model;

/// `model` with its activations in `dtype` (bf16 for `precision = "bf16"`):
/// the images are cast to it on the way in, the features and logits back to
/// f32 on the way out, and the layers cast their f32 parameters (the master
/// weights, whose gradients stay f32) to the activations' dtype as they use
/// them (`layers::Conv2d`, `layers::Linear`, `tfkd_core::norm::BatchNorm`).
/// With `dtype` = f32 the model is returned as it is.
pub fn with_activation_dtype(model: Box<dyn Model>, dtype: DType) -> Box<dyn Model> {
    if dtype == DType::F32 {
        model
    } else {
        Box::new(Autocast { inner: model, dtype })
    }
}

struct Autocast {
    inner: Box<dyn Model>,
    dtype: DType,
}

impl ModuleT for Autocast {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.forward_t(&xs.to_dtype(self.dtype)?, train)?.to_dtype(DType::F32)
    }
}

impl Model for Autocast {
    fn forward_features(&self, xs: &Tensor, train: bool) -> crate::Result<Tensor> {
        Ok(self.inner.forward_features(&xs.to_dtype(self.dtype)?, train)?.to_dtype(DType::F32)?)
    }

    fn forward_head(&self, features: &Tensor, train: bool) -> crate::Result<Tensor> {
        Ok(self.inner.forward_head(&features.to_dtype(self.dtype)?, train)?.to_dtype(DType::F32)?)
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn reseed_dropout(&self, seed: u64) {
        self.inner.reseed_dropout(seed)
    }

    fn dropout_state(&self) -> Option<u64> {
        self.inner.dropout_state()
    }
}
