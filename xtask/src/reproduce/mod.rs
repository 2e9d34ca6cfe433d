//! `cargo xtask reproduce-table <N|ablation|all>`: plan, run and report the
//! paper's tables and the project's own (the Tf-KD_reg ablation). Runs are
//! deduplicated across tables, finished runs are skipped and interrupted ones
//! resumed, so the command can simply be run again.
//!
//! Two executors train the plan: `local` (this process, `execute.rs`) and
//! `slurm` (job arrays on a cluster, `slurm.rs`). `--report` writes the
//! reports from whatever runs are finished and trains nothing.

mod estimate;
mod execute;
pub mod figure;
pub mod index;
pub mod plan;
pub mod profile;
pub mod report;
pub mod slurm;

use tfkd_runner::device::DeviceSpec;
use crate::tables::{self, Table, TableId};
use anyhow::{Context, Result};
use plan::{Plan, Shared};
use profile::{Profile, ProfileName};
use std::path::PathBuf;
use tfkd_core::loss::KlReduction;
use tfkd_distill::{StrategyConfig, VirtualTeacherForm};

/// The command's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A table number (1-11), `ablation` (Tf-KD_reg as coded vs Eq. 9 vs
    /// LSR, `mean` vs `batchmean`), several, or `all` (every one of them).
    #[arg(required = true)]
    pub tables: Vec<String>,
    /// How far to scale the recipe: smoke (seconds), quick (2 CPU cores,
    /// ~15 min a table), paper (the full recipe, for a GPU).
    #[arg(long, value_enum, default_value = "quick")]
    pub profile: ProfileName,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Every run's arithmetic (`precision` of its config): `tf32` (default,
    /// PyTorch's on GPUs), `f32` (strict) or `bf16` (bf16 activations over
    /// f32 master weights; GPUs only). Not the default: other runs.
    #[arg(long, default_value = "tf32")]
    pub precision: tfkd_core::precision::Precision,
    /// Seeds per cell (default: 3 for the CIFAR tables under `paper`, as the
    /// paper reports mean ± std over 3 runs; 1 where it prints single numbers;
    /// 2 under `quick`; 1 under `smoke`).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// The folder holding the datasets (`cifar-100-binary/`, `cifar10-mini/`, ...).
    #[arg(long, env = "TFKD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Where the runs and the reports go.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Print the plan and its estimated cost, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Runs trained at once (default: one per core for `smoke` and `quick`
    /// on the CPU, each on one thread; else 1, on every thread). The results
    /// do not depend on it.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Data-parallel replicas per run (`tfkd train --nproc`): every run's
    /// batches are shared by N replicas whose gradients are summed. For the
    /// long ImageNet runs (Tables 7, 8, 11). Per-replica BatchNorm changes
    /// the numbers, so runs with N > 1 are other runs.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Train tfkd's own baselines as the teachers of the cells that load
    /// torchvision's published ImageNet weights (Tables 7 and 8, as the
    /// official script does); without it those cells load the published
    /// files (`tfkd download torchvision <arch>` fetches them ahead).
    #[arg(long)]
    pub own_teachers: bool,
    /// Where the runs train: `local` (this process) or `slurm` (job arrays,
    /// one task per run; run the command again to collect the reports).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Write the reports from the runs finished so far and train nothing
    /// (cells without a finished run show as not run).
    #[arg(long, conflicts_with = "dry_run")]
    pub report: bool,
    /// Slurm options (with `--executor slurm`).
    #[command(flatten)]
    pub slurm: slurm::SlurmArgs,
}

/// Where the runs of a reproduction train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// In this process, `--jobs` at a time.
    Local,
    /// As Slurm job arrays (`sbatch`), one task per run.
    Slurm,
}

fn parse_tables(args: &[String]) -> Result<Vec<TableId>> {
    if args.iter().any(|a| a == "all") {
        return Ok(TableId::all());
    }
    let mut ids = Vec::new();
    for a in args {
        let id = TableId::parse(a)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A strategy's hyper-parameters in one short line (teachers are in the
/// `teacher` column): the method's name, then its values; the LSR form by its
/// config name, the KL reduction by PyTorch's `reduction=` name.
fn strategy_summary(s: &StrategyConfig) -> String {
    let red = |r: &KlReduction| match r {
        KlReduction::ElementwiseMean => "mean",
        KlReduction::BatchMean => "batchmean",
        KlReduction::Sum => "sum",
    };
    let method = s.method();
    match s {
        StrategyConfig::Baseline {} => method.to_string(),
        StrategyConfig::Lsr { epsilon, form } => format!("{method} ε={epsilon} {}", tables::config_name(form)),
        StrategyConfig::Kd { alpha, temperature, reduction, .. }
        | StrategyConfig::ReKd { alpha, temperature, reduction, .. }
        | StrategyConfig::DeKd { alpha, temperature, reduction, .. } => {
            format!("{method} α={alpha} T={temperature} {}", red(reduction))
        }
        StrategyConfig::TfKdSelf { alpha, temperature, multiplier, reduction, .. } => {
            format!("{method} α={alpha} T={temperature} m={multiplier} {}", red(reduction))
        }
        StrategyConfig::TfKdReg { alpha, temperature, multiplier, correct_prob, form, temperature_squared, reduction } => {
            let form = match (form, temperature_squared) {
                (VirtualTeacherForm::AsCoded, _) => "as_coded",
                (VirtualTeacherForm::PaperEq9, false) => "eq9",
                (VirtualTeacherForm::PaperEq9, true) => "eq9+T²",
            };
            format!("{method} α={alpha} T={temperature} m={multiplier} a={correct_prob} {form} {}", red(reduction))
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs at once: `--jobs`, else one per core for the scaled profiles on the
/// CPU (each on one thread), else 1.
fn jobs(args: &Args) -> usize {
    let scaled = matches!(args.profile, ProfileName::Smoke | ProfileName::Quick) && args.device.is_cpu();
    args.jobs.unwrap_or(if scaled { cores() } else { 1 }).max(1)
}

/// Sizes candle's elementwise thread pool for `run(args)`; call it first
/// thing in `main`, while the process has one thread.
///
/// That pool is global and serves one caller at a time (a lock around each
/// call), so concurrent runs would queue on it. Sized to each run's share of
/// the cores (1 on a 2-core machine), every call runs inline on its caller's
/// thread instead. candle reads `CANDLE_NUM_THREADS` once, at its first
/// parallel op; a value the user set is kept.
pub fn pin_candle_threads(args: &Args) {
    let jobs = jobs(args);
    if jobs > 1 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", (cores() / jobs).max(1).to_string());
    }
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    reproduce(args).map(drop)
}

/// `path` made absolute against the current directory (not resolving links).
fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// Runs the command; with `--executor slurm`, returns what was submitted.
///
/// `--out` and `--data-dir` are made absolute before planning, whichever the
/// executor. A run's identity (its name's digest, and the check
/// `tfkd_runner` makes before it skips or resumes a run directory) includes
/// `data.root` and a student's teacher checkpoint path; Slurm tasks need
/// absolute paths (they may start in another directory), so with relative
/// ones the same run would have a different config under each executor and
/// a run started by one could not be resumed, nor even skipped, by the
/// other. Absolute paths give both executors the same names and the same
/// stored configs.
pub(crate) fn reproduce(args: &Args) -> Result<Option<slurm::Submission>> {
    let numbers = parse_tables(&args.tables)?;
    let tables: Vec<Table> = numbers.iter().map(tables::load).collect::<Result<_>>()?;
    let (out, data_dir) = (absolute(&args.out)?, absolute(&args.data_dir)?);
    let profile = Profile { own_teachers: args.own_teachers, ..Profile::new(args.profile, &data_dir) };
    let runs_dir = plan::runs_dir(&out, &profile);
    let shared =
        Shared { profile: &profile, device: args.device, precision: args.precision, runs_dir: &runs_dir, seeds: args.seeds, replicas: args.nproc.unwrap_or(1) };
    let plan = Plan::build(&tables, &shared)?;
    for run in plan.runs.values() {
        run.config.validate().with_context(|| format!("run {}", run.config.run_name()))?;
    }

    let (cores, jobs) = (cores(), jobs(args));
    let cost = estimate::estimate(&plan, args.device, jobs);
    println!(
        "plan: tables [{}], profile {:?}, {} cells -> {} distinct runs ({} skipped cells)",
        numbers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        profile.name,
        plan.cells.len(),
        plan.runs.len(),
        plan.skipped.len()
    );
    for t in &tables {
        println!("  {}: {}", t.table.heading().to_lowercase(), report::describe(&profile, t, &profile.data(t.dataset).note));
    }
    println!("{:<64} {:>7} {:>10}  {:<56} teacher", "run", "epochs", "images", "strategy");
    let mut published = std::collections::BTreeSet::new();
    for run in plan.ordered() {
        let c = &run.config;
        let n = if c.data.train_subset > 0 { c.data.train_subset.to_string() } else { "all".into() };
        use tfkd_distill::StrategyConfig as S;
        let source = match &c.strategy {
            S::TfKdSelf { source, .. } => Some(source),
            S::Kd { teacher, .. } | S::ReKd { teacher, .. } | S::DeKd { teacher, .. } => Some(&teacher.source),
            _ => None,
        };
        let teacher = match (&run.teacher, source) {
            (Some(t), _) => t.clone(),
            (None, Some(tfkd_distill::TeacherSource::Torchvision(arch))) => {
                published.insert(arch.name());
                format!("torchvision {arch} (published)")
            }
            _ => "-".into(),
        };
        println!(
            "{:<64} {:>7} {:>10}  {:<56} {}",
            c.name.as_deref().unwrap_or(""),
            c.epochs,
            n,
            strategy_summary(&c.strategy),
            teacher
        );
    }
    if !published.is_empty() {
        let archs: Vec<&str> = published.into_iter().collect();
        println!(
            "published teachers: torchvision's ImageNet weights of {} (downloaded into torch.hub's cache when first needed; \
             fetch them ahead with `tfkd download torchvision <arch>` where compute nodes have no network; --own-teachers trains own baselines instead)",
            archs.join(", ")
        );
    }
    println!("cells (table | row | column -> runs, one per seed):");
    for cell in &plan.cells {
        println!("  {} | {} | {} -> {}", cell.table, cell.row, cell.column, cell.runs.join(", "));
    }
    let time = |seconds: f64| {
        if seconds <= 60.0 {
            "1 minute".to_string()
        } else if seconds < 3600.0 {
            format!("{:.0} minutes", (seconds / 60.0).ceil())
        } else {
            format!("{:.1} hours", seconds / 3600.0)
        }
    };
    println!(
        "estimated cost on {}: {:.3e} training images, about {} ({})",
        args.device,
        cost.train_images,
        time(cost.seconds),
        cost.basis
    );
    if let Some((runs, tfkd, pytorch)) = cost.measured_against_pytorch {
        println!(
            "  of which the {runs} runs of networks measured beside PyTorch: tfkd about {}, PyTorch eager about {} on the same GPU",
            time(tfkd),
            time(pytorch)
        );
    }
    let write_reports = || -> Result<()> {
        for table in &tables {
            report::write(table, &plan, &profile, &runs_dir, &out)?;
            println!("report: {}", out.join(format!("{}.md", table.table.stem())).display());
        }
        Ok(())
    };
    if args.report {
        write_reports()?;
        return Ok(None);
    }
    match args.executor {
        Executor::Local => {
            if args.dry_run {
                return Ok(None);
            }
            let threads = (jobs > 1).then(|| (cores / jobs).max(1));
            execute::execute(&plan, jobs, threads)?;
            write_reports()?;
            Ok(None)
        }
        Executor::Slurm => {
            let scaled = matches!(args.profile, ProfileName::Smoke | ProfileName::Quick);
            let job = slurm::Job {
                slurm: &args.slurm,
                device: args.device,
                out: &out,
                tables: if args.tables.iter().any(|t| t == "all") {
                    "all".into()
                } else {
                    numbers.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
                },
                dry_run: args.dry_run,
                default_cpus: if scaled { 1 } else { 4 },
            };
            let submission = slurm::submit(&plan, &job)?;
            if args.dry_run {
                println!("dry run: nothing submitted");
            } else if submission.complete() {
                write_reports()?;
            } else {
                println!(
                    "the reports are written once every run has finished: run this command again when the jobs have \
                     ended (it submits nothing more), or add --report for the runs finished so far"
                );
            }
            Ok(Some(submission))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args(tables: &str, profile: ProfileName, out: &std::path::Path, dry_run: bool) -> Args {
        Args {
            tables: vec![tables.into()],
            profile,
            device: DeviceSpec::Cpu,
            precision: Default::default(),
            seeds: None,
            data_dir: out.join("no-data-here"),
            out: out.to_path_buf(),
            dry_run,
            jobs: None,
            nproc: None,
            own_teachers: false,
            executor: Executor::Local,
            report: false,
            slurm: slurm::SlurmArgs::default(),
        }
    }

    #[test]
    fn the_paper_profile_plans_every_table_and_shares_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = args("all", ProfileName::Paper, tmp.path(), true);
        let tables: Vec<Table> = TableId::all().iter().map(|id| tables::load(id).unwrap()).collect();
        let profile = Profile::new(a.profile, &a.data_dir);
        let runs_dir = plan::runs_dir(&a.out, &profile);
        let shared = Shared { profile: &profile, device: DeviceSpec::Cuda(0), precision: Default::default(), runs_dir: &runs_dir, seeds: None, replicas: 1 };
        let plan = Plan::build(&tables, &shared).unwrap();
        // The CIFAR-100 ResNet18 baseline recipe (bs 128) appears as a baseline
        // (Tables 9 and the ablation among others), a teacher and a De-KD
        // source: one run per seed.
        let r18: Vec<&String> = plan
            .runs
            .keys()
            .filter(|k| k.starts_with("cifar100-resnet18-baseline-"))
            .collect();
        assert_eq!(r18.len(), 3, "{r18:?}");
        let de_kd_source = plan.runs.values().find(|r| r.config.keep_epochs.contains(&1)).expect("De-KD keeps epoch 1");
        assert_eq!(de_kd_source.config.strategy.method(), tfkd_distill::Method::Baseline);
        assert!(plan.runs.values().all(|r| r.config.epochs == 200 || r.config.epochs == 90));
        // Every teacher is planned before its students.
        let order: Vec<&str> = plan.ordered().iter().map(|r| r.config.name.as_deref().unwrap()).collect();
        for run in plan.runs.values() {
            if let Some(t) = &run.teacher {
                let (ti, si) = (order.iter().position(|n| n == t).unwrap(), order.iter().position(|n| Some(*n) == run.config.name.as_deref()).unwrap());
                assert!(ti < si, "{t} must run before {:?}", run.config.name);
            }
        }
        run(&a).unwrap(); // the dry run prints and returns
    }

    /// `--nproc N` makes every run data-parallel, and other runs than
    /// single-process ones (per-replica BatchNorm changes the numbers).
    #[test]
    fn nproc_makes_every_run_data_parallel() {
        let tmp = tempfile::tempdir().unwrap();
        let tables = vec![tables::load(&TableId::Paper(7)).unwrap()];
        let profile = Profile::new(ProfileName::Paper, &tmp.path().join("data"));
        let runs_dir = plan::runs_dir(tmp.path(), &profile);
        let plan = |replicas| {
            let shared = Shared { profile: &profile, device: DeviceSpec::Cuda(0), precision: Default::default(), runs_dir: &runs_dir, seeds: None, replicas };
            Plan::build(&tables, &shared).unwrap()
        };
        let (one, four) = (plan(1), plan(4));
        assert!(four.runs.values().all(|r| r.config.replicas == 4));
        assert!(one.runs.keys().all(|k| !four.runs.contains_key(k)), "replicas are part of a run's name");
        let mut a = args("7", ProfileName::Paper, tmp.path(), true);
        a.nproc = Some(0);
        let err = format!("{:#}", run(&a).unwrap_err());
        assert!(err.contains("replicas"), "{err}");
    }

    /// `--precision` sets every run's, and a non-default one makes other
    /// runs (bf16 or strict f32 change the numbers); bf16 on the CPU is a
    /// named error.
    #[test]
    fn precision_reaches_every_run_and_names_it() {
        use tfkd_core::precision::Precision;
        let tmp = tempfile::tempdir().unwrap();
        let tables = vec![tables::load(&TableId::Paper(9)).unwrap()];
        let profile = Profile::new(ProfileName::Paper, &tmp.path().join("data"));
        let runs_dir = plan::runs_dir(tmp.path(), &profile);
        let plan = |precision| {
            let shared = Shared { profile: &profile, device: DeviceSpec::Cuda(0), precision, runs_dir: &runs_dir, seeds: None, replicas: 1 };
            Plan::build(&tables, &shared).unwrap()
        };
        let (tf32, bf16) = (plan(Precision::Tf32), plan(Precision::Bf16));
        assert!(bf16.runs.values().all(|r| r.config.precision == Precision::Bf16));
        assert!(tf32.runs.keys().all(|k| !bf16.runs.contains_key(k)), "precision is part of a run's name");
        let mut a = args("9", ProfileName::Paper, tmp.path(), true);
        a.precision = Precision::Bf16;
        let err = format!("{:#}", run(&a).unwrap_err());
        assert!(err.contains("precision"), "{err}");
    }

    #[test]
    fn bad_table_arguments_are_named() {
        assert!(parse_tables(&["12".into()]).unwrap_err().to_string().contains("table 12"));
        assert!(parse_tables(&["five".into()]).unwrap_err().to_string().contains("five"));
        let all = parse_tables(&["all".into()]).unwrap();
        assert_eq!(all.len(), 11 + crate::tables::EXTRA_TABLES.len());
        assert!(all.contains(&TableId::Extra("ablation".into())));
        assert_eq!(
            parse_tables(&["9".into(), "ablation".into(), "9".into()]).unwrap(),
            [TableId::Paper(9), TableId::Extra("ablation".into())]
        );
    }

    #[test]
    fn the_ablation_dry_run_plans_every_variant() {
        let tmp = tempfile::tempdir().unwrap();
        run(&args("ablation", ProfileName::Quick, tmp.path(), true)).unwrap();
        // A dry run writes nothing.
        assert!(!tmp.path().join("ablation.md").exists());
    }

    /// `--report` trains nothing: with no finished run every cell is "not run".
    #[test]
    fn report_writes_what_is_finished_and_trains_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args("8", ProfileName::Smoke, tmp.path(), false);
        a.report = true;
        assert!(reproduce(&a).unwrap().is_none());
        let md = std::fs::read_to_string(tmp.path().join("table-8.md")).unwrap();
        assert_eq!(md.matches("| not run |").count(), 3, "{md}");
        assert!(!tmp.path().join("runs").exists(), "--report trained something");
    }

    /// Every table end to end in the smoke profile: plan, train, report.
    /// Several runs at once give the numbers of one at a time (Table 8's
    /// students wait for their teachers).
    #[test]
    fn jobs_change_the_time_not_the_numbers() {
        let report = |jobs| {
            let tmp = tempfile::tempdir().unwrap();
            let mut a = args("8", ProfileName::Smoke, tmp.path(), false);
            a.jobs = Some(jobs);
            run(&a).unwrap();
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(tmp.path().join("table-8.json")).unwrap()).unwrap();
            // Students' run names digest their teacher's checkpoint path.
            for cell in json["cells"].as_array_mut().unwrap() {
                cell.as_object_mut().unwrap().remove("runs");
            }
            json["cells"].clone()
        };
        assert_eq!(report(1), report(3));
    }

    /// Table 4's De-KD cells load their teacher's epoch-1 checkpoint, which a
    /// baseline finished by an earlier table did not keep: it is trained
    /// again, and the earlier run is kept aside.
    #[test]
    fn a_later_table_gets_the_checkpoints_an_earlier_one_did_not_keep() {
        let tmp = tempfile::tempdir().unwrap();
        run(&args("3", ProfileName::Smoke, tmp.path(), false)).unwrap();
        run(&args("4", ProfileName::Smoke, tmp.path(), false)).unwrap();
        let runs = tmp.path().join("runs/smoke");
        let aside: Vec<_> = std::fs::read_dir(&runs)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.contains(".before-keep-epoch-1"))
            .collect();
        assert!(!aside.is_empty(), "no baseline was trained again");
        for name in &aside {
            let original = runs.join(name.split(".before-keep-epoch-").next().unwrap());
            assert!(original.join("epoch-1.safetensors").is_file(), "{name}: retrained without epoch 1");
            assert!(runs.join(name).join("summary.json").is_file(), "{name}: the earlier run was not kept");
        }
        let md = std::fs::read_to_string(tmp.path().join("table-4.md")).unwrap();
        assert!(!md.contains("not run |"), "{md}");
    }

    #[test]
    fn every_table_runs_in_the_smoke_profile() {
        let tmp = tempfile::tempdir().unwrap();
        run(&args("all", ProfileName::Smoke, tmp.path(), false)).unwrap();
        for id in TableId::all() {
            let n = id.stem();
            let md = std::fs::read_to_string(tmp.path().join(format!("{n}.md"))).unwrap();
            assert!(!md.contains("not run |"), "{n} has cells without results:\n{md}");
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(tmp.path().join(format!("{n}.json"))).unwrap()).unwrap();
            for cell in json["cells"].as_array().unwrap() {
                let best = cell["best"]["mean"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&best), "{n}: {cell}");
                if !id.is_paper() {
                    assert!(cell["paper"].is_null(), "{n}: {cell}");
                    if cell["method"] != "baseline" {
                        assert!(cell["gain"].as_f64().is_some(), "{n}: every cell has a gain over the baseline: {cell}");
                    }
                }
            }
        }
        // The ablation's report: its header, no paper column, every variant.
        let ablation = tables::load(&TableId::Extra("ablation".into())).unwrap();
        let md = std::fs::read_to_string(tmp.path().join("ablation.md")).unwrap();
        assert!(md.starts_with("# Ablation: "), "{md}");
        assert!(md.contains(ablation.about.as_deref().unwrap().trim()));
        assert!(md.contains("| row | column | ours (best) | ours (last) | our gain |") && !md.contains("| paper |"), "{md}");
        for column in &ablation.columns {
            assert!(md.contains(&format!("| ResNet18 | {column} | ")), "{column} missing:\n{md}");
        }
        // Running again trains nothing and rewrites the same numbers.
        let before = std::fs::read_to_string(tmp.path().join("table-5.json")).unwrap();
        run(&args("5", ProfileName::Smoke, tmp.path(), false)).unwrap();
        assert_eq!(before, std::fs::read_to_string(tmp.path().join("table-5.json")).unwrap());
    }
}
