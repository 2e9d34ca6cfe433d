//! Checkpoints: PyTorch `.pth` / `.pth.tar` / `.pt` (pickled state dicts, as the
//! official release's teachers; zip and legacy formats, see [`crate::pth`]) and
//! `.safetensors`.
//!
//! A PyTorch checkpoint may hold the state dict at its top level or under a
//! `state_dict` key (the official `{'epoch', 'state_dict', 'optim_dict'}`
//! layout); `module.` prefixes left by `nn.DataParallel` are stripped and
//! `num_batches_tracked` buffers are dropped. Before a model is built, the
//! file's names and shapes are compared with the model's, and any difference is
//! reported in one [`ZooError::StateDictMismatch`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{MisShaped, Result, ZooError};
use crate::registry::{build_with, param_shapes, ModelOptions};
use crate::Model;

/// Normalises raw state-dict entries: strips `module.` prefixes (also a
/// leading `state_dict.`) and drops `num_batches_tracked`.
pub fn normalize_state_dict(entries: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    entries
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| {
            let mut k = k.as_str();
            if let Some(s) = k.strip_prefix("state_dict.") {
                k = s;
            }
            while let Some(s) = k.strip_prefix("module.") {
                k = s;
            }
            (k.replace(".module.", "."), v)
        })
        .collect()
}

fn is_pytorch(name: &str) -> bool {
    [".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// Reads a checkpoint's tensors (on the CPU, as stored), normalised by
/// [`normalize_state_dict`]. The format follows the extension.
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let io = |source| ZooError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entries = if name.ends_with(".safetensors") {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(io)?
            .into_iter()
            .collect()
    } else if is_pytorch(&name) {
        let bytes = std::fs::read(path).map_err(|e| io(e.into()))?;
        crate::pth::read_pth_bytes(&bytes).map_err(|e| io(e.into()))?
    } else {
        return Err(ZooError::UnsupportedFormat {
            path: path.to_path_buf(),
        });
    };
    Ok(normalize_state_dict(entries))
}

/// Compares `tensors` with what model `name` expects and returns one error
/// listing every missing, unexpected and mis-shaped tensor.
/// `source` names where the tensors came from (for the message).
pub fn check_state_dict(
    name: &str,
    opts: &ModelOptions,
    tensors: &HashMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    check_tensors(name, &param_shapes(name, opts)?, tensors, source)
}

/// Compares `tensors` with an expected name → shape list (from
/// [`crate::registry::param_shapes`] or [`crate::registry::record_shapes`]);
/// `model` and `source` only name things in the error.
pub fn check_tensors(
    model: &str,
    expected: &[(String, Vec<usize>)],
    tensors: &HashMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    let name = model;
    let expected: BTreeMap<String, Vec<usize>> = expected.iter().cloned().collect();
    let mut missing = Vec::new();
    let mut mis_shaped = Vec::new();
    for (k, shape) in &expected {
        match tensors.get(k) {
            None => missing.push(k.clone()),
            Some(t) if t.dims() != shape.as_slice() => mis_shaped.push(MisShaped {
                name: k.clone(),
                expected: shape.clone(),
                found: t.dims().to_vec(),
            }),
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty() {
        Ok(())
    } else {
        Err(ZooError::StateDictMismatch {
            model: name.to_string(),
            source_name: source.to_string(),
            missing,
            unexpected,
            mis_shaped,
        })
    }
}

/// Builds model `name` from already-read tensors after checking them; the
/// tensors are converted to `dtype` and moved to `device`. No tensor is a
/// `Var`, so forwards build no autograd graph (a teacher).
pub fn from_state_dict(
    name: &str,
    opts: &ModelOptions,
    tensors: HashMap<String, Tensor>,
    source: &str,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>> {
    check_state_dict(name, opts, &tensors, source)?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    build_with(name, opts, vb)
}

/// Loads model `name` from a `.pth` / `.pth.tar` / `.safetensors` checkpoint.
///
/// ```no_run
/// use candle_core::{DType, Device};
/// use tfkd_zoo::{load, InputSize, ModelOptions};
/// let opts = ModelOptions::new(100, InputSize::Cifar);
/// let teacher = load("resnet18", &opts, "best.pth.tar", DType::F32, &Device::Cpu)?;
/// # Ok::<(), tfkd_zoo::ZooError>(())
/// ```
pub fn load(
    name: &str,
    opts: &ModelOptions,
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>> {
    let path = path.as_ref();
    let tensors = read_state_dict(path)?;
    from_state_dict(
        name,
        opts,
        tensors,
        &path.display().to_string(),
        dtype,
        device,
    )
}

/// The tensors of a `VarMap` (parameters and running statistics) by name.
pub fn varmap_state_dict(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect())
}

/// Saves tensors (for example [`varmap_state_dict`]) as safetensors.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    candle_core::safetensors::save(tensors, path).map_err(|source| ZooError::Io {
        path: path.to_path_buf(),
        source,
    })
}
