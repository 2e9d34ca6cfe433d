//! The Slurm executor of `reproduce-table --executor slurm`: the plan as job
//! arrays, one array task per run, submitted in waves by dependency depth.
//!
//! - Wave 0 holds the runs whose teacher is finished (or who have none);
//!   wave k + 1 the students of wave k's runs, with
//!   `--dependency=afterok:<the teachers' array tasks>`, which also names
//!   teachers still queued or running from an earlier submission.
//! - Every task runs `tfkd train --config <out>/slurm/configs/<run>.toml
//!   --auto-resume`. The configs are the planned ones, run name included,
//!   and every path in them is absolute (`reproduce::run` makes `--out` and
//!   `--data-dir` absolute before planning, for both executors: see there).
//! - `<out>/slurm/submitted.json` (the ledger) maps each submitted run to its
//!   array task, `JOBID_TASK`. Submitting again skips finished runs and runs
//!   whose task squeue still lists (pending, running, requeued); a run whose
//!   task ended without a summary is submitted again and resumes.
//! - The batch script forwards the `--signal=B:USR1@<s>` warning to tfkd,
//!   which finishes its step, writes its resume checkpoint and exits with
//!   75; the script then requeues its own task (see [`batch_script`]).
//! - The tfkd binary is copied to `<out>/slurm/bin/tfkd-<digest>`, so that
//!   a rebuild while jobs are queued changes none of them, and a requeued
//!   task resumes with the binary it started with.

use super::plan::{Plan, PlannedRun};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use tfkd_runner::device::DeviceSpec;
use tfkd_runner::run_dir::{is_finished, EXIT_INTERRUPTED};

/// The Slurm options of `reproduce-table` (used with `--executor slurm`).
#[derive(Clone, Debug, clap::Args)]
pub struct SlurmArgs {
    /// Slurm partition (`--partition`); default: the cluster's.
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per run (`--gres=gpu:G`); default: 1 on `--device cuda`, else 0.
    #[arg(long)]
    pub gpus_per_run: Option<u32>,
    /// Time limit per run (`--time`, e.g. `12:00:00`); default: the partition's.
    #[arg(long)]
    pub time: Option<String>,
    /// Account to charge (`--account`).
    #[arg(long)]
    pub account: Option<String>,
    /// CPUs per run (`--cpus-per-task`; on the CPU also the run's compute
    /// threads); default: 1 for the smoke and quick profiles on the CPU
    /// (as `--jobs` runs them locally), else 4.
    #[arg(long)]
    pub cpus_per_run: Option<u32>,
    /// An extra sbatch option, verbatim into every batch script (repeat it):
    /// `--sbatch-arg=--qos=long --sbatch-arg=--constraint=a100`.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// The `tfkd` binary the tasks run; default: built with the cargo that
    /// runs this xtask (same profile and features), else the one beside it.
    #[arg(long)]
    pub tfkd_bin: Option<PathBuf>,
    /// Seconds before the time limit at which Slurm warns the batch script
    /// (`--signal=B:USR1@<s>`): time to write the resume checkpoint.
    #[arg(long, default_value_t = DEFAULT_SIGNAL_SECONDS)]
    pub signal_seconds: u32,
}

impl Default for SlurmArgs {
    fn default() -> Self {
        SlurmArgs {
            partition: None,
            gpus_per_run: None,
            time: None,
            account: None,
            cpus_per_run: None,
            sbatch_args: Vec::new(),
            tfkd_bin: None,
            signal_seconds: DEFAULT_SIGNAL_SECONDS,
        }
    }
}

/// `--signal-seconds`' default.
const DEFAULT_SIGNAL_SECONDS: u32 = 120;

/// What a submission did.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    /// Runs submitted now.
    pub submitted: Vec<String>,
    /// Runs queued or running from an earlier submission (not submitted again).
    pub active: Vec<String>,
    /// Runs already finished.
    pub finished: Vec<String>,
    /// The array jobs submitted now, one per wave.
    pub jobs: Vec<String>,
}

impl Submission {
    /// Every run is finished: the reports can be written.
    pub fn complete(&self) -> bool {
        self.submitted.is_empty() && self.active.is_empty()
    }
}

/// One submitted run in the ledger.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// Its array task, `JOBID_TASK`, as squeue's `%i` prints it.
    pub job: String,
    /// The wave of its submission.
    pub wave: usize,
    /// The batch script.
    pub script: PathBuf,
    /// When it was submitted, seconds since the Unix epoch.
    pub submitted_unix: u64,
}

/// `<out>/slurm/submitted.json`: run name → its latest array task.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// The runs.
    pub runs: BTreeMap<String, LedgerEntry>,
}

impl Ledger {
    /// The ledger at `path`; none yet is an empty one.
    pub fn load(path: &Path) -> Result<Ledger> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!("{} is not a submission ledger (move it away to forget earlier submissions)", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes it atomically (a new file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Runs a Slurm client command and returns its stdout; a missing command
/// and a failing one are errors that name it (and show its stderr).
fn slurm(program: &str, args: &[String]) -> Result<String> {
    let line = std::iter::once(program.to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
    let output = match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "Slurm's {program} not found on PATH (a laptop can run a one-node cluster: scripts/slurm/local-cluster.sh start)"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot run `{line}`")),
    };
    if !output.status.success() {
        bail!("`{line}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The array tasks and jobs squeue lists (pending, running, requeued,
/// completing), one id per task (`-r`: `JOBID_TASK` for array tasks).
pub fn active_jobs() -> Result<BTreeSet<String>> {
    let out = slurm("squeue", &["-h".into(), "-r".into(), "-o".into(), "%i".into()])?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Where the executor's files go.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn ledger(&self) -> PathBuf {
        self.root.join("submitted.json")
    }
    fn config(&self, run: &str) -> PathBuf {
        self.root.join("configs").join(format!("{run}.toml"))
    }
    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}

/// Everything one submission needs besides the plan.
pub struct Job<'a> {
    /// The Slurm options.
    pub slurm: &'a SlurmArgs,
    /// The device every run trains on.
    pub device: DeviceSpec,
    /// The reproduction's output folder (absolute).
    pub out: &'a Path,
    /// A short name of the tables, for the job names (`8`, `3+4`, `all`).
    pub tables: String,
    /// Write and print, submit nothing.
    pub dry_run: bool,
    /// The default CPUs per run (1 for the scaled profiles on the CPU).
    pub default_cpus: u32,
}

/// Submits the runs of `plan` that are neither finished nor queued.
pub fn submit(plan: &Plan, job: &Job) -> Result<Submission> {
    let layout = Layout { root: job.out.join("slurm") };
    for run in plan.runs.values() {
        let c = &run.config;
        ensure!(
            c.out_dir.is_absolute() && c.data.root.is_absolute(),
            "run {}: the Slurm executor needs absolute paths in its config",
            c.run_name()
        );
    }
    if let DeviceSpec::Cuda(n) = job.device {
        ensure!(n == 0, "--device cuda:{n}: Slurm gives every task its own GPUs, numbered from 0; use --device cuda");
    }
    for dir in [layout.root.join("configs"), layout.root.join("jobs"), layout.logs(), layout.root.join("bin")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // One submission at a time per output folder (the ledger is read, then
    // written).
    let _lock = if job.dry_run {
        None
    } else {
        Some(tfkd_runner::run_dir::RunLock::acquire(&layout.root.join("submission"), "the Slurm submission", &mut |m: &str| {
            println!("{m}")
        })?)
    };
    let mut ledger = Ledger::load(&layout.ledger())?;
    let queued = match active_jobs() {
        Ok(q) => q,
        Err(e) if job.dry_run => {
            println!("note: {e:#}; the dry run counts no run as queued");
            BTreeSet::new()
        }
        Err(e) => return Err(e.context("cannot tell which runs are queued, so nothing is submitted")),
    };
    if !job.dry_run {
        super::execute::set_aside_runs_missing_kept_epochs(plan)?;
    }

    let mut outcome = Submission::default();
    let mut to_submit: Vec<&PlannedRun> = Vec::new();
    for run in plan.ordered() {
        let name = run.config.run_name();
        if is_finished(&run.config.run_dir()) {
            outcome.finished.push(name);
        } else if ledger.runs.get(&name).is_some_and(|e| queued.contains(&e.job)) {
            warn_if_queued_with_another_config(&layout, run);
            outcome.active.push(name);
        } else {
            to_submit.push(run);
        }
    }
    if to_submit.is_empty() {
        println!(
            "slurm: nothing to submit: {} finished, {} queued or running",
            outcome.finished.len(),
            outcome.active.len()
        );
        return Ok(outcome);
    }

    let tfkd = tfkd_binary(job, &layout)?;
    let waves = waves(&to_submit, &outcome.active);
    let first = next_submission_number(&layout.root.join("jobs"))?;
    let mut new_ids: HashMap<String, String> = HashMap::new();
    for (k, wave) in waves.iter().enumerate() {
        let mut configs = Vec::new();
        let mut after = BTreeSet::new();
        for run in wave {
            let name = run.config.run_name();
            let path = layout.config(&name);
            write_atomic(&path, run.config.try_to_toml()?.as_bytes())?;
            configs.push(path);
            if let Some(t) = &run.teacher {
                if let Some(id) = new_ids.get(t) {
                    after.insert(id.clone());
                } else if outcome.active.contains(t) {
                    after.insert(ledger.runs[t].job.clone());
                }
            }
        }
        let name = format!("tfkd-{}-w{k}", job.tables);
        let script = if job.dry_run {
            layout.root.join("jobs").join(format!("dry-run-w{k}.sh"))
        } else {
            layout.root.join("jobs").join(format!("{first:04}-w{k}.sh"))
        };
        let text = batch_script(job, &layout, &name, &tfkd, &configs)?;
        write_atomic(&script, text.as_bytes())?;
        let mut args = vec!["--parsable".to_string()];
        if !after.is_empty() {
            args.push(format!("--dependency=afterok:{}", after.iter().cloned().collect::<Vec<_>>().join(":")));
        }
        args.push(script.display().to_string());
        println!("wave {k}: {} run(s): sbatch {}", wave.len(), args.join(" "));
        if job.dry_run {
            for (i, run) in wave.iter().enumerate() {
                let name = run.config.run_name();
                new_ids.insert(name.clone(), format!("<wave {k} task {i}>"));
                outcome.submitted.push(name);
            }
            continue;
        }
        let out = slurm("sbatch", &args)?;
        let id = out.trim().split(';').next().unwrap_or("").trim().to_string();
        ensure!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "sbatch printed no job id: {out:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        for (i, run) in wave.iter().enumerate() {
            let name = run.config.run_name();
            let task = format!("{id}_{i}");
            println!("    {task} {name}");
            new_ids.insert(name.clone(), task.clone());
            ledger.runs.insert(name.clone(), LedgerEntry { job: task, wave: k, script: script.clone(), submitted_unix: now });
            outcome.submitted.push(name);
        }
        // Saved after every array: a failure later loses no job id.
        ledger.save(&layout.ledger())?;
        outcome.jobs.push(id);
    }
    println!(
        "slurm: {} run(s) {} in {} array(s), {} queued or running already, {} finished; logs in {}",
        outcome.submitted.len(),
        if job.dry_run { "would be submitted" } else { "submitted" },
        waves.len(),
        outcome.active.len(),
        outcome.finished.len(),
        layout.logs().display()
    );
    Ok(outcome)
}

/// A queued run keeps the config it was submitted with; say so when this
/// plan wants another (more kept epochs, by a later table).
fn warn_if_queued_with_another_config(layout: &Layout, run: &PlannedRun) {
    let path = layout.config(&run.config.run_name());
    let queued = std::fs::read_to_string(&path).ok().and_then(|t| tfkd_runner::ExperimentConfig::from_toml(&t).ok());
    if queued.is_some_and(|q| q != run.config) {
        println!(
            "warning: {} is queued with the config in {}, not this plan's (kept epochs?); submit again once it has ended",
            run.config.run_name(),
            path.display()
        );
    }
}

/// The runs to submit grouped by dependency depth: a run whose teacher is
/// submitted too goes one wave after it; one whose teacher is still queued
/// from an earlier submission goes in wave 1 at least, so that wave 0 waits
/// for nothing.
fn waves<'p>(to_submit: &[&'p PlannedRun], active: &[String]) -> Vec<Vec<&'p PlannedRun>> {
    let by_name: HashMap<String, &PlannedRun> = to_submit.iter().map(|r| (r.config.run_name(), *r)).collect();
    fn depth(run: &PlannedRun, by_name: &HashMap<String, &PlannedRun>, active: &[String], seen: usize) -> usize {
        match &run.teacher {
            Some(t) if seen < by_name.len() => match by_name.get(t) {
                Some(teacher) => depth(teacher, by_name, active, seen + 1) + 1,
                None => usize::from(active.contains(t)),
            },
            _ => 0,
        }
    }
    let mut waves: Vec<Vec<&PlannedRun>> = Vec::new();
    for run in to_submit {
        let d = depth(run, &by_name, active, 0);
        if waves.len() <= d {
            waves.resize_with(d + 1, Vec::new);
        }
        waves[d].push(run);
    }
    waves.retain(|w| !w.is_empty());
    waves
}

/// The next free number of `<out>/slurm/jobs/NNNN-w<k>.sh`.
fn next_submission_number(dir: &Path) -> Result<u32> {
    let mut last = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.split('-').next().and_then(|n| n.parse::<u32>().ok()) {
            last = last.max(n);
        }
    }
    Ok(last + 1)
}

/// Single-quotes `s` for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One wave's batch script: an array of `configs.len()` tasks, task `i`
/// training `configs[i]`.
///
/// Signals and requeueing:
/// - `--signal=B:USR1@<s>` warns only the batch shell before the time
///   limit; the script forwards it to tfkd (`kill -USR1`), which finishes
///   its step, writes its resume checkpoint and exits with 75 (`EX_TEMPFAIL`).
/// - TERM (preemption, `scancel`, the time limit itself) is sent by Slurm to
///   every process of the job, tfkd included: the script does not forward
///   it (tfkd takes a second signal as "stop at once", without the
///   checkpoint) and keeps waiting for tfkd.
/// - On 75 (or 138, tfkd stopped by the forwarded USR1 outside its training
///   loop) the script runs `scontrol requeue JOBID_TASK`: the task goes back
///   to the queue under the same id, so students' `afterok` still waits for
///   it, and `--auto-resume` continues the run exactly. Measured on Slurm
///   22.05: the requeue takes effect at once (the script is killed right
///   after), and the task waits about two minutes (Slurm's requeue begin
///   time) before it starts again. The script then exits 0: the run is not
///   failed, it continues. When the requeue is refused (the job is being
///   cancelled, or the cluster forbids it) the script exits 75: the task
///   counts as failed, Slurm cancels its students (`--kill-on-invalid-dep`),
///   and the next `reproduce-table` submits the run again (it resumes).
/// - Any other status is the task's: 0 finished, else failed.
fn batch_script(job: &Job, layout: &Layout, name: &str, tfkd: &Path, configs: &[PathBuf]) -> Result<String> {
    let s = job.slurm;
    let cwd = std::env::current_dir().context("the current directory")?;
    let cwd = std::path::absolute(&cwd).unwrap_or(cwd);
    let gpus = s.gpus_per_run.unwrap_or(if matches!(job.device, DeviceSpec::Cuda(_)) { 1 } else { 0 });
    let cpus = s.cpus_per_run.unwrap_or(if gpus > 0 { 4 } else { job.default_cpus }).max(1);
    let mut t = String::from("#!/bin/bash\n");
    let mut opt = |o: String| {
        ensure!(!o.contains('\n'), "sbatch option {o:?} spans lines");
        let _ = writeln!(t, "#SBATCH {o}");
        Ok(())
    };
    opt(format!("--job-name={name}"))?;
    opt(format!("--array=0-{}", configs.len() - 1))?;
    opt(format!("--output={}", layout.logs().join("%A_%a.out").display()))?;
    opt("--open-mode=append".into())?;
    opt(format!("--chdir={}", cwd.display()))?;
    opt("--ntasks=1".into())?;
    opt(format!("--cpus-per-task={cpus}"))?;
    if gpus > 0 {
        opt(format!("--gres=gpu:{gpus}"))?;
    }
    if let Some(time) = &s.time {
        opt(format!("--time={time}"))?;
    }
    if let Some(p) = &s.partition {
        opt(format!("--partition={p}"))?;
    }
    if let Some(a) = &s.account {
        opt(format!("--account={a}"))?;
    }
    opt(format!("--signal=B:USR1@{}", s.signal_seconds))?;
    opt("--requeue".into())?;
    opt("--kill-on-invalid-dep=yes".into())?;
    for extra in &s.sbatch_args {
        opt(extra.clone())?;
    }
    let _ = writeln!(t, "# Written by `cargo xtask reproduce-table --executor slurm`: task i trains configs[i].");
    let _ = writeln!(t, "set -u");
    // Logs go to a file: no colour codes.
    let _ = writeln!(t, "export NO_COLOR=1");
    let _ = writeln!(t, "tfkd={}", quote(&tfkd.display().to_string()));
    let _ = writeln!(t, "configs=(");
    for c in configs {
        let _ = writeln!(t, "  {}", quote(&c.display().to_string()));
    }
    let _ = writeln!(t, ")");
    if job.device.is_cpu() {
        let _ = writeln!(t, "export CANDLE_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{cpus}}}\" RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{cpus}}}\"");
    }
    let interrupted = EXIT_INTERRUPTED;
    t.push_str(&format!(
        r#"task="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
config="${{configs[$SLURM_ARRAY_TASK_ID]}}"
say() {{ echo "tfkd-task $task: $*"; }}
say "$(date -Is) on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}: $config"
pid=""
got_signal=0
got_usr1=0
# Slurm's warning before the time limit reaches this shell only: pass it on.
trap 'got_signal=1; got_usr1=1; say "USR1: asking tfkd to write its resume checkpoint and stop"; [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null' USR1
# TERM reaches tfkd from Slurm itself; a second one would stop it at once.
trap 'got_signal=1; say "TERM: waiting for tfkd to write its resume checkpoint"' TERM
"$tfkd" train --config "$config" --auto-resume &
pid=$!
status=0
while :; do
  got_signal=0
  wait "$pid"
  w=$?
  # 127: tfkd was already waited for (a signal came right after it ended).
  if [ "$w" -eq 127 ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
  status=$w
  # A trap interrupts `wait`: wait again until tfkd itself has ended.
  [ "$got_signal" = 1 ] || break
done
if [ "$status" -eq {interrupted} ] || {{ [ "$got_usr1" = 1 ] && [ "$status" -eq 138 ]; }}; then
  say "tfkd stopped with its resume checkpoint written (status $status): requeueing"
  if scontrol requeue "$task"; then
    exit 0
  fi
  say "scontrol requeue failed: the task ends as failed; submitting the table again resumes the run"
  exit {interrupted}
fi
say "tfkd exited with status $status"
exit "$status"
"#
    ));
    Ok(t)
}

/// The tfkd binary the tasks run, copied under `<out>/slurm/bin/` by its
/// content digest (not copied in a dry run).
fn tfkd_binary(job: &Job, layout: &Layout) -> Result<PathBuf> {
    let found = match &job.slurm.tfkd_bin {
        Some(p) => {
            ensure!(p.is_file(), "--tfkd-bin {}: no such file", p.display());
            p.clone()
        }
        None => find_or_build_tfkd(job.dry_run)?,
    };
    if job.dry_run {
        println!("dry run: the scripts name {} (a real submission copies it under {})", found.display(), layout.root.join("bin").display());
        return Ok(std::path::absolute(&found).unwrap_or(found));
    }
    let bytes = std::fs::read(&found).with_context(|| format!("reading the tfkd binary {}", found.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let copy = layout.root.join("bin").join(format!("tfkd-{h:016x}"));
    if !copy.is_file() {
        let tmp = copy.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&tmp, &copy)?;
    }
    println!("tfkd: {} (copied from {})", copy.display(), found.display());
    Ok(copy)
}

/// The directory of the running executable's build profile (`target/debug`
/// for `target/debug/xtask` and for a test binary in `target/debug/deps`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.file_name().is_some_and(|n| n == "deps") { dir.parent()?.to_path_buf() } else { dir.to_path_buf() })
}

/// Whether this process was started by `cargo run` (`cargo xtask`): cargo
/// set `CARGO`, and the executable is not a test binary in `deps/`.
fn run_by_cargo() -> bool {
    let in_deps = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.ends_with("deps"))).unwrap_or(true);
    std::env::var_os("CARGO").is_some() && !in_deps
}

/// Under `cargo xtask`, builds tfkd in the xtask's own profile and features
/// (a no-op when it is up to date), so that the jobs run the code this
/// command was built from; otherwise takes the tfkd beside the executable.
fn find_or_build_tfkd(dry_run: bool) -> Result<PathBuf> {
    let dir = profile_dir().context("cannot locate the running executable")?;
    let beside = dir.join(format!("tfkd{}", std::env::consts::EXE_SUFFIX));
    if run_by_cargo() && !dry_run {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "tfkd-runner", "--bin", "tfkd"]);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        let features: Vec<&str> = [(cfg!(feature = "cuda"), "cuda"), (cfg!(feature = "metal"), "metal")]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        println!("building tfkd: {cmd:?}");
        crate::run_checked(&mut cmd).context("building the tfkd binary for the Slurm jobs (or pass --tfkd-bin)")?;
    }
    ensure!(
        beside.is_file(),
        "no tfkd binary at {}: build it with `cargo build --release -p tfkd-runner --bin tfkd` (in the profile of this \
         xtask) or pass --tfkd-bin PATH",
        beside.display()
    );
    Ok(beside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::profile::ProfileName;
    use crate::reproduce::plan;
    use crate::reproduce::{reproduce, tests::args, Executor};
    use std::time::{Duration, Instant};

    fn plan_run(name: &str, teacher: Option<&str>) -> PlannedRun {
        let mut config = tfkd_runner::ExperimentConfig::from_toml(
            "epochs = 1\n[model]\nname = \"cnn\"\n[data]\ndataset = \"digits\"\nroot = \"/data\"\n[strategy]\nmethod = \"baseline\"\n",
        )
        .unwrap();
        config.name = Some(name.into());
        PlannedRun { config, network: tfkd_zoo::entry("cnn").unwrap(), teacher: teacher.map(String::from) }
    }

    #[test]
    fn waves_follow_the_teachers() {
        let (t, s, free, late, chain) =
            (plan_run("t", None), plan_run("s", Some("t")), plan_run("free", None), plan_run("late", Some("q")), plan_run("c", Some("s")));
        let names = |w: &Vec<&PlannedRun>| w.iter().map(|r| r.config.run_name()).collect::<Vec<_>>();
        let w = waves(&[&t, &s, &free, &late, &chain], &["q".into()]);
        let w: Vec<Vec<String>> = w.iter().map(names).collect();
        // A teacher queued earlier puts its student in wave 1, not wave 0.
        assert_eq!(w, [vec!["t", "free"], vec!["s", "late"], vec!["c"]]);
        // A finished teacher (neither submitted nor queued): no wait.
        let w: Vec<Vec<String>> = waves(&[&s], &[]).iter().map(names).collect();
        assert_eq!(w, [vec!["s"]]);
    }

    #[test]
    fn a_missing_slurm_command_is_named() {
        let e = slurm("tfkd-test-no-such-sbatch", &[]).unwrap_err().to_string();
        assert!(e.contains("Slurm's tfkd-test-no-such-sbatch not found on PATH"), "{e}");
        let e = slurm("false", &[]).unwrap_err().to_string();
        assert!(e.contains("`false` failed"), "{e}");
    }

    #[test]
    fn the_ledger_round_trips_and_a_bad_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("submitted.json");
        assert_eq!(Ledger::load(&path).unwrap(), Ledger::default());
        let mut l = Ledger::default();
        l.runs.insert("a".into(), LedgerEntry { job: "12_3".into(), wave: 1, script: "x.sh".into(), submitted_unix: 5 });
        l.save(&path).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), l);
        std::fs::write(&path, "{").unwrap();
        assert!(Ledger::load(&path).unwrap_err().to_string().contains("submitted.json"));
    }

    #[test]
    fn the_batch_script_forwards_usr1_and_requeues_on_75() {
        let s = SlurmArgs {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            account: Some("lab".into()),
            sbatch_args: vec!["--qos=long".into()],
            ..Default::default()
        };
        let out = Path::new("/tmp/out");
        let job = Job { slurm: &s, device: DeviceSpec::Cuda(0), out, tables: "8".into(), dry_run: true, default_cpus: 1 };
        let layout = Layout { root: out.join("slurm") };
        let text = batch_script(&job, &layout, "tfkd-8-w0", Path::new("/b/tfkd"), &["/c/a.toml".into(), "/c/b.toml".into()]).unwrap();
        for line in [
            "#!/bin/bash\n",
            "#SBATCH --job-name=tfkd-8-w0\n",
            "#SBATCH --array=0-1\n",
            "#SBATCH --output=/tmp/out/slurm/logs/%A_%a.out\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --time=1:00:00\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --account=lab\n",
            "#SBATCH --signal=B:USR1@120\n",
            "#SBATCH --requeue\n",
            "#SBATCH --qos=long\n",
            "  '/c/b.toml'\n",
            "kill -USR1 \"$pid\"",
            "\"$tfkd\" train --config \"$config\" --auto-resume &",
            "if [ \"$status\" -eq 75 ]",
            "scontrol requeue \"$task\"",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("CANDLE_NUM_THREADS"), "a GPU run keeps candle's default threads");
        assert!(text.find("#SBATCH --qos").unwrap() < text.find("set -u").unwrap(), "every #SBATCH line precedes the first command");
    }

    /// Says why a test is skipped, on the real stderr (the test harness
    /// captures `eprintln!`), so that CI logs show it.
    fn skip(test: &str, why: &str) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
    }

    /// Cancels the jobs when dropped: a failing test leaves none queued.
    struct CancelOnDrop(Vec<String>);

    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            if !self.0.is_empty() {
                let _ = Command::new("scancel").args(&self.0).stderr(std::process::Stdio::null()).status();
            }
        }
    }

    /// Whether a Slurm cluster answers; the reason when not.
    fn cluster() -> Result<(), String> {
        match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
            Err(e) => Err(format!("sinfo cannot run ({e}); start one with scripts/slurm/local-cluster.sh start")),
            Ok(o) if !o.status.success() => Err(format!(
                "sinfo failed: {}; start a cluster with scripts/slurm/local-cluster.sh start",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(_) => Ok(()),
        }
    }

    /// The debug tfkd beside this test binary, when it is newer than every
    /// source file of the crates (cargo test --workspace builds it).
    fn test_tfkd() -> Result<PathBuf, String> {
        let bin = profile_dir().ok_or("no executable path")?.join("tfkd");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).map_err(|_| {
            format!("{} is missing: `cargo build -p tfkd-runner --bin tfkd` (cargo test --workspace builds it)", bin.display())
        })?;
        fn newest(dir: &Path, t: &mut std::time::SystemTime) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    newest(&p, t);
                } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                    *t = (*t).max(m);
                }
            }
        }
        let mut sources = std::time::UNIX_EPOCH;
        for c in ["tfkd-core", "tfkd-zoo", "tfkd-data", "tfkd-distill", "tfkd-runner"] {
            newest(&crate::project_root().join("crates").join(c).join("src"), &mut sources);
        }
        if sources > built {
            return Err(format!(
                "{} is older than the crates' sources: `cargo build -p tfkd-runner --bin tfkd` (cargo test --workspace builds it)",
                bin.display()
            ));
        }
        Ok(bin)
    }

    fn wait_until_gone(ids: &BTreeSet<String>, out: &Path, limit: Duration) {
        let start = Instant::now();
        loop {
            let queued = active_jobs().unwrap();
            if ids.iter().all(|id| !queued.contains(id)) {
                return;
            }
            if start.elapsed() > limit {
                let mut logs = String::new();
                for e in std::fs::read_dir(out.join("slurm/logs")).into_iter().flatten().flatten() {
                    let _ = writeln!(logs, "---- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
                }
                let _ = Command::new("scancel").args(ids.iter()).status();
                panic!("the jobs {ids:?} did not end within {limit:?}; squeue: {queued:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The numbers of every epoch (not the times).
    fn numbers(dir: &Path) -> Vec<[f64; 8]> {
        tfkd_runner::run_dir::read_metrics(dir)
            .unwrap()
            .iter()
            .map(|r| [r.epoch as f64, r.lr, r.train_loss, r.train_hard, r.train_soft, r.train_top1, r.test_loss, r.test_top1])
            .collect()
    }

    /// A task warned of its time limit (USR1 to the batch shell, as
    /// `--signal=B:USR1@…` sends it) forwards the warning to tfkd, which
    /// writes its resume checkpoint and exits with 75; the task requeues
    /// itself, resumes, and ends with the numbers of an uninterrupted run.
    #[test]
    fn a_warned_task_requeues_itself_and_resumes_exactly() {
        let tfkd = match cluster().and_then(|()| test_tfkd()) {
            Ok(b) => b,
            Err(why) => {
                skip("a_warned_task_requeues_itself_and_resumes_exactly", &why);
                return;
            }
        };
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("slurm-out");
        let mut config = tfkd_runner::ExperimentConfig::from_toml(
            "epochs = 6\n[model]\nname = \"resnet18\"\nwidth_divisor = 16\n[data]\ndataset = \"digits\"\nroot = \"x\"\n\
             augmentation = false\ntrain_subset = 512\ntest_subset = 128\n[optim]\nbatch_size = 32\nlr = 0.05\n\
             [strategy]\nmethod = \"baseline\"\n",
        )
        .unwrap();
        config.data.root = crate::project_root().join("fixtures/digits");
        config.out_dir = out.join("runs");
        let mut plan = Plan::default();
        let name = plan.insert(config.clone(), None).unwrap();
        let s = SlurmArgs { tfkd_bin: Some(tfkd), ..Default::default() };
        let job = Job { slurm: &s, device: DeviceSpec::Cpu, out: &out, tables: "preempt".into(), dry_run: false, default_cpus: 1 };
        let submitted = submit(&plan, &job).unwrap();
        let _cancel = CancelOnDrop(submitted.jobs.clone());
        assert_eq!(submitted.submitted, std::slice::from_ref(&name));
        let task = Ledger::load(&out.join("slurm/submitted.json")).unwrap().runs[&name].job.clone();
        let ids = BTreeSet::from([task.clone()]);
        let run_dir = out.join("runs").join(&name);
        let log = out.join(format!("slurm/logs/{task}.out"));
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

        // Mid-run: after its first epoch, before its last.
        wait_for("the first epoch", Duration::from_secs(300), || numbers_len(&run_dir) >= 1);
        let warned = Command::new("scancel").args(["--signal=USR1", "--batch", &task]).status().unwrap();
        assert!(warned.success());
        wait_for("the requeue", Duration::from_secs(120), || {
            let log = read_log();
            log.contains("requeueing") || log.contains("tfkd exited with status")
        });
        assert!(read_log().contains("(status 75): requeueing"), "the run did not stop on the warning:\n{}", read_log());
        // Slurm holds a requeued job back for about 2 minutes (its node
        // refuses to start a job of the same id and second as a revoked
        // one): once it is pending again, wait a few seconds and start it.
        wait_for("the task pending again", Duration::from_secs(60), || {
            Command::new("squeue")
                .args(["-h", "-o", "%T", "-j", &task])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PENDING")
        });
        std::thread::sleep(Duration::from_secs(3));
        let update = Command::new("scontrol").args(["update", &format!("JobId={task}"), "StartTime=now"]).status().unwrap();
        assert!(update.success());
        wait_until_gone(&ids, &out, Duration::from_secs(300));
        let text = read_log();
        assert!(text.contains("restart 1") && text.contains("resuming"), "{text}");
        assert!(tfkd_runner::run_dir::is_finished(&run_dir), "{text}");

        // The same run in this process, uninterrupted.
        config.out_dir = tmp.path().join("local");
        let local = plan::PlannedRun { config: config.clone(), ..plan.runs[&name].clone() };
        let options = tfkd_runner::RunOptions::default();
        tfkd_runner::run_experiment(&local.config, &options, &mut tfkd_runner::Silent).unwrap();
        assert_eq!(
            numbers(&run_dir),
            numbers(&local.config.run_dir()),
            "the resumed run (left) differs from an uninterrupted one (right); its log:\n{text}"
        );
        eprintln!("a_warned_task_requeues_itself_and_resumes_exactly: {:.0} s", started.elapsed().as_secs_f64());
    }

    fn numbers_len(dir: &Path) -> usize {
        tfkd_runner::run_dir::read_metrics(dir).map(|m| m.len()).unwrap_or(0)
    }

    fn cells(out: &Path) -> serde_json::Value {
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("table-8.json")).unwrap()).unwrap();
        // Students' run names digest their teacher's checkpoint path.
        for cell in json["cells"].as_array_mut().unwrap() {
            cell.as_object_mut().unwrap().remove("runs");
        }
        json["cells"].clone()
    }

    /// Table 8 in the smoke profile (two teachers, two students) through a
    /// real Slurm cluster: held, submitted again (nothing new), released,
    /// trained; a third submission submits nothing and writes the report,
    /// whose numbers are the local executor's. Skipped, with the reason on
    /// stderr, when no cluster answers or the tfkd binary is missing.
    #[test]
    fn slurm_trains_a_table_like_the_local_executor() {
        if let Err(why) = cluster() {
            skip("slurm_trains_a_table_like_the_local_executor", &why);
            return;
        }
        let tfkd = match test_tfkd() {
            Ok(b) => b,
            Err(why) => {
                skip("slurm_trains_a_table_like_the_local_executor", &why);
                return;
            }
        };
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("slurm-out");
        let mut a = args("8", ProfileName::Smoke, &out, false);
        a.executor = Executor::Slurm;
        a.slurm.tfkd_bin = Some(tfkd);
        a.slurm.sbatch_args = vec!["--hold".into()];

        // Held: submitted once, not twice.
        let first = reproduce(&a).unwrap().expect("the slurm executor reports its submission");
        let _cancel = CancelOnDrop(first.jobs.clone());
        assert_eq!((first.submitted.len(), first.jobs.len()), (4, 2), "{first:?}");
        let ledger = Ledger::load(&out.join("slurm/submitted.json")).unwrap();
        assert_eq!(ledger.runs.len(), 4);
        let ids: BTreeSet<String> = ledger.runs.values().map(|e| e.job.clone()).collect();
        a.slurm.sbatch_args.clear();
        let again = reproduce(&a).unwrap().unwrap();
        assert!(again.submitted.is_empty() && again.active.len() == 4, "{again:?}");
        assert_eq!(Ledger::load(&out.join("slurm/submitted.json")).unwrap(), ledger, "a queued run was submitted again");
        assert!(!out.join("table-8.md").exists(), "no report before the runs have ended");
        // The students wait for their teachers' tasks.
        let w1 = std::fs::read_to_string(out.join("slurm/jobs/0001-w1.sh")).unwrap();
        assert!(w1.contains("#SBATCH --array=0-1"), "{w1}");

        let released = Command::new("scontrol").arg("release").args(&first.jobs).status().unwrap();
        assert!(released.success());
        wait_until_gone(&ids, &out, Duration::from_secs(600));

        let done = reproduce(&a).unwrap().unwrap();
        assert!(done.submitted.is_empty() && done.active.is_empty() && done.finished.len() == 4, "{done:?}");
        let md = std::fs::read_to_string(out.join("table-8.md")).unwrap();
        assert!(!md.contains("not run |"), "{md}");

        let local = tmp.path().join("local-out");
        reproduce(&args("8", ProfileName::Smoke, &local, false)).unwrap();
        assert_eq!(cells(&out), cells(&local), "Slurm and the local executor disagree");
        eprintln!("slurm_trains_a_table_like_the_local_executor: {:.0} s", started.elapsed().as_secs_f64());
    }
}
