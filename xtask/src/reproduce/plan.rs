//! From table cells to a deduplicated, ordered list of training runs.
//!
//! Every cell × seed becomes an [`ExperimentConfig`]. Runs are named by the
//! content of their config (model, method, dataset, a digest of everything
//! else, seed), so the same experiment asked for by several cells or tables
//! (the CIFAR-100 ResNet18 baseline is a baseline, a teacher and a De-KD source
//! in five tables) is one run. Teachers are baseline runs of the teacher
//! network, planned explicitly and trained before the runs that read them.

use super::profile::{DataChoice, Profile};
use crate::tables::{Cell, Method, Table};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tfkd_core::loss::{KlReduction, SmoothingForm};
use tfkd_core::schedule::Decay;
use tfkd_distill::{RegForm, StrategyConfig, TeacherSource, TeacherSpec};
use tfkd_runner::config::{DataConfig, ModelConfig, OptimConfig, ScheduleConfig};
use tfkd_runner::ExperimentConfig;

/// What a cell's number is read from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Measure {
    /// The run's summary: best and last epoch.
    Final,
    /// The test top-1 after this epoch (a poorly-trained teacher's accuracy).
    AfterEpoch(usize),
}

/// One cell of one table, with the runs (one per seed) that measure it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedCell {
    /// Table number.
    pub table: u32,
    /// Row label.
    pub row: String,
    /// Column label.
    pub column: String,
    /// Run names, one per seed.
    pub runs: Vec<String>,
    /// How the number is read.
    pub measure: Measure,
}

/// One training run.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// The config (its `name` is the run name).
    pub config: ExperimentConfig,
    /// The teacher's run, if any.
    pub teacher: Option<String>,
}

/// The plan of a reproduction.
#[derive(Debug, Default)]
pub struct Plan {
    /// Runs by name.
    pub runs: BTreeMap<String, PlannedRun>,
    /// Cells of every requested table, in table order.
    pub cells: Vec<PlannedCell>,
    /// Cells that cannot run, with the reason.
    pub skipped: Vec<(u32, String, String, String)>,
}

/// FNV-1a over the config text: a digest that is stable across Rust versions.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// Options from the command line that every run shares.
pub struct Shared<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// Device string.
    pub device: &'a str,
    /// Parent of all run directories.
    pub runs_dir: &'a Path,
    /// Seeds override.
    pub seeds: Option<usize>,
}

impl Plan {
    /// Plans `tables` under `shared`.
    pub fn build(tables: &[Table], shared: &Shared) -> Result<Plan> {
        let mut plan = Plan::default();
        for table in tables {
            for cell in &table.cells {
                if !cell.runnable {
                    plan.skipped.push((
                        table.table,
                        cell.row.clone(),
                        cell.column.clone(),
                        cell.note.clone().unwrap_or_else(|| "not runnable".into()),
                    ));
                    continue;
                }
                let dataset = table.dataset_of(cell);
                let data = shared.profile.data(dataset);
                let seeds = shared.seeds.unwrap_or_else(|| shared.profile.default_seeds(dataset));
                let mut runs = Vec::new();
                let measure = match cell.epochs_trained {
                    Some(e) => Measure::AfterEpoch(shared.profile.scale_epoch(&table.recipe, e)),
                    None => Measure::Final,
                };
                for seed in 0..seeds as u64 {
                    let name = plan.plan_cell(table, cell, &data, seed, shared).with_context(|| {
                        format!("table {} cell {:?} / {:?}", table.table, cell.row, cell.column)
                    })?;
                    if let Measure::AfterEpoch(e) = measure {
                        plan.keep_epoch(&name, e);
                    }
                    runs.push(name);
                }
                plan.cells.push(PlannedCell {
                    table: table.table,
                    row: cell.row.clone(),
                    column: cell.column.clone(),
                    runs,
                    measure,
                });
            }
        }
        Ok(plan)
    }

    fn keep_epoch(&mut self, run: &str, epoch: usize) {
        if let Some(r) = self.runs.get_mut(run) {
            if !r.config.keep_epochs.contains(&epoch) {
                r.config.keep_epochs.push(epoch);
                r.config.keep_epochs.sort_unstable();
            }
        }
    }

    /// The baseline cell that defines the recipe of `model`'s baseline: the
    /// same table's, else the cell's own recipe.
    fn baseline_cell<'t>(table: &'t Table, model: &str, like: &'t Cell) -> &'t Cell {
        table
            .cells
            .iter()
            .find(|c| {
                c.method == Method::Baseline
                    && c.student == model
                    && c.epochs_trained.is_none()
                    && table.dataset_of(c) == table.dataset_of(like)
            })
            .unwrap_or(like)
    }

    /// Plans the baseline run of `model` (recipe from `recipe_cell`).
    fn plan_baseline(&mut self, table: &Table, model: &str, recipe_cell: &Cell, data: &DataChoice, seed: u64, shared: &Shared) -> Result<String> {
        let config = experiment(table, recipe_cell, model, StrategyConfig::Baseline {}, data, seed, shared)?;
        Ok(self.insert(config, None))
    }

    /// Plans one cell's run (and its teacher's); returns the run name.
    fn plan_cell(&mut self, table: &Table, cell: &Cell, data: &DataChoice, seed: u64, shared: &Shared) -> Result<String> {
        let f = |v: Option<f64>, what: &str| v.with_context(|| format!("field `{what}` is missing"));
        let teacher_model = match cell.method {
            Method::TfKdSelf => Some(cell.student.clone()),
            Method::Kd | Method::ReKd | Method::DeKd => Some(cell.teacher.clone().context("field `teacher` is missing")?),
            _ => None,
        };
        let (teacher_run, teacher_source) = match &teacher_model {
            None => (None, None),
            Some(model) => {
                let recipe = Self::baseline_cell(table, model, cell);
                let run = self.plan_baseline(table, model, recipe, data, seed, shared)?;
                let dir = shared.runs_dir.join(&run);
                let source = match (cell.method, cell.teacher_epoch) {
                    (Method::DeKd, Some(e)) => {
                        let e = shared.profile.scale_epoch(&table.recipe, e);
                        self.keep_epoch(&run, e);
                        TeacherSource::Checkpoint(dir.join(tfkd_runner::train::epoch_file(e)))
                    }
                    (Method::DeKd, None) => bail!("a de-kd cell needs `teacher_epoch`"),
                    _ => TeacherSource::Checkpoint(dir.join(tfkd_runner::train::BEST)),
                };
                (Some(run), Some(source))
            }
        };
        let teacher = |source: TeacherSource| TeacherSpec {
            model: teacher_model.as_ref().map(|m| shared.profile.model(m, data.kind)),
            source,
        };
        let strategy = match cell.method {
            Method::Baseline => return self.plan_baseline(table, &cell.student, cell, data, seed, shared),
            Method::Lsr => StrategyConfig::Lsr { epsilon: cell.epsilon.unwrap_or(0.1), form: SmoothingForm::Official },
            Method::Kd | Method::ReKd | Method::DeKd => {
                let (alpha, temperature) = (f(cell.alpha, "alpha")?, f(cell.temperature, "temperature")?);
                let teacher = teacher(teacher_source.clone().context("teacher")?);
                let reduction = KlReduction::ElementwiseMean;
                match cell.method {
                    Method::Kd => StrategyConfig::Kd { alpha, temperature, teacher, reduction },
                    Method::ReKd => StrategyConfig::ReKd { alpha, temperature, teacher, reduction },
                    _ => StrategyConfig::DeKd { alpha, temperature, teacher, reduction },
                }
            }
            Method::TfKdSelf => StrategyConfig::TfKdSelf {
                alpha: f(cell.alpha, "alpha")?,
                temperature: f(cell.temperature, "temperature")?,
                multiplier: cell.multiplier.unwrap_or(1.0),
                reduction: KlReduction::ElementwiseMean,
                source: teacher_source.clone().context("teacher")?,
            },
            Method::TfKdReg => StrategyConfig::TfKdReg {
                alpha: f(cell.alpha, "alpha")?,
                temperature: f(cell.temperature, "temperature")?,
                multiplier: cell.multiplier.unwrap_or(1.0),
                correct_prob: cell.correct_prob.unwrap_or(0.99),
                form: RegForm::AsCoded,
                temperature_squared: false,
                reduction: KlReduction::ElementwiseMean,
            },
        };
        let config = experiment(table, cell, &cell.student, strategy, data, seed, shared)?;
        Ok(self.insert(config, teacher_run))
    }

    /// Names the run by its content and records it once.
    pub fn insert(&mut self, mut config: ExperimentConfig, teacher: Option<String>) -> String {
        let identity = config.identity().to_toml();
        let name = format!(
            "{}-{}-{}-{}-s{}",
            config.data.dataset.name(),
            config.model.name,
            config.strategy.method(),
            digest(&identity),
            config.seed
        );
        config.name = Some(name.clone());
        self.runs.entry(name.clone()).or_insert(PlannedRun { config, teacher });
        name
    }

    /// Runs in execution order: every teacher before its students.
    pub fn ordered(&self) -> Vec<&PlannedRun> {
        let mut runs: Vec<&PlannedRun> = self.runs.values().collect();
        runs.sort_by_key(|r| r.teacher.is_some());
        runs
    }
}

/// The experiment config of `model` trained with `strategy` on `cell`'s recipe.
pub fn experiment(
    table: &Table,
    cell: &Cell,
    model: &str,
    strategy: StrategyConfig,
    data: &DataChoice,
    seed: u64,
    shared: &Shared,
) -> Result<ExperimentConfig> {
    let profile = shared.profile;
    let recipe = &table.recipe;
    let epochs = profile.epochs_for(recipe);
    let milestones: Vec<usize> = recipe.milestones.iter().map(|&m| profile.scale_epoch(recipe, m)).collect();
    Ok(ExperimentConfig {
        name: None,
        seed,
        device: shared.device.to_string(),
        epochs,
        out_dir: shared.runs_dir.to_path_buf(),
        keep_epochs: Vec::new(),
        model: ModelConfig { name: profile.model(model, data.kind), width_divisor: profile.width_divisor },
        data: DataConfig {
            dataset: data.kind,
            root: data.root.clone(),
            augmentation: true,
            train_subset: profile.train_subset,
            test_subset: profile.test_subset,
            threads: 2,
        },
        optim: OptimConfig {
            batch_size: profile.batch_size.unwrap_or(cell.batch_size as usize),
            lr: cell.lr,
            lr_reference_batch: cell.lr_reference_batch as usize,
            momentum: recipe.momentum,
            weight_decay: recipe.weight_decay,
            nesterov: false,
        },
        schedule: ScheduleConfig {
            warmup_epochs: (recipe.warmup_epochs as usize).min(epochs.saturating_sub(1)),
            decay: Decay::MultiStep { milestones, gamma: recipe.gamma },
        },
        strategy,
    })
}

/// Where the runs of a reproduction live.
pub fn runs_dir(out: &Path, profile: &Profile) -> PathBuf {
    out.join("runs").join(format!("{:?}", profile.name).to_lowercase())
}
