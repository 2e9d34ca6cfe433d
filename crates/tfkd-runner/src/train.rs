//! The training loop: forward → loss → backward/step → evaluation, every
//! epoch checkpointed atomically so that a killed run resumes exactly.
//!
//! Determinism: the weights come from `SeededVarMap::new(init_seed)`, the
//! batches of epoch e from the loader's `(data_seed, e)` streams, and the
//! dropout masks of epoch e from a generator derived from `(data_seed, e)`
//! (`ExperimentConfig::init_seed` and `data_seed`: the run's `seed`, mixed
//! with its method and network as `[random]` says). Resuming from the end of
//! epoch e therefore continues with exactly the numbers an uninterrupted run
//! would have used. A stop signal (SIGTERM, SIGUSR1: a scheduler's
//! preemption or time limit) ends the current step and writes a mid-epoch
//! checkpoint (the batches done, the running sums and the dropout state),
//! from which the rest of the epoch is the same as well.

use crate::checkpoint::{load_tensors, save_tensors, write_atomic, CheckpointMeta, PartialEpoch, OPTIM_PREFIX};
use crate::run_dir::{move_aside, stop_requested, RunLock, StopGuard};
use crate::config::ExperimentConfig;
use crate::data::build_loaders;
use crate::device::open_device;
use crate::error::{io_err, Result, RunError};
use crate::teacher::{load_teacher, teacher_checkpoint};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use candle_core::Var;
use tfkd_core::collective::{all_reduce_gradients, Collective, Solo, ThreadGroup};
use tfkd_core::init::SeededVarMap;
use tfkd_core::loss::cross_entropy;
use tfkd_core::metrics::{top1_hits, Accuracy};
use tfkd_core::optim::Optimizer;
use tfkd_core::rng::SeededRng;
use tfkd_data::Loader;
use tfkd_distill::Strategy;
use tfkd_zoo::{Model, ModelOptions};

pub use crate::run_dir::{epoch_file, read_metrics, read_summary, BEST, CONFIG, LAST, METRICS, SUMMARY};

/// What one epoch did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch's last iteration.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean weighted hard-label part of the loss.
    pub train_hard: f64,
    /// Mean weighted soft part of the loss (0 without one).
    pub train_soft: f64,
    /// Training top-1 accuracy (%) on the augmented batches, in train mode.
    pub train_top1: f64,
    /// Test cross-entropy.
    pub test_loss: f64,
    /// Test top-1 accuracy (%).
    pub test_top1: f64,
    /// Test top-5 accuracy (%).
    pub test_top5: f64,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// The result of a finished run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Run name.
    pub run: String,
    /// Student model.
    pub model: String,
    /// Dataset.
    pub dataset: String,
    /// Strategy method.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Epochs trained.
    pub epochs: usize,
    /// The epoch with the highest test top-1 (the official `best.pth.tar`).
    pub best: EpochRecord,
    /// The final epoch.
    pub last: EpochRecord,
    /// The teacher's test top-1, for runs with a teacher network.
    pub teacher_top1: Option<f64>,
}

/// Progress events of a run; the CLI draws them, tests ignore them.
pub trait Reporter {
    /// A stage begins (e.g. training a teacher first).
    fn stage(&mut self, _message: &str) {}
    /// An epoch begins.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// A training batch finished.
    fn batch_end(&mut self, _iteration: usize, _images: usize, _loss: f64) {}
    /// An epoch finished.
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// A reporter that ignores everything.
pub struct Silent;
impl Reporter for Silent {}

/// How to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Continue a started run from its last checkpoint.
    pub resume: bool,
    /// With `resume`: a run whose directory does not exist is an error
    /// ([`RunError::NothingToResume`]) instead of a fresh start. The CLI's
    /// `--resume` sets it, so that `--resume --set seed=1` (a new run name)
    /// does not silently start a new run; `--auto-resume` does not. A
    /// directory without a finished epoch (a failed start) is started
    /// afresh either way.
    pub require_started: bool,
    /// Stop after this many epochs of this invocation (to test resuming).
    pub stop_after: Option<usize>,
}

/// The outcome of [`run_experiment`].
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The run directory.
    pub dir: PathBuf,
    /// The summary, `None` when the run stopped early (`stop_after`).
    pub summary: Option<Summary>,
}

/// Evaluates `model` in eval mode: (cross-entropy, accuracy).
pub fn evaluate(model: &dyn Model, loader: &Loader) -> Result<(f64, Accuracy)> {
    let mut acc = Accuracy::default();
    let mut loss_sum = 0.0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = model.forward_t(&batch.images, false)?.detach();
        let n = batch.labels.dim(0)?;
        loss_sum += cross_entropy(&logits, &batch.labels)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        acc.update(&logits, &batch.labels)?;
    }
    Ok((if acc.total == 0 { 0.0 } else { loss_sum / acc.total as f64 }, acc))
}

/// The dropout seed of `replica` in `epoch` (replica 0's is that of a
/// single-process run).
fn dropout_seed(seed: u64, epoch: usize, replica: usize) -> u64 {
    use rand::RngCore;
    match replica {
        0 => SeededRng::derive(seed, &[epoch as u64, 0xD20F]).next_u64(),
        r => SeededRng::derive(seed, &[epoch as u64, 0xD20F, r as u64]).next_u64(),
    }
}

/// The config a run directory was started with, when it has one.
fn stored_config(dir: &Path) -> Result<Option<ExperimentConfig>> {
    let path = dir.join(CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    toml::from_str(&text).map(Some).map_err(|e| RunError::ConfigFile { path: path.clone(), reason: e.to_string() })
}

/// The first field in which `stored` and `given` differ, apart from what does
/// not change the numbers ([`ExperimentConfig::identity`]); `None` when equal.
fn config_difference(stored: &ExperimentConfig, given: &ExperimentConfig) -> Option<String> {
    if stored.identity() == given.identity() {
        return None;
    }
    let (a, b) = (stored.identity().to_toml(), given.identity().to_toml());
    Some(
        a.lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("stored `{x}`, given `{y}`"))
            .unwrap_or_else(|| "different fields".into()),
    )
}

/// The config a run directory was started with must match the given one.
fn check_stored_config(dir: &Path, config: &ExperimentConfig) -> Result<()> {
    match stored_config(dir)? {
        Some(stored) => match config_difference(&stored, config) {
            Some(detail) => Err(RunError::ConfigChanged { dir: dir.to_path_buf(), detail }),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// The started runs of `out_dir` (those with a resumable checkpoint), for
/// the hint of [`RunError::NothingToResume`].
fn started_runs_hint(out_dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(LAST).is_file() && !crate::run_dir::is_finished(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        "; without --resume it starts a new run".into()
    } else {
        let shown: Vec<_> = names.iter().take(8).map(String::as_str).collect();
        format!(
            "; the run name follows dataset, model, method and seed unless `name` is set, so a --set of those names another \
             run. Unfinished runs in {}: {}{}",
            out_dir.display(),
            shown.join(", "),
            if names.len() > shown.len() { ", …" } else { "" }
        )
    }
}

/// Where a run directory stands before training: finished, started (a
/// finished epoch to continue from), or fresh.
enum Start {
    Finished(Box<Summary>),
    Resume,
    Fresh,
}

/// Decides how to start, under the run's lock: skips a finished run, refuses
/// to overwrite a started one without `resume`, and moves aside a failed
/// start (a directory without a finished epoch) made with another config.
fn prepare_run_dir(config: &ExperimentConfig, options: &RunOptions, reporter: &mut dyn Reporter) -> Result<Start> {
    let dir = config.run_dir();
    match read_summary(&dir) {
        Ok(Some(summary)) => {
            check_stored_config(&dir, config)?;
            return Ok(Start::Finished(Box::new(summary)));
        }
        Ok(None) => {}
        Err(e) if options.resume => {
            reporter.stage(&format!("{e}; the run counts as unfinished, and resuming writes its summary again"))
        }
        Err(e) => reporter.stage(&format!("{e}; the run counts as unfinished: --resume writes its summary again")),
    }
    if dir.join(LAST).is_file() {
        if !options.resume {
            return Err(RunError::RunExists(dir));
        }
        check_stored_config(&dir, config)?;
        return Ok(Start::Resume);
    }
    if options.resume && options.require_started && !dir.exists() {
        return Err(RunError::NothingToResume {
            run: config.run_name(),
            dir: dir.clone(),
            hint: started_runs_hint(&config.out_dir),
        });
    }
    if options.resume && dir.exists() {
        reporter.stage(&format!("{} finished no epoch: nothing to resume, starting it afresh", config.run_name()));
    }
    if let Some(stored) = stored_config(&dir).unwrap_or(None) {
        if let Some(detail) = config_difference(&stored, config) {
            let aside = move_aside(&dir, "failed-start")?;
            reporter.stage(&format!(
                "{} holds a start that finished no epoch, with another config ({detail}); moved it aside to {} and starting afresh",
                dir.display(),
                aside.display()
            ));
        }
    } else if dir.join(CONFIG).is_file() {
        let aside = move_aside(&dir, "failed-start")?;
        reporter.stage(&format!(
            "{} holds an unreadable config.toml and no finished epoch; moved it aside to {} and starting afresh",
            dir.display(),
            aside.display()
        ));
    }
    Ok(Start::Fresh)
}

/// Runs (or resumes, or skips when finished) one experiment, holding the
/// run directory's lock ([`RunLock`]) while it writes.
pub fn run_experiment(config: &ExperimentConfig, options: &RunOptions, reporter: &mut dyn Reporter) -> Result<RunOutcome> {
    run_experiment_in(config, options, None, reporter)
}

/// For each flag, whether any replica of `group` raised it (one
/// all-reduce).
fn any_replica(group: &dyn Collective, flags: &[bool]) -> Result<Vec<bool>> {
    let mine: Vec<f32> = flags.iter().map(|&f| f32::from(u8::from(f))).collect();
    let sum = group.all_reduce_sum(&Tensor::new(mine, &Device::Cpu)?)?.to_vec1::<f32>()?;
    Ok(sum.iter().map(|&s| s > 0.0).collect())
}

/// What the leader of a multi-process run tells the others once it is set
/// up: the run was finished already, or it resumes.
fn meet(group: &dyn Collective, finished: bool, resumed: bool) -> Result<(bool, bool)> {
    let any = any_replica(group, &[finished, resumed])?;
    Ok((any[0], any[1]))
}

/// [`run_experiment`] as one process of a multi-process data-parallel run
/// (`group`: this process's rank among `config.replicas`, launched by
/// `srun` or a torchrun-style launcher), or on its own (`None`: the
/// replicas, if any, are threads of this process).
///
/// Rank 0 leads: it takes the lock, decides how to start, trains a missing
/// teacher, writes every file and evaluates. The others write nothing: they
/// wait for it, then load the same teacher and checkpoint, and meet it in
/// every step's all-reduce.
pub fn run_experiment_in(
    config: &ExperimentConfig,
    options: &RunOptions,
    group: Option<Box<dyn Collective>>,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome> {
    config.validate()?;
    config.check_files()?;
    if let Some(g) = &group {
        if g.world_size() != config.replicas {
            return Err(crate::error::config_err(
                "replicas",
                format!("{} in the config, but {} processes were launched", config.replicas, g.world_size()),
            ));
        }
    }
    let follower = group.as_ref().is_some_and(|g| g.rank() > 0);
    let dir = config.run_dir();
    let last_path = dir.join(LAST);
    let tell_finished = |summary: Summary| -> Result<RunOutcome> {
        if let Some(g) = &group {
            meet(g.as_ref(), true, false)?;
        }
        Ok(RunOutcome { dir: dir.clone(), summary: Some(summary) })
    };
    let (lock, _graceful, resuming) = if follower {
        (None, StopGuard::new(), false)
    } else {
        if let Ok(Some(summary)) = read_summary(&dir) {
            check_stored_config(&dir, config)?;
            reporter.stage(&format!("{} is finished (best top-1 {:.2}%), skipping", summary.run, summary.best.test_top1));
            return tell_finished(summary);
        }
        let lock = RunLock::acquire(&dir, &config.run_name(), &mut |m: &str| reporter.stage(m))?;
        // From here on a stop signal ends the run at its next step (or before
        // its first), with its checkpoint written, instead of ending the process.
        let graceful = StopGuard::new();
        let resuming = match prepare_run_dir(config, options, reporter)? {
            Start::Finished(summary) => {
                reporter.stage(&format!("{} is finished (best top-1 {:.2}%), skipping", summary.run, summary.best.test_top1));
                return tell_finished(*summary);
            }
            Start::Resume => true,
            Start::Fresh => false,
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_atomic(&dir.join(CONFIG), config.try_to_toml()?.as_bytes())?;
        (Some(lock), graceful, resuming)
    };
    // The others wait until the leader is set up (a missing teacher trained,
    // the checkpoint to resume from known).
    let resuming = match (&group, follower) {
        (Some(g), true) => match meet(g.as_ref(), false, false)? {
            (true, _) => return Ok(RunOutcome { dir, summary: None }),
            (false, resumed) => resumed,
        },
        _ => resuming,
    };

    let device = open_device(config.device)?;
    config.precision.apply();
    if !device.is_cpu() {
        tracing::info!("convolutions: {} (precision {})", tfkd_core::conv::backend(&device), config.precision);
    }
    let strategy = config.strategy.build()?;
    let loaders = build_loaders(&config.data, config.optim.batch_size, config.data_seed(), &device)?;

    let model_opts = |dropout_seed| ModelOptions {
        dropout_seed,
        ..ModelOptions::new(loaders.num_classes, config.data.dataset.input_size())
            .with_width_divisor(config.model.width_divisor)
    };

    let teacher = match strategy.teacher() {
        None => None,
        Some(spec) => {
            if let tfkd_distill::TeacherSource::Torchvision(arch) = spec.source {
                let n = tfkd_zoo::pretrained::NUM_CLASSES;
                if loaders.num_classes != n {
                    return Err(crate::error::config_err(
                        "strategy.teacher.source.torchvision",
                        format!(
                            "torchvision's {arch} weights have {n} ImageNet classes, but {} under {} has {}: \
                             a published teacher needs the full ImageNet class folders",
                            config.data.dataset.name(),
                            config.data.root.display(),
                            loaders.num_classes
                        ),
                    ));
                }
            }
            let path = teacher_checkpoint(config, spec, options, reporter)?;
            let name = spec.model.clone().unwrap_or_else(|| config.model.name.clone());
            let opts = ModelOptions {
                width_divisor: spec.width_divisor.unwrap_or(config.model.width_divisor),
                ..model_opts(0)
            };
            let teacher = load_teacher(&name, &opts, &path, &device)?;
            Some(tfkd_zoo::with_activation_dtype(teacher, config.precision.activation_dtype()))
        }
    };
    let teacher_top1 = match &teacher {
        Some(_) if follower => None,
        Some(t) => {
            let (_, acc) = evaluate(t.as_ref(), &loaders.test)?;
            reporter.stage(&format!("the teacher's test top-1: {:.2}%", acc.top1_percent()));
            Some(acc.top1_percent())
        }
        None => None,
    };

    // Create the student's variables and the network over them (built once:
    // training updates the variables in place).
    let build_replica = || -> Result<Replica> {
        let varmap = SeededVarMap::new(config.init_seed());
        let model = tfkd_zoo::build_with(&config.model.name, &model_opts(0), varmap.var_builder(DType::F32, &device))?;
        let model = tfkd_zoo::with_activation_dtype(model, config.precision.activation_dtype());
        let params = tfkd_zoo::trainable_vars(&varmap);
        let optimizer = Optimizer::new(params.clone(), config.optim.optimizer())?;
        Ok(Replica { varmap, model, optimizer, params })
    };
    let mut main = build_replica()?;
    check_last_batch(config, &loaders.train, &main.varmap)?;
    let mut meta = CheckpointMeta { model: config.model.name.clone(), ..Default::default() };
    if resuming {
        meta = restore(&last_path, &main.varmap, &mut main.optimizer, &device)?;
        match &meta.partial {
            Some(p) if p.batches_done > loaders.train.num_batches() => {
                return Err(RunError::Checkpoint {
                    path: last_path,
                    reason: format!(
                        "it stopped after batch {} of epoch {}, which has only {} batches",
                        p.batches_done,
                        meta.epochs_done + 1,
                        loaders.train.num_batches()
                    ),
                })
            }
            Some(p) => reporter.stage(&format!(
                "resuming {} in epoch {} after batch {}",
                config.run_name(),
                meta.epochs_done + 1,
                p.batches_done
            )),
            None => reporter.stage(&format!("resuming {} after epoch {}", config.run_name(), meta.epochs_done)),
        }
    }
    if let (Some(g), false) = (&group, follower) {
        write_metrics(&dir, &meta.history)?;
        meet(g.as_ref(), false, resuming)?;
    } else if !follower {
        write_metrics(&dir, &meta.history)?;
    }
    // Data parallelism: replicas 1.. start from replica 0's weights and
    // optimizer state, and meet in the gradient all-reduce of every step.
    let local_replicas = if group.is_some() { 1 } else { config.replicas };
    let mut others = (1..local_replicas).map(|_| build_replica()).collect::<Result<Vec<_>>>()?;
    for other in &mut others {
        other.copy_from(&main)?;
    }
    let collectives: Vec<Box<dyn Collective>> = match group {
        Some(g) => vec![g],
        None if config.replicas == 1 => vec![Box::new(Solo)],
        None => ThreadGroup::new(config.replicas)?.into_iter().map(|g| Box::new(g) as Box<dyn Collective>).collect(),
    };
    let rank = collectives[0].rank();

    let schedule = config.lr_schedule(loaders.train.num_batches());
    let interrupted = |signal, epoch: usize, batches_done| RunError::Interrupted {
        run: config.run_name(),
        signal,
        epoch: epoch + 1,
        batches_done,
        checkpoint: last_path.clone(),
    };
    for (ran, epoch) in (meta.epochs_done..config.epochs).enumerate() {
        if options.stop_after.is_some_and(|n| ran >= n) {
            return Ok(RunOutcome { dir, summary: None });
        }
        let partial = meta.partial.take();
        let remote = (local_replicas < config.replicas).then(|| collectives[0].as_ref());
        if let Some(signal) = stop_before_epoch(remote)? {
            return Err(interrupted(signal, epoch, partial.map_or(0, |p| p.batches_done)));
        }
        // The dropout masks of an epoch are a function of (seed, epoch,
        // replica) only; a mid-epoch checkpoint carries the generators' states.
        main.model.reseed_dropout(dropout_seed(config.data_seed(), epoch, rank));
        let main_state = match rank {
            0 => partial.as_ref().and_then(|p| p.dropout_state),
            r => partial.as_ref().and_then(|p| p.replica_dropout_states.get(r - 1).copied()),
        };
        if let Some(state) = main_state {
            main.model.reseed_dropout(state);
        }
        for (i, other) in others.iter().enumerate() {
            other.model.reseed_dropout(dropout_seed(config.data_seed(), epoch, i + 1));
            if let Some(&state) = partial.as_ref().and_then(|p| p.replica_dropout_states.get(i)) {
                other.model.reseed_dropout(state);
            }
        }
        let step = EpochStep {
            loader: &loaders.train,
            strategy: strategy.as_ref(),
            teacher: teacher.as_deref(),
            schedule: &schedule,
            epoch,
            epochs: config.epochs,
            dir: &dir,
        };
        // A multi-process run's checkpoint holds the sums of all processes:
        // the leader carries them on, the others start from zero.
        let partial = match (rank, partial) {
            (0, p) => p,
            (_, p) => p.map(|p| PartialEpoch { batches_done: p.batches_done, lr: p.lr, ..Default::default() }),
        };
        // Replicas in other processes carry their own share of the sums and
        // their dropout states: the leader gathers them.
        let (mut sums, stopped) = step.train_replicas(&mut main, &mut others, &collectives, partial, reporter)?;
        if local_replicas < config.replicas {
            gather_sums(&mut sums, collectives[0].as_ref())?;
        }
        let Some(lock) = &lock else {
            // A follower: the leader evaluates and writes.
            if let Some(signal) = stopped {
                return Err(interrupted(signal, epoch, sums.batches_done));
            }
            continue;
        };
        if let Some(signal) = stopped {
            let batches_done = sums.batches_done;
            meta.partial = Some(sums);
            lock.verify()?;
            save_checkpoints(&dir, &main.varmap, &main.optimizer, &meta, false, false)?;
            return Err(interrupted(signal, epoch, batches_done));
        }
        let mut record = epoch_record(epoch, &sums);
        let started = Instant::now();
        let (test_loss, acc) = evaluate(main.model.as_ref(), &loaders.test)?;
        record.seconds += started.elapsed().as_secs_f64();
        record.test_loss = test_loss;
        record.test_top1 = acc.top1_percent();
        record.test_top5 = acc.top5_percent();
        let improved = meta.history.iter().all(|r| record.test_top1 >= r.test_top1);
        meta.history.push(record.clone());
        meta.epochs_done = epoch + 1;
        lock.verify()?;
        save_checkpoints(&dir, &main.varmap, &main.optimizer, &meta, improved, config.keep_epochs.contains(&(epoch + 1)))?;
        write_metrics(&dir, &meta.history)?;
        reporter.epoch_end(&record);
    }

    let Some(lock) = lock else {
        return Ok(RunOutcome { dir, summary: None });
    };
    let best = meta.history.iter().fold(None::<&EpochRecord>, |best, r| match best {
        Some(b) if b.test_top1 > r.test_top1 => Some(b),
        _ => Some(r),
    });
    let (Some(best), Some(last)) = (best.cloned(), meta.history.last().cloned()) else {
        return Err(RunError::Checkpoint { path: last_path, reason: "no epoch records to summarise".into() });
    };
    let summary = Summary {
        run: config.run_name(),
        model: config.model.name.clone(),
        dataset: config.data.dataset.name().into(),
        method: config.strategy.method().into(),
        seed: config.seed,
        epochs: config.epochs,
        best,
        last,
        teacher_top1,
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| RunError::Checkpoint { path: dir.join(SUMMARY), reason: format!("cannot encode the summary: {e}") })?;
    lock.verify()?;
    write_atomic(&dir.join(SUMMARY), json.as_bytes())?;
    Ok(RunOutcome { dir, summary: Some(summary) })
}

/// A last training batch of one image makes BatchNorm's batch variance
/// degenerate: named error before training instead of a NaN later.
/// With data parallelism, every replica needs an image of the last batch,
/// and two with BatchNorm.
fn check_last_batch(config: &ExperimentConfig, train: &Loader, varmap: &SeededVarMap) -> Result<()> {
    let (images, batch_size, replicas) = (train.len(), config.optim.batch_size, config.replicas);
    let has_batch_norm = || varmap.named_vars().iter().any(|(name, _)| name.ends_with("running_var"));
    let last = images % batch_size;
    if !config.data.drop_last && images > 1 && last == 1 && has_batch_norm() {
        return Err(RunError::SingleImageBatch { what: config.run_name(), images, batch_size });
    }
    let smallest = if config.data.drop_last || last == 0 { batch_size.min(images) } else { last };
    let share = smallest / replicas;
    if share == 0 || (share == 1 && has_batch_norm()) {
        return Err(crate::error::config_err(
            "replicas",
            format!(
                "{replicas} replicas share a batch of {smallest} images ({images} training images in batches of \
                 {batch_size}), leaving a replica {share} image(s){}; use fewer replicas, another optim.batch_size, or \
                 data.drop_last = true",
                if share == 1 { ", which BatchNorm cannot normalise" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// One data-parallel replica: its variables (BatchNorm statistics its own),
/// network and optimizer. Replica 0 is the one checkpointed and evaluated.
struct Replica {
    varmap: SeededVarMap,
    model: Box<dyn Model>,
    optimizer: Optimizer,
    params: Vec<(String, Var)>,
}

impl Replica {
    /// Takes `other`'s weights, statistics and optimizer state.
    fn copy_from(&mut self, other: &Replica) -> Result<()> {
        let source: std::collections::HashMap<String, Var> = other.varmap.named_vars().into_iter().collect();
        for (name, var) in self.varmap.named_vars() {
            if let Some(v) = source.get(&name) {
                var.set(v.as_tensor())?;
            }
        }
        self.optimizer.load_state(other.optimizer.state().into_iter().collect())?;
        // Another thread trains this replica next.
        self.synchronize()
    }

    /// Waits for this thread's work on the replica's device. On CUDA each
    /// thread has its own stream, and streams do not wait for each other: a
    /// replica that another thread trains next (the epoch's threads are
    /// new ones) must be up to date first.
    fn synchronize(&self) -> Result<()> {
        if let Some((_, var)) = self.params.first() {
            var.device().synchronize()?;
        }
        Ok(())
    }
}

/// Adds up the epoch sums of replicas in other processes (one replica
/// each), exactly as [`EpochStep::train_replicas`] adds up those of threads:
/// in rank order, in f64, the longest time, rank 0's dropout state in
/// `dropout_state` and the others' after it. Each rank's numbers travel
/// bit-exactly in its own slot of one all-reduce, as 16-bit pieces (f32
/// holds those exactly, and the other ranks add zeros to them).
fn gather_sums(sums: &mut PartialEpoch, group: &dyn Collective) -> Result<()> {
    const WORDS: usize = 8;
    let (rank, world) = (group.rank(), group.world_size());
    let words = [
        sums.images as u64,
        sums.correct as u64,
        sums.loss_sum.to_bits(),
        sums.hard_sum.to_bits(),
        sums.soft_sum.to_bits(),
        sums.seconds.to_bits(),
        u64::from(sums.dropout_state.is_some()),
        sums.dropout_state.unwrap_or(0),
    ];
    let mut slots = vec![0f32; world * WORDS * 4];
    for (w, word) in words.iter().enumerate() {
        for k in 0..4 {
            slots[(rank * WORDS + w) * 4 + k] = ((word >> (16 * k)) & 0xFFFF) as f32;
        }
    }
    let n = slots.len();
    let all = group.all_reduce_sum(&Tensor::from_vec(slots, n, &Device::Cpu)?)?.to_vec1::<f32>()?;
    let word = |r: usize, w: usize| (0..4).fold(0u64, |acc, k| acc | ((all[(r * WORDS + w) * 4 + k] as u64) << (16 * k)));
    let of_rank = |r: usize| PartialEpoch {
        batches_done: sums.batches_done,
        lr: sums.lr,
        images: word(r, 0) as usize,
        correct: word(r, 1) as usize,
        loss_sum: f64::from_bits(word(r, 2)),
        hard_sum: f64::from_bits(word(r, 3)),
        soft_sum: f64::from_bits(word(r, 4)),
        seconds: f64::from_bits(word(r, 5)),
        dropout_state: (word(r, 6) == 1).then(|| word(r, 7)),
        replica_dropout_states: Vec::new(),
    };
    let mut total = of_rank(0);
    for r in 1..world {
        total.add_replica(&of_rank(r));
    }
    *sums = total;
    Ok(())
}

/// Whether to stop before an epoch: this process's signal, or, in a
/// multi-process run, any process's (decided together, so that every
/// process stops at the same point).
fn stop_before_epoch(group: Option<&dyn Collective>) -> Result<Option<i32>> {
    let mine = stop_requested();
    let Some(g) = group.filter(|g| g.world_size() > 1) else { return Ok(mine) };
    let any = any_replica(g, &[mine.is_some()])?[0];
    Ok(any.then(|| mine.unwrap_or(libc::SIGTERM)))
}

/// The epoch's record from its running sums.
fn epoch_record(epoch: usize, p: &PartialEpoch) -> EpochRecord {
    let per = |x: f64| if p.images == 0 { 0.0 } else { x / p.images as f64 };
    EpochRecord {
        epoch: epoch + 1,
        lr: p.lr,
        train_loss: per(p.loss_sum),
        train_hard: per(p.hard_sum),
        train_soft: per(p.soft_sum),
        train_top1: 100.0 * per(p.correct as f64),
        seconds: p.seconds,
        images_per_sec: p.images as f64 / p.seconds.max(1e-9),
        ..Default::default()
    }
}

/// One epoch of training.
struct EpochStep<'a> {
    loader: &'a Loader,
    strategy: &'a dyn Strategy,
    teacher: Option<&'a dyn Model>,
    schedule: &'a tfkd_core::schedule::LrSchedule,
    epoch: usize,
    epochs: usize,
    dir: &'a Path,
}

impl EpochStep<'_> {
    /// Trains replica 0 (`main`, on this thread, reporting) and the others
    /// (one thread each) through the epoch, from `resume` on. Returns the
    /// epoch's sums over all replicas, and the signal when a stop was asked
    /// for (every replica stops after the same step).
    fn train_replicas(
        &self,
        main: &mut Replica,
        others: &mut [Replica],
        collectives: &[Box<dyn Collective>],
        resume: Option<PartialEpoch>,
        reporter: &mut dyn Reporter,
    ) -> Result<(PartialEpoch, Option<i32>)> {
        let resume = resume.unwrap_or_default();
        // The sums so far are replica 0's to carry; the others start at 0.
        let fresh = PartialEpoch { batches_done: resume.batches_done, lr: resume.lr, ..Default::default() };
        if others.is_empty() {
            return self.train(main, collectives[0].as_ref(), None, resume, reporter);
        }
        // Replicas that are threads on one GPU take turns at it: they share
        // candle's cuBLAS handle and tfkd's cuDNN handle, whose scratch
        // memory is not meant for two streams at once. (DataParallel's
        // numbers, not its speed: `tfkd train` says so.)
        let gpu_turns = main.params.first().is_some_and(|(_, v)| v.device().is_cuda()).then(|| std::sync::Mutex::new(()));
        let turns = gpu_turns.as_ref();
        let (first, rest) = std::thread::scope(|scope| {
            let handles: Vec<_> = others
                .iter_mut()
                .zip(&collectives[1..])
                .map(|(replica, collective)| {
                    let fresh = fresh.clone();
                    scope.spawn(move || {
                        let r = self.train(replica, collective.as_ref(), turns, fresh, &mut Silent);
                        // Also after a failure: the replica's buffers are
                        // freed on another thread.
                        let synchronized = replica.synchronize();
                        let r = r.and_then(|done| synchronized.map(|()| done));
                        if let Err(e) = &r {
                            collective.abort(&format!("replica {}: {e}", collective.rank()));
                        }
                        r
                    })
                })
                .collect();
            let first = self.train(main, collectives[0].as_ref(), turns, resume, reporter);
            if let Err(e) = &first {
                collectives[0].abort(&format!("replica 0: {e}"));
            }
            let rest: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(RunError::Replica("a replica's thread panicked".into()))))
                .collect();
            (first, rest)
        });
        // The replica that failed first explains it; the others only say
        // that they stopped because of it.
        let mut results = Vec::with_capacity(rest.len() + 1);
        results.push(first);
        results.extend(rest);
        let own = |r: &Result<_>| {
            r.as_ref().is_err_and(|e: &RunError| !matches!(e, RunError::Core(c) if matches!(**c, tfkd_core::Error::PeerStopped(_))))
        };
        if let Some(pos) = results.iter().position(own).or_else(|| results.iter().position(Result::is_err)) {
            results.swap_remove(pos)?;
        }
        let mut results = results.into_iter().collect::<Result<Vec<_>>>()?.into_iter();
        let (mut sums, stopped) = results.next().ok_or_else(|| RunError::Replica("replica 0 returned nothing".into()))?;
        for (p, _) in results {
            sums.add_replica(&p);
        }
        Ok((sums, stopped))
    }

    /// One replica's epoch from `p.batches_done` on: its share of every
    /// batch, its sums added to `p`'s. With `turns` (replicas that are
    /// threads on one GPU), the replica holds the lock while it uses the
    /// GPU, and finishes its work there before it lets go.
    fn train(
        &self,
        replica: &mut Replica,
        collective: &dyn Collective,
        turns: Option<&std::sync::Mutex<()>>,
        mut p: PartialEpoch,
        reporter: &mut dyn Reporter,
    ) -> Result<(PartialEpoch, Option<i32>)> {
        let started = Instant::now();
        let (epoch, model) = (self.epoch, replica.model.as_ref());
        let (rank, world) = (collective.rank(), collective.world_size());
        reporter.epoch_start(epoch + 1, self.epochs, self.loader.num_batches());
        let (seconds_before, first) = (p.seconds, p.batches_done);
        for (iteration, batch) in self.loader.epoch_from(epoch as u64, first).enumerate() {
            let iteration = first + iteration;
            let batch = batch?;
            p.lr = self.schedule.lr(epoch, iteration);
            replica.optimizer.set_learning_rate(p.lr)?;
            let global = batch.labels.dim(0)?;
            let (images, labels) = if world == 1 {
                (batch.images, batch.labels)
            } else {
                let (start, end) = (global * rank / world, global * (rank + 1) / world);
                (batch.images.narrow(0, start, end - start)?, batch.labels.narrow(0, start, end - start)?)
            };
            // The turn covers what runs through the cuBLAS and cuDNN handles
            // (forward, loss, backward); the sums and the step after it do not.
            let mut turn = turns.map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
            let logits = model.forward_t(&images, true)?;
            let teacher_logits = match self.teacher {
                Some(t) => Some(t.forward_t(&images, false)?.detach()),
                None => None,
            };
            let terms = self.strategy.loss(&logits, teacher_logits.as_ref(), &labels).map_err(|e| match e {
                e @ tfkd_core::Error::NonFinite { .. } => RunError::Diverged {
                    epoch: epoch + 1,
                    iteration,
                    cause: Box::new(e),
                    epochs_done: epoch,
                    checkpoint: self.dir.join(LAST),
                },
                e => e.into(),
            })?;
            let n = labels.dim(0)?;
            let stop = if world == 1 {
                replica.optimizer.backward_step(&terms.total)?;
                stop_requested()
            } else {
                // The global batch's gradient: every replica's, weighted by
                // its share, summed; the stop flag rides along, so that all
                // replicas stop after the same step.
                let mut grads = tfkd_core::optim::backward(&terms.total)?;
                if let Some(done) = turn.take() {
                    // The others take their turns while this one waits for them.
                    logits.device().synchronize()?;
                    drop(done);
                }
                let flag = f32::from(u8::from(stop_requested().is_some()));
                let weight = n as f64 / global as f64;
                let sums = all_reduce_gradients(&mut grads, &replica.params, weight, &[flag], collective)?;
                replica.optimizer.step(&grads)?;
                (sums[0] > 0.0).then(|| stop_requested().unwrap_or(libc::SIGTERM))
            };
            // What the step reports, in one read: on a GPU each read waits
            // for the device. (The loss checked the labels.)
            let hits = top1_hits(&logits.detach(), &labels)?.to_dtype(terms.total.dtype())?;
            let no_soft = terms.total.zeros_like()?;
            let reported = [&terms.total, &terms.hard, terms.soft.as_ref().unwrap_or(&no_soft), &hits];
            let values = Tensor::stack(&reported, 0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let [loss, hard, soft, correct] = values[..] else {
                unreachable!("four values were stacked")
            };
            p.loss_sum += loss * n as f64;
            p.hard_sum += hard * n as f64;
            if terms.soft.is_some() {
                p.soft_sum += soft * n as f64;
            }
            p.correct += correct as usize;
            p.images += n;
            p.batches_done = iteration + 1;
            reporter.batch_end(iteration, n, loss);
            if stop.is_some() {
                p.seconds = seconds_before + started.elapsed().as_secs_f64();
                p.dropout_state = model.dropout_state();
                return Ok((p, stop));
            }
        }
        p.seconds = seconds_before + started.elapsed().as_secs_f64();
        p.dropout_state = model.dropout_state();
        Ok((p, None))
    }
}

fn model_tensors(varmap: &SeededVarMap) -> Vec<(String, Tensor)> {
    varmap.named_vars().into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect()
}

fn save_checkpoints(
    dir: &Path,
    varmap: &SeededVarMap,
    optimizer: &Optimizer,
    meta: &CheckpointMeta,
    best: bool,
    keep: bool,
) -> Result<()> {
    let model = model_tensors(varmap);
    let mut all = model.clone();
    all.extend(optimizer.state().into_iter().map(|(name, t)| (format!("{OPTIM_PREFIX}{name}"), t)));
    save_tensors(&dir.join(LAST), &all, Some(meta))?;
    if best {
        save_tensors(&dir.join(BEST), &model, None)?;
    }
    if keep {
        save_tensors(&dir.join(epoch_file(meta.epochs_done)), &model, None)?;
    }
    Ok(())
}

fn restore(path: &Path, varmap: &SeededVarMap, optimizer: &mut Optimizer, device: &Device) -> Result<CheckpointMeta> {
    let loaded = load_tensors(path, device)?;
    let bad = |reason: String| RunError::Checkpoint { path: path.into(), reason };
    let meta = loaded.meta.ok_or_else(|| bad("no tfkd metadata: not a resumable checkpoint".into()))?;
    if meta.history.len() != meta.epochs_done {
        return Err(bad(format!(
            "its metadata records {} epochs done but holds {} epoch records",
            meta.epochs_done,
            meta.history.len()
        )));
    }
    for (name, var) in varmap.named_vars() {
        let value = loaded.model.get(&name).ok_or_else(|| bad(format!("missing tensor {name}")))?;
        if value.dims() != var.dims() {
            return Err(bad(format!("tensor {name} has shape {:?}, the model {:?}", value.dims(), var.dims())));
        }
        var.set(value)?;
    }
    optimizer.load_state(loaded.optim).map_err(|e| bad(e.to_string()))?;
    Ok(meta)
}

fn write_metrics(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let path = dir.join(METRICS);
    let mut text = String::new();
    for r in history {
        let line = serde_json::to_string(r)
            .map_err(|e| RunError::Checkpoint { path: path.clone(), reason: format!("cannot encode epoch {}: {e}", r.epoch) })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes())
}
