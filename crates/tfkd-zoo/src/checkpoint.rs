//! Checkpoints: PyTorch `.pth` / `.pth.tar` / `.pt` (pickled state dicts, as the
//! official release's teachers; zip and legacy formats, see [`crate::pth`]) and
//! `.safetensors`.
//!
//! A PyTorch checkpoint may hold the state dict at its top level or under a
//! `state_dict` key (the official `{'epoch', 'state_dict', 'optim_dict'}`
//! layout); `module.` prefixes left by `nn.DataParallel` are stripped and
//! `num_batches_tracked` buffers are dropped, and the legacy DenseNet names of
//! torchvision's published files (`denselayerN.norm.1.weight`) become the
//! module's (`denselayerN.norm1.weight`). Before a model is built, the
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
/// leading `state_dict.`), drops `num_batches_tracked`, and renames
/// DenseNet's legacy keys ([`legacy_densenet_key`]).
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
            let k = k.replace(".module.", ".");
            (legacy_densenet_key(&k).unwrap_or(k), v)
        })
        .collect()
}

/// The current name of a legacy DenseNet key, `None` for any other key.
///
/// torchvision's published DenseNet files predate the rule that module names
/// hold no `.`: their dense layers are `norm.1`, `relu.1`, `conv.1`, `norm.2`,
/// … where the module has `norm1`, `conv1`, …. torchvision renames them when
/// it loads (`_load_state_dict` in `torchvision/models/densenet.py`, the
/// pattern `^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$`
/// → `\1\2`); this is that rule.
///
/// ```
/// use tfkd_zoo::checkpoint::legacy_densenet_key;
/// assert_eq!(
///     legacy_densenet_key("features.denseblock1.denselayer1.norm.1.weight").as_deref(),
///     Some("features.denseblock1.denselayer1.norm1.weight")
/// );
/// assert_eq!(legacy_densenet_key("features.denseblock1.denselayer1.norm1.weight"), None);
/// ```
pub fn legacy_densenet_key(key: &str) -> Option<String> {
    let (head, tensor) = key.rsplit_once('.')?;
    let (head, index) = head.rsplit_once('.')?;
    let (layer, module) = head.rsplit_once('.')?;
    let digits = layer.len() - layer.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let is_layer = digits > 0 && layer[..layer.len() - digits].ends_with("denselayer");
    let matches = is_layer
        && matches!(module, "norm" | "relu" | "conv")
        && matches!(index, "1" | "2")
        && matches!(tensor, "weight" | "bias" | "running_mean" | "running_var");
    matches.then(|| format!("{head}{index}.{tensor}"))
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
