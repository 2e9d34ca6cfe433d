//! Reproducible parameter initialisation for candle models.
//!
//! [`SeededVarMap`] is a [`candle_nn::VarMap`] whose new variables are drawn
//! from a [`SeededRng`] according to the [`Init`] hint the layer passes to
//! `VarBuilder::get_with_hints`. Building the same model with the same seed
//! gives the same weights on every device, which candle's own `VarMap` cannot
//! do on CPU. Variables are created in the order the model asks for them.
//!
//! The helpers return the hints PyTorch's layers use by default, so models that
//! pass them start from the same distributions as their PyTorch references.

use crate::rng::SeededRng;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::sync::{Arc, Mutex};

/// A `VarMap` that initialises new variables from a seeded generator.
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    rng: Arc<Mutex<SeededRng>>,
}

impl SeededVarMap {
    /// An empty map whose variables will be drawn from `SeededRng::new(seed)`.
    pub fn new(seed: u64) -> Self {
        Self::with_rng(SeededRng::new(seed))
    }

    /// An empty map drawing from the given generator.
    pub fn with_rng(rng: SeededRng) -> Self {
        Self { varmap: VarMap::new(), rng: Arc::new(Mutex::new(rng)) }
    }

    /// A `VarBuilder` that creates (or returns existing) variables in this map.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The underlying map: save it, load into it, list its variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// All variables sorted by name: a deterministic order for optimizers.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    fn sample(&self, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> crate::Result<Tensor> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        match init {
            Init::Const(c) => Ok((Tensor::ones(shape, dtype, dev)? * c)?),
            Init::Uniform { lo, up } => rng.uniform_tensor(shape.clone(), lo, up, dtype, dev),
            Init::Randn { mean, stdev } => rng.normal_tensor(shape.clone(), mean, stdev, dtype, dev),
            Init::Kaiming { dist, fan, non_linearity } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => rng.normal_tensor(shape.clone(), 0.0, std, dtype, dev),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        rng.uniform_tensor(shape.clone(), -bound, bound, dtype, dev)
                    }
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "shape mismatch for variable {name}: requested {shape:?}, stored {:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let value = self.sample(&shape, init, dtype, dev).map_err(candle_core::Error::wrap)?;
        let var = Var::from_tensor(&value)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("variable {name} does not exist and has no shape to create it with"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().map(|d| d.contains_key(name)).unwrap_or(false)
    }
}

/// PyTorch's default for `nn.Conv2d` / `nn.Linear` weights and biases:
/// `kaiming_uniform_(a = √5)`, i.e. U(−1/√fan_in, 1/√fan_in), and the same
/// bound for the bias. `fan_in` = in_channels/groups × kernel area (or in_features).
pub fn pytorch_default_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `kaiming_normal_(mode = "fan_out", nonlinearity = "relu")`: N(0, 2/fan_out),
/// fan_out = out_channels × kernel area (torchvision ResNets, ResNeXt29 convs).
pub fn kaiming_normal_fan_out(fan_out: usize) -> Init {
    Init::Randn { mean: 0.0, stdev: (2.0 / fan_out.max(1) as f64).sqrt() }
}

/// `kaiming_normal_(mode = "fan_in", nonlinearity = "relu")`: N(0, 2/fan_in)
/// (torch's `kaiming_normal_` default; ResNeXt29's classifier), fan_in =
/// in_channels/groups × kernel area (or in_features).
pub fn kaiming_normal_fan_in(fan_in: usize) -> Init {
    Init::Randn { mean: 0.0, stdev: (2.0 / fan_in.max(1) as f64).sqrt() }
}

/// How a layer's weight is initialised when it is created (ignored when the
/// weights are loaded): the one place the zoo's initialisation formulas live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightInit {
    /// PyTorch's default: kaiming_uniform(a = √5), i.e. Uniform(±1/√fan_in)
    /// ([`pytorch_default_uniform`]).
    Torch,
    /// kaiming_normal(mode = fan_out, relu): N(0, 2/fan_out)
    /// ([`kaiming_normal_fan_out`]).
    KaimingOut,
    /// kaiming_normal(mode = fan_in, relu): N(0, 2/fan_in)
    /// ([`kaiming_normal_fan_in`]).
    KaimingIn,
}

impl WeightInit {
    /// The `VarBuilder` hint for a weight with these fans (a conv's
    /// `fan_in` = in_channels/groups × kernel area, `fan_out` = out_channels ×
    /// kernel area; a linear layer's are its in and out features).
    pub fn hint(self, fan_in: usize, fan_out: usize) -> Init {
        match self {
            WeightInit::Torch => pytorch_default_uniform(fan_in),
            WeightInit::KaimingOut => kaiming_normal_fan_out(fan_out),
            WeightInit::KaimingIn => kaiming_normal_fan_in(fan_in),
        }
    }
}

/// How a layer's bias is initialised when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasInit {
    /// No bias.
    None,
    /// PyTorch's default: Uniform(±1/√fan_in) ([`pytorch_default_uniform`]).
    Torch,
    /// Zero.
    Zero,
}

impl BiasInit {
    /// The `VarBuilder` hint for the bias of a layer with `fan_in` inputs per
    /// output, `None` for no bias.
    pub fn hint(self, fan_in: usize) -> Option<Init> {
        match self {
            BiasInit::None => None,
            BiasInit::Torch => Some(pytorch_default_uniform(fan_in)),
            BiasInit::Zero => Some(Init::Const(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(t: &Tensor) -> (f64, f64) {
        let v = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    }

    #[test]
    fn same_seed_gives_same_weights() -> candle_core::Result<()> {
        let build = |seed| -> candle_core::Result<Vec<f32>> {
            let map = SeededVarMap::new(seed);
            let vb = map.var_builder(DType::F32, &Device::Cpu);
            let w = vb.get_with_hints((16, 8), "fc.weight", pytorch_default_uniform(8))?;
            w.flatten_all()?.to_vec1()
        };
        assert_eq!(build(5)?, build(5)?);
        assert_ne!(build(5)?, build(6)?);
        Ok(())
    }

    #[test]
    fn hints_give_pytorch_distributions() -> candle_core::Result<()> {
        let map = SeededVarMap::new(0);
        let vb = map.var_builder(DType::F32, &Device::Cpu);
        // Conv 64 -> 128, 3x3: fan_in 576, fan_out 1152.
        let u = vb.get_with_hints((128, 64, 3, 3), "a", pytorch_default_uniform(576))?;
        let bound = 1.0 / 576f64.sqrt();
        let (m, s) = stats(&u);
        assert!(m.abs() < 2e-3 && (s - bound / 3f64.sqrt()).abs() < 1e-3, "{m} {s}");
        let n = vb.get_with_hints((128, 64, 3, 3), "b", kaiming_normal_fan_out(1152))?;
        let (_, s) = stats(&n);
        assert!((s - (2.0 / 1152f64).sqrt()).abs() < 1e-3, "{s}");
        let n = vb.get_with_hints((128, 64, 3, 3), "c", kaiming_normal_fan_in(576))?;
        let (_, s) = stats(&n);
        assert!((s - (2.0 / 576f64).sqrt()).abs() < 1e-3, "{s}");
        let c = vb.get_with_hints(4, "d", Init::Const(1.0))?;
        assert_eq!(c.to_vec1::<f32>()?, vec![1.0; 4]);
        // Asking again returns the same variable, a different shape is an error.
        assert_eq!(vb.get_with_hints((128, 64, 3, 3), "a", Init::Const(0.0))?.dims4()?.0, 128);
        assert!(vb.get_with_hints((2, 2), "a", Init::Const(0.0)).is_err());
        assert_eq!(map.named_vars().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        Ok(())
    }
}
