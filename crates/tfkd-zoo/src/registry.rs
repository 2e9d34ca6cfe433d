//! The model registry: one table, [`MODELS`], from which building by name,
//! listing, parameter counting and the documentation table derive.
//!
//! Adding a family means adding one file under `models/` and its rows here.

use std::fmt;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{Result, ZooError};
use crate::models::{
    alexnet, cnn, densenet, googlenet, mobilenet_v2, resnet, resnext, shufflenet_v2, tv_densenet,
    tv_resnet, vgg, wrn,
};
use crate::Model;

/// The input resolution a model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputSize {
    /// CIFAR-10/100, 32×32.
    Cifar,
    /// Tiny-ImageNet, 64×64.
    Tiny,
    /// ImageNet, 224×224.
    ImageNet,
}

impl InputSize {
    /// Side of the square input in pixels.
    pub fn side(self) -> usize {
        match self {
            InputSize::Cifar => 32,
            InputSize::Tiny => 64,
            InputSize::ImageNet => 224,
        }
    }

    /// The input size of a given side (32, 64 or 224).
    pub fn from_side(side: usize) -> Option<Self> {
        match side {
            32 => Some(InputSize::Cifar),
            64 => Some(InputSize::Tiny),
            224 => Some(InputSize::ImageNet),
            _ => None,
        }
    }
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            InputSize::Cifar => "cifar",
            InputSize::Tiny => "tiny",
            InputSize::ImageNet => "imagenet",
        };
        write!(f, "{name} ({0}x{0})", self.side())
    }
}

/// The default dropout-mask seed (the official code's seed, 230).
pub const DEFAULT_DROPOUT_SEED: u64 = 230;

/// Everything a builder needs besides the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// Number of classes K.
    pub num_classes: usize,
    /// Input resolution.
    pub input: InputSize,
    /// Seed of the model's dropout masks (CNN, GoogLeNet, WRN with dropout).
    pub dropout_seed: u64,
    /// Width divisor d: every channel count of the network is divided by d,
    /// rounded up, at least 1, and kept a multiple of what it must be a
    /// multiple of (groups, cardinality, ShuffleNetV2's even split); depth,
    /// strides, pooling and quirks are unchanged and the classifier still
    /// outputs K classes. 1 (the default) is the paper's network; 0 is a
    /// [`ZooError::InvalidConfig`]. Each family's `thinned(d)` implements it
    /// (see [`crate::models::div_ceil_multiple`]).
    pub width_divisor: usize,
}

impl ModelOptions {
    /// Options with the default dropout seed and width divisor 1 (the paper's
    /// network).
    pub fn new(num_classes: usize, input: InputSize) -> Self {
        Self {
            num_classes,
            input,
            dropout_seed: DEFAULT_DROPOUT_SEED,
            width_divisor: 1,
        }
    }

    /// These options with width divisor `d` (a scaled-down network for fast
    /// experiments; see [`ModelOptions::width_divisor`]).
    pub fn with_width_divisor(self, d: usize) -> Self {
        Self {
            width_divisor: d,
            ..self
        }
    }
}

type BuildFn = fn(&ModelOptions, VarBuilder) -> candle_core::Result<Box<dyn Model>>;

/// One row of the registry.
pub struct ModelEntry {
    /// Registry name (the official `model_version` for CIFAR models).
    pub name: &'static str,
    /// Source file under `src/models/`.
    pub family: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Input sizes the model supports.
    pub inputs: &'static [InputSize],
    /// Reference learnable-parameter counts `(K, count)`: docs/MODELS.md (the official models' counts) for the
    /// CIFAR models (32×32), torchvision's published counts for ImageNet.
    pub reference_params: &'static [(usize, u64)],
    /// Forward multiply-accumulates of one image at the network's native
    /// input (32×32 for the CIFAR networks, 224×224 for the ImageNet ones),
    /// in millions, at full width (divisor 1). Published figures where the
    /// literature has one (the ResNets, MobileNetV2, ShuffleNetV2, DenseNet,
    /// GoogLeNet, ResNeXt, the torchvision networks, WRN-28-10 ≈ 5.25 G);
    /// computed from the network's convs and linears at K = 100 otherwise
    /// (AlexNet, VGG19-BN with torchvision's 25088 → 4096 → 4096 classifier,
    /// WRN-40-2, WRN-16-2). For cost estimates only: the scaled count of a
    /// network narrowed by d is about this / d².
    pub forward_mmacs: f64,
    /// Measured seconds per training image (32×32, batch 32) of this network
    /// narrowed by a width divisor, as `(divisor, seconds)` pairs, where it
    /// was measured: the baselines of whole quick reproductions on a 2-core
    /// AMD EPYC (Zen 4), two runs sharing the cores (2026-12-07, Tables 5
    /// and 9 in 9 min 31 s and 9 min 4 s: a run's seconds divided by its
    /// epochs times its training images plus a tenth of its test images;
    /// the median over the runs). The ÷16 MobileNetV2 and ShuffleNetV2 and
    /// the CNN rows are older one-thread `tfkd bench-step` figures (smoke
    /// uses them). Each value is the measured seconds per step of 32 images
    /// divided by 32.
    /// Empty for networks never measured.
    pub measured_cpu_seconds_per_image: &'static [(usize, f64)],
    /// For an ImageNet network, the CIFAR network that stands in for it in
    /// the scaled (non-ImageNet) reproduction profiles; `None` otherwise.
    pub scaled_stand_in: Option<&'static str>,
    /// How the learnable-parameter count at 64×64 (Tiny-ImageNet) differs
    /// from the one at 32×32, for the documentation table: `None` when it
    /// does not (global pooling adds no parameter), else the reason.
    pub tiny_params_note: Option<&'static str>,
    build: BuildFn,
}

impl fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelEntry")
            .field("name", &self.name)
            .field("family", &self.family)
            .field("inputs", &self.inputs)
            .finish()
    }
}

impl ModelEntry {
    /// True for the ImageNet (224×224) networks.
    pub fn is_imagenet(&self) -> bool {
        self.inputs.contains(&InputSize::ImageNet)
    }

    /// The measured CPU seconds per training image of this network at width
    /// divisor `divisor`, if measured (see
    /// [`ModelEntry::measured_cpu_seconds_per_image`]).
    pub fn measured_cpu_seconds(&self, divisor: usize) -> Option<f64> {
        self.measured_cpu_seconds_per_image
            .iter()
            .find(|(d, _)| *d == divisor)
            .map(|(_, s)| *s)
    }

    /// The measured CUDA training throughput of this network at full width,
    /// if measured ([`CUDA_MEASURED`]).
    pub fn measured_cuda(&self) -> Option<&'static CudaThroughput> {
        CUDA_MEASURED.iter().find(|m| m.model == self.name)
    }

    /// Builds this model.
    pub fn build(&self, opts: &ModelOptions, vb: VarBuilder) -> Result<Box<dyn Model>> {
        check(self, opts)?;
        Ok((self.build)(opts, vb)?)
    }
}

/// A training step's measured throughput on one GPU, tfkd's and PyTorch's
/// side by side in the same session (docs/PERFORMANCE.md, "On CUDA").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CudaThroughput {
    /// Registry name.
    pub model: &'static str,
    /// Training images per second of tfkd (f32, batch 128, 32×32, 100
    /// classes, full width: `tfkd bench-step --device cuda`).
    pub tfkd_images_per_second: f64,
    /// PyTorch eager's on the same GPU and step (`cudnn.benchmark = True`,
    /// its default TF32 convs: `scripts/bench_steps_torch.py`).
    pub pytorch_images_per_second: f64,
    /// The GPU and date.
    pub measured_on: &'static str,
}

/// Every measured CUDA throughput (session B of 2026-11-27, which ran tfkd's
/// own conv paths). The dry run's GPU-hours come from these where a network
/// has one.
pub const CUDA_MEASURED: &[CudaThroughput] = &[
    CudaThroughput { model: "cnn", tfkd_images_per_second: 14_340.0, pytorch_images_per_second: 39_871.0, measured_on: H200 },
    CudaThroughput { model: "resnet18", tfkd_images_per_second: 1_570.0, pytorch_images_per_second: 11_990.0, measured_on: H200 },
    CudaThroughput { model: "mobilenet_v2", tfkd_images_per_second: 801.0, pytorch_images_per_second: 5_256.0, measured_on: H200 },
    CudaThroughput { model: "shufflenet_v2", tfkd_images_per_second: 1_062.0, pytorch_images_per_second: 4_446.0, measured_on: H200 },
];

const H200: &str = "one NVIDIA H200, 2026-11-27";

const CT: &[InputSize] = &[InputSize::Cifar, InputSize::Tiny];
const IN: &[InputSize] = &[InputSize::ImageNet];

fn boxed<M: Model + 'static>(r: candle_core::Result<M>) -> candle_core::Result<Box<dyn Model>> {
    Ok(Box::new(r?))
}

/// Seconds per image from measured seconds per step of 32 images.
const fn per_image(step_seconds: f64) -> f64 {
    step_seconds / 32.0
}

macro_rules! row {
    ($name:expr, $family:expr, $desc:expr, $inputs:expr, $refs:expr,
     mmacs: $macs:expr, measured: $measured:expr, stand_in: $stand_in:expr, tiny: $tiny:expr,
     |$o:ident, $vb:ident| $body:expr) => {
        ModelEntry {
            name: $name,
            family: $family,
            description: $desc,
            inputs: $inputs,
            reference_params: $refs,
            forward_mmacs: $macs,
            measured_cpu_seconds_per_image: $measured,
            scaled_stand_in: $stand_in,
            tiny_params_note: $tiny,
            build: {
                fn f($o: &ModelOptions, $vb: VarBuilder) -> candle_core::Result<Box<dyn Model>> {
                    boxed($body)
                }
                f
            },
        }
    };
}

/// The registry table.
#[rustfmt::skip]
pub static MODELS: &[ModelEntry] = &[
    row!("cnn", "cnn.rs", "5-layer plain CNN (32 channels, dropout 0.5)", CT,
        &[(10, 357_514), (100, 369_124), (200, 382_024)],
        mmacs: 11.0, measured: &[(16, per_image(0.0144))], stand_in: None, tiny: Some("fc1 takes 8·8·128 inputs at 64×64"),
        |o, vb| cnn::build(&cnn::CnnConfig::paper().thinned(o.width_divisor), o.num_classes, o.input.side(), o.dropout_seed, vb)),
    row!("resnet18", "resnet.rs", "CIFAR ResNet18", CT,
        &[(10, 11_173_962), (100, 11_220_132), (200, 11_271_432)],
        mmacs: 556.0, measured: &[(16, per_image(0.046))], stand_in: None, tiny: None,
        |o, vb| resnet::build(&resnet::ResNetConfig::resnet18().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnet34", "resnet.rs", "CIFAR ResNet34", CT,
        &[(10, 21_282_122), (100, 21_328_292), (200, 21_379_592)],
        mmacs: 1160.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| resnet::build(&resnet::ResNetConfig::resnet34().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnet50", "resnet.rs", "CIFAR ResNet50", CT,
        &[(10, 23_520_842), (100, 23_705_252), (200, 23_910_152)],
        mmacs: 1300.0, measured: &[(16, per_image(0.178))], stand_in: None, tiny: None,
        |o, vb| resnet::build(&resnet::ResNetConfig::resnet50().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnet101", "resnet.rs", "CIFAR ResNet101", CT,
        &[(10, 42_512_970), (100, 42_697_380), (200, 42_902_280)],
        mmacs: 2520.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| resnet::build(&resnet::ResNetConfig::resnet101().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnet152", "resnet.rs", "CIFAR ResNet152", CT,
        &[(10, 58_156_618), (100, 58_341_028), (200, 58_545_928)],
        mmacs: 3740.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| resnet::build(&resnet::ResNetConfig::resnet152().thinned(o.width_divisor), o.num_classes, vb)),
    row!("mobilenet_v2", "mobilenet_v2.rs", "CIFAR MobileNetV2 (1x1 pad-1 stem)", CT,
        &[(10, 2_254_090), (100, 2_369_380), (200, 2_497_480)],
        mmacs: 100.0, measured: &[(16, per_image(0.071)), (8, per_image(0.108))], stand_in: None, tiny: None,
        |o, vb| mobilenet_v2::build(&mobilenet_v2::MobileNetV2Config::paper().thinned(o.width_divisor), o.num_classes, vb)),
    row!("shufflenet_v2", "shufflenet_v2.rs", "CIFAR ShuffleNetV2 1x", CT,
        &[(10, 1_268_646), (100, 1_360_896), (200, 1_463_396)],
        mmacs: 45.0, measured: &[(16, per_image(0.063)), (8, per_image(0.051))], stand_in: None, tiny: None,
        |o, vb| shufflenet_v2::build(&shufflenet_v2::ShuffleNetV2Config::paper().thinned(o.width_divisor), o.num_classes, vb)),
    row!("densenet121", "densenet.rs", "CIFAR DenseNet121 (k = 32)", CT,
        &[(10, 6_956_298), (100, 7_048_548), (200, 7_151_048)],
        mmacs: 900.0, measured: &[(16, per_image(0.207))], stand_in: None, tiny: None,
        |o, vb| densenet::build(&densenet::DenseNetConfig::densenet121().thinned(o.width_divisor), o.num_classes, vb)),
    row!("googlenet", "googlenet.rs", "CIFAR GoogLeNet (BN eps = n5x5 quirk)", CT,
        &[(10, 6_166_250), (100, 6_258_500), (200, 6_361_000)],
        mmacs: 1530.0, measured: &[(16, per_image(0.259))], stand_in: None, tiny: None,
        |o, vb| googlenet::build(&googlenet::GoogLeNetConfig::paper().thinned(o.width_divisor), o.num_classes, o.dropout_seed, vb)),
    row!("resnext29", "resnext.rs", "CIFAR ResNeXt29-8x64d", CT,
        &[(10, 34_426_698), (100, 34_518_948), (200, 34_621_448)],
        mmacs: 5400.0, measured: &[(16, per_image(0.776))], stand_in: None, tiny: None,
        |o, vb| resnext::build(&resnext::ResNeXtConfig::resnext29_8x64d().thinned(o.width_divisor), o.num_classes, vb)),
    row!("wrn_28_10", "wrn.rs", "Wide ResNet 28-10", CT,
        &[(10, 36_479_194), (100, 36_536_884), (200, 36_600_984)],
        mmacs: 5250.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| wrn::build(&wrn::WrnConfig::new(28, 10).thinned(o.width_divisor), o.num_classes, o.dropout_seed, vb)),
    row!("wrn_40_2", "wrn.rs", "Wide ResNet 40-2", CT, &[],
        mmacs: 328.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| wrn::build(&wrn::WrnConfig::new(40, 2).thinned(o.width_divisor), o.num_classes, o.dropout_seed, vb)),
    row!("wrn_16_2", "wrn.rs", "Wide ResNet 16-2", CT, &[],
        mmacs: 101.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| wrn::build(&wrn::WrnConfig::new(16, 2).thinned(o.width_divisor), o.num_classes, o.dropout_seed, vb)),
    row!("alexnet", "alexnet.rs", "CIFAR AlexNet (no BN, no FC layers)", CT,
        &[(10, 2_472_266), (100, 2_495_396), (200, 2_521_096)],
        mmacs: 15.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| alexnet::build(&alexnet::AlexNetConfig::paper().thinned(o.width_divisor), o.num_classes, vb)),
    row!("vgg19", "vgg.rs", "torchvision vgg19_bn on CIFAR input", CT,
        &[(10, 139_622_218), (100, 139_990_948), (200, 140_400_648)],
        mmacs: 518.0, measured: &[], stand_in: None, tiny: None,
        |o, vb| vgg::build(&vgg::VggConfig::vgg19_bn().thinned(o.width_divisor), o.num_classes, o.dropout_seed, vb)),
    row!("resnet18_imagenet", "tv_resnet.rs", "torchvision resnet18", IN,
        &[(1000, 11_689_512)],
        mmacs: 1820.0, measured: &[], stand_in: Some("resnet18"), tiny: None,
        |o, vb| tv_resnet::build(&tv_resnet::TvResNetConfig::resnet18().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnet50_imagenet", "tv_resnet.rs", "torchvision resnet50", IN,
        &[(1000, 25_557_032)],
        mmacs: 4100.0, measured: &[], stand_in: Some("resnet50"), tiny: None,
        |o, vb| tv_resnet::build(&tv_resnet::TvResNetConfig::resnet50().thinned(o.width_divisor), o.num_classes, vb)),
    row!("resnext101_32x8d_imagenet", "tv_resnet.rs", "torchvision resnext101_32x8d", IN,
        &[(1000, 88_791_336)],
        mmacs: 16500.0, measured: &[], stand_in: Some("resnext29"), tiny: None,
        |o, vb| tv_resnet::build(&tv_resnet::TvResNetConfig::resnext101_32x8d().thinned(o.width_divisor), o.num_classes, vb)),
    row!("densenet121_imagenet", "tv_densenet.rs", "torchvision densenet121", IN,
        &[(1000, 7_978_856)],
        mmacs: 2870.0, measured: &[], stand_in: Some("densenet121"), tiny: None,
        |o, vb| tv_densenet::build(&tv_densenet::TvDenseNetConfig::densenet121().thinned(o.width_divisor), o.num_classes, vb)),
];

/// Registry names, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|m| m.name)
}

/// Registry names, in table order, collected.
pub fn list() -> Vec<&'static str> {
    names().collect()
}

/// The registry row of `name`.
pub fn entry(name: &str) -> Result<&'static ModelEntry> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ZooError::UnknownModel {
            name: name.to_string(),
            known: list().join(", "),
        })
}

fn check(e: &ModelEntry, opts: &ModelOptions) -> Result<()> {
    if !e.inputs.contains(&opts.input) {
        return Err(ZooError::UnsupportedInput {
            name: e.name.to_string(),
            input: opts.input.side(),
            supported: e
                .inputs
                .iter()
                .map(|i| i.side().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if opts.num_classes == 0 {
        return Err(ZooError::InvalidConfig {
            model: e.name.to_string(),
            reason: "number of classes 0 must be positive".to_string(),
        });
    }
    if opts.width_divisor == 0 {
        return Err(ZooError::InvalidConfig {
            model: e.name.to_string(),
            reason: "width divisor 0 must be at least 1 (1 = the paper's width)".to_string(),
        });
    }
    Ok(())
}

/// Builds model `name` for `num_classes` classes and `input` with the default
/// dropout seed.
///
/// With a `VarBuilder` over a `VarMap`, the parameters are fresh `Var`s
/// initialised as the reference code does; over loaded tensors, nothing is a
/// `Var` and a forward builds no autograd graph.
pub fn build(
    name: &str,
    num_classes: usize,
    input: InputSize,
    vb: VarBuilder,
) -> Result<Box<dyn Model>> {
    build_with(name, &ModelOptions::new(num_classes, input), vb)
}

/// Builds model `name` with explicit [`ModelOptions`].
pub fn build_with(name: &str, opts: &ModelOptions, vb: VarBuilder) -> Result<Box<dyn Model>> {
    entry(name)?.build(opts, vb)
}

/// A backend that records the requested names and shapes and returns
/// zero-stride views of one scalar, so no weight is allocated.
/// Names and shapes requested so far.
type Shapes = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

struct Recorder(Shapes);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("shape recorder lock poisoned".into()))?
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape recorder cannot provide `{name}` without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Every tensor of model `name` (parameters and BatchNorm running statistics)
/// with its shape, in construction order, under PyTorch state-dict names
/// (without `num_batches_tracked`). Allocates no weights.
pub fn param_shapes(name: &str, opts: &ModelOptions) -> Result<Vec<(String, Vec<usize>)>> {
    let e = entry(name)?;
    check(e, opts)?;
    record_shapes(|vb| (e.build)(opts, vb))
}

/// Runs a model constructor over a recording `VarBuilder` and returns every
/// tensor it requested with its shape (for models built outside the registry,
/// e.g. reduced configurations of a family). Allocates no weights.
pub fn record_shapes<T>(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let rec = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(rec.clone())), DType::F32, Device::Cpu);
    drop(build(vb)?);
    let shapes = rec
        .lock()
        .map_err(|_| candle_core::Error::Msg("shape recorder lock poisoned".into()))?
        .clone();
    Ok(shapes)
}

/// True for BatchNorm running statistics (buffers, not learnable).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with("num_batches_tracked")
}

/// The learnable variables of a model built over `varmap` (its BatchNorm
/// running statistics left out), sorted by name: what an optimizer updates.
pub fn trainable_vars(varmap: &tfkd_core::init::SeededVarMap) -> Vec<(String, candle_core::Var)> {
    varmap.named_vars().into_iter().filter(|(name, _)| !is_buffer(name)).collect()
}

/// Number of learnable parameters of model `name` (BatchNorm running
/// statistics excluded, as `sum(p.numel() for p in model.parameters())`).
pub fn param_count(name: &str, num_classes: usize, input: InputSize) -> Result<u64> {
    param_count_with(name, &ModelOptions::new(num_classes, input))
}

/// Number of learnable parameters of model `name` built with explicit
/// [`ModelOptions`] (e.g. a [`ModelOptions::width_divisor`] above 1).
pub fn param_count_with(name: &str, opts: &ModelOptions) -> Result<u64> {
    let shapes = param_shapes(name, opts)?;
    Ok(shapes
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum())
}

/// Width divisors of the table of [`width_markdown`].
pub const DOC_WIDTH_DIVISORS: [usize; 5] = [1, 2, 4, 8, 16];

/// `n` with thousands separators.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            o.push(',');
        }
        o.push(c);
    }
    o
}

/// The learnable-parameter counts of every model at the width divisors
/// [`DOC_WIDTH_DIVISORS`] as a Markdown table (the second table of
/// `docs/MODELS.md`), at K = 100 and the model's first input size (K = 1000
/// for ImageNet models).
pub fn width_markdown() -> Result<String> {
    let mut out = String::from("| name | input | K |");
    for d in DOC_WIDTH_DIVISORS {
        out.push_str(&format!(" d={d} |"));
    }
    out.push_str("\n|---|---|---:|");
    for _ in DOC_WIDTH_DIVISORS {
        out.push_str("---:|");
    }
    out.push('\n');
    for e in MODELS {
        let input = e.inputs[0];
        let k = if input == InputSize::ImageNet {
            1000
        } else {
            100
        };
        out.push_str(&format!("| `{}` | {} | {k} |", e.name, input.side()));
        for d in DOC_WIDTH_DIVISORS {
            let opts = ModelOptions::new(k, input).with_width_divisor(d);
            out.push_str(&format!(
                " {} |",
                thousands(param_count_with(e.name, &opts)?)
            ));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The registry as a Markdown table (the one in `docs/MODELS.md`): every
/// model and input size with its learnable-parameter counts at K = 10, 100,
/// 200 (and 1000 for ImageNet) and the reference count it must equal.
pub fn models_markdown() -> Result<String> {
    let mut out = String::from(
        "| name | file | input | K=10 | K=100 | K=200 | K=1000 | reference (official code / torchvision) |\n\
         |---|---|---|---:|---:|---:|---:|---|\n",
    );
    let fmt = thousands;
    for e in MODELS {
        for &input in e.inputs {
            let mut cells = Vec::new();
            for k in [10, 100, 200, 1000] {
                if k == 1000 && input != InputSize::ImageNet {
                    cells.push("".to_string());
                } else {
                    cells.push(fmt(param_count(e.name, k, input)?));
                }
            }
            let reference = if input == InputSize::Tiny {
                e.tiny_params_note
                    .unwrap_or("same as cifar (global pooling adds no parameter)")
                    .to_string()
            } else if e.reference_params.is_empty() {
                "PyTorch reference only".to_string()
            } else {
                e.reference_params
                    .iter()
                    .map(|(k, n)| format!("K={k}: {}", fmt(*n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} | {} | {} | {} | {} |\n",
                e.name,
                e.family,
                input.side(),
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                reference
            ));
        }
    }
    Ok(out)
}
