//! Runs a plan: independent runs side by side on `jobs` workers, each run
//! only after its teacher's run has finished.
//!
//! On a CPU the quick profile's networks are so narrow that one training step
//! is mostly per-op overhead and thread barriers, which a second thread does
//! not shorten; two runs at once, one thread each, use two cores fully.
//! Every run is deterministic whatever the number of threads, so `--jobs`
//! changes the wall-clock time, not the numbers.

use super::plan::{Plan, PlannedRun};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Instant;
use tfkd_runner::{run_experiment, RunOptions};

/// Where the workers are.
#[derive(Default)]
struct Board<'a> {
    pending: Vec<&'a PlannedRun>,
    done: BTreeSet<String>,
    /// The first failure: no run starts after it.
    failed: Option<(String, anyhow::Error)>,
    running: usize,
    started: usize,
}

impl<'a> Board<'a> {
    /// The first pending run whose teacher is finished (or not part of the plan).
    fn take_ready(&mut self, plan: &Plan) -> Option<&'a PlannedRun> {
        let ready = |r: &&PlannedRun| match &r.teacher {
            None => true,
            Some(t) => !plan.runs.contains_key(t) || self.done.contains(t),
        };
        let i = self.pending.iter().position(ready)?;
        Some(self.pending.remove(i))
    }
}

/// Trains every run of `plan` (finished ones are skipped, interrupted ones
/// resumed), `jobs` at a time with `threads` compute threads each (`None`:
/// the global pool). After the first failure no run starts; its error is
/// returned once the runs in flight have ended.
pub fn execute(plan: &Plan, jobs: usize, threads: Option<usize>) -> Result<()> {
    set_aside_runs_missing_kept_epochs(plan)?;
    let ordered = plan.ordered();
    let total = ordered.len();
    let board = Mutex::new(Board { pending: ordered, ..Default::default() });
    let changed = Condvar::new();
    let jobs = jobs.clamp(1, total.max(1));
    let pool = match threads {
        Some(t) => Some(
            (0..jobs)
                .map(|_| rayon::ThreadPoolBuilder::new().num_threads(t).build())
                .collect::<Result<Vec<_>, _>>()
                .context("cannot start the worker thread pools")?,
        ),
        None => None,
    };
    std::thread::scope(|scope| {
        for worker in 0..jobs {
            let (board, changed, pool) = (&board, &changed, pool.as_ref().map(|p| &p[worker]));
            scope.spawn(move || loop {
                let (run, index) = {
                    let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if b.failed.is_some() {
                            break (None, 0);
                        }
                        if let Some(run) = b.take_ready(plan) {
                            b.running += 1;
                            b.started += 1;
                            break (Some(run), b.started);
                        }
                        if b.pending.is_empty() || b.running == 0 {
                            break (None, 0);
                        }
                        b = changed.wait(b).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some(run) = run else {
                    changed.notify_all();
                    return;
                };
                let name = run.config.name.clone().unwrap_or_default();
                println!("[{index}/{total}] {name}");
                let started = Instant::now();
                let train = || run_experiment(&run.config, &RunOptions { resume: true, ..Default::default() }, &mut tfkd_runner::Silent);
                let outcome = match pool {
                    Some(p) => p.install(train),
                    None => train(),
                };
                let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
                b.running -= 1;
                match outcome {
                    Ok(outcome) => {
                        if let Some(s) = outcome.summary {
                            println!(
                                "    {name}: best {:.2}% (epoch {}), last {:.2}%, {:.0}s",
                                s.best.test_top1,
                                s.best.epoch,
                                s.last.test_top1,
                                started.elapsed().as_secs_f64()
                            );
                        }
                        b.done.insert(name);
                    }
                    Err(e) => {
                        eprintln!("    {name} failed: {e:#}");
                        if b.failed.is_none() {
                            b.failed = Some((name, e.into()));
                        }
                    }
                }
                changed.notify_all();
            });
        }
    });
    let board = board.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some((name, e)) = board.failed {
        return Err(e.context(format!("run {name}")));
    }
    if !board.pending.is_empty() {
        let names: Vec<_> = board.pending.iter().map(|r| r.config.name.clone().unwrap_or_default()).collect();
        return Err(anyhow!("runs whose teacher never finished: {}", names.join(", ")));
    }
    Ok(())
}

/// A run finished by an earlier reproduction that did not need its
/// intermediate checkpoints (say Table 3's ResNet18 baseline) lacks the
/// `epoch-<e>.safetensors` a De-KD cell of this plan loads. Such a run is
/// moved aside to `<run>.before-keep-epoch-<e>` (nothing is deleted) and
/// trained again with `keep_epochs`; runs are deterministic, so on the same
/// machine it gets the same numbers.
pub(super) fn set_aside_runs_missing_kept_epochs(plan: &Plan) -> Result<()> {
    for run in plan.runs.values() {
        let dir = run.config.run_dir();
        if !tfkd_runner::run_dir::is_finished(&dir) {
            continue;
        }
        let Some(&missing) =
            run.config.keep_epochs.iter().find(|&&e| !dir.join(tfkd_runner::train::epoch_file(e)).is_file())
        else {
            continue;
        };
        // Under the run's lock: no process is writing the run being moved.
        let lock = tfkd_runner::run_dir::RunLock::acquire(&dir, &run.config.run_name(), &mut |m: &str| println!("{m}"))?;
        let aside = tfkd_runner::run_dir::move_aside(&dir, &format!("before-keep-epoch-{missing}"))?;
        drop(lock);
        println!(
            "{}: finished without the epoch-{missing} checkpoint a De-KD cell needs; training it again (the earlier run is kept at {})",
            run.config.run_name(),
            aside.display()
        );
    }
    Ok(())
}
