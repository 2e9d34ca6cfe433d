//! The optimizers of the official code, with exactly PyTorch's update rules:
//! [`Sgd`] (`torch.optim.SGD`: momentum, Nesterov, weight decay; candle's
//! `SGD` has no momentum) and [`Adam`] (`torch.optim.Adam`, which the
//! official code uses for its plain CNN).
//!
//! SGD:
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

/// The gradients of `loss` for a training step: candle's backward pass,
/// handing each activation's buffer back as soon as no later step of the
/// pass reads it and nothing outside the graph holds it (candle-core patch
/// 5, `Tensor::backward_releasing`), as PyTorch frees its saved tensors
/// during the backward pass. The peak memory of a step then no longer holds
/// every activation together with the largest gradients. The gradients are
/// the same as `loss.backward()`'s; the graph cannot be differentiated a
/// second time (an error says so). `TFKD_KEEP_GRAPH=1`
/// ([`crate::env::KEEP_GRAPH`]) keeps the whole graph instead.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    static KEEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let keep = *KEEP.get_or_init(|| std::env::var(crate::env::KEEP_GRAPH).is_ok_and(|v| v == "1"));
    Ok(if keep { loss.backward()? } else { loss.backward_releasing()? })
}

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
    ///
    /// f32 parameters on a GPU are all updated by one in-place kernel
    /// launch (PyTorch's foreach SGD), rounded as the candle ops of the
    /// other parameters are.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        #[cfg(feature = "cuda")]
        let mut on_gpu = Vec::new();
        #[cfg_attr(not(feature = "cuda"), allow(unused_variables))] // `i`: the GPU path's
        for (i, ((_, var), buffer)) in self.params.iter().zip(self.buffers.iter_mut()).enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // Detached: candle's gradients can carry the op history of the
            // step that made them, and the momentum buffer lives across
            // steps; without this every buffer would keep every past graph.
            let grad = grad.detach();
            #[cfg(feature = "cuda")]
            if crate::own_cuda_kernels(var.as_tensor()) && grad.dtype() == candle_core::DType::F32 {
                on_gpu.push((i, grad.contiguous()?));
                continue;
            }
            let SgdConfig { lr, momentum, dampening, weight_decay, nesterov } = self.config;
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
        #[cfg(feature = "cuda")]
        self.step_on_gpu(on_gpu)?;
        Ok(())
    }

    /// [`Sgd::step`] of the f32 GPU parameters `(index, gradient)`: a
    /// momentum buffer is made (zeroed; the kernel writes `d` into it) for
    /// each first step, then one launch updates them all.
    #[cfg(feature = "cuda")]
    fn step_on_gpu(&mut self, on_gpu: Vec<(usize, Tensor)>) -> Result<()> {
        let SgdConfig { lr, momentum, dampening, weight_decay, nesterov } = self.config;
        let mut fresh = vec![false; on_gpu.len()];
        if momentum != 0.0 {
            for ((i, _), fresh) in on_gpu.iter().zip(fresh.iter_mut()) {
                if self.buffers[*i].is_none() {
                    self.buffers[*i] = Some(self.params[*i].1.as_tensor().zeros_like()?);
                    *fresh = true;
                }
            }
        }
        let slots: Vec<crate::cuda::OptimSlot> = on_gpu
            .iter()
            .zip(fresh)
            .map(|((i, grad), fresh)| crate::cuda::OptimSlot {
                param: self.params[*i].1.as_tensor(),
                grad,
                state: [self.buffers[*i].as_ref(), None],
                fresh,
                adam_scales: [0.0; 2],
            })
            .collect();
        let scalars = crate::cuda::SgdScalars {
            lr: lr as f32,
            weight_decay: weight_decay as f32,
            momentum: momentum as f32,
            one_minus_dampening: (1.0 - dampening) as f32,
            nesterov: i32::from(nesterov),
        };
        Ok(crate::cuda::sgd(&slots, &scalars)?)
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = backward(loss)?;
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
                // A buffer of its own: on a GPU the step updates it in place.
                *slot = Some(b.to_device(var.device())?.to_dtype(var.dtype())?.copy()?);
            }
        }
        if let Some(name) = state.keys().min() {
            return Err(Error::State(format!("optimizer state {name} matches no parameter")));
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// Hyper-parameters of [`Adam`]; the defaults are `torch.optim.Adam`'s
/// (the official code trains its plain CNN with them, `lr` from the config).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamConfig {
    /// Learning rate η ≥ 0.
    pub lr: f64,
    /// Decay of the first moment, β₁ ∈ [0, 1).
    pub beta1: f64,
    /// Decay of the second moment, β₂ ∈ [0, 1).
    pub beta2: f64,
    /// ε > 0, added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Weight decay λ ≥ 0 (L2, added to the gradient, as `torch.optim.Adam`;
    /// not AdamW's decoupled decay).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    /// no weight decay.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamConfig {
    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        check_param("lr", self.lr, self.lr >= 0.0, "must be >= 0")?;
        check_param("beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "must be in [0, 1)")?;
        check_param("beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "must be in [0, 1)")?;
        check_param("eps", self.eps, self.eps > 0.0, "must be > 0")?;
        check_param("weight_decay", self.weight_decay, self.weight_decay >= 0.0, "must be >= 0")?;
        Ok(())
    }
}

/// Adam over a fixed, named list of variables, with exactly
/// `torch.optim.Adam`'s update rule (`amsgrad=False`, `maximize=False`):
///
/// ```text
/// t  ← t + 1                                   (per parameter)
/// g  = g + λ·p                                 (weight decay λ)
/// m  ← β₁·m + (1 − β₁)·g                       (first moment, 0 at first)
/// v  ← β₂·v + (1 − β₂)·g²                      (second moment, 0 at first)
/// p  ← p − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// As with [`Sgd`], a parameter without a gradient is skipped entirely (its
/// step count does not advance).
pub struct Adam {
    params: Vec<(String, Var)>,
    /// Per parameter: (steps taken, first moment, second moment).
    moments: Vec<Option<(u64, Tensor, Tensor)>>,
    config: AdamConfig,
}

impl Adam {
    /// An optimizer for `params` (name, variable); names key the saved state.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        config.validate()?;
        let moments = vec![None; params.len()];
        Ok(Self { params, moments, config })
    }

    /// The current configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Sets the learning rate (what a schedule does before each step).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_param("lr", lr, lr >= 0.0, "must be >= 0")?;
        self.config.lr = lr;
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads`.
    ///
    /// f32 parameters on a GPU are all updated by one in-place kernel
    /// launch, rounded as the candle ops of the other parameters are.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let AdamConfig { lr, beta1, beta2, eps, weight_decay } = self.config;
        #[cfg(feature = "cuda")]
        let mut on_gpu = Vec::new();
        #[cfg_attr(not(feature = "cuda"), allow(unused_variables))] // `i`: the GPU path's
        for (i, ((_, var), slot)) in self.params.iter().zip(self.moments.iter_mut()).enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let grad = grad.detach();
            let p = var.as_tensor().detach();
            let (t, m, v) = match slot.take() {
                None => (0, p.zeros_like()?, p.zeros_like()?),
                Some(state) => state,
            };
            let t = t + 1;
            let bias1 = 1.0 - beta1.powi(t as i32);
            let bias2_sqrt = (1.0 - beta2.powi(t as i32)).sqrt();
            #[cfg(feature = "cuda")]
            if crate::own_cuda_kernels(&p) && grad.dtype() == candle_core::DType::F32 {
                on_gpu.push((i, grad.contiguous()?, [(lr / bias1) as f32, (1.0 / bias2_sqrt) as f32]));
                *slot = Some((t, m, v));
                continue;
            }
            let g = if weight_decay != 0.0 { (&grad + (&p * weight_decay)?)? } else { grad };
            let m = ((m * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + eps)?;
            let update = ((&m / denom)? * (lr / bias1))?;
            var.set(&(&p - update)?)?;
            *slot = Some((t, m, v));
        }
        #[cfg(feature = "cuda")]
        if !on_gpu.is_empty() {
            let slots: Vec<crate::cuda::OptimSlot> = on_gpu
                .iter()
                .filter_map(|(i, grad, adam_scales)| {
                    let (_, m, v) = self.moments[*i].as_ref()?;
                    Some(crate::cuda::OptimSlot {
                        param: self.params[*i].1.as_tensor(),
                        grad,
                        state: [Some(m), Some(v)],
                        fresh: false,
                        adam_scales: *adam_scales,
                    })
                })
                .collect();
            let scalars = crate::cuda::AdamScalars {
                beta1: beta1 as f32,
                one_minus_beta1: (1.0 - beta1) as f32,
                beta2: beta2 as f32,
                one_minus_beta2: (1.0 - beta2) as f32,
                eps: eps as f32,
                weight_decay: weight_decay as f32,
            };
            crate::cuda::adam(&slots, &scalars)?;
        }
        Ok(())
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = backward(loss)?;
        self.step(&grads)
    }

    /// The moments and step counts as named tensors (`<param>.exp_avg`,
    /// `<param>.exp_avg_sq`, `<param>.step`, PyTorch's state names), for
    /// checkpoints. Parameters not yet stepped have none.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, var), slot) in self.params.iter().zip(&self.moments) {
            if let Some((t, m, v)) = slot {
                out.push((format!("{name}.exp_avg"), m.clone()));
                out.push((format!("{name}.exp_avg_sq"), v.clone()));
                // The count as f64 is exact up to 2^53 steps.
                if let Ok(step) = Tensor::new(&[*t as f64], var.device()) {
                    out.push((format!("{name}.step"), step));
                }
            }
        }
        out
    }

    /// Restores state saved by [`Adam::state`]; an unknown name, a missing
    /// part or a shape that differs from its parameter is an error.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<()> {
        let mut moments = vec![None; self.params.len()];
        for ((name, var), slot) in self.params.iter().zip(moments.iter_mut()) {
            let parts = (
                state.remove(&format!("{name}.exp_avg")),
                state.remove(&format!("{name}.exp_avg_sq")),
                state.remove(&format!("{name}.step")),
            );
            match parts {
                (None, None, None) => {}
                (Some(m), Some(v), Some(t)) => {
                    for (what, x) in [("exp_avg", &m), ("exp_avg_sq", &v)] {
                        if x.dims() != var.dims() {
                            return Err(Error::State(format!(
                                "{what} of {name} has shape {:?}, the parameter {:?}",
                                x.dims(),
                                var.dims()
                            )));
                        }
                    }
                    let t = t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
                    let steps = match t.as_slice() {
                        [s] if *s >= 1.0 && s.fract() == 0.0 => *s as u64,
                        other => return Err(Error::State(format!("step of {name} is {other:?}, not one count >= 1"))),
                    };
                    // Moments of their own: on a GPU the step updates them in place.
                    let to = |x: Tensor| -> Result<Tensor> { Ok(x.to_device(var.device())?.to_dtype(var.dtype())?.copy()?) };
                    *slot = Some((steps, to(m)?, to(v)?));
                }
                _ => return Err(Error::State(format!("the Adam state of {name} is incomplete (exp_avg, exp_avg_sq, step)"))),
            }
        }
        if let Some(name) = state.keys().min() {
            return Err(Error::State(format!("optimizer state {name} matches no parameter")));
        }
        self.moments = moments;
        Ok(())
    }
}

/// Which optimizer, with its hyper-parameters: what a training loop holds
/// when either may be configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd(SgdConfig),
    /// [`Adam`].
    Adam(AdamConfig),
}

impl OptimizerConfig {
    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        match self {
            OptimizerConfig::Sgd(c) => c.validate(),
            OptimizerConfig::Adam(c) => c.validate(),
        }
    }
}

/// [`Sgd`] or [`Adam`] behind one interface.
pub enum Optimizer {
    /// SGD.
    Sgd(Sgd),
    /// Adam.
    Adam(Adam),
}

impl Optimizer {
    /// The optimizer `config` names, over `params`.
    pub fn new(params: Vec<(String, Var)>, config: OptimizerConfig) -> Result<Self> {
        Ok(match config {
            OptimizerConfig::Sgd(c) => Optimizer::Sgd(Sgd::new(params, c)?),
            OptimizerConfig::Adam(c) => Optimizer::Adam(Adam::new(params, c)?),
        })
    }

    /// Sets the learning rate.
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.set_learning_rate(lr),
            Optimizer::Adam(o) => o.set_learning_rate(lr),
        }
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.backward_step(loss),
            Optimizer::Adam(o) => o.backward_step(loss),
        }
    }

    /// One update of every parameter that has a gradient in `grads` (say
    /// gradients all-reduced over data-parallel replicas).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.step(grads),
            Optimizer::Adam(o) => o.step(grads),
        }
    }

    /// The state as named tensors, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::Sgd(o) => o.state(),
            Optimizer::Adam(o) => o.state(),
        }
    }

    /// Restores state saved by [`Optimizer::state`] of the same kind.
    pub fn load_state(&mut self, state: HashMap<String, Tensor>) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.load_state(state),
            Optimizer::Adam(o) => o.load_state(state),
        }
    }
}
