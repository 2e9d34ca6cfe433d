//! Stochastic gradient descent with momentum, Nesterov and weight decay, with
//! exactly `torch.optim.SGD`'s update rule (candle's `SGD` has no momentum).
//!
//! For each parameter `p` with gradient `g`, at step t:
//!
//! ```text
//! d   = g + λ·p                          (weight decay λ)
//! b   = d                     at t = 1   (momentum buffer)
//! b   = μ·b + (1 − τ)·d       at t > 1   (momentum μ, dampening τ)
//! d   = d + μ·b  if Nesterov, else d = b (when μ ≠ 0)
//! p  ← p − η·d                           (learning rate η)
//! ```
//!
//! A parameter without a gradient in the `GradStore` is skipped entirely, as
//! PyTorch skips `p.grad is None`: BatchNorm running statistics and frozen
//! variables are never decayed or moved.

use crate::error::check_param;
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Hyper-parameters of [`Sgd`]; the defaults are the paper's CIFAR recipe.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    /// Learning rate η ≥ 0 (usually overwritten each step by a schedule).
    pub lr: f64,
    /// Momentum μ ≥ 0.
    pub momentum: f64,
    /// Dampening τ ∈ [0, 1].
    pub dampening: f64,
    /// Weight decay λ ≥ 0 (L2, added to the gradient).
    pub weight_decay: f64,
    /// Nesterov momentum (needs μ > 0 and τ = 0, as in PyTorch).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// The official recipe, [`crate::recipe::sgd`].
    fn default() -> Self {
        crate::recipe::sgd()
    }
}

impl SgdConfig {
    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        check_param("lr", self.lr, self.lr >= 0.0, "must be >= 0")?;
        check_param("momentum", self.momentum, self.momentum >= 0.0, "must be >= 0")?;
        check_param("dampening", self.dampening, (0.0..=1.0).contains(&self.dampening), "must be in [0, 1]")?;
        check_param("weight_decay", self.weight_decay, self.weight_decay >= 0.0, "must be >= 0")?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::InvalidParameter {
                name: "nesterov",
                value: self.momentum,
                expected: "Nesterov momentum needs momentum > 0 and dampening = 0".into(),
            });
        }
        Ok(())
    }
}

/// SGD over a fixed, named list of variables.
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: Vec<Option<Tensor>>,
    config: SgdConfig,
}

impl Sgd {
    /// An optimizer for `params` (name, variable); names key the saved state.
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        let buffers = vec![None; params.len()];
        Ok(Self { params, buffers, config })
    }

    /// The current configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate (what a schedule does before each step).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_param("lr", lr, lr >= 0.0, "must be >= 0")?;
        self.config.lr = lr;
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let SgdConfig { lr, momentum, dampening, weight_decay, nesterov } = self.config;
        for ((_, var), buffer) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // Detached: candle's gradients can carry the op history of the
            // step that made them, and the momentum buffer lives across
            // steps; without this every buffer would keep every past graph.
            let grad = grad.detach();
            let p = var.as_tensor().detach();
            let mut d = if weight_decay != 0.0 { (&grad + (&p * weight_decay)?)? } else { grad };
            if momentum != 0.0 {
                let b = match buffer.take() {
                    None => d.copy()?,
                    Some(b) => ((b * momentum)? + (&d * (1.0 - dampening))?)?,
                };
                d = if nesterov { (d + (&b * momentum)?)? } else { b.clone() };
                *buffer = Some(b);
            }
            var.set(&(&p - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The momentum buffers as named tensors (`<param name>.momentum_buffer`),
    /// for checkpoints. Parameters not yet stepped have no buffer.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (format!("{name}.momentum_buffer"), b.clone())))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; an unknown name or a shape
    /// that differs from its parameter is an error.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<()> {
        let mut buffers = vec![None; self.params.len()];
        for ((name, var), slot) in self.params.iter().zip(buffers.iter_mut()) {
            if let Some(b) = state.remove(&format!("{name}.momentum_buffer")) {
                if b.dims() != var.dims() {
                    return Err(Error::State(format!(
                        "momentum buffer of {name} has shape {:?}, the parameter {:?}",
                        b.dims(),
                        var.dims()
                    )));
                }
                *slot = Some(b.to_device(var.device())?.to_dtype(var.dtype())?);
            }
        }
        if let Some(name) = state.keys().min() {
            return Err(Error::State(format!("optimizer state {name} matches no parameter")));
        }
        self.buffers = buffers;
        Ok(())
    }
}
