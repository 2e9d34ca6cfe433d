//! From table cells to a deduplicated, ordered list of training runs.
//!
//! Every cell × seed becomes an [`ExperimentConfig`]. Runs are named by the
//! content of their config (model, method, dataset, a digest of everything
//! else, seed), so the same experiment asked for by several cells or tables
//! (the CIFAR-100 ResNet18 baseline is a baseline, a teacher and a De-KD source
//! in five tables) is one run. Teachers are baseline runs of the teacher
//! network, planned explicitly and trained before the runs that read them.
//!
//! A cell's `strategy` overrides (Tf-KD_reg's `form`, a KL `reduction`, ...)
//! are part of its strategy config, hence of the digest: two cells that differ
//! only there are two runs, and a cell of the ablation that equals a cell of
//! the paper's tables is the same run.

use tfkd_runner::device::DeviceSpec;
use super::profile::{DataChoice, Profile};
use crate::tables::{self, Cell, Table, TableId};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tfkd_core::schedule::Decay;
use tfkd_distill::{Method, StrategyConfig, TeacherSource, TeacherSpec};
use tfkd_runner::config::{DataConfig, ModelConfig, OptimConfig, OptimizerKind, ScheduleConfig};
use tfkd_runner::ExperimentConfig;
use tfkd_zoo::ModelEntry;

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
    /// The table.
    pub table: TableId,
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
    /// The zoo's registry row of `config.model.name`: what the run's cost
    /// estimate reads (MACs, measured seconds, input kind).
    pub network: &'static ModelEntry,
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
    pub skipped: Vec<(TableId, String, String, String)>,
}

/// FNV-1a over the config text: a digest that is stable across Rust versions.
fn digest(text: &str) -> String {
    format!("{:08x}", tfkd_core::rng::fnv1a(text) >> 32)
}

/// Options from the command line that every run shares.
pub struct Shared<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// The device every run trains on.
    pub device: DeviceSpec,
    /// Every run's arithmetic (`--precision`).
    pub precision: tfkd_core::precision::Precision,
    /// Parent of all run directories.
    pub runs_dir: &'a Path,
    /// Seeds override.
    pub seeds: Option<usize>,
    /// Data-parallel replicas of every run (`--nproc`).
    pub replicas: usize,
}

impl Plan {
    /// Plans `tables` under `shared`.
    pub fn build(tables: &[Table], shared: &Shared) -> Result<Plan> {
        let mut plan = Plan::default();
        for table in tables {
            for cell in &table.cells {
                if !cell.runnable {
                    plan.skipped.push((
                        table.table.clone(),
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
                    Some(e) => Measure::AfterEpoch(shared.profile.scale_epoch(
                        &table.recipe,
                        &shared.profile.model(&cell.student, data.kind),
                        e,
                    )),
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
                    table: table.table.clone(),
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
        self.insert(config, None)
    }

    /// Plans one cell's run (and its teacher's); returns the run name.
    fn plan_cell(&mut self, table: &Table, cell: &Cell, data: &DataChoice, seed: u64, shared: &Shared) -> Result<String> {
        let teacher_model = match cell.method {
            Method::TfKdSelf => Some(cell.student.clone()),
            Method::Kd | Method::ReKd | Method::DeKd => Some(cell.teacher.clone().context("field `teacher` is missing")?),
            _ => None,
        };
        let published = shared.profile.published_teacher(cell, data.kind);
        let (teacher_run, teacher_source) = match (&teacher_model, published) {
            (None, _) => (None, None),
            // torchvision's published weights: no teacher run to wait for.
            (Some(_), Some(arch)) => (None, Some(TeacherSource::Torchvision(arch))),
            (Some(model), None) => {
                let recipe = Self::baseline_cell(table, model, cell);
                let run = self.plan_baseline(table, model, recipe, data, seed, shared)?;
                let dir = shared.runs_dir.join(&run);
                let source = match (cell.method, cell.teacher_epoch) {
                    (Method::DeKd, Some(e)) => {
                        let e = shared.profile.scale_epoch(&table.recipe, &shared.profile.model(model, data.kind), e);
                        self.keep_epoch(&run, e);
                        TeacherSource::Checkpoint(dir.join(tfkd_runner::train::epoch_file(e)))
                    }
                    (Method::DeKd, None) => bail!("a de-kd cell needs `teacher_epoch`"),
                    _ => TeacherSource::Checkpoint(dir.join(tfkd_runner::train::BEST)),
                };
                (Some(run), Some(source))
            }
        };
        if cell.method == Method::Baseline {
            // Any overrides were rejected by validation: a baseline has none.
            return self.plan_baseline(table, &cell.student, cell, data, seed, shared);
        }
        let teacher_name =
            teacher_model.as_ref().filter(|_| tables::names_teacher(cell.method)).map(|m| shared.profile.model(m, data.kind));
        // The teacher keeps its own width when the profile narrows it
        // differently from the student.
        let student_divisor = shared.profile.width_divisor_for(&shared.profile.model(&cell.student, data.kind));
        let width_divisor = teacher_name
            .as_deref()
            .map(|t| shared.profile.width_divisor_for(t))
            .filter(|&d| d != student_divisor);
        let teacher = TeacherSpec { model: teacher_name, source: teacher_source.unwrap_or_default(), width_divisor };
        let strategy = cell.strategy_config(teacher)?;
        let config = experiment(table, cell, &cell.student, strategy, data, seed, shared)?;
        self.insert(config, teacher_run)
    }

    /// Names the run by its content and records it once; its network must
    /// be in the zoo's registry.
    pub fn insert(&mut self, mut config: ExperimentConfig, teacher: Option<String>) -> Result<String> {
        let network = tfkd_zoo::entry(&config.model.name)?;
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
        self.runs.entry(name.clone()).or_insert(PlannedRun { config, network, teacher });
        Ok(name)
    }

    /// Runs in execution order: every teacher before its students.
    pub fn ordered(&self) -> Vec<&PlannedRun> {
        let teachers: std::collections::BTreeSet<&str> =
            self.runs.values().filter_map(|r| r.teacher.as_deref()).collect();
        let mut runs: Vec<&PlannedRun> = self.runs.values().collect();
        // Teachers of other runs first (their students wait for them), then
        // the other runs without a teacher, then the students; the longest
        // first within each group, so that runs side by side end together.
        let group = |r: &PlannedRun| (r.teacher.is_some(), !teachers.contains(r.config.name.as_deref().unwrap_or("")));
        runs.sort_by(|a, b| {
            group(a).cmp(&group(b)).then(
                super::estimate::relative_cost(b).total_cmp(&super::estimate::relative_cost(a)),
            )
        });
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
    let name = profile.model(model, data.kind);
    let epochs = profile.epochs_for(recipe, &name);
    let milestones = profile.milestones_for(recipe, &name);
    Ok(ExperimentConfig {
        name: None,
        seed,
        random: Default::default(),
        device: shared.device,
        precision: shared.precision,
        epochs,
        replicas: shared.replicas,
        out_dir: shared.runs_dir.to_path_buf(),
        keep_epochs: Vec::new(),
        model: ModelConfig { width_divisor: profile.width_divisor_for(&name), name },
        data: DataConfig {
            dataset: data.kind,
            root: data.root.clone(),
            augmentation: profile.augmentation,
            train_subset: profile.train_subset,
            test_subset: profile.test_subset,
            drop_last: false,
            eval_batch_size: profile.eval_batch_size,
            threads: 2,
        },
        optim: OptimConfig {
            kind: cell.optimizer,
            batch_size: profile.batch_size.unwrap_or(cell.batch_size as usize),
            lr: cell.lr * profile.lr_factor,
            lr_reference_batch: cell.lr_reference_batch as usize,
            // The recipe's momentum and weight decay are SGD's; the official
            // Adam runs keep PyTorch's defaults and no weight decay.
            momentum: recipe.momentum,
            weight_decay: match cell.optimizer {
                OptimizerKind::Sgd => recipe.weight_decay,
                OptimizerKind::Adam => 0.0,
            },
            nesterov: false,
            ..OptimConfig::default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::profile::ProfileName;
    use crate::tables::{load, load_table, StrategyOverrides};
    use tfkd_core::loss::KlReduction;
    use tfkd_distill::VirtualTeacherForm;
    use tfkd_runner::data::DatasetKind;

    fn ablation() -> Table {
        load(&TableId::Extra("ablation".into())).unwrap()
    }

    fn plan(tables: &[Table], profile: ProfileName) -> Plan {
        let profile = Profile::new(profile, Path::new("data"));
        let runs_dir = PathBuf::from("runs");
        Plan::build(tables, &Shared { profile: &profile, device: DeviceSpec::Cpu, precision: Default::default(), runs_dir: &runs_dir, seeds: None, replicas: 1 }).unwrap()
    }

    fn runs_of<'p>(plan: &'p Plan, table: &TableId, row: &str, column: &str) -> &'p [String] {
        let cell = plan.cells.iter().find(|c| &c.table == table && c.row == row && c.column == column);
        &cell.unwrap_or_else(|| panic!("no cell {table} {row:?} {column:?}")).runs
    }

    #[test]
    fn the_plain_cnn_trains_with_adam_as_the_official_configs_do() {
        let t2 = load_table(2).unwrap();
        for profile in [ProfileName::Paper, ProfileName::Quick] {
            let p = plan(std::slice::from_ref(&t2), profile);
            let mut adam = 0;
            for run in p.runs.values() {
                let o = &run.config.optim;
                // The cnn itself (student, or the Re-KD teacher's baseline).
                if run.config.model.name.starts_with("cnn") {
                    assert_eq!(o.kind, OptimizerKind::Adam, "{:?}", run.config.name);
                    assert_eq!(o.weight_decay, 0.0);
                    let expected = if run.config.strategy.method() == Method::Kd { 0.001 } else { 0.1 };
                    let factor = Profile::new(profile, Path::new("data")).lr_factor;
                    assert!((o.lr - expected * factor).abs() < 1e-12, "{:?}: lr {}", run.config.name, o.lr);
                    adam += 1;
                } else {
                    assert_eq!(o.kind, OptimizerKind::Sgd, "{:?}", run.config.name);
                    assert_eq!(o.weight_decay, t2.recipe.weight_decay);
                }
            }
            // Baseline, two Normal KD students and the baseline teaching Re-KD.
            assert!(adam >= 3, "{profile:?}: {adam} Adam runs");
        }
    }

    /// The form of every Tf-KD_reg run of `plan`, by run name.
    fn reg_forms(plan: &Plan) -> Vec<(String, VirtualTeacherForm, f64)> {
        plan.runs
            .iter()
            .filter_map(|(name, r)| match r.config.strategy {
                StrategyConfig::TfKdReg { form, multiplier, temperature_squared, .. } => {
                    assert!(!temperature_squared, "{name}: the author's statement has no τ²");
                    Some((name.clone(), form, multiplier))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tiny_imagenet_and_imagenet_tf_kd_reg_soften_the_student_as_the_author_states() {
        for (n, dataset) in [(10, DatasetKind::TinyImagenet), (11, DatasetKind::Imagenet)] {
            let p = plan(&[load_table(n).unwrap()], ProfileName::Paper);
            let forms = reg_forms(&p);
            assert!(!forms.is_empty());
            for (name, form, multiplier) in forms {
                assert_eq!(form, VirtualTeacherForm::PaperEq9, "table {n}: {name}");
                if dataset == DatasetKind::Imagenet {
                    assert_eq!(multiplier, 1.0, "{name}: no multiplier on ImageNet");
                }
            }
        }
        // The CIFAR code's form stays the default on CIFAR.
        let p = plan(&[load_table(9).unwrap()], ProfileName::Paper);
        assert!(reg_forms(&p).iter().all(|(_, f, _)| *f == VirtualTeacherForm::AsCoded));
    }

    #[test]
    fn the_reg_form_tables_run_resnet18_in_both_forms() {
        for (name, printed) in [("reg-form-tiny", None), ("reg-form-imagenet", Some(11))] {
            let table = load(&TableId::Extra(name.into())).unwrap();
            let mut tables = vec![table.clone()];
            tables.extend(printed.map(|n| load_table(n).unwrap()));
            let p = plan(&tables, ProfileName::Paper);
            let author = runs_of(&p, &table.table, "ResNet18", "Tf-KD_reg, author's form (τ on the student)");
            let coded = runs_of(&p, &table.table, "ResNet18", "Tf-KD_reg, CIFAR code form");
            let form = |run: &String| match p.runs[run].config.strategy {
                StrategyConfig::TfKdReg { form, .. } => form,
                ref s => panic!("{s:?}"),
            };
            assert!(author.iter().all(|r| form(r) == VirtualTeacherForm::PaperEq9), "{name}");
            assert!(coded.iter().all(|r| form(r) == VirtualTeacherForm::AsCoded), "{name}");
            if let Some(n) = printed {
                // The author's-form cell is the printed table's own run.
                let t = load_table(n).unwrap();
                assert_eq!(author, runs_of(&p, &t.table, "ResNet18", "+ Tf-KD_reg"), "{name}");
            }
        }
    }

    #[test]
    fn imagenet_teachers_are_torchvisions_published_weights_unless_asked_otherwise() {
        use tfkd_zoo::pretrained::TorchvisionArch;
        let tables = [load_table(7).unwrap(), load_table(8).unwrap()];
        let taught = |p: &Plan| -> Vec<(String, TeacherSource, Option<String>)> {
            p.runs
                .iter()
                .filter_map(|(name, r)| match &r.config.strategy {
                    StrategyConfig::TfKdSelf { source, .. } => Some((name.clone(), source.clone(), r.teacher.clone())),
                    StrategyConfig::Kd { teacher, .. } => Some((name.clone(), teacher.source.clone(), r.teacher.clone())),
                    _ => None,
                })
                .collect()
        };
        let paper = plan(&tables, ProfileName::Paper);
        let runs = taught(&paper);
        assert_eq!(runs.len(), 5, "four Tf-KD_self rows and one Normal KD");
        for (name, source, teacher_run) in &runs {
            let TeacherSource::Torchvision(arch) = source else { panic!("{name}: {source:?}") };
            assert!(teacher_run.is_none(), "{name} waits for a teacher run");
            let student = &paper.runs[name].config.model.name;
            match paper.runs[name].config.strategy.method() {
                Method::TfKdSelf => assert_eq!(arch.model(), student, "{name}"),
                _ => assert_eq!(*arch, TorchvisionArch::DenseNet121, "{name}"),
            }
        }
        // The named option: tfkd's own baselines, trained first.
        let profile = Profile { own_teachers: true, ..Profile::new(ProfileName::Paper, Path::new("data")) };
        let runs_dir = PathBuf::from("runs");
        let shared = Shared { profile: &profile, device: DeviceSpec::Cpu, precision: Default::default(), runs_dir: &runs_dir, seeds: None, replicas: 1 };
        let own = Plan::build(&tables, &shared).unwrap();
        for (name, source, teacher_run) in taught(&own) {
            assert!(matches!(source, TeacherSource::Checkpoint(_)), "{name}: {source:?}");
            assert!(teacher_run.is_some(), "{name}");
        }
        // Scaled profiles train stand-ins that published weights cannot teach.
        for (name, source, _) in taught(&plan(&tables, ProfileName::Quick)) {
            assert!(matches!(source, TeacherSource::Checkpoint(_)), "{name}: {source:?}");
        }
    }

    #[test]
    fn no_student_replays_its_teachers_batches() {
        let tables: Vec<Table> = TableId::all().iter().map(|id| load(id).unwrap()).collect();
        let p = plan(&tables, ProfileName::Paper);
        let mut pairs = std::collections::BTreeMap::<Method, usize>::new();
        for (name, run) in &p.runs {
            let Some(teacher) = &run.teacher else { continue };
            let (s, t) = (&run.config, &p.runs[teacher].config);
            assert_eq!(s.seed, t.seed, "{name}: the pair shares its seed");
            assert_ne!(s.data_seed(), t.data_seed(), "{name} replays the batches of {teacher}");
            if s.model.name == t.model.name && s.model.width_divisor == t.model.width_divisor {
                // The documented default: the official fixed seed's shared start.
                assert_eq!(s.init_seed(), t.init_seed(), "{name}");
            }
            *pairs.entry(s.strategy.method()).or_default() += 1;
        }
        for m in [Method::Kd, Method::ReKd, Method::DeKd, Method::TfKdSelf] {
            assert!(pairs.get(&m).copied().unwrap_or(0) > 0, "no {m:?} pair planned: {pairs:?}");
        }
    }

    #[test]
    fn cells_that_differ_only_in_reduction_are_two_runs() {
        let mut table = ablation();
        let coded = table.cell("ResNet18", "Tf-KD_reg as coded (mean)").unwrap().clone();
        let mut batch = coded.clone();
        batch.column = "batch".into();
        batch.strategy = Some(StrategyOverrides { reduction: Some(KlReduction::BatchMean), ..Default::default() });
        // Saying the default out loud changes nothing: the same run.
        let mut explicit = coded.clone();
        explicit.column = "explicit".into();
        explicit.strategy =
            Some(StrategyOverrides { reduction: Some(KlReduction::ElementwiseMean), ..Default::default() });
        table.columns.extend(["batch".to_string(), "explicit".to_string()]);
        table.cells = vec![coded, batch, explicit];
        table.validate("test").unwrap();
        for profile in [ProfileName::Paper, ProfileName::Quick, ProfileName::Smoke] {
            let p = plan(std::slice::from_ref(&table), profile);
            let id = &table.table;
            let (coded, batch, explicit) = (
                runs_of(&p, id, "ResNet18", "Tf-KD_reg as coded (mean)"),
                runs_of(&p, id, "ResNet18", "batch"),
                runs_of(&p, id, "ResNet18", "explicit"),
            );
            assert_eq!(coded, explicit, "{profile:?}");
            assert_eq!(coded.len(), batch.len());
            for (a, b) in coded.iter().zip(batch) {
                assert_ne!(a, b, "{profile:?}: reduction must be part of the run name");
            }
            assert_eq!(p.runs.len(), 2 * coded.len());
            let reductions: Vec<KlReduction> = [&coded[0], &batch[0]]
                .iter()
                .map(|r| match p.runs[*r].config.strategy {
                    StrategyConfig::TfKdReg { reduction, .. } => reduction,
                    ref s => panic!("{s:?}"),
                })
                .collect();
            assert_eq!(reductions, [KlReduction::ElementwiseMean, KlReduction::BatchMean]);
        }
    }

    #[test]
    fn the_ablations_official_cells_are_table_9s_runs_and_its_variants_are_new() {
        let (ab, t9) = (ablation(), load_table(9).unwrap());
        for profile in [ProfileName::Paper, ProfileName::Quick] {
            let both = plan(&[t9.clone(), ab.clone()], profile);
            let alone = plan(std::slice::from_ref(&ab), profile);
            let (a, n9) = (&ab.table, &t9.table);
            for (ours, theirs) in [("Baseline", "Baseline"), ("LSR", "+ LSR"), ("Tf-KD_reg as coded (mean)", "Tf-KD_reg")] {
                let runs = runs_of(&both, a, "ResNet18", ours);
                assert_eq!(runs, runs_of(&both, n9, "ResNet18", theirs), "{profile:?}: {ours}");
                // The names do not depend on which tables are planned together.
                assert_eq!(runs, runs_of(&alone, a, "ResNet18", ours));
            }
            let mut names: Vec<&String> = ab.columns.iter().flat_map(|c| runs_of(&alone, a, "ResNet18", c)).collect();
            let seeds = runs_of(&alone, a, "ResNet18", "Baseline").len();
            assert_eq!(seeds, if profile == ProfileName::Paper { 3 } else { 2 });
            names.sort();
            names.dedup();
            assert_eq!(names.len(), ab.columns.len() * seeds, "{profile:?}: every column is its own run");
            assert_eq!(alone.runs.len(), names.len());
        }
    }
}
