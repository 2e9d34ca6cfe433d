//! The serde form of the strategies, as written in an experiment config.

use crate::strategies::{Baseline, Distillation, LabelSmoothingStrategy, VirtualTeacher};
use crate::{DistillError, Method, Result, Strategy};
use std::path::PathBuf;
use tfkd_core::loss::{KdLoss, KlReduction, LabelSmoothing, SmoothingForm, VirtualTeacherForm, VirtualTeacherLoss};
use tfkd_zoo::pretrained::TorchvisionArch;

/// Which network teaches, and from which weights.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Registry name of the teacher architecture; `None` means the student's.
    #[serde(default)]
    pub model: Option<String>,
    /// Where its weights come from.
    #[serde(default)]
    pub source: TeacherSource,
    /// The teacher's channel divisor (`model.width_divisor`); `None` means
    /// the student's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width_divisor: Option<usize>,
}

/// Where a teacher's weights come from.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum TeacherSource {
    /// The best checkpoint of the teacher architecture's own baseline run on
    /// the same data and seed; the runner trains it first when it is missing.
    #[default]
    Baseline,
    /// The checkpoint saved after this epoch (1-based) of that baseline run:
    /// a poorly-trained teacher for De-KD.
    BaselineEpoch(usize),
    /// A checkpoint file: `.safetensors`, `.pth` or `.pth.tar` (PyTorch
    /// state dicts load unchanged).
    Checkpoint(PathBuf),
    /// torchvision's published ImageNet weights of this architecture, as the
    /// official ImageNet script's `models.<arch>(pretrained=True)`:
    /// `{ torchvision = "resnet50" }`. The teacher is the zoo's model of that
    /// architecture ([`TorchvisionArch::model`]) with 1000 classes at full
    /// width; the runner takes the file from torch.hub's cache, downloading
    /// and verifying it when missing.
    Torchvision(TorchvisionArch),
}

impl std::fmt::Display for TeacherSource {
    /// As written in a config: `"baseline"`, `{ baseline-epoch = 3 }`,
    /// `{ checkpoint = "best.pth.tar" }`, `{ torchvision = "resnet50" }`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Baseline => f.write_str("\"baseline\""),
            Self::BaselineEpoch(e) => write!(f, "{{ baseline-epoch = {e} }}"),
            Self::Checkpoint(path) => write!(f, "{{ checkpoint = {:?} }}", path.display().to_string()),
            Self::Torchvision(arch) => write!(f, "{{ torchvision = \"{arch}\" }}"),
        }
    }
}

impl TeacherSpec {
    /// The spec with a torchvision source resolved: `model` becomes the
    /// architecture's zoo model and `width_divisor` 1, the only network the
    /// published weights fit. Another `model` or divisor is
    /// [`DistillError::InvalidField`]. Other sources pass unchanged.
    fn resolved(self, method: Method) -> Result<Self> {
        let TeacherSource::Torchvision(arch) = self.source else { return Ok(self) };
        let invalid = |field: &'static str, value: String, expected: String| DistillError::InvalidField {
            method,
            field,
            value,
            expected,
        };
        if let Some(model) = self.model.as_deref().filter(|&m| m != arch.model()) {
            return Err(invalid(
                "teacher.model",
                format!("{model:?}"),
                format!("torchvision's {arch} weights load into \"{}\": name it, or leave `model` out", arch.model()),
            ));
        }
        if let Some(d) = self.width_divisor.filter(|&d| d != 1) {
            return Err(invalid(
                "teacher.width_divisor",
                d.to_string(),
                format!("torchvision's {arch} weights are the full-width network: 1, or leave it out"),
            ));
        }
        Ok(Self { model: Some(arch.model().to_string()), width_divisor: Some(1), ..self })
    }
}

fn default_epsilon() -> f64 {
    0.1
}
fn default_correct_prob() -> f64 {
    0.99
}
fn one() -> f64 {
    1.0
}

/// A strategy with its hyper-parameters: the `[strategy]` table of a config.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Cross-entropy only. (A struct variant, so that a stray field such as
    /// `alpha` under `method = "baseline"` is an error, not silently ignored.)
    Baseline {},
    /// Label smoothing (`loss_label_smoothing`; ε = 0.1 as coded).
    Lsr {
        /// Smoothing mass ε.
        #[serde(default = "default_epsilon")]
        epsilon: f64,
        /// `official` (ε/(K−1) off the true class) or `uniform` (ε/K, Eq. 1).
        #[serde(default)]
        form: SmoothingForm,
    },
    /// Normal KD: a stronger trained teacher (`loss_kd`).
    Kd {
        /// Soft-term weight α.
        alpha: f64,
        /// Temperature T.
        temperature: f64,
        /// The teacher.
        teacher: TeacherSpec,
        /// KL reduction (the code: `elementwise_mean`).
        #[serde(default)]
        reduction: KlReduction,
    },
    /// Reversed KD: a weaker trained network teaches (`loss_kd`).
    ReKd {
        /// Soft-term weight α.
        alpha: f64,
        /// Temperature T.
        temperature: f64,
        /// The (weaker) teacher.
        teacher: TeacherSpec,
        /// KL reduction.
        #[serde(default)]
        reduction: KlReduction,
    },
    /// Defective KD: an early checkpoint of a baseline run teaches (`loss_kd`).
    DeKd {
        /// Soft-term weight α.
        alpha: f64,
        /// Temperature T.
        temperature: f64,
        /// The poorly-trained teacher (usually `source = { baseline-epoch = E }`).
        teacher: TeacherSpec,
        /// KL reduction.
        #[serde(default)]
        reduction: KlReduction,
    },
    /// Tf-KD_self: the student's own trained baseline teaches (`loss_kd_self`).
    TfKdSelf {
        /// Soft-term weight α.
        alpha: f64,
        /// Temperature T.
        temperature: f64,
        /// Multiplier m on the soft term.
        #[serde(default = "one")]
        multiplier: f64,
        /// KL reduction.
        #[serde(default)]
        reduction: KlReduction,
        /// Where the self-teacher's weights come from (default: the
        /// student architecture's baseline run, trained first if missing).
        #[serde(default)]
        source: TeacherSource,
    },
    /// Tf-KD_reg: the virtual teacher (`loss_kd_regularization`).
    TfKdReg {
        /// Soft-term weight α (`reg_alpha`).
        alpha: f64,
        /// Temperature T (`reg_temperature`).
        temperature: f64,
        /// Multiplier m on the soft term.
        #[serde(default = "one")]
        multiplier: f64,
        /// Probability a of the true class.
        #[serde(default = "default_correct_prob")]
        correct_prob: f64,
        /// `as_coded` (default: student at T = 1, no T²) or `paper_eq9`
        /// (student softened by T as Eq. 9 is written).
        #[serde(default)]
        form: VirtualTeacherForm,
        /// With `paper_eq9`: also scale the soft term by T².
        #[serde(default)]
        temperature_squared: bool,
        /// KL reduction.
        #[serde(default)]
        reduction: KlReduction,
    },
}

impl StrategyConfig {
    /// The method (the `method` key: `baseline`, `lsr`, `kd`, `re-kd`,
    /// `de-kd`, `tf-kd-self`, `tf-kd-reg`).
    pub fn method(&self) -> Method {
        match self {
            Self::Baseline {} => Method::Baseline,
            Self::Lsr { .. } => Method::Lsr,
            Self::Kd { .. } => Method::Kd,
            Self::ReKd { .. } => Method::ReKd,
            Self::DeKd { .. } => Method::DeKd,
            Self::TfKdSelf { .. } => Method::TfKdSelf,
            Self::TfKdReg { .. } => Method::TfKdReg,
        }
    }

    /// Validates the hyper-parameters and builds the strategy. A torchvision
    /// teacher source is resolved to its network: the built strategy's
    /// [`Strategy::teacher`] names the architecture's zoo model at width 1.
    pub fn build(&self) -> Result<Box<dyn Strategy>> {
        let method = self.method();
        let kd = |alpha: f64, temperature: f64, multiplier: f64, reduction: KdReduction, teacher: TeacherSpec| {
            let loss = KdLoss::self_training(alpha, temperature, multiplier).with_reduction(reduction);
            loss.validate()?;
            let teacher = teacher.resolved(method)?;
            Ok(Box::new(Distillation { method, loss, teacher }) as Box<dyn Strategy>)
        };
        match self.clone() {
            Self::Baseline {} => Ok(Box::new(Baseline)),
            Self::Lsr { epsilon, form } => {
                let loss = LabelSmoothing { epsilon, form };
                loss.validate()?;
                Ok(Box::new(LabelSmoothingStrategy(loss)))
            }
            Self::Kd { alpha, temperature, teacher, reduction }
            | Self::ReKd { alpha, temperature, teacher, reduction } => {
                kd(alpha, temperature, 1.0, reduction, teacher)
            }
            Self::DeKd { alpha, temperature, teacher, reduction } => {
                if matches!(teacher.source, TeacherSource::Baseline | TeacherSource::Torchvision(_)) {
                    return Err(DistillError::InvalidField {
                        method,
                        field: "teacher.source",
                        value: teacher.source.to_string(),
                        expected: "de-kd needs a poorly-trained teacher: `baseline-epoch = E` or a checkpoint".into(),
                    });
                }
                kd(alpha, temperature, 1.0, reduction, teacher)
            }
            Self::TfKdSelf { alpha, temperature, multiplier, reduction, source } => {
                kd(alpha, temperature, multiplier, reduction, TeacherSpec { model: None, source, width_divisor: None })
            }
            Self::TfKdReg { alpha, temperature, multiplier, correct_prob, form, temperature_squared, reduction } => {
                if form == VirtualTeacherForm::AsCoded && temperature_squared {
                    return Err(DistillError::InvalidField {
                        method,
                        field: "temperature_squared",
                        value: "true".into(),
                        expected: "only applies to form = \"paper_eq9\"".into(),
                    });
                }
                let loss =
                    VirtualTeacherLoss { alpha, temperature, multiplier, correct_prob, reduction, form, temperature_squared };
                // a ∈ (1/K, 1] is checked per batch, when K is known.
                loss.validate(2)?;
                Ok(Box::new(VirtualTeacher(loss)))
            }
        }
    }
}

type KdReduction = KlReduction;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_parses_and_builds() {
        let configs = [
            r#"method = "baseline""#,
            r#"method = "lsr""#,
            r#"method = "lsr"
               epsilon = 0.2
               form = "uniform""#,
            r#"method = "kd"
               alpha = 0.95
               temperature = 20.0
               teacher = { model = "resnet18" }"#,
            r#"method = "re-kd"
               alpha = 0.6
               temperature = 20.0
               teacher = { model = "mobilenet_v2", source = { checkpoint = "mv2.pth.tar" } }"#,
            r#"method = "de-kd"
               alpha = 0.95
               temperature = 20.0
               teacher = { model = "resnet18", source = { baseline-epoch = 1 } }"#,
            r#"method = "tf-kd-self"
               alpha = 0.9
               temperature = 20.0
               multiplier = 100.0"#,
            r#"method = "tf-kd-reg"
               alpha = 0.1
               temperature = 20.0
               multiplier = 100.0"#,
            r#"method = "tf-kd-reg"
               alpha = 0.1
               temperature = 20.0
               form = "paper_eq9"
               temperature_squared = true
               reduction = "batch_mean""#,
        ];
        let mut methods = Vec::new();
        for text in configs {
            let config: StrategyConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let strategy = config.build().unwrap();
            assert_eq!(strategy.name(), config.method().as_str());
            methods.push(config.method());
            // Round trip through TOML keeps the value.
            let again: StrategyConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
            assert_eq!(again, config);
        }
        methods.dedup();
        assert_eq!(methods, ["baseline", "lsr", "kd", "re-kd", "de-kd", "tf-kd-self", "tf-kd-reg"]);
        assert_eq!(methods, Method::ALL);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = toml::from_str::<StrategyConfig>("method = \"kd\"\nalpha = 0.9\ntemperature = 4.0").unwrap_err();
        assert!(err.to_string().contains("teacher"), "{err}");
        let err = toml::from_str::<StrategyConfig>("method = \"distill\"").unwrap_err();
        assert!(err.to_string().contains("distill"), "{err}");
        let err = toml::from_str::<StrategyConfig>("method = \"baseline\"\nalpha = 0.9").unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
        let err = toml::from_str::<StrategyConfig>("method = \"lsr\"\neps = 0.1").unwrap_err();
        assert!(err.to_string().contains("eps"), "{err}");
        let config: StrategyConfig = toml::from_str(
            "method = \"tf-kd-self\"\nalpha = 1.5\ntemperature = 4.0",
        )
        .unwrap();
        assert!(config.build().unwrap_err().to_string().contains("alpha = 1.5"));
        let config: StrategyConfig =
            toml::from_str("method = \"de-kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"resnet18\" }")
                .unwrap();
        assert!(config.build().unwrap_err().to_string().contains("baseline-epoch"));
    }

    #[test]
    fn torchvision_source_round_trips_and_resolves_its_network() {
        let text = r#"method = "kd"
            alpha = 0.9
            temperature = 4.0
            teacher = { source = { torchvision = "resnet50" } }"#;
        let config: StrategyConfig = toml::from_str(text).unwrap();
        let StrategyConfig::Kd { teacher, .. } = &config else { panic!("{config:?}") };
        assert_eq!(teacher.source, TeacherSource::Torchvision(TorchvisionArch::ResNet50));
        assert_eq!(teacher.source.to_string(), r#"{ torchvision = "resnet50" }"#);
        // Written back in the same form, and read again to the same value.
        let written = toml::to_string(&config).unwrap();
        assert!(written.contains(r#"torchvision = "resnet50""#), "{written}");
        assert_eq!(toml::from_str::<StrategyConfig>(&written).unwrap(), config);
        // The built strategy's teacher is the zoo's network of the architecture, at full width.
        let strategy = config.build().unwrap();
        let spec = strategy.teacher().unwrap();
        assert_eq!((spec.model.as_deref(), spec.width_divisor), (Some("resnet50_imagenet"), Some(1)));
        // Every architecture parses, and Tf-KD_self takes the source too.
        for arch in TorchvisionArch::ALL {
            let text = format!("method = \"tf-kd-self\"\nalpha = 0.9\ntemperature = 4.0\nsource = {{ torchvision = \"{arch}\" }}");
            let config: StrategyConfig = toml::from_str(&text).unwrap();
            assert_eq!(config.build().unwrap().teacher().unwrap().model.as_deref(), Some(arch.model()));
        }
    }

    #[test]
    fn torchvision_source_errors_name_the_field() {
        // An unknown architecture names itself and the known ones.
        let err = toml::from_str::<StrategyConfig>(
            "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { source = { torchvision = \"resnet34\" } }",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown torchvision architecture `resnet34`"), "{err}");
        assert!(err.contains("resnet18, resnet50, densenet121, resnext101_32x8d"), "{err}");
        let build = |teacher: &str, method: &str| {
            let text = format!("method = \"{method}\"\nalpha = 0.9\ntemperature = 4.0\nteacher = {teacher}");
            toml::from_str::<StrategyConfig>(&text).unwrap().build().map(|_| ()).unwrap_err().to_string()
        };
        assert_eq!(
            build(r#"{ model = "resnet18_imagenet", source = { torchvision = "resnet50" } }"#, "kd"),
            "kd: invalid teacher.model = \"resnet18_imagenet\": torchvision's resnet50 weights load into \"resnet50_imagenet\": \
             name it, or leave `model` out"
        );
        assert!(build(r#"{ source = { torchvision = "resnet50" }, width_divisor = 4 }"#, "re-kd")
            .starts_with("re-kd: invalid teacher.width_divisor = 4"));
        // The matching model and divisor 1 are accepted.
        let text = "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"densenet121_imagenet\", \
                    source = { torchvision = \"densenet121\" }, width_divisor = 1 }";
        assert!(toml::from_str::<StrategyConfig>(text).unwrap().build().is_ok());
        // De-KD needs a poorly-trained teacher, which published weights are not.
        assert_eq!(
            build(r#"{ source = { torchvision = "resnet18" } }"#, "de-kd"),
            "de-kd: invalid teacher.source = { torchvision = \"resnet18\" }: de-kd needs a poorly-trained teacher: \
             `baseline-epoch = E` or a checkpoint"
        );
    }

    #[test]
    fn distill_errors_name_method_field_and_value() {
        let config: StrategyConfig =
            toml::from_str("method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\ntemperature_squared = true").unwrap();
        let err = config.build().unwrap_err();
        assert!(matches!(err, DistillError::InvalidField { method: Method::TfKdReg, field: "temperature_squared", .. }));
        assert_eq!(
            err.to_string(),
            "tf-kd-reg: invalid temperature_squared = true: only applies to form = \"paper_eq9\""
        );
        let config: StrategyConfig =
            toml::from_str("method = \"de-kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"resnet18\" }")
                .unwrap();
        let err = config.build().unwrap_err();
        assert!(err.to_string().starts_with("de-kd: invalid teacher.source = \"baseline\""), "{err}");
        // Loss validation errors keep tfkd-core's message.
        let config: StrategyConfig = toml::from_str("method = \"lsr\"\nepsilon = 1.5").unwrap();
        assert!(matches!(config.build().unwrap_err(), DistillError::Loss(_)));
        // The spellings of `form` parse as before.
        for (text, form) in [("as_coded", VirtualTeacherForm::AsCoded), ("paper_eq9", VirtualTeacherForm::PaperEq9)] {
            let config: StrategyConfig =
                toml::from_str(&format!("method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\nform = \"{text}\""))
                    .unwrap();
            assert!(matches!(config, StrategyConfig::TfKdReg { form: f, .. } if f == form));
        }
    }
}
