//! The paper's 11 tables as data: `fixtures/tables/table-<n>.toml`, one file
//! per table, every printed number one [`Cell`], with the training recipe and
//! hyper-parameters that reproduce it (see `fixtures/tables/README.md`); and
//! the project's own tables beyond the paper ([`EXTRA_TABLES`], e.g.
//! `fixtures/tables/ablation.toml`), whose cells have no printed number.
//!
//! A cell may override fields of the run's strategy config that the cell
//! schema has no field for (`strategy = { form = "paper_eq9", reduction =
//! "batch_mean" }`); [`Cell::strategy_config`] applies them, and validation
//! rejects a field the method does not have, naming the file and the field.
//!
//! [`load`] parses and validates a file ([`TableId::all`] lists them); the
//! tests below check them against the printed arithmetic, listing every known
//! inconsistency of the paper (paper.md §1.6) exactly.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use tfkd_core::loss::{KlReduction, SmoothingForm};
use tfkd_distill::{RegForm, StrategyConfig, TeacherSource, TeacherSpec};

/// Number of tables in the paper's main text.
pub const TABLE_COUNT: u32 = 11;

/// The project's tables beyond the paper: `fixtures/tables/<name>.toml`, run
/// as `cargo xtask reproduce-table <name>` and included in `all`.
pub const EXTRA_TABLES: &[&str] = &["ablation"];

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

/// Model names of the tfkd-zoo registry (`crates/tfkd-zoo/src/registry.rs`,
/// `MODELS`), copied here because xtask does not depend on the zoo.
pub const MODEL_NAMES: &[&str] = &[
    "cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenet_v2",
    "shufflenet_v2",
    "densenet121",
    "googlenet",
    "resnext29",
    "wrn_28_10",
    "wrn_40_2",
    "wrn_16_2",
    "resnet18_imagenet",
    "resnet50_imagenet",
    "resnext101_32x8d_imagenet",
    "densenet121_imagenet",
];

/// The dataset of a table (or of one cell of Table 4, which mixes two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Dataset {
    /// CIFAR-10, 10 classes, 32×32.
    #[serde(rename = "cifar10")]
    Cifar10,
    /// CIFAR-100, 100 classes, 32×32.
    #[serde(rename = "cifar100")]
    Cifar100,
    /// Tiny-ImageNet, 200 classes, 64×64.
    #[serde(rename = "tiny-imagenet")]
    TinyImagenet,
    /// ImageNet (ILSVRC-2012), 1000 classes, 224×224.
    #[serde(rename = "imagenet")]
    Imagenet,
}

impl Dataset {
    /// The name as written in the TOML files.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::TinyImagenet => "tiny-imagenet",
            Dataset::Imagenet => "imagenet",
        }
    }

}

/// Where paper.md found a number: the paper text and the repo's table image
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

/// The training method of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain cross-entropy training.
    Baseline,
    /// Label smoothing (the code's variant: 1−ε on the true class, ε/(K−1) elsewhere).
    Lsr,
    /// Normal KD: a stronger teacher teaches the student.
    Kd,
    /// Reversed KD: the small model (teacher) teaches the big one (student).
    ReKd,
    /// Defective KD: a poorly-trained teacher (an early epoch of its baseline run).
    DeKd,
    /// Teacher-free self-training: the teacher is the student's own trained baseline.
    TfKdSelf,
    /// Teacher-free regularization: a hand-made virtual teacher of correct probability a.
    TfKdReg,
}

impl Method {
    /// Every method, in schema order.
    #[cfg(test)]
    pub const ALL: [Method; 7] = [
        Method::Baseline,
        Method::Lsr,
        Method::Kd,
        Method::ReKd,
        Method::DeKd,
        Method::TfKdSelf,
        Method::TfKdReg,
    ];

    /// The name as written in the TOML files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Lsr => "lsr",
            Method::Kd => "kd",
            Method::ReKd => "re-kd",
            Method::DeKd => "de-kd",
            Method::TfKdSelf => "tf-kd-self",
            Method::TfKdReg => "tf-kd-reg",
        }
    }

    /// Whether the cell names a separate `teacher` network (KD, Re-KD, De-KD).
    pub fn has_teacher(self) -> bool {
        matches!(self, Method::Kd | Method::ReKd | Method::DeKd)
    }

    /// Whether the loss has a KL term with `alpha`, `temperature` and `multiplier`.
    pub fn has_kl_term(self) -> bool {
        !matches!(self, Method::Baseline | Method::Lsr)
    }

    /// The strategy fields a cell of this method may set under `strategy`:
    /// those of the runner's `StrategyConfig` that no cell field carries.
    pub fn override_fields(self) -> &'static [&'static str] {
        match self {
            Method::Baseline => &[],
            Method::Lsr => &["form"],
            Method::Kd | Method::ReKd | Method::DeKd | Method::TfKdSelf => &["reduction"],
            Method::TfKdReg => &["form", "temperature_squared", "reduction"],
        }
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
    /// Training method.
    pub method: Method,
    /// The network being trained (registry name); for Re-KD the big model.
    pub student: String,
    /// The teaching network (registry name), for KD, Re-KD and De-KD only.
    pub teacher: Option<String>,
    /// De-KD only: the poorly-trained teacher is its baseline run after this many epochs.
    pub teacher_epoch: Option<u32>,
    /// Baseline only: the baseline evaluated after this many epochs (Table 4's Pt-Teacher).
    pub epochs_trained: Option<u32>,
    /// Overrides the table's dataset for this cell (Table 4's Tiny-ImageNet rows).
    pub dataset: Option<Dataset>,
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
    /// The official config directory (under the official repo) when one shipped.
    pub official_config: Option<String>,
    /// Fields of the run's `[strategy]` that the cell schema has no field for,
    /// as the runner's config spells them (see [`Method::override_fields`]):
    /// e.g. `{ form = "paper_eq9", temperature_squared = true, reduction = "batch_mean" }`.
    pub strategy: Option<toml::Table>,
    /// False only when our zoo lacks a model the cell needs (the note says which).
    #[serde(default = "default_runnable")]
    pub runnable: bool,
    /// Why a recipe was chosen, copy errors of the shipped config, inconsistencies.
    pub note: Option<String>,
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
        let reduction = KlReduction::ElementwiseMean;
        let base = match self.method {
            Method::Baseline => StrategyConfig::Baseline {},
            Method::Lsr => StrategyConfig::Lsr { epsilon: f(self.epsilon, "epsilon")?, form: SmoothingForm::Official },
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
                form: RegForm::AsCoded,
                temperature_squared: false,
                reduction,
            },
        };
        let Some(overrides) = &self.strategy else {
            base.build().with_context(|| format!("the {} hyper-parameters are invalid", self.method.name()))?;
            return Ok(base);
        };
        let allowed = self.method.override_fields();
        for key in overrides.keys() {
            ensure!(
                allowed.contains(&key.as_str()),
                "`strategy.{key}` is not a field a {} cell may override (allowed: {allowed:?}; \
                 the hyper-parameters with a cell field are set there)",
                self.method.name()
            );
        }
        let toml::Value::Table(mut merged) =
            toml::Value::try_from(&base).context("the strategy config does not serialise")?
        else {
            bail!("the strategy config does not serialise to a table");
        };
        merged.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        let shown = toml::Value::Table(overrides.clone());
        let config: StrategyConfig = toml::Value::Table(merged)
            .try_into()
            .with_context(|| format!("`strategy` = {shown} does not fit method {}", self.method.name()))?;
        config
            .build()
            .with_context(|| format!("`strategy` = {shown} gives an invalid {} loss", self.method.name()))?;
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
    /// Dataset of every cell without its own `dataset`.
    pub dataset: Dataset,
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
    pub fn dataset_of(&self, cell: &Cell) -> Dataset {
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
        let name = m.name();
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
            m.has_teacher() == c.teacher.is_some(),
            "`teacher` must be set exactly for kd, re-kd and de-kd (method {name})"
        );
        ensure!(
            (m == Method::DeKd) == c.teacher_epoch.is_some(),
            "`teacher_epoch` must be set exactly for de-kd (method {name})"
        );
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
                m.has_kl_term() == v.is_some(),
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
        let imagenet = self.dataset_of(c) == Dataset::Imagenet;
        for model in c.models() {
            let known = MODEL_NAMES.contains(&model);
            if c.runnable {
                ensure!(known, "model {model:?} is not in the registry (set `runnable = false` and say why in `note`)");
            }
            if known {
                ensure!(
                    model.ends_with("_imagenet") == imagenet,
                    "model {model:?} does not fit dataset {}",
                    self.dataset_of(c).name()
                );
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
                c.models().any(|m| !MODEL_NAMES.contains(&m)),
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
    use std::collections::{BTreeMap, BTreeSet};

    /// Cells per table as printed: rows × value columns.
    const CELL_COUNTS: [usize; 11] = [32, 16, 20, 36, 18, 12, 8, 3, 16, 16, 12];

    /// The printed gains that differ from paper − baseline by more than 0.01
    /// (paper.md §1.6): (table, row, column).
    const KNOWN_GAIN_MISMATCHES: &[(u32, &str, &str)] = &[
        (2, "MobileNetV2 / Plain CNN", "Re-KD (S→T)"),
        (4, "CIFAR100, ResNet50 / MobileNetV2", "De-KD"),
        (4, "CIFAR100, ResNet50 / ResNet18", "De-KD"),
        (9, "GoogLeNet", "Normal KD [Teacher]"),
        (10, "ShuffleNetV2", "+ LSR"),
        (10, "DenseNet121", "Tf-KD_reg"),
        (10, "DenseNet121", "Normal KD [Teacher]"),
        (11, "ResNet50", "+ LSR"),
    ];

    /// Experiments printed in several tables with different numbers:
    /// (dataset, method, student, teacher or "-").
    const KNOWN_CROSS_TABLE_MISMATCHES: &[(&str, &str, &str, &str)] = &[
        // 78.72 in Table 5 vs 78.15 in Table 9 (paper.md §1.6).
        ("cifar100", "baseline", "googlenet", "-"),
        // +1.19 in Table 5 vs 77.19 (+1.32) in Table 9 (paper.md §1.6).
        ("cifar100", "kd", "resnet18", "resnet50"),
        // +1.39 in Table 5 vs 78.84 (+0.99) in Table 9 (not listed in paper.md).
        ("cifar100", "kd", "googlenet", "resnext29"),
        // 56.70 (+1.64) in Tables 3 and 6 vs 56.53 (+1.47) in Table 10 (paper.md §1.6).
        ("tiny-imagenet", "kd", "mobilenet_v2", "resnet18"),
        // +0.16 in Table 6 vs 68.44 (+0.26) in Table 10 (not listed in paper.md).
        ("tiny-imagenet", "kd", "densenet121", "resnext29"),
    ];

    fn all() -> Vec<Table> {
        load_all().unwrap()
    }

    /// A paper table's number.
    fn n(t: &Table) -> u32 {
        t.table.number().expect("a paper table")
    }

    #[test]
    fn all_tables_parse_and_validate() {
        let tables = all();
        assert_eq!(tables.len(), 11);
        for (i, t) in tables.iter().enumerate() {
            assert_eq!(n(t) as usize, i + 1);
            assert!(!t.caption.is_empty() && !t.title.is_empty());
        }
    }

    #[test]
    fn cell_counts_match_the_printed_tables() {
        for t in all() {
            assert_eq!(
                t.cells.len(),
                CELL_COUNTS[n(&t) as usize - 1],
                "table {}",
                t.table
            );
            // Every printed table is a full grid: each row has every column.
            assert_eq!(
                t.cells.len(),
                t.rows().len() * t.columns.len(),
                "table {} is not a full grid",
                t.table
            );
        }
        assert_eq!(CELL_COUNTS.iter().sum::<usize>(), 189);
    }

    #[test]
    fn cells_use_only_declared_columns() {
        for t in all() {
            for c in &t.cells {
                assert!(
                    t.columns.contains(&c.column),
                    "table {}: {:?}",
                    t.table,
                    c.column
                );
            }
            for col in &t.columns {
                assert!(
                    t.cells.iter().any(|c| &c.column == col),
                    "table {}: empty column {col:?}",
                    t.table
                );
            }
        }
    }

    #[test]
    fn methods_and_model_names_are_valid() {
        let names: BTreeSet<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "baseline",
                "lsr",
                "kd",
                "re-kd",
                "de-kd",
                "tf-kd-self",
                "tf-kd-reg"
            ])
        );
        let mut not_runnable = Vec::new();
        for t in all() {
            for c in &t.cells {
                assert!(names.contains(c.method.name()));
                for m in c.models() {
                    if c.runnable {
                        assert!(
                            MODEL_NAMES.contains(&m),
                            "table {}: unknown model {m:?}",
                            t.table
                        );
                    }
                }
                if !c.runnable {
                    not_runnable.push((n(&t), c.row.clone(), c.column.clone()));
                }
            }
        }
        // Only Table 5's ResNeXt101 → ResNeXt29 (no CIFAR ResNeXt101 in the zoo).
        assert_eq!(
            not_runnable,
            [(5, "ResNeXt29".to_string(), "Normal KD [T]".to_string())]
        );
    }

    #[test]
    fn methods_sit_in_their_columns() {
        for t in all() {
            for c in &t.cells {
                let col = c.column.as_str();
                let expected = if col.contains("baseline") || col == "Baseline" {
                    Method::Baseline
                } else if col.starts_with("Normal KD") {
                    Method::Kd
                } else if col.starts_with("Re-KD") {
                    Method::ReKd
                } else if col == "De-KD" {
                    Method::DeKd
                } else if col.contains("Tf-KD_self") {
                    Method::TfKdSelf
                } else if col.contains("Tf-KD_reg") {
                    Method::TfKdReg
                } else if col.contains("LSR") {
                    Method::Lsr
                } else {
                    panic!("table {}: unexpected column {col:?}", t.table)
                };
                assert_eq!(
                    c.method, expected,
                    "table {}, {:?} × {col:?}",
                    t.table, c.row
                );
            }
        }
    }

    #[test]
    fn printed_gains_match_paper_minus_baseline_except_the_known_ones() {
        let mut mismatches = BTreeSet::new();
        let mut checked = 0;
        for t in all() {
            for c in &t.cells {
                let (Some(gain), Some(paper)) = (c.paper_gain, c.paper) else {
                    continue;
                };
                let base = t.baseline_of(c).unwrap_or_else(|| {
                    panic!(
                        "table {}: no baseline for {:?} × {:?}",
                        t.table, c.row, c.column
                    )
                });
                let computed = paper - base.paper.expect("baselines print a number");
                checked += 1;
                if (computed - gain).abs() > 0.01 + 1e-9 {
                    mismatches.insert((n(&t), c.row.clone(), c.column.clone()));
                }
            }
        }
        let known: BTreeSet<_> = KNOWN_GAIN_MISMATCHES
            .iter()
            .map(|&(n, r, c)| (n, r.to_string(), c.to_string()))
            .collect();
        assert_eq!(mismatches, known);
        // Every printed gain with a printed accuracy: 189 cells − 85 baselines − 10 gain-only.
        assert_eq!(checked, 94);
    }

    #[test]
    fn experiments_printed_twice_agree_except_the_known_ones() {
        type Key = (String, String, String, String, Option<u32>, Option<u32>);
        type Printed = Vec<(u32, Option<f64>, Option<f64>)>;
        let mut groups: BTreeMap<Key, Printed> = BTreeMap::new();
        for t in all() {
            for c in &t.cells {
                let key = (
                    t.dataset_of(c).name().to_string(),
                    c.method.name().to_string(),
                    c.student.clone(),
                    c.teacher.clone().unwrap_or_else(|| "-".into()),
                    c.teacher_epoch,
                    c.epochs_trained,
                );
                groups
                    .entry(key)
                    .or_default()
                    .push((n(&t), c.paper, c.paper_gain));
            }
        }
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            _ => true,
        };
        let mut mismatches = BTreeSet::new();
        for (key, printed) in &groups {
            let tables: BTreeSet<u32> = printed.iter().map(|p| p.0).collect();
            if tables.len() < 2 {
                continue;
            }
            let agree = printed
                .iter()
                .all(|a| printed.iter().all(|b| close(a.1, b.1) && close(a.2, b.2)));
            if !agree {
                mismatches.insert((key.0.clone(), key.1.clone(), key.2.clone(), key.3.clone()));
            }
        }
        let known: BTreeSet<_> = KNOWN_CROSS_TABLE_MISMATCHES
            .iter()
            .map(|&(d, m, s, t)| (d.to_string(), m.to_string(), s.to_string(), t.to_string()))
            .collect();
        assert_eq!(mismatches, known);
    }

    #[test]
    fn recipes_follow_the_code_paths() {
        for t in all() {
            let r = &t.recipe;
            assert_eq!(r.momentum, 0.9);
            if t.dataset == Dataset::Imagenet {
                assert_eq!(
                    (
                        r.epochs,
                        r.warmup_epochs,
                        r.milestones.as_slice(),
                        r.gamma,
                        r.weight_decay
                    ),
                    (90, 0, &[30, 60, 80][..], 0.1, 1e-4)
                );
                assert!(t
                    .cells
                    .iter()
                    .all(|c| c.lr_reference_batch == 256 && c.lr == 0.1));
            } else {
                assert_eq!(
                    (
                        r.epochs,
                        r.warmup_epochs,
                        r.milestones.as_slice(),
                        r.gamma,
                        r.weight_decay
                    ),
                    (200, 1, &[60, 120, 160][..], 0.2, 5e-4)
                );
                assert!(t.cells.iter().all(|c| c.lr_reference_batch == 128));
            }
        }
    }

    #[test]
    fn tiny_imagenet_batch_sizes_follow_the_paper() {
        for t in all() {
            for c in t
                .cells
                .iter()
                .filter(|c| t.dataset_of(c) == Dataset::TinyImagenet)
            {
                let bs = match c.student.as_str() {
                    "mobilenet_v2" | "shufflenet_v2" => 128,
                    "resnet50" | "densenet121" => 64,
                    _ => continue,
                };
                assert_eq!(
                    c.batch_size, bs,
                    "table {}, {:?} × {:?}",
                    t.table, c.row, c.column
                );
            }
        }
    }

    #[test]
    fn official_configs_only_for_cifar100() {
        for t in all() {
            for c in &t.cells {
                if let Some(cfg) = &c.official_config {
                    assert_eq!(
                        t.dataset_of(c),
                        Dataset::Cifar100,
                        "table {}: {cfg}",
                        t.table
                    );
                    assert!(cfg.starts_with("experiments/"), "{cfg}");
                } else if c.runnable {
                    // Cells without a shipped config must say where their recipe came from.
                    assert!(
                        c.note.is_some(),
                        "table {}, {:?} × {:?} has neither config nor note",
                        t.table,
                        c.row,
                        c.column
                    );
                }
            }
        }
    }

    #[test]
    fn cifar100_cells_without_a_config_are_those_of_paper_md_3_4() {
        let mut missing = BTreeSet::new();
        for t in all() {
            for c in &t.cells {
                if t.dataset_of(c) == Dataset::Cifar100 && c.official_config.is_none() {
                    missing.insert((n(&t), c.row.clone(), c.column.clone()));
                }
            }
        }
        let expected: BTreeSet<_> = [
            (1, "ResNet50 / MobileNetV2", "Normal KD (T→S)"),
            (4, "CIFAR100, ResNet50 / MobileNetV2", "De-KD"),
            (5, "GoogLeNet", "Normal KD [T]"),
            (5, "DenseNet121", "Normal KD [T]"),
            (5, "ResNeXt29", "Normal KD [T]"),
            (9, "GoogLeNet", "Normal KD [Teacher]"),
        ]
        .iter()
        .map(|&(n, r, c)| (n, r.to_string(), c.to_string()))
        .collect();
        assert_eq!(missing, expected);
    }

    #[test]
    fn de_kd_teachers_match_the_pt_teacher_cells() {
        let t = load_table(4).unwrap();
        for c in t.cells.iter().filter(|c| c.method == Method::DeKd) {
            let pt = t.cell(&c.row, "Pt-Teacher: baseline").unwrap();
            assert_eq!(Some(pt.student.as_str()), c.teacher.as_deref());
            assert_eq!(pt.epochs_trained, c.teacher_epoch);
            let expected = if pt.student == "resnet18" { 1 } else { 50 };
            assert_eq!(c.teacher_epoch, Some(expected));
        }
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
    fn every_extra_table_loads_and_prints_no_paper_number() {
        assert_eq!(TableId::all().len(), TABLE_COUNT as usize + EXTRA_TABLES.len());
        for name in EXTRA_TABLES {
            let id = TableId::parse(name).unwrap();
            let t = load(&id).unwrap();
            assert_eq!(t.table, id);
            assert!(t.about.as_deref().is_some_and(|a| a.len() > 200), "{name}: `about` is the report's header");
            assert!(t.source.is_none());
            for c in &t.cells {
                assert!(c.paper.is_none() && c.paper_std.is_none() && c.paper_gain.is_none());
                // Every cell has a baseline to measure its gain against.
                assert!(t.baseline_of(c).is_some(), "{name}: {:?} has no baseline", c.column);
            }
        }
    }

    #[test]
    fn the_ablation_uses_table_9s_resnet18_recipe_and_separates_each_variant() {
        let ab = load(&TableId::Extra("ablation".into())).unwrap();
        let t9 = load_table(9).unwrap();
        assert_eq!(ab.recipe, t9.recipe);
        assert_eq!(ab.dataset, t9.dataset);
        let reg9 = t9.cell("ResNet18", "Tf-KD_reg").unwrap();
        let spec = TeacherSpec { model: None, source: TeacherSource::Baseline, width_divisor: None };
        let mut strategies = Vec::new();
        for c in &ab.cells {
            assert_eq!((c.student.as_str(), c.batch_size, c.lr), ("resnet18", 128, 0.1));
            if c.method == Method::TfKdReg {
                // The official base_resnet18 values (paper.md §3.3); only the multiplier may be rescaled.
                assert_eq!((c.alpha, c.temperature, c.correct_prob), (reg9.alpha, reg9.temperature, reg9.correct_prob));
            }
            let s = c.strategy_config(spec.clone()).unwrap();
            assert!(!strategies.contains(&s), "{:?} repeats another column", c.column);
            strategies.push(s);
        }
        let reg = |column: &str| ab.cell("ResNet18", column).unwrap().strategy_config(spec.clone()).unwrap();
        assert_eq!(reg("Tf-KD_reg as coded (mean)"), reg9.strategy_config(spec.clone()).unwrap());
        let StrategyConfig::TfKdReg { form, temperature_squared, reduction, multiplier, .. } = reg("Tf-KD_reg Eq. 9 + T²") else {
            panic!("not tf-kd-reg")
        };
        assert_eq!((form, temperature_squared, reduction, multiplier), (RegForm::PaperEq9, true, KlReduction::BatchMean, 1.0));
        let StrategyConfig::TfKdReg { form, reduction, multiplier, .. } = reg("Tf-KD_reg as coded, batchmean") else {
            panic!("not tf-kd-reg")
        };
        assert_eq!((form, reduction, multiplier), (RegForm::AsCoded, KlReduction::BatchMean, 100.0));
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
