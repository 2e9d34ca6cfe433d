//! The paper's 11 tables as data: `fixtures/tables/table-<n>.toml`, one file
//! per table, every printed number one [`Cell`], with the training recipe and
//! hyper-parameters that reproduce it (see `fixtures/tables/README.md`); and
//! the project's own tables beyond the paper ([`EXTRA_TABLES`], e.g.
//! `fixtures/tables/ablation.toml`), whose cells have no printed number.
//!
//! A cell is typed by the types that run it: its `method` is
//! `tfkd_distill::Method`, its `dataset` the runner's [`DatasetKind`], its
//! networks names of the zoo's registry (`tfkd_zoo::entry`), its
//! hyper-parameters typed fields, and its `strategy` overrides a
//! [`StrategyOverrides`] whose fields have the runner's own types
//! (`SmoothingForm`, `VirtualTeacherForm`, `KlReduction`).
//! [`Cell::strategy_config`] builds the runner's [`StrategyConfig`] from them
//! and applies the overrides field by field; validation rejects a field the
//! method does not have, naming the file and the field.
//!
//! [`load`] parses and validates a file ([`TableId::all`] lists them); the
//! tests of `tables/checks.rs` check the data against the printed arithmetic,
//! listing every known inconsistency of the paper (docs/PAPER.md §1.6) exactly.

use anyhow::{bail, ensure, Context, Result};
use serde::de::{IgnoredAny, IntoDeserializer};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use tfkd_core::loss::{KlReduction, SmoothingForm};
use tfkd_distill::{Method, StrategyConfig, TeacherSource, TeacherSpec, VirtualTeacherForm};
use tfkd_runner::config::OptimizerKind;
use tfkd_zoo::pretrained::TorchvisionArch;
use tfkd_runner::data::DatasetKind;

#[cfg(test)]
mod checks;

/// Number of tables in the paper's main text.
pub const TABLE_COUNT: u32 = 11;

/// The project's tables beyond the paper: `fixtures/tables/<name>.toml`, run
/// as `cargo xtask reproduce-table <name>` and included in `all`.
pub const EXTRA_TABLES: &[&str] = &["ablation", "reg-form-tiny", "reg-form-imagenet"];

/// Which table: one of the paper's (a number) or one of [`EXTRA_TABLES`] (a name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum TableId {
    /// Table N of the paper, 1 to [`TABLE_COUNT`].
    Paper(u32),
    /// A table of this project, with no printed numbers.
    Extra(String),
}

impl TableId {
    /// Every table: the paper's 1 to 11, then the extra ones.
    pub fn all() -> Vec<TableId> {
        (1..=TABLE_COUNT)
            .map(TableId::Paper)
            .chain(EXTRA_TABLES.iter().map(|n| TableId::Extra(n.to_string())))
            .collect()
    }

    /// The table a command-line word names: `1`..`11` or an extra table's name.
    pub fn parse(word: &str) -> Result<TableId> {
        if EXTRA_TABLES.contains(&word) {
            return Ok(TableId::Extra(word.to_string()));
        }
        let n: u32 = word.parse().with_context(|| {
            format!("table {word:?} is not a number (1-{TABLE_COUNT}), one of {EXTRA_TABLES:?} or `all`")
        })?;
        ensure!(
            (1..=TABLE_COUNT).contains(&n),
            "table {n} does not exist: the paper has tables 1 to {TABLE_COUNT}"
        );
        Ok(TableId::Paper(n))
    }

    /// The table number, for the paper's tables.
    #[cfg(test)]
    pub fn number(&self) -> Option<u32> {
        match self {
            TableId::Paper(n) => Some(*n),
            TableId::Extra(_) => None,
        }
    }

    /// Whether the paper prints this table.
    pub fn is_paper(&self) -> bool {
        matches!(self, TableId::Paper(_))
    }

    /// File stem of the table's data and of its report: `table-9`, `ablation`.
    pub fn stem(&self) -> String {
        match self {
            TableId::Paper(n) => format!("table-{n}"),
            TableId::Extra(name) => name.clone(),
        }
    }

    /// Heading: `Table 9`, `Ablation`.
    pub fn heading(&self) -> String {
        match self {
            TableId::Paper(n) => format!("Table {n}"),
            TableId::Extra(name) => {
                let mut c = name.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
            }
        }
    }
}

/// As written on the command line: `9`, `ablation`.
impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableId::Paper(n) => write!(f, "{n}"),
            TableId::Extra(name) => f.write_str(name),
        }
    }
}

/// The datasets of the paper's tables: what a table's (or a Table 4 cell's)
/// `dataset` may name, spelled as the runner's [`DatasetKind`].
pub const PAPER_DATASETS: [DatasetKind; 4] =
    [DatasetKind::Cifar10, DatasetKind::Cifar100, DatasetKind::TinyImagenet, DatasetKind::Imagenet];

/// Where a number was found: the paper text and the official repository's table image
/// agreeing (`T+I`), or the converted text only (`T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Source {
    /// Text and the official repo's image agree digit by digit.
    #[serde(rename = "T+I")]
    TextAndImage,
    /// Converted paper text only.
    #[serde(rename = "T")]
    Text,
}

/// How to print a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Layout {
    /// Row labels (in order of first appearance in `cells`) × `columns`.
    #[serde(rename = "rows")]
    Rows,
}

/// Whether a cell of method `m` names a separate `teacher` network (KD,
/// Re-KD, De-KD): a rule of the cell schema.
pub fn names_teacher(m: Method) -> bool {
    matches!(m, Method::Kd | Method::ReKd | Method::DeKd)
}

/// Whether a cell of method `m` has a KL term with `alpha`, `temperature`
/// and `multiplier` (every method but baseline and lsr): a rule of the cell
/// schema.
pub fn has_kl_term(m: Method) -> bool {
    !matches!(m, Method::Baseline | Method::Lsr)
}

/// The `form` a cell overrides: label smoothing's (lsr) or the virtual
/// teacher's (tf-kd-reg), spelled as the runner's config spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormOverride {
    /// `official` | `uniform`: the [`StrategyConfig::Lsr`] form.
    Smoothing(SmoothingForm),
    /// `as_coded` | `paper_eq9`: the [`StrategyConfig::TfKdReg`] form.
    VirtualTeacher(VirtualTeacherForm),
}

/// Read by the two types' own serde names; a name of neither is an error
/// quoting both types' expectations.
impl<'de> Deserialize<'de> for FormOverride {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        type E = serde::de::value::Error;
        let name = String::deserialize(d)?;
        let smoothing = SmoothingForm::deserialize(IntoDeserializer::<E>::into_deserializer(name.as_str()));
        let virtual_teacher = VirtualTeacherForm::deserialize(IntoDeserializer::<E>::into_deserializer(name.as_str()));
        match (smoothing, virtual_teacher) {
            (Ok(f), _) => Ok(FormOverride::Smoothing(f)),
            (_, Ok(f)) => Ok(FormOverride::VirtualTeacher(f)),
            (Err(lsr), Err(reg)) => Err(serde::de::Error::custom(format!(
                "`form` = {name:?} is neither an lsr form ({lsr}) nor a tf-kd-reg form ({reg})"
            ))),
        }
    }
}

/// The config spelling of a unit enum value (`paper_eq9`, `batch_mean`):
/// its type's own serde name, so that no name is written twice.
pub fn config_name<T: serde::Serialize + fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{value:?}"),
    }
}

impl fmt::Display for FormOverride {
    /// The config spelling (`paper_eq9`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormOverride::Smoothing(form) => f.write_str(&config_name(form)),
            FormOverride::VirtualTeacher(form) => f.write_str(&config_name(form)),
        }
    }
}

/// The fields of a run's `[strategy]` that the cell schema has no field for,
/// typed as the runner's [`StrategyConfig`] types them: a cell's `strategy =
/// { form = "paper_eq9", temperature_squared = true, reduction = "batch_mean" }`.
/// Any other key is kept by name, for validation to reject naming it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StrategyOverrides {
    /// lsr: [`SmoothingForm`]; tf-kd-reg: [`VirtualTeacherForm`].
    pub form: Option<FormOverride>,
    /// tf-kd-reg with `paper_eq9`: also scale the soft term by T².
    pub temperature_squared: Option<bool>,
    /// The KL methods (kd, re-kd, de-kd, tf-kd-self, tf-kd-reg).
    pub reduction: Option<KlReduction>,
    /// Keys that are none of the above (rejected by validation).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

impl StrategyOverrides {
    /// The override fields that `config`'s method has: those of its
    /// [`StrategyConfig`] variant that no cell field carries.
    pub fn fields_of(config: &StrategyConfig) -> &'static [&'static str] {
        match config {
            StrategyConfig::Baseline {} => &[],
            StrategyConfig::Lsr { .. } => &["form"],
            StrategyConfig::Kd { .. }
            | StrategyConfig::ReKd { .. }
            | StrategyConfig::DeKd { .. }
            | StrategyConfig::TfKdSelf { .. } => &["reduction"],
            StrategyConfig::TfKdReg { .. } => &["form", "temperature_squared", "reduction"],
        }
    }

    /// The keys this override sets, known ones first.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        [
            ("form", self.form.is_some()),
            ("temperature_squared", self.temperature_squared.is_some()),
            ("reduction", self.reduction.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .chain(self.unknown.keys().map(String::as_str))
    }

    /// Sets the overridden fields of `config`; an error names a field that
    /// its method lacks (or a form of another method).
    pub fn apply(&self, config: &mut StrategyConfig) -> Result<()> {
        let method = config.method();
        let allowed = Self::fields_of(config);
        for key in self.keys() {
            ensure!(
                allowed.contains(&key),
                "`strategy.{key}` is not a field a {method} cell may override (allowed: {allowed:?}; \
                 the hyper-parameters with a cell field are set there)"
            );
        }
        let wrong_form = |form: FormOverride| anyhow::anyhow!("`strategy.form` = {form} is not a form of {method}");
        match config {
            StrategyConfig::Baseline {} => {}
            StrategyConfig::Lsr { form, .. } => {
                if let Some(f) = self.form {
                    let FormOverride::Smoothing(f) = f else { return Err(wrong_form(f)) };
                    *form = f;
                }
            }
            StrategyConfig::Kd { reduction, .. }
            | StrategyConfig::ReKd { reduction, .. }
            | StrategyConfig::DeKd { reduction, .. }
            | StrategyConfig::TfKdSelf { reduction, .. } => {
                *reduction = self.reduction.unwrap_or(*reduction);
            }
            StrategyConfig::TfKdReg { form, temperature_squared, reduction, .. } => {
                if let Some(f) = self.form {
                    let FormOverride::VirtualTeacher(f) = f else { return Err(wrong_form(f)) };
                    *form = f;
                }
                *temperature_squared = self.temperature_squared.unwrap_or(*temperature_squared);
                *reduction = self.reduction.unwrap_or(*reduction);
            }
        }
        Ok(())
    }
}

impl fmt::Display for StrategyOverrides {
    /// As the TOML file spells it: `{ form = "paper_eq9", reduction = "batch_mean" }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = Vec::new();
        if let Some(form) = self.form {
            fields.push(format!("form = \"{form}\""));
        }
        if let Some(t2) = self.temperature_squared {
            fields.push(format!("temperature_squared = {t2}"));
        }
        if let Some(r) = self.reduction {
            fields.push(format!("reduction = \"{}\"", config_name(&r)));
        }
        fields.extend(self.unknown.keys().map(|k| format!("{k} = …")));
        write!(f, "{{ {} }}", fields.join(", "))
    }
}

/// The training recipe shared by every cell of a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Total training epochs (200 on CIFAR/Tiny-ImageNet, 90 on ImageNet).
    pub epochs: u32,
    /// Linear per-iteration warm-up epochs (1 on the CIFAR/Tiny code path, 0 on ImageNet).
    pub warmup_epochs: u32,
    /// Epochs (0-based) at whose start the lr is multiplied by `gamma`.
    pub milestones: Vec<u32>,
    /// Step-decay factor (0.2 as coded for CIFAR/Tiny-ImageNet, 0.1 on ImageNet).
    pub gamma: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay, on all parameters.
    pub weight_decay: f64,
}

/// One printed number of a table (or one printed gain, for the gain-only
/// "Normal KD \[T\]" columns of Tables 5 and 6), with how to reproduce it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    /// Row label as printed (Table 4 prefixes the dataset).
    pub row: String,
    /// Column label, one of the table's `columns`.
    pub column: String,
    /// Training method (`tfkd_distill::Method`, the runner's).
    pub method: Method,
    /// The network being trained (registry name); for Re-KD the big model.
    pub student: String,
    /// The teaching network (registry name), for KD, Re-KD and De-KD only.
    pub teacher: Option<String>,
    /// De-KD only: the poorly-trained teacher is its baseline run after this many epochs.
    pub teacher_epoch: Option<u32>,
    /// Where the teacher's weights come from: a baseline run of tfkd's own
    /// (default), or torchvision's published ImageNet weights, as the
    /// official ImageNet script loads them (`pretrained=True`).
    #[serde(default)]
    pub teacher_weights: TeacherWeights,
    /// Baseline only: the baseline evaluated after this many epochs (Table 4's Pt-Teacher).
    pub epochs_trained: Option<u32>,
    /// Overrides the table's dataset for this cell (Table 4's Tiny-ImageNet rows).
    pub dataset: Option<DatasetKind>,
    /// Overrides the table's source for this cell.
    pub source: Option<Source>,
    /// The printed top-1 accuracy in %; absent for gain-only cells.
    pub paper: Option<f64>,
    /// The printed standard deviation over 3 runs, when printed.
    pub paper_std: Option<f64>,
    /// The printed gain in parentheses, copied as printed even when the arithmetic is off.
    pub paper_gain: Option<f64>,
    /// Weight of the KL term (`alpha`, or `reg_alpha` for Tf-KD_reg).
    pub alpha: Option<f64>,
    /// Temperature (`temperature`, or `reg_temperature` for Tf-KD_reg).
    pub temperature: Option<f64>,
    /// Scalar on the KL term (1.0 for the plain KD loss, which has none).
    pub multiplier: Option<f64>,
    /// Label-smoothing ε, LSR only.
    pub epsilon: Option<f64>,
    /// Probability a of the correct class of the virtual teacher, Tf-KD_reg only.
    pub correct_prob: Option<f64>,
    /// Batch size.
    pub batch_size: u32,
    /// `learning_rate` of the config, before the `batch_size / lr_reference_batch` scaling.
    pub lr: f64,
    /// The lr scaling reference: lr_used = lr · batch_size / lr_reference_batch (128; 256 on ImageNet).
    #[serde(default = "default_lr_reference_batch")]
    pub lr_reference_batch: u32,
    /// The optimizer: `sgd` (default: the table's recipe, momentum and
    /// weight decay) or `adam`, which the official `cnn` and `cnn_distill`
    /// configs use: `torch.optim.Adam` with PyTorch's defaults and no weight
    /// decay, under the same warm-up and schedule.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// The official config directory (under the official repo) when one shipped.
    pub official_config: Option<String>,
    /// Fields of the run's `[strategy]` that the cell schema has no field for,
    /// typed and spelled as the runner's config has them
    /// ([`StrategyOverrides::fields_of`] lists which a method has).
    pub strategy: Option<StrategyOverrides>,
    /// False only when our zoo lacks a model the cell needs (the note says which).
    #[serde(default = "default_runnable")]
    pub runnable: bool,
    /// Why a recipe was chosen, copy errors of the shipped config, inconsistencies.
    pub note: Option<String>,
}

/// Where a cell's teacher comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherWeights {
    /// A baseline run of the teacher network, trained by tfkd first.
    #[default]
    OwnBaseline,
    /// torchvision's published ImageNet weights of the teacher network
    /// (`tfkd_distill::TeacherSource::Torchvision`).
    Torchvision,
}

impl Cell {
    /// The teacher network: the named teacher, or the student itself for
    /// Tf-KD_self; `None` for methods without a teacher.
    pub fn teacher_network(&self) -> Option<&str> {
        match self.method {
            Method::TfKdSelf => Some(&self.student),
            Method::Kd | Method::ReKd | Method::DeKd => self.teacher.as_deref(),
            _ => None,
        }
    }

    /// The published weights the cell's teacher loads, when it names them.
    pub fn published_teacher(&self) -> Option<TorchvisionArch> {
        match self.teacher_weights {
            TeacherWeights::OwnBaseline => None,
            TeacherWeights::Torchvision => {
                let net = self.teacher_network()?;
                TorchvisionArch::ALL.iter().copied().find(|a| a.model() == net)
            }
        }
    }
}

fn default_lr_reference_batch() -> u32 {
    128
}

fn default_runnable() -> bool {
    true
}

impl Cell {
    /// Every model the cell needs (student, then teacher).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.student.as_str()).chain(self.teacher.as_deref())
    }

    /// The run's strategy config: the method with the cell's hyper-parameters
    /// (the official code's arithmetic: elementwise-mean KL, Tf-KD_reg as
    /// coded, ε/(K−1) LSR), then the cell's `strategy` overrides, validated
    /// by building the strategy. `teacher` is the teacher of KD, Re-KD and
    /// De-KD; Tf-KD_self takes its `source`; the other methods ignore it.
    pub fn strategy_config(&self, teacher: TeacherSpec) -> Result<StrategyConfig> {
        let f = |v: Option<f64>, what: &str| v.with_context(|| format!("field `{what}` is missing"));
        // The runner's defaults are the official code's arithmetic.
        let reduction = KlReduction::default();
        let mut config = match self.method {
            Method::Baseline => StrategyConfig::Baseline {},
            Method::Lsr => StrategyConfig::Lsr { epsilon: f(self.epsilon, "epsilon")?, form: SmoothingForm::default() },
            Method::Kd | Method::ReKd | Method::DeKd => {
                let (alpha, temperature) = (f(self.alpha, "alpha")?, f(self.temperature, "temperature")?);
                match self.method {
                    Method::Kd => StrategyConfig::Kd { alpha, temperature, teacher, reduction },
                    Method::ReKd => StrategyConfig::ReKd { alpha, temperature, teacher, reduction },
                    _ => StrategyConfig::DeKd { alpha, temperature, teacher, reduction },
                }
            }
            Method::TfKdSelf => StrategyConfig::TfKdSelf {
                alpha: f(self.alpha, "alpha")?,
                temperature: f(self.temperature, "temperature")?,
                multiplier: f(self.multiplier, "multiplier")?,
                reduction,
                source: teacher.source,
            },
            Method::TfKdReg => StrategyConfig::TfKdReg {
                alpha: f(self.alpha, "alpha")?,
                temperature: f(self.temperature, "temperature")?,
                multiplier: f(self.multiplier, "multiplier")?,
                correct_prob: f(self.correct_prob, "correct_prob")?,
                form: VirtualTeacherForm::default(),
                temperature_squared: false,
                reduction,
            },
        };
        let method = self.method.as_str();
        if let Some(overrides) = &self.strategy {
            overrides.apply(&mut config)?;
            config
                .build()
                .with_context(|| format!("`strategy` = {overrides} gives an invalid {method} loss"))?;
        } else {
            config.build().with_context(|| format!("the {method} hyper-parameters are invalid"))?;
        }
        Ok(config)
    }
}

/// One table of the paper, or of this project ([`EXTRA_TABLES`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Table number in the paper, 1 to 11, or an extra table's name.
    pub table: TableId,
    /// Short title.
    pub title: String,
    /// The caption, exactly as printed (an extra table: its question).
    pub caption: String,
    /// Extra tables only: what each column is and why the question matters,
    /// printed at the head of the report.
    pub about: Option<String>,
    /// Dataset of every cell without its own `dataset`: one of [`PAPER_DATASETS`].
    pub dataset: DatasetKind,
    /// Source of every cell without its own `source` (the paper's tables only).
    pub source: Option<Source>,
    /// How to print it.
    pub layout: Layout,
    /// Column labels as printed, in order (the row-label column excluded).
    pub columns: Vec<String>,
    /// Free text: inconsistencies touching this table, recipe choices.
    pub notes: Vec<String>,
    /// The shared training recipe.
    pub recipe: Recipe,
    /// Every printed number, row-major.
    pub cells: Vec<Cell>,
}

impl Table {
    /// Row labels in order of first appearance.
    #[cfg(test)]
    pub fn rows(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.cells
            .iter()
            .map(|c| c.row.as_str())
            .filter(|r| seen.insert(*r))
            .collect()
    }

    /// The cell at `row` × `column`.
    pub fn cell(&self, row: &str, column: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.row == row && c.column == column)
    }

    /// The dataset of a cell (its own, else the table's).
    pub fn dataset_of(&self, cell: &Cell) -> DatasetKind {
        cell.dataset.unwrap_or(self.dataset)
    }


    /// The fully-trained baseline a cell's printed gain is measured against:
    /// the baseline of the same row, model and dataset.
    pub fn baseline_of(&self, cell: &Cell) -> Option<&Cell> {
        self.cells.iter().find(|b| {
            b.row == cell.row
                && b.method == Method::Baseline
                && b.epochs_trained.is_none()
                && b.student == cell.student
                && self.dataset_of(b) == self.dataset_of(cell)
        })
    }

    /// Checks the cross-field rules of the schema; errors name the file and field.
    pub fn validate(&self, file: &str) -> Result<()> {
        match &self.table {
            TableId::Paper(n) => {
                ensure!((1..=TABLE_COUNT).contains(n), "{file}: `table` = {n} is not 1..={TABLE_COUNT}");
                ensure!(self.source.is_some(), "{file}: `source` is missing");
                ensure!(self.about.is_none(), "{file}: `about` is for extra tables; a paper table has its caption");
            }
            TableId::Extra(name) => {
                ensure!(
                    EXTRA_TABLES.contains(&name.as_str()),
                    "{file}: `table` = {name:?} is neither 1..={TABLE_COUNT} nor one of {EXTRA_TABLES:?}"
                );
                ensure!(self.source.is_none(), "{file}: `source` is for the paper's tables (this one is not printed)");
                ensure!(
                    self.about.as_deref().is_some_and(|a| !a.trim().is_empty()),
                    "{file}: `about` is missing (an extra table says what its columns are and why)"
                );
            }
        }
        check_dataset(self.dataset).with_context(|| format!("{file}: `dataset`"))?;
        ensure!(!self.columns.is_empty(), "{file}: `columns` is empty");
        let mut cols = HashSet::new();
        for c in &self.columns {
            ensure!(
                cols.insert(c.as_str()),
                "{file}: `columns` lists {c:?} twice"
            );
        }
        let r = &self.recipe;
        ensure!(
            r.epochs > 0 && r.warmup_epochs < r.epochs,
            "{file}: `recipe.epochs`/`recipe.warmup_epochs` out of range"
        );
        ensure!(
            r.milestones.windows(2).all(|w| w[0] < w[1])
                && r.milestones.iter().all(|&m| m < r.epochs),
            "{file}: `recipe.milestones` must increase and lie below `recipe.epochs`"
        );
        ensure!(
            r.gamma > 0.0 && r.gamma < 1.0,
            "{file}: `recipe.gamma` must be in (0, 1)"
        );
        let mut places = HashSet::new();
        for (i, cell) in self.cells.iter().enumerate() {
            let at = format!(
                "{file}: cells[{i}] (row {:?}, column {:?})",
                cell.row, cell.column
            );
            self.validate_cell(cell).with_context(|| at.clone())?;
            ensure!(
                places.insert((cell.row.as_str(), cell.column.as_str())),
                "{at}: a second cell at this place"
            );
        }
        Ok(())
    }

    fn validate_cell(&self, c: &Cell) -> Result<()> {
        let m = c.method;
        let name = m.as_str();
        ensure!(
            self.columns.contains(&c.column),
            "`column` {:?} is not one of `columns` {:?}",
            c.column,
            self.columns
        );
        if self.table.is_paper() {
            ensure!(
                c.paper.is_some() || c.paper_gain.is_some(),
                "neither `paper` nor `paper_gain` is set"
            );
        } else {
            for (field, set) in [
                ("paper", c.paper.is_some()),
                ("paper_std", c.paper_std.is_some()),
                ("paper_gain", c.paper_gain.is_some()),
                ("source", c.source.is_some()),
            ] {
                ensure!(!set, "`{field}` is set, but the paper does not print this table");
            }
        }
        ensure!(
            c.paper_std.is_none() || c.paper.is_some(),
            "`paper_std` without `paper`"
        );
        ensure!(
            names_teacher(m) == c.teacher.is_some(),
            "`teacher` must be set exactly for kd, re-kd and de-kd (method {name})"
        );
        ensure!(
            (m == Method::DeKd) == c.teacher_epoch.is_some(),
            "`teacher_epoch` must be set exactly for de-kd (method {name})"
        );
        if c.teacher_weights == TeacherWeights::Torchvision {
            ensure!(
                matches!(m, Method::Kd | Method::ReKd | Method::TfKdSelf),
                "`teacher_weights` = \"torchvision\" is for kd, re-kd and tf-kd-self (method {name}: published weights are no poorly-trained teacher)"
            );
            ensure!(
                c.published_teacher().is_some(),
                "`teacher_weights` = \"torchvision\": torchvision publishes no weights for {:?}; it does for {}",
                c.teacher_network().unwrap_or_default(),
                TorchvisionArch::ALL.iter().map(|a| a.model()).collect::<Vec<_>>().join(", ")
            );
        }
        ensure!(
            c.epochs_trained.is_none() || m == Method::Baseline,
            "`epochs_trained` is for baseline cells only"
        );
        for (field, v) in [
            ("alpha", c.alpha),
            ("temperature", c.temperature),
            ("multiplier", c.multiplier),
        ] {
            ensure!(
                has_kl_term(m) == v.is_some(),
                "`{field}` must be set exactly for the KL methods (method {name})"
            );
        }
        ensure!(
            (m == Method::Lsr) == c.epsilon.is_some(),
            "`epsilon` must be set exactly for lsr (method {name})"
        );
        ensure!(
            (m == Method::TfKdReg) == c.correct_prob.is_some(),
            "`correct_prob` must be set exactly for tf-kd-reg (method {name})"
        );
        if let Some(a) = c.alpha {
            ensure!((0.0..=1.0).contains(&a), "`alpha` = {a} is not in [0, 1]");
        }
        ensure!(
            c.batch_size > 0 && c.lr > 0.0 && c.lr_reference_batch > 0,
            "`batch_size`, `lr` and `lr_reference_batch` must be positive"
        );
        if let Some(d) = c.dataset {
            check_dataset(d).context("`dataset`")?;
        }
        // The networks: rows of the zoo's registry, of the dataset's kind.
        let imagenet = self.dataset_of(c) == DatasetKind::Imagenet;
        for model in c.models() {
            match tfkd_zoo::entry(model) {
                Ok(network) => ensure!(
                    network.is_imagenet() == imagenet,
                    "model {model:?} does not fit dataset {}",
                    self.dataset_of(c)
                ),
                Err(e) => ensure!(
                    !c.runnable,
                    "{e} (set `runnable = false` and say why in `note`)"
                ),
            }
        }
        // The overrides: known fields of this method with valid values.
        let teacher = TeacherSpec {
            model: c.teacher.clone(),
            source: match c.teacher_epoch {
                Some(e) => TeacherSource::BaselineEpoch(e as usize),
                None => TeacherSource::Baseline,
            },
            width_divisor: None,
        };
        c.strategy_config(teacher)?;
        if !c.runnable {
            ensure!(
                c.models().any(|m| tfkd_zoo::entry(m).is_err()),
                "`runnable = false` but every model is in the registry"
            );
            ensure!(
                c.note.is_some(),
                "`runnable = false` needs a `note` saying why"
            );
        }
        Ok(())
    }
}

/// Rejects a dataset the paper's tables do not use (the runner's small
/// shared sets stand in for them only through a profile).
fn check_dataset(d: DatasetKind) -> Result<()> {
    ensure!(
        PAPER_DATASETS.contains(&d),
        "{d} is not a dataset of the paper's tables ({})",
        PAPER_DATASETS.map(DatasetKind::name).join(", ")
    );
    Ok(())
}

/// Path of `fixtures/tables/table-<n>.toml`.
#[cfg(test)]
pub fn table_path(n: u32) -> PathBuf {
    path_of(&TableId::Paper(n))
}

/// Path of a table's file: `fixtures/tables/table-<n>.toml` or `<name>.toml`.
pub fn path_of(id: &TableId) -> PathBuf {
    crate::project_root()
        .join("fixtures")
        .join("tables")
        .join(format!("{}.toml", id.stem()))
}

/// Parses and validates one table file's text; `file` names it in errors.
pub fn parse_table(text: &str, file: &str) -> Result<Table> {
    let table: Table =
        toml::from_str(text).with_context(|| format!("{file}: does not match the table schema"))?;
    table.validate(file)?;
    Ok(table)
}

/// Loads and validates `fixtures/tables/table-<n>.toml`.
#[cfg(test)]
pub fn load_table(n: u32) -> Result<Table> {
    load(&TableId::Paper(n))
}

/// Loads and validates the file of table `id`.
pub fn load(id: &TableId) -> Result<Table> {
    let file = format!("fixtures/tables/{}.toml", id.stem());
    let text = std::fs::read_to_string(path_of(id)).with_context(|| format!("cannot read {file}"))?;
    let table = parse_table(&text, &file)?;
    if &table.table != id {
        bail!("{file}: `table` = {} but the file is table {id}", table.table);
    }
    Ok(table)
}

/// Loads the paper's tables, 1 to 11.
#[cfg(test)]
pub fn load_all() -> Result<Vec<Table>> {
    (1..=TABLE_COUNT).map(load_table).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_teachers_are_only_where_torchvision_publishes_them() {
        let text = std::fs::read_to_string(table_path(8)).unwrap();
        // A network torchvision publishes no weights for.
        let bad = text.replacen("teacher = \"densenet121_imagenet\"", "teacher = \"resnet18_imagenet_nope\"", 1);
        let err = format!("{:#}", parse_table(&bad, "table-8.toml").unwrap_err());
        assert!(err.contains("table-8.toml") && err.contains("teacher"), "{err}");
        let text4 = std::fs::read_to_string(table_path(4)).unwrap();
        let bad = text4.replacen("method = \"de-kd\"\n", "method = \"de-kd\"\nteacher_weights = \"torchvision\"\n", 1);
        let err = format!("{:#}", parse_table(&bad, "table-4.toml").unwrap_err());
        assert!(err.contains("table-4.toml") && err.contains("teacher_weights") && err.contains("de-kd"), "{err}");
        let bad = text4.replacen("method = \"baseline\"\n", "method = \"baseline\"\nteacher_weights = \"torchvision\"\n", 1);
        let err = format!("{:#}", parse_table(&bad, "table-4.toml").unwrap_err());
        assert!(err.contains("teacher_weights"), "{err}");
        let t = parse_table(&text, "table-8.toml").unwrap();
        let kd = t.cells.iter().find(|c| c.method == Method::Kd).unwrap();
        assert_eq!(kd.published_teacher(), Some(TorchvisionArch::DenseNet121));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let mut text = std::fs::read_to_string(table_path(1)).unwrap();
        let bad = text.replacen("column = \"Normal KD (T→S)\"", "column = \"Nope\"", 1);
        let err = format!("{:#}", parse_table(&bad, "table-1.toml").unwrap_err());
        assert!(
            err.contains("table-1.toml") && err.contains("cells[2]") && err.contains("`column`"),
            "{err}"
        );
        text.push_str("\nbogus = 1\n");
        let err = format!("{:#}", parse_table(&text, "table-1.toml").unwrap_err());
        assert!(
            err.contains("table-1.toml") && err.contains("bogus"),
            "{err}"
        );
    }
    fn ablation_text() -> String {
        std::fs::read_to_string(path_of(&TableId::Extra("ablation".into()))).unwrap()
    }

    #[test]
    fn an_unknown_override_field_is_rejected_naming_the_file_and_the_field() {
        let text = ablation_text();
        let bad = text.replacen(
            "strategy = { reduction = \"batch_mean\" }",
            "strategy = { reduction = \"batch_mean\", bogus_field = 1 }",
            1,
        );
        assert_ne!(bad, text);
        let err = format!("{:#}", parse_table(&bad, "fixtures/tables/ablation.toml").unwrap_err());
        assert!(
            err.contains("fixtures/tables/ablation.toml") && err.contains("`strategy.bogus_field`") && err.contains("cells[3]"),
            "{err}"
        );
        // A field of the runner's config that has a cell field is set there, not overridden.
        let bad = text.replacen("strategy = { reduction = \"batch_mean\" }", "strategy = { alpha = 0.5 }", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("`strategy.alpha`"), "{err}");
        // A field the method does not have.
        let bad = text.replacen("epsilon = 0.1\n", "epsilon = 0.1\nstrategy = { reduction = \"batch_mean\" }\n", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("`strategy.reduction`") && err.contains("lsr"), "{err}");
        // A bad value names the field and the value.
        let bad = text.replacen("form = \"paper_eq9\"", "form = \"eq9\"", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("eq9") && err.contains("form"), "{err}");
        // A combination the loss rejects (T² only exists for Eq. 9).
        let bad = text.replacen(
            "strategy = { reduction = \"batch_mean\" }",
            "strategy = { temperature_squared = true }",
            1,
        );
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("temperature_squared"), "{err}");
    }

    #[test]
    fn overrides_are_typed_by_the_method_they_apply_to() {
        let text = ablation_text();
        let spec = TeacherSpec { model: None, source: TeacherSource::Baseline, width_divisor: None };
        // An lsr form applies to an lsr cell...
        let good = text.replacen("epsilon = 0.1\n", "epsilon = 0.1\nstrategy = { form = \"uniform\" }\n", 1);
        let t = parse_table(&good, "ablation.toml").unwrap();
        let lsr = t.cell("ResNet18", "LSR").unwrap().strategy_config(spec.clone()).unwrap();
        assert_eq!(lsr, StrategyConfig::Lsr { epsilon: 0.1, form: SmoothingForm::Uniform });
        // ...a tf-kd-reg form does not.
        let bad = text.replacen("epsilon = 0.1\n", "epsilon = 0.1\nstrategy = { form = \"paper_eq9\" }\n", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(
            err.contains("ablation.toml") && err.contains("`strategy.form`") && err.contains("paper_eq9") && err.contains("lsr"),
            "{err}"
        );
        // A bad value quotes what each method accepts.
        let bad = text.replacen("form = \"paper_eq9\"", "form = \"eq9\"", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("official") && err.contains("as_coded"), "{err}");
        // The overrides show as the file spells them.
        let eq9 = load(&TableId::Extra("ablation".into())).unwrap();
        let shown = eq9.cell("ResNet18", "Tf-KD_reg Eq. 9 + T²").unwrap().strategy.as_ref().unwrap().to_string();
        assert_eq!(shown, "{ form = \"paper_eq9\", temperature_squared = true, reduction = \"batch_mean\" }");
    }

    #[test]
    fn a_table_names_a_dataset_of_the_paper() {
        let text = ablation_text();
        let bad = text.replacen("dataset = \"cifar100\"", "dataset = \"digits\"", 1);
        assert_ne!(bad, text);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("`dataset`") && err.contains("digits"), "{err}");
        let bad = text.replacen("dataset = \"cifar100\"", "dataset = \"cifar1000\"", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("cifar1000"), "{err}");
    }

    #[test]
    fn printed_numbers_belong_to_the_papers_tables_only() {
        let text = ablation_text();
        let bad = text.replacen("epsilon = 0.1\n", "epsilon = 0.1\npaper = 77.26\n", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("`paper`"), "{err}");
        let bad = text.replacen("table = \"ablation\"", "table = \"nope\"", 1);
        let err = format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err());
        assert!(err.contains("\"nope\""), "{err}");
        let bad = text.replacen("layout = \"rows\"", "layout = \"rows\"\nsource = \"T\"", 1);
        assert!(format!("{:#}", parse_table(&bad, "ablation.toml").unwrap_err()).contains("`source`"));
        let start = text.find("about = \"\"\"").unwrap();
        let end = start + 11 + text[start + 11..].find("\"\"\"").unwrap() + 3;
        let no_about = format!("{}{}", &text[..start], &text[end..]);
        let err = format!("{:#}", parse_table(&no_about, "ablation.toml").unwrap_err());
        assert!(err.contains("ablation.toml") && err.contains("`about`"), "{err}");
    }

    #[test]
    fn table_ids_parse_from_the_command_line() {
        assert_eq!(TableId::parse("9").unwrap(), TableId::Paper(9));
        assert_eq!(TableId::parse("ablation").unwrap().stem(), "ablation");
        assert_eq!(TableId::Paper(9).stem(), "table-9");
        assert_eq!(TableId::Extra("ablation".into()).heading(), "Ablation");
        assert!(TableId::parse("12").unwrap_err().to_string().contains("table 12"));
        assert!(TableId::parse("abl").unwrap_err().to_string().contains("abl"));
    }

}
